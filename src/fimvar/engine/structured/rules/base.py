"""The interface of a per-module rule, and the registry of module types the engine supports.

A rule is called explicitly by the engine (no hooks) and answers, for one module:

- ``forward(x)``: the output and what the other steps need (the cache);
- ``backward(cache, g)``: the output Jacobian ``G = ∂h/∂(output)`` (T columns) pulled back to the
  module's input, ``(n, T, *out) → (n, T, *in)``;
- ``push(cache, tangent)``: a tangent (:mod:`..tangents`) pushed forward through the module.

Elementwise activations also give ``φ'`` and ``φ''`` of their input (``curvature`` is ``False``
when ``φ''`` is 0 almost everywhere: ReLU, LeakyReLU). Modules with parameters give the
tangent of their parameter directions at their output and turn the contractions with ``G``
(``u``) and ``r`` (``w``) into :class:`~fimvar.engine.base.ParameterDerivatives`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fimvar.engine.base import ParameterDerivatives
from fimvar.engine.structured.tangents import Tangent

#: module type → rule class (exact types: a subclass may change ``forward``)
RULES: dict[type[nn.Module], type[Rule]] = {}


def register(*types: type[nn.Module]):
    """Class decorator: the rule handles modules of exactly these types."""

    def decorate(rule: type[Rule]) -> type[Rule]:
        for module_type in types:
            RULES[module_type] = rule
        return rule

    return decorate


class Rule:
    """Derivatives of one module. Subclasses override what their module needs."""

    #: the module has an elementwise second derivative that is not 0 almost everywhere
    curvature: bool = False

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module
        self.name = name

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Why this module instance cannot be handled (``None`` when it can)."""
        return None

    # ------------------------------------------------------------------ every module
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self.module(x), None

    def backward(self, cache: Any, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def push(self, cache: Any, tangent: Tangent) -> Tangent:
        raise NotImplementedError

    # ------------------------------------------------------------------ activations
    def derivatives(self, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``φ'`` and ``φ''`` at the input, each of the input's shape."""
        raise NotImplementedError

    # ------------------------------------------------------------------ parameters
    def parameter_names(self) -> list[str]:
        """Local names of the module's own parameters (``weight``, ``bias``)."""
        return [name for name, _ in self.module.named_parameters(recurse=False)]

    def tangent(self, cache: Any) -> Tangent:
        """Tangent of the parameter directions at the module's output."""
        raise NotImplementedError

    def emit(self, cache: Any, first: torch.Tensor, second: torch.Tensor | None,
             selected: dict[str, str]) -> list[ParameterDerivatives]:
        """Derivative blocks from ``first = tangent.contract(G, 1)`` and
        ``second = Σ_k tangent_k.contract(r_k, 2)`` (both ``(n, T, *tangent.dirs)``; ``None``
        when only first derivatives are asked for); ``selected`` maps the local names to
        analyse to their full names."""
        raise NotImplementedError


def as_block(t: torch.Tensor | None, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a derivative block (in the model's type: the estimators convert it to float64
    tile by tile); ``None`` (no second derivatives asked for) becomes a broadcast zero of
    ``like``'s shape, which costs no memory."""
    if t is None:
        return torch.zeros((), dtype=like.dtype, device=like.device).expand(like.shape)
    return t


def weight_and_bias_blocks(first: torch.Tensor, second: torch.Tensor | None, selected: dict,
                           module: nn.Module, per_output: int) -> list[ParameterDerivatives]:
    """Blocks of a weight and bias whose derivatives come as one plain ``(n, T, out, per_output
    + 1)`` tensor: the first ``per_output`` columns of each output unit belong to the weight,
    the last to its bias."""
    n, width = first.shape[:2]
    blocks = []
    for local, part in (("weight", slice(0, per_output)), ("bias", slice(per_output, per_output + 1))):
        if local in selected:
            u = as_block(first[..., part].reshape(n, width, -1))
            w = as_block(None if second is None else second[..., part].reshape(n, width, -1), u)
            blocks.append(ParameterDerivatives(selected[local], getattr(module, local).shape, u, w))
    return blocks


def linear_vjp(function, shape: tuple[int, ...], g: torch.Tensor) -> torch.Tensor:
    """Pull back ``g`` (n, T, *out) through a map that is linear in its input, by reverse mode
    at the input 0 (the pullback of a linear map does not depend on the point)."""
    n, width = g.shape[:2]
    zero = g.new_zeros(n * width, *shape, requires_grad=True)
    with torch.enable_grad():
        out = function(zero)
        (pulled,) = torch.autograd.grad(out, zero, g.reshape(n * width, *out.shape[1:]))
    return pulled.reshape(n, width, *shape)
