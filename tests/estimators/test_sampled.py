"""The per-input statistics behind the sampled analysis's standard errors (docs/theory.md §17.1),
against sums written out entry by entry."""

from __future__ import annotations

import math

import torch

from fimvar.engine.base import ParameterDerivatives
from fimvar.estimators.sampled import entry_totals, mean_standard_error, pair_half_distances


def _factored(n=5, j=3, m=4):
    g = torch.Generator().manual_seed(0)
    first = torch.randn(n, 2, j, generator=g, dtype=torch.float64)
    inputs = torch.randn(n, m, generator=g, dtype=torch.float64)
    block = ParameterDerivatives("w", torch.Size([j, m]), first, torch.zeros_like(first), inputs=inputs)
    per_input = torch.rand(n, j, generator=g, dtype=torch.float64)
    return block, per_input


def test_factored_totals_and_pairs_equal_the_expanded_entries():
    """Entry ``(j, m)`` of a factored weight is ``per_input[x, j] · a_xm^degree``."""
    block, per_input = _factored()
    expanded = per_input[:, :, None] * block.inputs[:, None, :] ** 2  # (n, J, m)
    assert torch.allclose(entry_totals(block, per_input, 2), expanded.sum((1, 2)), rtol=1e-14)
    pairs = pair_half_distances(block, per_input)
    assert pairs.shape == (2,)  # inputs (0, 1), (2, 3); the fifth is unpaired
    for k in range(2):
        expected = 0.5 * ((expanded[2 * k] - expanded[2 * k + 1]) ** 2).sum()
        assert math.isclose(float(pairs[k]), float(expected), rel_tol=1e-13)


def test_plain_pairs():
    g = torch.Generator().manual_seed(1)
    per_input = torch.rand(4, 6, generator=g, dtype=torch.float64)
    block = ParameterDerivatives("b", torch.Size([6]), per_input[:, None], per_input[:, None])
    expected = torch.stack([0.5 * ((per_input[0] - per_input[1]) ** 2).sum(),
                            0.5 * ((per_input[2] - per_input[3]) ** 2).sum()])
    assert torch.allclose(pair_half_distances(block, per_input), expected, rtol=1e-14)
    assert torch.allclose(entry_totals(block, per_input, 1), per_input.sum(1), rtol=1e-14)


def test_mean_standard_error_is_the_textbook_one():
    """From ``Σ z`` and ``Σ z zᵀ``: the standard error of the mean of ``g·z``, as ``std(g·z)/√n``."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(50, 3, generator=g, dtype=torch.float64) + 10.0
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    expected = float((z @ weights).std() / math.sqrt(50))
    got = mean_standard_error(50, z.sum(0), z.T @ z, weights)
    assert math.isclose(got, expected, rel_tol=1e-10)
    assert mean_standard_error(1, z[0], torch.outer(z[0], z[0]), weights) is None
