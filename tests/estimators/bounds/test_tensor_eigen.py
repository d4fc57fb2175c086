"""Tensor eigenvalues λ̃(M), λ̃(K) (docs/theory.md §5.5) against dense searches of the sphere."""

from __future__ import annotations

import math

import pytest
import torch

from fimvar.estimators.bounds.spectrum import Spectrum
from fimvar.families import get_family


@pytest.mark.parametrize("width", [2, 3])
def test_categorical_tensor_eigenvalues_against_a_dense_sphere_grid(width):
    family = get_family("categorical")
    h = torch.randn(6, width, generator=torch.Generator().manual_seed(width), dtype=torch.float64) * 2
    spectrum = Spectrum.of(family, h)
    if width == 2:
        angle = torch.linspace(0, 2 * math.pi, 200_001, dtype=torch.float64)
        grid = torch.stack([angle.cos(), angle.sin()])
    else:  # Fibonacci sphere
        k = torch.arange(400_000, dtype=torch.float64) + 0.5
        phi = torch.arccos(1 - 2 * k / len(k))
        theta = math.pi * (1 + 5**0.5) * k
        grid = torch.stack([phi.sin() * theta.cos(), phi.sin() * theta.sin(), phi.cos()])
    directions = grid[None].expand(h.shape[0], -1, -1)
    m_values = family.fourth_variance(h, directions)
    k_values = m_values + family.quadratic(h, directions) ** 2
    for found, grid_values in ((spectrum.m_max, m_values), (spectrum.k_max, k_values)):
        best = grid_values.max(dim=1).values
        assert (found >= best * (1 - 1e-12)).all()  # never below any direction
        assert (found <= best * (1 + 1e-3)).all()  # and the grid gets close to it
    assert (m_values.min(dim=1).values >= spectrum.m_min - 1e-15).all()


@pytest.mark.parametrize("family_name", ["bernoulli", "poisson"])
def test_independent_tensor_eigenvalues_are_global(family_name):
    """Support enumeration (exact) is never beaten by 200k random directions."""
    family = get_family(family_name)
    h = torch.randn(20, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spectrum = Spectrum.of(family, h)
    d = torch.randn(20, 4, 200_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    m_values = family.fourth_variance(h, d)
    k_values = m_values + family.quadratic(h, d) ** 2
    assert (spectrum.m_max >= m_values.max(1).values * (1 - 1e-12)).all()
    assert (spectrum.m_min <= m_values.min(1).values * (1 + 1e-12)).all()
    assert (spectrum.k_max >= k_values.max(1).values * (1 - 1e-12)).all()
    assert (spectrum.k_min <= k_values.min(1).values * (1 + 1e-12)).all()
