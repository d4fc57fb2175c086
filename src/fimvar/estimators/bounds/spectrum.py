"""Per-parameter bounds of [B]: spectral constants of the output distribution and the bound
records, each carrying its own coefficient (docs/theory.md §5).

Every per-parameter bound has the form ``E_x[‖·‖^p · c(x)]``: a norm of the parameter's output
derivatives (``‖u_i‖²``, ``‖u_i‖⁴`` or ``‖w_i‖²``) times a per-input coefficient ``c(x)`` built
from the spectrum of the output distribution (:class:`Spectrum`). A :class:`BoundTerm` holds the
name, what it bounds, which norm, and the function that gives ``c(x)`` — nothing is joined by
name strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fimvar.estimators.bounds.tensor_eigen import fisher_eigenvalue_range, tensor_extrema
from fimvar.families import ExponentialFamily


@dataclass
class Spectrum:
    """Per-input spectral constants of the output distribution (docs/theory.md §5), each ``(n,)``:
    certified estimates, a lower one where a lower bound uses it (``*_min``) and an upper one
    where an upper bound does (``*_max``); ``None`` where no certified estimate is known."""

    lam_min: torch.Tensor  # ≤ λ_min(I)
    lam_max: torch.Tensor  # ≥ λ_max(I)
    m_min: torch.Tensor | None  # ≤ λ̃_min(M)
    m_max: torch.Tensor | None  # ≥ λ̃_max(M)
    k_min: torch.Tensor | None  # ≤ λ̃_min(K)
    k_max: torch.Tensor | None  # ≥ λ̃_max(K)
    norm_bound: torch.Tensor  # B with ‖ε‖² ≤ B, inf if unbounded
    margin: torch.Tensor | None  # m(x) of [B] Thm 5.2 (categorical)

    @classmethod
    def of(cls, family: ExponentialFamily, h: torch.Tensor,
           fourth_symmetric: torch.Tensor | None = None) -> Spectrum:
        lam_min, lam_max = fisher_eigenvalue_range(family, h)
        extrema = tensor_extrema(family, h, fourth_symmetric)
        return cls(
            lam_min=lam_min,
            lam_max=lam_max,
            m_min=extrema["m_min"],
            m_max=extrema["m_max"],
            k_min=extrema["k_min"],
            k_max=extrema["k_max"],
            norm_bound=family.statistic_norm_bound(h),
            margin=family.categorical_margin(h),
        )


#: degree of each norm in the layer input ``a`` of a factored parameter (docs/theory.md §9)
NORM_DEGREES = {"u2": 2, "u4": 4, "w2": 4}


@dataclass(frozen=True)
class BoundTerm:
    """One per-parameter bound ``E_x[‖·‖^p · c(x)]`` on the input average of a quantity.

    ``coefficient`` maps the :class:`Spectrum` of a chunk to ``c(x)`` (``(n,)``), or to ``None``
    when the bound does not apply to the family.
    """

    name: str
    quantity: str  # which exact quantity it bounds: fisher, v1, v2, input_var
    side: str  # lower | upper
    norm: str  # u2 = ‖u_i‖², u4 = ‖u_i‖⁴, w2 = ‖w_i‖²
    source: str
    coefficient: Callable[[Spectrum], torch.Tensor | None]


def _prop43(s: Spectrum) -> torch.Tensor | None:
    # λ̃_max(K) ≤ B λ_max ([B] Prop 4.3), then λ̃_max(M) ≤ λ̃_max(K) − λ_min² (Cor 4.2)
    if not torch.isfinite(s.norm_bound).all():
        return None
    return s.norm_bound * s.lam_max - s.lam_min**2


def _margin(scale: float) -> Callable[[Spectrum], torch.Tensor | None]:
    return lambda s: None if s.margin is None else scale * s.margin


def _cor42_lower(s: Spectrum) -> torch.Tensor | None:
    # λ̃_min(M) ≥ max(0, λ̃_min(K) − λ_max²)
    return None if s.k_min is None else (s.k_min - s.lam_max**2).clamp_min(0.0)


def _cor42_upper(s: Spectrum) -> torch.Tensor | None:
    # λ̃_max(M) ≤ λ̃_max(K) − λ_min²
    return None if s.k_max is None else s.k_max - s.lam_min**2


BOUND_TERMS: tuple[BoundTerm, ...] = (
    BoundTerm("thm4.1_fisher_lower", "fisher", "lower", "u2", "[B] Thm 4.1", lambda s: s.lam_min),
    BoundTerm("thm4.1_fisher_upper", "fisher", "upper", "u2", "[B] Thm 4.1", lambda s: s.lam_max),
    BoundTerm("thm4.1_v1_lower", "v1", "lower", "u4", "[B] Thm 4.1", lambda s: s.m_min),
    BoundTerm("thm4.1_v1_upper", "v1", "upper", "u4", "[B] Thm 4.1", lambda s: s.m_max),
    BoundTerm("thm4.1_v2_lower", "v2", "lower", "w2", "[B] Thm 4.1", lambda s: s.lam_min),
    BoundTerm("thm4.1_v2_upper", "v2", "upper", "w2", "[B] Thm 4.1", lambda s: s.lam_max),
    BoundTerm("cor4.2_v1_lower", "v1", "lower", "u4", "[B] Cor 4.2", _cor42_lower),
    BoundTerm("cor4.2_v1_upper", "v1", "upper", "u4", "[B] Cor 4.2", _cor42_upper),
    BoundTerm("prop4.3_v1_upper", "v1", "upper", "u4", "[B] Prop 4.3 with Cor 4.2", _prop43),
    BoundTerm("thm5.2_fisher_upper", "fisher", "upper", "u2", "[B] Thm 5.2", _margin(1.0)),
    BoundTerm("thm5.2_v1_upper", "v1", "upper", "u4", "[B] Thm 5.2", _margin(2.0)),
    BoundTerm("lemma4.8_input_var_upper", "input_var", "upper", "u4", "[B] Lemma 4.8",
              lambda s: s.lam_max**2),
)


def bound_coefficients(spectrum: Spectrum) -> dict[BoundTerm, torch.Tensor]:
    """The per-input factor ``c(x)`` of every bound that applies to the family."""
    coefficients = {}
    for term in BOUND_TERMS:
        value = term.coefficient(spectrum)
        if value is not None:
            coefficients[term] = value
    return coefficients


def bound_norms(u: torch.Tensor, w: torch.Tensor, coefficients: dict[BoundTerm, torch.Tensor]
                ) -> dict[BoundTerm, torch.Tensor]:
    """Per-input ``‖·‖^p · c(x)`` of every bound in ``coefficients``, ``(n, K)`` each, for
    direction vectors ``u``, ``w`` of shape ``(n, T, K)`` ([B] Thm 4.1, Cor 4.2, Prop 4.3,
    Thm 5.2, Lemma 4.8)."""
    norms = {"u2": (u**2).sum(1)}
    norms["u4"] = norms["u2"] ** 2
    if any(term.norm == "w2" for term in coefficients):
        norms["w2"] = (w**2).sum(1)
    return {term: norms[term.norm] * c[:, None] for term, c in coefficients.items()}
