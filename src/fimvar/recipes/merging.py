"""Fisher-weighted model merging (Matena & Raffel 2022, *Merging Models with Fisher-Weighted
Averaging*, NeurIPS) with an error bar on the merge weights (docs/theory.md §8.4).

Per parameter, with ``F̃_j = max(F_j, ε)``, ``S = Σ_j F̃_j`` and the weights ``λ_j = F̃_j / S``:

    θ_merged = Σ_j λ_j θ_j

Given the variances ``σ_j²`` of the Fisher estimates (independent between models), the delta
method gives ``Var λ_i ≈ ((1 − λ_i)² σ_i² + λ_i² Σ_{j≠i} σ_j²) / S²`` and
``Var θ_merged ≈ Σ_j (θ_j − θ_merged)² σ_j² / S²``, with ``σ_j² = 0`` where ``F_j`` is floored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fimvar.errors import FimvarError
from fimvar.results.diagonal import ESTIMATORS, DiagonalResult

#: Matena & Raffel's floor on the Fisher (their ``fisher_floor``)
DEFAULT_EPSILON = 1e-6

Tensors = dict[str, torch.Tensor]


@dataclass
class FisherMerge:
    """The merge of ``n`` models (:func:`fisher_merge`), keyed by parameter name.

    Attributes:
        parameters: ``θ_merged = Σ_j λ_j θ_j`` (float64).
        weights: per model ``j``, ``λ_j = F̃_j / Σ_k F̃_k``.
        weight_variance: per model, the delta-method ``Var λ_j`` (docs/theory.md §8.4); ``None``
            without variances of the Fisher estimates.
        parameter_variance: the delta-method ``Var θ_merged`` from the Fisher estimates' noise
            (``None`` without variances).
        epsilon: the floor ``ε`` of ``F̃ = max(F, ε)``.
    """

    parameters: Tensors
    weights: list[Tensors]
    weight_variance: list[Tensors] | None
    parameter_variance: Tensors | None
    epsilon: float

    def weight_std(self) -> list[Tensors] | None:
        """The standard errors ``sqrt(Var λ_j)`` of the merge weights."""
        if self.weight_variance is None:
            return None
        return [{k: v.sqrt() for k, v in var.items()} for var in self.weight_variance]

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy the merged parameters into ``model`` (same architecture) in place; returns it."""
        named = dict(model.named_parameters())
        missing = [k for k in self.parameters if k not in named or named[k].shape != self.parameters[k].shape]
        if missing:
            raise FimvarError(f"the model lacks the merged parameters {missing} (or their shapes differ): "
                              "load the merge into the architecture of the merged models")
        with torch.no_grad():
            for name, value in self.parameters.items():
                named[name].copy_(value.to(named[name]))
        return model

    def model(self, like: nn.Module) -> nn.Module:
        """A copy of ``like`` (one of the merged models: its buffers, e.g. BatchNorm statistics,
        are kept) with the merged parameters."""
        return self.load_into(copy.deepcopy(like))


def _estimate(fisher, estimator: str) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None]:
    if isinstance(fisher, DiagonalResult):
        if estimator not in ESTIMATORS:
            raise FimvarError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        values = {"exact": fisher.fisher, "i1": fisher.i1, "i2": fisher.i2}
        value = values[estimator] if estimator in values else fisher.combined()
        return value, fisher.variance(estimator)
    if isinstance(fisher, Mapping):
        return fisher, None
    raise FimvarError("each Fisher must be a fimvar.DiagonalResult (fimvar.analyze) or a dict of "
                      f"tensors keyed by parameter name, got {type(fisher).__name__}")


def fisher_merge(
    models: Sequence[nn.Module],
    fishers: Sequence[DiagonalResult | Mapping[str, torch.Tensor]],
    *,
    variances: Sequence[Mapping[str, torch.Tensor]] | None = None,
    estimator: str = "exact",
    epsilon: float = DEFAULT_EPSILON,
) -> FisherMerge:
    """Fisher-weighted average of models of one architecture (Matena & Raffel 2022, eq. 2):
    ``θ_merged = Σ_j F̃_j θ_j / Σ_j F̃_j`` per parameter with ``F̃_j = max(F_j, ε)``, and the
    delta-method variance of the weights ``λ_j = F̃_j / Σ_k F̃_k`` (docs/theory.md §8.4).

    Args:
        models: two or more models with the same parameter names and shapes.
        fishers: one diagonal Fisher per model, over that model's own data: a
            :class:`fimvar.DiagonalResult` (its ``estimator`` estimate, with the variance
            :meth:`~fimvar.DiagonalResult.variance` reports for it) or a dict of tensors.
        variances: per model, the variances of its Fisher estimate (override those of a
            result; needed for an error bar with dict Fishers). The estimates of different
            models are taken as independent.
        estimator: which estimate of a result: ``"exact"`` (default; input noise only),
            ``"i1"``, ``"i2"`` or ``"combined"``.
        epsilon: the floor ``ε > 0``: where every model's Fisher is below it, the weights are
            ``1/n`` (plain averaging) and never NaN. Estimates below ε (Î2 can be negative) count
            as ε.

    Returns:
        A :class:`FisherMerge` (``.parameters``, ``.weights``, ``.weight_std()``,
        ``.model(models[0])``).
    """
    if isinstance(models, nn.Module) or len(models) < 2:
        raise FimvarError("give a sequence of two or more models to merge")
    if len(fishers) != len(models):
        raise FimvarError(f"give one Fisher per model: {len(models)} models, {len(fishers)} Fishers")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
            math.isfinite(epsilon) and epsilon > 0):
        raise FimvarError(f"epsilon (the Fisher floor) must be a finite number > 0, got {epsilon!r}")
    for model in models:
        if not isinstance(model, nn.Module):
            raise FimvarError(f"models must be torch.nn.Module objects, got {type(model).__name__}")
    named = [dict(m.named_parameters()) for m in models]
    reference = {k: tuple(p.shape) for k, p in named[0].items()}
    for j, params in enumerate(named[1:], start=1):
        shapes = {k: tuple(p.shape) for k, p in params.items()}
        if shapes != reference:
            differ = sorted(set(shapes) ^ set(reference)) or [
                k for k in reference if shapes[k] != reference[k]]
            raise FimvarError(f"model {j} has another architecture than model 0 (parameters {differ[:5]} "
                              "differ): Fisher merging averages models of one architecture")
    estimates = [_estimate(f, estimator) for f in fishers]
    if variances is not None:
        if len(variances) != len(models):
            raise FimvarError(f"give one variance per model: {len(models)} models, "
                              f"{len(variances)} variances")
        estimates = [(value, var) for (value, _), var in zip(estimates, variances, strict=True)]
    names = list(estimates[0][0])
    if not names:
        raise FimvarError("the Fisher is empty: compute it on the parameters to merge")
    with_error = all(var is not None for _, var in estimates)
    for j, (value, var) in enumerate(estimates):
        for label, tensors in (("Fisher", value), ("variance", var)):
            if tensors is None:
                continue
            if set(tensors) != set(names):
                raise FimvarError(f"the {label} of model {j} covers parameters {sorted(tensors)}, that of "
                                  f"model 0 {sorted(names)}: compute every Fisher on the same parameters")
            for k in names:
                if k not in reference:
                    raise FimvarError(f"the {label} has parameter {k!r}, which the models lack")
                if tuple(tensors[k].shape) != reference[k]:
                    raise FimvarError(f"the {label} of {k!r} (model {j}) has shape "
                                      f"{tuple(tensors[k].shape)}, the parameter {reference[k]}")
                if not torch.isfinite(tensors[k]).all():
                    raise FimvarError(f"the {label} of {k!r} (model {j}) holds NaN or Inf")

    device = named[0][names[0]].device
    parameters, variance_of = {}, {}
    weights: list[Tensors] = [{} for _ in models]
    weight_variance: list[Tensors] = [{} for _ in models]
    for k in names:
        raw = torch.stack([v[k].detach().to(device, torch.float64) for v, _ in estimates])
        floored = raw.clamp_min(epsilon)
        total = floored.sum(0)
        lam = floored / total
        theta = torch.stack([p[k].detach().to(torch.float64) for p in named])
        merged = (lam * theta).sum(0)
        parameters[k] = merged
        for j in range(len(models)):
            weights[j][k] = lam[j]
        if with_error:
            # the floor is flat: a floored estimate does not move the weights
            sigma2 = torch.stack([var[k].detach().to(device, torch.float64) for _, var in estimates])
            sigma2 = torch.where(raw > epsilon, sigma2.clamp_min(0.0), torch.zeros_like(sigma2))
            for j in range(len(models)):
                others = [i for i in range(len(models)) if i != j]
                # (1 − λ_j) S = Σ_{i≠j} F̃_i, summed without cancellation
                rest, spread = floored[others].sum(0), sigma2[others].sum(0)
                weight_variance[j][k] = (rest**2 * sigma2[j] + floored[j] ** 2 * spread) / total**4
            # θ_j − θ_merged = Σ_i λ_i (θ_j − θ_i), free of cancellation when λ_j ≈ 1
            offset = (lam[None] * (theta[:, None] - theta[None])).sum(1)
            variance_of[k] = (offset**2 * sigma2).sum(0) / total**2
    return FisherMerge(parameters, weights, weight_variance if with_error else None,
                       variance_of if with_error else None, float(epsilon))
