"""``Linear``: ``z = W a + b``.

On inputs ``(n, in)`` every per-parameter derivative factorises ([A] eq. 19, docs/theory.md §6):
``u_{j,m} = G[:, j] a_m`` and ``w_{j,m} = Hdiag[:, j] a_m²`` with ``G = ∂h/∂z`` and
``Hdiag[a, j] = ∂²h^a/∂z_j²``, so the weight is emitted in the factored layout of
:class:`~fimvar.engine.base.ParameterDerivatives` (``first = G``, ``second = Hdiag``,
``inputs = a``) and the bias in the plain layout (``first = G``, ``second = Hdiag``). The
tangent of its directions is the identity of ``z`` (:class:`Diagonal`).

On inputs ``(n, *positions, in)`` the weight is shared over positions: the tangent is
channel-sparse along the last axis and the derivatives are emitted in the plain layout.
"""

from __future__ import annotations

import torch
from torch import nn

from fimvar.engine.base import ParameterDerivatives
from fimvar.engine.structured.rules.base import Rule, as_block, register, weight_and_bias_blocks
from fimvar.engine.structured.tangents import (
    ChannelSparse,
    Dense,
    Diagonal,
    ScaledShared,
    Tangent,
)


@register(nn.Linear)
class Linear(Rule):
    def forward(self, x: torch.Tensor):
        return self.module(x), x

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return g @ self.module.weight

    def push(self, cache, tangent: Tangent) -> Tangent:
        weight = self.module.weight
        if isinstance(tangent, Diagonal):
            return ScaledShared(weight, None, tangent.v, tangent.rows)
        if isinstance(tangent, ScaledShared):
            return tangent.transposed_product(weight)
        if isinstance(tangent, ChannelSparse) and len(tangent.shape) == 1:
            # out[n, (c, p), k] = Σ_s W[k, (c, s)] t[n, c, p, s]: one GEMM per channel
            blocks = tangent.view(weight, 1)  # (K, C, S)
            out = torch.einsum("kcs,ncps->ncpk", blocks, tangent.expanded())
            n = out.shape[0]
            return Dense(out.reshape(n, -1, weight.shape[0]), tangent.dirs)
        return tangent.dense().map(lambda v: v @ weight.T)

    def tangent(self, cache) -> Tangent:
        a = cache
        if a.dim() == 2:
            return Diagonal(None, self.module.out_features, a.shape[0], reference=a)
        # shared over positions: direction (j, m) is a[..., m] in output channel j
        n, width = a.shape[0], self.module.in_features
        columns = [a.reshape(n, -1, width)]
        if self.module.bias is not None:
            columns.append(a.new_ones(n, columns[0].shape[1], 1))
        values = torch.cat(columns, dim=2).transpose(1, 2)[:, None]  # (n, 1, P, S)
        shape = (*a.shape[1:-1], self.module.out_features)
        return ChannelSparse(values, self.module.out_features, shape, channel_last=True)

    def emit(self, cache, first, second, selected) -> list[ParameterDerivatives]:
        a = cache
        weight = self.module.weight
        blocks = []
        if a.dim() == 2:
            u = as_block(first)
            w = as_block(second, u)
            shared: dict = {}  # weight and bias have the same per-unit statistics
            if "weight" in selected:
                blocks.append(ParameterDerivatives(selected["weight"], weight.shape, u, w, a,
                                                   shared=shared))
            if "bias" in selected:
                blocks.append(ParameterDerivatives(selected["bias"], self.module.bias.shape, u, w,
                                                   shared=shared))
            return blocks
        return weight_and_bias_blocks(first, second, selected, self.module, self.module.in_features)
