"""Closed-form family contractions against the generic moment-tensor forms, exact moments of the
samplers, and the numerics of confident outputs."""

from __future__ import annotations

import mpmath
import pytest
import torch
from cases import FAMILIES

from fimvar.estimators.labels import uniforms
from fimvar.families import ExponentialFamily, get_family


@pytest.mark.parametrize("name", FAMILIES)
def test_closed_forms_equal_generic_moment_tensor_forms(name):
    family = get_family(name)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, generator=g, dtype=torch.float64)
    u = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    generic = ExponentialFamily
    torch.testing.assert_close(family.quadratic(h, u), generic.quadratic(family, h, u), rtol=1e-12, atol=0)
    torch.testing.assert_close(family.fourth_variance(h, u), generic.fourth_variance(family, h, u),
                               rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(family.third_moment(h, u, w), generic.third_moment(family, h, u, w),
                               rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(family.pair_fourth_variance(h, u, w),
                               generic.pair_fourth_variance(family, h, u, w), rtol=1e-10, atol=1e-14)
    # the fused contractions the estimators use, against the same generic forms
    fused = family.contractions(h, u, w)
    expected = (generic.quadratic(family, h, u), generic.fourth_variance(family, h, u),
                generic.quadratic(family, h, w), generic.third_moment(family, h, u, w))
    for value, reference in zip(fused, expected, strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", FAMILIES)
def test_fisher_factor_is_a_square_root(name):
    """``S Sᵀ = I(h)`` (docs/theory.md §14.2) for the closed form and the generic eigendecomposition,
    finite for outputs confident to the edge of float64 (a softmax at ±40 logits)."""
    family = get_family(name)
    h = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h[0] = torch.tensor([40.0, -40.0, 0.0], dtype=torch.float64)
    if name == "poisson":
        h = h.clamp(-20, 5)
    fisher = family.fisher(h)
    for root in (family.fisher_factor(h), ExponentialFamily.fisher_factor(family, h)):
        assert torch.isfinite(root).all()
        torch.testing.assert_close(root @ root.transpose(1, 2), fisher, rtol=1e-10,
                                   atol=1e-14 * float(fisher.abs().max()))


@pytest.mark.parametrize("name", FAMILIES)
def test_sampler_moments(name):
    """Sampled ε has mean 0 and covariance I(h), within 5 standard errors."""
    family = get_family(name)
    h = torch.tensor([[0.3, -0.5, 0.1]], dtype=torch.float64)
    draws = 40_000
    noise = uniforms(1, torch.arange(1), draws, family.uniform_width(3))
    eps = family.centered(h, family.sample(h, noise))[0]
    fisher = family.fisher(h)[0]
    standard_error = (torch.diagonal(fisher) / draws).sqrt()
    assert ((eps.mean(0)).abs() <= 5 * standard_error).all()
    covariance = eps.T @ eps / draws
    fourth = family.fourth_moment(h)[0]
    second_moment_se = ((torch.einsum("aabb->ab", fourth) - fisher**2).clamp_min(0) / draws).sqrt()
    assert ((covariance - fisher).abs() <= 5 * second_moment_se + 1e-12).all()


@pytest.mark.parametrize("logits,u,cancels", [
    ([30.0, 0.0, -2.0], [1.0, -0.5, 2.0], False),  # confident softmax
    ([1e-5, 0.0], [1.0, -1.0], True),  # (u·ε)² nearly deterministic: E(u·ε)⁴ ≈ q²
])
def test_softmax_fourth_variance_is_accurate(logits, u, cancels):
    """v1 = Σ p (ũ² − q)² keeps full relative accuracy, also where E(u·ε)⁴ − q² cancels."""
    family = get_family("categorical")
    mpmath.mp.dps = 60
    p = [mpmath.e ** mpmath.mpf(z) for z in logits]
    total = sum(p)
    p = [v / total for v in p]
    mean_u = sum(pi * ui for pi, ui in zip(p, u, strict=True))
    q = sum(pi * (ui - mean_u) ** 2 for pi, ui in zip(p, u, strict=True))
    exact = sum(pi * ((ui - mean_u) ** 2 - q) ** 2 for pi, ui in zip(p, u, strict=True))
    h = torch.tensor([logits], dtype=torch.float64)
    direction = torch.tensor(u, dtype=torch.float64)[None, :, None]
    ours = float(family.fourth_variance(h, direction)[0, 0])
    assert abs(ours - float(exact)) <= 1e-10 * float(exact)
    if cancels:  # the generic E(u·ε)⁴ − q² loses most digits here
        naive = float(ExponentialFamily.fourth_variance(family, h, direction)[0, 0])
        assert abs(naive - float(exact)) > 1e-6 * float(exact)
    fisher = family.fisher(h)[0]
    assert abs(float(fisher[1, 1]) - float(p[1] * (1 - p[1]))) <= 1e-12 * float(p[1] * (1 - p[1]))


def test_confident_bernoulli_variance():
    family = get_family("bernoulli")
    h = torch.tensor([[40.0]], dtype=torch.float64)
    s, third, r = family.component_moments(h)
    mpmath.mp.dps = 60
    p = 1 / (1 + mpmath.e ** mpmath.mpf(-40))
    assert abs(float(s[0, 0]) - float(p * (1 - p))) <= 1e-12 * float(p * (1 - p))
    assert abs(float(r[0, 0]) - float(p * (1 - p) * (1 - 2 * p) ** 2)) <= 1e-12 * float(p * (1 - p))


def test_family_objects_and_names():
    assert get_family("gaussian").sigma == 1.0
    family = get_family("bernoulli")
    assert get_family(family) is family
    with pytest.raises(ValueError, match="positive"):
        get_family(fimvar_gaussian(-1.0))


def fimvar_gaussian(sigma):
    from fimvar import Gaussian

    return Gaussian(sigma=sigma)
