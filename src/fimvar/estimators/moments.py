"""The one streaming algorithm for the variance over inputs (docs/theory.md §12).

A stream of per-input values ``I(x_1), I(x_2), …`` (a tensor each: per parameter, per matrix
entry, per hidden unit) is summarised chunk by chunk by ``(count, total, m2)``, with
``m2 = Σ (I − mean)²`` the centred sum of squares. Chunks are merged with the pairwise update of
Chan, Golub & LeVeque (1979), which never subtracts two large sums of squares:

    m2 = m2_a + m2_b + (mean_b − mean_a)² · n_a n_b / (n_a + n_b)

Every mode (diagonal, full-matrix, hidden-layer) uses :func:`chunk_moments` and :func:`merge`;
the unbiased input variance is :func:`sample_variance`.
"""

from __future__ import annotations

import torch


def chunk_moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ I, Σ (I − Ī)²)`` over the first axis of ``values`` (n, …), by two passes (the mean
    first), so that near-identical inputs give their true, tiny spread."""
    total = values.sum(0)
    mean = total / values.shape[0]
    return total, ((values - mean) ** 2).sum(0)


def merge(count: int, total: torch.Tensor | None, m2: torch.Tensor | None, chunk_count: int,
          chunk_total: torch.Tensor, chunk_m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a chunk's ``(count, Σ I, m2)`` into the running ``(count, Σ I, m2)`` (Chan et al.);
    ``total``/``m2`` are ``None`` before the first chunk. Returns the new ``(Σ I, m2)``."""
    if total is None or count == 0:
        return chunk_total.clone(), chunk_m2.clone()
    return merge_into(count, total.clone(), m2.clone(), chunk_count, chunk_total, chunk_m2.clone())


def merge_into(count: int, total: torch.Tensor, m2: torch.Tensor, chunk_count: int,
               chunk_total: torch.Tensor, chunk_m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge` in the memory of ``total`` and ``m2`` (updated, and returned), with
    ``chunk_m2`` overwritten as scratch: no new tensor, five passes over the values (a language
    model's 10⁸ sums per chunk)."""
    weight = count * chunk_count / (count + chunk_count)
    m2.add_(chunk_m2)
    delta = torch.div(chunk_total, chunk_count, out=chunk_m2).sub_(total, alpha=1.0 / count)
    m2.addcmul_(delta, delta, value=weight)
    return total.add_(chunk_total), m2


def sample_variance(count: int, m2: torch.Tensor) -> torch.Tensor:
    """The unbiased variance ``m2 / (n − 1)`` (0 for one input), never negative."""
    if count < 2:
        return torch.zeros_like(m2)
    return (m2 / (count - 1)).clamp_min(0.0)
