"""A sample-size plan: per group of parameters, the design of every estimator that meets a
target (the mathematics is :mod:`fimvar.estimators.design`, docs/theory.md §8.2).

All quantities are plug-in estimates from the analysed run (its inputs stand for the input
distribution); a plan from few inputs is itself noisy, and says so in its notes.
"""

from __future__ import annotations

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
    design,
)
from fimvar.estimators.variance import combined_variance
from fimvar.results.groups import with_model_group
from fimvar.results.presentation import present


def noise_terms(result, members: list[str]) -> NoiseTerms:
    """The :class:`~fimvar.estimators.design.NoiseTerms` of a group of parameters of a
    :class:`~fimvar.DiagonalResult`: ``‖I_g‖²``, ``a = Σ Var_x I``, ``b_e = Σ v_e``."""

    def total(values) -> float:
        return sum(float(values[m].to(torch.float64).sum()) for m in members)

    combined = {m: combined_variance(result.v1[m], result.v2[m], result.c12[m]) for m in members}
    return NoiseTerms(
        parameters=sum(result.fisher[m].numel() for m in members),
        fisher_sq=sum(float(result.fisher[m].to(torch.float64).pow(2).sum()) for m in members),
        input=total(result.input_var),
        label={"i1": total(result.v1), "i2": total(result.v2), "combined": total(combined),
               "exact": 0.0},
    )


@dataclass
class GroupPlan:
    """Designs of every estimator for one group; ``recommended`` is the cheapest (normal).
    ``at_run_draws``: the normal-approximation design of each estimator with the run's own
    number of draws (the inputs *this* run's estimator would need)."""

    group: str
    terms: NoiseTerms
    designs: list[Design] = field(default_factory=list)
    at_run_draws: dict[str, Design] = field(default_factory=dict)

    def get(self, estimator: str, method: str = "normal") -> Design | None:
        for d in self.designs:
            if d.estimator == estimator and d.method == method:
                return d
        return None

    def recommended(self, method: str = "normal") -> Design | None:
        """The cheapest design for ``method`` (designs of unknown cost are not compared)."""
        options = [d for d in self.designs if d.method == method and d.cost is not None]
        return min(options, key=lambda d: (d.cost, d.samples)) if options else None


@dataclass
class Plan:
    """Per-group designs for a target ``ρ`` and confidence ``1 − δ`` (docs/theory.md §8.2)."""

    target: Target
    cost: CostModel
    groups: list[GroupPlan]
    draws: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rho(self) -> float:
        return self.target.rho

    @property
    def delta(self) -> float:
        return self.target.delta

    def find(self, name: str) -> GroupPlan | None:
        return next((g for g in self.groups if g.group == name), None)

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


def make_plan(result, target: Target, *, cost: CostModel | None = None, draws: int | None = None,
              include_model: bool = True) -> Plan:
    """Plan the sample size per group of a :class:`~fimvar.DiagonalResult`.

    Args:
        result: an analysis result (its inputs stand for the input distribution).
        target: relative error ρ of each group's diagonal Fisher (Euclidean norm) with
            probability ≥ 1 − δ.
        cost: the :class:`~fimvar.CostModel` (default: forward 0.5, backward 1,
            Hessian-diagonal 2, ``outputs`` from the result's metadata).
        draws: fix the number of label draws M per input instead of optimising it.
        include_model: add the pooled group ``"(model)"`` of every parameter.
    """
    if draws is not None and (isinstance(draws, bool) or int(draws) < 1):
        raise FimvarError(f"draws must be an integer ≥ 1, got {draws!r}")
    outputs = result.metadata.get("outputs")
    cost = cost or CostModel(outputs=outputs)
    if cost.outputs is None and outputs is not None:
        cost = CostModel(cost.forward, cost.backward, cost.hessian, outputs)
    groups = with_model_group(result.groups) if include_model else dict(result.groups)
    plans = []
    for group, members in groups.items():
        terms = noise_terms(result, members)
        group_plan = GroupPlan(group, terms)
        for estimator in ESTIMATORS:
            for method in METHODS:
                found = design(terms, estimator, target, method, cost, draws)
                if found is not None:
                    group_plan.designs.append(found)
            at_run = design(terms, estimator, target, "normal", cost, result.samples)
            if at_run is not None:
                group_plan.at_run_draws[estimator] = at_run
        plans.append(group_plan)
    notes = []
    if result.num_inputs < 2:
        notes.append("one input analysed: the input noise is unknown (taken as 0); analyse more inputs")
    elif result.num_inputs < 30:
        notes.append(f"only {result.num_inputs} inputs analysed: the plan's noise estimates are rough")
    if cost.outputs is None:
        notes.append("the output width T is unknown, so the exact estimator's cost is not compared")
    return Plan(target, cost, plans, None if draws is None else int(draws), notes)


def plan(result, rho: float | None = None, delta: float | None = None, *,
         cost: CostModel | None = None, draws: int | None = None, include_model: bool = True) -> Plan:
    """:meth:`fimvar.DiagonalResult.plan` as a function (defaults ρ = 0.1, δ = 0.05)."""
    return make_plan(result, Target.of(rho, delta), cost=cost, draws=draws, include_model=include_model)
