"""``summary.json``: the run, per-layer rows, bounds with their tightness, and the plan.

The layout is versioned (``schema_version``) and described by the JSON Schema shipped next to this
module (``summary.schema.json``, :func:`schema`). Non-finite numbers are written as ``null`` so any
JSON reader accepts the file. Field meanings (per layer; "per draw" = one input, one label):

- ``fisher``: mean over the layer's parameters of the exact diagonal Fisher ``E_x I(θ_i|x)``;
- ``std_i1``/``std_i2``: sqrt of the mean label variance of one draw, ``sqrt(mean v1)`` /
  ``sqrt(mean v2)`` ([B] Lemma 3.1); ``relative_std_*`` = that / ``fisher``; ``mean_std_*``: the mean
  over parameters of ``sqrt(v)`` instead;
- ``input_var``: mean over parameters of ``Var_x I(θ_i|x)``; ``input_noise_share_*``: its share of
  the variance of one input with M draws, ``input_var / (input_var + v/M)`` ([B] Thm 4.7);
- ``variance_*``: mean per-parameter variance of the estimator with this run's N inputs × M draws;
- ``better``: the estimator (``i1``/``i2``) with the smaller summed variance; ``alpha_star``: weight
  of Î1 in the layer's minimum-variance combination (theory §8);
- ``tightness``: per bound, ``Σ bound / Σ exact`` over the layer (1 = tight);
- ``target``: inputs needed for the relative error ``rho`` at confidence ``1 − delta`` with the
  ``better`` estimator and M draws (normal approximation, :mod:`fimvar.plan`);
- ``recommended``: the plan's cheapest design (normal approximation and Chebyshev).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from fimvar.errors import FimvarError
from fimvar.plan import MODEL, Plan, design, noise_terms, plan

SCHEMA_VERSION = 1


def clean(value: Any) -> Any:
    """JSON-ready copy: tensors and numpy values to Python, non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return clean(value.tolist())
    if isinstance(value, torch.Size):
        return list(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _pooled(result):
    """The result with one group holding every parameter (or itself if it has one group)."""
    if len(result.groups) == 1:
        return result, next(iter(result.groups))
    members = [m for group in result.groups.values() for m in group]
    return dataclasses.replace(result, groups={MODEL: members}), MODEL


def group_rows(result, rho: float = 0.1, delta: float = 0.05, the_plan: Plan | None = None,
               include_model: bool = True) -> list[dict]:
    """One JSON-ready row per group (and one for the pooled model), see the module docs."""
    the_plan = the_plan or plan(result, rho, delta)
    groups = dict(result.groups)
    rows = result.group_summary()
    if include_model and len(groups) > 1:
        pooled, name = _pooled(result)
        rows = rows + pooled.group_summary()
        groups[name] = pooled.groups[name]
    variances = {e: result.variance(e) for e in ("combined", "exact")}
    out = []
    for row in rows:
        group = row["group"]
        members = groups[group]
        count = row["parameters"]
        label2 = row["std_i2"] ** 2 / result.samples
        terms = noise_terms(result, members)
        target = design(terms, row["better"], rho, delta, "normal", the_plan.cost, draws=result.samples)
        gp = next((g for g in the_plan.groups if g.group == group), None)
        entry = {
            "group": group,
            "members": list(members),
            **{k: v for k, v in row.items() if k not in ("group",) and not k.startswith("tightness:")},
            "input_noise_share_i2": (row["input_var"] / (row["input_var"] + label2)
                                     if row["input_var"] + label2 > 0 else 0.0),
            "variance_combined": sum(float(variances["combined"][m].sum()) for m in members) / count,
            "variance_exact": sum(float(variances["exact"][m].sum()) for m in members) / count,
            "tightness": {name: bound.group_tightness({group: members})[group]
                          for name, bound in result.bounds.items()},
            "empirical": None,
            "target": None if target is None else {
                "rho": rho, "delta": delta, "method": "normal", "estimator": target.estimator,
                "inputs": target.inputs, "draws": target.draws},
            "recommended": {m: (None if gp is None or gp.recommended(m) is None
                                else dataclasses.asdict(gp.recommended(m))) for m in ("normal", "chebyshev")},
        }
        if result.empirical is not None:
            fisher_sum = sum(float(result.fisher[m].sum()) for m in members)
            empirical_sum = sum(float(result.empirical[m].sum()) for m in members)
            entry["empirical"] = {
                "fisher": empirical_sum / count,
                "relative_bias": (empirical_sum - fisher_sum) / fisher_sum if fisher_sum > 0 else None,
            }
        out.append(entry)
    return out


def bound_rows(result) -> tuple[list[dict], list[dict]]:
    """Per-parameter bounds (holds, violations, tightness per group and for the model) and
    per-group trace/Frobenius bounds."""
    groups = dict(result.groups)
    if len(groups) > 1:
        groups[MODEL] = [m for g in result.groups.values() for m in g]
    per_parameter = []
    for name, bound in result.bounds.items():
        per_parameter.append({
            "name": name, "source": bound.source, "quantity": bound.quantity, "side": bound.side,
            "holds": bound.holds(), "violations": bound.violations(),
            "tightness": bound.group_tightness(groups),
        })
    per_group = []
    for name, bound in result.group_bounds.items():
        tightness = bound.tightness()
        per_group.append({
            "name": name, "source": bound.source, "quantity": bound.quantity, "side": bound.side,
            "holds": bound.holds(),
            "groups": {g: {"bound": v, "exact": bound.exact[g], "tightness": tightness[g]}
                       for g, v in bound.values.items()},
        })
    return per_parameter, per_group


def build_summary(result, *, rho: float = 0.1, delta: float = 0.05, run: dict | None = None,
                  files: dict | None = None) -> dict:
    """The ``summary.json`` document of a result (see the module docs and the JSON Schema)."""
    from fimvar import __version__

    the_plan = plan(result, rho, delta)
    per_parameter, per_group = bound_rows(result)
    metadata = dict(result.metadata)
    metadata.update(run or {})
    run_section = {
        "family": result.family,
        "samples": result.samples,
        "inputs": result.num_inputs,
        "engine": result.engine,
        "seed": metadata.pop("seed", None),
        "outputs": metadata.pop("outputs", None),
        "parameters": sum(math.prod(s) for s in result.shapes.values()),
        "labels": result.empirical is not None,
        **metadata,
    }
    document = {
        "schema_version": SCHEMA_VERSION,
        "fimvar_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "run": run_section,
        "shapes": {name: list(shape) for name, shape in result.shapes.items()},
        "groups": group_rows(result, rho, delta, the_plan),
        "bounds": per_parameter,
        "group_bounds": per_group,
        "plan": the_plan.to_dict(),
        "files": files or {},
    }
    return clean(document)


def schema() -> dict:
    """The JSON Schema of ``summary.json`` (draft 2020-12)."""
    text = resources.files("fimvar.report").joinpath("summary.schema.json").read_text()
    return json.loads(text)


def validate(document: dict) -> None:
    """Validate a summary against :func:`schema` (needs the ``jsonschema`` package)."""
    try:
        import jsonschema
    except ImportError as error:  # an optional dependency
        raise FimvarError("validating a summary needs the jsonschema package (pip install jsonschema)") \
            from error
    try:
        jsonschema.validate(document, schema())
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise FimvarError(f"summary.json does not match its schema at {where}: {error.message}") from error


def write(document: dict, path: str | Path) -> None:
    """Write ``summary.json`` (strict JSON, no NaN)."""
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
