"""Reports of a :class:`~fimvar.DiagonalResult`: ``summary.json`` (versioned, with a JSON Schema),
``fisher.safetensors`` (every per-parameter tensor), figures (PNG and SVG) and a self-contained
``report.html``; :func:`load` reads a saved result back.

Files written by :func:`save` into a directory::

    summary.json          run metadata, per-layer rows, bounds, plan (schema: summary.schema.json)
    fisher.safetensors    per-parameter tensors keyed "<parameter>/<quantity>"
    figures/*.png|svg     fisher_std, bound_tightness, relative_std, sample_size
    report.html           one page with the tables and the figures (no external resource)
"""

from __future__ import annotations

from fimvar.report.files import load, save
from fimvar.report.summary import SCHEMA_VERSION, build_summary, schema, validate
from fimvar.report.text import layer_table

__all__ = ["SCHEMA_VERSION", "build_summary", "layer_table", "load", "save", "schema", "validate"]
