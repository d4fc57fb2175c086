"""What an engine hands to the estimators: per-sample output derivatives of every parameter.

An engine only differentiates; all the mathematics of theory.md §2–§8 lives in
:mod:`fimvar.statistics`, shared by every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ParameterDerivatives:
    """Output derivatives of one parameter tensor for a chunk of ``n`` inputs (float64).

    Plain layout (``inputs is None``): column ``k`` of ``first``/``second`` belongs to entry ``k``
    of the flattened parameter: ``u_k = first[:, :, k]``, ``w_k = second[:, :, k]``.

    Factored layout (a weight ``W[j, m]`` acting on an input ``a``): the derivative of entry
    ``(j, m)`` is ``u = first[:, :, j] · a[:, m]`` and ``w = second[:, :, j] · a[:, m]²``
    (theory.md §6), so that every per-parameter sum over inputs is one matrix product.
    """

    name: str
    shape: torch.Size
    first: torch.Tensor  # (n, T, J)
    second: torch.Tensor  # (n, T, J)
    inputs: torch.Tensor | None = None  # (n, m) for the factored layout

    def input_power(self, degree: int) -> torch.Tensor | None:
        """``a ** degree`` (cached), or ``None`` for the plain layout."""
        if self.inputs is None:
            return None
        cache = self.__dict__.setdefault("_powers", {})
        if degree not in cache:
            cache[degree] = self.inputs**degree
        return cache[degree]

    def reduce(self, per_unit: torch.Tensor, degree: int) -> torch.Tensor:
        """Sum over the chunk's inputs of a per-sample statistic of homogeneous degree
        ``degree`` in ``a``: ``(n, J) → shape`` (``Σ_n s_nj a_nm^degree`` when factored)."""
        power = self.input_power(degree)
        if power is None:
            return per_unit.sum(0).reshape(self.shape)
        return (per_unit.T @ power).reshape(self.shape)

    def per_sample(self, per_unit: torch.Tensor, degree: int) -> torch.Tensor:
        """Per-sample values ``(n, J) → (n, *shape)`` (materialises the factored product)."""
        power = self.input_power(degree)
        if power is None:
            return per_unit.reshape(per_unit.shape[0], *self.shape)
        return (per_unit[:, :, None] * power[:, None, :]).reshape(per_unit.shape[0], *self.shape)

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample Gram matrices ``Σ_i u_i u_iᵀ`` and ``Σ_i w_i w_iᵀ`` over this tensor's
        entries, each ``(n, T, T)`` (the ``J Jᵀ`` of [B] Thm D.1)."""
        gram_u = torch.einsum("naj,nbj->nab", self.first, self.first)
        gram_w = torch.einsum("naj,nbj->nab", self.second, self.second)
        if self.inputs is not None:
            gram_u = gram_u * self.input_power(2).sum(1)[:, None, None]
            gram_w = gram_w * self.input_power(4).sum(1)[:, None, None]
        return gram_u, gram_w

    def square_gram(self) -> torch.Tensor:
        """``Σ_i vec(u_i u_iᵀ) vec(u_i u_iᵀ)ᵀ``, shape ``(n, T², T²)`` ([B] Thm D.1 for V1)."""
        outer = torch.einsum("naj,nbj->nabj", self.first, self.first).flatten(1, 2)
        square = torch.einsum("npj,nqj->npq", outer, outer)
        if self.inputs is not None:
            square = square * self.input_power(4).sum(1)[:, None, None]
        return square


class Engine(ABC):
    """A back end that computes per-sample output derivatives of a model's parameters."""

    name: str = "engine"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        self.model = model
        self.parameter_names = parameter_names
        self.memory_budget = memory_budget

    @abstractmethod
    def derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        """Outputs ``h`` (n, T) and the derivatives of every selected parameter, float64."""

    @abstractmethod
    def chunk_size(self, x: torch.Tensor, width: int, draws: int) -> int:
        """How many inputs one call to :meth:`derivatives` may take within the memory budget."""
