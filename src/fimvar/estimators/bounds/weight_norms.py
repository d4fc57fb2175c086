"""[A]'s weight-norm and spectral-norm bounds for multilayer perceptrons (docs/theory.md §5.4).

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
(and spectral-norm) regularisation lowers the variance of Î1.
"""

from __future__ import annotations

import torch

from fimvar.families import ExponentialFamily


def norms_above(weights: list[torch.Tensor]) -> tuple[list[float | None], list[float]]:
    """For every layer, ``Π_{i>l} ‖W⁻_i‖_F`` (``None`` for the top layer: the empty product,
    see the module docs) and ``Π_{i>l} s_max(W⁻_i)``, from the layers' weights in model order."""
    frobenius: list[float | None] = [None] * len(weights)
    spectral = [1.0] * len(weights)
    frob, spec = None, 1.0
    for index in range(len(weights) - 1, -1, -1):
        frobenius[index], spectral[index] = frob, spec
        weight = weights[index].detach().to(torch.float64)
        frob = float(weight.norm()) * (1.0 if frob is None else frob)
        spec *= float(torch.linalg.matrix_norm(weight, ord=2))
    return frobenius, spectral


def layer_sums(family: ExponentialFamily, h: torch.Tensor, jacobian: torch.Tensor, a: torch.Tensor,
               frobenius_above: float | None, spectral_above: float, m_max: torch.Tensor) -> torch.Tensor:
    """Chunk sums for one layer: exact ‖∂h/∂W̄‖_F, its bound, exact ‖∂h/∂W̄‖_2σ, its bound,
    ``Σ_i v1_i`` and its bound ``λ̃_max(M) ‖∂h/∂W̄‖_F⁴`` (a 6-vector).

    Args:
        jacobian: ``G_l = ∂h/∂z_l`` of the chunk, ``(n, T, out)``.
        a: the layer's input with a column of ones for the bias, ``(n, in [+ 1])``.
    """
    a_norm = a.norm(dim=1)
    exact_frobenius = jacobian.flatten(1).norm(dim=1) * a_norm
    exact_spectral = torch.linalg.matrix_norm(jacobian, ord=2) * a_norm
    above = frobenius_above if frobenius_above is not None else h.shape[1] ** 0.5
    bound_frobenius = above * a_norm
    v1_sum = family.fourth_variance(h, jacobian).sum(1) * a.pow(4).sum(1)
    return torch.stack([exact_frobenius.sum(), bound_frobenius.sum(), exact_spectral.sum(),
                        (spectral_above * a_norm).sum(), v1_sum.sum(), (m_max * bound_frobenius**4).sum()])
