"""Families whose T outputs are independent one-dimensional exponential families.

With independent, zero-mean components of variances ``s_c``, third moments ``κ3_c`` and
variance of squares ``r_c = Var(ε_c²) = μ4_c − s_c²``, the contractions of docs/theory.md §4 are

    uᵀ I u            = Σ_c s_c u_c²
    Var[(u·ε)²]       = Σ_c r_c u_c⁴ + 2 Σ_{a≠b} s_a u_a² s_b u_b²          (every term ≥ 0)
    E[(u·ε)² (w·ε)]   = Σ_c κ3_c u_c² w_c
    Var[(a·ε)(b·ε)]   = Σ_c (r_c − 2 s_c²) a_c² b_c² + (Σ s a²)(Σ s b²) + (Σ s a b)²

The second line is the cancellation-free form of ``E(u·ε)⁴ − (uᵀIu)²``.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from fimvar.errors import FimvarError
from fimvar.families.base import ExponentialFamily, exclusive_pair_sum


class IndependentFamily(ExponentialFamily):
    """Base class for Gaussian, Bernoulli and Poisson outputs."""

    @abstractmethod
    def component_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s, κ3, r)``: per-component variance, third central moment and ``Var(ε_c²)``,
        each of shape ``(n, T)``."""

    def fisher(self, h: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(self.component_moments(h)[0])

    def fisher_factor(self, h: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(self.component_moments(h)[0].clamp_min(0.0).sqrt())

    def third_cumulant(self, h: torch.Tensor) -> torch.Tensor:
        _, third, _ = self.component_moments(h)
        n, width = h.shape
        out = torch.zeros(n, width, width, width, dtype=h.dtype, device=h.device)
        idx = torch.arange(width, device=h.device)
        out[:, idx, idx, idx] = third
        return out

    def fourth_moment(self, h: torch.Tensor) -> torch.Tensor:
        s, _, r = self.component_moments(h)
        n, width = h.shape
        eye = torch.eye(width, dtype=h.dtype, device=h.device)
        # K_abcd = s_a s_c δ_ab δ_cd + s_a s_b (δ_ac δ_bd + δ_ad δ_bc) + δ_abcd (μ4 − 3 s²)
        ss = s[:, :, None] * s[:, None, :]
        out = torch.einsum("nac,ab,cd->nabcd", ss, eye, eye)
        out = out + torch.einsum("nab,ac,bd->nabcd", ss, eye, eye)
        out = out + torch.einsum("nab,ad,bc->nabcd", ss, eye, eye)
        idx = torch.arange(width, device=h.device)
        out[:, idx, idx, idx, idx] += r - 2 * s**2
        return out

    # -- closed forms (docs/theory.md §4), each written once
    @staticmethod
    def _fourth(r: torch.Tensor, u_sq: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
        """``Σ r u⁴ + 2 Σ_{a≠b} s_a u_a² s_b u_b²`` with ``weighted = s u²`` (every term ≥ 0)."""
        return (r * u_sq**2).sum(1) + 2.0 * exclusive_pair_sum(weighted, dim=1)

    def _moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(m[:, :, None] for m in self.component_moments(h))

    def quadratic(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (self._moments(h)[0] * u**2).sum(1)

    def fourth_variance(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s, _, r = self._moments(h)
        u_sq = u**2
        return self._fourth(r, u_sq, s * u_sq)

    def third_moment(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (self._moments(h)[1] * u**2 * w).sum(1)

    def contractions(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor):
        s, third, r = self._moments(h)
        u_sq = u**2
        weighted = s * u_sq
        return weighted.sum(1), self._fourth(r, u_sq, weighted), (s * w**2).sum(1), (third * u_sq * w).sum(1)

    def pair_fourth_variance(self, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s, _, r = self.component_moments(h)
        diagonal = torch.einsum("nc,nci,ncj->nij", r - 2 * s**2, a**2, b**2)
        qa = torch.einsum("nc,nci->ni", s, a**2)
        qb = torch.einsum("nc,ncj->nj", s, b**2)
        cross = torch.einsum("nc,nci,ncj->nij", s, a, b)
        return (diagonal + qa[:, :, None] * qb[:, None, :] + cross**2).clamp_min(0.0)

    def fisher_eigenvalues(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.component_moments(h)[0], dim=-1).values

    def fisher_eigenvalue_range(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.component_moments(h)[0]
        return s.amin(-1), s.amax(-1)

    def check_real_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Shared shape checks: labels of shape ``(n, T)`` (or ``(n,)`` when ``T = 1``)."""
        n, width = h.shape
        if labels.dim() == 1 and width == 1:
            labels = labels[:, None]
        if labels.shape != (n, width):
            raise FimvarError(
                f"{self.name} labels must have shape ({n}, {width}) to match the model outputs, "
                f"got {tuple(labels.shape)}"
            )
        labels = labels.to(torch.float64)
        if not torch.isfinite(labels).all():
            raise FimvarError(f"{self.name} labels contain NaN or Inf")
        return labels
