"""The sample-size planner (theory §8): formulas, optimal draws, and a Monte Carlo check that the
recommended designs meet the target ‖Î − I‖/‖I‖ ≤ ρ with probability ≥ 1 − δ."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

import fimvar
from fimvar import FimvarError
from fimvar.engine import make_engine
from fimvar.plan import (
    ESTIMATORS,
    CostModel,
    NoiseTerms,
    combined_label_variance,
    confidence_factor,
    design,
    plan,
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
    cheb = design(terms, "i1", rho, delta, "chebyshev", draws=m)
    normal = design(terms, "i1", rho, delta, "normal", draws=m)
    assert cheb.inputs == math.ceil(v / (delta * rho**2 * fisher**2))
    assert normal.inputs == math.ceil(norm.ppf(1 - delta / 2) ** 2 * v / (rho**2 * fisher**2))
    exact = design(terms, "exact", rho, delta, "normal")
    assert exact.draws == 0
    assert exact.inputs == math.ceil(norm.ppf(1 - delta / 2) ** 2 * a / (rho * fisher) ** 2)
    # the predicted RMS error of a design is at most ρ/sqrt(k)
    assert normal.relative_rmse <= rho / math.sqrt(confidence_factor(delta, "normal")) + 1e-12


@pytest.mark.parametrize("a,b", [(1.0, 30.0), (0.2, 5.0), (5.0, 0.1), (1e-9, 3.0)])
def test_optimal_draws_minimise_cost(a, b):
    terms = NoiseTerms(1, 1.0, a, {"i1": b, "i2": b, "combined": b, "exact": 0.0})
    cost = CostModel(forward=0.5, backward=1.0, hessian=2.0, outputs=10)
    for estimator in ("i1", "i2"):
        chosen = design(terms, estimator, 0.05, 0.05, "normal", cost)
        brute = min(design(terms, estimator, 0.05, 0.05, "normal", cost, draws=m).cost
                    for m in range(1, 600))
        assert chosen.cost <= brute * 1.01


def test_no_fisher_means_no_design():
    terms = NoiseTerms(4, 0.0, 0.0, {e: 0.0 for e in ESTIMATORS})
    assert design(terms, "i1", 0.1, 0.05) is None


def tiny_result(inputs: int = 64, samples: int = 2):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(inputs, 3, dtype=torch.float64)
    return model, x, fimvar.analyze(model, x, "categorical", samples=samples, engine="autodiff")


def test_combined_label_variance_matches_result_variance():
    _, _, result = tiny_result()
    for name in result.fisher:
        label = combined_label_variance(result.v1[name], result.v2[name], result.c12[name])
        assert (label <= torch.minimum(result.v1[name], result.v2[name]) + 1e-15).all()
        # Var of the α*-combination with N inputs × M draws = (input_var + label / M) / N
        expected = (result.input_var[name] + label / 5) / 7
        assert torch.allclose(result.variance("combined", inputs=7, draws=5)[name], expected,
                              rtol=1e-9, atol=1e-15)


def test_plan_structure_and_errors():
    _, _, result = tiny_result()
    p = result.plan(0.2, 0.1)
    assert [g.group for g in p.groups] == list(result.groups) + ["(model)"]
    for g in p.groups:
        best = g.recommended("normal")
        assert best is not None and best.cost == min(d.cost for d in g.designs if d.method == "normal")
        # the combination is never worse than Î1 or Î2 for a common number of draws
        for m in (1, 4):
            comb = design(g.terms, "combined", 0.2, 0.1, "normal", draws=m)
            assert comb.inputs <= design(g.terms, "i1", 0.2, 0.1, "normal", draws=m).inputs
            assert comb.inputs <= design(g.terms, "i2", 0.2, 0.1, "normal", draws=m).inputs
    assert "normal" in p.table() and "Chebyshev" in p.table(detailed=True)
    assert max(len(line) for line in p.table(detailed=True).splitlines()) <= 80
    assert p.to_dict()["groups"][0]["designs"]
    with pytest.raises(FimvarError, match="rho"):
        plan(result, 0.0)
    with pytest.raises(FimvarError, match="delta"):
        plan(result, 0.1, 1.5)
    with pytest.raises(FimvarError, match="draws"):
        plan(result, 0.1, 0.1, draws=0)


def simulate(sim: dict, estimator: str, n_x: int, m: int, repeats: int, generator) -> torch.Tensor:
    """Relative errors ‖Î − I‖/‖I‖ of ``repeats`` fresh estimations: inputs drawn with replacement
    from the population, ``m`` labels drawn from the model per input."""
    errors = []
    for _ in range(0, repeats, 50):  # chunks of repeats bound the memory
        idx = torch.randint(0, sim["fisher_x"].shape[0], (50, n_x), generator=generator)
        if estimator == "exact":
            estimate = sim["fisher_x"][idx].mean(1)
        else:
            probs = sim["p"][idx]  # (R, N, T)
            y = torch.multinomial(probs.reshape(-1, probs.shape[-1]), m, replacement=True,
                                  generator=generator).reshape(50, n_x, m)
            eps = torch.nn.functional.one_hot(y, probs.shape[-1]).double() - probs[:, :, None, :]
            i1 = (torch.einsum("rnmt,rntp->rnmp", eps, sim["u"][idx]) ** 2).mean((1, 2))
            curvature = torch.einsum("rnmt,rntp->rnmp", eps, sim["w"][idx]).mean((1, 2))
            i2 = sim["fisher_x"][idx].mean(1) - curvature
            alpha = sim["alpha"]
            estimate = {"i1": i1, "i2": i2, "combined": alpha * i1 + (1 - alpha) * i2}[estimator]
        errors.append((estimate - sim["truth"]).norm(dim=1) / sim["truth"].norm())
    return torch.cat(errors)


def test_planned_designs_meet_the_target_by_monte_carlo():
    """Repeat the estimation with fresh inputs (drawn with replacement from a population) and
    fresh labels at each recommended design: the relative error exceeds ρ in at most δ of the
    repeats (plus a 3σ binomial tolerance), the mean squared error is the predicted one, and a
    quarter of the planned inputs is not enough (the plan is not vacuous)."""
    model, population, result = tiny_result(inputs=200, samples=1)
    rho, delta, repeats = 0.25, 0.1, 600
    the_plan = plan(result, rho, delta, include_model=True)
    names = list(result.shapes)
    h, blocks = make_engine("autodiff", model, names, 2**28).derivatives(population)
    p = torch.softmax(h, 1)  # (n, T)
    u = torch.cat([b.first for b in blocks], 2)  # (n, T, P)
    w = torch.cat([b.second for b in blocks], 2)
    fisher_x = torch.einsum("ntp,nt,ntp->np", u, p, u) - torch.einsum("ntp,nt->np", u, p) ** 2
    sizes = [result.shapes[n].numel() for n in names]
    offsets = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist(), strict=False))
    alpha = torch.cat([result.alpha_star(draws=1)[n].reshape(-1) for n in names])
    members = dict(result.groups)
    members["(model)"] = names
    generator = torch.Generator().manual_seed(12345)
    tolerance = 3 * math.sqrt(delta * (1 - delta) / repeats)
    checked = undersized = 0
    for gp in the_plan.groups:
        index = torch.cat([torch.arange(offsets[m], offsets[m] + result.shapes[m].numel())
                           for m in members[gp.group]])
        sim = {"p": p, "u": u[..., index], "w": w[..., index], "fisher_x": fisher_x[:, index],
               "alpha": alpha[index], "truth": fisher_x[:, index].mean(0)}
        assert torch.allclose(sim["truth"], torch.cat([result.fisher[n].reshape(-1) for n in names])[index])
        for d in gp.designs:
            n_x, m = d.inputs, max(d.draws, 1)
            if n_x * m > 3000:
                continue
            error = simulate(sim, d.estimator, n_x, m, repeats, generator)
            failures = float((error > rho).double().mean())
            assert failures <= delta + tolerance, (gp.group, d, failures)
            predicted = gp.terms.relative_mse(d.estimator, n_x, m)
            observed = float((error**2).mean())
            assert 0.8 <= observed / predicted <= 1.25, (gp.group, d, observed, predicted)
            checked += 1
            if d.method == "normal" and n_x >= 40:
                undersampled = simulate(sim, d.estimator, n_x // 4, m, repeats, generator)
                assert float((undersampled > rho).double().mean()) > delta, (gp.group, d)
                undersized += 1
    assert checked >= 12 and undersized >= 3
