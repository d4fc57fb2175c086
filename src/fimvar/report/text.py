"""The terminal report: one row per layer, readable at 80 columns."""

from __future__ import annotations

import math
import textwrap

from fimvar.estimators.design import DEFAULT_TARGET, ESTIMATORS, LABELS, Design, Target
from fimvar.report.summary import COLUMNS as C
from fimvar.report.summary import SAMPLED_COLUMNS, group_rows
from fimvar.results.diagonal import DiagonalResult
from fimvar.results.plan import Plan, make_plan
from fimvar.results.presentation import presents
from fimvar.results.sampled import SampledResult

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
    return f"{value:,}" if value < 1e7 else f"{value:.1e}"


def _times(value: float | None) -> str:
    """A relative standard deviation as a multiple of the Fisher: ``13.9×``, ``0.52×``, ``0``."""
    text = _ratio(value)
    return text if text in ("—", "0") else text + "×"


def _percent(value: float | None) -> str:
    """A relative error in percent: ``6.4%``, ``0.52%``, ``1.2e+03%``."""
    if value is None or not math.isfinite(value):
        return "—"
    pct = 100 * value
    if pct == 0:
        return "0%"
    if pct >= 1000:
        return f"{pct:.1e}%"
    return f"{pct:.2g}%" if pct < 10 else f"{pct:.0f}%"


def _name(text: str, width: int) -> str:
    """A layer's name in fewer than ``width`` characters: the last words of its description
    (the kernel size, …) go first, then the end is cut with ``…``."""
    words = text.split(" ")
    while len(" ".join(words)) >= width and len(words) > 2:
        words = words[:-1]
    text = " ".join(words)
    if len(text) < width:
        return text
    if len(words[0]) >= width - 4:  # a long module path (transformer.h.0.attn.c_attn): its end tells
        return "…" + words[0][-(width - 2):]
    return text[: width - 2] + "…"


@presents(DiagonalResult, "table")
def layer_table(result: DiagonalResult, target: Target = DEFAULT_TARGET,
                rows: list[dict] | None = None) -> str:
    """Per-layer table of the estimators' noise (80 columns; the column names of docs/usage.md):
    Fisher, std of one draw of Î1 and Î2, relative std (a multiple of the Fisher), the input
    noise's share of the better estimator's variance and the better estimator."""
    rows = rows if rows is not None else group_rows(result, make_plan(result, target))
    header = (f"{C['layer']:<15}{C['fisher']:>8}{C['std_i1']:>8}{C['std_i2']:>8}{C['relative_std_i1']:>11}"
              f"{C['relative_std_i2']:>11}{'input noise':>12}{C['better']:>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        share = row["input_noise_share_i1" if row["better"] == "i1" else "input_noise_share_i2"]
        lines.append(
            f"{_name(row['layer'], 15):<15}{_sci(row['fisher']):>8}{_sci(row['std_i1']):>8}"
            f"{_sci(row['std_i2']):>8}{_times(row['relative_std_i1']):>11}{_times(row['relative_std_i2']):>11}"
            f"{'—' if share is None else f'{100 * share:.0f}%':>12}{LABELS[row['better']]:>7}"
        )
    legend = (
        f"Fisher: mean diagonal Fisher of the layer. std Î1, std Î2: std of one draw (one input, one "
        f"sampled label); rel std: std / Fisher (13.9× = 13.9 times the Fisher). input noise: share of "
        f"the better estimator's variance due to the inputs with M={result.samples} draws. better: the "
        f"estimator with the lower variance. α* and the bounds' tightness: report.html."
    )
    if not result.second_order:
        legend += (" A first-order analysis (second_order=False): Î2 and its variance were not "
                   "computed (—), and Î1 is the only sampled estimator.")
    estimated = sum(1 for quantities in result.estimated.values() if "v2" in quantities)
    if estimated:
        legend += (f" Estimated, not exact: std Î2, rel std Î2 and better rest on v2 estimated by "
                   f"Hutchinson probes for {estimated} of {len(result.fisher)} parameter tensors "
                   f"(docs/theory.md §14.1), each with a standard error (result.standard_errors, "
                   f"report.html).")
    lines.extend(textwrap.wrap(legend, WIDTH))
    return "\n".join(lines)


def accuracy_table(plan: Plan, estimator: str = "exact") -> str:
    """The answer first (80 columns): per layer, the estimate's norm, its standard error and
    relative error with the run's N (and M), the error reached with probability 1 − δ, the
    inputs the target needs and whether the data set has them."""
    what = ("r.fisher (exact over the labels, an average over the inputs)" if estimator == "exact"
            else f"{LABELS[estimator]} with M={plan.samples} draws")
    title = (f"Accuracy of {what} with N={plan.inputs:,} inputs, per layer; target: relative error "
             f"≤ {plan.rho:g} with probability ≥ {1 - plan.delta:g}")
    confidence = f"{C['error_at_confidence']}{100 * (1 - plan.delta):g}%"
    header = (f"{C['layer']:<15}{C['fisher_norm']:>9}{C['standard_error']:>10}{C['relative_error']:>10}"
              f"{confidence:>11}{C['inputs_needed']:>10}{C['enough']:>15}")
    lines = textwrap.wrap(title, WIDTH) + [header, "-" * len(header)]
    for g in plan.groups:
        a = g.accuracy[estimator]
        enough = ("—" if a.inputs_needed is None else
                  "yes" if a.enough else f"no (has {_count(a.available)})")
        lines.append(f"{_name(plan.name(g.group), 15):<15}{_sci(a.fisher_norm):>9}"
                     f"{_sci(a.standard_error):>10}"
                     f"{_percent(a.relative_error):>10}{_percent(a.error_at_confidence):>11}"
                     f"{_count(a.inputs_needed):>10}{enough:>15}")
    lines.extend(textwrap.wrap(sample_size_rule(plan), WIDTH))
    return "\n".join(lines)


def sample_size_rule(plan: Plan) -> str:
    """The one sample-size rule behind every number of inputs fimvar shows, in one sentence."""
    return (f"‖Fisher‖: ‖I‖₂ over the layer; std error: sqrt(Σ Var), Var = (Var_x I(θ|x) + v/M)/N; rel "
            f"error = std error / ‖Fisher‖ (RMS); {f'err @{100 * (1 - plan.delta):g}%'} = z · rel error, "
            f"z = z_{{1−δ/2}} = {plan.z:.3g}: with probability ≥ {1 - plan.delta:g} the error is below it "
            f"(normal approximation). N needed = ⌈z² (a + b/M) / (ρ² ‖I‖²)⌉ with a = Σ Var_x I(θ|x), "
            f"b = Σ v (0 for r.fisher): the rule of every sample size in fimvar's tables, plan and "
            f"figures (Chebyshev, in the plan, replaces z² = {plan.z ** 2:.3g} by 1/δ = "
            f"{1 / plan.delta:.3g}).")


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
    parts = [textwrap.fill(title, WIDTH), "", accuracy_table(plan), "", layer_table(result, target, rows), "",
             plan_table(plan, accuracy=False), "", bounds_line(result)]
    return "\n".join(parts)


@presents(Plan, "table")
def plan_table(plan: Plan, detailed: bool = False, accuracy: bool = True) -> str:
    """Text (80 columns): with ``accuracy``, first :func:`accuracy_table` (how accurate the run
    is, and whether the data set is big enough), then the cheapest design per group, normal
    approximation and Chebyshev; ``detailed`` lists every estimator."""
    title = (f"Cheapest design: ‖Î−I‖/‖I‖ ≤ {plan.rho:g} per layer, probability ≥ {1 - plan.delta:g} "
             f"(N×M: inputs × draws; cost: backward passes)")
    header = (f"{'layer':<16}{'estimator':>9}{'normal: N×M':>15}{'cost':>9}"
              f"{'Chebyshev: N×M':>18}{'cost':>9}")
    held = plan.groups[0].accuracy if plan.groups else {}
    primary = "exact" if "exact" in held or not held else next(iter(held))  # a sampled plan: Î1
    lines = ([accuracy_table(plan, primary), ""] if accuracy else []) + textwrap.wrap(title, WIDTH) \
        + [header, "-" * len(header)]
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
            lines.append(f"{_name(plan.name(g.group), 16):<16}{'—':>9}  ({why})")
            continue
        for i, e in enumerate(estimators):
            normal, cheb = g.get(e, "normal"), g.get(e, "chebyshev")
            mark = "*" if detailed and best is not None and e == best.estimator else ""
            name = _name(plan.name(g.group), 16) if i == 0 else ""
            lines.append(f"{name:<16}{LABELS[e] + mark:>9}{_plan_design(normal):>15}"
                         f"{_plan_cost(normal):>9}{_plan_design(cheb):>18}{_plan_cost(cheb):>9}")
    if detailed:
        lines.append("* cheapest (normal approximation)")
    for note in plan.notes:
        lines.extend(textwrap.wrap(f"note: {note}", WIDTH, subsequent_indent="  "))
    return "\n".join(lines)


def _plan_count(value: float | int | None) -> str:
    """Compact count: ``1234``, ``1.2e+06``; ``?`` when unknown."""
    if value is None:
        return "?"
    if value < 1e6:
        return f"{round(value):,}"
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


def sampled_layer_table(result: SampledResult, rows: list[dict]) -> str:
    """Per-layer table of a sampled analysis (80 columns): the mean and the sum of Î1, the std of
    one draw (absolute and relative) and the inputs' share of Î1's variance."""
    S = SAMPLED_COLUMNS
    header = (f"{S['layer']:<22}{S['parameters']:>11}{S['i1']:>9}{S['trace_i1']:>9}{S['std_i1']:>9}"
              f"{S['relative_std_i1']:>11}{'input noise':>12}")
    lines = [header, "-" * len(header)]
    for row in rows:
        share = row["input_noise_share_i1"]
        lines.append(f"{_name(row['layer'], 22):<22}{_count(row['parameters']):>11}{_sci(row['i1']):>9}"
                     f"{_sci(row['trace_i1']):>9}{_sci(row['std_i1']):>9}{_times(row['relative_std_i1']):>11}"
                     f"{'—' if share is None else f'{100 * share:.0f}%':>12}")
    legend = (f"Î1: mean over the layer's parameters of the sampled Fisher; Σ Î1: its sum, the estimate of "
              f"the layer's Fisher trace. std Î1: std of one draw (one sequence, one sampled label per "
              f"position); rel std: std / Î1. input noise: share of Î1's variance due to the sequences with "
              f"M={result.samples} draws, Var_x I / (Var_x I + v1/M); the label noise has the rest.")
    lines.extend(textwrap.wrap(legend, WIDTH))
    return "\n".join(lines)


@presents(SampledResult, "table")
def sampled_report_text(result: SampledResult, target: Target = DEFAULT_TARGET,
                        plan: Plan | None = None) -> str:
    """The terminal report of a sampled analysis: title, accuracy of Î1 with the run's N and M,
    the per-layer table, the plan of Î1."""
    plan = plan or make_plan(result, target)
    rows = result.group_summary(plan=plan, include_model=True)
    precision = result.metadata.get("precision")
    title = (f"Sampled Fisher information (Î1, docs/theory.md §17) of "
             f"{sum(math.prod(s) for s in result.shapes.values()):,} parameters, family {result.family}, "
             f"N={result.num_inputs:,} inputs × M={result.samples} sampled labels"
             + (f", model in {precision}" if precision else ""))
    parts = [textwrap.fill(title, WIDTH), "", accuracy_table(plan, "i1"), "",
             sampled_layer_table(result, rows), "", plan_table(plan, accuracy=False)]
    if result.i2:
        parts += ["", textwrap.fill(_i2_line(result), WIDTH)]
    return "\n".join(parts)


def _i2_line(result: SampledResult) -> str:
    """Î2 by Hutchinson probes (docs/theory.md §17.5) against Î1: both means and variances summed
    over every parameter, each variance with its standard error where 2 pairs of inputs give one."""
    def variance(estimator: str) -> str:
        value = sum(float(v.sum()) for v in result.variance(estimator).values())
        spreads = result.spreads_i2 if estimator == "i2" else result.spreads
        if spreads is None or spreads.pairs < 2:
            return f"{value:.3g}"
        return f"{value:.3g} ± {result.estimate('variance', estimator=estimator)[1]:.2g}"

    trace = {e: sum(float(v.sum()) for v in getattr(result, e).values()) for e in ("i1", "i2")}
    return (f"Î2 (one Hutchinson probe of the Hessian per draw, docs/theory.md §17.5): Σ Î2 = "
            f"{trace['i2']:.4g} (Σ Î1 = {trace['i1']:.4g}); Σ Var(Î2) = {variance('i2')} against "
            f"Σ Var(Î1) = {variance('i1')} at this run's N × M.")
