"""Elementwise activations ``y = φ(z)``: ``G ↦ G ⊙ φ'(z)`` backwards, tangents scaled by
``φ'(z)`` forwards, and ``r^a = φ''(z) ⊙ G^a`` feeds the output-Hessian diagonal
(docs/theory.md §6: ``H^a_l = … + diag(φ''(z_l) ⊙ (W_{l+1}ᵀ G_{l+1}[a, :]ᵀ))``).

Closed forms of ``φ'`` and ``φ''`` follow torch's own backward formulas (thresholds and branches
included); activations without one get both derivatives by double backward, which is exact for
any elementwise function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fimvar.engine.structured.rules.base import Rule, register
from fimvar.engine.structured.tangents import Tangent


class Activation(Rule):
    """An elementwise activation; the cache is ``(φ', φ'')`` at the input."""

    curvature = True

    def forward(self, x: torch.Tensor):
        inplace = getattr(self.module, "inplace", False)
        y = self.module(x.clone() if inplace else x)
        return y, self.closed_form(x, y)

    def closed_form(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(φ'(z), φ''(z))`` given the input ``z`` and the output ``y = φ(z)``."""
        return _double_backward(self.module, z)

    def derivatives(self, cache):
        return cache

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return g * cache[0][:, None]

    def push(self, cache, tangent: Tangent) -> Tangent:
        return tangent.scale(cache[0])


def _double_backward(module: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        leaf = z.detach().clone().requires_grad_(True)
        (first,) = torch.autograd.grad(module(leaf).sum(), leaf, create_graph=True)
        if not first.requires_grad:  # piecewise linear: the second derivative is 0
            return first.detach(), torch.zeros_like(z)
        (second,) = torch.autograd.grad(first.sum(), leaf)
    return first.detach(), second


@register(nn.Tanh)
class Tanh(Activation):
    def closed_form(self, z, y):
        d1 = 1 - y * y
        return d1, -2 * y * d1


@register(nn.Sigmoid)
class Sigmoid(Activation):
    def closed_form(self, z, y):
        d1 = y * (1 - y)
        return d1, d1 * (1 - 2 * y)


@register(nn.LogSigmoid)
class LogSigmoid(Activation):
    def closed_form(self, z, y):
        s = torch.sigmoid(z)
        return torch.sigmoid(-z), -s * (1 - s)


@register(nn.Softplus)
class Softplus(Activation):
    def closed_form(self, z, y):
        beta, threshold = self.module.beta, self.module.threshold
        s = torch.sigmoid(z * beta)
        linear = z * beta > threshold  # torch returns z itself there
        d1 = torch.where(linear, torch.ones_like(s), s)
        d2 = torch.where(linear, torch.zeros_like(s), beta * s * (1 - s))
        return d1, d2


@register(nn.ELU)
class ELU(Activation):
    def closed_form(self, z, y):
        negative = self.module.alpha * torch.exp(torch.clamp_max(z, 0.0))
        positive = z > 0
        return (torch.where(positive, torch.ones_like(z), negative),
                torch.where(positive, torch.zeros_like(z), negative))


@register(nn.SiLU)
class SiLU(Activation):
    def closed_form(self, z, y):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


@register(nn.GELU)
class GELU(Activation):
    def closed_form(self, z, y):
        if self.module.approximate != "none":
            return _double_backward(self.module, z)
        density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        return cdf + z * density, density * (2 - z * z)


@register(nn.ReLU)
class ReLU(Activation):
    curvature = False

    def closed_form(self, z, y):
        d1 = (z > 0).to(z.dtype)
        return d1, torch.zeros_like(z)


@register(nn.LeakyReLU)
class LeakyReLU(Activation):
    curvature = False

    def closed_form(self, z, y):
        d1 = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.module.negative_slope))
        return d1, torch.zeros_like(z)


@register(nn.ReLU6, nn.Hardtanh)
class PiecewiseLinear(Activation):
    """Other piecewise-linear activations: ``φ''`` is 0 almost everywhere."""

    curvature = False


@register(nn.Mish, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink)
class SmoothElementwise(Activation):
    """Further smooth elementwise activations, differentiated twice by autograd."""
