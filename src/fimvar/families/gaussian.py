"""Gaussian outputs with fixed variance: ``h = μ``, ``y ~ N(μ, σ² I)``, ``ε = (y − μ)/σ²``."""

from __future__ import annotations

import math
import numbers
import sys

import torch

from fimvar.errors import FimvarError
from fimvar.families.independent import IndependentFamily


def _fourth_power_is_normal(sigma: float) -> bool:
    """Whether ``σ⁴`` and ``1/σ⁴`` are both finite normal float64 numbers."""
    tiny = sys.float_info.min
    try:
        fourth = sigma**4
    except OverflowError:
        return False
    return math.isfinite(fourth) and fourth >= tiny and 1.0 / fourth >= tiny


def _sigma_limit(start: float, toward: float) -> float:
    while not _fourth_power_is_normal(start):
        start = math.nextafter(start, toward)
    return start


#: the range of σ for which σ⁴ and 1/σ⁴ (the scale of v1 and of its bounds) are finite normal
#: float64 numbers, about 1.2e-77 … 8.2e76
SIGMA_MIN = _sigma_limit(sys.float_info.min ** 0.25, 1.0)
SIGMA_MAX = _sigma_limit((1.0 / sys.float_info.min) ** 0.25, 1.0)


def check_sigma(sigma: float) -> float:
    """``sigma`` as a float, or a :class:`FimvarError` unless ``SIGMA_MIN ≤ σ ≤ SIGMA_MAX``,
    so that ``σ⁴`` and ``1/σ⁴`` are finite normal float64 numbers."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(float(sigma)) \
            or float(sigma) <= 0:
        raise FimvarError(f"the Gaussian family needs a positive finite sigma, got {sigma!r}")
    value = float(sigma)
    if not SIGMA_MIN <= value <= SIGMA_MAX:
        raise FimvarError(
            f"the Gaussian family needs {SIGMA_MIN:.3g} ≤ sigma ≤ {SIGMA_MAX:.3g}, so that σ⁴ and 1/σ⁴ "
            f"are normal float64 numbers, got sigma={sigma!r}; rescale the outputs and sigma together"
        )
    return value


class Gaussian(IndependentFamily):
    """Regression with mean output and fixed noise level ``sigma`` (default 1).

    ``I(h) = I/σ²``, ``Var(ε_c²) = 2/σ⁴``, no third moment, so ``v2``'s covariance with ``v1``
    vanishes and the tensor eigenvalues are closed-form: ``λ̃(M) = 2/σ⁴``, ``λ̃(K) = 3/σ⁴``
    ([B] Prop 5.1 for σ = 1).
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0, width: int | None = None) -> None:
        super().__init__(width)
        self.sigma = check_sigma(sigma)

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
