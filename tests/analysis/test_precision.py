"""Precision: a float32 model's derivatives in float32, statistics and sums in float64; and mixed
precision (docs/theory.md §13.2): a bfloat16 (float16) model is differentiated in its dtype and
summed in float64; its exact diagonal Fisher agrees with that of its float32 copy within the
first-order rounding bound derived there, evaluated here by a running error analysis of the
forward pass, of the T backward passes and of the float64 contraction ``Σ_k p_k (J_k − J̄)²``."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from cases import make_case
from torch import nn

import fimvar

BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
FP16 = 2.0**-11  # of float16 (11 significant bits)
F32 = 2.0**-24  # of float32: the kernels' accumulation, and the float32 copy's own rounding


def _activation(module: nn.Module, z: torch.Tensor, a: torch.Tensor):
    """σ'(z), σ''(z) and dσ'/da of a supported activation, and the rounding the kernels add to σ'
    (when σ' is formed from the saved output in the model's precision)."""
    if isinstance(module, nn.Tanh):
        d1 = 1 - a**2
        return d1, -2 * a * d1, (2 * a).abs(), 2 * d1.abs() + a**2
    if isinstance(module, nn.Sigmoid):
        d1 = a * (1 - a)
        return d1, d1 * (1 - 2 * a), (1 - 2 * a).abs(), 2 * d1.abs()
    if isinstance(module, nn.Softplus):
        s = torch.sigmoid(z)
        return s, s * (1 - s), None, s.abs()
    raise NotImplementedError(type(module).__name__)


def rounding_bound(model: nn.Sequential, x: torch.Tensor, u: float) -> dict[str, torch.Tensor]:
    """Per parameter, a first-order bound on |Î(θ_i) − I(θ_i)| (averaged over the inputs) when
    every kernel of the forward and backward passes rounds its result to a format of unit roundoff
    ``u`` after accumulating in float32 (docs/theory.md §13.2, assumptions A1–A4), evaluated in
    float64 at the exact values (a Sequential of Linear layers and Tanh/Sigmoid/Softplus)."""
    layers = list(model)
    a, ea = x.to(torch.float64), torch.zeros_like(x, dtype=torch.float64)
    cache = []
    for layer in layers:  # forward: values and absolute error bounds
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().to(torch.float64)
            b = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros(w.shape[0])
            z = a @ w.T + b
            gamma = (w.shape[1] + 1) * F32
            fz = u * z.abs() + gamma * (a.abs() @ w.abs().T + b.abs()) + ea @ w.abs().T
            cache.append(("linear", layer, a, ea, w, gamma))
            a, ea = z, fz
        else:
            z, fz = a, ea
            out = layer(z)
            d1, d2, da, _ = _activation(layer, z, out)
            cache.append(("act", layer, z, fz, out, None))
            a, ea = out, u * out.abs() + 4 * F32 * out.abs() + d1.abs() * fz
    h, fh = a, ea  # (n, T)
    p = torch.softmax(h, dim=1)
    dp = p * (fh + (p * fh).sum(1, keepdim=True))  # |δp| ≤ |Λ| |δh| (softmax in float64)
    n, width = h.shape
    g = torch.eye(width, dtype=torch.float64).expand(n, width, width).clone()  # ∂h/∂h, exact
    eg = torch.zeros_like(g)
    jac, err = {}, {}
    for index in range(len(layers) - 1, -1, -1):  # backward: the T output directions
        kind, layer, first, second, third, gamma = cache[index]
        name = str(index)
        if kind == "linear":
            a_in, e_in, w = first, second, third
            weight = g[:, :, :, None] * a_in[:, None, None, :]  # ∂h/∂W = g aᵀ, rounded once
            jac[f"{name}.weight"] = weight
            err[f"{name}.weight"] = (u * weight.abs() + eg[:, :, :, None] * a_in.abs()[:, None, None, :]
                                     + g.abs()[:, :, :, None] * e_in[:, None, None, :])
            if layer.bias is not None:
                jac[f"{name}.bias"] = g
                err[f"{name}.bias"] = eg + u * g.abs()
            if index > 0:
                below = g @ w
                eg = u * below.abs() + gamma * (g.abs() @ w.abs()) + eg @ w.abs()
                g = below
        else:
            z, fz, out = first, second, third
            d1, d2, da, rounding = _activation(layer, z, out)
            activation_error = ((da * (u * out.abs() + d1.abs() * fz)) if da is not None else d2.abs() * fz) \
                + u * rounding  # |δσ'|: from the error of the saved value, and the kernels' rounding
            eg = (eg * d1.abs()[:, None, :] + g.abs() * activation_error[:, None, :]
                  + u * (g * d1[:, None, :]).abs())
            g = g * d1[:, None, :]
    bound = {}
    for key, j in jac.items():
        j = j.reshape(n, width, -1)
        e = err[key].reshape(n, width, -1)
        centred = j - (p[:, :, None] * j).sum(1, keepdim=True)
        per_input = 2 * (p[:, :, None] * centred.abs() * e).sum(1) + (dp[:, :, None] * centred**2).sum(1)
        bound[key] = per_input.mean(0).reshape(dict(model.named_parameters())[key].shape)
    return bound


def exact_fisher(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exact diagonal Fisher in float64 (the reference for the bound's own evaluation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fimvar.fisher_diagonal(copy.deepcopy(model).double(), x.double(), "categorical")


@pytest.mark.parametrize(("dtype", "u"), [(torch.bfloat16, BF16), (torch.float16, FP16)])
@pytest.mark.parametrize("engine", ["auto", "autodiff"])
@pytest.mark.parametrize("model_name", ["mlp-tanh", "mlp-sigmoid-softplus"])
def test_low_precision_fisher_within_the_rounding_bound(model_name, engine, dtype, u):
    case = make_case(model_name, "categorical", inputs=64, seed=0, dtype=torch.float32)
    low = copy.deepcopy(case.model).to(dtype)  # the low-precision model …
    copy32 = copy.deepcopy(low).float()  # … and its float32 copy: the same numbers
    x_low = case.x.to(dtype)
    precision = str(dtype).removeprefix("torch.")
    with pytest.warns(UserWarning, match=precision):
        low_result = fimvar.analyze(low, x_low, "categorical", samples=2, engine=engine, bounds=False)
    assert low_result.metadata["precision"] == precision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = fimvar.fisher_diagonal(copy32, x_low.float(), "categorical", engine=engine)
    exact = exact_fisher(copy32, x_low.float())
    bound_low = rounding_bound(copy32, x_low.float(), u)
    bound_f32 = rounding_bound(copy32, x_low.float(), F32)
    worst = 0.0
    depth = sum(isinstance(m, nn.Linear) for m in copy32)
    for name, fisher in low_result.fisher.items():
        assert fisher.dtype == torch.float64 and torch.isfinite(fisher).all()
        difference = (fisher - reference[name]).abs()
        allowed = (bound_low[name] + bound_f32[name]) * 1.01  # first order: O((uκ)²) left out
        assert (difference <= allowed + 1e-30).all(), (name, float((difference / allowed).max()))
        worst = max(worst, float((difference / allowed).max()))
        # not vacuous: the layer's bound is a few tens of u — it grows with the depth of the
        # backward pass, and stays below 12.8 u per Linear layer of the model (5 % per layer in
        # bfloat16; 5 % and 11 % for bfloat16 here)
        relative = float(bound_low[name].sum() / exact[name].sum())
        assert relative < 12.8 * u * depth, (name, relative)
        assert float(difference.sum() / exact[name].sum()) <= relative * 1.01
    assert worst > 0.005  # the bound is not loose by orders of magnitude either (measured: 2–9 %)


def test_bfloat16_sampled_language_model_states_its_precision():
    """The sampled analysis of a bfloat16 language model: precision stated, results float64 and
    finite. (Î1 and v̂1 are not compared with the float32 copy's: bfloat16 logits change the
    probabilities, so the inverse-CDF draws can fall on other labels — a discrete difference, not
    a rounding error; the exact Fisher, which involves no draw, is the comparison above.)"""
    case = make_case("causal-lm", "categorical", inputs=6, seed=0, dtype=torch.float32)
    low = copy.deepcopy(case.model).to(torch.bfloat16)
    with pytest.warns(UserWarning, match="bfloat16"):
        result = fimvar.analyze_sampled(low, case.x, samples=3)
    assert result.metadata["precision"] == "bfloat16"
    for quantity in (result.i1, result.v1, result.input_var, result.variance("i1")):
        assert all(v.dtype == torch.float64 and torch.isfinite(v).all() for v in quantity.values())
    assert math.isfinite(result.plan(0.05).group("(model)").accuracy["i1"].relative_error)


def test_float32_model_matches_float64_within_single_precision():
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=6)
    single = copy.deepcopy(case.model).float()
    r64 = fimvar.analyze(case.model, case.x, "categorical", samples=2, bounds=False)
    r32 = fimvar.analyze(single, case.x.float(), "categorical", samples=2, bounds=False)
    for quantity in ("fisher", "v1", "v2", "i1", "i2"):
        for name, expected in getattr(r64, quantity).items():
            actual = getattr(r32, quantity)[name]
            assert actual.dtype == torch.float64
            scale = float(expected.abs().max())
            assert float((actual - expected).abs().max()) <= 1e-5 * scale + 1e-12, (quantity, name)
