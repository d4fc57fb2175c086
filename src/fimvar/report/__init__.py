"""Presentation of results: ``summary.json`` (versioned, with a JSON Schema), safetensors files,
figures (PNG and SVG), the terminal tables and a self-contained ``report.html``; :func:`load`
reads a saved result back.

Files written by a diagonal result's ``save`` into a directory::

    summary.json          run metadata, per-layer rows, bounds, plan (schema: summary.schema.json)
    fisher.safetensors    per-parameter tensors keyed "<parameter>/<quantity>"
    figures/*.png|svg     fisher_std, bound_tightness, relative_std, sample_size
    report.html           one page with the tables and the figures (no external resource)

A sampled analysis (:meth:`fimvar.SampledResult.save`, ``fimvar analyze --model hf:…``) writes
``summary.json`` with ``"kind": "sampled"`` (the schema's ``sampled_summary``),
``sampled.safetensors`` in place of ``fisher.safetensors``, the figures ``fisher_std`` and
``sample_size`` and its own ``report.html``; :func:`load` reads either folder.

Full-matrix and hidden-layer results write ``full.safetensors`` / ``hidden.safetensors`` with
their ``summary.json`` and figures; weight-norm bounds write ``summary.json`` and a figure; an
estimator audit (:meth:`fimvar.AuditResult.save`, ``fimvar audit --out``) writes ``audit.json``,
``figures/audit.png|svg`` and its own ``report.html``.

Importing this package registers its functions as the results' ``save``, ``plot``, ``table``,
``summary`` (:mod:`fimvar.results.presentation`); the results never import it.
"""

from __future__ import annotations

from fimvar.report.files import load, save
from fimvar.report.summary import SCHEMA_VERSION, build_summary, schema, validate
from fimvar.report.text import layer_table, plan_table, report_text

__all__ = ["SCHEMA_VERSION", "build_summary", "layer_table", "load", "plan_table", "report_text",
           "save", "schema", "validate"]
