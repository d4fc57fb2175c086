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

    def known_tensor_extrema(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact tensor eigenvalues for ``T ≤ EXACT_WIDTH`` (none known beyond).

        With ``x = u ⊙ u`` on the simplex, ``u⊗4·M = Σ_c κ4_c x_c² + 2 (s·x)²`` and
        ``u⊗4·K = Σ_c κ4_c x_c² + 3 (s·x)²`` (``κ4 = r − 2s²``): a quadratic form with a
        diagonal-plus-rank-one matrix. Its extrema over the simplex are attained at KKT points;
        on a support S these solve ``κ4_c x_c + c t s_c = μ`` (c ∈ S) with ``t = s·x``,
        ``Σ x = 1``, a 2×2 linear system in ``(μ, t)``. Enumerating every support gives the
        global minimum and maximum.
        """
        width = h.shape[1]
        if width > EXACT_WIDTH:
            return {}
        s, _, r = self.component_moments(h)
        kurtosis = r - 2 * s**2
        supports = _supports(width, h.device, h.dtype)  # (S, T)
        out = {}
        for key, weight in (("m", 2.0), ("k", 3.0)):
            low, high = [], []
            step = max(1, (1 << 22) // (supports.shape[0] * width))
            for start in range(0, h.shape[0], step):
                lo, hi = _simplex_extrema(kurtosis[start:start + step], s[start:start + step],
                                          r[start:start + step], weight, supports)
                low.append(lo)
                high.append(hi)
            out[f"{key}_min"], out[f"{key}_max"] = torch.cat(low), torch.cat(high)
        return out

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


#: widths up to which the tensor eigenvalues are found by exact support enumeration
EXACT_WIDTH = 10


def _supports(width: int, device, dtype) -> torch.Tensor:
    """All non-empty subsets of ``range(width)`` as 0/1 rows, ``(2^T − 1, T)``."""
    codes = torch.arange(1, 1 << width, device=device)
    bits = (codes[:, None] >> torch.arange(width, device=device)[None, :]) & 1
    return bits.to(dtype)


def _simplex_extrema(kurtosis, variance, square_variance, weight, supports):
    """Min and max of ``Σ κ4 x² + weight·(s·x)²`` over the simplex, ``(n,)`` each.

    Candidates are evaluated in the cancellation-free form
    ``Σ r x² + 2 Σ_{a≠b} s_a x_a s_b x_b + (weight − 2)(s·x)²``.
    """
    tiny = torch.finfo(kurtosis.dtype).tiny
    safe = torch.where(kurtosis.abs() > 1e-300, kurtosis,
                       torch.full_like(kurtosis, 1e-300))
    inverse = 1.0 / safe  # (n, T)
    a = inverse @ supports.T  # Σ_S 1/κ4            (n, S)
    b = (variance * inverse) @ supports.T  # Σ_S s/κ4
    e = (variance**2 * inverse) @ supports.T  # Σ_S s²/κ4
    det = weight * b**2 - a * (weight * e + 1.0)
    det = torch.where(det.abs() > tiny, det, torch.full_like(det, tiny))
    mu = -(weight * e + 1.0) / det
    t = -b / det
    x = (mu[:, :, None] - weight * t[:, :, None] * variance[:, None, :]) * inverse[:, None, :]
    x = x * supports[None]
    feasible = (x >= -1e-9).all(-1) & torch.isfinite(x).all(-1)
    x = x.clamp_min(0.0)
    x = x / x.sum(-1, keepdim=True).clamp_min(tiny)
    weighted = variance[:, None, :] * x
    value = (square_variance[:, None, :] * x**2).sum(-1) + 2 * exclusive_pair_sum(weighted, -1)
    value = value + (weight - 2.0) * weighted.sum(-1) ** 2
    # value is evaluated at the point itself, so every feasible candidate is attained
    inf = torch.full_like(value, float("inf"))
    low = torch.where(feasible, value, inf).min(-1).values
    high = torch.where(feasible, value, -inf).max(-1).values
    return low, high
