"""Gaussian outputs with fixed variance: ``h = μ``, ``y ~ N(μ, σ² I)``, ``ε = (y − μ)/σ²``."""

from __future__ import annotations

import math

import torch

from fimvar.errors import FimvarError
from fimvar.families.independent import IndependentFamily


class Gaussian(IndependentFamily):
    """Regression with mean output and fixed noise level ``sigma`` (default 1).

    ``I(h) = I/σ²``, ``Var(ε_c²) = 2/σ⁴``, no third moment, so ``v2``'s covariance with ``v1``
    vanishes and the tensor eigenvalues are closed-form: ``λ̃(M) = 2/σ⁴``, ``λ̃(K) = 3/σ⁴``
    ([B] Prop 5.1 for σ = 1).
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0, width: int | None = None) -> None:
        super().__init__(width)
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise FimvarError(f"the Gaussian family needs a positive finite sigma, got {sigma!r}")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma})"

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.check_real_labels(labels, h)

    def uniform_width(self, width: int) -> int:
        return width

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return h[:, None, :] + self.sigma * torch.special.ndtri(uniforms)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        return labels.to(torch.float64) / self.sigma**2

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return h / self.sigma**2

    def component_moments(self, h: torch.Tensor):
        precision = torch.full_like(h, 1.0 / self.sigma**2)
        return precision, torch.zeros_like(h), 2.0 * precision**2

    def known_tensor_extrema(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        ones = torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
        m_value = 2.0 / self.sigma**4 * ones
        k_value = 3.0 / self.sigma**4 * ones
        return {"m_min": m_value, "m_max": m_value, "k_min": k_value, "k_max": k_value}
