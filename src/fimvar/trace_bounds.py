"""Group-level ("trace") quantities and bounds: [B] Thm D.1 and the Frobenius bounds of [A].

For a group of parameters with per-input Gram matrices ``G = Σ_i u_i u_iᵀ`` (T×T),
``G_w = Σ_i w_i w_iᵀ`` and ``Q = Σ_i vec(u_i u_iᵀ) vec(u_i u_iᵀ)ᵀ`` (T²×T²):

    Σ_i I(θ_i|x) = tr(I G)        Σ_i v2 = tr(I G_w)        Σ_i v1 = tr(M̄ Q)

with ``M̄`` the T²×T² matrix ``M_(ab),(cd)``. Von Neumann's trace inequality gives [B] Thm D.1:
``Σ_t σ_t(G) λ_{T+1−t}(I) ≤ tr(I G) ≤ Σ_t σ_t(G) λ_t(I)`` (both sorted decreasingly), and
likewise for the other two.

The Frobenius norm of the full covariance of Î1 restricted to the group, for one draw
([A] and theory §3), is ``‖Cov(Î1)‖_F² = Σ M_abcd M_a'b'c'd' G_aa' G_bb' G_cc' G_dd'``, bounded by
``‖J‖_F⁴ ‖M‖_F = (tr G)² ‖M‖_F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.families import ExponentialFamily

#: the T²×T² forms (trace bound of V1, Frobenius norm of Cov(Î1)) are computed up to this width
MAX_TENSOR_WIDTH = 12


@dataclass(frozen=True)
class GroupBoundTerm:
    name: str
    quantity: str  # trace_fisher, trace_v1, trace_v2, frobenius_i1
    side: str
    source: str


GROUP_BOUND_TERMS: tuple[GroupBoundTerm, ...] = (
    GroupBoundTerm("thmD.1_trace_fisher_lower", "trace_fisher", "lower", "[B] Thm D.1"),
    GroupBoundTerm("thmD.1_trace_fisher_upper", "trace_fisher", "upper", "[B] Thm D.1"),
    GroupBoundTerm("thmD.1_trace_v1_lower", "trace_v1", "lower", "[B] Thm D.1"),
    GroupBoundTerm("thmD.1_trace_v1_upper", "trace_v1", "upper", "[B] Thm D.1"),
    GroupBoundTerm("thmD.1_trace_v2_lower", "trace_v2", "lower", "[B] Thm D.1"),
    GroupBoundTerm("thmD.1_trace_v2_upper", "trace_v2", "upper", "[B] Thm D.1"),
    GroupBoundTerm("A_frobenius_i1_upper", "frobenius_i1", "upper", "[A] Frobenius bound"),
)


class OutputMoments:
    """Per-input moment tensors of the outputs, shared by every group of one chunk."""

    def __init__(self, family: ExponentialFamily, h: torch.Tensor) -> None:
        self.width = h.shape[1]
        self.fisher = family.fisher(h)
        self.fisher_eigenvalues = torch.linalg.eigvalsh(self.fisher)  # ascending
        self.tensor_forms = self.width <= MAX_TENSOR_WIDTH
        if self.tensor_forms:
            self.fourth = family.fourth_central_tensor(h)  # M, (n, T, T, T, T)
            flat = self.fourth.reshape(h.shape[0], self.width**2, self.width**2)
            self.fourth_eigenvalues = torch.linalg.eigvalsh(0.5 * (flat + flat.transpose(1, 2)))
            self.fourth_norm = flat.pow(2).sum((1, 2)).sqrt()


def _von_neumann(gram_eigenvalues: torch.Tensor, eigenvalues: torch.Tensor):
    """Lower and upper trace bounds from two ascending spectra, summed over the chunk."""
    lower = (gram_eigenvalues * torch.flip(eigenvalues, (-1,))).sum(-1)
    upper = (gram_eigenvalues * eigenvalues).sum(-1)
    return lower.sum(), upper.sum()


def covariance_frobenius(fourth: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``‖Cov(Î1)‖_F`` for one draw per input, ``(n,)``: ``⟨M, M ×₁G ×₂G ×₃G ×₄G⟩^{1/2}``."""
    moved = torch.einsum("nabcd,nai->nibcd", fourth, gram)
    moved = torch.einsum("nibcd,nbj->nijcd", moved, gram)
    moved = torch.einsum("nijcd,nck->nijkd", moved, gram)
    moved = torch.einsum("nijkd,ndl->nijkl", moved, gram)
    return (fourth * moved).sum((1, 2, 3, 4)).clamp_min(0.0).sqrt()


def group_sums(
    moments: OutputMoments,
    gram_u: torch.Tensor,
    gram_w: torch.Tensor,
    square_gram: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Chunk sums of the exact group quantities and of their bounds (keys of
    :data:`GROUP_BOUND_TERMS` prefixed ``bound:``)."""
    sums: dict[str, torch.Tensor] = {}
    fisher = moments.fisher
    sums["trace_fisher"] = torch.einsum("nab,nba->n", fisher, gram_u).sum()
    sums["trace_v2"] = torch.einsum("nab,nba->n", fisher, gram_w).sum()
    gram_u_eig = torch.linalg.eigvalsh(gram_u).clamp_min(0.0)
    gram_w_eig = torch.linalg.eigvalsh(gram_w).clamp_min(0.0)
    low, high = _von_neumann(gram_u_eig, moments.fisher_eigenvalues)
    sums["bound:thmD.1_trace_fisher_lower"], sums["bound:thmD.1_trace_fisher_upper"] = low, high
    low, high = _von_neumann(gram_w_eig, moments.fisher_eigenvalues)
    sums["bound:thmD.1_trace_v2_lower"], sums["bound:thmD.1_trace_v2_upper"] = low, high
    if moments.tensor_forms and square_gram is not None:
        n = gram_u.shape[0]
        flat = moments.fourth.reshape(n, moments.width**2, moments.width**2)
        sums["trace_v1"] = torch.einsum("npq,nqp->n", flat, square_gram).sum()
        square_eig = torch.linalg.eigvalsh(square_gram).clamp_min(0.0)
        low, high = _von_neumann(square_eig, moments.fourth_eigenvalues)
        sums["bound:thmD.1_trace_v1_lower"], sums["bound:thmD.1_trace_v1_upper"] = low, high
        sums["frobenius_i1"] = covariance_frobenius(moments.fourth, gram_u).sum()
        trace = torch.einsum("naa->n", gram_u)
        sums["bound:A_frobenius_i1_upper"] = (trace**2 * moments.fourth_norm).sum()
    return sums
