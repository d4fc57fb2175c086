"""Per-chunk sums of every per-parameter quantity of theory.md §2–§5 (the engines only
differentiate; this module is where the estimators' mathematics is applied).

For one input ``x`` and one parameter ``θ_i`` with output derivatives ``u_i``, ``w_i``:

    I(θ_i|x)  = u_iᵀ I u_i                                   (Fisher, exact)
    v1        = Var[(u_i·ε)²]                                ([B] Lemma 3.1)
    v2        = w_iᵀ I w_i                                   ([B] Lemma 3.1)
    c12       = Cov[(u_i·ε)², u_iᵀIu_i − w_i·ε] = −E[(u_i·ε)²(w_i·ε)]     (derived)
    Î1 draw   = (u_i·ε_m)²           Î2 draw = u_iᵀ I u_i − w_i·ε_m      (theory §2)

Every statistic is homogeneous in the layer input ``a`` of a factored parameter (degree 2 or 4),
which is what lets :meth:`ParameterDerivatives.reduce` turn the sum over inputs into one GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.engine.base import ParameterDerivatives
from fimvar.families import ExponentialFamily


@dataclass
class Spectrum:
    """Per-input spectral constants of the output distribution (theory §5), each ``(n,)``."""

    lam_min: torch.Tensor  # λ_min(I)
    lam_max: torch.Tensor  # λ_max(I)
    m_min: torch.Tensor  # λ̃_min(M)
    m_max: torch.Tensor  # λ̃_max(M)
    k_min: torch.Tensor  # λ̃_min(K)
    k_max: torch.Tensor  # λ̃_max(K)
    norm_bound: torch.Tensor  # B with ‖ε‖² ≤ B, inf if unbounded
    margin: torch.Tensor | None  # m(x) of [B] Thm 5.2 (categorical)

    @classmethod
    def of(cls, family: ExponentialFamily, h: torch.Tensor) -> Spectrum:
        eig = family.fisher_eigenvalues(h)
        extrema = family.fourth_tensor_extrema(h)
        return cls(
            lam_min=eig[:, 0].clamp_min(0.0),
            lam_max=eig[:, -1],
            m_min=extrema["m_min"],
            m_max=extrema["m_max"],
            k_min=extrema["k_min"],
            k_max=extrema["k_max"],
            norm_bound=family.statistic_norm_bound(h),
            margin=family.categorical_margin(h),
        )


@dataclass(frozen=True)
class BoundTerm:
    """One per-parameter bound ``E_x[‖·‖^p · c(x)]`` on the input average of a quantity."""

    name: str
    quantity: str  # which exact quantity it bounds: fisher, v1, v2, input_var
    side: str  # lower | upper
    norm: str  # u2 = ‖u_i‖², u4 = ‖u_i‖⁴, w2 = ‖w_i‖²
    source: str


BOUND_TERMS: tuple[BoundTerm, ...] = (
    BoundTerm("thm4.1_fisher_lower", "fisher", "lower", "u2", "[B] Thm 4.1"),
    BoundTerm("thm4.1_fisher_upper", "fisher", "upper", "u2", "[B] Thm 4.1"),
    BoundTerm("thm4.1_v1_lower", "v1", "lower", "u4", "[B] Thm 4.1"),
    BoundTerm("thm4.1_v1_upper", "v1", "upper", "u4", "[B] Thm 4.1"),
    BoundTerm("thm4.1_v2_lower", "v2", "lower", "w2", "[B] Thm 4.1"),
    BoundTerm("thm4.1_v2_upper", "v2", "upper", "w2", "[B] Thm 4.1"),
    BoundTerm("cor4.2_v1_lower", "v1", "lower", "u4", "[B] Cor 4.2"),
    BoundTerm("cor4.2_v1_upper", "v1", "upper", "u4", "[B] Cor 4.2"),
    BoundTerm("prop4.3_v1_upper", "v1", "upper", "u4", "[B] Prop 4.3 with Cor 4.2"),
    BoundTerm("thm5.2_fisher_upper", "fisher", "upper", "u2", "[B] Thm 5.2"),
    BoundTerm("thm5.2_v1_upper", "v1", "upper", "u4", "[B] Thm 5.2"),
    BoundTerm("lemma4.8_input_var_upper", "input_var", "upper", "u4", "[B] Lemma 4.8"),
)


def bound_coefficients(spectrum: Spectrum) -> dict[str, torch.Tensor]:
    """The per-input factor ``c(x)`` of every bound in :data:`BOUND_TERMS` that applies."""
    s = spectrum
    coefficients = {
        "thm4.1_fisher_lower": s.lam_min,
        "thm4.1_fisher_upper": s.lam_max,
        "thm4.1_v1_lower": s.m_min,
        "thm4.1_v1_upper": s.m_max,
        "thm4.1_v2_lower": s.lam_min,
        "thm4.1_v2_upper": s.lam_max,
        # λ̃_min(M) ≥ max(0, λ̃_min(K) − λ_max²) and λ̃_max(M) ≤ λ̃_max(K) − λ_min²
        "cor4.2_v1_lower": (s.k_min - s.lam_max**2).clamp_min(0.0),
        "cor4.2_v1_upper": s.k_max - s.lam_min**2,
        "lemma4.8_input_var_upper": s.lam_max**2,
    }
    if torch.isfinite(s.norm_bound).all():
        # λ̃_max(K) ≤ B λ_max, then Cor 4.2
        coefficients["prop4.3_v1_upper"] = s.norm_bound * s.lam_max - s.lam_min**2
    if s.margin is not None:
        coefficients["thm5.2_fisher_upper"] = s.margin
        coefficients["thm5.2_v1_upper"] = 2.0 * s.margin
    return coefficients


#: per-parameter sums accumulated over inputs, with their degree in the layer input a
SUM_DEGREES: dict[str, int] = {
    "fisher": 2,
    "fisher_sq": 4,
    "v1": 4,
    "v2": 4,
    "c12": 4,
    "i1": 2,
    "i2": 2,
    "i1_sq": 4,
    "i2_sq": 4,
    "i1_i2": 4,
    "empirical": 2,
}
NORM_DEGREES = {"u2": 2, "u4": 4, "w2": 4}


def block_sums(
    family: ExponentialFamily,
    h: torch.Tensor,
    block: ParameterDerivatives,
    draws: torch.Tensor,
    data_residual: torch.Tensor | None,
    coefficients: dict[str, torch.Tensor] | None,
    draw_chunk: int,
) -> dict[str, torch.Tensor]:
    """Sums over the chunk's inputs of every per-parameter quantity for one parameter tensor.

    Args:
        family: the output distribution.
        h: outputs ``(n, T)``.
        block: the parameter's derivatives.
        draws: ``ε`` of the sampled labels, ``(n, M, T)``.
        data_residual: ``t(ŷ) − η`` of the data labels ``(n, T)``, or ``None``.
        coefficients: per-input bound factors (:func:`bound_coefficients`), or ``None``.
        draw_chunk: how many draws to contract at once (memory).

    Returns:
        ``{quantity: tensor of the parameter's shape}``, bound sums keyed ``bound:<name>``.
    """
    u, w = block.first, block.second
    fisher = family.quadratic(h, u)
    per_unit = {
        "fisher": fisher,
        "fisher_sq": fisher**2,
        "v1": family.fourth_variance(h, u),
        "v2": family.quadratic(h, w),
        "c12": -family.third_moment(h, u, w),
    }
    i1 = torch.zeros_like(fisher)
    i2 = torch.zeros_like(fisher)
    i1_sq = torch.zeros_like(fisher)
    i2_sq = torch.zeros_like(fisher)
    i1_i2 = torch.zeros_like(fisher)
    for start in range(0, draws.shape[1], draw_chunk):
        eps = draws[:, start : start + draw_chunk]
        score_sq = torch.einsum("nmt,ntj->nmj", eps, u) ** 2
        curvature = fisher[:, None, :] - torch.einsum("nmt,ntj->nmj", eps, w)
        i1 += score_sq.sum(1)
        i2 += curvature.sum(1)
        i1_sq += (score_sq**2).sum(1)
        i2_sq += (curvature**2).sum(1)
        i1_i2 += (score_sq * curvature).sum(1)
    per_unit.update(i1=i1, i2=i2, i1_sq=i1_sq, i2_sq=i2_sq, i1_i2=i1_i2)
    if data_residual is not None:
        per_unit["empirical"] = torch.einsum("nt,ntj->nj", data_residual, u) ** 2

    sums = {key: block.reduce(value, SUM_DEGREES[key]) for key, value in per_unit.items()}
    # within-chunk centred second moment of I(θ_i|x), for a stable input variance (Chan et al.)
    count = h.shape[0]
    sums["fisher_m2"] = sums["fisher_sq"] - sums["fisher"] ** 2 / count
    if coefficients:
        norms = {"u2": (u**2).sum(1)}
        norms["u4"] = norms["u2"] ** 2
        norms["w2"] = (w**2).sum(1)
        for term in BOUND_TERMS:
            if term.name in coefficients:
                weighted = norms[term.norm] * coefficients[term.name][:, None]
                sums[f"bound:{term.name}"] = block.reduce(weighted, NORM_DEGREES[term.norm])
    return sums
