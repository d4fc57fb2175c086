"""Every bound of [B] (and the trace/Frobenius forms) holds on 200 seeded random networks;
Gaussian bounds are equalities; the tensor eigenvalues are global optima."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import fimvar
from fimvar.families import get_family
from fimvar.statistics import Spectrum

SMOOTH = [nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.LogSigmoid]
NETWORKS = 200


def random_network(seed: int):
    generator = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=generator))

    family = ["categorical", "gaussian", "bernoulli", "poisson"][seed % 4]
    outputs = {"categorical": 2 + pick(4), "gaussian": 1 + pick(3), "bernoulli": 1 + pick(3),
               "poisson": 1 + pick(2)}[family]
    widths = [2 + pick(3) for _ in range(1 + pick(3))]
    layers, previous = [], 2 + pick(3)
    inputs = previous
    for width in widths:
        layers += [nn.Linear(previous, width), SMOOTH[pick(len(SMOOTH))]()]
        previous = width
    layers.append(nn.Linear(previous, outputs))
    torch.manual_seed(seed)
    model = nn.Sequential(*layers).double()
    scale = 0.5 if family == "poisson" else [0.5, 1.0, 3.0][pick(3)]  # 3.0: confident outputs
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.randn(2, inputs, generator=generator, dtype=torch.float64)
    return model, x, family


def test_every_bound_holds_on_random_networks():
    checked = 0
    for seed in range(NETWORKS):
        model, x, family = random_network(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fimvar.analyze(model, x, family, samples=1, seed=seed)
        for name, bound in r.bounds.items():
            assert bound.holds(rtol=1e-9), f"network {seed} ({family}): {name} fails"
            checked += 1
        for name, bound in r.group_bounds.items():
            assert bound.holds(rtol=1e-9), f"network {seed} ({family}): {name} fails"
            checked += 1
    assert checked > NETWORKS * 15


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_gaussian_bounds_are_equalities(sigma):
    """[B] Prop 5.1: with σ = 1 (and any σ) the Thm 4.1 bounds are attained."""
    model, x, _ = random_network(1)
    r = fimvar.analyze(model, x, fimvar.Gaussian(sigma=sigma), samples=1)
    for name in ("thm4.1_fisher_lower", "thm4.1_fisher_upper", "thm4.1_v1_lower", "thm4.1_v1_upper",
                 "thm4.1_v2_lower", "thm4.1_v2_upper"):
        for tight in r.bounds[name].tightness().values():
            finite = ~torch.isnan(tight)
            assert torch.allclose(tight[finite], torch.ones_like(tight[finite]), rtol=1e-12), name
    first = next(iter(r.v1))
    u4 = r.bounds["thm4.1_v1_upper"].values[first] / (2 / sigma**4)
    assert torch.allclose(r.v1[first], 2 * u4 / sigma**4, rtol=1e-12)


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


def test_theorem_5_2_and_corollary_4_2_relations():
    family = get_family("categorical")
    h = torch.randn(50, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    s = Spectrum.of(family, h)
    assert (s.lam_max <= s.margin * (1 + 1e-12)).all()
    assert (s.m_max <= 2 * s.margin * (1 + 1e-12)).all()
    assert (s.m_max <= (s.k_max - s.lam_min**2) * (1 + 1e-12)).all()
    assert (s.k_max <= s.norm_bound * s.lam_max * (1 + 1e-12)).all()
    assert (s.norm_bound * s.lam_max <= s.norm_bound**2 * (1 + 1e-12)).all()
