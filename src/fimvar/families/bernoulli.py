"""Independent Bernoulli outputs: ``h`` are logits, ``p = sigmoid(h)``, ``ε = y − p``."""

from __future__ import annotations

import torch

from fimvar.errors import FimvarError
from fimvar.families.independent import IndependentFamily


class Bernoulli(IndependentFamily):
    """Multi-label (or binary, T = 1) classification with sigmoid outputs.

    Per component ``v = p(1 − p)``, ``κ3 = v(1 − 2p)``, ``Var(ε²) = v(1 − 2p)²``; ``v`` and
    ``1 − 2p = −tanh(h/2)`` are formed without cancellation for confident outputs.
    """

    name = "bernoulli"

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        labels = self.check_real_labels(labels, h)
        if ((labels != 0) & (labels != 1)).any():
            raise FimvarError("bernoulli labels must be 0 or 1")
        return labels

    def uniform_width(self, width: int) -> int:
        return width

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return (uniforms < torch.sigmoid(h)[:, None, :]).to(torch.float64)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        return labels.to(torch.float64)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)

    def component_moments(self, h: torch.Tensor):
        variance = torch.sigmoid(h) * torch.sigmoid(-h)
        skew = -torch.tanh(h / 2)
        return variance, variance * skew, variance * skew**2

    def statistic_norm_bound(self, h: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(h)
        return torch.maximum(p, 1 - p).pow(2).sum(-1)
