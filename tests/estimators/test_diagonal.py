"""The per-input contractions of a first-order analysis in float32 (docs/theory.md §13.3): for
float32 derivatives, ``unit_statistics`` forms ``uᵀIu``, ``Var[(u·ε)²]``, the draws' and the data
label's squares in float32 and returns them in float64; each lies within the rounding bound
derived there of the float64 values of the same derivatives, computed independently here by
enumerating the categorical support (``ε ∈ {e_y − p}``) or by the independent components'
closed forms in float64. Float64 derivatives are contracted in float64 (to its rounding)."""

from __future__ import annotations

import pytest
import torch

from fimvar.estimators.diagonal import contraction_dtype, unit_statistics
from fimvar.families import get_family

F32 = 2.0**-24


def derivatives(n: int, width: int, columns: int, offset: float, seed: int) -> torch.Tensor:
    """Float32 ``u`` of shape ``(n, T, K)``: a common part of size ``offset`` along the outputs
    plus unit variation — the centring ``u − Σ p u`` then cancels ``offset`` (κ ≈ offset)."""
    generator = torch.Generator().manual_seed(seed)
    common = offset * torch.randn(n, 1, columns, generator=generator, dtype=torch.float64)
    return (common + torch.randn(n, width, columns, generator=generator, dtype=torch.float64)).float()


def categorical_reference(h: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, residual: torch.Tensor):
    """Float64 by enumeration: ``I = Σ_y p_y (u·ε_y)²``, ``v1 = Σ_y p_y ((u·ε_y)² − I)²``; the draws'
    and the data label's ``(u·ε)²``."""
    p = torch.softmax(h, -1)
    u = u.double()
    support = torch.eye(h.shape[1], dtype=torch.float64)[None] - p[:, None, :]  # ε_y, (n, y, T)
    scores = torch.einsum("nyt,ntk->nyk", support, u) ** 2
    fisher = torch.einsum("ny,nyk->nk", p, scores)
    v1 = torch.einsum("ny,nyk->nk", p, (scores - fisher[:, None]) ** 2)
    draws = torch.einsum("nmt,ntk->nmk", eps, u) ** 2
    data = torch.einsum("nt,ntk->nk", residual, u) ** 2
    return fisher, v1, draws, data


def categorical_bounds(h: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, residual: torch.Tensor):
    """The bounds of docs/theory.md §13.3 on the float32 contraction's errors, evaluated in float64:
    ``|δI| ≤ (γ_T + 5u) I + δū²``, ``|δv1|`` by the running analysis of ``Σ p (c² − I)²`` and
    ``|δ(u·ε)²| ≤ 2|u·ε| γ_T Σ|u_t||ε_t| + u (u·ε)²`` (u = 2⁻²⁴, γ_T = (T+1)u)."""
    width = h.shape[1]
    gamma = (width + 1) * F32
    p = torch.softmax(h, -1)[:, :, None]
    u = u.double()
    centred = u - (p * u).sum(1, keepdim=True)
    fisher = (p * centred**2).sum(1)
    mean_error = gamma * (p * u.abs()).sum(1) + F32 * (p * u).sum(1).abs()  # |δū| (n, K)
    fisher_bound = (gamma + 5 * F32) * fisher + mean_error**2
    square_error = 2 * centred.abs() * (mean_error[:, None] + F32 * centred.abs()) + 2 * F32 * centred**2
    deviation = centred**2 - fisher[:, None]
    deviation_error = square_error + fisher_bound[:, None] + F32 * deviation.abs()
    v1 = (p * deviation**2).sum(1)
    v1_bound = (p * 2 * deviation.abs() * deviation_error).sum(1) + (gamma + 3 * F32) * v1 \
        + (p * deviation_error**2).sum(1)

    def square_bound(vectors):
        dot = torch.einsum("n...t,ntk->n...k", vectors, u)
        spread = torch.einsum("n...t,ntk->n...k", vectors.abs(), u.abs())
        error = (gamma + F32) * spread
        return 2 * dot.abs() * error + error**2 + 2 * F32 * dot**2

    return fisher_bound, v1_bound, square_bound(eps), square_bound(residual)


@pytest.mark.parametrize("width", [10, 100])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_float32_categorical_contractions_within_their_rounding_bound(width, offset):
    family = get_family("categorical")
    n, columns, samples = 64, 40, 3
    generator = torch.Generator().manual_seed(width)
    h = (3 * torch.randn(n, width, generator=generator, dtype=torch.float64)).float().double()
    u = derivatives(n, width, columns, offset, seed=width + 1)
    labels = torch.multinomial(torch.softmax(h, -1), samples, replacement=True, generator=generator)
    support = torch.eye(width, dtype=torch.float64)
    eps = support[labels] - torch.softmax(h, -1)[:, None, :]
    residual = support[labels[:, 0]] - torch.softmax(h, -1)
    assert contraction_dtype(u.dtype) == torch.float32
    stats = unit_statistics(family, h, u, None, eps, residual, samples)
    assert all(values.dtype == torch.float64 for values in stats.values())
    fisher, v1, draws, data = categorical_reference(h, u, eps, residual)
    fisher_bound, v1_bound, draw_bound, data_bound = categorical_bounds(h, u, eps, residual)
    checks = {"fisher": (stats["fisher"], fisher, fisher_bound), "v1": (stats["v1"], v1, v1_bound),
              # Î1's draws as Σ_m ((u·ε_m)² − I) + M·I, the deviations rounded in float32
              "i1": (stats["i1"], draws.sum(1),
                     draw_bound.sum(1) + (samples + 1) * F32 * (draws + fisher[:, None]).sum(1)),
              "empirical": (stats["empirical"], data, data_bound)}
    worst = {}
    for name, (found, exact, bound) in checks.items():
        error = (found - exact).abs()
        assert (error <= 1.01 * bound + 1e-300).all(), (name, float((error / bound).max()))
        worst[name] = float((error / bound).max())
    # the bound is not vacuous: relative to the value, a few γ_T without cancellation
    relative = float((fisher_bound / fisher).max())
    assert relative < (20 * (width + 1) * F32 if offset == 0 else 1e-2), relative
    assert max(worst.values()) > 1e-3  # and not loose by many orders of magnitude


@pytest.mark.parametrize("family_name", ["bernoulli", "poisson", "gaussian"])
def test_float32_independent_contractions_within_their_rounding_bound(family_name):
    """Independent outputs: every term of ``Σ s u²`` and ``Σ r u⁴ + 2 Σ_{a≠b} s_a u_a² s_b u_b²``
    is ≥ 0, so the float32 forms err by at most a few ``(T+1)·2⁻²⁴`` relative (the moments from
    the float32 ``h`` in float32: a few u each)."""
    family = get_family(family_name)
    n, width, columns = 32, 12, 30
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(n, width, generator=generator, dtype=torch.float64).float().double()
    u = derivatives(n, width, columns, 0.0, seed=4)
    eps = torch.zeros(n, 1, width, dtype=torch.float64)
    stats = unit_statistics(family, h, u, None, eps, None, 1)
    s, _, r = (m.double()[:, :, None] for m in family.component_moments(h))
    u64 = u.double()
    fisher = (s * u64**2).sum(1)
    weighted = s * u64**2
    pairs = weighted.sum(1) ** 2 - (weighted**2).sum(1)  # Σ_{a≠b} x_a x_b (float64: ample here)
    v1 = (r * u64**4).sum(1) + 2 * pairs
    relative = 8 * (width + 8) * F32
    assert ((stats["fisher"] - fisher).abs() <= relative * fisher).all()
    assert ((stats["v1"] - v1).abs() <= 2 * relative * v1).all()


def test_float64_derivatives_are_contracted_in_float64():
    family = get_family("categorical")
    h = torch.randn(8, 5, dtype=torch.float64)
    u = torch.randn(8, 5, 7, dtype=torch.float64)
    assert contraction_dtype(u.dtype) == torch.float64
    stats = unit_statistics(family, h, u, None, torch.zeros(8, 1, 5, dtype=torch.float64), None, 1)
    fisher, v1, _, _ = categorical_reference(h, u, torch.zeros(8, 1, 5, dtype=torch.float64),
                                             torch.zeros(8, 5, dtype=torch.float64))
    assert torch.allclose(stats["fisher"], fisher, rtol=1e-13, atol=0)
    assert torch.allclose(stats["v1"], v1, rtol=1e-12, atol=0)
