"""Variances of the estimators for a design of ``N`` inputs × ``M`` label draws, and the
minimum-variance combination of Î1 and Î2 (docs/theory.md §3.3 and §8.1).

Every mode, the result objects and the sample-size planner call these functions; they are the
only place where the formulas are written. They accept tensors (per parameter) or floats (sums
over a group of parameters) alike.
"""

from __future__ import annotations

import torch

Number = torch.Tensor | float


def joint_variance(input_var: Number, label_var: Number, inputs: int, draws: int) -> Number:
    """``(Var_x I(θ|x) + E_x v / M) / N`` ([B] Thm 4.7, docs/theory.md §3.3).

    With ``label_var`` = ``E_x v1`` or ``E_x v2`` it is the variance of Î1 or Î2; with
    ``E_x c12`` it is ``Cov(Î1, Î2)``; with 0 it is the variance of the exact (Rao–Blackwellised)
    estimator, input noise only.
    """
    return (input_var + label_var / draws) / inputs


def optimal_weight(var1: Number, var2: Number, cov: Number) -> Number:
    """``α* = (V2 − C) / (V1 + V2 − 2C)``, the weight of Î1 in the minimum-variance combination
    (docs/theory.md §8.1). Where ``V1 + V2 − 2C = Var(Î1 − Î2) = 0`` the two estimators coincide
    and α* = 0 (Î2) is returned."""
    if not isinstance(var1, torch.Tensor):
        denominator = var1 + var2 - 2 * cov
        return (var2 - cov) / denominator if denominator > 0 else 0.0
    denominator = var1 + var2 - 2 * cov
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (var2 - cov) / safe, torch.zeros_like(denominator))


def combined_variance(var1: Number, var2: Number, cov: Number) -> Number:
    """Variance of ``α* Î1 + (1 − α*) Î2``: ``(V1 V2 − C²) / (V1 + V2 − 2C)`` (docs/theory.md
    §8.1), which never exceeds ``min(V1, V2)``; ``min(V1, V2)`` where the denominator is 0.

    The same formula gives the per-draw label variance of the combination from ``v1, v2, c12``
    (α* does not depend on the design when it is chosen per parameter)."""
    if not isinstance(var1, torch.Tensor):
        var1, var2, cov = (torch.tensor(float(v), dtype=torch.float64) for v in (var1, var2, cov))
        return float(combined_variance(var1, var2, cov))
    # in units of max(V1, V2), so that V1 V2 − C² cannot overflow (or underflow) for any scale
    scale = torch.maximum(var1.abs(), var2.abs())
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    v1, v2, c = var1 / scale, var2 / scale, cov / scale
    denominator = v1 + v2 - 2 * c
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    smaller = torch.minimum(var1, var2)
    optimum = ((v1 * v2 - c**2) / safe).clamp_min(0.0) * scale
    return torch.where(denominator > 0, torch.minimum(optimum, smaller), smaller)


def combined_variance_error(var1: Number, var2: Number, cov: Number, error2: Number,
                            error_cov: Number) -> Number:
    """First-order error of :func:`combined_variance` from errors ``error2`` of ``V2`` and
    ``error_cov`` of ``C`` (docs/theory.md §14.1): with ``D = V1 + V2 − 2C``,
    ``∂V/∂V2 = (V1 − C)²/D²`` and ``∂V/∂C = −2(V1 − C)(V2 − C)/D²``; the sum of the absolute
    contributions bounds the error whatever the correlation of the two. Zero where ``D = 0``."""
    denominator = var1 + var2 - 2 * cov
    if not isinstance(var1, torch.Tensor):
        if denominator <= 0:
            return 0.0
        spread = (var1 - cov) ** 2 * error2 + 2 * abs((var1 - cov) * (var2 - cov)) * error_cov
        return spread / denominator**2
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    error = ((var1 - cov) ** 2 * error2 + 2 * ((var1 - cov) * (var2 - cov)).abs() * error_cov) / safe**2
    return torch.where(denominator > 0, error, torch.zeros_like(error))


def combination_variance(alpha: Number, var1: Number, var2: Number, cov: Number) -> Number:
    """Variance of ``α Î1 + (1 − α) Î2`` for a fixed ``α``: ``α² V1 + (1 − α)² V2 + 2α(1 − α) C``
    (docs/theory.md §8.1); linear in ``V2`` and ``C``, so unbiased estimates of them give an
    unbiased estimate of it. Also the per-draw label variance of the combination from
    ``v1, v2, c12``."""
    return alpha**2 * var1 + (1 - alpha) ** 2 * var2 + 2 * alpha * (1 - alpha) * cov


def combination_variance_error(alpha: Number, error2: Number, error_cov: Number) -> Number:
    """Error of :func:`combination_variance` from errors ``error2`` of ``V2`` and ``error_cov`` of
    ``C`` for a fixed ``α``: ``(1 − α)² error2 + 2|α(1 − α)| error_cov`` (a bound whatever the
    correlation of the two errors; docs/theory.md §14.1)."""
    return (1 - alpha) ** 2 * error2 + 2 * abs(alpha * (1 - alpha)) * error_cov


def combine(alpha: Number, first: Number, second: Number) -> Number:
    """``α Î1 + (1 − α) Î2`` (unbiased for any fixed α, docs/theory.md §8.1)."""
    return alpha * first + (1 - alpha) * second
