"""What an engine hands to the estimators: per-sample output derivatives of every parameter.

An engine only differentiates; all the mathematics of docs/theory.md §2–§8 lives in
:mod:`fimvar.estimators`, shared by every engine.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ParameterDerivatives:
    """Output derivatives of one parameter tensor for a chunk of ``n`` inputs.

    ``first``/``second`` are float64 or the model's floating type (the estimators convert them
    to float64 a cache-sized tile at a time, :mod:`fimvar.estimators.diagonal`); every sum is
    float64.

    Plain layout (``inputs is None``): column ``k`` of ``first``/``second`` belongs to entry ``k``
    of the flattened parameter: ``u_k = first[:, :, k]``, ``w_k = second[:, :, k]``.

    Factored layout (a weight ``W[j, m]`` acting on an input ``a``): the derivative of entry
    ``(j, m)`` is ``u = first[:, :, j] · a[:, m]`` and ``w = second[:, :, j] · a[:, m]²``
    (docs/theory.md §9), so that every per-parameter sum over inputs is one matrix product.

    ``shared``: a dict that lives as long as the block (one chunk), shared by the blocks whose
    ``first`` and ``second`` are the same tensors (a ``Linear`` weight and its bias); the
    estimators keep there what depends on ``first``/``second`` alone (per-input statistics, Gram
    matrices), so that it is computed once per chunk.

    ``curvature`` (plain layout only): instead of ``w``, two independent Hutchinson estimates
    ``z ⊙ ∇²_θ(ε_m·h) z`` of ``w_k·ε_m`` for every label draw ``m``, ``(n, M, 2, J)``
    (docs/theory.md §14.1); ``second`` is then unused.
    """

    name: str
    shape: torch.Size
    first: torch.Tensor  # (n, T, J)
    second: torch.Tensor  # (n, T, J)
    inputs: torch.Tensor | None = None  # (n, m) for the factored layout
    shared: dict = field(default_factory=dict, repr=False, compare=False)
    curvature: torch.Tensor | None = None  # (n, M, 2, J)

    def plain(self) -> ParameterDerivatives:
        """The block in the plain layout (``u`` of every entry; a factored block expanded),
        with a cache of its own."""
        if self.inputs is None:
            return dataclasses.replace(self, shared={})
        n, width = self.first.shape[:2]

        def expanded(values: torch.Tensor, degree: int) -> torch.Tensor:
            power = self.inputs[:, None, None, :].to(values.dtype) ** degree
            return (values[:, :, :, None] * power).reshape(n, width, -1)

        first = expanded(self.first, 1)
        if all(stride == 0 for stride in self.second.stride()):  # a broadcast zero stays one
            second = torch.zeros((), dtype=first.dtype, device=first.device).expand(first.shape)
        else:
            second = expanded(self.second, 2)
        return ParameterDerivatives(self.name, self.shape, first, second, curvature=self.curvature)

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

class Engine(ABC):
    """A back end that computes per-sample output derivatives of a model's parameters."""

    name: str = "engine"
    #: whether the second-order quantities come from probes (``probe_estimates``) instead of ``w``
    estimates_second: bool = False

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        self.model = model
        self.parameter_names = parameter_names
        self.memory_budget = memory_budget

    @abstractmethod
    def derivatives(self, x: torch.Tensor, second: bool = True
                    ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        """Outputs ``h`` (n, T, float64) and the derivatives of every selected parameter
        (float64 or the model's floating type, see :class:`ParameterDerivatives`); with
        ``second=False`` only the first derivatives (``second`` is then a broadcast zero)."""

    @abstractmethod
    def chunk_size(self, x: torch.Tensor, width: int, draws: int, column_bytes: int = 0,
                   input_bytes: int = 0) -> int:
        """How many inputs one call to :meth:`derivatives` may take within the memory budget,
        with ``column_bytes`` more per input and derivative column and ``input_bytes`` more per
        input for what the caller computes from the derivatives (e.g. the bounds)."""


def default_memory_budget() -> int:
    """2 GiB, or a quarter of a CUDA device's memory when one is in use."""
    budget = 2 * 1024**3
    if torch.cuda.is_available():
        budget = max(budget, torch.cuda.get_device_properties(0).total_memory // 4)
    return int(budget)
