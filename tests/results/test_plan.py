"""The sample-size plan of a result (docs/theory.md §8.2): its structure, and a Monte Carlo check
that the recommended designs meet the target ‖Î − I‖/‖I‖ ≤ ρ with probability ≥ 1 − δ."""

from __future__ import annotations

import math

import pytest
import torch
from cases import make_case

import fimvar
from fimvar import FimvarError
from fimvar.engine import make_engine
from fimvar.estimators.design import Target, confidence_factor, design
from fimvar.results.plan import plan


def tiny_result(inputs: int = 64, samples: int = 2):
    case = make_case("mlp-tanh", "categorical", inputs=inputs, seed=1)
    return case.model, case.x, fimvar.analyze(case.model, case.x, "categorical", samples=samples,
                                              engine="autodiff")


def test_the_plans_label_noise_of_the_combination():
    """The plan's label noise of the combination is b = Σ_i min_α Var_y(α Î1 + (1−α) Î2) for one
    draw (docs/theory.md §8.2): against a dense search over α per parameter."""
    _, _, result = tiny_result()
    grid = torch.linspace(-2, 3, 20_001, dtype=torch.float64)[:, None]
    for group_plan in result.plan().groups:
        members = result.groups.get(group_plan.group, list(result.shapes))
        v1, v2, c12 = (torch.cat([getattr(result, q)[m].reshape(-1) for m in members])
                       for q in ("v1", "v2", "c12"))
        label = (grid**2 * v1 + (1 - grid) ** 2 * v2 + 2 * grid * (1 - grid) * c12).min(0).values
        assert group_plan.terms.label["combined"] == pytest.approx(float(label.sum()), rel=1e-6)
        assert group_plan.terms.label["combined"] <= min(float(v1.sum()), float(v2.sum()))


def test_plan_structure_and_errors():
    _, _, result = tiny_result()
    p = result.plan(0.2, 0.1)
    assert [g.group for g in p.groups] == list(result.groups) + ["(model)"]
    for g in p.groups:
        best = g.recommended("normal")
        assert best is not None and best.cost == min(d.cost for d in g.designs if d.method == "normal")
        # the combination is never worse than Î1 or Î2 for a common number of draws
        for m in (1, 4):
            comb = design(g.terms, "combined", Target(0.2, 0.1), "normal", draws=m)
            assert comb.inputs <= design(g.terms, "i1", Target(0.2, 0.1), "normal", draws=m).inputs
            assert comb.inputs <= design(g.terms, "i2", Target(0.2, 0.1), "normal", draws=m).inputs
    assert "normal" in p.table() and "Chebyshev" in p.table(detailed=True)
    assert max(len(line) for line in p.table(detailed=True).splitlines()) <= 80
    assert p.to_dict()["groups"][0]["designs"]
    with pytest.raises(FimvarError, match="rho"):
        plan(result, 0.0)
    with pytest.raises(FimvarError, match="delta"):
        plan(result, 0.1, 1.5)
    with pytest.raises(FimvarError, match="draws"):
        plan(result, 0.1, 0.1, draws=0)


def test_extreme_targets():
    """ρ = 1e-300 (math.ceil overflowed) and δ = 0.5 (beyond the normal approximation) are
    refused; the most demanding accepted target gives a plan whose designs all meet it."""
    _, _, result = tiny_result(inputs=8)
    with pytest.raises(FimvarError, match="at least 1e-08"):
        result.plan(rho=1e-300)
    with pytest.raises(FimvarError, match="at most 0.215"):
        result.plan(delta=0.5)
    p = result.plan(rho=1e-8, delta=1e-12)
    for g in p.groups:
        for d in g.designs:
            k = confidence_factor(1e-12, d.method)
            assert d.inputs >= 1 and k * d.relative_rmse**2 <= 1e-16 * (1 + 1e-6)
    assert "1e-08" in p.table() or "1e-8" in p.table()


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
