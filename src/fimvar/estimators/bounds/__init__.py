"""Bounds of [A] and [B]: spectra and bound records, tensor eigenvalues, trace and Frobenius forms,
full-matrix and weight-norm bounds (docs/theory.md §5)."""
