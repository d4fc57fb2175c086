"""``summary.json``: the run, per-layer rows, bounds with their tightness, and the plan.

The layout is versioned (``schema_version``) and described by the JSON Schema shipped next to this
module (``summary.schema.json``, :func:`schema`). Non-finite numbers are written as ``null`` so any
JSON reader accepts the file. Field meanings (per layer; "per draw" = one input, one label); the
tables of the command line and of ``report.html`` use the same names (:data:`COLUMNS`,
docs/usage.md):

- ``group``: the group's id (``plan.group(id)``); ``layer``: its human name (``0 Linear 64→16``);
- ``fisher``: mean over the layer's parameters of the exact diagonal Fisher ``E_x I(θ_i|x)``;
- ``std_i1``/``std_i2``: sqrt of the mean label variance of one draw, ``sqrt(mean v1)`` /
  ``sqrt(mean v2)`` ([B] Lemma 3.1); ``relative_std_*`` = that / ``fisher`` (a multiple: 14 is 14×);
- ``input_var``: mean over parameters of ``Var_x I(θ_i|x)``; ``input_noise_share_*``: its share of
  the variance of one input with M draws, ``input_var / (input_var + v/M)`` ([B] Thm 4.7);
- ``variance_*``: mean per-parameter variance of the estimator with this run's N inputs × M draws;
- ``better``: the estimator (``i1``/``i2``) with the smaller summed variance; ``alpha_star``: weight
  of Î1 in the layer's minimum-variance combination (docs/theory.md §8);
- ``tightness``: per bound, ``Σ bound / Σ exact`` over the layer (1 = tight);
- ``target``: inputs needed for the relative error ``rho`` at confidence ``1 − delta`` with the
  ``better`` estimator and M draws (normal approximation, :mod:`fimvar.estimators.design`);
- ``accuracy``: per estimator (``exact`` is ``r.fisher``), with this run's N and M: ``fisher_norm``
  ``‖I‖₂``, ``standard_error`` ``sqrt(Σ Var)``, ``relative_error`` (their ratio),
  ``error_at_confidence`` (``z`` times it), ``inputs_needed`` for the target and ``enough``;
- ``recommended``: the plan's cheapest design (normal approximation and Chebyshev).

A sampled analysis (:func:`sampled_summary`, ``"kind": "sampled"``) has rows of its own
(:meth:`~fimvar.SampledResult.group_summary`, :data:`SAMPLED_COLUMNS`): ``i1`` and ``trace_i1``
(mean and sum of Î1 over the layer) in place of ``fisher``, ``std_i1``, ``relative_std_i1``,
``input_var``, ``input_noise_share_i1``, ``variance_i1``, and ``accuracy``/``target``/
``recommended`` for Î1 alone (docs/theory.md §17.4); it has no bounds.
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
from fimvar.estimators.design import DEFAULT_TARGET, METHODS, Design, Target
from fimvar.results.audit import AuditResult
from fimvar.results.diagonal import DiagonalResult, bound_violated
from fimvar.results.full import FullResult
from fimvar.results.groups import with_model_group
from fimvar.results.hidden import HiddenResult
from fimvar.results.plan import Plan, make_plan
from fimvar.results.presentation import presents
from fimvar.results.sampled import SampledResult
from fimvar.results.weight_norms import WeightNormResult

SCHEMA_VERSION = 1
#: the one name of each per-layer column, as a key of ``summary.json``'s rows and as the header of
#: the command line's and ``report.html``'s tables (docs/usage.md, "One vocabulary")
COLUMNS = {
    "layer": "layer", "parameters": "parameters", "fisher": "Fisher", "std_i1": "std Î1",
    "std_i2": "std Î2", "relative_std_i1": "rel std Î1", "relative_std_i2": "rel std Î2",
    "input_noise_share_i1": "input noise Î1", "input_noise_share_i2": "input noise Î2",
    "better": "better", "alpha_star": "α*", "fisher_norm": "‖Fisher‖", "standard_error": "std error",
    "relative_error": "rel error", "error_at_confidence": "err @", "inputs_needed": "N needed",
    "enough": "enough",
}
#: the columns of a sampled analysis's rows (:meth:`~fimvar.SampledResult.group_summary`): Î1's
#: mean and sum over the layer in place of the exact Fisher, and Î1's noise
SAMPLED_COLUMNS = {key: COLUMNS[key] for key in ("layer", "parameters", "std_i1", "relative_std_i1",
                                                  "input_noise_share_i1")} | {"i1": "Î1", "trace_i1": "Σ Î1"}


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


def _design(design: Design | None) -> dict | None:
    return None if design is None else dataclasses.asdict(design)


def group_rows(result: DiagonalResult, plan: Plan) -> list[dict]:
    """One JSON-ready row per group and one for the pooled model (the result's
    :meth:`~fimvar.DiagonalResult.group_summary`), see the module docs."""
    rows = result.group_summary(plan=plan, include_model=True)
    for row in rows:
        row["recommended"] = {m: _design(d) for m, d in row["recommended"].items()}
    return rows


def plan_document(plan: Plan) -> dict:
    """The ``plan`` section of ``summary.json`` (also :meth:`fimvar.Plan.to_dict`)."""
    groups = []
    for g in plan.groups:
        recommended = {m: (None if g.recommended(m) is None else g.recommended(m).estimator)
                       for m in METHODS}
        groups.append({
            "group": g.group,
            "layer": plan.name(g.group),
            "parameters": g.terms.parameters,
            "fisher_norm_sq": g.terms.fisher_sq,
            "input_noise": g.terms.input,
            "label_noise": dict(g.terms.label),
            "recommended": recommended,
            "accuracy": {e: dataclasses.asdict(acc) | {"enough": acc.enough}
                         for e, acc in g.accuracy.items()},
            "designs": [dataclasses.asdict(d) for d in g.designs],
        })
    return {"rho": plan.rho, "delta": plan.delta, "draws": plan.draws, "z": plan.z,
            "inputs": plan.inputs, "samples": plan.samples, "available": plan.available,
            "target": "||I_hat_g - I_g||_2 / ||I_g||_2 <= rho with probability >= 1 - delta",
            "cost_model": dataclasses.asdict(plan.cost), "notes": list(plan.notes), "groups": groups}


def bound_rows(result: DiagonalResult) -> tuple[list[dict], list[dict]]:
    """Per-parameter bounds (holds, violations, tightness per group and for the model) and
    per-group trace/Frobenius bounds."""
    groups = with_model_group(result.groups)
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


def _header(schema_version: int) -> dict:
    from fimvar import __version__

    return {"schema_version": schema_version, "fimvar_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}


@presents(DiagonalResult, "summary")
def build_summary(result: DiagonalResult, target: Target = DEFAULT_TARGET, *, run: dict | None = None,
                  files: dict | None = None, plan: Plan | None = None) -> dict:
    """The ``summary.json`` document of a result (see the module docs and the JSON Schema)."""
    plan = plan if plan is not None else make_plan(result, target)
    per_parameter, per_group = bound_rows(result)
    metadata = dict(result.metadata)
    metadata.update(run or {})
    metadata.pop("layers", None)  # in each row's ``layer``
    run_section = {
        "family": result.family,
        "samples": result.samples,
        "inputs": result.num_inputs,
        "engine": result.engine,
        "seed": metadata.pop("seed", None),
        "outputs": metadata.pop("outputs", None),
        "available": plan.available,
        "parameters": sum(math.prod(s) for s in result.shapes.values()),
        "labels": result.empirical is not None,
        "second_order": result.second_order,
        **metadata,
    }
    document = {
        **_header(SCHEMA_VERSION),
        "run": run_section,
        "shapes": {name: list(shape) for name, shape in result.shapes.items()},
        "groups": group_rows(result, plan),
        "bounds": per_parameter,
        "group_bounds": per_group,
        "plan": plan_document(plan),
        "files": files or {},
    }
    return clean(document)


@presents(SampledResult, "summary")
def sampled_summary(result: SampledResult, target: Target = DEFAULT_TARGET, *, run: dict | None = None,
                    files: dict | None = None, plan: Plan | None = None) -> dict:
    """The ``summary.json`` of a sampled analysis (``kind: "sampled"``; the schema's
    ``sampled_summary``): the run, one row per layer and ``(model)``
    (:meth:`~fimvar.SampledResult.group_summary`), the plan of Î1 and the files."""
    plan = plan if plan is not None else make_plan(result, target)
    metadata = dict(result.metadata)
    metadata.update(run or {})
    metadata.pop("layers", None)  # in each row's ``layer``
    rows = result.group_summary(plan=plan, include_model=True)
    for row in rows:
        row["recommended"] = {m: _design(d) for m, d in row["recommended"].items()}
    run_section = {
        "family": result.family,
        "samples": result.samples,
        "inputs": result.num_inputs,
        "engine": metadata.pop("engine", "graph"),
        "seed": metadata.pop("seed", None),
        "outputs": metadata.pop("outputs", None),
        "available": plan.available,
        "parameters": sum(math.prod(s) for s in result.shapes.values()),
        "labels": False,
        "precision": metadata.pop("precision", None),
        **metadata,
    }
    document = {
        **_header(SCHEMA_VERSION),
        "kind": "sampled",
        "run": run_section,
        "shapes": {name: list(shape) for name, shape in result.shapes.items()},
        "groups": rows,
        "plan": plan_document(plan),
        "files": files or {},
    }
    return clean(document)


@presents(Plan, "document")
def _plan_document(plan: Plan) -> dict:
    return clean(plan_document(plan))


@presents(FullResult, "summary")
def full_summary(result: FullResult, *, files: dict | None = None) -> dict:
    """The ``summary.json`` of a full-matrix result: per parameter tensor, the traces of the
    diagonal blocks, and the Frobenius norms with [A]'s bounds."""
    blocks = []
    for name in result.slices:
        fisher = result.block(result.fisher, name)
        blocks.append({
            "parameter": name, "parameters": int(fisher.shape[0]),
            "trace_fisher": float(fisher.diagonal().sum()),
            "frobenius_fisher": float(fisher.norm()),
            "trace_v1": float(result.block(result.v1, name).diagonal().sum()),
            "trace_v2": float(result.block(result.v2, name).diagonal().sum()),
            "trace_input_var": float(result.block(result.input_var, name).diagonal().sum()),
        })
    document = {**_header(SCHEMA_VERSION), "kind": "full",
                "run": {"family": result.family, "samples": result.samples, "inputs": result.num_inputs,
                        "parameters": int(result.fisher.shape[0]), **result.metadata},
                "blocks": blocks, "frobenius": dict(result.frobenius),
                "offdiagonal_bounds": [
                    {"name": name, "quantity": quantity, "side": "upper", "source": "[B] App. C",
                     "holds": not bool(bound_violated(bound, exact, "upper", 1e-9).any()),
                     "tightness": float(bound.sum() / exact.sum()) if float(exact.sum()) != 0 else None}
                    for name, (quantity, bound, exact) in result.offdiagonal_exact().items()],
                "files": files or {}}
    return clean(document)


@presents(HiddenResult, "summary")
def hidden_summary(result: HiddenResult, *, files: dict | None = None) -> dict:
    """The ``summary.json`` of a hidden-layer result: per module, the mean Fisher of its units,
    the single-draw std of the estimate and the input noise."""
    modules = []
    for name, module in result.items():
        fisher = float(module.fisher_diagonal.mean())
        modules.append({
            "module": name, "shape": list(module.shape), "units": int(module.fisher_diagonal.numel()),
            "inputs": module.num_inputs, "samples": module.samples,
            "fisher": fisher, "estimate": float(module.estimate_diagonal.mean()),
            "std_estimate": float(module.v1_diagonal.mean()) ** 0.5,
            "relative_std_estimate": (float(module.v1_diagonal.mean()) ** 0.5 / fisher
                                      if fisher > 0 else None),
            "input_var": float(module.input_var_diagonal.mean()),
        })
    document = {**_header(SCHEMA_VERSION), "kind": "hidden",
                "run": {"family": result.family, **result.metadata}, "modules": modules,
                "files": files or {}}
    return clean(document)


@presents(WeightNormResult, "summary")
def weight_norm_summary(result: WeightNormResult, *, files: dict | None = None) -> dict:
    """The ``summary.json`` of [A]'s weight-norm bounds: per layer, each exact value and bound."""
    document = {**_header(SCHEMA_VERSION), "kind": "weight_norms",
                "run": {"family": result.family, "inputs": result.num_inputs, **result.metadata},
                "layers": [dataclasses.asdict(layer) for layer in result],
                "files": files or {}}
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


def read(path: str | Path) -> dict:
    """Read a ``summary.json`` with one clear error when it is not one."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise FimvarError(f"cannot read {path} as a fimvar summary.json: {error}") from error


def audit_document(result: AuditResult, *, run: dict | None = None, files: dict | None = None) -> dict:
    """The ``audit.json`` document: the fimvar version and the time, ``kind: "audit"``, the run
    metadata, :meth:`~fimvar.AuditResult.to_dict` and the files written (strict JSON: non-finite
    numbers as ``null``)."""
    header = _header(SCHEMA_VERSION)
    document = {"fimvar_version": header["fimvar_version"], "created": header["created"], "kind": "audit",
                "run": dict(run or {})}
    return clean(document | result.to_dict() | {"files": dict(files or {})})


def write(document: dict, path: str | Path) -> None:
    """Write ``summary.json`` (strict JSON, no NaN)."""
    Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
