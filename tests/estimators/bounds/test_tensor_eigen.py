"""Certified tensor eigenvalues λ̃(M), λ̃(K) (docs/theory.md §5.5).

Soundness: the upper estimates are never below, and the lower estimates never above, the true
extrema, found here independently — by enumerating every support of the simplex problem (the
2^T KKT systems), and by a brute-force global search (vertices, pairs, thousands of random
points of the simplex or the sphere, the best polished) at T ∈ {2, 5, 10, 11, 15, 20} — on 1000
random inputs per family and width. Exactness: for independent outputs the estimates are the
extrema themselves. And the adversarial network of the issue: a width-1 hidden layer whose
output direction is the maximiser, on which the Thm 4.1 bound on v1 is attained.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import fimvar
from fimvar.estimators.bounds.spectrum import Spectrum
from fimvar.estimators.bounds.tensor_eigen import tensor_extrema
from fimvar.families import get_family

WIDTHS = (2, 5, 10, 11, 15, 20)
INPUTS = 1000


def outputs(family: str, width: int, seed: int) -> torch.Tensor:
    """1000 random outputs of a family: logits of three scales (×3: confident), log-rates."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(INPUTS, width, generator=generator, dtype=torch.float64)
    if family == "poisson":
        return h - 0.5
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64).repeat(INPUTS // 3 + 1)[:INPUTS, None]
    return h * scale


def simplex_form(family, h: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """``Σ κ4 x² + w (s·x)²`` at points ``x`` (n, R, T) of the simplex, from the component
    moments, written as ``Σ r x² + 4 Σ_{a<b} s_a x_a s_b x_b + (w − 2)(s·x)²`` (every term ≥ 0:
    ``κ4 + 2s² = r``), so that tiny values keep their relative accuracy; the pair sum as
    ``Σ_b s_b x_b Σ_{a<b} s_a x_a`` (cumulative sums of non-negative terms)."""
    s, _, r = family.component_moments(h)
    weighted = s[:, None] * x
    pairs = (weighted * (weighted.cumsum(-1) - weighted)).sum(-1)
    return (r[:, None] * x**2).sum(-1) + 4 * pairs + (weight - 2) * weighted.sum(-1) ** 2


def enumerate_every_support(family, h: torch.Tensor, weight: float, maximiser: bool = False):
    """Exact min and max over the simplex: the KKT point of every one of the 2^T − 1 supports
    (in blocks of supports, to bound the memory); with ``maximiser`` also the maximising point."""
    s, _, r = family.component_moments(h)
    kurtosis = r - 2 * s**2
    width = h.shape[1]
    low = torch.full((h.shape[0],), math.inf, dtype=torch.float64)
    high = torch.full((h.shape[0],), -math.inf, dtype=torch.float64)
    inverse = 1 / kurtosis
    point = torch.zeros_like(h)
    block = max(1, (1 << 24) // (h.shape[0] * width))
    for start in range(1, 1 << width, block):
        codes = torch.arange(start, min(1 << width, start + block))
        supports = ((codes[:, None] >> torch.arange(width)[None]) & 1).double()  # (S, T)
        a, b, e = inverse @ supports.T, (s * inverse) @ supports.T, (s**2 * inverse) @ supports.T
        det = weight * b**2 - a * (weight * e + 1)
        mu, t = -(weight * e + 1) / det, -b / det
        x = (mu[..., None] - weight * t[..., None] * s[:, None]) * inverse[:, None] * supports
        feasible = (x >= -1e-12).all(-1) & torch.isfinite(x).all(-1)
        x = x.clamp_min(0)
        x = x / x.sum(-1, keepdim=True)
        value = simplex_form(family, h, x, weight)
        low = torch.minimum(low, torch.where(feasible, value, torch.full_like(value, math.inf)).amin(1))
        block_high, index = torch.where(feasible, value, torch.full_like(value, -math.inf)).max(1)
        better = block_high > high
        high = torch.where(better, block_high, high)
        if maximiser:
            point = torch.where(better[:, None], x[torch.arange(len(h)), index], point)
    return (low, high, point) if maximiser else (low, high)


def search_the_simplex(family, h: torch.Tensor, weight: float):
    """Brute-force global search: vertices, midpoints of edges, 2000 random points (uniform and
    sparse), the 4 best (and worst) polished by exponentiated-gradient steps. Returns the
    smallest and largest values found."""
    n, width = h.shape
    eye = torch.eye(width, dtype=torch.float64)
    first, second = torch.triu_indices(width, width, offset=1)
    points = [eye, (eye[first] + eye[second]) / 2]
    with torch.random.fork_rng():
        torch.manual_seed(7)
        for alpha in (1.0, 0.1):  # uniform on the simplex, and sparse points
            gamma = torch.distributions.Gamma(torch.tensor(alpha), torch.tensor(1.0))
            sample = gamma.sample((1000, width)).double()
            points.append(sample / sample.sum(1, keepdim=True))
    x = torch.cat(points)[None].expand(n, -1, -1)
    best = {}
    for sign, name in ((1.0, "max"), (-1.0, "min")):
        value = sign * simplex_form(family, h, x, weight)
        top = value.topk(4, dim=1).indices
        start = torch.gather(x, 1, top[..., None].expand(-1, -1, width)).clone()
        for _ in range(50):
            start.requires_grad_(True)
            grad, = torch.autograd.grad((sign * simplex_form(family, h, start, weight)).sum(), start)
            with torch.no_grad():
                step = start * torch.exp(0.1 * grad / grad.abs().amax(-1, keepdim=True).clamp_min(1e-300))
                start = step / step.sum(-1, keepdim=True)  # exponentiated gradient: stays on the simplex
        candidates = torch.cat([value, sign * simplex_form(family, h, start.detach(), weight)], 1)
        best[name] = sign * candidates.amax(1)
    return best["min"], best["max"]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["bernoulli", "poisson"])
def test_independent_extrema_are_exact_and_sound(name, width):
    """Sound against a brute-force search of the simplex on 1000 inputs; equal to the extrema of
    the full enumeration of the 2^T supports (every input up to T = 11, 60 inputs at T = 15,
    3 at T = 20)."""
    family = get_family(name)
    h = outputs(name, width, seed=width)
    found = tensor_extrema(family, h)
    exact_rows = slice(None) if width <= 11 else slice(0, 60 if width <= 15 else 3)
    for key, weight in (("m", 2.0), ("k", 3.0)):
        low, high = search_the_simplex(family, h, weight)
        # the search evaluates f at points of the simplex: no value it finds may lie outside
        scale = (family.component_moments(h)[2]).amax(1)  # r bounds f on the simplex
        assert (found[f"{key}_max"] >= high - 1e-14 * scale).all(), f"{key}_max below an attained value"
        assert (found[f"{key}_min"] <= low + 1e-14 * scale).all(), f"{key}_min above an attained value"
        exact_low, exact_high = enumerate_every_support(family, h[exact_rows], weight)
        estimate_low, estimate_high = found[f"{key}_min"][exact_rows], found[f"{key}_max"][exact_rows]
        slack = 1e-14 * scale[exact_rows]
        assert (estimate_high >= exact_high - slack).all() and (estimate_low <= exact_low + slack).all()
        assert (estimate_high <= exact_high * (1 + 1e-8) + slack).all()
        assert (estimate_low >= exact_low * (1 - 1e-8) - slack).all()


def search_the_sphere(family, h: torch.Tensor, form) -> torch.Tensor:
    """Brute-force maximum of a form on the unit sphere: 2000 random directions, basis vectors and
    their pairwise sums and differences, the 8 best polished by Riemannian gradient ascent."""
    n, width = h.shape
    generator = torch.Generator().manual_seed(11)
    eye = torch.eye(width, dtype=torch.float64)
    first, second = torch.triu_indices(width, width, offset=1)
    random = torch.randn(2000, width, generator=generator, dtype=torch.float64)
    points = torch.cat([eye, (eye[first] + eye[second]), eye[first] - eye[second], random])
    u = (points / points.norm(dim=1, keepdim=True)).T[None].expand(n, -1, -1)  # (n, T, R)
    value = form(h, u)
    top = value.topk(8, dim=1).indices
    start = torch.gather(u, 2, top[:, None, :].expand(-1, width, -1)).clone()
    for _ in range(150):
        start.requires_grad_(True)
        grad, = torch.autograd.grad(form(h, start).sum(), start)
        with torch.no_grad():
            tangent = grad - (grad * start).sum(1, keepdim=True) * start
            moved = start + 0.05 * tangent / tangent.norm(dim=1, keepdim=True).clamp_min(1e-300)
            start = moved / moved.norm(dim=1, keepdim=True)
    return torch.cat([value, form(h, start.detach())], 1).amax(1)


@pytest.mark.parametrize("width", WIDTHS)
def test_categorical_upper_estimates_are_sound(width):
    family = get_family("categorical")
    h = outputs("categorical", width, seed=100 + width)
    found = tensor_extrema(family, h)
    m_best = search_the_sphere(family, h, family.fourth_variance)
    k_best = search_the_sphere(family, h, family.kurtosis_form)
    assert (found["m_max"] >= m_best).all() and (found["k_max"] >= k_best).all()
    assert (found["m_min"] == 0).all() and (found["k_min"] == 0).all()


def test_gaussian_extrema_are_the_closed_forms():
    found = tensor_extrema(fimvar.Gaussian(sigma=0.5), torch.randn(4, 7, dtype=torch.float64))
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.equal(found["m_min"], found["m_max"]) and torch.allclose(found["m_max"], 2 / 0.5**4 * ones)
    assert torch.allclose(found["k_max"], 3 / 0.5**4 * ones)


@pytest.mark.parametrize("name,width", [("bernoulli", 15), ("poisson", 15), ("bernoulli", 4)])
def test_a_network_aimed_at_the_maximiser(name, width):
    """A width-1 hidden layer makes every hidden parameter's u proportional to the output layer's
    weight column: aimed at the maximiser of u⊗4·M, the Thm 4.1 bound on v1 is attained there —
    and must hold."""
    family = get_family(name)
    torch.manual_seed(0)
    h = torch.randn(1, width, dtype=torch.float64) * (3.0 if name == "bernoulli" else 1.0)
    _, high, point = enumerate_every_support(family, h, 2.0, maximiser=True)
    direction = point[0].sqrt()  # u = √x: u⊗4·M at the maximiser
    model = nn.Sequential(nn.Linear(3, 1), nn.Tanh(), nn.Linear(1, width)).double()
    with torch.no_grad():
        model[2].weight.copy_(direction[:, None])
        model[2].bias.copy_(h[0] - direction * torch.tanh(model[0].bias))
        model[0].weight.mul_(1e-3)
    inputs = torch.randn(4, 3, dtype=torch.float64) * 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(model, inputs, name, samples=1)
    for bound in result.bounds.values():
        assert bound.holds(), bound.name
    tightness = result.bounds["thm4.1_v1_upper"].tightness()["0.weight"]
    assert float(tightness.min()) == pytest.approx(1.0, rel=1e-3)  # the bound is attained
    spectrum = Spectrum.of(family, h)
    assert float(spectrum.m_max) >= float(high)
