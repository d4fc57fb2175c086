"""Per-chunk sums of the full-matrix mode (small models; docs/theory.md §3.2 and §5.3).

For one input, with ``J = ∂h/∂θ`` (T×P) and ``H_a = ∇²_θ h^a`` (P×P, a = 1…T):

    I(θ|x)         = Jᵀ I J                                           (§2)
    Î1 draw        = (Jᵀε)(Jᵀε)ᵀ              Î2 draw = Jᵀ I J − Σ_a ε_a H_a
    Var Î1_ij      = Var[(u_i·ε)(u_j·ε)]                              ([A] Thm 4)
    Var Î2_ij      = (∂²_ij h)ᵀ I (∂²_ij h)                           ([A] Thm 6)
    ‖Cov(Î1)‖_F²   = Σ M_abcd M_a'b'c'd' G_aa' G_bb' G_cc' G_dd',  G = J Jᵀ       (§3.2)
    ‖Cov(Î2)‖_F²   = tr(I H̃ I H̃),  H̃_αβ = ⟨H_α, H_β⟩_F                          (§3.2)

and the bounds of :mod:`fimvar.estimators.bounds.full`. The P⁴ covariance tensor is never formed.
"""

from __future__ import annotations

import torch

from fimvar.estimators.bounds import full as full_bounds
from fimvar.estimators.bounds.trace import covariance_frobenius, frobenius_i1_bound
from fimvar.families import ExponentialFamily


def per_input_fisher(family: ExponentialFamily, h: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
    """``I(θ|x) = Jᵀ I(h) J`` for every input: ``(n, P, P)``."""
    return torch.einsum("nap,nab,nbq->npq", jacobian, family.fisher(h), jacobian)


def chunk_sums(
    family: ExponentialFamily,
    h: torch.Tensor,
    jacobian: torch.Tensor,
    hessians: torch.Tensor,
    draws: torch.Tensor,
    gamma: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Sums over the chunk's inputs of every full-mode quantity (P×P matrices and scalars).

    Args:
        family: the output distribution.
        h: outputs ``(n, T)``; ``jacobian`` ``(n, T, P)``; ``hessians`` ``(n, T, P, P)``.
        draws: ``ε`` of the sampled labels, ``(n, M, T)``.
        gamma: ``γ̃_max(M)`` per input (``(n,)``) for the entry-wise bounds of [B] App. C, or
            ``None`` to skip them.
    """
    samples = draws.shape[1]
    fisher_h = family.fisher(h)
    fisher = per_input_fisher(family, h, jacobian)
    scores = torch.einsum("nmt,ntp->nmp", draws, jacobian)
    gram = torch.einsum("nap,nbp->nab", jacobian, jacobian)
    fourth = family.fourth_central_tensor(h)
    hessian_gram = torch.einsum("naij,nbij->nab", hessians, hessians)
    weighted = torch.einsum("nab,nbc->nac", fisher_h, hessian_gram)
    sums = {
        "i1": torch.einsum("nmp,nmq->pq", scores, scores),
        "i2": samples * fisher.sum(0) - torch.einsum("nma,naij->ij", draws, hessians),
        "v1": family.pair_fourth_variance(h, jacobian, jacobian).sum(0),
        "v2": torch.einsum("nab,naij,nbij->ij", fisher_h, hessians, hessians),
        "frobenius_i1": covariance_frobenius(fourth, gram).sum(),
        "frobenius_i2": torch.einsum("nab,nba->n", weighted, weighted).clamp_min(0.0).sqrt().sum(),
        "frobenius_i1_bound": frobenius_i1_bound(gram, fourth.pow(2).sum((1, 2, 3, 4)).sqrt()).sum(),
        "frobenius_i2_bound": full_bounds.frobenius_i2_bound(hessian_gram, fisher_h).sum(),
    }
    if gamma is not None:
        sums["appC_v1_upper"] = full_bounds.offdiagonal_v1_upper(gamma, jacobian).sum(0)
        lam_max = torch.linalg.eigvalsh(fisher_h)[:, -1]
        sums["appC_v2_upper"] = full_bounds.offdiagonal_v2_upper(lam_max, hessians).sum(0)
    return sums
