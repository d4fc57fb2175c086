"""An EWC penalty (Kirkpatrick et al. 2017) whose Fisher is computed on as many inputs as
fimvar's sample-size plan says a target relative error needs (docs/theory.md §8.2, §8.3).

``penalty(model) = λ/2 Σ_i F_i (θ_i − θ*_i)²`` with ``θ*`` the parameters after the first task
and ``F`` the exact diagonal Fisher of that task (:func:`fimvar.fisher_diagonal`, labels from the
model: not the empirical Fisher, not the squared batch-mean gradient of common implementations,
whose bias docs/theory.md §15.2 quantifies).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fimvar.analysis.diagonal import analyze
from fimvar.analysis.fisher import fisher_diagonal
from fimvar.errors import FimvarError
from fimvar.estimators.design import METHODS, Target, required_inputs
from fimvar.families import ExponentialFamily
from fimvar.results.plan import Plan

#: inputs of a tensor's first batch (the pilot analysis) unless ``pilot=`` says otherwise
DEFAULT_PILOT = 256


def _named(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise FimvarError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return dict(model.named_parameters())


@dataclass
class EWCPenalty:
    """``λ/2 Σ_i F_i (θ_i − θ*_i)²`` (Kirkpatrick et al. 2017, eq. 3): call it on the model being
    trained on the next task and add it to the loss; gradients flow to the model's parameters.

    Attributes:
        anchor: ``θ*``, the parameters the penalty pulls towards (detached copies).
        fisher: the diagonal Fisher ``F`` (float64), keyed like ``anchor``.
        strength: ``λ``.
        inputs: inputs the Fisher was computed on (``None`` when given by the user).
        recommended_inputs: inputs the plan asked for (``None`` when given by the user).
        relative_error: the relative error ``ρ`` of ``F`` (Euclidean norm over the plan's group)
            that ``inputs`` reach with probability ``1 − δ`` according to the plan
            (docs/theory.md §8.2); at most the target when ``inputs ≥ recommended_inputs``.
        relative_rmse: the plan's ``sqrt(E‖F̂ − F‖²)/‖F‖`` at ``inputs``.
        plan: the :class:`fimvar.Plan` of the pilot analysis.
        notes: what the user should know (fewer inputs than planned, a rough plan).
    """

    anchor: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    strength: float = 1.0
    inputs: int | None = None
    recommended_inputs: int | None = None
    relative_error: float | None = None
    relative_rmse: float | None = None
    plan: Plan | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_fisher(cls, model: nn.Module, fisher: Mapping[str, torch.Tensor],
                    strength: float = 1.0) -> EWCPenalty:
        """The penalty anchored at ``model``'s current parameters with a Fisher of your own
        (e.g. ``fimvar.fisher_diagonal(model, x)``); only the parameters in ``fisher`` count."""
        named = _named(model)
        _check_strength(strength)
        anchor = {}
        for name, value in fisher.items():
            if name not in named:
                raise FimvarError(f"the Fisher has parameter {name!r}, which the model lacks; "
                                  f"the model's parameters: {list(named)}")
            if tuple(value.shape) != tuple(named[name].shape):
                raise FimvarError(f"the Fisher of {name!r} has shape {tuple(value.shape)}, the "
                                  f"parameter {tuple(named[name].shape)}: compute it on this model")
            if not torch.isfinite(value).all() or bool((value < 0).any()):
                raise FimvarError(f"the Fisher of {name!r} must be finite and ≥ 0 (an EWC weight); "
                                  "use the exact Fisher or clamp an estimate at 0")
            anchor[name] = named[name].detach().clone()
        if not anchor:
            raise FimvarError("the Fisher is empty: give at least one parameter")
        return cls(anchor, {k: v.detach().to(torch.float64) for k, v in fisher.items()}, float(strength))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """``λ/2 Σ_i F_i (θ_i − θ*_i)²`` for ``model``'s current parameters (differentiable)."""
        named = _named(model)
        total = None
        for name, anchor in self.anchor.items():
            if name not in named or named[name].shape != anchor.shape:
                raise FimvarError(f"the model has no parameter {name!r} of shape {tuple(anchor.shape)}: "
                                  "apply the penalty to the architecture it was built on")
            p = named[name]
            term = (self.fisher[name].to(p) * (p - anchor.to(p)).pow(2)).sum()
            total = term if total is None else total + term
        return 0.5 * self.strength * total


def _check_strength(strength: float) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            math.isfinite(strength) and strength >= 0):
        raise FimvarError(f"strength (λ of EWC) must be a finite number ≥ 0, got {strength!r}")


def _inputs_of(batch) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        batch = batch[0]  # (inputs, labels): the exact Fisher draws its labels from the model
    if not isinstance(batch, torch.Tensor) or batch.dim() == 0:
        raise FimvarError("ewc_penalty takes a tensor of inputs (first dimension: samples) or an "
                          f"iterable of such tensors or (inputs, labels) pairs, got {type(batch).__name__}")
    return batch


def _batches(data, pilot: int | None) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        x = _inputs_of(data)
        size = DEFAULT_PILOT if pilot is None else pilot
        for start in range(0, x.shape[0], size):
            yield x[start:start + size]
        return
    if not isinstance(data, Iterable):
        raise FimvarError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        yield _inputs_of(batch)


def _take(batches: Iterator[torch.Tensor], kept: list[torch.Tensor], count: int) -> int:
    """Extend ``kept`` with batches until it holds ``count`` inputs (or the data ends); returns
    the inputs held, cutting the last batch."""
    held = sum(b.shape[0] for b in kept)
    while held < count:
        batch = next(batches, None)
        if batch is None:
            break
        kept.append(batch)
        held += batch.shape[0]
    if held > count:
        extra = held - count
        kept[-1] = kept[-1][: kept[-1].shape[0] - extra]
        held = count
    return held


def ewc_penalty(
    model: nn.Module,
    data: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    *,
    rho: float = 0.1,
    delta: float = 0.05,
    strength: float = 1.0,
    method: str = "normal",
    group: str = "(model)",
    pilot: int | None = None,
    engine: str = "auto",
    memory_budget: int | str | None = None,
) -> EWCPenalty:
    """An EWC penalty at ``model``'s current parameters, with the exact diagonal Fisher of
    ``data`` on as many inputs as the plan asks for relative error ``rho`` with probability
    ``1 − delta``.

    Steps: :func:`fimvar.analyze` on the first batch (``pilot`` inputs); its
    :meth:`~fimvar.DiagonalResult.plan` gives the inputs ``N = k Σ_i Var_x I(θ_i|x) / (ρ² ‖I‖²)``
    that the exact estimator needs for ``‖F̂ − F‖₂ / ‖F‖₂ ≤ ρ`` over ``group`` (docs/theory.md
    §8.2, §8.3; ``k = z²_{1−δ/2}`` or ``1/δ`` for ``method="chebyshev"``); then
    :func:`fimvar.fisher_diagonal` on the first ``N`` inputs of ``data``. With fewer inputs the
    Fisher uses them all, warns, and :attr:`EWCPenalty.relative_error` says the ``ρ`` they reach.
    The penalty is ``λ/2 Σ_i F_i (θ_i − θ*_i)²`` (Kirkpatrick et al. 2017, eq. 3).

    Args:
        model: the model after the first task (θ*).
        data: the first task's inputs: a tensor (first dimension: samples) or an iterable of
            batches (tensors or ``(inputs, labels)`` pairs; data labels are not used).
        family: the model's output family, as in :func:`fimvar.analyze`.
        rho, delta: the target (relative error ``ρ`` with probability ``≥ 1 − δ``).
        strength: ``λ``.
        method: ``"normal"`` (normal approximation) or ``"chebyshev"`` (distribution-free).
        group: the plan's group the target applies to: ``"(model)"`` (all parameters pooled)
            or a layer, e.g. ``"0"``.
        pilot: inputs of the first batch when ``data`` is a tensor (default 256); an iterable's
            first batch is used as it is.
        engine, memory_budget: as in :func:`fimvar.fisher_diagonal`.

    Returns:
        An :class:`EWCPenalty`; call it on the model being trained.
    """
    _check_strength(strength)
    if method not in METHODS:
        raise FimvarError(f"method must be one of {METHODS}, got {method!r}")
    if pilot is not None and (isinstance(pilot, bool) or not isinstance(pilot, int) or pilot < 2):
        raise FimvarError(f"pilot (inputs of the first batch) must be an integer ≥ 2, got {pilot!r}")
    target = Target.of(rho, delta)
    batches = _batches(data, pilot)
    first = next(batches, None)
    if first is None or first.shape[0] == 0:
        raise FimvarError("the data is empty: give the first task's inputs")
    pilot_result = analyze(model, first, family, bounds=False, engine=engine, memory_budget=memory_budget)
    plan = pilot_result.plan(target.rho, target.delta)
    found = plan.find(group)
    if found is None:
        raise FimvarError(f"no group {group!r} in the plan; groups: {[g.group for g in plan.groups]}")
    design = found.get("exact", method)
    if design is None:
        raise FimvarError(f"the Fisher of group {group!r} is zero (or not finite) on the first batch: "
                          "there is nothing to plan for; check the model and data")
    kept = [first]
    used = _take(batches, kept, design.inputs)
    fisher = fisher_diagonal(model, kept, family, engine, memory_budget=memory_budget)
    penalty = EWCPenalty.from_fisher(model, fisher, strength)
    # the ρ that `used` inputs reach: N ∝ 1/ρ² (docs/theory.md §8.2)
    continuous = required_inputs(found.terms, "exact", target, method, 0)
    penalty.relative_error = target.rho * math.sqrt(continuous / used)
    penalty.relative_rmse = math.sqrt(found.terms.relative_mse("exact", used, 0))
    penalty.inputs, penalty.recommended_inputs, penalty.plan = used, design.inputs, plan
    penalty.notes = list(plan.notes)
    if used < design.inputs:
        note = (f"the data has {used} inputs but the plan asks for {design.inputs} for relative error "
                f"{target.rho:g} with probability {1 - target.delta:g}: the Fisher on {used} inputs "
                f"reaches {penalty.relative_error:.3g}")
        penalty.notes.append(note)
        warnings.warn(note, stacklevel=2)
    return penalty
