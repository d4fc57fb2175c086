"""[A]'s weight-norm and spectral-norm bounds: exact Jacobian norms checked against torch.func
Jacobians, bounds checked to hold, and the implied V1 bound against analyze's v1."""

from __future__ import annotations

import pytest
import torch
from cases import make_case
from checks import assert_close
from torch import nn
from torch.func import functional_call, jacrev

import fimvar


def mlp(seed: int, activation) -> nn.Sequential:
    """The catalogue's sigmoid-softplus MLP with both activations replaced by ``activation``."""
    model = make_case("mlp-sigmoid-softplus", "categorical", seed=seed).model
    model[1], model[3] = activation(), activation()
    return model


def spectral_norm_3tensor(tensor: torch.Tensor, starts: int = 6, iterations: int = 150) -> float:
    """max ⟨T, α⊗β⊗γ⟩ over unit vectors by alternating power iteration (a lower estimate)."""
    best = 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(starts):
        b = torch.randn(tensor.shape[1], generator=g, dtype=tensor.dtype)
        c = torch.randn(tensor.shape[2], generator=g, dtype=tensor.dtype)
        for _ in range(iterations):
            a = torch.einsum("tjm,j,m->t", tensor, b, c)
            a = a / a.norm()
            b = torch.einsum("tjm,t,m->j", tensor, a, c)
            b = b / b.norm()
            c = torch.einsum("tjm,t,j->m", tensor, a, b)
            c = c / c.norm()
        best = max(best, float(torch.einsum("tjm,t,j,m->", tensor, a, b, c)))
    return best


@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, nn.Softplus])
def test_exact_norms_and_bounds(activation):
    model = mlp(0, activation)
    x = make_case("mlp-sigmoid-softplus", "categorical", inputs=4, seed=1).x
    bounds = {b.layer: b for b in fimvar.weight_norm_bounds(model, x)}
    params = {k: v.detach() for k, v in model.named_parameters()}
    r = fimvar.analyze(model, x, "categorical", bounds=False)
    for layer in ("0", "2", "4"):
        frob, spec = [], []
        for x1 in x:
            jac = jacrev(lambda p, x1=x1: functional_call(model, p, (x1[None],))[0])(params)
            weight, bias = jac[f"{layer}.weight"], jac[f"{layer}.bias"]
            full = torch.cat([weight, bias[:, :, None]], dim=2)  # ∂h/∂W̄ with the bias column
            frob.append(float(full.norm()))
            spec.append(spectral_norm_3tensor(full))
        b = bounds[layer]
        assert_close(b.frobenius, sum(frob) / len(frob), "‖∂h/∂W̄‖_F")
        assert abs(b.spectral - sum(spec) / len(spec)) <= 1e-8 * b.spectral
        assert b.frobenius <= b.frobenius_bound * (1 + 1e-12)
        assert b.spectral <= b.spectral_bound * (1 + 1e-12)
        v1 = float(r.v1[f"{layer}.weight"].sum() + r.v1[f"{layer}.bias"].sum())
        assert_close(b.v1_sum, v1, "layer Σ v1 (weight norms)")
        assert b.v1_sum <= b.v1_bound * (1 + 1e-12)


def test_weight_decay_lowers_the_bound():
    model = mlp(2, nn.Tanh)
    x = make_case("mlp-sigmoid-softplus", "categorical", inputs=4, seed=2).x
    before = fimvar.weight_norm_bounds(model, x)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.mul_(0.5)
    after = fimvar.weight_norm_bounds(model, x)
    assert after[0].frobenius_bound < before[0].frobenius_bound


def test_non_mlp_is_refused():
    case = make_case("mlp-gelu-nobias", "categorical")
    with pytest.raises(fimvar.FimvarError, match="GELU"):
        fimvar.weight_norm_bounds(case.model, case.x)
