"""Bounds of the full-matrix mode: [B] App. C for the off-diagonal entries and [A]'s Frobenius
bound on ``Cov(Î2)`` (docs/theory.md §5.3). The Frobenius bound on ``Cov(Î1)`` is shared with the
trace forms (:func:`fimvar.estimators.bounds.trace.frobenius_i1_bound`).
"""

from __future__ import annotations

import torch

from fimvar.estimators.bounds.tensor_eigen import SphereProblem, sphere_extrema
from fimvar.families import ExponentialFamily


def bilinear_fourth_max(family: ExponentialFamily, h: torch.Tensor) -> torch.Tensor:
    """``γ̃_max(M) = sup_{‖a‖=‖b‖=1} a^p b^q a^r b^s M_pqrs`` per input ([B] App. C)."""

    def form(rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Var[(a·ε)(b·ε)] for matching columns of a and b, via the moment tensors (T small)
        fourth = family.fourth_moment(rows)
        cross = torch.einsum("nar,nab,nbr->nr", a, family.fisher(rows), b)
        value = torch.einsum("nabcd,nar,nbr,ncr,ndr->nr", fourth, a, a, b, b)
        return value - cross**2

    (value,) = sphere_extrema([SphereProblem(form, variables=2)], h, random=64)
    return value


def offdiagonal_v1_upper(gamma: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
    """``Var Î1_ij ≤ ‖u_i‖² ‖u_j‖² γ̃_max(M)`` per input ([B] App. C): ``(n,), (n, T, P) → (n, P, P)``."""
    norms = jacobian.pow(2).sum(1)
    return gamma[:, None, None] * norms[:, :, None] * norms[:, None, :]


def offdiagonal_v2_upper(lam_max: torch.Tensor, hessians: torch.Tensor) -> torch.Tensor:
    """``Var Î2_ij ≤ ‖∂²_ij h‖² λ_max(I)`` per input ([B] App. C): ``(n,), (n, T, P, P) → (n, P, P)``."""
    return lam_max[:, None, None] * hessians.pow(2).sum(1)


def frobenius_i2_bound(hessian_gram: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    """``‖Cov(Î2)‖_F ≤ (Σ_α ‖∇²h^α‖_F²) ‖I‖_F`` per input ([A]); ``hessian_gram`` is
    ``H_αβ = ⟨∇²h^α, ∇²h^β⟩_F`` (n, T, T)."""
    return torch.einsum("naa->n", hessian_gram) * fisher.pow(2).sum((1, 2)).sqrt()
