"""The Poisson sampler against exact CDF values: draws at given uniforms are the exact quantile,
many draws follow the exact CDF (Kolmogorov–Smirnov), at rates from 1e-3 to e^25; log-rates
beyond the exact range are refused with the limit named."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

import fimvar
from fimvar import FimvarError, Poisson
from fimvar.estimators.labels import uniforms
from fimvar.families.poisson import MAX_LOG_RATE, MAX_RATE, poisson_quantile, poisson_tail

#: log-rates of the rates 1e-3, 3, 1e3, 1e7 and e^25 (float64 rates are exp of these)
LOG_RATES = (math.log(1e-3), math.log(3.0), math.log(1e3), math.log(1e7), 25.0)


def exact_poisson(rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(k, P(Y = k), P(Y ≤ k), P(Y > k))`` on a window of counts holding all but ~1e-33 of the
    mass of Poisson(``rate``), independent of scipy's CDF.

    The probability of the window's first count comes from mpmath (60 digits); the others follow
    from ``P(k) = P(k − 1) λ / k``; the CDF and the survival function are running sums from either
    end. Relative errors stay below about (window length) × 1e-16 ≈ 1e-9 at e^25, far below the
    gaps between the CDF values tested."""
    spread = 12.0 * math.sqrt(rate) + 30.0
    low = max(0, math.floor(rate - spread))
    high = math.ceil(rate + spread + 20.0)
    mpmath.mp.dps = 60
    lam = mpmath.mpf(rate)  # the float64 rate, exactly
    counts = np.arange(low, high + 1, dtype=np.float64)
    ratios = np.empty_like(counts)
    ratios[0] = float(mpmath.exp(low * mpmath.log(lam) - lam - mpmath.loggamma(low + 1)))
    ratios[1:] = rate / counts[1:]
    pmf = np.cumprod(ratios)
    survival = np.append(np.cumsum(pmf[::-1])[::-1][1:], 0.0)
    return counts, pmf, np.cumsum(pmf), survival


def rate_of(log_rate: float) -> float:
    return float(torch.exp(torch.tensor(log_rate, dtype=torch.float64)))


@pytest.mark.parametrize("log_rate", LOG_RATES)
def test_draws_at_given_uniforms_are_the_exact_quantile(log_rate):
    """u in (F(k − 1), F(k)] gives the count k (at 10%, 50% and 90% of the gap)."""
    rate = rate_of(log_rate)
    counts, pmf, cdf, survival = exact_poisson(rate)
    # counts across the distribution: its far lower tail, centre and far upper tail
    wanted = {int(np.searchsorted(cdf, p)) for p in (1e-12, 1e-6, 0.01, 0.2, 0.5)}
    wanted |= {int(np.searchsorted(-survival, -p)) for p in (0.2, 0.01, 1e-6, 1e-12)}
    wanted = {i for i in wanted if cdf[i] < 0.5 or pmf[i] > 1e-13}  # gaps that u near 1 resolves
    u, expected = [], []
    for index in sorted(wanted):
        for fraction in (0.1, 0.5, 0.9):  # of the gap (F(k − 1), F(k)]
            if cdf[index] < 0.5:
                u.append(cdf[index] - (1 - fraction) * pmf[index])
            else:  # 1 − P(Y > k) keeps the digits of the upper tail
                u.append(1.0 - (survival[index] + (1 - fraction) * pmf[index]))
            expected.append(counts[index])
    u = torch.tensor(u, dtype=torch.float64)
    h = torch.full((1, 1), log_rate, dtype=torch.float64)
    drawn = Poisson().sample(h, u[None, :, None])[0, :, 0]
    assert drawn.tolist() == expected
    assert poisson_quantile(u.numpy(), rate).tolist() == expected


@pytest.mark.parametrize("log_rate", LOG_RATES)
def test_many_draws_follow_the_exact_cdf(log_rate):
    """The empirical CDF of 20 000 draws (fimvar's uniforms) lies within the Kolmogorov–Smirnov
    distance of the 0.1% level, 1.95/√n, of the exact CDF at every count."""
    draws = 20_000
    h = torch.full((1, 1), log_rate, dtype=torch.float64)
    noise = uniforms(7, torch.arange(1), draws, 1)
    drawn = np.sort(Poisson().sample(h, noise).flatten().numpy())
    counts, _, cdf, _ = exact_poisson(rate_of(log_rate))
    assert drawn.min() >= counts[0] and drawn.max() <= counts[-1]
    empirical = np.searchsorted(drawn, counts, side="right") / draws
    assert np.abs(empirical - cdf).max() <= 1.95 / math.sqrt(draws)


@pytest.mark.parametrize("rate", [1e4, 1e6])
def test_tail_quadrature_against_mpmath(rate):
    """``poisson_tail`` (used beyond 4 standard deviations from rate 1e4 on, where scipy's pdtr
    loses the upper tail) equals mpmath's regularised incomplete gamma function to 1e-13."""
    mpmath.mp.dps = 40
    for z in (-8.0, -6.0, -4.0, 4.0, 6.0, 8.0):
        k = math.floor(rate + z * math.sqrt(rate))
        upper = z > 0
        exact = float(mpmath.gammainc(k + 1, 0, rate, regularized=True) if upper else
                      mpmath.gammainc(k + 1, rate, mpmath.inf, regularized=True))
        assert abs(float(poisson_tail(float(k), rate, upper)) - exact) <= 1e-13 * exact


def test_largest_rates_are_exact_counts():
    """Up to the largest accepted rate every draw is an integer count below 2^53, the quantile
    condition F(k − 1) < u ≤ F(k) holds within 3.5 standard deviations (scipy's pdtr, accurate
    there; scipy's own ppf returns NaN), and beyond it P(Y > k) ≤ 1 − u < P(Y ≥ k) by the tail
    quadrature."""
    from scipy.special import pdtr

    u = np.concatenate([uniforms(0, torch.arange(1), 4000, 1).flatten().numpy(),
                        [2.0**-54, 1e-9, 1 - 1e-9, 1 - 2.0**-53]])
    for rate in (MAX_RATE, 1e15, rate_of(30.0)):
        drawn = poisson_quantile(u, rate)
        assert (drawn == np.round(drawn)).all() and drawn.max() < 2.0**53
        central = np.abs(drawn - rate) < 3.5 * math.sqrt(rate)
        assert central.sum() > 3900
        assert (pdtr(drawn[central], rate) >= u[central]).all()
        assert (pdtr(drawn[central] - 1, rate) < u[central]).all()
        high = drawn > rate + 4.5 * math.sqrt(rate)
        assert high.sum() >= 2
        assert (poisson_tail(drawn[high], rate, upper=True) <= 1 - u[high]).all()
        assert (poisson_tail(drawn[high] - 1, rate, upper=True) > 1 - u[high]).all()
    # rates that underflow to 0 draw 0
    assert (Poisson().sample(torch.full((1, 2), -800.0, dtype=torch.float64),
                             torch.full((1, 3, 2), 0.999, dtype=torch.float64)) == 0).all()


def test_log_rates_beyond_the_limit_are_refused():
    family = Poisson()
    family.check_outputs(torch.tensor([[MAX_LOG_RATE, -50.0]], dtype=torch.float64))
    for log_rate in (36.1, 400.0):
        with pytest.raises(FimvarError, match=r"log\(2\*\*52\) ≈ 36\.04"):
            family.check_outputs(torch.tensor([[0.0, log_rate]], dtype=torch.float64))
    with pytest.raises(FimvarError, match="2\\*\\*52"):
        poisson_quantile(np.array([0.5]), np.array([2.0**53]))
    model = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(400.0)  # e^400 is finite, its square (the fourth moment) is not
    with pytest.raises(FimvarError, match="log-rate of 400"):
        fimvar.analyze(model, torch.ones(3, 2, dtype=torch.float64), "poisson")


def test_large_rates_give_finite_estimators():
    """Log-rate 30 (scipy's ppf gives NaN beyond ~25): the bias's Fisher is λ and its v1 is
    Var(ε²) = λ + 2λ² exactly, and Î1 lies within 5 standard errors sqrt(v1 / (N M)) of λ."""
    model = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([30.0, 2.0]))
    inputs, draws = 200, 4
    r = fimvar.analyze(model, torch.randn(inputs, 2, dtype=torch.float64), "poisson", samples=draws)
    rate = torch.exp(model.bias.detach())
    torch.testing.assert_close(r.fisher["bias"], rate, rtol=1e-12, atol=0)
    torch.testing.assert_close(r.v1["bias"], rate + 2 * rate**2, rtol=1e-12, atol=0)
    standard_error = (r.v1["bias"] / (inputs * draws)).sqrt()
    assert ((r.i1["bias"] - rate).abs() <= 5 * standard_error).all()
    assert all(bound.holds() for bound in r.bounds.values())
