"""Exact extrema of ``f(x) = Σ_c d_c x_c² + w (s·x)²`` over the probability simplex, at any width
(docs/theory.md §5.5): the tensor eigenvalues of independent outputs.

For independent components with variances ``s``, ``κ4 = r − 2s²`` and ``x = u ⊙ u``,
``u⊗4·M = f(x)`` with ``d = κ4, w = 2`` and ``u⊗4·K = f(x)`` with ``w = 3``. A global extremum is
a KKT point: on its support S, ``d_c x_c + w t s_c = μ`` (c ∈ S) with ``t = s·x``, ``Σ x = 1``
(a 2×2 linear system in ``(μ, t)``), and ``w t s_c ≤ μ`` (maximum) or ``≥ μ`` (minimum) off S.
Which supports can hold a global extremum (derived, docs/theory.md §5.5):

- **maximum**: along ``e_a − e_b`` the second derivative is ``2(d_a + d_b) + 2w(s_a − s_b)²``, ≥ 0
  when ``d_a, d_b ≥ 0``, so a maximiser can be moved, without loss, until at most one coordinate
  with ``d ≥ 0`` is positive; the positive coordinates with ``d < 0`` are exactly those with
  ``s_c`` above a threshold (from the KKT conditions). Candidates: the ``k`` coordinates with
  ``d < 0`` of largest ``s`` (k = 0…|N|) plus at most one coordinate with ``d ≥ 0`` —
  ``(|N|+1)(|P|+1)`` ≤ ``(T/2 + 1)²``.
- **minimum**: a local minimum's Hessian on its face, ``2(diag d_S + w s_S s_Sᵀ)`` on ``Σ v = 0``,
  has at least ``k − 2`` negative directions when S holds ``k`` coordinates with ``d < 0``, so
  at most two of them are positive; the positive coordinates with ``d ≥ 0`` are those with ``s_c``
  below a threshold. Candidates: the ``k`` coordinates with ``d ≥ 0`` of smallest ``s`` plus at most
  two coordinates with ``d < 0`` — ``(|P|+1)(|N|+1)(|N|+2)/2``, enumerated up to :data:`MIN_EXACT_WIDTH`;
  beyond it the minimum is bounded below by ``w min(s)² + min(d, d/T)`` (and by 0).

Beyond :data:`MAX_EXACT_WIDTH` the maximum is bounded above by the convexification
``max_c (max(d_c, 0) + w s_c²)``: adding ``diag(max(−d, 0))`` only raises f on the simplex and makes
it convex, so its maximum is at a vertex.

Every candidate is evaluated at its own (feasible) point, so each value is attained; the
maximum over the candidates is the global maximum (the minimum likewise). Zero ``d_c`` are moved
to ``±η`` (η = 1e-9 max |d|) so that every 2×2 system is defined, which changes ``f`` by at most
η on the simplex: η is added to the maximum and taken from the minimum, and a relative margin of
``ROUNDING`` covers the rounding of the evaluation. The results are certified: an upper estimate
of the maximum and a lower estimate of the minimum.
"""

from __future__ import annotations

import torch

from fimvar.families.base import exclusive_pair_sum

#: widths up to which the maximum and the minimum are found by enumerating their candidates
MAX_EXACT_WIDTH = 64
MIN_EXACT_WIDTH = 24
#: relative safety margin for rounding in the evaluation of the candidates
ROUNDING = 1e-10
#: elements of one (inputs, candidates, T) block of candidate supports
BLOCK_ELEMENTS = 1 << 22


def _value(x: torch.Tensor, s: torch.Tensor, r: torch.Tensor, weight: float) -> torch.Tensor:
    """``f(x)`` in the cancellation-free form ``Σ r x² + 2 Σ_{a≠b} s_a x_a s_b x_b + (w − 2)(s·x)²``
    (``r = d + 2s²``), for candidates ``x`` of shape ``(n, C, T)``."""
    weighted = s[:, None, :] * x
    value = (r[:, None, :] * x**2).sum(-1) + 2 * exclusive_pair_sum(weighted, -1)
    return value + (weight - 2.0) * weighted.sum(-1) ** 2


def _solve(supports: torch.Tensor, d: torch.Tensor, s: torch.Tensor, r: torch.Tensor, weight: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The KKT point of every candidate support ``(n, C, T)`` and its value; infeasible ones are
    flagged in the returned mask."""
    tiny = torch.finfo(d.dtype).tiny
    inverse = 1.0 / d
    a = torch.einsum("nct,nt->nc", supports, inverse)  # Σ_S 1/d
    b = torch.einsum("nct,nt->nc", supports, s * inverse)  # Σ_S s/d
    e = torch.einsum("nct,nt->nc", supports, s**2 * inverse)  # Σ_S s²/d
    det = weight * b**2 - a * (weight * e + 1.0)
    good = det.abs() > tiny
    det = torch.where(good, det, torch.ones_like(det))
    mu = -(weight * e + 1.0) / det
    t = -b / det
    x = (mu[..., None] - weight * t[..., None] * s[:, None, :]) * inverse[:, None, :] * supports
    feasible = good & (x >= -1e-9).all(-1) & torch.isfinite(x).all(-1)
    x = x.clamp_min(0.0)
    x = x / x.sum(-1, keepdim=True).clamp_min(tiny)
    return _value(x, s, r, weight), feasible


def _ranked(mask: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The coordinates of ``mask`` ordered by ``key`` (ascending), one-hot: ``(n, K + 1, T)`` with
    ``K`` the largest count over the rows (rows with fewer get zero rows, as does the extra last
    one, "no coordinate"), and each coordinate's rank among them (``K`` and more off the mask)."""
    n, width = mask.shape
    count = int(mask.sum(1).max())
    order = torch.argsort(torch.where(mask, key, torch.full_like(key, float("inf"))), dim=1)
    rank = torch.argsort(order, dim=1)
    rank = torch.where(mask, rank, torch.full_like(rank, width))
    chosen = torch.nn.functional.one_hot(order[:, :count], width).to(torch.bool)  # (n, K, T)
    chosen &= (torch.arange(count, device=mask.device)[None, :] < mask.sum(1, keepdim=True))[..., None]
    none = torch.zeros(n, 1, width, dtype=torch.bool, device=mask.device)
    return torch.cat([chosen, none], 1), rank, count


def _prefixes(rank: torch.Tensor, count: int) -> torch.Tensor:
    """The sets of the ``k`` first coordinates by rank, k = 0…count: ``(n, count + 1, T)``."""
    k = torch.arange(count + 1, device=rank.device)
    return rank[:, None, :] < k[None, :, None]


def _max_supports(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Candidate supports of the maximum: the k coordinates of ``{d < 0}`` with the largest ``s``
    (k = 0…|N|) with at most one coordinate of ``{d ≥ 0}``, ``(n, C, T)``."""
    n, width = d.shape
    _, rank, count = _ranked(d < 0, -s)
    extra, _, _ = _ranked(d >= 0, s)
    top = _prefixes(rank, count)
    return (top[:, :, None, :] | extra[:, None]).reshape(n, -1, width).to(d.dtype)


def _min_supports(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Candidate supports of the minimum: the k coordinates of ``{d ≥ 0}`` with the smallest
    ``s`` (k = 0…|P|) with at most two coordinates of ``{d < 0}``, ``(n, C, T)``."""
    n, width = d.shape
    _, rank, count = _ranked(d >= 0, s)
    single, _, negatives = _ranked(d < 0, s)
    first, second = torch.triu_indices(negatives + 1, negatives + 1, device=d.device)
    extra = single[:, first] | single[:, second]  # (n, pairs, T)
    bottom = _prefixes(rank, count)
    return (bottom[:, :, None, :] | extra[:, None]).reshape(n, -1, width).to(d.dtype)


def simplex_extrema(kurtosis: torch.Tensor, variance: torch.Tensor, square_variance: torch.Tensor,
                    weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Certified ``(lower estimate of min, upper estimate of max)`` of
    ``Σ κ4 x² + weight (s·x)²`` over the simplex, ``(n,)`` each (see the module docs).

    Args:
        kurtosis: ``κ4 = r − 2s²`` per component, ``(n, T)``.
        variance: ``s``, ``(n, T)``.
        square_variance: ``r = Var ε_c²``, ``(n, T)``.
        weight: 2 (the form of M) or 3 (of K).
    """
    n, width = kurtosis.shape
    scale = kurtosis.abs().amax(1, keepdim=True)
    eta = 1e-9 * scale + 1e-300
    d = torch.where(kurtosis >= 0, kurtosis.clamp_min(eta), kurtosis.clamp_max(-eta))
    shift = (d - kurtosis).abs().amax(1)  # |f − f_perturbed| ≤ shift on the simplex
    # the evaluation uses the perturbed d, i.e. r + (d − κ4)
    r = square_variance + (d - kurtosis)
    high = torch.full((n,), -float("inf"), dtype=d.dtype, device=d.device)
    low = torch.full((n,), float("inf"), dtype=d.dtype, device=d.device)
    exact_max, exact_min = width <= MAX_EXACT_WIDTH, width <= MIN_EXACT_WIDTH
    negatives = (d < 0).sum(1)
    # rows with the same number of negative d have the same number of candidates
    for count in torch.unique(negatives).tolist() if (exact_max or exact_min) else []:
        group = torch.nonzero(negatives == count).flatten()
        candidates = ((count + 1) * (width - count + 1) if exact_max else 0) + (
            (width - count + 1) * (count + 1) * (count + 2) // 2 if exact_min else 0)
        step = max(1, BLOCK_ELEMENTS // (candidates * width))
        for start in range(0, len(group), step):
            rows = group[start:start + step]
            args = (d[rows], variance[rows], r[rows], weight)
            if exact_max:
                value, feasible = _solve(_max_supports(d[rows], variance[rows]), *args)
                high[rows] = torch.where(feasible, value, torch.full_like(value, -float("inf"))).amax(1)
            if exact_min:
                value, feasible = _solve(_min_supports(d[rows], variance[rows]), *args)
                low[rows] = torch.where(feasible, value, torch.full_like(value, float("inf"))).amin(1)
    if exact_max:
        high = high + shift
    else:
        high = (kurtosis.clamp_min(0.0) + weight * variance**2).amax(1)
    if exact_min:
        low = low - shift
    else:  # f ≥ w (s·x)² + Σ d x² ≥ w min(s)² + min(d_min, d_min / T)
        d_min = kurtosis.amin(1)
        low = weight * variance.amin(1) ** 2 + torch.minimum(d_min, d_min / width)
    return (low * (1 - ROUNDING)).clamp_min(0.0), high * (1 + ROUNDING)
