"""Categorical (softmax) outputs: ``h`` are logits, ``t(y) = e_y``, ``ε = e_y − p``."""

from __future__ import annotations

import functools

import torch

from fimvar.errors import FimvarError
from fimvar.families.base import (
    ExponentialFamily,
    exclusive_pair_sum,
    exclusive_sum,
)


class Categorical(ExponentialFamily):
    """Softmax classification over ``T ≥ 2`` classes (docs/theory.md §4, first row).

    All contractions use the centered directions ``ũ_c = u_c − Σ_d p_d u_d`` so that
    ``Var[(u·ε)²] = Σ_c p_c (ũ_c² − uᵀIu)²`` is computed without cancellation.
    """

    name = "categorical"
    min_width = 2

    def _width_hint(self) -> str:
        return "a categorical model needs one logit per class (use 'bernoulli' for one sigmoid output)"

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 1 or labels.shape[0] != h.shape[0]:
            raise FimvarError(
                f"categorical labels must be class indices of shape ({h.shape[0]},), got "
                f"shape {tuple(labels.shape)}"
            )
        if labels.is_floating_point():
            if not torch.isfinite(labels).all() or (labels != labels.round()).any():
                raise FimvarError("categorical labels must be integer class indices")
        labels = labels.to(torch.int64)
        classes = h.shape[1]
        if (labels < 0).any() or (labels >= classes).any():
            raise FimvarError(
                f"categorical labels must lie in 0..{classes - 1} (the model has {classes} "
                f"logits), got values from {int(labels.min())} to {int(labels.max())}"
            )
        return labels

    def probabilities(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(h, dim=-1)

    def uniform_width(self, width: int) -> int:
        return 1

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        cdf = torch.cumsum(self.probabilities(h), dim=-1)
        cdf = cdf / cdf[:, -1:]
        labels = torch.searchsorted(cdf[:, None, :].expand(-1, uniforms.shape[1], -1).contiguous(),
                                    uniforms[..., :1].contiguous())[..., 0]
        return labels.clamp_max(h.shape[1] - 1)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, width).to(torch.float64)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.probabilities(h)

    def fisher(self, h: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(h)
        # the diagonal p_c (1 − p_c) is formed as p_c Σ_{d≠c} p_d: accurate for confident outputs
        return (-p[:, :, None] * p[:, None, :]).diagonal_scatter(
            p * exclusive_sum(p, dim=-1), dim1=1, dim2=2)

    def fisher_factor(self, h: torch.Tensor) -> torch.Tensor:
        """``S_{ty} = √p_y (δ_ty − p_t)``: ``I = Σ_y p_y ε_y ε_yᵀ`` with ``ε_y = e_y − p``, one column
        per class (BackPACK's factor of the cross-entropy Hessian; docs/theory.md §14.2)."""
        eps, p = self.support_residuals(h)  # (n, y, t)
        return (eps * p.sqrt()[:, :, None]).transpose(1, 2)

    def third_cumulant(self, h: torch.Tensor) -> torch.Tensor:
        # E[ε_a ε_b ε_c] = Σ_y p_y ε_ya ε_yb ε_yc with ε_y = e_y − p
        p = self.probabilities(h)
        eps = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)[None] - p[:, None, :]
        return torch.einsum("ny,nya,nyb,nyc->nabc", p, eps, eps, eps)

    def fourth_moment(self, h: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(h)
        eps = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)[None] - p[:, None, :]
        return torch.einsum("ny,nya,nyb,nyc,nyd->nabcd", p, eps, eps, eps, eps)

    def support_residuals(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ε_y = e_y − p`` with probability ``p_y``: T labels."""
        p = self.probabilities(h)
        return torch.eye(h.shape[1], dtype=h.dtype, device=h.device)[None] - p[:, None, :], p

    # -- closed forms (docs/theory.md §4), each written once: with ``p`` of shape (n, 1, T) and
    # the centred directions ũ = u − Σ p u, q = Σ p ũ², Var[(u·ε)²] = Σ p (ũ² − q)²,
    # E[(u·ε)²(w·ε)] = Σ p ũ² w̃; every weighted sum over the classes Σ_c p_c X_c is one batched
    # matrix product (n, 1, T)·(n, T, K), not an elementwise product and a reduction
    @staticmethod
    def _centred(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u - torch.bmm(p, u)

    @staticmethod
    def _fourth(p: torch.Tensor, centred_sq: torch.Tensor, quadratic: torch.Tensor) -> torch.Tensor:
        """``Σ p (ũ² − q)²`` from ``ũ²`` (overwritten) and ``q`` (``(n, 1, K)``), ``(n, K)``."""
        return torch.bmm(p, centred_sq.sub_(quadratic).square_())[:, 0]

    def _weights(self, h: torch.Tensor, *directions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``p`` as ``(n, 1, T)`` and the directions, all in their common (promoted) dtype."""
        p = self.probabilities(h)[:, None, :]
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in directions], p.dtype)
        return tuple(t.to(dtype) for t in (p, *directions))

    def quadratic(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p, u = self._weights(h, u)
        return torch.bmm(p, self._centred(p, u).square_())[:, 0]

    def fourth_variance(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.first_order(h, u)[1]

    def unit_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Along ``e_c`` (``ũ = e_c − p``): ``I_cc = p_c(1 − p_c)`` and ``Var[ε_c²] = p_c (1 − p_c)²
        (1 − 2p_c)² + (1 − p_c) p_c² (1 − 2p_c)² = p_c(1 − p_c)(1 − 2p_c)²`` (the closed form above
        at ``u = e_c``), in O(T), ``1 − p_c`` as ``Σ_{d≠c} p_d`` (accurate for confident outputs)."""
        p = self.probabilities(h)
        rest = exclusive_sum(p, dim=-1)
        quadratic = p * rest
        return quadratic, quadratic * (rest - p) ** 2

    def third_moment(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        p, u, w = self._weights(h, u, w)
        return torch.bmm(p, self._centred(p, u).square_().mul_(self._centred(p, w)))[:, 0]

    def contractions(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor):
        p, u, w = self._weights(h, u, w)
        centred_sq, centred_w = self._centred(p, u).square_(), self._centred(p, w)
        quadratic = torch.bmm(p, centred_sq)
        third = torch.bmm(p, centred_sq * centred_w)[:, 0]
        quadratic_w = torch.bmm(p, centred_w.square_())[:, 0]
        return quadratic[:, 0], self._fourth(p, centred_sq, quadratic), quadratic_w, third

    def first_order(self, h: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, u = self._weights(h, u)
        centred_sq = self._centred(p, u).square_()
        quadratic = torch.bmm(p, centred_sq)
        return quadratic[:, 0], self._fourth(p, centred_sq, quadratic)

    def pair_fourth_variance(self, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Var[(a·ε)(b·ε)] = Σ_c p_c (ã_c b̃_c − ãᵀ diag(p) b̃)², formed entry by entry (centered)
        p, a, b = self._weights(h, a, b)
        products = self._centred(p, a)[:, :, :, None] * self._centred(p, b)[:, :, None, :]  # (n, T, P, Q)
        cross = torch.einsum("nc,ncij->nij", p[:, 0], products)
        return torch.einsum("nc,ncij->nij", p[:, 0], (products - cross[:, None]) ** 2)

    # -- spectra: λ_min(I) = λ̃_min(M) = λ̃_min(K) = 0 along u = 1 (ε sums to zero)
    def fisher_eigenvalues(self, h: torch.Tensor) -> torch.Tensor:
        eigenvalues = super().fisher_eigenvalues(h)
        eigenvalues[:, 0] = 0.0  # exact: I·1 = 0; eigvalsh returns it up to rounding
        return eigenvalues

    def fisher_eigenvalue_range(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(0, λ_max)``: ``I = diag(p) − ppᵀ`` is a rank-one downdate of ``diag(p)``, so λ_max is
        the root in ``[p_(2), p_(1)]`` of the decreasing ``1 − Σ_c p_c²/(p_c − λ)``; bisection keeps
        an upper end of that bracket (O(T) per step instead of an O(T³) eigendecomposition)."""
        p = self.probabilities(h)
        top = p.topk(min(2, p.shape[1]), dim=-1).values
        low, high = top[:, -1].clone(), top[:, 0].clone()
        for _ in range(80):
            middle = 0.5 * (low + high)
            value = 1.0 - (p**2 / (p - middle[:, None])).sum(-1)
            below = value > 0  # the root lies above middle
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        return torch.zeros_like(high), high

    def known_tensor_extrema(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        zero = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        return {"m_min": zero, "k_min": zero}

    def statistic_norm_bound(self, h: torch.Tensor) -> torch.Tensor:
        # ‖e_y − p‖² = 1 − 2 p_y + ‖p‖², largest at the least likely class
        p = self.probabilities(h)
        return 1.0 - 2.0 * p.min(dim=-1).values + (p**2).sum(-1)

    def categorical_margin(self, h: torch.Tensor) -> torch.Tensor:
        """``m(x) = min(max_c p_c, 1 − ‖p‖²)`` of [B] Thm 5.2."""
        p = self.probabilities(h)
        return torch.minimum(p.max(dim=-1).values, exclusive_pair_sum(p, dim=-1))
