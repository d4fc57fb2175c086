"""The EWC recipe: the penalty against the textbook formula written out element by element, the
sample size against the plan, gradients, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from cases import make_case
from torch import nn

import fimvar
from fimvar.recipes import EWCPenalty, ewc_penalty


def literal_ewc(model: nn.Module, anchor: dict, fisher: dict, strength: float) -> torch.Tensor:
    """λ/2 Σ_i F_i (θ_i − θ*_i)², one scalar at a time (Kirkpatrick et al. 2017, eq. 3)."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        flat_p, flat_a, flat_f = p.reshape(-1), anchor[name].reshape(-1), fisher[name].reshape(-1)
        for i in range(flat_p.numel()):
            total = total + flat_f[i] * (flat_p[i] - flat_a[i]) ** 2
    return strength / 2 * total


def perturb(model: nn.Module, scale: float = 0.3, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def test_penalty_equals_the_textbook_formula_and_its_gradient_flows():
    case = make_case("mlp-tanh", "categorical", inputs=300)
    model = case.model
    penalty = ewc_penalty(model, case.x, "categorical", rho=0.2, strength=3.0, pilot=64)
    anchor = {k: p.detach().clone() for k, p in model.named_parameters()}
    assert penalty(model).item() == 0.0
    perturb(model)
    value = penalty(model)
    expected = literal_ewc(model, anchor, penalty.fisher, 3.0)
    assert abs(value.item() - expected.item()) <= 1e-12 * expected.item()
    assert expected.item() > 0
    # the Fisher is fimvar's exact Fisher on the inputs the penalty says it used
    reference = fimvar.fisher_diagonal(model_at(anchor, model), case.x[: penalty.inputs], "categorical")
    for k in reference:
        torch.testing.assert_close(penalty.fisher[k], reference[k], rtol=1e-12, atol=0)
    value.backward()
    for name, p in model.named_parameters():  # d/dθ λ/2 F (θ − θ*)² = λ F (θ − θ*)
        expected_grad = 3.0 * penalty.fisher[name] * (p.detach() - anchor[name])
        torch.testing.assert_close(p.grad, expected_grad, rtol=1e-12, atol=1e-15)


def model_at(anchor: dict, like: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(like)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(anchor[name])
    return model


@pytest.mark.parametrize("method", ["normal", "chebyshev"])
def test_sample_size_is_the_plans(method):
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=600, seed=2)
    pilot = case.x[:50]
    penalty = ewc_penalty(case.model, [pilot, case.x[50:200], case.x[200:]], "categorical",
                          rho=0.007, delta=0.05, method=method)
    plan = fimvar.analyze(case.model, pilot, "categorical", bounds=False).plan(0.007, 0.05)
    design = plan.group("(model)").get("exact", method)
    assert penalty.recommended_inputs == design.inputs
    assert 50 < penalty.inputs == design.inputs < 600   # past the first batch, within the data
    reference = fimvar.fisher_diagonal(case.model, case.x[: design.inputs], "categorical")
    for k in reference:
        torch.testing.assert_close(penalty.fisher[k], reference[k], rtol=1e-12, atol=0)
    # independently: N = k Σ Var_x I / (ρ² ‖I‖²) from the pilot's own exact Fisher per input
    per_input = per_input_fisher(case.model, pilot)
    mean = per_input.mean(0)
    k = 1 / 0.05 if method == "chebyshev" else 1.959963984540054**2
    needed = k * per_input.var(0, unbiased=True).sum() / (0.007**2 * mean.pow(2).sum())
    assert penalty.recommended_inputs == math.ceil(float(needed) * (1 - 1e-9))
    assert penalty.relative_error <= 0.007 + 1e-12


def per_input_fisher(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_c p_c (∂ log p_c / ∂θ)² per input: the categorical Fisher diagonal by enumeration."""
    params = dict(model.named_parameters())

    def log_probs(p, xi):
        return torch.func.functional_call(model, p, (xi[None],))[0].log_softmax(-1)

    rows = []
    for xi in x:
        jac = torch.func.jacrev(log_probs)(params, xi)
        probs = log_probs(params, xi).exp().detach()
        flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1)
        rows.append((probs[:, None] * flat.pow(2)).sum(0))
    return torch.stack(rows).detach()


def test_fewer_inputs_than_planned_says_so():
    case = make_case("mlp-tanh", "categorical", inputs=40, seed=3)
    with pytest.warns(UserWarning, match="the data has 40 inputs but the plan asks for"):
        penalty = ewc_penalty(case.model, case.x, "categorical", rho=0.01, pilot=40)
    assert penalty.inputs == 40 and penalty.recommended_inputs > 40
    # ρ ∝ 1/sqrt(N): the reached error is the target scaled by sqrt(planned / used)
    reached = 0.01 * math.sqrt(penalty.recommended_inputs / 40)
    assert penalty.relative_error == pytest.approx(reached, rel=1e-3)
    assert any("reaches" in note for note in penalty.notes)


def test_from_fisher_and_bad_inputs():
    case = make_case("mlp-tanh", "categorical", inputs=8)
    fisher = fimvar.fisher_diagonal(case.model, case.x)
    penalty = EWCPenalty.from_fisher(case.model, {"0.weight": fisher["0.weight"]}, strength=2.0)
    perturb(case.model)
    anchor_diff = case.model[0].weight.detach() - penalty.anchor["0.weight"]
    expected = (fisher["0.weight"] * anchor_diff.pow(2)).sum()   # only the given parameter counts
    assert penalty(case.model).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(fimvar.FimvarError, match="architecture"):
        penalty(nn.Sequential(nn.Linear(5, 4)).double())
    with pytest.raises(fimvar.FimvarError, match="shape"):
        EWCPenalty.from_fisher(case.model, {"0.weight": torch.ones(2, 2)})
    with pytest.raises(fimvar.FimvarError, match="≥ 0"):
        EWCPenalty.from_fisher(case.model, {"0.weight": -fisher["0.weight"]})
    with pytest.raises(fimvar.FimvarError, match="strength"):
        ewc_penalty(case.model, case.x, strength=-1.0)
    with pytest.raises(fimvar.FimvarError, match="empty"):
        ewc_penalty(case.model, case.x[:0])
    with pytest.raises(fimvar.FimvarError, match="iterable"):
        ewc_penalty(case.model, [{"a": 1}])
