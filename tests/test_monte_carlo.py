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
def test_joint_variance_formula_by_replication(family):
    """[B] Thm 4.7: Var Î = (Var_x I + E_x v / M) / N_x for x drawn from a finite population."""
    population = make_case("mlp-tanh", family, inputs=5, seed=3)
    model, points = population.model, population.x
    inputs, draws, repeats = 4, 2, 300
    # exact population moments over the 5 equally likely inputs
    whole = fimvar.analyze(model, points, family, samples=1, bounds=False)
    predicted = {n: (whole.input_var[n] * (len(points) - 1) / len(points) + whole.v1[n] / draws) / inputs
                 for n in whole.fisher}
    generator = torch.Generator().manual_seed(0)
    estimates = []
    for repeat in range(repeats):
        pick = torch.randint(0, len(points), (inputs,), generator=generator)
        r = fimvar.analyze(model, points[pick], family, samples=draws, seed=1000 + repeat, bounds=False)
        estimates.append(torch.cat([r.i1[n].reshape(-1) for n in r.fisher]))
    estimates = torch.stack(estimates)
    centred = estimates - estimates.mean(0)
    sample_variance = centred.pow(2).sum(0) / (repeats - 1)
    fourth = centred.pow(4).mean(0)
    standard_error = ((fourth - sample_variance**2).clamp_min(0) / repeats).sqrt()
    expected = torch.cat([predicted[n].reshape(-1) for n in whole.fisher])
    assert ((sample_variance - expected).abs() <= 5 * standard_error + 1e-12).all()
    # and the replicates' mean is the population Fisher, within 5 standard errors
    fisher = torch.cat([whole.fisher[n].reshape(-1) for n in whole.fisher])
    assert ((estimates.mean(0) - fisher).abs() <= 5 * (expected / repeats).sqrt() + 1e-12).all()


def test_combined_estimator_variance_is_minimal():
    """§8: Var Î_α* ≤ min(Var Î1, Var Î2), and the closed form equals α-quadratic at α*."""
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=3, seed=2)
    r = fimvar.analyze(case.model, case.x, "categorical", samples=3, bounds=False)
    v1, v2, cov = r.variance("i1"), r.variance("i2"), r.covariance()
    alpha, combined = r.alpha_star(), r.variance("combined")
    for n in v1:
        a = alpha[n]
        quadratic = a**2 * v1[n] + (1 - a) ** 2 * v2[n] + 2 * a * (1 - a) * cov[n]
        assert torch.allclose(combined[n], quadratic, rtol=1e-9, atol=1e-15)
        assert (combined[n] <= torch.minimum(v1[n], v2[n]) * (1 + 1e-12) + 1e-18).all()


def test_results_do_not_depend_on_batching():
    """Draws are seeded per global input index: one batch or many give the same numbers."""
    case = make_case("conv1d", "categorical", inputs=5, seed=4)
    whole = fimvar.analyze(case.model, case.x, "categorical", samples=3, seed=9, bounds=False)
    parts = fimvar.analyze(case.model, [case.x[:2], case.x[2:3], case.x[3:]], "categorical",
                           samples=3, seed=9, bounds=False)
    for quantity in ("fisher", "i1", "i2", "v1", "v2", "input_var"):
        for n in whole.fisher:
            expected = getattr(whole, quantity)[n]
            torch.testing.assert_close(getattr(parts, quantity)[n], expected, rtol=1e-12,
                                       atol=1e-12 * float(expected.abs().max()))


def test_uniforms_are_uniform():
    from scipy import stats

    from fimvar.sampling import uniforms

    values = uniforms(123, torch.arange(2000), 10, 3).reshape(-1).numpy()
    assert ((values > 0) & (values < 1)).all()
    assert stats.kstest(values, "uniform").pvalue > 1e-4
    again = uniforms(123, torch.arange(1000, 2000), 10, 3).reshape(-1).numpy()
    assert (again == values[30_000:]).all()
