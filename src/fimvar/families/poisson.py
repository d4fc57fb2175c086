"""Poisson outputs: ``h`` is the log-rate, ``λ = exp(h)``, ``ε = y − λ``."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import poisson

from fimvar.errors import FimvarError
from fimvar.families.independent import IndependentFamily


class Poisson(IndependentFamily):
    """Count regression. Per component ``s = κ3 = λ`` and ``Var(ε²) = λ + 2λ²``."""

    name = "poisson"

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        labels = self.check_real_labels(labels, h)
        if (labels < 0).any() or (labels != labels.round()).any():
            raise FimvarError("poisson labels must be non-negative integer counts")
        return labels

    def uniform_width(self, width: int) -> int:
        return width

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        # exact inverse-CDF sampling (scipy's ppf) so that draws depend only on the uniforms
        rate = torch.exp(h)[:, None, :].expand_as(uniforms)
        counts = poisson.ppf(uniforms.detach().cpu().numpy(), rate.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(counts), dtype=torch.float64, device=h.device)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        return labels.to(torch.float64)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(h)

    def component_moments(self, h: torch.Tensor):
        rate = torch.exp(h)
        return rate, rate, rate + 2 * rate**2
