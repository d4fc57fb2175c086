"""The terminal report: one row per layer, readable at 80 columns."""

from __future__ import annotations

import math
import textwrap

from fimvar.estimators.design import DEFAULT_TARGET, ESTIMATORS, LABELS, Design, Target
from fimvar.report.summary import group_rows
from fimvar.results.diagonal import DiagonalResult
from fimvar.results.plan import Plan, make_plan
from fimvar.results.presentation import presents

WIDTH = 80


def _sci(value: float | None) -> str:
    """``4.8e-03`` style, ``0`` for zero, ``—`` for unknown."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    return f"{value:.1e}"


def _ratio(value: float | None) -> str:
    """A ratio in at most 6 characters: ``0.52``, ``15.5``, ``1e+04``."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    if value >= 1000:
        return f"{value:.0e}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _count(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value}" if value < 1e6 else f"{value:.1e}"


@presents(DiagonalResult, "table")
def layer_table(result: DiagonalResult, target: Target = DEFAULT_TARGET,
                rows: list[dict] | None = None) -> str:
    """Per-layer table: Fisher mean, per-draw std of Î1/Î2, relative std, input-noise share,
    winner, α*, tightness of [B] Thm 4.1's upper bound on V1, and inputs for ``rho`` at ``1−delta``."""
    rho, delta = target.rho, target.delta
    rows = rows if rows is not None else group_rows(result, make_plan(result, target))
    column = f"N@{rho * 100:g}%"
    header = (f"{'layer':<12}{'Fisher':>8}{'sd Î1':>8}{'sd Î2':>8}{'rel Î1':>7}{'rel Î2':>7}"
              f"{'input':>6}{'win':>4}{'α*':>6}{'UB/V1':>6}{column:>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["group"] if len(row["group"]) <= 11 else row["group"][:10] + "…"
        share = row["input_noise_share_i1" if row["better"] == "i1" else "input_noise_share_i2"]
        inputs = row["target"]["inputs"] if row.get("target") else None
        lines.append(
            f"{name:<12}{_sci(row['fisher']):>8}{_sci(row['std_i1']):>8}{_sci(row['std_i2']):>8}"
            f"{_ratio(row['relative_std_i1']):>7}{_ratio(row['relative_std_i2']):>7}"
            f"{'—' if share is None else f'{100 * share:.0f}%':>6}{LABELS[row['better']]:>4}"
            f"{_alpha(row['alpha_star']):>6}{_ratio(row['tightness'].get('thm4.1_v1_upper')):>6}"
            f"{_count(inputs):>8}"
        )
    legend = (
        f"Fisher: mean diagonal Fisher of the layer. sd Î1, sd Î2: std of one draw (one input, one "
        f"sampled label); rel: sd / Fisher. input: share of the winner's variance due to the inputs "
        f"with M={result.samples} draws. win: estimator with the lower variance. α*: weight of Î1 in "
        f"the minimum-variance combination. UB/V1: [B] Thm 4.1 upper bound / exact V1. {column}: "
        f"inputs for relative error ≤ {rho:g} with probability {1 - delta:g} (winner, M={result.samples}, "
        f"normal approximation)."
    )
    lines.extend(textwrap.wrap(legend, WIDTH))
    return "\n".join(lines)


def _alpha(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}"


def bounds_line(result) -> str:
    """One line: how many per-parameter and group bounds hold."""
    total = len(result.bounds) + len(result.group_bounds)
    if not total:
        return "bounds: not computed"
    failed = [n for n, b in result.bounds.items() if not b.holds()]
    failed += [n for n, b in result.group_bounds.items() if not b.holds()]
    if not failed:
        return f"bounds: all {total} bounds of [A]/[B] hold on every parameter and layer"
    return f"bounds: {total - len(failed)} of {total} hold; violated: {', '.join(failed)}"


def report_text(result: DiagonalResult, target: Target = DEFAULT_TARGET, plan: Plan | None = None) -> str:
    """The full terminal report: title, layer table, plan, bounds line."""
    plan = plan or make_plan(result, target)
    rows = group_rows(result, plan)
    title = (f"Fisher information of {sum(r['parameters'] for r in rows[:len(result.groups)])} "
             f"parameters, family {result.family}, N={result.num_inputs} inputs × M={result.samples} "
             f"sampled labels, engine {result.engine}")
    parts = [textwrap.fill(title, WIDTH), "", layer_table(result, target, rows), "",
             plan_table(plan), "", bounds_line(result)]
    return "\n".join(parts)


@presents(Plan, "table")
def plan_table(plan: Plan, detailed: bool = False) -> str:
    """Text table (80 columns): the recommended design per group, normal approximation and
    Chebyshev; ``detailed`` lists every estimator."""
    title = (f"Plan: ‖Î−I‖/‖I‖ ≤ {plan.rho:g} per layer, probability ≥ {1 - plan.delta:g} "
             f"(cost: backward passes)")
    header = (f"{'layer':<14}{'estimator':>9}{'normal: N×M':>15}{'cost':>9}"
              f"{'Chebyshev: N×M':>18}{'cost':>9}")
    lines = [title, header, "-" * len(header)]
    for g in plan.groups:
        if detailed:
            estimators = [e for e in ESTIMATORS if g.get(e) is not None]
            best = g.recommended()
        else:
            best = g.recommended()
            estimators = [best.estimator] if best is not None else []
        if not estimators:
            why = ("Fisher is 0: relative error undefined" if not g.terms.fisher_sq > 0 else
                   "no design: the target needs more than 2^63 inputs")
            lines.append(f"{_cut(g.group, 13):<14}{'—':>9}  ({why})")
            continue
        for i, e in enumerate(estimators):
            normal, cheb = g.get(e, "normal"), g.get(e, "chebyshev")
            mark = "*" if detailed and best is not None and e == best.estimator else ""
            name = _cut(g.group, 13) if i == 0 else ""
            lines.append(f"{name:<14}{LABELS[e] + mark:>9}{_plan_design(normal):>15}"
                         f"{_plan_cost(normal):>9}{_plan_design(cheb):>18}{_plan_cost(cheb):>9}")
    if detailed:
        lines.append("* cheapest (normal approximation)")
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _plan_count(value: float | int | None) -> str:
    """Compact count: ``1234``, ``1.2e+06``; ``?`` when unknown."""
    if value is None:
        return "?"
    if value < 1e5:
        return f"{round(value)}"
    return f"{value:.1e}"


def _plan_cost(d: Design | None) -> str:
    """The cost of a design; ``—`` when there is no design (``?`` when its cost is unknown)."""
    return "—" if d is None else _plan_count(d.cost)


def _plan_design(d: Design | None) -> str:
    if d is None:
        return "—"
    if d.estimator == "exact":
        return _plan_count(d.inputs)
    return f"{_plan_count(d.inputs)}×{d.draws}"
