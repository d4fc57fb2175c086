"""The result of an estimator audit (:func:`fimvar.audit`, docs/theory.md §15): per estimator, its
expectation, bias against the Fisher and variance per parameter; per layer, its relative bias and
standard deviation, the inputs it needs for a target and their cost, and the recommendation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.design import METHODS, CostModel, Target, confidence_factor
from fimvar.estimators.practical import required_inputs
from fimvar.results.groups import with_model_group
from fimvar.results.presentation import present

Tensors = dict[str, torch.Tensor]

#: every estimator an audit knows, in the order of its tables
ESTIMATORS = ("exact", "i1", "mc", "token", "i2", "combined", "hutchinson", "gnb", "empirical", "ewc")
#: display names
LABELS = {"exact": "exact", "i1": "Î1", "mc": "MC Fisher", "i2": "Î2", "combined": "combined",
          "hutchinson": "Hutchinson", "token": "per-token MC", "gnb": "GNB", "empirical": "empirical",
          "ewc": "EWC"}
#: the target of an audit unless the user gives one: 5 % relative error with probability 95 %
AUDIT_TARGET = Target(0.05, 0.05)


@dataclass
class EstimatorAudit:
    """One estimator at the audited design, per parameter (tensors of the parameter's shape).

    Attributes:
        estimator: its key (``"ewc"``, ``"gnb"``, ``"empirical"``, ``"i1"``, ``"mc"``, ``"i2"``,
            ``"combined"``, ``"hutchinson"``, ``"exact"``).
        description: what it computes and where it comes from.
        randomness: what :attr:`variance` is over (the shuffle, the sampled labels, the inputs).
        mean: its exact expectation.
        bias: ``mean − I`` against the diagonal Fisher ``I`` of the analysed inputs.
        variance: its variance at the audited design (over :attr:`randomness`).
        variance_given_inputs: its variance with the analysed inputs fixed (0 for the exact and
            empirical Fisher; for EWC and GNB the same as :attr:`variance`).
        bias_independent: its bias when its batches (or inputs) are drawn independently from the
            data (the analysed inputs standing for the data distribution).
        unit_variance: ``n ×`` its variance over ``n`` inputs drawn independently from the data
            (for a batch estimator, ``n/B`` independent batches): the variance a sample size is
            planned from, ``Var = unit_variance / n``.
        cost_per_input: backward passes per input (:class:`~fimvar.CostModel`), ``None`` if unknown.
        batch_size: ``B`` of a batch estimator (else ``None``); its sample sizes are multiples of B.
        draws: label draws per input (Î1, MC, Î2, combined, Hutchinson, GNB), else ``None``.
        probes: Rademacher probes per label draw (Hutchinson), else ``None``.
        estimated: what in :attr:`variance` is estimated rather than exact (empty: all exact).
    """

    estimator: str
    description: str
    randomness: str
    mean: Tensors
    bias: Tensors
    variance: Tensors
    variance_given_inputs: Tensors
    bias_independent: Tensors
    unit_variance: Tensors
    cost_per_input: float | None
    batch_size: int | None = None
    draws: int | None = None
    probes: int | None = None
    estimated: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.estimator]

    def relative_std(self) -> Tensors:
        """``sqrt(variance) / I`` per parameter (``inf`` where ``I = 0`` and the variance is not)."""
        return {k: _ratio(v.sqrt(), self.mean[k] - self.bias[k]) for k, v in self.variance.items()}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    zero = torch.where(numerator == 0, torch.zeros_like(numerator), torch.full_like(numerator, math.inf))
    return torch.where(denominator != 0, numerator / safe.abs(), zero)


@dataclass
class LayerAudit:
    """One estimator on one group of parameters: ``‖b‖/‖I‖``, ``sqrt(Σ Var)/‖I‖`` at the audited
    design, the inputs needed for the target (``None``: unreachable, the bias exceeds it or
    ``‖I‖ = 0``) by method, and their cost in backward passes (``None`` if unknown)."""

    group: str
    estimator: str
    relative_bias: float
    relative_std: float
    inputs: dict[str, int | None]
    cost: dict[str, float | None]

    def meets(self, method: str = "normal") -> bool:
        return self.inputs[method] is not None


@dataclass
class AuditResult:
    """What :func:`fimvar.audit` computes.

    With one audited estimator, :attr:`mean`, :attr:`variance` and :attr:`bias` are its dicts
    (parameter name → tensor of the parameter's shape, float64); with several, index the result
    by the estimator (``a["ewc"].mean``).
    """

    family: str
    num_inputs: int
    batch_size: int | None
    samples: int
    shapes: dict[str, torch.Size]
    groups: dict[str, list[str]]
    fisher: Tensors
    entries: dict[str, EstimatorAudit]
    target: Target = AUDIT_TARGET
    cost: CostModel = field(default_factory=CostModel)
    notes: list[str] = field(default_factory=list)
    #: the processes that shared the pass (``torch.distributed``, docs/theory.md §16); 1 for one
    world_size: int = 1

    # ------------------------------------------------------------------ per estimator
    def __getitem__(self, estimator: str) -> EstimatorAudit:
        if estimator not in self.entries:
            raise FimvarError(f"the estimator {estimator!r} was not audited; audited: {list(self.entries)}")
        return self.entries[estimator]

    def _single(self) -> EstimatorAudit:
        if len(self.entries) != 1:
            raise FimvarError(f"{len(self.entries)} estimators were audited ({', '.join(self.entries)}); "
                              "pick one: result[\"ewc\"].mean, or audit with estimator=\"ewc\"")
        return next(iter(self.entries.values()))

    @property
    def estimator(self) -> str:
        """The audited estimator (one audited estimator only)."""
        return self._single().estimator

    @property
    def mean(self) -> Tensors:
        """Expectation of the audited estimator per parameter."""
        return self._single().mean

    @property
    def variance(self) -> Tensors:
        """Variance of the audited estimator per parameter at the audited design."""
        return self._single().variance

    @property
    def bias(self) -> Tensors:
        """``mean − I`` per parameter."""
        return self._single().bias

    # ------------------------------------------------------------------ per layer
    def layers(self, estimator: str | None = None, include_model: bool = True) -> list[LayerAudit]:
        """One :class:`LayerAudit` per group (and the pooled ``(model)``) and estimator."""
        keys = list(self.entries) if estimator is None else [self[estimator].estimator]
        groups = with_model_group(self.groups) if include_model else dict(self.groups)
        return [self._layer(group, members, self.entries[key]) for group, members in groups.items()
                for key in keys]

    def _layer(self, group: str, members: list[str], entry: EstimatorAudit) -> LayerAudit:
        def total(values: Tensors, power: int = 1) -> float:
            return sum(float(values[m].pow(power).sum()) for m in members)

        fisher_norm = math.sqrt(total(self.fisher, 2))
        bias_norm = math.sqrt(total(entry.bias, 2))
        std = math.sqrt(max(total(entry.variance), 0.0))

        def relative(value: float) -> float:
            return value / fisher_norm if fisher_norm > 0 else (0.0 if value == 0 else math.inf)

        inputs, cost = {}, {}
        for method in METHODS:
            needed = required_inputs(total(entry.unit_variance), math.sqrt(total(entry.bias_independent, 2)),
                                     fisher_norm, self.target, method)
            count = None
            if needed < 2**62:
                count = max(1, math.ceil(needed - 1e-9 * needed))
                if entry.batch_size:
                    count = entry.batch_size * math.ceil(count / entry.batch_size)
            inputs[method] = count
            known = count is not None and entry.cost_per_input is not None
            cost[method] = count * entry.cost_per_input if known else None
        return LayerAudit(group, entry.estimator, relative(bias_norm), relative(std), inputs, cost)

    def recommended(self, group: str | None = None, method: str = "normal") -> str | None:
        """The cheapest audited estimator that meets the target on ``group`` (default: the whole
        model), by the cost of the inputs it needs; ``None`` if none does."""
        groups = with_model_group(self.groups)
        group = group if group is not None else next(reversed(groups))
        if group not in groups:
            raise FimvarError(f"no group {group!r}; groups: {list(groups)}")
        rows = [self._layer(group, groups[group], e) for e in self.entries.values()]
        options = [r for r in rows if r.cost[method] is not None]
        if not options:
            return None
        return min(options, key=lambda r: (r.cost[method], r.inputs[method])).estimator

    def std_threshold(self, method: str = "normal") -> float:
        """The relative standard deviation ``ρ/√k`` at or below which an unbiased estimator meets
        the target (``k = z²_{1−δ/2}`` or ``1/δ``, docs/theory.md §15.5): ``std ≤ ρ/√k`` is
        :func:`~fimvar.estimators.practical.required_inputs`' condition ``n ≥ k a/(ρ‖I‖)²`` with
        ``std² = a/(n‖I‖²)``; a bias ``b`` shrinks the allowance to ``(ρ − ‖b‖/‖I‖)/√k``."""
        if method not in METHODS:
            raise FimvarError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        return self.target.rho / math.sqrt(confidence_factor(self.target.delta, method))

    # ------------------------------------------------------------------ presentation
    def to_dict(self) -> dict:
        """JSON-ready form: the design, the target, per estimator its description and what its
        variance is over, and per layer and estimator the row of :meth:`layers` (``None`` for an
        unreachable sample size), with the recommendation per method."""
        return {
            "family": self.family, "inputs": self.num_inputs, "batch_size": self.batch_size,
            "samples": self.samples, "world_size": self.world_size,
            "target": {"rho": self.target.rho, "delta": self.target.delta},
            "estimators": {k: {"description": e.description, "randomness": e.randomness,
                               "cost_per_input": e.cost_per_input,
                               **({"probes": e.probes} if e.probes is not None else {}),
                               **({"estimated": list(e.estimated)} if e.estimated else {})}
                           for k, e in self.entries.items()},
            "layers": [{"group": r.group, "estimator": r.estimator, "relative_bias": r.relative_bias,
                        "relative_std": r.relative_std if math.isfinite(r.relative_std) else None,
                        "inputs": r.inputs, "cost": r.cost} for r in self.layers()],
            "recommended": {m: self.recommended(method=m) for m in METHODS},
            "recommended_per_group": {g: {m: self.recommended(g, m) for m in METHODS}
                                      for g in with_model_group(self.groups)},
            "std_threshold": {m: self.std_threshold(m) for m in METHODS},
            "notes": list(self.notes),
        }

    def plot(self, which: str = "audit", path=None):
        """The matplotlib figure of the audit (``which="audit"``, the only one): per layer and
        estimator, (a) the relative bias, (b) the relative standard deviation at the audited
        design and (c) the inputs needed for the target, on log scales (:mod:`fimvar.report.plots`).
        With ``path``, also save it there (``"all"``: a dict, saved into the folder ``path``)."""
        return present(self, "plot", which, path, None)

    def save(self, directory, *, figures: bool = True, html: bool = True, run: dict | None = None):
        """Write ``audit.json`` (:meth:`to_dict` with the run metadata), ``figures/audit.png|svg``
        and ``report.html`` (the tables and the figure) into ``directory``. Returns the folder."""
        return present(self, "save", directory, figures=figures, html=html, run=run)

    def summary(self) -> str:
        """A per-layer text table: per estimator the relative bias, the relative standard
        deviation at the audited design, the inputs needed for the target (normal approximation
        and Chebyshev) and their cost; then the recommendation."""
        def number(value: int | float | None) -> str:
            if value is None:
                return "—"
            if isinstance(value, float) and not math.isfinite(value):
                return "inf"
            if isinstance(value, float):
                return f"{value:.3g}"
            return f"{value:d}" if value < 10**7 else f"{value:.2e}"

        design = f"N = {self.num_inputs}"
        if self.batch_size:
            design += f", batches of {self.batch_size}"
        design += f", {self.samples} draw{'s' if self.samples != 1 else ''} per input"
        lines = [f"fimvar audit ({self.family}; {design}); target: relative error "
                 f"{self.target.rho:g} with probability {1 - self.target.delta:g}",
                 f"{'layer':<18}{'estimator':<11}{'rel.bias':>9}{'rel.std':>9}"
                 f"{'inputs(normal)':>15}{'inputs(cheb.)':>14}{'cost':>11}"]
        for row in self.layers():
            lines.append(f"{row.group[:17]:<18}{LABELS[row.estimator]:<11}{number(row.relative_bias):>9}"
                         f"{number(row.relative_std):>9}{number(row.inputs['normal']):>15}"
                         f"{number(row.inputs['chebyshev']):>14}{number(row.cost['normal']):>11}")
        best = self.recommended()
        lines.append("recommended (whole model, normal approximation): "
                     + (LABELS[best] if best else "none meets the target"))
        lines.append("rel.std: at this design, over the shuffle (and the labels) of these inputs for EWC "
                     "and GNB, over the inputs as a sample of the data (and the labels, and Hutchinson's "
                     "probes) for the others; "
                     "inputs: drawn independently from the data (batch estimators: independent batches), "
                     "— where the bias alone exceeds the target; cost: backward passes")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"AuditResult(family={self.family!r}, inputs={self.num_inputs}, "
                f"batch_size={self.batch_size}, estimators={list(self.entries)})")
