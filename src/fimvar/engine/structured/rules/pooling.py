"""Pooling, channel by channel.

Average pooling (``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d``) is linear: tangents go through the
module itself, ``G`` through its pullback. Max pooling is linear given the positions of the
maxima (its second derivative is 0 almost everywhere): tangents are gathered at those
positions and ``G`` is scattered back to them (summed where windows overlap). Both keep a
channel-sparse tangent channel-sparse.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fimvar.engine.structured.rules.base import Rule, linear_vjp, register
from fimvar.engine.structured.tangents import ChannelSparse, Tangent

_SPATIAL = {nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.MaxPool1d: 1,
            nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.MaxPool2d: 2}


class Pool(Rule):
    @property
    def dims(self) -> int:
        return _SPATIAL[type(self.module)]

    def _channel_sparse(self, tangent: Tangent) -> bool:
        return (isinstance(tangent, ChannelSparse) and not tangent.channel_last
                and len(tangent.shape) == self.dims + 1)


@register(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
class AvgPool(Pool):
    def forward(self, x: torch.Tensor):
        return self.module(x), tuple(x.shape[1:])

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return linear_vjp(self.module, cache, g)

    def push(self, cache, tangent: Tangent) -> Tangent:
        if self._channel_sparse(tangent):
            n, groups, count, _ = tangent.values.shape
            images = tangent.values.reshape(n, groups * count, *tangent.shape[1:])
            out = self.module(images)
            return tangent.with_values(out.reshape(n, groups, count, -1),
                                       (tangent.channels, *out.shape[2:]))
        return tangent.dense().map(self.module)


@register(nn.MaxPool1d, nn.MaxPool2d)
class MaxPool(Pool):
    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.return_indices:
            return f"{type(module).__name__} with return_indices=True"
        return None

    def forward(self, x: torch.Tensor):
        """The cache: input shape, output positions and the flat position of every maximum."""
        m = self.module
        pool = F.max_pool1d if self.dims == 1 else F.max_pool2d
        y, index = pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                        return_indices=True)
        n, channels = x.shape[:2]
        return y, (tuple(x.shape[1:]), tuple(y.shape[2:]), index.reshape(n, channels, -1))

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        shape, _, index = cache
        n, width, channels = g.shape[:3]
        positions = math.prod(shape[1:])
        out = g.new_zeros(n, width, channels, positions)
        out.scatter_add_(3, index[:, None].expand(-1, width, -1, -1), g.reshape(n, width, channels, -1))
        return out.reshape(n, width, *shape)

    def push(self, cache, tangent: Tangent) -> Tangent:
        shape, out_spatial, index = cache
        if self._channel_sparse(tangent):
            values = tangent.expanded()  # the maxima differ from channel to channel
            picked = torch.gather(values, 3, index[:, :, None].expand(-1, -1, values.shape[2], -1))
            return tangent.with_values(picked, (tangent.channels, *out_spatial))
        dense = tangent.dense()
        n, count = dense.values.shape[:2]
        flat = dense.values.reshape(n, count, shape[0], -1)
        picked = torch.gather(flat, 3, index[:, None].expand(-1, count, -1, -1))
        return dense.with_values(picked.reshape(n, count, shape[0], *out_spatial))
