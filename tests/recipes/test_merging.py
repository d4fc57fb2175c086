"""Fisher merging: the merge against Matena & Raffel's formula computed by hand, the delta-method
variances of the weights and of the merged parameters against a Monte Carlo simulation of Î1 with
fresh labels, zero Fishers, and bad inputs."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from cases import make_case
from torch import nn

import fimvar
from fimvar.recipes import fisher_merge

N, M, REPLICATES = 12, 64, 20000


def squared_scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``(∂ log p_c(x_n) / ∂θ_p)²`` as ``(N, C, P)`` and the probabilities ``(N, C)``, by torch.func
    (independent of fimvar), with the parameters' names and shapes."""
    params = {k: p.detach() for k, p in model.named_parameters()}

    def log_probs(p, xi):
        return torch.func.functional_call(model, p, (xi[None],))[0].log_softmax(-1)

    jac = torch.func.vmap(torch.func.jacrev(log_probs), in_dims=(None, 0))(params, x)
    flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], 2)
    probs = torch.func.vmap(log_probs, in_dims=(None, 0))(params, x).exp()
    return flat.pow(2), probs, [(k, p.shape) for k, p in params.items()]


def unflatten(flat: torch.Tensor, layout: list) -> dict:
    out, start = {}, 0
    for name, shape in layout:
        out[name] = flat[..., start:start + shape.numel()].reshape(*flat.shape[:-1], *shape)
        start += shape.numel()
    return out


def close(tensor: torch.Tensor, index: int, expected, rtol: float, scale=None) -> None:
    """``|got − expected| ≤ rtol · scale`` (default scale ``|expected|``)."""
    got = float(tensor.reshape(-1)[index])
    assert abs(mp.mpf(got) - expected) <= rtol * (abs(expected) if scale is None else scale), (got, expected)


def two_models():
    first = make_case("mlp-tanh", "categorical", inputs=N, seed=0)
    second = make_case("mlp-tanh", "categorical", inputs=N, seed=1)
    for case in (first, second):
        case.x[:, 0] = 0.0  # the first input feature is dead: its weights have Fisher exactly 0
    return first, second


def test_merge_is_the_fisher_weighted_average():
    first, second = two_models()
    third = make_case("mlp-tanh", "categorical", inputs=N, seed=4)
    third.x[:, 0] = 0.0
    cases = (first, second, third)
    results = [fimvar.analyze(c.model, c.x, "categorical", samples=2, bounds=False) for c in cases]
    merge = fisher_merge([c.model for c in cases], results, estimator="i1", epsilon=1e-9)
    mp.mp.dps = 40  # the formulas by hand in 40 digits, on the same float64 inputs
    floor = mp.mpf(1e-9)
    for name, _ in first.model.named_parameters():
        for index in range(first.model.get_parameter(name).numel()):
            raw = [mp.mpf(float(r.i1[name].reshape(-1)[index])) for r in results]
            fishers = [max(f, floor) for f in raw]
            thetas = [mp.mpf(float(c.model.get_parameter(name).detach().reshape(-1)[index])) for c in cases]
            variances = [mp.mpf(float(r.variance("i1")[name].reshape(-1)[index])) if f > floor else 0
                         for r, f in zip(results, raw, strict=True)]
            total = sum(fishers)
            merged = sum(f * t for f, t in zip(fishers, thetas, strict=True)) / total
            close(merge.parameters[name], index, merged, 1e-13,
                  sum(f * abs(t) for f, t in zip(fishers, thetas, strict=True)) / total)
            for j in range(3):
                close(merge.weights[j][name], index, fishers[j] / total, 1e-13)
                # the delta method written out: Σ_k (∂λ_j/∂F_k)² σ_k², ∂λ_j/∂F_k = (δ_jk S − F_j)/S²
                derivatives = [((total if k == j else 0) - fishers[j]) / total**2 for k in range(3)]
                close(merge.weight_variance[j][name], index,
                      sum(d**2 * v for d, v in zip(derivatives, variances, strict=True)), 1e-11)
            close(merge.parameter_variance[name], index,
                  sum((t - merged) ** 2 * v for t, v in zip(thetas, variances, strict=True)) / total**2,
                  1e-11)
    # the dead feature: Fisher 0 in every model → plain average, weights 1/n, no error, no NaN
    dead = merge.weights[0]["0.weight"][:, 0]
    assert torch.equal(dead, torch.full_like(dead, 1 / 3))
    assert torch.equal(merge.weight_std()[0]["0.weight"][:, 0], torch.zeros_like(dead))
    average = sum(c.model[0].weight.detach()[:, 0] for c in cases) / 3
    torch.testing.assert_close(merge.parameters["0.weight"][:, 0], average, rtol=1e-14, atol=0)
    for values in [merge.parameters, *merge.weights, *merge.weight_variance, merge.parameter_variance]:
        assert all(torch.isfinite(v).all() for v in values.values())
    model = merge.model(first.model)
    assert model is not first.model
    torch.testing.assert_close(model[2].bias, merge.parameters["2.bias"], rtol=0, atol=0)


def test_delta_method_variance_agrees_with_monte_carlo():
    first, second = two_models()
    cases = (first, second)
    epsilon = 1e-12
    # variances of Î1 given the inputs (fresh labels only): v1 / (N M), v1 as fimvar reports it
    results = [fimvar.analyze(c.model, c.x, "categorical", samples=M, bounds=False) for c in cases]
    variances = [{k: r.v1[k] / (N * M) for k in r.v1} for r in results]
    fishers = [r.fisher for r in results]
    merge = fisher_merge([c.model for c in cases], fishers, variances=variances, epsilon=epsilon)

    generator = torch.Generator().manual_seed(0)
    draws, layout = [], None
    for case in cases:
        scores, probs, layout = squared_scores(case.model, case.x)
        # M labels per input from the model: the class counts are multinomial; Î1 = mean of (score)²
        counts = torch.stack([torch.multinomial(probs[n], M * REPLICATES, replacement=True,
                                                generator=generator).reshape(REPLICATES, M)
                              for n in range(N)], 1)
        counts = torch.nn.functional.one_hot(counts, probs.shape[1]).sum(2).to(torch.float64)
        draws.append(torch.einsum("rnc,ncp->rp", counts, scores) / (N * M))
    floored = torch.stack(draws).clamp_min(epsilon)
    lam = floored / floored.sum(0)
    theta = torch.stack([torch.cat([p.detach().reshape(-1) for p in c.model.parameters()]) for c in cases])
    merged = (lam * theta[:, None]).sum(0)

    def check(samples: torch.Tensor, predicted: dict, label: str) -> float:
        centred = samples - samples.mean(0)
        variance = centred.pow(2).sum(0) / (REPLICATES - 1)
        fourth = centred.pow(4).mean(0)
        # standard error of a sample variance: sqrt((m4 − s⁴ (R−3)/(R−1)) / R)
        error = (fourth - variance**2 * (REPLICATES - 3) / (REPLICATES - 1)) / REPLICATES
        error = error.clamp_min(0).sqrt()
        flat = torch.cat([predicted[k].reshape(-1) for k, _ in layout])
        live = flat > 0
        assert torch.equal(variance[~live], torch.zeros_like(variance[~live])), label
        gap = (flat - variance)[live].abs()
        assert (gap <= 5 * error[live]).all(), f"{label}: {(gap / error[live]).max():.2f} standard errors"
        return float((gap / variance[live]).max())

    worst = max(check(lam[0], merge.weight_variance[0], "Var λ_0"),
                check(lam[1], merge.weight_variance[1], "Var λ_1"),
                check(merged, merge.parameter_variance, "Var θ_merged"))
    print(f"largest relative gap delta method vs Monte Carlo: {worst:.3g}")
    # the dead feature's weights: exactly 1/2 in every replicate
    dead = unflatten(lam[0], layout)["0.weight"][:, :, 0]
    assert torch.equal(dead, torch.full_like(dead, 0.5))


def test_bad_inputs():
    first, second = two_models()
    fisher = fimvar.fisher_diagonal(first.model, first.x)
    other = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with pytest.raises(fimvar.FimvarError, match="architecture"):
        fisher_merge([first.model, other], [fisher, fisher])
    with pytest.raises(fimvar.FimvarError, match="two or more"):
        fisher_merge([first.model], [fisher])
    with pytest.raises(fimvar.FimvarError, match="one Fisher per model"):
        fisher_merge([first.model, second.model], [fisher])
    partial = {k: v for k, v in fisher.items() if k != "0.bias"}
    with pytest.raises(fimvar.FimvarError, match="same parameters"):
        fisher_merge([first.model, second.model], [fisher, partial])
    broken = dict(fisher, **{"0.bias": torch.full_like(fisher["0.bias"], float("nan"))})
    with pytest.raises(fimvar.FimvarError, match="NaN"):
        fisher_merge([first.model, second.model], [fisher, broken])
    with pytest.raises(fimvar.FimvarError, match="epsilon"):
        fisher_merge([first.model, second.model], [fisher, fisher], epsilon=0.0)
    merge = fisher_merge([first.model, second.model], [fisher, fisher])
    assert merge.weight_variance is None and merge.weight_std() is None
    with pytest.raises(fimvar.FimvarError, match="architecture"):
        merge.load_into(other)
