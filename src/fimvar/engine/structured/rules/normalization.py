"""``BatchNorm1d`` / ``BatchNorm2d`` in eval mode: per channel ``y = γ (x − μ)/√(σ² + ε) + β``
with the running statistics, an elementwise affine map of the input.

Forwards and backwards it scales by ``s = γ/√(σ² + ε)`` (no curvature). Its parameters enter
linearly and are shared over positions: the directions of ``γ_c`` and ``β_c`` are ``x̂`` and ``1``
in channel ``c`` (a :class:`ChannelSparse` tangent), emitted in the plain layout.
"""

from __future__ import annotations

import torch
from torch import nn

from fimvar.engine.base import ParameterDerivatives
from fimvar.engine.structured.rules.base import Rule, as_block, register
from fimvar.engine.structured.tangents import ChannelSparse, Tangent
from fimvar.errors import FimvarError


@register(nn.BatchNorm1d, nn.BatchNorm2d)
class BatchNorm(Rule):
    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if not module.track_running_stats or module.running_var is None:
            return (f"{type(module).__name__} without running statistics (it normalises each "
                    "batch, so the samples are not independent)")
        return None

    def _scale(self) -> torch.Tensor:
        m = self.module
        inverse = torch.rsqrt(m.running_var + m.eps)
        return inverse if m.weight is None else m.weight * inverse

    def _per_input(self, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A per-channel vector as a ``(1, *shape)`` factor."""
        view = values.reshape(1, -1, *([1] * (len(shape) - 1)))
        return view.expand(1, *shape)

    def forward(self, x: torch.Tensor):
        if self.module.training:
            raise FimvarError("the structured engine analyses BatchNorm in eval mode; call "
                              "model.eval() (fimvar.analyze does it for you)")
        return self.module(x), x

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return g * self._per_input(self._scale(), tuple(g.shape[2:]))[:, None]

    def push(self, cache, tangent: Tangent) -> Tangent:
        return tangent.scale(self._per_input(self._scale(), tangent.shape))

    def tangent(self, cache) -> ChannelSparse:
        m = self.module
        x = cache
        n, channels = x.shape[:2]
        mean = self._per_input(m.running_mean, tuple(x.shape[1:]))
        inverse = self._per_input(torch.rsqrt(m.running_var + m.eps), tuple(x.shape[1:]))
        normalised = ((x - mean) * inverse).reshape(n, channels, 1, -1)
        values = torch.cat([normalised, torch.ones_like(normalised)], dim=2)  # (n, C, 2, S)
        return ChannelSparse(values, channels, tuple(x.shape[1:]))

    def emit(self, cache, first, second, selected) -> list[ParameterDerivatives]:
        blocks = []
        for index, local in enumerate(("weight", "bias")):
            if local in selected:
                shape = getattr(self.module, local).shape
                u = as_block(first[..., index])
                w = as_block(None if second is None else second[..., index], u)
                blocks.append(ParameterDerivatives(selected[local], shape, u, w))
        return blocks
