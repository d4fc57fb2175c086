"""Sample-size design formulas (docs/theory.md §8.2): confidence factors, the one-parameter case
written out by hand, the cost-optimal number of draws against a brute-force search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from fimvar import FimvarError
from fimvar.estimators.design import (
    ESTIMATORS,
    MAX_INPUTS,
    MIN_RHO,
    NORMAL_DELTA_LIMIT,
    CostModel,
    NoiseTerms,
    Target,
    confidence_factor,
    design,
    required_inputs,
)


def test_confidence_factors():
    assert confidence_factor(0.05, "chebyshev") == pytest.approx(20.0)
    assert confidence_factor(0.05, "normal") == pytest.approx(norm.ppf(0.975) ** 2)
    with pytest.raises(FimvarError, match="unknown method"):
        confidence_factor(0.05, "hoeffding")


def test_one_parameter_reduces_to_theory_section_8():
    """For one parameter: Chebyshev N ≥ v/(δρ²I²), normal N ≥ z² v/(ρ²I²), v = a + b/M."""
    fisher, a, b = 0.3, 0.02, 0.5
    terms = NoiseTerms(parameters=1, fisher_sq=fisher**2, input=a, label={"i1": b, "i2": 2 * b,
                                                                           "combined": b / 2, "exact": 0})
    rho, delta, m = 0.1, 0.05, 3
    v = a + b / m
    cheb = design(terms, "i1", Target(rho, delta), "chebyshev", draws=m)
    normal = design(terms, "i1", Target(rho, delta), "normal", draws=m)
    assert cheb.inputs == math.ceil(v / (delta * rho**2 * fisher**2))
    assert normal.inputs == math.ceil(norm.ppf(1 - delta / 2) ** 2 * v / (rho**2 * fisher**2))
    exact = design(terms, "exact", Target(rho, delta), "normal")
    assert exact.draws == 0
    assert exact.inputs == math.ceil(norm.ppf(1 - delta / 2) ** 2 * a / (rho * fisher) ** 2)
    # the predicted RMS error of a design is at most ρ/sqrt(k)
    assert normal.relative_rmse <= rho / math.sqrt(confidence_factor(delta, "normal")) + 1e-12


@pytest.mark.parametrize("a,b", [(1.0, 30.0), (0.2, 5.0), (5.0, 0.1), (1e-9, 3.0)])
def test_optimal_draws_minimise_cost(a, b):
    terms = NoiseTerms(1, 1.0, a, {"i1": b, "i2": b, "combined": b, "exact": 0.0})
    cost = CostModel(forward=0.5, backward=1.0, hessian=2.0, outputs=10)
    for estimator in ("i1", "i2"):
        chosen = design(terms, estimator, Target(0.05, 0.05), "normal", cost)
        brute = min(design(terms, estimator, Target(0.05, 0.05), "normal", cost, draws=m).cost
                    for m in range(1, 600))
        assert chosen.cost <= brute * 1.01


def test_no_fisher_means_no_design():
    terms = NoiseTerms(4, 0.0, 0.0, {e: 0.0 for e in ESTIMATORS})
    assert design(terms, "i1", Target(0.1, 0.05)) is None


def test_target_validation():
    assert Target.of(None, 0.01) == Target(0.1, 0.01)
    assert Target(np.float32(0.5), np.float64(0.1)) == Target(0.5, 0.1)
    Target(MIN_RHO, NORMAL_DELTA_LIMIT)  # both limits are accepted
    for rho, delta in ((0.0, 0.05), (float("inf"), 0.05), (0.1, 1.0), (0.1, 0.0), (True, 0.05),
                       (0.1, float("nan")), ("0.1", 0.05)):
        with pytest.raises(FimvarError):
            Target(rho, delta)
    # sample sizes ∝ 1/ρ² that cannot be computed; δ beyond the normal approximation's validity
    for rho in (1e-300, 1e-9):
        with pytest.raises(FimvarError, match="at least 1e-08"):
            Target(rho, 0.05)
    for delta in (0.5, 0.216):
        with pytest.raises(FimvarError, match=r"at most 0\.215.*Székely"):
            Target(0.1, delta)


def test_design_never_overflows():
    """Extreme but valid targets and noise terms give a design or None, never an exception, and
    the designs that exist are consistent with N = k (a + b/M) / (ρ² ‖I‖²)."""
    labels = {"i1": 1e300, "i2": 1.0, "combined": 1.0, "exact": 0.0}
    cases = [NoiseTerms(1, 1e-320, 1.0, labels),  # subnormal ‖I‖²: ρ²‖I‖² underflows to 0
             NoiseTerms(1, 1.0, 1e300, labels), NoiseTerms(1, float("inf"), 1.0, labels),
             NoiseTerms(1, 1e300, 1e-300, {"i1": 1e-300, "i2": 0.0, "combined": 0.0, "exact": 0.0})]
    for terms in cases:
        for target in (Target(MIN_RHO, 1e-300), Target(MIN_RHO, NORMAL_DELTA_LIMIT), Target(1e300, 0.1)):
            for method in ("normal", "chebyshev"):
                for estimator in ESTIMATORS:
                    for draws in (None, 1, 10**30):
                        found = design(terms, estimator, target, method, CostModel(outputs=3), draws)
                        if found is None:
                            continue
                        assert 1 <= found.inputs <= MAX_INPUTS and math.isfinite(found.relative_rmse)
                        # the design meets the target: k E‖Î − I‖²/‖I‖² ≤ ρ²
                        k = confidence_factor(target.delta, method)
                        assert k * found.relative_rmse**2 <= target.rho**2 * (1 + 1e-6)
    # ρ²‖I‖² underflows to 0: the continuous size is infinite (not a ZeroDivisionError)
    assert required_inputs(cases[0], "i1", Target(MIN_RHO, 0.05), "normal", 1) == math.inf
    # a target that needs more than MAX_INPUTS inputs has no design
    assert design(NoiseTerms(1, 1.0, 1e30, labels), "exact", Target(MIN_RHO, 0.01)) is None
