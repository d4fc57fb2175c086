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


#: per-parameter sums accumulated over inputs, with their degree in the layer input a;
#: the ``*_within`` sums (label draws around their per-input mean) need M ≥ 2 draws
SUM_DEGREES: dict[str, int] = {
    "fisher": 2,
    "fisher_sq": 4,
    "v1": 4,
    "v2": 4,
    "c12": 4,
    "i1": 2,
    "i2": 2,
    "i1_within": 4,
    "i2_within": 4,
    "i12_within": 4,
    "empirical": 2,
}
NORM_DEGREES = {"u2": 2, "u4": 4, "w2": 4}


#: elements of one (rows, T, columns) tile of derivatives: the per-unit statistics are computed
#: tile by tile so that their many elementwise passes run in cache, not in main memory
TILE_ELEMENTS = 1 << 16


def unit_statistics(
    family: ExponentialFamily,
    h: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    draws: torch.Tensor,
    data_residual: torch.Tensor | None,
    draw_chunk: int,
) -> dict[str, torch.Tensor]:
    """Per-input values of every quantity for direction vectors ``u``, ``w`` of shape
    ``(n, T, K)`` (any floating type; computed in float64), each ``(n, K)`` (before the sum over
    inputs; keys of :data:`SUM_DEGREES`).

    ``I = uᵀIu``, ``v1 = Var[(u·ε)²]``, ``v2 = wᵀIw``, ``c12 = −E[(u·ε)²(w·ε)]`` ([B] Lemma 3.1,
    theory §3) and, over the draws ``ε_m``, the sums of ``(u·ε_m)²`` (Î1) and ``uᵀIu − w·ε_m``
    (Î2) (theory §2). With M ≥ 2 draws also the within-input sums of squares and products of
    the draws around their per-input mean (``*_within``), the Monte Carlo counterparts of
    ``v1``, ``v2``, ``c12``: they are formed from the draws' deviations from ``uᵀIu`` (whose
    expectation is 0), ``Σ (X − X̄)² = Σ (X − I)² − (Σ (X − I))²/M``, free of cancellation.
    """
    n, width, columns = u.shape
    both = u.new_empty(n, width, 2 * columns, dtype=torch.float64)  # u and w side by side
    both[..., :columns] = u
    both[..., columns:] = w
    u, w = both[..., :columns], both[..., columns:]
    fisher, fourth, quadratic_w, third = family.contractions(h, u, w)
    per_unit = {
        "fisher": fisher,
        "fisher_sq": fisher**2,
        "v1": fourth,
        "v2": quadratic_w,
        "c12": -third,
    }
    samples = draws.shape[1]
    within = samples >= 2
    deviation1 = torch.zeros_like(fisher)  # Σ_m ((u·ε_m)² − I)
    deviation2 = torch.zeros_like(fisher)  # Σ_m (−w·ε_m)
    if within:
        square1, square2, cross = (torch.zeros_like(fisher) for _ in range(3))
    for start in range(0, samples, draw_chunk):
        eps = draws[:, start : start + draw_chunk]
        projected = torch.einsum("nmt,ntj->nmj", eps, both)  # u·ε and w·ε
        score_dev = projected[..., :columns] ** 2 - fisher[:, None, :]
        curvature_dev = -projected[..., columns:]
        deviation1 += score_dev.sum(1)
        deviation2 += curvature_dev.sum(1)
        if within:
            square1 += (score_dev**2).sum(1)
            square2 += (curvature_dev**2).sum(1)
            cross += (score_dev * curvature_dev).sum(1)
    per_unit["i1"] = deviation1 + samples * fisher
    per_unit["i2"] = deviation2 + samples * fisher
    if within:
        per_unit["i1_within"] = (square1 - deviation1**2 / samples).clamp_min(0.0)
        per_unit["i2_within"] = (square2 - deviation2**2 / samples).clamp_min(0.0)
        per_unit["i12_within"] = cross - deviation1 * deviation2 / samples
    if data_residual is not None:
        per_unit["empirical"] = torch.einsum("nt,ntj->nj", data_residual, u) ** 2
    return per_unit


def fisher_sum(family: ExponentialFamily, h: torch.Tensor, block: ParameterDerivatives) -> torch.Tensor:
    """``Σ_x I(θ_i|x) = Σ_x u_iᵀ I(h) u_i`` over the chunk's inputs, of the parameter's shape:
    the exact diagonal Fisher alone (theory §2–§3; ``w`` is not needed)."""
    key = ("fisher_sum", id(h))
    cache = block.shared if block.shared is not None else {}
    if key not in cache:  # a Linear's weight and bias share u
        u = block.first
        per_unit = u.new_empty(u.shape[0], u.shape[2], dtype=torch.float64)
        for rows, cols in _tiles(*u.shape):
            per_unit[rows, cols] = family.quadratic(h[rows], u[rows, :, cols].to(torch.float64))
        for old in [k for k in cache if isinstance(k, tuple) and k[0] == "fisher_sum"]:
            del cache[old]
        cache[key] = per_unit
    return block.reduce(cache[key], SUM_DEGREES["fisher"])


def bound_norms(
    u: torch.Tensor, w: torch.Tensor, coefficients: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-input ``‖·‖^p · c(x)`` of every bound of :data:`BOUND_TERMS` that applies, ``(n, K)``
    each, keyed ``bound:<name>`` ([B] Thm 4.1, Cor 4.2, Prop 4.3, Thm 5.2, Lemma 4.8)."""
    norms = {"u2": (u**2).sum(1)}
    norms["u4"] = norms["u2"] ** 2
    norms["w2"] = (w**2).sum(1)
    return {f"bound:{term.name}": norms[term.norm] * coefficients[term.name][:, None]
            for term in BOUND_TERMS if term.name in coefficients}


def _degree(key: str) -> int:
    if key.startswith("bound:"):
        return NORM_DEGREES[_BOUND_NORM[key[len("bound:"):]]]
    return SUM_DEGREES[key]


_BOUND_NORM = {term.name: term.norm for term in BOUND_TERMS}


def _tiles(n: int, width: int, columns: int):
    """Row and column slices of tiles of about :data:`TILE_ELEMENTS` elements."""
    per_row = width * columns
    if per_row <= TILE_ELEMENTS:
        rows, step = max(1, TILE_ELEMENTS // per_row), columns
    else:
        rows, step = 1, max(1, TILE_ELEMENTS // width)
    for r in range(0, n, rows):
        for c in range(0, columns, step):
            yield slice(r, min(n, r + rows)), slice(c, min(columns, c + step))


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

    The per-input values (:func:`unit_statistics`, :func:`bound_norms`) are computed tile by
    tile, gathered by their degree in the layer input and summed over inputs with one matrix
    product per degree (:meth:`ParameterDerivatives.reduce_many`). Blocks that share their
    ``first``/``second`` tensors and a ``shared`` cache (a ``Linear`` weight and its bias)
    compute the per-input values once.

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
    key = ("unit_statistics", id(h), id(draws), id(data_residual), id(coefficients))
    cache = block.shared if block.shared is not None else {}
    if key not in cache:
        for old in [k for k in cache if isinstance(k, tuple) and k[0] == "unit_statistics"]:
            del cache[old]  # another chunk's values
        cache[key] = _unit_values(family, h, block.first, block.second, draws, data_residual,
                                  coefficients, draw_chunk)
    names, values = cache[key]
    sums: dict[str, torch.Tensor] = {}
    for degree, table in values.items():
        reduced = block.reduce_many(table, len(names[degree]), degree)
        sums.update(zip(names[degree], reduced, strict=True))
    # within-chunk centred second moment of I(θ_i|x), for a stable input variance (Chan et al.)
    count = h.shape[0]
    sums["fisher_m2"] = sums["fisher_sq"] - sums["fisher"] ** 2 / count
    return sums


def _unit_values(family, h, u, w, draws, data_residual, coefficients, draw_chunk):
    """Every per-input value, as one ``(n, k·K)`` table per degree (``k`` quantities side by
    side, each ``K`` columns wide), with the quantity names of each table."""
    n, width, columns = u.shape
    names: dict[int, list[str]] = {}
    values: dict[int, torch.Tensor] = {}
    for rows, cols in _tiles(n, width, columns):
        tile_u, tile_w = u[rows, :, cols], w[rows, :, cols]
        stats = unit_statistics(family, h[rows], tile_u, tile_w, draws[rows],
                                None if data_residual is None else data_residual[rows], draw_chunk)
        if coefficients:
            stats.update(bound_norms(tile_u.to(torch.float64), tile_w.to(torch.float64),
                                     {k: c[rows] for k, c in coefficients.items()}))
        if not names:
            for quantity in stats:
                names.setdefault(_degree(quantity), []).append(quantity)
            values = {degree: u.new_empty(n, len(keys), columns, dtype=torch.float64)
                      for degree, keys in names.items()}
        for degree, keys in names.items():
            target = values[degree][rows, :, cols]
            for index, quantity in enumerate(keys):
                target[:, index] = stats[quantity]
    return names, values
