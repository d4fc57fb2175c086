"""Per-chunk sums of every per-parameter quantity of the diagonal analysis (docs/theory.md
§2–§3; the engines only differentiate, this module applies the estimators' mathematics).

For one input ``x`` and one parameter ``θ_i`` with output derivatives ``u_i``, ``w_i``:

    I(θ_i|x)  = u_iᵀ I u_i                                   (Fisher, exact)
    v1        = Var[(u_i·ε)²]                                ([B] Lemma 3.1)
    v2        = w_iᵀ I w_i                                   ([B] Lemma 3.1)
    c12       = Cov[(u_i·ε)², u_iᵀIu_i − w_i·ε] = −E[(u_i·ε)²(w_i·ε)]     (derived, §3.1)
    Î1 draw   = (u_i·ε_m)²           Î2 draw = u_iᵀ I u_i − w_i·ε_m      (§2)

Every statistic is homogeneous in the layer input ``a`` of a factored parameter (degree 2 or 4,
docs/theory.md §9), which is what lets :meth:`ParameterDerivatives.reduce` turn the sum over
inputs into one GEMM.

Where the engine gives probes instead of ``w`` (``block.curvature``: two Hutchinson estimates
``g, g'`` of ``w_i·ε_m`` per draw, docs/theory.md §14.1), the terms with ``w`` are their unbiased
estimates: ``v2 ≈ mean_m g g'``, ``c12 ≈ −mean_m (u_i·ε_m)² (g + g')/2``, Î2 draw
``≈ u_iᵀIu_i − (g + g')/2``; their spread over the draws (``*_probe_within``) and over the inputs
gives their standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fimvar.engine.base import ParameterDerivatives
from fimvar.estimators.bounds.spectrum import NORM_DEGREES, BoundTerm, bound_norms
from fimvar.estimators.tiling import tiles
from fimvar.families import ExponentialFamily
from fimvar.families.positions import Positions

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
    "v1_token": 4,  # per-position outputs only: the label variance of per-token squares
    # probe estimates (block.curvature; plain layout only): Σ_m (e_m − ē)² per input
    "v2_probe_within": 8,
    "c12_probe_within": 8,
}

#: the estimated quantities of a block with probes, and the sums of their spread
PROBED = ("v2", "c12", "i2")
PROBE_SPREAD = {"v2": "v2_probe_within", "c12": "c12_probe_within"}


def unit_statistics(
    family: ExponentialFamily,
    h: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor | None,
    draws: torch.Tensor,
    data_residual: torch.Tensor | None,
    draw_chunk: int,
    curvature: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-input values of every quantity for direction vectors ``u``, ``w`` of shape
    ``(n, T, K)`` (any floating type; computed in float64), each ``(n, K)`` (before the sum over
    inputs; keys of :data:`SUM_DEGREES`).

    ``I = uᵀIu``, ``v1 = Var[(u·ε)²]`` (and, for per-position outputs, ``v1_token``, that of the
    per-token squares, docs/theory.md §13.1), ``v2 = wᵀIw``, ``c12 = −E[(u·ε)²(w·ε)]`` ([B] Lemma 3.1,
    docs/theory.md §3) and, over the draws ``ε_m``, the sums of ``(u·ε_m)²`` (Î1) and ``uᵀIu − w·ε_m``
    (Î2) (docs/theory.md §2). With M ≥ 2 draws also the within-input sums of squares and products of
    the draws around their per-input mean (``*_within``), the Monte Carlo counterparts of
    ``v1``, ``v2``, ``c12``: they are formed from the draws' deviations from ``uᵀIu`` (whose
    expectation is 0), ``Σ (X − X̄)² = Σ (X − I)² − (Σ (X − I))²/M``, free of cancellation.

    With ``curvature`` (``(n, M, 2, K)``: two independent estimates of ``w·ε_m`` per draw, whose
    product has the expectation ``(w·ε_m)²``) every term with ``w`` is replaced by its unbiased
    estimate (module docs), ``w`` is not used, and ``*_probe_within`` holds the spread of the
    per-draw estimates of ``v2`` and ``c12`` around their per-input mean; the ``i2`` and
    ``i12`` draw moments are then left out (they would include the probes' variance).

    With neither ``w`` nor ``curvature`` (a first-order analysis, ``analyze(...,
    second_order=False)``) only the quantities of ``u`` are formed: ``fisher``, ``v1``, ``i1``,
    ``i1_within``, ``empirical`` (and ``v1_token``).
    """
    n, width, columns = u.shape
    probed = curvature is not None
    first_only = w is None and not probed
    if probed or first_only:  # no w: the terms with w come from the probes below, or are not formed
        both = u = u.to(torch.float64)
        fisher, fourth = family.first_order(h, both)
        per_unit = {"fisher": fisher, "v1": fourth}
    else:
        both = u.new_empty(n, width, 2 * columns, dtype=torch.float64)  # u and w side by side
        both[..., :columns] = u
        both[..., columns:] = w
        u, w = both[..., :columns], both[..., columns:]
        fisher, fourth, quadratic_w, third = family.contractions(h, u, w)
        per_unit = {
            "fisher": fisher,
            "v1": fourth,
            "v2": quadratic_w,
            "c12": -third,
        }
    if isinstance(family, Positions):
        per_unit["v1_token"] = family.token_fourth_variance(h, u)
    samples = draws.shape[1]
    within = samples >= 2
    deviation1 = torch.zeros_like(fisher)  # Σ_m ((u·ε_m)² − I)
    deviation2 = torch.zeros_like(fisher)  # Σ_m (−w·ε_m)
    if within:
        square1, square2, cross = (torch.zeros_like(fisher) for _ in range(3))
    if probed:
        estimates = {"v2": [], "c12": []}  # per-draw estimates, (n, m', K) each
    for start in range(0, samples, draw_chunk):
        eps = draws[:, start : start + draw_chunk]
        projected = torch.bmm(eps, both)  # u·ε and w·ε (u·ε alone with probes), (n, m, ·)
        score = projected[..., :columns] ** 2
        score_dev = score - fisher[:, None, :]
        deviation1 += score_dev.sum(1)
        if within:
            square1 += (score_dev**2).sum(1)
        if first_only:
            continue
        if probed:  # E[g g'] = (w·ε)², E[(g + g')/2] = w·ε
            g = curvature[:, start : start + draw_chunk].to(torch.float64)
            mean_g = (g[:, :, 0] + g[:, :, 1]) / 2
            curvature_dev = -mean_g
            estimates["v2"].append(g[:, :, 0] * g[:, :, 1])
            estimates["c12"].append(-score * mean_g)
        else:
            curvature_dev = -projected[..., columns:]
        deviation2 += curvature_dev.sum(1)
        if within and not probed:
            square2 += (curvature_dev**2).sum(1)
            cross += (score_dev * curvature_dev).sum(1)
    per_unit["i1"] = deviation1 + samples * fisher
    if not first_only:
        per_unit["i2"] = deviation2 + samples * fisher
    if within:
        per_unit["i1_within"] = (square1 - deviation1**2 / samples).clamp_min(0.0)
        if not probed and not first_only:
            per_unit["i2_within"] = (square2 - deviation2**2 / samples).clamp_min(0.0)
            per_unit["i12_within"] = cross - deviation1 * deviation2 / samples
    if probed:
        for quantity, parts in estimates.items():
            values = torch.cat(parts, 1)
            mean = values.mean(1)
            per_unit[quantity] = mean
            per_unit[PROBE_SPREAD[quantity]] = ((values - mean[:, None]) ** 2).sum(1)
    if data_residual is not None:
        per_unit["empirical"] = torch.bmm(data_residual[:, None, :], u)[:, 0] ** 2
    per_unit["fisher_sq"] = fisher**2
    return per_unit


@dataclass
class BlockSums:
    """Sums over a chunk's inputs for one parameter tensor, each of the parameter's shape:
    ``quantities`` (keys of :data:`SUM_DEGREES`) and ``bounds`` (per bound record)."""

    quantities: dict[str, torch.Tensor]
    bounds: dict[BoundTerm, torch.Tensor] = field(default_factory=dict)


#: elements of one tile of :func:`fisher_sum` for blocks of more than FISHER_WIDE_COLUMNS columns
#: (a ResNet's convolutions: the per-tile overhead dominates cache-sized tiles there)
FISHER_TILE_ELEMENTS = 1 << 20
FISHER_WIDE_COLUMNS = 1 << 16
#: elements of one tile of the per-input statistics (:func:`_unit_values`) for blocks of more than
#: FISHER_WIDE_COLUMNS columns: ResNet-18's analysis took 20 % less time than with cache-sized tiles
UNIT_TILE_ELEMENTS_WIDE = 1 << 18


def fisher_sum(family: ExponentialFamily, h: torch.Tensor, block: ParameterDerivatives) -> torch.Tensor:
    """``Σ_x I(θ_i|x) = Σ_x u_iᵀ I(h) u_i`` over the chunk's inputs, of the parameter's shape:
    the exact diagonal Fisher alone (docs/theory.md §2–§3; ``w`` is not needed)."""
    cache = block.shared
    if "fisher_sum" not in cache:  # a Linear's weight and bias share u
        u = block.first
        per_unit = u.new_empty(u.shape[0], u.shape[2], dtype=torch.float64)
        # one light pass (uᵀIu): tiles larger than those of the many-pass statistics, so that the
        # per-tile overhead stays small next to the work for millions of columns
        wide = u.shape[2] > FISHER_WIDE_COLUMNS  # cache-sized tiles measured faster below
        for rows, cols in tiles(*u.shape, **({"elements": FISHER_TILE_ELEMENTS} if wide else {})):
            per_unit[rows, cols] = family.quadratic(h[rows], u[rows, :, cols].to(torch.float64))
        cache["fisher_sum"] = per_unit
    return block.reduce(cache["fisher_sum"], SUM_DEGREES["fisher"])


def block_sums(
    family: ExponentialFamily,
    h: torch.Tensor,
    block: ParameterDerivatives,
    draws: torch.Tensor,
    data_residual: torch.Tensor | None,
    coefficients: dict[BoundTerm, torch.Tensor] | None,
    draw_chunk: int,
    second_order: bool = True,
) -> BlockSums:
    """Sums over the chunk's inputs of every per-parameter quantity for one parameter tensor.

    The per-input values (:func:`unit_statistics`, :func:`~fimvar.estimators.bounds.spectrum.bound_norms`)
    are computed tile by tile, gathered by their degree in the layer input and summed over
    inputs with one matrix product per degree (:meth:`ParameterDerivatives.reduce_many`).
    Blocks that share their ``first``/``second`` tensors and a ``shared`` cache (a ``Linear``
    weight and its bias, within one chunk) compute the per-input values once.

    Args:
        family: the output distribution.
        h: outputs ``(n, T)``.
        block: the parameter's derivatives.
        draws: ``ε`` of the sampled labels, ``(n, M, T)``.
        data_residual: ``t(ŷ) − η`` of the data labels ``(n, T)``, or ``None``.
        coefficients: per-input bound factors (:func:`~fimvar.estimators.bounds.spectrum.bound_coefficients`),
            or ``None``.
        draw_chunk: how many draws to contract at once (memory).
        second_order: form the quantities of ``w`` (``v2``, ``c12``, ``i2`` and their draw
            moments); ``False``: those of ``u`` alone (:func:`unit_statistics`).

    Returns:
        The :class:`BlockSums`; ``quantities`` also holds ``fisher_m2``, the chunk's centred sum
        of squares of ``I(θ_i|x)`` (for the input variance, docs/theory.md §12), and for a block
        with probes ``v2_m2``, ``c12_m2``, those of the per-input estimates of ``v2``, ``c12``.
    """
    cache = block.shared
    coefficients, same_as = distinct_coefficients(coefficients)
    if "unit_statistics" not in cache:
        cache["unit_statistics"] = _unit_values(family, h, block.first, block.second, draws,
                                                data_residual, coefficients, draw_chunk,
                                                block.curvature, second_order)
    names, values = cache["unit_statistics"]
    reduced: dict = {}
    for degree, table in values.items():
        reduced.update(zip(names[degree], block.reduce_many(table, len(names[degree]), degree),
                           strict=True))
    quantities = {k: v for k, v in reduced.items() if isinstance(k, str)}
    per_input = values[SUM_DEGREES["fisher"]][:, names[SUM_DEGREES["fisher"]].index("fisher")]
    quantities["fisher_m2"] = centred_fisher_squares(block, per_input, quantities["fisher"],
                                                     quantities["fisher_sq"])
    if block.curvature is not None:  # spread of the probe estimates over the inputs (plain layout)
        for quantity in PROBE_SPREAD:
            degree = SUM_DEGREES[quantity]
            estimate = values[degree][:, names[degree].index(quantity)]
            quantities[f"{quantity}_m2"] = ((estimate - estimate.mean(0)) ** 2).sum(0).reshape(block.shape)
    bounds = {k: v for k, v in reduced.items() if isinstance(k, BoundTerm)}
    for term, original in same_as.items():
        bounds[term] = torch.zeros(block.shape, dtype=torch.float64, device=h.device) if original is None \
            else bounds[original]
    return BlockSums(quantities, bounds)


#: elements of one tile of :func:`streamed_block_sums` (all inputs, all columns, a slice of entries)
STREAMED_TILE_ELEMENTS = 1 << 19
#: the per-input quantities of :func:`streamed_block_sums` whose centred sums of squares over
#: the inputs are kept (``<q>_m2``: the input variance, the standard errors of single-draw probes)
CENTRED = ("fisher", *PROBE_SPREAD)


def streamed_block_sums(family: ExponentialFamily, h: torch.Tensor, block: ParameterDerivatives,
                        draws: torch.Tensor, data_residual: torch.Tensor | None) -> BlockSums:
    """:func:`block_sums` without bounds of a plain block with probes (``block.curvature``,
    ``(n, M, 2, K)``; ``None`` in a first-order analysis: the quantities of ``u`` alone), in
    tiles of entries that hold every input of the chunk (docs/theory.md §14.3): each tile's
    per-input values (:func:`unit_statistics`, in float64) are summed over the inputs at once,
    with the centred sums of squares of :data:`CENTRED` by two passes."""
    n, width, columns = block.first.shape
    sums: dict[str, torch.Tensor] = {}
    step = max(1, STREAMED_TILE_ELEMENTS // (n * width))
    for start in range(0, columns, step):
        cols = slice(start, min(columns, start + step))
        curvature = None if block.curvature is None else block.curvature[..., cols]
        stats = unit_statistics(family, h, block.first[:, :, cols], None, draws, data_residual,
                                draws.shape[1], curvature)
        stats.pop("fisher_sq")  # a plain block's input variance comes from fisher_m2 below
        for quantity, values in stats.items():
            if quantity not in sums:
                sums[quantity] = values.new_empty(columns)
                if quantity in CENTRED:
                    sums[f"{quantity}_m2"] = values.new_empty(columns)
            sums[quantity][cols] = values.sum(0)
            if quantity in CENTRED:
                sums[f"{quantity}_m2"][cols] = ((values - sums[quantity][cols] / n) ** 2).sum(0)
    return BlockSums({quantity: value.reshape(block.shape) for quantity, value in sums.items()})


def distinct_coefficients(coefficients: dict[BoundTerm, torch.Tensor] | None
                          ) -> tuple[dict[BoundTerm, torch.Tensor] | None, dict[BoundTerm, BoundTerm | None]]:
    """The bound records whose sums have to be formed, and for the others the record whose sum
    they equal (``None``: zero). A coefficient that is exactly 0 for every input of the chunk (the
    lower bounds of the categorical family, whose ``λ_min(I) = λ̃_min(M) = 0``) has the sum 0, and
    a record with the same norm and the same coefficients as an earlier one has its sum: each
    would otherwise cost one more float64 GEMM over the parameter's entries."""
    if not coefficients:
        return coefficients, {}
    kept: dict[BoundTerm, torch.Tensor] = {}
    same_as: dict[BoundTerm, BoundTerm | None] = {}
    for term, value in coefficients.items():
        if not bool(value.any()):
            same_as[term] = None
            continue
        twin = next((k for k, v in kept.items() if k.norm == term.norm and torch.equal(v, value)), None)
        if twin is None:
            kept[term] = value
        else:
            same_as[term] = twin
    return kept, same_as


#: relative accuracy below which the one-pass centred sum of squares is recomputed elementwise
M2_ACCURACY = 1e-8


def centred_fisher_squares(block: ParameterDerivatives, per_input: torch.Tensor, total: torch.Tensor,
                           total_sq: torch.Tensor) -> torch.Tensor:
    """``Σ_x (I(θ_i|x) − Ī)²`` over the chunk, accurate whatever the spread of the inputs
    (docs/theory.md §12).

    Plain blocks hold the per-input values ``I(θ_i|x)`` (``per_input``, ``(n, K)``): two passes.
    For a factored weight, ``I(θ_{j,m}|x) = q_j(x) a_m(x)²`` and the sums ``Σ I``, ``Σ I²`` come from
    matrix products; ``Σ I² − (Σ I)²/n`` is then exact up to ``≈ 4nε Σ I²`` (every term of the
    products is non-negative), which is accurate unless the inputs nearly coincide. Where that
    error could exceed :data:`M2_ACCURACY` of the result, the sum is recomputed from the values
    themselves, a tile of columns at a time (elementwise, a few GEMMs' worth of work).
    """
    n = per_input.shape[0]
    if block.inputs is None:
        mean = per_input.sum(0) / n
        return ((per_input - mean) ** 2).sum(0).reshape(block.shape)
    one_pass = total_sq - total**2 / n
    error = 4 * n * torch.finfo(torch.float64).eps * total_sq
    if bool((error <= M2_ACCURACY * one_pass).all()):
        return one_pass
    squares = block.input_power(2)  # (n, m)
    mean = total / n  # (J, m)
    out = torch.empty_like(one_pass)
    step = max(1, (1 << 22) // max(1, n * per_input.shape[1]))
    for start in range(0, squares.shape[1], step):
        cols = slice(start, start + step)
        values = per_input[:, :, None] * squares[:, None, cols]  # (n, J, m')
        out[:, cols] = ((values - mean[None, :, cols]) ** 2).sum(0)
    return out


def _degree(key: str | BoundTerm) -> int:
    return NORM_DEGREES[key.norm] if isinstance(key, BoundTerm) else SUM_DEGREES[key]


def _unit_values(family, h, u, w, draws, data_residual, coefficients, draw_chunk, curvature=None,
                 second_order=True):
    """Every per-input value, as one ``(n, k·K)`` table per degree (``k`` quantities side by
    side, each ``K`` columns wide), with the quantity (or bound record) of each table."""
    n, width, columns = u.shape
    names: dict[int, list] = {}
    values: dict[int, torch.Tensor] = {}
    wide = columns > FISHER_WIDE_COLUMNS  # a ResNet's convolutions: fewer, larger tiles
    for rows, cols in tiles(n, width, columns, **({"elements": UNIT_TILE_ELEMENTS_WIDE} if wide else {})):
        tile_u, tile_w = u[rows, :, cols], w[rows, :, cols]
        stats: dict = unit_statistics(family, h[rows], tile_u, tile_w if second_order else None, draws[rows],
                                      None if data_residual is None else data_residual[rows],
                                      draw_chunk,
                                      None if curvature is None else curvature[rows, :, :, cols])
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
