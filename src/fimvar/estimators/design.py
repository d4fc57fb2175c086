"""Sample-size design: how many inputs and label draws an estimator needs (docs/theory.md §8.2).

Target, per parameter group g (a layer by default): the relative error of the group's diagonal
Fisher, measured in the Euclidean norm over its parameters,

    ‖Î_g − I_g‖₂ / ‖I_g‖₂ ≤ ρ        with probability ≥ 1 − δ.

For one parameter this is the relative error |Î − I| / I of docs/theory.md §8. For a whole layer it weighs
the parameters by their Fisher information, so parameters whose Fisher is (nearly) zero — dead
pixels, saturated units — do not make the target unreachable.

Variance of an estimator averaged over ``N_x`` inputs with ``M`` label draws each (docs/theory.md §3,
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
  suffices. For one parameter it is ``N ≥ z² v/(ρ² I²)`` of docs/theory.md §8.

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
import numbers
from dataclasses import dataclass

from fimvar.errors import FimvarError
from fimvar.estimators.variance import joint_variance

#: the estimators a design compares, and their display names
ESTIMATORS = ("i1", "i2", "combined", "exact")
LABELS = {"i1": "Î1", "i2": "Î2", "combined": "combined", "exact": "exact"}
METHODS = ("normal", "chebyshev")
#: largest δ for which the normal approximation holds whatever the correlations (Székely & Bakirov)
NORMAL_DELTA_LIMIT = 0.215
#: smallest target relative error: sample sizes grow as 1/ρ², so below it they exceed 10¹⁶ times
#: those of ρ = 1, beyond any data set and beyond the float64 arithmetic of a design
MIN_RHO = 1e-8
#: largest number of inputs a design reports (int64); a target that needs more has no design
MAX_INPUTS = 2**63 - 1


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class Target:
    """Relative error ``rho`` with probability at least ``1 − delta`` (docs/theory.md §8.2):
    ``MIN_RHO ≤ ρ`` and ``0 < δ ≤ NORMAL_DELTA_LIMIT`` (0.215, where the normal approximation of
    the plan stops being valid whatever the correlations between parameters)."""

    rho: float = 0.1
    delta: float = 0.05

    def __post_init__(self) -> None:
        rho, delta = self.rho, self.delta
        if not (_real(rho) and rho > 0):
            raise FimvarError(f"rho (target relative error) must be a positive number, got {rho!r}")
        if rho < MIN_RHO:
            raise FimvarError(
                f"rho (target relative error) must be at least {MIN_RHO:g}, got {rho!r}: sample sizes "
                f"grow as 1/ρ², and below {MIN_RHO:g} they exceed 10^16 times those of ρ = 1"
            )
        if not (_real(delta) and 0 < delta < 1):
            raise FimvarError(f"delta (failure probability) must lie strictly between 0 and 1, got {delta!r}")
        if delta > NORMAL_DELTA_LIMIT:
            raise FimvarError(
                f"delta (failure probability) must be at most {NORMAL_DELTA_LIMIT}, got {delta!r}: the "
                "normal-approximation plan bounds the tail of the layer's squared error by that of one "
                f"χ²₁, which holds whatever the correlations between parameters only for δ ≤ "
                f"{NORMAL_DELTA_LIMIT} (Székely & Bakirov 2003); ask for a confidence of at least "
                f"{1 - NORMAL_DELTA_LIMIT:.3g}"
            )
        object.__setattr__(self, "rho", float(rho))
        object.__setattr__(self, "delta", float(delta))

    @classmethod
    def of(cls, rho: float | None = None, delta: float | None = None) -> Target:
        """The target with the given ``rho``/``delta``, the defaults for those left ``None``."""
        default = cls()
        return cls(default.rho if rho is None else rho, default.delta if delta is None else delta)


#: the target of reports and plans unless the user gives one
DEFAULT_TARGET = Target()


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

    def per_token(self, draws: int, positions: int) -> float:
        """Cost of one input of the per-token squares of a sequence model: ``F + M L B``, one
        backward pass per position and draw for the per-token gradients (docs/theory.md §13.1)."""
        return self.forward + draws * positions * self.backward

    def hutchinson(self, draws: int, probes: int) -> float:
        """Cost of one input of Hutchinson's Hessian-diagonal estimate with ``draws`` sampled labels
        and ``probes`` Rademacher probes per label: ``F + M k H``, one Hessian-vector product
        (``H``, about two backward passes: the gradient with its graph, then the backward through
        it) per probe (docs/theory.md §15.7)."""
        return self.forward + draws * probes * self.hessian


def confidence_factor(delta: float, method: str) -> float:
    """``k`` of ``N ≥ k v / (ρ² I²)``: ``1/δ`` (Chebyshev) or ``z²_{1−δ/2}`` (normal)."""
    if method == "chebyshev":
        return 1.0 / delta
    if method == "normal":
        from scipy.stats import norm

        return float(norm.isf(delta / 2.0)) ** 2  # z_{1−δ/2}, accurate for tiny δ too
    raise FimvarError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


@dataclass
class NoiseTerms:
    """Group sums that determine every design: ``‖I_g‖²``, input noise ``a``, label noise ``b_e``."""

    parameters: int
    fisher_sq: float
    input: float
    label: dict[str, float]

    def mean_squared_error(self, estimator: str, inputs: int, draws: int) -> float:
        """``E‖Î − I‖² = (a + b_e/M) / N_x`` ([B] Thm 4.7 summed over the group)."""
        label = 0.0 if estimator == "exact" else self.label[estimator]
        return joint_variance(self.input, label, inputs, max(draws, 1))

    def relative_mse(self, estimator: str, inputs: int, draws: int) -> float:
        """``E‖Î − I‖² / ‖I‖²``."""
        return self.mean_squared_error(estimator, inputs, draws) / self.fisher_sq


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


def required_inputs(terms: NoiseTerms, estimator: str, target: Target, method: str, draws: int) -> float:
    """Continuous ``N_x = k (a + b_e/M) / (ρ² ‖I‖²)`` (``inf`` when ‖I‖ = 0, or when it is not a
    finite float64 number); never raises on overflow."""
    if not terms.fisher_sq > 0:
        return math.inf
    k = confidence_factor(target.delta, method)
    numerator = k * terms.mean_squared_error(estimator, 1, draws)
    if numerator == 0:
        return 0.0
    denominator = target.rho * target.rho * terms.fisher_sq
    if not (math.isfinite(numerator) and math.isfinite(denominator) and denominator > 0):
        return math.inf
    return numerator / denominator


def design(terms: NoiseTerms, estimator: str, target: Target, method: str = "normal",
           cost: CostModel | None = None, draws: int | None = None,
           max_draws: int = 10_000) -> Design | None:
    """The cheapest design of ``estimator`` that meets the target: ``None`` if ‖I_g‖ = 0, or if
    the noise terms are not finite or the target needs more than :data:`MAX_INPUTS` inputs (no
    design can be computed; nothing overflows).

    ``draws`` fixes M; otherwise M minimises the cost ``N_x(M) (F + M c_e)``.
    """
    cost = cost or CostModel()
    values = (terms.fisher_sq, terms.input, terms.label.get(estimator, 0.0))
    if not (terms.fisher_sq > 0 and all(math.isfinite(v) for v in values)):
        return None

    def inputs_for(m: int) -> int | None:
        value = required_inputs(terms, estimator, target, method, m)
        if not value < MAX_INPUTS:
            return None
        return max(1, math.ceil(value - 1e-9 * value))

    def evaluate(m: int) -> Design | None:
        n = inputs_for(m)
        if n is None:
            return None
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
    one_draw = required_inputs(terms, estimator, target, method, 1)
    cap = max(1, min(max_draws, math.ceil(one_draw) if one_draw < max_draws else max_draws))
    product = a * c
    best = math.sqrt(b * f / product) if product > 0 else math.inf
    best = min(best, cap)
    candidates = {1, cap, max(1, math.floor(best)), max(1, min(cap, math.ceil(best)))}
    options = [d for d in (evaluate(m) for m in sorted(candidates)) if d is not None]
    if not options:
        return None
    return min(options, key=lambda d: (d.cost if d.cost is not None else math.inf, d.samples))


