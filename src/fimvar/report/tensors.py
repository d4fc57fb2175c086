"""``fisher.safetensors``: every per-parameter tensor of a result, readable by any safetensors tool.

Keys are ``"<parameter>/<quantity>"`` (float64, the parameter's shape). Stored quantities:

==========================  =================================================================
``fisher``                  exact diagonal Fisher ``E_x I(θ_i|x)``
``i1``, ``i2``              the estimators Î1, Î2 of this run (N inputs × M draws)
``v1``, ``v2``, ``c12``     single-draw label variances of Î1, Î2 and their covariance (mean over x)
``input_var``               ``Var_x I(θ_i|x)`` (unbiased, over the inputs)
``empirical``,              empirical Fisher with the data labels and its bias ``EF − I``
``empirical_bias``          (only with labels)
``bound:<name>``            each per-parameter bound of [B] (e.g. ``bound:thm4.1_v1_upper``)
``draw:<moment>``           within-input sums of squares of the draws (M ≥ 2): ``i1_within``,
                            ``i2_within``, ``i12_within``
``error:<quantity>``,       where v2, c12 were estimated by probes: their standard errors and
``v2_unbiased``             the unbiased estimate of v2 (``v2`` is ``max(v2_unbiased, 0)``)
``v1_token``                per-position outputs only: label variance of the per-token squares
``variance_i1``, ...        derived, for convenience: total variance of Î1, Î2, the combination
``variance_combined``,      and the exact estimator with this run's design, ``covariance``
``variance_exact``,         ``Cov(Î1, Î2)``, ``alpha_star`` and the ``combined`` estimate
``covariance``,
``alpha_star``, ``combined``
==========================  =================================================================

A first-order result (``analyze(..., second_order=False)``, header ``"second_order": false``)
stores neither ``i2``, ``v2``, ``c12`` nor the derived tensors that need them.

The header metadata (key ``fimvar``) holds one JSON document with the format version and what
:func:`read` needs to rebuild the :class:`~fimvar.DiagonalResult` (family, draws, inputs, engine,
shapes, groups, run metadata, bound descriptions, group-level values); derived tensors are not
read back, they are recomputed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from fimvar.errors import FimvarError
from fimvar.report.summary import clean
from fimvar.results.diagonal import Bound, DiagonalResult, GroupBound
from fimvar.results.full import FullResult
from fimvar.results.hidden import HiddenFisher, HiddenResult
from fimvar.results.sampled import SampledResult, SpreadSums

FORMAT = "fimvar.diagonal-result"
FORMAT_VERSION = 1
PRIMARY = ("fisher", "i1", "i2", "v1", "v2", "c12", "input_var")
DERIVED = ("variance_i1", "variance_i2", "variance_combined", "variance_exact", "covariance",
           "alpha_star", "combined")
#: what a first-order result (``second_order=False``) lacks
SECOND_ORDER = ("i2", "v2", "c12", "variance_i2", "variance_combined", "covariance", "alpha_star", "combined")


def tensors_of(result: DiagonalResult) -> dict[str, torch.Tensor]:
    """Every stored tensor of ``result``, keyed ``"<parameter>/<quantity>"``."""
    quantities: dict[str, dict[str, torch.Tensor]] = {q: getattr(result, q) for q in PRIMARY
                                                      if result.second_order or q not in SECOND_ORDER}
    if result.empirical is not None:
        quantities["empirical"] = result.empirical
        quantities["empirical_bias"] = result.empirical_bias
    for name, bound in result.bounds.items():
        quantities[f"bound:{name}"] = bound.values
    for moment, values in result.draw_moments.items():
        quantities[f"draw:{moment}"] = values
    for estimated, values in result.standard_errors.items():
        quantities[f"error:{estimated}"] = values
    if result.v2_unbiased is not None:
        quantities["v2_unbiased"] = result.v2_unbiased
    if result.v1_token is not None:
        quantities["v1_token"] = result.v1_token
    quantities.update({f"variance_{e}": result.variance(e) for e in result.estimators})
    if result.second_order:
        quantities.update(covariance=result.covariance(), alpha_star=result.alpha_star(),
                          combined=result.combined())
    out = {}
    for quantity, values in quantities.items():
        for name in result.shapes:
            tensor = values[name].detach().to("cpu", torch.float64).contiguous()
            out[f"{name}/{quantity}"] = tensor.reshape(tuple(result.shapes[name]))
    return out


def write(result: DiagonalResult, path: str | Path) -> None:
    """Write ``fisher.safetensors`` (see the module docs)."""
    header = {
        "format": FORMAT,
        "family": result.family,
        "samples": result.samples,
        "num_inputs": result.num_inputs,
        "engine": result.engine,
        "shapes": {k: list(v) for k, v in result.shapes.items()},
        "groups": result.groups,
        "metadata": result.metadata,
        "bounds": {n: {"source": b.source, "quantity": b.quantity, "side": b.side}
                   for n, b in result.bounds.items()},
        "group_exact": result.group_exact,
        "group_bounds": {n: {"source": b.source, "quantity": b.quantity, "side": b.side, "values": b.values}
                         for n, b in result.group_bounds.items()},
        "labels": result.empirical is not None,
        "draw_moments": list(result.draw_moments),
        "estimated": {name: list(q) for name, q in result.estimated.items()},
        "standard_errors": list(result.standard_errors),
        "derived": [q for q in DERIVED if result.second_order or q not in SECOND_ORDER],
        "second_order": result.second_order,
    }
    _write_file(path, tensors_of(result), header)


def read(path: str | Path) -> DiagonalResult:
    """Rebuild a :class:`~fimvar.DiagonalResult` from ``fisher.safetensors``."""
    return _rebuild(path, FORMAT, _diagonal_from)


def _diagonal_from(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> DiagonalResult:
    shapes = {k: torch.Size(v) for k, v in meta["shapes"].items()}

    def quantity(q: str) -> dict[str, torch.Tensor]:
        try:
            return {name: tensors[f"{name}/{q}"] for name in shapes}
        except KeyError as error:
            raise FimvarError(f"{path} lacks the tensor {error.args[0]}") from error

    has_labels = bool(meta["labels"])
    second_order = bool(meta.get("second_order", True))  # files of full analyses before the key
    result = DiagonalResult(
        family=meta["family"], samples=int(meta["samples"]), num_inputs=int(meta["num_inputs"]),
        engine=meta["engine"], shapes=shapes, groups={g: list(m) for g, m in meta["groups"].items()},
        **{q: quantity(q) if second_order or q not in SECOND_ORDER else {} for q in PRIMARY},
        second_order=second_order,
        empirical=quantity("empirical") if has_labels else None,
        empirical_bias=quantity("empirical_bias") if has_labels else None,
        draw_moments={m: quantity(f"draw:{m}") for m in meta["draw_moments"]},
        metadata=dict(meta.get("metadata") or {}),
        estimated={name: tuple(q) for name, q in (meta.get("estimated") or {}).items()},
        standard_errors={q: quantity(f"error:{q}") for q in meta.get("standard_errors") or ()},
        v2_unbiased=quantity("v2_unbiased") if meta.get("standard_errors") else None,
        v1_token=quantity("v1_token") if f"{next(iter(shapes))}/v1_token" in tensors else None,
    )
    exact_of = {"fisher": result.fisher, "v1": result.v1, "v2": result.v2, "input_var": result.input_var}
    for name, info in meta["bounds"].items():
        result.bounds[name] = Bound(name, info["source"], info["quantity"], info["side"],
                                    quantity(f"bound:{name}"), exact_of[info["quantity"]])
    result.group_exact = {q: {g: _number(v) for g, v in values.items()}
                          for q, values in meta["group_exact"].items()}
    for name, info in meta["group_bounds"].items():
        values = {g: _number(v) for g, v in info["values"].items()}
        exact = {g: result.group_exact[info["quantity"]][g] for g in values}
        result.group_bounds[name] = GroupBound(name, info["source"], info["quantity"], info["side"],
                                               values, exact)
    return result


def _rebuild(path: str | Path, expected: str, build):
    """``build(path, tensors, meta)`` on the contents of a file of format ``expected``, with one
    :class:`FimvarError` for metadata that lacks fields or holds values of the wrong kind."""
    tensors, meta = _read_file(path, expected)
    try:
        return build(path, tensors, meta)
    except FimvarError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        what = (f"its metadata or tensors lack {error.args[0]!r}" if isinstance(error, KeyError) else
                f"its metadata holds a malformed value ({type(error).__name__}: {error})")
        raise FimvarError(f"{path} is not a complete fimvar file: {what}; the file is damaged or was "
                          "not written by this version of fimvar: save the result again") from error


def _read_file(path: str | Path, expected: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the ``fimvar`` header of a file written by one of the writers here."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FimvarError(f"no saved result at {path}")
    try:
        with safe_open(str(path), framework="pt") as stream:
            header = (stream.metadata() or {}).get("fimvar")
            tensors = {key: stream.get_tensor(key) for key in stream.keys()}
    except Exception as error:
        raise FimvarError(f"cannot read {path} as safetensors: {error}") from error
    if header is None:
        raise FimvarError(f"{path} was not written by fimvar (no 'fimvar' metadata)")
    try:
        meta = json.loads(header)
    except ValueError as error:
        raise FimvarError(f"the fimvar metadata of {path} is not JSON ({error}); the file is damaged: "
                          "save the result again") from error
    if not isinstance(meta, dict):
        raise FimvarError(f"the fimvar metadata of {path} is not a JSON object; the file is damaged: "
                          "save the result again")
    if meta.get("format") != expected or meta.get("format_version") != FORMAT_VERSION:
        raise FimvarError(f"{path} has format {meta.get('format')} v{meta.get('format_version')}; this "
                          f"fimvar reads {expected} v{FORMAT_VERSION}")
    return tensors, meta


def _write_file(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    from safetensors.torch import save_file

    from fimvar import __version__

    header = {"format_version": FORMAT_VERSION, "fimvar_version": __version__, **header}
    save_file({k: v.detach().to("cpu", torch.float64).contiguous() for k, v in tensors.items()},
              str(path), metadata={"fimvar": json.dumps(clean(header))})
    usual_mode(path)


def usual_mode(path: str | Path) -> None:
    """Give a file the mode of any other file written here, ``0666`` less the umask (``0644``
    under the usual ``022``): safetensors creates its files ``0600``."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


#: file formats of the other result types
FULL_FORMAT = "fimvar.full-result"
HIDDEN_FORMAT = "fimvar.hidden-result"
FULL_MATRICES = ("fisher", "i1", "i2", "v1", "v2", "input_var")
HIDDEN_TENSORS = ("fisher_diagonal", "estimate_diagonal", "v1_diagonal", "input_var_diagonal",
                  "fisher", "estimate")


def write_full(result: FullResult, path: str | Path) -> None:
    """``full.safetensors``: the P×P matrices (and the App. C bounds) of a full-matrix result."""
    tensors = {q: getattr(result, q) for q in FULL_MATRICES}
    tensors.update({f"bound:{k}": v for k, v in result.offdiagonal_bounds.items()})
    _write_file(path, tensors, {
        "format": FULL_FORMAT, "family": result.family, "samples": result.samples,
        "num_inputs": result.num_inputs, "shapes": {k: list(v) for k, v in result.shapes.items()},
        "slices": {k: [v.start, v.stop] for k, v in result.slices.items()},
        "frobenius": result.frobenius, "bounds": list(result.offdiagonal_bounds),
        "metadata": result.metadata})


def read_full(path: str | Path) -> FullResult:
    """Rebuild a :class:`~fimvar.FullResult` from ``full.safetensors``."""
    return _rebuild(path, FULL_FORMAT, _full_from)


def _full_from(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> FullResult:
    return FullResult(
        family=meta["family"], samples=int(meta["samples"]), num_inputs=int(meta["num_inputs"]),
        slices={k: slice(*v) for k, v in meta["slices"].items()},
        shapes={k: torch.Size(v) for k, v in meta["shapes"].items()},
        **{q: tensors[q] for q in FULL_MATRICES},
        frobenius={k: _number(v) for k, v in meta["frobenius"].items()},
        offdiagonal_bounds={k: tensors[f"bound:{k}"] for k in meta["bounds"]},
        metadata=dict(meta.get("metadata") or {}))


def write_hidden(result: HiddenResult, path: str | Path) -> None:
    """``hidden.safetensors``: ``"<module>/<quantity>"`` for every module of a hidden-layer result."""
    tensors = {f"{name}/{q}": getattr(module, q) for name, module in result.items()
               for q in HIDDEN_TENSORS if getattr(module, q) is not None}
    _write_file(path, tensors, {
        "format": HIDDEN_FORMAT, "family": result.family, "metadata": result.metadata,
        "modules": {name: {"shape": list(m.shape), "num_inputs": m.num_inputs, "samples": m.samples}
                    for name, m in result.items()}})


def read_hidden(path: str | Path) -> HiddenResult:
    """Rebuild a :class:`~fimvar.results.hidden.HiddenResult` from ``hidden.safetensors``."""
    return _rebuild(path, HIDDEN_FORMAT, _hidden_from)


def _hidden_from(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> HiddenResult:
    modules = {}
    for name, info in meta["modules"].items():
        modules[name] = HiddenFisher(
            module=name, shape=torch.Size(info["shape"]), num_inputs=int(info["num_inputs"]),
            samples=int(info["samples"]), **{q: tensors.get(f"{name}/{q}") for q in HIDDEN_TENSORS})
    return HiddenResult(meta["family"], modules, dict(meta.get("metadata") or {}))


SAMPLED_FORMAT = "fimvar.sampled-result"
SAMPLED_TENSORS = ("i1", "v1", "input_var", "input_var_unbiased", "between")
#: the tensors of a result with Î2 (``analyze_sampled(..., i2=True)``)
SAMPLED_I2_TENSORS = ("i2", "v2", "between_i2")
SPREAD_TENSORS = ("label_noise", "label_noise_outer", "pair", "pair_outer")


def write_sampled(result: SampledResult, path: str | Path) -> None:
    """``sampled.safetensors``: ``"<parameter>/<quantity>"`` for ``i1``, ``v1``, ``input_var``,
    ``input_var_unbiased``, ``between`` (with Î2 also ``i2``, ``v2``, ``between_i2``) and the derived
    ``variance_i1`` (this run's design) of a sampled analysis, float64 with the parameters'
    shapes."""
    tensors = {f"{name}/{q}": getattr(result, q)[name] for q in SAMPLED_TENSORS for name in result.shapes}
    tensors.update({f"{name}/variance_i1": v for name, v in result.variance("i1").items()})
    tensors.update({f"{name}/fisher": v for name, v in result.fisher.items()})
    if result.i2:
        tensors.update({f"{name}/{q}": getattr(result, q)[name] for q in SAMPLED_I2_TENSORS
                        for name in result.shapes})
    counts = {}
    for prefix, spreads in (("spreads", result.spreads), ("spreads_i2", result.spreads_i2)):
        if spreads is not None:
            tensors.update({f"{prefix}/{k}": getattr(spreads, k) for k in SPREAD_TENSORS})
            counts[prefix] = {"names": spreads.names, "inputs": spreads.inputs, "pairs": spreads.pairs}
    _write_file(path, tensors, {
        "format": SAMPLED_FORMAT, "family": result.family, "samples": result.samples,
        "num_inputs": result.num_inputs, "shapes": {k: list(v) for k, v in result.shapes.items()},
        "groups": result.groups, "metadata": result.metadata, "derived": ["variance_i1"],
        "exact": list(result.fisher), "i2": bool(result.i2),
        "spreads": counts.get("spreads"), "spreads_i2": counts.get("spreads_i2")})


def read_sampled(path: str | Path) -> SampledResult:
    """Rebuild a :class:`~fimvar.SampledResult` from ``sampled.safetensors``."""
    return _rebuild(path, SAMPLED_FORMAT, _sampled_from)


def _sampled_from(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> SampledResult:
    shapes = {k: torch.Size(v) for k, v in meta["shapes"].items()}

    def spread_sums(prefix: str) -> SpreadSums | None:
        counts = meta.get(prefix)
        return None if counts is None else SpreadSums(
            list(counts["names"]), int(counts["inputs"]), tensors[f"{prefix}/label_noise"],
            tensors[f"{prefix}/label_noise_outer"], int(counts["pairs"]), tensors[f"{prefix}/pair"],
            tensors[f"{prefix}/pair_outer"])

    second = SAMPLED_I2_TENSORS if meta.get("i2") else ()
    return SampledResult(
        family=meta["family"], samples=int(meta["samples"]), num_inputs=int(meta["num_inputs"]),
        shapes=shapes,
        **{q: {name: tensors[f"{name}/{q}"] for name in shapes} for q in SAMPLED_TENSORS + second},
        fisher={name: tensors[f"{name}/fisher"] for name in meta.get("exact", [])},
        spreads=spread_sums("spreads"), spreads_i2=spread_sums("spreads_i2"),
        metadata=dict(meta.get("metadata") or {}),
        groups={g: list(m) for g, m in meta["groups"].items()})


def _number(value) -> float:
    return math.nan if value is None else float(value)
