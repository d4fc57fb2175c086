"""Weight-norm and spectral-norm bounds of [A] for multilayer perceptrons.

For an MLP ``z_l = W_l h̄_{l-1}``, ``h_l = σ(z_l)`` with ``|σ'| ≤ 1`` and ``h̄ = (h, 1)``, the
derivative of the output with respect to layer l's weights (bias column included) is the
3-tensor ``∂h/∂W̄_l[t, j, m] = G_l[t, j] h̄_{l-1}[m]`` with ``G_l = ∂h/∂z_l``. Hence, exactly,

    ‖∂h/∂W̄_l‖_F = ‖G_l‖_F ‖h̄_{l-1}‖₂          ‖∂h/∂W̄_l‖_2σ = s_max(G_l) ‖h̄_{l-1}‖₂

and [A] bounds them by the weights of the layers above (``W⁻`` without its bias column):

    ‖∂h/∂W̄_l‖_F ≤ Π_{i>l} ‖W⁻_i‖_F ‖h̄_{l-1}‖₂           ‖∂h/∂W̄_l‖_2σ ≤ Π_{i>l} s_max(W⁻_i) ‖h̄_{l-1}‖₂

(``‖A D B‖_F ≤ ‖A‖_F ‖B‖_F`` when ``‖D‖₂ ≤ 1``). For the top Linear layer the product is empty
and ``G = I_T`` (or ``diag σ'``): [A]'s bound holds per output, and for all T outputs together
the Frobenius form picks up ``‖I_T‖_F = √T``, which is used here.

With [B] Thm 4.1, ``Σ_{i∈l} v1_i ≤ λ̃_max(M) Σ_i ‖u_i‖⁴ ≤ λ̃_max(M) ‖∂h/∂W̄_l‖_F⁴``: weight-norm
(and spectral-norm) regularisation lowers the variance of Î1. All values are input averages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.hidden import output_jacobians
from fimvar.inputs import batches, check_inputs, family_outputs, model_mode_context

#: activations with |σ'| ≤ 1 everywhere
CONTRACTIVE = (nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid, nn.ReLU, nn.Identity, nn.Dropout,
               nn.Hardtanh, nn.Softsign)


@dataclass
class LayerNormBound:
    """[A]'s bounds for one Linear layer, averaged over inputs."""

    layer: str
    frobenius: float
    frobenius_bound: float
    spectral: float
    spectral_bound: float
    v1_sum: float
    v1_bound: float


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise FimvarError("the weight-norm bounds of [A] need an nn.Sequential MLP")
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        contractive = isinstance(module, CONTRACTIVE) or (
            isinstance(module, nn.LeakyReLU) and abs(module.negative_slope) <= 1
        ) or (isinstance(module, nn.ELU) and 0 <= module.alpha <= 1)
        if not (isinstance(module, nn.Linear) or contractive):
            raise FimvarError(
                f"module {name} ({type(module).__name__}) is neither Linear nor an activation with "
                "|σ'| ≤ 1; the bounds of [A] do not apply"
            )
        layers.append((name, module))
    return layers


def weight_norm_bounds(
    model: nn.Sequential, x: torch.Tensor | Iterable, family: str | ExponentialFamily = "categorical"
) -> list[LayerNormBound]:
    """Exact Jacobian norms per Linear layer next to [A]'s weight-norm and spectral bounds."""
    family = get_family(family)
    linear = [(n, m) for n, m in _layers(model) if isinstance(m, nn.Linear)]
    names = [n for n, _ in linear]
    frob_above, spec_above = {}, {}
    frob, spec = None, 1.0  # None: the empty product of the top layer (√T, see module docs)
    for name, module in reversed(linear):
        frob_above[name], spec_above[name] = frob, spec
        weight = module.weight.detach().to(torch.float64)
        frob = float(weight.norm()) * (1.0 if frob is None else frob)
        spec *= float(torch.linalg.matrix_norm(weight, ord=2))
    totals = {n: torch.zeros(6, dtype=torch.float64) for n in names}
    count = 0
    with model_mode_context(model):
        for batch, _ in batches(x, None):
            check_inputs(model, batch)
            inputs: dict[str, torch.Tensor] = {}
            handles = [m.register_forward_hook(
                lambda mod, args, out, name=n, store=inputs: store.__setitem__(name, args[0].detach()))
                for n, m in linear]
            try:
                h = family_outputs(model, batch, family)
            finally:
                for handle in handles:
                    handle.remove()
            m_max = family.fourth_tensor_extrema(h)["m_max"]
            with torch.no_grad():
                jacobians = output_jacobians(model, batch, names)
            for name, module in linear:
                a = inputs[name].reshape(batch.shape[0], -1).to(torch.float64)
                if module.bias is not None:
                    a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
                a_norm = a.norm(dim=1)
                g = jacobians[name].reshape(batch.shape[0], h.shape[1], -1)  # (n, T, out)
                exact_frob = g.flatten(1).norm(dim=1) * a_norm
                exact_spec = torch.linalg.matrix_norm(g, ord=2) * a_norm
                above = frob_above[name] if frob_above[name] is not None else h.shape[1] ** 0.5
                bound_frob = above * a_norm
                v1_sum = family.fourth_variance(h, g).sum(1) * a.pow(4).sum(1)
                totals[name] += torch.stack([
                    exact_frob.sum(), bound_frob.sum(), exact_spec.sum(),
                    (spec_above[name] * a_norm).sum(), v1_sum.sum(), (m_max * bound_frob**4).sum(),
                ])
            count += batch.shape[0]
    if count == 0:
        raise FimvarError("the data is empty: pass at least one input")
    return [LayerNormBound(name, *(float(v) / count for v in totals[name])) for name in names]
