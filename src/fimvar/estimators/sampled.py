"""Per-input statistics of the sampled analysis that carry the standard errors of its variance
estimates (docs/theory.md §17.2), and those standard errors.

For one parameter tensor, ``w_x = Σ_entries Σ_m (a_xm − ā_x)² / (M − 1)`` is an input's unbiased
estimate of its label noise summed over the tensor's entries, and for two inputs ``x, y`` of a
consecutive pair, ``D = ½ Σ_entries (ā_x − ā_y)²`` is unbiased for the tensor's summed between
variance ``Σ_entries Var(ā)``. Their means over inputs (pairs) are the estimates; the spread of
``w`` (of the pairs' ``D``) gives their standard errors.
"""

from __future__ import annotations

import math

import torch

from fimvar.engine.base import ParameterDerivatives
from fimvar.estimators.tiling import tiles


def entry_totals(block: ParameterDerivatives, per_unit: torch.Tensor, degree: int) -> torch.Tensor:
    """``(n,)``: per input, the sum over the tensor's entries of a statistic of homogeneous degree
    ``degree`` in the layer input (``Σ_j s_xj · Σ_m a_xm^degree`` for a factored weight)."""
    power = block.input_power(degree)
    totals = per_unit.sum(1)
    return totals if power is None else totals * power.sum(1)


def pair_half_distances(block: ParameterDerivatives, per_input: torch.Tensor) -> torch.Tensor:
    """``(n // 2,)``: ``½ Σ_entries (ā_x − ā_y)²`` for the inputs ``(0, 1), (2, 3), …`` of the chunk,
    from the per-input means ``per_input`` ``(n, J)`` (a factored weight's entry ``(j, m)`` is
    ``per_input[x, j] · a_xm²``), computed entry by entry — a tile at a time — so that no
    difference of large sums cancels."""
    pairs = per_input.shape[0] // 2
    first, second = per_input[0 : 2 * pairs : 2], per_input[1 : 2 * pairs : 2]
    power = block.input_power(2)
    if power is None:
        return 0.5 * ((first - second) ** 2).sum(1)
    first_power, second_power = power[0 : 2 * pairs : 2], power[1 : 2 * pairs : 2]
    out = torch.zeros(pairs, dtype=torch.float64, device=per_input.device)
    for rows, cols in tiles(pairs, first.shape[1], first_power.shape[1]):
        difference = (first[rows, :, None] * first_power[rows, None, cols]
                      - second[rows, :, None] * second_power[rows, None, cols])
        out[rows] += 0.5 * (difference**2).sum((1, 2))
    return out


def mean_standard_error(count: int | float, total: torch.Tensor, outer: torch.Tensor,
                        weights: torch.Tensor) -> float | None:
    """Standard error of the mean of ``weights · z`` over ``count`` independent units, from the sums
    ``Σ z`` and ``Σ z zᵀ``: ``√((Σ g² − (Σ g)²/n) / ((n − 1) n))`` with ``g = weights · z``
    (``None`` below 2 units). The quadratic forms are float64; the sample variance ``gᵀ(Σzzᵀ)g − (Σg)²/n``
    loses ``≈ ε (1 + ḡ²/s²_g)`` of its relative accuracy, negligible for an error bar."""
    n = float(count)
    if n < 2:
        return None
    g_total = float(weights @ total)
    g_square = float(weights @ outer @ weights)
    variance = max(g_square - g_total**2 / n, 0.0) / (n - 1)
    return math.sqrt(variance / n)
