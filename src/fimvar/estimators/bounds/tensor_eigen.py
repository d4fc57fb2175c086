"""Certified tensor eigenvalues of the output distribution (docs/theory.md §5.5).

``λ̃_min(M) = inf_{‖u‖=1} u⊗4·M`` and ``λ̃_max(M) = sup_{‖u‖=1} u⊗4·M`` (likewise for ``K``) enter
the bounds of [B] Thm 4.1 and Cor 4.2. A bound is only a bound if an *upper* bound uses an upper
estimate of ``λ̃_max`` and a *lower* bound a lower estimate of ``λ̃_min``; a local optimum of the
sphere is neither. :func:`tensor_extrema` returns, per input,

- the family's closed forms where it has them (Gaussian: all four; categorical: the minima, 0);
- for independent outputs, the exact extrema of a quadratic form over the simplex
  (:mod:`fimvar.estimators.bounds.simplex`), at any width;
- otherwise the smallest of proven upper estimates of the maxima and the largest of proven lower
  estimates of the minima: the matrix relaxation ``u⊗4·M = ⟨X, M̄ X⟩ ≤ λ_max(M̄)`` over
  ``X = uuᵀ`` with ``‖X‖_F = 1`` (and ``≥ λ_min(M̄)``; for a finite support, e.g. categorical,
  from the R×R Gram matrix of the support, up to ``MAX_GRAM_WIDTH`` outputs), [B] Prop 4.3 with Cor 4.2
  (``λ̃_max(K) ≤ B λ_max``, ``λ̃_max(M) ≤ λ̃_max(K) − λ_min²``), [B] Thm 5.2
  (``λ̃_max(M) ≤ 2 m(x)``), ``λ̃(K) = λ̃(M) + q²`` with ``λ_min ≤ q ≤ λ_max`` (Jensen), and 0;
  ``None`` where no estimate is proven (a custom family with T > 12 outputs and unbounded ε):
  the bounds that need it are then not reported.

``γ̃_max(M) = sup_{‖a‖=‖b‖=1} a^p b^q a^r b^s M_pqrs`` ([B] App. C) is bounded the same way by
the largest eigenvalue of M reshaped to T²×T² (:func:`bilinear_fourth_upper`).
"""

from __future__ import annotations

import torch

from fimvar.estimators.bounds.simplex import simplex_extrema
from fimvar.estimators.bounds.trace import MAX_TENSOR_WIDTH, symmetric_fourth, symmetric_pairs
from fimvar.families import ExponentialFamily
from fimvar.families.independent import IndependentFamily
from fimvar.families.positions import Positions

#: the four tensor eigenvalues of the bounds
EXTREMA = ("m_min", "m_max", "k_min", "k_max")
#: relative margin for the rounding of eigenvalue solvers, on the scale of the matrix
ROUNDING = 1e-10
#: widths up to which the relaxation of a finite-support family is formed (an R×R eigenproblem)
MAX_GRAM_WIDTH = 256


def fisher_eigenvalue_range(family: ExponentialFamily, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Certified ``(lower estimate of λ_min(I), upper estimate of λ_max(I))`` per input: the
    family's eigenvalues widened by a rounding margin."""
    low, high = family.fisher_eigenvalue_range(h)
    margin = ROUNDING * torch.maximum(low.abs(), high.abs())
    return (low - margin).clamp_min(0.0), high + margin


def tensor_extrema(family: ExponentialFamily, h: torch.Tensor, fourth_symmetric: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor | None]:
    """Certified ``m_min ≤ λ̃_min(M)``, ``m_max ≥ λ̃_max(M)``, ``k_min ≤ λ̃_min(K)``,
    ``k_max ≥ λ̃_max(K)`` per input (``(n,)`` each, or ``None`` when unavailable), see the
    module docs. ``fourth_symmetric`` is ``M̄`` in symmetric coordinates when the caller has it
    (:class:`~fimvar.estimators.bounds.trace.OutputMoments`)."""
    if isinstance(family, Positions):
        return _positions_extrema(family, h)
    found: dict[str, torch.Tensor | None] = dict(family.known_tensor_extrema(h))
    if all(key in found for key in EXTREMA):
        return {key: found[key] for key in EXTREMA}
    if isinstance(family, IndependentFamily):
        s, _, r = family.component_moments(h)
        for key, weight in (("m", 2.0), ("k", 3.0)):
            low, high = simplex_extrema(r - 2 * s**2, s, r, weight)
            found.setdefault(f"{key}_min", low)
            found.setdefault(f"{key}_max", high)
        return {key: found[key] for key in EXTREMA}
    return _relaxations(family, h, found, fourth_symmetric)


def _positions_extrema(family: Positions, h: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """Per-position outputs (docs/theory.md §13): with ``α_t = ‖u_t‖²`` on the simplex,
    ``u⊗4·M = Σ_t u_t⊗4·M_t + 4 Σ_{s<t} q_s q_t`` and ``u⊗4·K = u⊗4·M + (Σ_t q_t)²`` with
    ``q_t = u_tᵀI_tu_t ∈ [λ̲_t α_t, λ̄_t α_t]``, so both lie between the simplex forms
    ``Σ_t (m̲_t − 2λ̲_t²) α_t² + w (Σ λ̲_t α_t)²`` and the same with the upper estimates (w = 2 for M,
    3 for K), whose certified extrema :func:`simplex_extrema` finds."""
    n, positions = h.shape[0], family.positions
    inner = tensor_extrema(family.base, family.split(h))
    low, high = (v.reshape(n, positions) for v in fisher_eigenvalue_range(family.base, family.split(h)))
    found: dict[str, torch.Tensor | None] = {}
    for key, weight in (("m", 2.0), ("k", 3.0)):
        for side, lam, pick in (("min", low, 0), ("max", high, 1)):
            m = inner[f"m_{side}"]
            if m is None:
                found[f"{key}_{side}"] = None
                continue
            m = m.reshape(n, positions)
            found[f"{key}_{side}"] = simplex_extrema(m - 2 * lam**2, lam, m, weight)[pick]
    return {key: found[key] for key in EXTREMA}


def _relaxations(family, h, found, fourth_symmetric):
    lam_min, lam_max = fisher_eigenvalue_range(family, h)
    upper: dict[str, list[torch.Tensor]] = {"m": [], "k": []}
    lower: dict[str, list[torch.Tensor]] = {"m": [torch.zeros_like(lam_min)], "k": [lam_min**2]}
    width = h.shape[1]
    support = family.support_residuals(h) if width <= MAX_GRAM_WIDTH else None
    if support is not None:
        # M̄ = Σ_y π_y vec(D_y) vec(D_y)ᵀ has the non-zero eigenvalues of the R×R matrix
        # √π_y ⟨D_y, D_z⟩ √π_z, with ⟨D_y, D_z⟩ = (ε_y·ε_z)² − ε_yᵀIε_y − ε_zᵀIε_z + ‖I‖²_F;
        # K̄ likewise with ⟨ε_yε_yᵀ, ε_zε_zᵀ⟩ = (ε_y·ε_z)²
        eps, weights = support
        fisher = family.fisher(h)
        inner = torch.einsum("nya,nza->nyz", eps, eps) ** 2
        quadratic = torch.einsum("nya,nab,nyb->ny", eps, fisher, eps)
        norm = fisher.pow(2).sum((1, 2))
        gram_m = inner - quadratic[:, :, None] - quadratic[:, None, :] + norm[:, None, None]
        # entries are rounded on the scale of their terms; with Σπ = 1 an entrywise error E moves
        # the eigenvalues of √π E √π by at most max |E|
        entry_error = 16 * torch.finfo(h.dtype).eps * (inner.amax((1, 2)) + 2 * quadratic.amax(1) + norm)
        root = weights.clamp_min(0.0).sqrt()
        for key, gram in (("m", gram_m), ("k", inner)):
            eigenvalues = torch.linalg.eigvalsh(root[:, :, None] * gram * root[:, None, :])
            upper[key].append(eigenvalues[:, -1] + ROUNDING * eigenvalues.abs().amax(1) + entry_error)
    elif width <= MAX_TENSOR_WIDTH:
        matrix = fourth_symmetric if fourth_symmetric is not None else symmetric_fourth(family, h)
        first, second, scale = symmetric_pairs(width, h.device)
        fisher = family.fisher(h)[:, first, second] * scale  # I in symmetric coordinates
        for key, relaxed in (("m", matrix), ("k", matrix + fisher[:, :, None] * fisher[:, None, :])):
            eigenvalues = torch.linalg.eigvalsh(relaxed)
            margin = ROUNDING * eigenvalues.abs().amax(1)
            upper[key].append(eigenvalues[:, -1] + margin)
            lower[key].append(eigenvalues[:, 0] - margin)
    norm_bound = family.statistic_norm_bound(h)
    if torch.isfinite(norm_bound).all():
        upper["k"].append(norm_bound * lam_max)  # [B] Prop 4.3
    margin = family.categorical_margin(h)
    if margin is not None:
        upper["m"].append(2.0 * margin)  # [B] Thm 5.2
    # λ̃(K) = λ̃(M) + q² along the same u, λ_min ≤ q ≤ λ_max ([B] Cor 4.2 and its converse)
    if upper["k"]:
        upper["m"].append(torch.stack(upper["k"]).amin(0) - lam_min**2)
    if upper["m"]:
        upper["k"].append(torch.stack(upper["m"]).amin(0) + lam_max**2)
    lower["k"].append(torch.stack(lower["m"]).amax(0) + lam_min**2)
    lower["m"].append(torch.stack(lower["k"]).amax(0) - lam_max**2)
    for key in ("m", "k"):
        found.setdefault(f"{key}_min", torch.stack(lower[key]).amax(0).clamp_min(0.0))
        found.setdefault(f"{key}_max", torch.stack(upper[key]).amin(0) if upper[key] else None)
    return {key: found[key] for key in EXTREMA}


def bilinear_fourth_upper(family: ExponentialFamily, h: torch.Tensor) -> torch.Tensor:
    """Certified upper estimate of ``γ̃_max(M) = sup_{‖a‖=‖b‖=1} a^p b^q a^r b^s M_pqrs`` per input
    ([B] App. C): with ``X = abᵀ`` (``‖X‖_F = 1``) the form is ``vec(X)ᵀ M̃ vec(X)`` for M reshaped
    to T²×T², so it is at most ``λ_max(M̃)``."""
    fourth = family.fourth_central_tensor(h)
    n, width = h.shape
    matrix = fourth.reshape(n, width * width, width * width)
    eigenvalues = torch.linalg.eigvalsh(0.5 * (matrix + matrix.transpose(1, 2)))
    return eigenvalues[:, -1] + ROUNDING * eigenvalues.abs().amax(1)
