"""What an engine hands to the estimators: per-sample output derivatives of every parameter.

An engine only differentiates; all the mathematics of theory.md §2–§8 lives in
:mod:`fimvar.statistics`, shared by every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ParameterDerivatives:
    """Output derivatives of one parameter tensor for a chunk of ``n`` inputs.

    ``first``/``second`` are float64 or the model's floating type (the estimators convert them
    to float64 a cache-sized tile at a time, :mod:`fimvar.statistics`); every sum is float64.

    Plain layout (``inputs is None``): column ``k`` of ``first``/``second`` belongs to entry ``k``
    of the flattened parameter: ``u_k = first[:, :, k]``, ``w_k = second[:, :, k]``.

    Factored layout (a weight ``W[j, m]`` acting on an input ``a``): the derivative of entry
    ``(j, m)`` is ``u = first[:, :, j] · a[:, m]`` and ``w = second[:, :, j] · a[:, m]²``
    (theory.md §6), so that every per-parameter sum over inputs is one matrix product.

    ``shared``: an optional dict shared by blocks whose ``first`` and ``second`` are the same
    tensors (a ``Linear`` weight and its bias); :func:`fimvar.statistics.block_sums` keeps there
    the per-input statistics that depend on ``first``/``second`` alone, computed once per chunk.
    """

    name: str
    shape: torch.Size
    first: torch.Tensor  # (n, T, J)
    second: torch.Tensor  # (n, T, J)
    inputs: torch.Tensor | None = None  # (n, m) for the factored layout
    shared: dict | None = field(default=None, repr=False, compare=False)

    def input_power(self, degree: int) -> torch.Tensor | None:
        """``a ** degree`` (cached), or ``None`` for the plain layout."""
        if self.inputs is None:
            return None
        cache = self.__dict__.setdefault("_powers", {})
        if degree not in cache:
            cache[degree] = self.inputs.to(torch.float64) ** degree
        return cache[degree]

    def reduce(self, per_unit: torch.Tensor, degree: int) -> torch.Tensor:
        """Sum over the chunk's inputs of a per-sample statistic of homogeneous degree
        ``degree`` in ``a``: ``(n, J) → shape`` (``Σ_n s_nj a_nm^degree`` when factored)."""
        power = self.input_power(degree)
        if power is None:
            return per_unit.sum(0).reshape(self.shape)
        return (per_unit.T @ power).reshape(self.shape)

    def reduce_many(self, table: torch.Tensor, count: int, degree: int) -> list[torch.Tensor]:
        """:meth:`reduce` of ``count`` statistics side by side, ``table`` of shape ``(n, count, J)``:
        one matrix product ``tableᵀ a^degree`` for all of them in the factored layout."""
        n = table.shape[0]
        power = self.input_power(degree)
        if power is None:
            summed = table.sum(0)
            return [summed[k].reshape(self.shape) for k in range(count)]
        product = table.reshape(n, -1).T @ power  # (count·J, m)
        product = product.reshape(count, -1, power.shape[1])
        return [product[k].reshape(self.shape) for k in range(count)]

    def per_sample(self, per_unit: torch.Tensor, degree: int) -> torch.Tensor:
        """Per-sample values ``(n, J) → (n, *shape)`` (materialises the factored product)."""
        power = self.input_power(degree)
        if power is None:
            return per_unit.reshape(per_unit.shape[0], *self.shape)
        return (per_unit[:, :, None] * power[:, None, :]).reshape(per_unit.shape[0], *self.shape)

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample Gram matrices ``Σ_i u_i u_iᵀ`` and ``Σ_i w_i w_iᵀ`` over this tensor's
        entries, each ``(n, T, T)`` (the ``J Jᵀ`` of [B] Thm D.1)."""
        key = "gram"
        cache = self.shared if self.shared is not None else {}
        if key not in cache:
            n, width, columns = self.first.shape
            gram_u = self.first.new_empty(n, width, width, dtype=torch.float64)
            gram_w = torch.empty_like(gram_u)
            for rows in _row_tiles(n, width * columns):
                first = self.first[rows].to(torch.float64)
                second = self.second[rows].to(torch.float64)
                gram_u[rows] = torch.bmm(first, first.transpose(1, 2))
                gram_w[rows] = torch.bmm(second, second.transpose(1, 2))
            cache[key] = gram_u, gram_w
        gram_u, gram_w = cache[key]
        if self.inputs is not None:
            gram_u = gram_u * self.input_power(2).sum(1)[:, None, None]
            gram_w = gram_w * self.input_power(4).sum(1)[:, None, None]
        return gram_u, gram_w

    def square_gram(self) -> torch.Tensor:
        """``Q = Σ_i vec(u_i u_iᵀ) vec(u_i u_iᵀ)ᵀ`` ([B] Thm D.1 for V1) in orthonormal coordinates of
        the symmetric T×T matrices, shape ``(n, S, S)`` with ``S = T(T+1)/2``.

        ``vec(u uᵀ)`` lies in that subspace; its coordinates are ``u_a²`` (a = b) and ``√2 u_a u_b``
        (a < b) in the order of :func:`symmetric_pairs`. The T²×T² matrix Q has the same
        eigenvalues plus ``T(T−1)/2`` zeros, at a fraction of the cost."""
        key = "square_gram"
        cache = self.shared if self.shared is not None else {}
        if key not in cache:
            n, width, columns = self.first.shape
            first_index, second_index, scale = symmetric_pairs(width, self.first.device)
            pairs = len(scale)
            square = self.first.new_empty(n, pairs, pairs, dtype=torch.float64)
            for rows in _row_tiles(n, pairs * columns):
                first = self.first[rows].to(torch.float64)
                coordinates = first[:, first_index] * first[:, second_index] * scale[:, None]
                square[rows] = torch.bmm(coordinates, coordinates.transpose(1, 2))
            cache[key] = square
        square = cache[key]
        if self.inputs is not None:
            square = square * self.input_power(4).sum(1)[:, None, None]
        return square


def symmetric_pairs(width: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index pairs ``a ≤ b`` of an orthonormal basis of the symmetric T×T matrices, with the
    scale of each coordinate (1 on the diagonal, √2 off it)."""
    first, second = torch.triu_indices(width, width, device=device)
    scale = torch.full(first.shape, 2.0, dtype=torch.float64, device=device).sqrt()
    scale[first == second] = 1.0
    return first, second, scale


def _row_tiles(n: int, per_row: int, elements: int = 1 << 18):
    """Slices of rows such that ``per_row`` × their count stays near ``elements``."""
    step = max(1, elements // max(per_row, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class Engine(ABC):
    """A back end that computes per-sample output derivatives of a model's parameters."""

    name: str = "engine"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        self.model = model
        self.parameter_names = parameter_names
        self.memory_budget = memory_budget

    @abstractmethod
    def derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        """Outputs ``h`` (n, T, float64) and the derivatives of every selected parameter
        (float64 or the model's floating type, see :class:`ParameterDerivatives`)."""

    @abstractmethod
    def chunk_size(self, x: torch.Tensor, width: int, draws: int) -> int:
        """How many inputs one call to :meth:`derivatives` may take within the memory budget."""
