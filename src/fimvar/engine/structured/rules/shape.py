"""Modules that only move or keep values: ``Flatten``, ``Identity`` and ``Dropout`` (identity in
eval mode). No curvature, no parameters."""

from __future__ import annotations

import torch
from torch import nn

from fimvar.engine.structured.rules.base import Rule, register
from fimvar.engine.structured.tangents import Tangent
from fimvar.errors import FimvarError


@register(nn.Flatten)
class Flatten(Rule):
    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.start_dim == 0:
            return "Flatten(start_dim=0) (it mixes the samples of a batch)"
        return None

    def forward(self, x: torch.Tensor):
        y = self.module(x)
        return y, (tuple(x.shape[1:]), tuple(y.shape[1:]))

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(*g.shape[:2], *cache[0])

    def push(self, cache, tangent: Tangent) -> Tangent:
        return tangent.reshape(cache[1])


@register(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
class Passthrough(Rule):
    def forward(self, x: torch.Tensor):
        if self.module.training and not isinstance(self.module, nn.Identity):
            raise FimvarError("the structured engine analyses Dropout in eval mode; call "
                              "model.eval() (fimvar.analyze does it for you)")
        return x, None

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        return g

    def push(self, cache, tangent: Tangent) -> Tangent:
        return tangent
