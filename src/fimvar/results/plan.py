"""A sample-size plan: per group of parameters, the design of every estimator that meets a
target (the mathematics is :mod:`fimvar.estimators.design`, docs/theory.md §8.2).

All quantities are plug-in estimates from the analysed run (its inputs stand for the input
distribution); a plan from few inputs is itself noisy, and says so in its notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.design import (
    ESTIMATORS,
    METHODS,
    CostModel,
    Design,
    NoiseTerms,
    Target,
    confidence_factor,
    design,
    required_inputs,
)
from fimvar.results.groups import MODEL_GROUP, with_model_group
from fimvar.results.presentation import present


def noise_terms(result, members: list[str]) -> NoiseTerms:
    """The :class:`~fimvar.estimators.design.NoiseTerms` of a group of parameters: ``‖I_g‖²``,
    ``a = Σ Var_x I``, ``b_e = Σ v_e``.

    A layer's sums need no independence between its parameters: the target is the Euclidean
    norm, and ``E‖Î_g − I_g‖² = Σ_i Var Î(θ_i)`` by linearity of expectation whatever their
    covariances (:mod:`fimvar.estimators.design`). For a :class:`~fimvar.DiagonalResult`,
    ``‖I_g‖²`` is that of its exact :attr:`~fimvar.DiagonalResult.fisher` and ``b_i2`` its
    :meth:`~fimvar.DiagonalResult.label_variance_sum` and ``b_combined`` its
    :meth:`~fimvar.DiagonalResult.combined_label_sum` (probe estimates summed, then clamped once); for a
    :class:`~fimvar.SampledResult` (Î1 only) the plug-in ``‖Î1_g‖²``, ``a`` the sum of its
    clamped input noise (never below the unbiased one, so its N is never below that of
    :meth:`~fimvar.SampledResult.variance`) and ``b`` the sum of its unbiased ``v1``
    (docs/theory.md §17.4)."""

    def total(values) -> float:
        return sum(float(values[m].to(torch.float64).sum()) for m in members)

    if tuple(getattr(result, "estimators", ESTIMATORS)) == ("i1",):  # a SampledResult
        return NoiseTerms(
            parameters=sum(result.i1[m].numel() for m in members),
            fisher_sq=sum(float(result.i1[m].to(torch.float64).pow(2).sum()) for m in members),
            input=total(result.input_var),
            label={"i1": total(result.v1)},
        )
    label = {"i1": total(result.v1)}
    if "i2" in result.estimators:  # not in a first-order analysis
        label.update(i2=result.label_variance_sum("i2", members), combined=result.combined_label_sum(members))
    label["exact"] = 0.0
    return NoiseTerms(
        parameters=sum(result.fisher[m].numel() for m in members),
        fisher_sq=sum(float(result.fisher[m].to(torch.float64).pow(2).sum()) for m in members),
        input=total(result.input_var),
        label=label,
    )


@dataclass(frozen=True)
class Accuracy:
    """How accurate one estimator of a group is with the run's own ``inputs`` N and ``draws`` M,
    and whether that N meets the target (the rule of :func:`~fimvar.estimators.design.required_inputs`,
    normal approximation).

    Attributes:
        estimator: ``exact`` (:attr:`~fimvar.DiagonalResult.fisher`: exact over the labels,
            averaged over the N inputs), ``i1``, ``i2`` or ``combined``.
        inputs, draws: the design of the run (``draws`` 0 for the exact estimator).
        fisher_norm: ``‖I_g‖₂`` over the group's parameters.
        standard_error: ``sqrt(E‖Î_g − I_g‖²) = sqrt((a + b/M)/N)``, the root of the summed
            per-parameter variances (:meth:`~fimvar.DiagonalResult.standard_error`).
        relative_error: ``standard_error / fisher_norm``, the RMS relative error.
        error_at_confidence: ``z · relative_error`` with ``z = z_{1−δ/2}``: with probability
            ≥ 1 − δ the relative error ‖Î_g − I_g‖/‖I_g‖ is below it (normal approximation);
            ``None`` where ‖I_g‖ = 0.
        inputs_needed: the inputs for the target with the same M (``None`` when no design exists).
        available: the inputs the data set has (default: N).
    """

    estimator: str
    inputs: int
    draws: int
    fisher_norm: float
    standard_error: float
    relative_error: float | None
    error_at_confidence: float | None
    inputs_needed: int | None
    available: int

    @property
    def enough(self) -> bool:
        """Whether the data set's inputs meet the target with this estimator and M."""
        return self.inputs_needed is not None and self.inputs_needed <= self.available


@dataclass
class GroupPlan:
    """Designs of every estimator for one group; ``recommended`` is the cheapest (normal).
    ``at_run_draws``: the normal-approximation design of each estimator with the run's own
    number of draws (the inputs *this* run's estimator would need); ``accuracy``: per estimator,
    its :class:`Accuracy` with the run's N and M."""

    group: str
    terms: NoiseTerms
    designs: list[Design] = field(default_factory=list)
    at_run_draws: dict[str, Design] = field(default_factory=dict)
    accuracy: dict[str, Accuracy] = field(default_factory=dict)

    def get(self, estimator: str, method: str = "normal") -> Design | None:
        for d in self.designs:
            if d.estimator == estimator and d.method == method:
                return d
        return None

    def recommended(self, method: str = "normal") -> Design | None:
        """The cheapest design for ``method`` (designs of unknown cost are not compared)."""
        options = [d for d in self.designs if d.method == method and d.cost is not None]
        return min(options, key=lambda d: (d.cost, d.samples)) if options else None

    def inputs_for(self, estimator: str, target: Target, draws: int, method: str = "normal") -> float:
        """The continuous number of inputs ``k (a + b/M)/(ρ²‖I_g‖²)`` of this group for any target
        (``inf`` where ‖I_g‖ = 0): the curve of the sample-size figure."""
        return required_inputs(self.terms, estimator, target, method, max(int(draws), 1))


@dataclass
class Plan:
    """Per-group designs for a target ``ρ`` and confidence ``1 − δ`` (docs/theory.md §8.2)."""

    target: Target
    cost: CostModel
    groups: list[GroupPlan]
    draws: int | None = None
    notes: list[str] = field(default_factory=list)
    #: the run's design (N inputs, M draws) and the inputs the data set has (default N)
    inputs: int = 0
    samples: int = 0
    available: int = 0
    #: group id → human name (:meth:`~fimvar.DiagonalResult.layer_name`)
    names: dict[str, str] = field(default_factory=dict)

    def name(self, group: str) -> str:
        """The human name of a group (its id when unknown)."""
        return self.names.get(group, group)

    @property
    def rho(self) -> float:
        return self.target.rho

    @property
    def delta(self) -> float:
        return self.target.delta

    def find(self, name: str) -> GroupPlan | None:
        return next((g for g in self.groups if g.group == name), None)

    @property
    def z(self) -> float:
        """``z_{1−δ/2}``: the normal-approximation factor of every sample size (``k = z²``)."""
        return math.sqrt(confidence_factor(self.delta, "normal"))

    def accuracy(self, estimator: str | None = None) -> dict[str, Accuracy]:
        """Per group, the :class:`Accuracy` of ``estimator`` with the run's N and M (default: the
        exact estimator, i.e. :attr:`~fimvar.DiagonalResult.fisher`; ``i1`` for a sampled
        analysis, which has no other)."""
        if estimator is None:
            held = self.groups[0].accuracy if self.groups else {}
            estimator = "exact" if "exact" in held or not held else next(iter(held))
        if estimator not in ESTIMATORS:
            raise FimvarError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
        if self.groups and estimator not in self.groups[0].accuracy:
            known = ", ".join(self.groups[0].accuracy)
            raise FimvarError(f"this plan has no estimator {estimator!r}; it has {known}")
        return {g.group: g.accuracy[estimator] for g in self.groups}

    def group(self, name: str) -> GroupPlan:
        found = self.find(name)
        if found is None:
            raise FimvarError(f"no group {name!r} in the plan; groups: {[g.group for g in self.groups]}")
        return found

    def to_dict(self) -> dict:
        """JSON-ready form (the ``plan`` section of ``summary.json``)."""
        return present(self, "document")

    def table(self, detailed: bool = False) -> str:
        """Text table (80 columns): the recommended design per group, normal approximation and
        Chebyshev; ``detailed`` lists every estimator."""
        return present(self, "table", detailed=detailed)

    def __str__(self) -> str:
        return self.table()


def accuracy(terms: NoiseTerms, estimator: str, target: Target, inputs: int, draws: int,
             available: int) -> Accuracy:
    """The :class:`Accuracy` of ``estimator`` for a group with ``inputs`` × ``draws``."""
    draws = 0 if estimator == "exact" else draws
    squared = terms.mean_squared_error(estimator, inputs, draws)
    norm = math.sqrt(terms.fisher_sq)
    relative = math.sqrt(squared) / norm if norm > 0 else None
    z = math.sqrt(confidence_factor(target.delta, "normal"))
    needed = design(terms, estimator, target, "normal", None, None if estimator == "exact" else draws)
    return Accuracy(estimator, inputs, draws, norm, math.sqrt(squared), relative,
                    None if relative is None else z * relative,
                    None if needed is None else needed.inputs, available)


def make_plan(result, target: Target, *, cost: CostModel | None = None, draws: int | None = None,
              include_model: bool = True, available: int | None = None) -> Plan:
    """Plan the sample size per group of a :class:`~fimvar.DiagonalResult`.

    Args:
        result: an analysis result (its inputs stand for the input distribution).
        target: relative error ρ of each group's diagonal Fisher (Euclidean norm) with
            probability ≥ 1 − δ.
        cost: the :class:`~fimvar.CostModel` (default: forward 0.5, backward 1,
            Hessian-diagonal 2, ``outputs`` from the result's metadata).
        draws: fix the number of label draws M per input instead of optimising it.
        include_model: add the pooled group ``"(model)"`` of every parameter.
        available: the inputs the data set has (default: the N analysed), against which each
            :class:`Accuracy` says whether the data set is big enough.
    """
    if draws is not None and (isinstance(draws, bool) or int(draws) < 1):
        raise FimvarError(f"draws must be an integer ≥ 1, got {draws!r}")
    if available is None:
        available = result.num_inputs
    elif isinstance(available, bool) or not isinstance(available, int) or available < 1:
        raise FimvarError(f"available (the inputs the data set has) must be an integer ≥ 1, got "
                          f"{available!r}")
    outputs = result.metadata.get("outputs")
    cost = cost or CostModel(outputs=outputs)
    if cost.outputs is None and outputs is not None:
        cost = CostModel(cost.forward, cost.backward, cost.hessian, outputs)
    groups = with_model_group(result.groups) if include_model else dict(result.groups)
    estimators = tuple(getattr(result, "estimators", ESTIMATORS))  # a SampledResult: Î1 alone
    primary = "exact" if "exact" in estimators else estimators[0]  # the estimate the run holds
    plans = []
    for group, members in groups.items():
        terms = noise_terms(result, members)
        group_plan = GroupPlan(group, terms)
        for estimator in estimators:
            for method in METHODS:
                found = design(terms, estimator, target, method, cost, draws)
                if found is not None:
                    group_plan.designs.append(found)
            at_run = design(terms, estimator, target, "normal", cost, result.samples)
            if at_run is not None:
                group_plan.at_run_draws[estimator] = at_run
            group_plan.accuracy[estimator] = accuracy(terms, estimator, target, result.num_inputs,
                                                      result.samples, available)
        plans.append(group_plan)
    notes = []
    if result.num_inputs < 2:
        notes.append("one input analysed: the input noise is unknown (taken as 0); analyse more inputs")
    elif result.num_inputs < 30:
        notes.append(f"only {result.num_inputs} inputs analysed: the plan's noise estimates are rough")
    if cost.outputs is None:
        notes.append("the output width T is unknown, so the exact estimator's cost is not compared")
    layers = [g for g in plans if g.group != MODEL_GROUP]  # the whole model is not a layer
    short = [g for g in layers if not g.accuracy[primary].enough]
    if short:
        what = (f"the {available:,} inputs analysed are" if available == result.num_inputs
                else f"the data set's {available:,} inputs are")
        which = "the exact Fisher" if primary == "exact" else f"Î1 with M={result.samples} draws"
        notes.append(f"{what} not enough for relative error ≤ {target.rho:g} with probability ≥ "
                     f"{1 - target.delta:g} of {which} in {len(short)} of {len(layers)} layers "
                     f"({', '.join(result.layer_name(g.group) for g in short)}): see the inputs needed")
    return Plan(target, cost, plans, None if draws is None else int(draws), notes,
                inputs=result.num_inputs, samples=result.samples, available=available,
                names={g: result.layer_name(g) for g in groups})


def plan(result, rho: float | None = None, delta: float | None = None, *,
         cost: CostModel | None = None, draws: int | None = None, include_model: bool = True,
         available: int | None = None) -> Plan:
    """:meth:`fimvar.DiagonalResult.plan` as a function (defaults ρ = 0.1, δ = 0.05)."""
    return make_plan(result, Target.of(rho, delta), cost=cost, draws=draws, include_model=include_model,
                     available=available)
