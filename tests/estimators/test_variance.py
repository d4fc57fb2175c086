"""Monte Carlo checks: sampled estimators and their sample variances against the closed forms,
with tolerances of 5 standard errors derived from the closed-form (or exact) moments."""

from __future__ import annotations

import pytest
import torch
from cases import FAMILIES, make_case
from oracle import Oracle, support

import fimvar

DRAWS = 20_000


def exact_fourth_central_moment(case, family: str) -> torch.Tensor:
    """E[(X − E X)⁴] of X = (∂ℓ/∂θ_i)² for the single input, by exact enumeration."""
    oracle = Oracle(case.model, family)
    x1 = case.x[0]
    ys, probs = support(family, oracle.outputs(x1).detach())
    scores, _ = oracle.score_and_hessian(x1, ys)
    square = scores**2
    mean = probs @ square
    return probs @ (square - mean) ** 4


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_estimators_and_their_variances(family):
    case = make_case("mlp-sigmoid-softplus", family, inputs=1, seed=11)
    r = fimvar.analyze(case.model, case.x, family, samples=DRAWS, seed=7, bounds=False)
    fourth = Oracle(case.model, family).split(exact_fourth_central_moment(case, family))
    for name in r.fisher:
        fisher, v1, v2 = r.fisher[name], r.v1[name], r.v2[name]
        # the sample mean of M draws has standard error sqrt(v/M)
        assert ((r.i1[name] - fisher).abs() <= 5 * (v1 / DRAWS).sqrt() + 1e-12 * fisher).all()
        zero_v2 = v2 == 0
        assert ((r.i2[name] - fisher).abs() <= 5 * (v2 / DRAWS).sqrt() + 1e-12 * fisher).all()
        assert torch.allclose(r.i2[name][zero_v2], fisher[zero_v2], rtol=1e-12, atol=0)
        # the sample variance of M draws has standard error sqrt((μ4 − v²)/M)
        standard_error = ((fourth[name] - v1**2).clamp_min(0) / DRAWS).sqrt()
        assert ((r.draw_variance("i1")[name] - v1).abs() <= 5 * standard_error + 1e-12 * v1).all()


@pytest.mark.parametrize("family", ["categorical", "bernoulli"])
def test_joint_variances_by_replication(family):
    """[B] Thm 4.7 and docs/theory.md §8.1: Var Î = (Var_x I + E_x v / M) / N_x for Î1, Î2 and
    the combination with a fixed α, inputs drawn from a finite population; the replicates'
    sample variances agree within 5 standard errors (from their fourth moments)."""
    population = make_case("mlp-tanh", family, inputs=5, seed=3)
    model, points = population.model, population.x
    inputs, draws, repeats = 4, 2, 300
    # exact population moments over the 5 equally likely inputs (input variance with 1/n)
    whole = fimvar.analyze(model, points, family, samples=1, bounds=False)
    scale = (len(points) - 1) / len(points)
    alpha = whole.alpha_star(inputs=inputs, draws=draws)
    variance_of = {
        "i1": {n: (whole.input_var[n] * scale + whole.v1[n] / draws) / inputs for n in whole.fisher},
        "i2": {n: (whole.input_var[n] * scale + whole.v2[n] / draws) / inputs for n in whole.fisher},
    }
    covariance = {n: (whole.input_var[n] * scale + whole.c12[n] / draws) / inputs for n in whole.fisher}
    variance_of["combined"] = {n: alpha[n] ** 2 * variance_of["i1"][n] + (1 - alpha[n]) ** 2
                               * variance_of["i2"][n] + 2 * alpha[n] * (1 - alpha[n]) * covariance[n]
                               for n in whole.fisher}
    generator = torch.Generator().manual_seed(0)
    estimates = {e: [] for e in variance_of}
    for repeat in range(repeats):
        pick = torch.randint(0, len(points), (inputs,), generator=generator)
        r = fimvar.analyze(model, points[pick], family, samples=draws, seed=1000 + repeat, bounds=False)
        values = {"i1": r.i1, "i2": r.i2, "combined": r.combined(alpha)}
        for e in estimates:
            estimates[e].append(torch.cat([values[e][n].reshape(-1) for n in r.fisher]))
    fisher = torch.cat([whole.fisher[n].reshape(-1) for n in whole.fisher])
    for estimator, values in estimates.items():
        values = torch.stack(values)
        centred = values - values.mean(0)
        sample_variance = centred.pow(2).sum(0) / (repeats - 1)
        fourth = centred.pow(4).mean(0)
        standard_error = ((fourth - sample_variance**2).clamp_min(0) / repeats).sqrt()
        expected = torch.cat([variance_of[estimator][n].reshape(-1) for n in whole.fisher])
        assert ((sample_variance - expected).abs() <= 5 * standard_error + 1e-12).all(), estimator
        # and the replicates' mean is the population Fisher, within 5 standard errors
        assert ((values.mean(0) - fisher).abs() <= 5 * (expected / repeats).sqrt() + 1e-12).all()


def test_alpha_star_minimises_the_variance_of_the_combination():
    """docs/theory.md §8.1: α* is the minimiser of α ↦ Var(α Î1 + (1 − α) Î2) and the combined
    variance is that minimum — checked against a dense search over α, per parameter."""
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=3, seed=2)
    r = fimvar.analyze(case.model, case.x, "categorical", samples=3, bounds=False)
    v1, v2, cov = r.variance("i1"), r.variance("i2"), r.covariance()
    alpha, combined = r.alpha_star(), r.variance("combined")
    grid = torch.linspace(-2, 3, 50_001, dtype=torch.float64)
    for n in v1:
        a, b, c = (t.reshape(-1, 1) for t in (v1[n], v2[n], cov[n]))
        curve = grid**2 * a + (1 - grid) ** 2 * b + 2 * grid * (1 - grid) * c
        best, where = curve.min(1)
        spread = (a - c).abs().max() + (b - c).abs().max()
        assert (combined[n].reshape(-1) <= best * (1 + 1e-12) + 1e-300).all()
        assert (combined[n].reshape(-1) >= best - 1e-8 * spread).all()
        varying = (a + b - 2 * c).reshape(-1) > 1e-12 * (a + b).reshape(-1)
        assert ((alpha[n].reshape(-1) - grid[where])[varying].abs() <= 2e-4).all()
