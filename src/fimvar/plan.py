"""Sample-size planning: which estimator, how many inputs and label draws (theory.md §8).

Target, per parameter group g (a layer by default): the relative error of the group's diagonal
Fisher, measured in the Euclidean norm over its parameters,

    ‖Î_g − I_g‖₂ / ‖I_g‖₂ ≤ ρ        with probability ≥ 1 − δ.

For one parameter this is the relative error |Î − I| / I of theory §8. For a whole layer it weighs
the parameters by their Fisher information, so parameters whose Fisher is (nearly) zero — dead
pixels, saturated units — do not make the target unreachable.

Variance of an estimator averaged over ``N_x`` inputs with ``M`` label draws each (theory §3,
[B] Thm 4.7), summed over the group, with ``a = Σ_i Var_x I(θ_i|x)`` (input noise) and
``b_e = Σ_i E_x v_e(θ_i|x)`` (label noise of one draw):

    E‖Î_g − I_g‖² = Σ_i Var Î(θ_i) = (a + b_e / M) / N_x

with ``b_e`` equal to ``Σ v1`` for Î1, ``Σ v2`` for Î2, ``Σ (v1 v2 − c12²)/(v1 + v2 − 2 c12)`` for the
minimum-variance combination α*Î1 + (1−α*)Î2 with α* chosen per parameter (§8; α* does not depend
on N_x or M, and the input noise of any such combination is still ``a``), and 0 for the exact
(Rao–Blackwellised) ``I(θ|x)`` averaged over the inputs.

Required number of inputs, with ``k`` the confidence factor:

    N_x ≥ k (a + b_e / M) / (ρ² ‖I_g‖²)

- Chebyshev (distribution-free, rigorous): ``k = 1/δ``. Markov's inequality on ‖Î − I‖² gives
  ``P(‖Î−I‖² ≥ ρ²‖I‖²) ≤ E‖Î−I‖² / (ρ²‖I‖²)``; for one parameter it is Chebyshev's ``N ≥ v/(δρ²I²)``.
- Normal approximation: ``k = z²_{1−δ/2}``. If the error is Gaussian (central limit theorem over
  the N_x inputs), ‖Î−I‖² is a Gaussian quadratic form; for δ ≤ 0.215 its upper tail is at most that
  of a single χ²₁ with the same mean, whatever the correlations between parameters (Székely &
  Bakirov, *Extremal probabilities for Gaussian quadratic forms*, PTRF 126, 2003), so this ``k``
  suffices. For one parameter it is ``N ≥ z² v/(ρ² I²)`` of theory §8.

Cost model, in units of one backward pass through the network for one input (:class:`CostModel`):
each input costs a forward pass ``F`` (default 0.5); each label draw costs one backward pass for
Î1 (the sampled score), one Hessian-diagonal pass ``H`` for Î2 (default 2: a forward-over-reverse
pass, which also yields the score, so the combination costs ``H`` per draw too); the exact
estimator costs ``T`` backward passes per input (one per output-Jacobian row) and no draws. The
cost of a design is ``N_x · (F + M · c_e)``; it is minimised over the number of draws M:
continuously at ``M* = sqrt(b_e F / (a c_e))``, then over the neighbouring integers.

All quantities are plug-in estimates from the analysed run (its inputs stand for the input
distribution); a plan from few inputs is itself noisy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from fimvar.errors import FimvarError

#: the estimators a plan compares, and their display names
ESTIMATORS = ("i1", "i2", "combined", "exact")
LABELS = {"i1": "Î1", "i2": "Î2", "combined": "combined", "exact": "exact"}
METHODS = ("normal", "chebyshev")
#: the pseudo-group pooling every analysed parameter
MODEL = "(model)"


@dataclass(frozen=True)
class CostModel:
    """Relative cost of the estimators, in backward passes of one input (see module docs)."""

    forward: float = 0.5
    backward: float = 1.0
    hessian: float = 2.0
    outputs: int | None = None

    def per_draw(self, estimator: str) -> float:
        """Cost ``c_e`` of one label draw (0 for the exact estimator)."""
        return {"i1": self.backward, "i2": self.hessian,
                "combined": max(self.hessian, self.backward), "exact": 0.0}[estimator]

    def per_input(self, estimator: str, draws: int) -> float | None:
        """Cost of one input with ``draws`` label draws; ``None`` when unknown (exact without T)."""
        if estimator == "exact":
            return None if self.outputs is None else self.forward + self.outputs * self.backward
        return self.forward + draws * self.per_draw(estimator)


def confidence_factor(delta: float, method: str) -> float:
    """``k`` of ``N ≥ k v / (ρ² I²)``: ``1/δ`` (Chebyshev) or ``z²_{1−δ/2}`` (normal)."""
    if method == "chebyshev":
        return 1.0 / delta
    if method == "normal":
        from scipy.stats import norm

        return float(norm.ppf(1.0 - delta / 2.0)) ** 2
    raise FimvarError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


@dataclass
class NoiseTerms:
    """Group sums that determine every design: ``‖I_g‖²``, input noise ``a``, label noise ``b_e``."""

    parameters: int
    fisher_sq: float
    input: float
    label: dict[str, float]

    def relative_mse(self, estimator: str, inputs: int, draws: int) -> float:
        """``E‖Î − I‖² / ‖I‖² = (a + b_e/M) / (N_x ‖I‖²)``."""
        label = 0.0 if estimator == "exact" else self.label[estimator] / max(draws, 1)
        return (self.input + label) / (inputs * self.fisher_sq)


def combined_label_variance(v1: torch.Tensor, v2: torch.Tensor, c12: torch.Tensor) -> torch.Tensor:
    """Per-draw label variance of the per-parameter optimal combination (theory §8):
    ``(v1 v2 − c12²) / (v1 + v2 − 2 c12)``, or ``min(v1, v2)`` where the denominator is 0."""
    denominator = v1 + v2 - 2 * c12
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    optimum = ((v1 * v2 - c12**2) / safe).clamp_min(0.0)
    return torch.where(denominator > 0, torch.minimum(optimum, torch.minimum(v1, v2)),
                       torch.minimum(v1, v2))


def noise_terms(result, members: list[str]) -> NoiseTerms:
    """The :class:`NoiseTerms` of a group of parameters of a :class:`~fimvar.DiagonalResult`."""

    def total(values) -> float:
        return sum(float(values[m].to(torch.float64).sum()) for m in members)

    combined = {m: combined_label_variance(result.v1[m], result.v2[m], result.c12[m]) for m in members}
    return NoiseTerms(
        parameters=sum(result.fisher[m].numel() for m in members),
        fisher_sq=sum(float(result.fisher[m].to(torch.float64).pow(2).sum()) for m in members),
        input=total(result.input_var),
        label={"i1": total(result.v1), "i2": total(result.v2), "combined": total(combined),
               "exact": 0.0},
    )


@dataclass
class Design:
    """A design that meets the target: ``inputs`` × ``draws`` and its cost (None if unknown)."""

    estimator: str
    method: str
    inputs: int
    draws: int
    cost: float | None
    #: predicted root-mean-square relative error of the design, sqrt(E‖Î−I‖²)/‖I‖
    relative_rmse: float

    @property
    def samples(self) -> int:
        """Total (input, label) pairs, ``N_x · M`` (``N_x`` for the exact estimator)."""
        return self.inputs * max(self.draws, 1)


def required_inputs(terms: NoiseTerms, estimator: str, rho: float, delta: float, method: str,
                    draws: int) -> float:
    """Continuous ``N_x = k (a + b_e/M) / (ρ² ‖I‖²)`` (``inf`` when ‖I‖ = 0)."""
    if terms.fisher_sq <= 0:
        return math.inf
    k = confidence_factor(delta, method)
    label = 0.0 if estimator == "exact" else terms.label[estimator] / max(draws, 1)
    return k * (terms.input + label) / (rho**2 * terms.fisher_sq)


def design(terms: NoiseTerms, estimator: str, rho: float, delta: float, method: str = "normal",
           cost: CostModel | None = None, draws: int | None = None,
           max_draws: int = 10_000) -> Design | None:
    """The cheapest design of ``estimator`` that meets the target (``None`` if ‖I_g‖ = 0).

    ``draws`` fixes M; otherwise M minimises the cost ``N_x(M) (F + M c_e)``.
    """
    cost = cost or CostModel()
    if terms.fisher_sq <= 0:
        return None

    def inputs_for(m: int) -> int:
        value = required_inputs(terms, estimator, rho, delta, method, m)
        return max(1, math.ceil(value - 1e-9 * value))

    def evaluate(m: int) -> Design:
        n = inputs_for(m)
        per_input = cost.per_input(estimator, m)
        total = None if per_input is None else n * per_input
        return Design(estimator, method, n, m, total,
                      math.sqrt(terms.relative_mse(estimator, n, m)))

    if estimator == "exact":
        return evaluate(0)
    if draws is not None:
        return evaluate(int(draws))
    a, b = terms.input, terms.label[estimator]
    c, f = cost.per_draw(estimator), cost.forward
    if b <= 0:
        return evaluate(1)
    # beyond M_cap the label noise is below the target even with one input
    cap = max(1, min(max_draws, math.ceil(required_inputs(terms, estimator, rho, delta, method, 1))))
    best = math.sqrt(b * f / (a * c)) if a > 0 and c > 0 else math.inf
    best = min(best, cap)
    candidates = {1, cap, max(1, math.floor(best)), max(1, min(cap, math.ceil(best)))}
    options = [evaluate(m) for m in sorted(candidates)]
    return min(options, key=lambda d: (d.cost if d.cost is not None else math.inf, d.samples))


@dataclass
class GroupPlan:
    """Designs of every estimator for one group; ``recommended`` is the cheapest (normal)."""

    group: str
    terms: NoiseTerms
    designs: list[Design] = field(default_factory=list)

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
    """Per-group designs for a target ``ρ`` and confidence ``1 − δ`` (see module docs)."""

    rho: float
    delta: float
    cost: CostModel
    groups: list[GroupPlan]
    draws: int | None = None
    notes: list[str] = field(default_factory=list)

    def group(self, name: str) -> GroupPlan:
        for g in self.groups:
            if g.group == name:
                return g
        raise FimvarError(f"no group {name!r} in the plan; groups: {[g.group for g in self.groups]}")

    def to_dict(self) -> dict:
        """JSON-ready form (the ``plan`` section of ``summary.json``)."""
        groups = []
        for g in self.groups:
            rec = {m: (None if g.recommended(m) is None else g.recommended(m).estimator)
                   for m in METHODS}
            groups.append({
                "group": g.group,
                "parameters": g.terms.parameters,
                "fisher_norm_sq": g.terms.fisher_sq,
                "input_noise": g.terms.input,
                "label_noise": dict(g.terms.label),
                "recommended": rec,
                "designs": [asdict(d) for d in g.designs],
            })
        return {"rho": self.rho, "delta": self.delta, "draws": self.draws,
                "target": "||I_hat_g - I_g||_2 / ||I_g||_2 <= rho with probability >= 1 - delta",
                "cost_model": asdict(self.cost), "notes": list(self.notes), "groups": groups}

    def table(self, detailed: bool = False) -> str:
        """Text table (80 columns): the recommended design per group, normal approximation and
        Chebyshev; ``detailed`` lists every estimator."""
        title = (f"Plan: ‖Î−I‖/‖I‖ ≤ {self.rho:g} per layer, probability ≥ {1 - self.delta:g} "
                 f"(cost: backward passes)")
        header = (f"{'layer':<14}{'estimator':>9}{'normal: N×M':>15}{'cost':>9}"
                  f"{'Chebyshev: N×M':>18}{'cost':>9}")
        lines = [title, header, "-" * len(header)]
        for g in self.groups:
            if detailed:
                estimators = [e for e in ESTIMATORS if g.get(e) is not None]
                best = g.recommended()
            else:
                best = g.recommended()
                estimators = [best.estimator] if best is not None else []
            if not estimators:
                lines.append(f"{_cut(g.group, 13):<14}{'—':>9}  (Fisher is 0: relative error undefined)")
                continue
            for i, e in enumerate(estimators):
                normal, cheb = g.get(e, "normal"), g.get(e, "chebyshev")
                mark = "*" if detailed and best is not None and e == best.estimator else ""
                name = _cut(g.group, 13) if i == 0 else ""
                lines.append(f"{name:<14}{LABELS[e] + mark:>9}{_design(normal):>15}"
                             f"{_count(normal.cost):>9}{_design(cheb):>18}{_count(cheb.cost):>9}")
        if detailed:
            lines.append("* cheapest (normal approximation)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def plan(result, rho: float = 0.1, delta: float = 0.05, *, cost: CostModel | None = None,
         draws: int | None = None, include_model: bool = True) -> Plan:
    """Plan the sample size per group of a :class:`~fimvar.DiagonalResult` (see module docs).

    Args:
        result: an analysis result (its inputs stand for the input distribution).
        rho: target relative error ρ > 0 of each group's diagonal Fisher (Euclidean norm).
        delta: allowed failure probability, 0 < δ < 1.
        cost: the :class:`CostModel` (default: forward 0.5, backward 1, Hessian-diagonal 2,
            ``outputs`` from the result's metadata).
        draws: fix the number of label draws M per input instead of optimising it.
        include_model: add the pooled group ``"(model)"`` of every parameter.
    """
    if not (isinstance(rho, (int, float)) and rho > 0 and math.isfinite(rho)):
        raise FimvarError(f"rho (target relative error) must be a positive number, got {rho!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise FimvarError(f"delta (failure probability) must lie strictly between 0 and 1, got {delta!r}")
    if draws is not None and (isinstance(draws, bool) or int(draws) < 1):
        raise FimvarError(f"draws must be an integer ≥ 1, got {draws!r}")
    outputs = result.metadata.get("outputs") if hasattr(result, "metadata") else None
    cost = cost or CostModel(outputs=outputs)
    if cost.outputs is None and outputs is not None:
        cost = CostModel(cost.forward, cost.backward, cost.hessian, outputs)
    groups = dict(result.groups)
    if include_model and len(groups) > 1:
        groups[MODEL] = [name for members in result.groups.values() for name in members]
    plans = []
    for group, members in groups.items():
        terms = noise_terms(result, members)
        gp = GroupPlan(group, terms)
        for estimator in ESTIMATORS:
            for method in METHODS:
                d = design(terms, estimator, rho, delta, method, cost, draws)
                if d is not None:
                    gp.designs.append(d)
        plans.append(gp)
    notes = []
    if result.num_inputs < 2:
        notes.append("one input analysed: the input noise is unknown (taken as 0); analyse more inputs")
    elif result.num_inputs < 30:
        notes.append(f"only {result.num_inputs} inputs analysed: the plan's noise estimates are rough")
    if delta > 0.215:
        notes.append("δ > 0.215: the normal-approximation plan is no longer a worst case over "
                     "correlations (Székely & Bakirov 2003); prefer Chebyshev")
    if cost.outputs is None:
        notes.append("the output width T is unknown, so the exact estimator's cost is not compared")
    return Plan(rho, delta, cost, plans, None if draws is None else int(draws), notes)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _count(value: float | int | None) -> str:
    """Compact count: ``1234``, ``1.2e+06``; ``?`` when unknown."""
    if value is None:
        return "?"
    if value < 1e5:
        return f"{round(value)}"
    return f"{value:.1e}"


def _design(d: Design | None) -> str:
    if d is None:
        return "—"
    if d.estimator == "exact":
        return _count(d.inputs)
    return f"{_count(d.inputs)}×{d.draws}"
