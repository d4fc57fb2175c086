"""Figures of a result (matplotlib, no pyplot state; PNG and SVG).

- ``fisher_std``: per layer, the mean Fisher next to the per-draw standard deviations of Î1 and Î2
  and the input noise ``sqrt(Var_x I(θ|x))``, on a log scale (the layout of [B] Fig. 2);
- ``bound_tightness``: per layer, ``Σ bound / Σ exact`` of every upper bound of [B] (1 = tight);
- ``relative_std``: histogram over parameters of the relative per-draw std ``sqrt(v)/I``;
- ``sample_size``: inputs needed against the target relative error ρ (docs/theory.md §8.2).

A sampled analysis (:class:`~fimvar.SampledResult`) gets its own ``fisher_std`` (Î1, the std of one
draw, the input noise and Î1's standard error per layer) and ``sample_size`` (inputs Î1 needs
against ρ, and against the draws M). Full-matrix results get ``matrices`` (the Fisher and the
per-entry std of Î1 as heat maps), hidden-layer results ``hidden_units`` (per unit, the Fisher and
the estimate's std), weight-norm results ``weight_norms`` (each exact norm next to its bound of
[A]), estimator audits ``audit`` (per layer and estimator: relative bias, relative std at the
audited design, inputs for the target).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fimvar.errors import FimvarError
from fimvar.estimators.design import DEFAULT_TARGET, ESTIMATORS, LABELS, Target
from fimvar.results.audit import LABELS as AUDIT_LABELS
from fimvar.results.audit import AuditResult
from fimvar.results.diagonal import DiagonalResult
from fimvar.results.full import FullResult
from fimvar.results.groups import MODEL_GROUP
from fimvar.results.hidden import HiddenResult
from fimvar.results.presentation import presents
from fimvar.results.sampled import SampledResult
from fimvar.results.weight_norms import WeightNormResult

FIGURES = ("fisher_std", "bound_tightness", "relative_std", "sample_size")
FORMATS = ("png", "svg")
COLORS = {"fisher": "#222222", "i1": "#1f77b4", "i2": "#d95f02", "combined": "#1b9e77",
          "exact": "#7570b3", "input": "#999999", "mc": "#17becf", "gnb": "#e7298a",
          "empirical": "#8c564b", "ewc": "#d62728",
          "hutchinson": "#bcbd22", "token": "#9467bd"}
#: one marker per estimator of the audit figure (with :data:`COLORS`)
MARKERS = {"exact": "D", "i1": "^", "mc": "<", "i2": "v", "combined": "o", "gnb": "s",
           "empirical": "P", "ewc": "X", "hutchinson": "*", "token": ">"}
_STYLE = {"svg.hashsalt": "fimvar", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}


def _new(width: float = 7.0, height: float = 4.0, ncols: int = 1, right: float = 0.97, top: float = 0.91,
         bottom: float = 0.13):
    """A figure with fixed margins (a tight or constrained layout would cost a full extra draw)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    fig.subplots_adjust(left=0.1 if ncols == 1 else 0.08, right=right, bottom=bottom, top=top, wspace=0.28)
    return fig, axes


def _layers(result) -> list[str]:
    return list(result.groups)


def _layer_series(ax, x, layers: list[str], series: dict, markersize: int) -> tuple[float, list[str]]:
    """Draw ``{label: (color key, values per layer, marker)}`` side by side per layer on a log
    axis: values ≤ 0 as hollow markers at the floor. Returns the floor and what was drawn there."""
    floor = _positive_floor([v for _, values, _ in series.values() for v in values])
    zeros_drawn = []
    for offset, (label, (key, values, marker)) in zip(_offsets(len(series)), series.items(), strict=True):
        positive = [i for i, v in enumerate(values) if v > 0]
        ax.plot(x[positive] + offset, [values[i] for i in positive], marker=marker, linestyle="none",
                color=COLORS[key], label=label, markersize=markersize, gid=f"series:{key}")
        zeros = [i for i, v in enumerate(values) if v <= 0]
        if zeros:
            ax.plot(x[zeros] + offset, [floor] * len(zeros), marker=marker, linestyle="none",
                    markerfacecolor="white", color=COLORS[key], markersize=markersize, gid=f"zero:{key}")
            zeros_drawn += [f"{label} in {layers[i]}" for i in zeros]
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(floor / 10 ** 0.25, ax.get_ylim()[1])
    return floor, zeros_drawn


def _positive_floor(values: list[float]) -> float:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return min(positive) / 10 if positive else 1e-12


def _layer_ticks(ax, x, layers: list[str]) -> None:
    """Short layer ids under the ticks, rotated for many layers (the audit's own layout)."""
    crowded = len(layers) > 6
    ax.set_xticks(x, layers, rotation=30 if crowded else 0, ha="right" if crowded else "center")


def _named_ticks(ax, x, layers: list[str]) -> None:
    """Layer names under the ticks: on one line when they fit, else the id above the module
    type and shape (``0.0`` / ``Conv2d 1→4 3×3``), rotated for many layers (the bottom margin
    grows to hold them)."""
    fig = ax.get_figure()
    crowded = len(layers) > 6
    long = not crowded and sum(len(n) for n in layers) > 50
    names = [n.replace(" ", "\n", 2) if long else n for n in layers]
    ax.set_xticks(x, names, rotation=35 if crowded else 0, ha="right" if crowded else "center",
                  rotation_mode="anchor" if crowded else "default")
    if crowded:
        longest = max(len(n) for n in layers)
        fig.subplots_adjust(bottom=min(0.5, fig.subplotpars.bottom + 0.012 * longest))
    elif long:  # three lines of names
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.07)


def _readable_log(ax, axis: str = "y") -> None:
    """Tick labels at 1, 2, 5 × 10^k on a log axis spanning less than three decades (else the
    decades), written as plain numbers where they are neither tiny nor huge."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    target = ax.yaxis if axis == "y" else ax.xaxis
    if low > 0 and high / low < 1e3:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(NullFormatter())


def _offsets(count: int, width: float = 0.5) -> list[float]:
    """Horizontal offsets of ``count`` series of points around each layer's tick."""
    step = min(width / max(count, 1), 0.12)
    return [(j - (count - 1) / 2) * step for j in range(count)]


def fisher_std(result, target: Target = DEFAULT_TARGET):
    """Mean Fisher and per-draw standard deviations per layer (log scale): one point per layer and
    quantity (layers are separate, no line joins them); an exact 0 is a hollow marker on the
    bottom edge, said on the figure."""
    fig, ax = _new(8.0, 4.4, bottom=0.17, right=0.7)
    rows = [r for r in result.group_summary() if r["group"] in result.groups]
    layers = [r["layer"] for r in rows]
    x = np.arange(len(layers))
    series = {
        "Fisher (mean)": ("fisher", [r["fisher"] for r in rows], "o"),
        "std of one draw of Î1": ("i1", [r["std_i1"] for r in rows], "^"),
        "std of one draw of Î2": ("i2", [r["std_i2"] for r in rows], "v"),
        "input noise sqrt Var_x I(θ|x)": ("input", [math.sqrt(max(r["input_var"], 0.0)) for r in rows], "s"),
    }
    if not result.second_order:  # a first-order analysis: no Î2
        del series["std of one draw of Î2"]
    floor, zeros_drawn = _layer_series(ax, x, layers, series, 7)
    _named_ticks(ax, x, layers)
    ax.set_xlabel("layer (module and shape)")
    ax.set_ylabel("mean over the layer's parameters (log scale)")
    ax.set_title(f"Fisher and estimator noise per layer (N={result.num_inputs} inputs, {result.family})")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if zeros_drawn:
        ax.annotate("hollow, on the bottom edge: exactly 0", (0.01, floor), xycoords=ax.get_yaxis_transform(),
                    xytext=(2, 6), textcoords="offset points", fontsize=7.5, color="#555555")
        fig.text(0.715, 0.45, "Exactly 0 (hollow markers):\n" + "\n".join(_wrap(z, 40) for z in zeros_drawn)
                 + ("\n(std Î2 = 0: a linear output\nlayer, where Î2 is exact)"
                    if any("Î2" in z for z in zeros_drawn) else ""), fontsize=7.5, va="top", color="#333333")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


#: what each bound's quantity is, in words
QUANTITIES = {"fisher": "the Fisher I", "v1": "v1, the label variance of Î1",
              "v2": "v2, the label variance of Î2", "input_var": "the input noise Var_x I"}


def bound_label(bound) -> str:
    """A bound's human name: ``upper bound on v1, the label variance of Î1 ([B] Thm 4.1)``."""
    return f"{bound.side} bound on {QUANTITIES.get(bound.quantity, bound.quantity)} ({bound.source})"


def _upper_bounds(result) -> dict:
    """The upper bounds that have a finite positive tightness in some layer."""
    out = {}
    for name, bound in result.bounds.items():
        if bound.side != "upper":
            continue
        tightness = bound.group_tightness(result.groups)
        if any(math.isfinite(v) and v > 0 for v in tightness.values()):
            out[name] = (bound, tightness)
    return out


def bound_tightness(result, target: Target = DEFAULT_TARGET):
    """``Σ bound / Σ exact`` per layer for every upper bound ([B] Thm 4.1, Cor 4.2, …), one point
    per layer and bound; a bound without a ratio in a layer (its exact value is 0 there) is said
    on the figure."""
    bounds = _upper_bounds(result)
    if not bounds:
        raise FimvarError("no bound was computed (the analysis ran with bounds=False / --no-bounds): "
                          "there is no bound_tightness figure")
    fig, ax = _new(10.0, 4.6, right=0.55, bottom=0.17)
    groups = _layers(result)
    layers = [result.layer_name(g) for g in groups]
    x = np.arange(len(groups))
    markers = "o^vsDP<>Xh*"
    missing = []
    for j, (offset, (name, (bound, tightness))) in enumerate(zip(_offsets(len(bounds), 0.7), bounds.items(),
                                                                 strict=True)):
        values = [tightness[g] for g in groups]
        shown = [i for i, v in enumerate(values) if math.isfinite(v) and v > 0]
        ax.plot(x[shown] + offset, [values[i] for i in shown], marker=markers[j % len(markers)],
                linestyle="none", markersize=6, label=bound_label(bound), gid=f"bound:{name}")
        gaps = [layers[i] for i, v in enumerate(values) if not (math.isfinite(v) and v > 0)]
        if gaps:
            exact = QUANTITIES.get(bound.quantity, bound.quantity).split(",")[0]
            missing.append(f"{bound_label(bound)}: no point in {', '.join(gaps)}, where {exact} = 0")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="bound = exact (tight)")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(groups) - 0.5)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.8), high)
    _readable_log(ax)
    _named_ticks(ax, x, layers)
    ax.set_xlabel("layer (module and shape)")
    ax.set_ylabel("Σ bound / Σ exact over the layer (log)")
    ax.set_title("How far above the exact value each upper bound lies, per layer (1 = tight)")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5)
    if missing:
        fig.text(0.565, 0.32, "\n".join(_wrap(m, 70) for m in missing)
                 + ("\n(v2 = 0 in a linear output layer: Î2 is exact there)"
                    if any("v2" in m for m in missing) else ""), fontsize=7.5, va="top", color="#333333")
    return fig


def relative_std(result, target: Target = DEFAULT_TARGET):
    """Per layer (one panel each), the histogram over its parameters of the relative per-draw
    standard deviation ``sqrt(v)/I`` of Î1 and Î2 (:meth:`~fimvar.DiagonalResult.relative_std`),
    as outlines on common bins; zero-variance and zero-Fisher parameters are counted in the
    panel."""
    from matplotlib.figure import Figure

    groups = _layers(result)
    ratios = {e: result.relative_std(e) for e in ("i1", "i2") if e in result.estimators}
    per_layer = {g: {e: torch.cat([ratios[e][m].reshape(-1) for m in result.groups[g]]).double().numpy()
                     for e in ratios} for g in groups}
    finite = np.concatenate([r[np.isfinite(r) & (r > 0)] for d in per_layer.values() for r in d.values()]
                            or [np.array([])])
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols + 0.6, 3.0 * nrows + 1.0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.75 / (3.0 * nrows + 1.0),
                        bottom=0.55 / (3.0 * nrows + 1.0) + 0.05, hspace=0.55, wspace=0.25)
    bins = (np.logspace(np.log10(finite.min()) - 0.05, np.log10(finite.max()) + 0.05, 40) if finite.size
            else None)
    for ax, g in zip(axes, groups, strict=False):
        notes = []
        for e, r in per_layer[g].items():
            defined = r[np.isfinite(r)]
            zeros = int((defined == 0).sum())
            positive = defined[defined > 0]
            label = f"{LABELS[e]} ({positive.size} parameters)"
            if positive.size and bins is not None:
                ax.hist(positive, bins=bins, histtype="step", linewidth=1.6, color=COLORS[e], label=label)
            if zeros:
                notes.append(f"{LABELS[e]}: {zeros} with zero variance")
        dead = int((~np.isfinite(per_layer[g]["i1"])).sum())
        if dead:
            notes.append(f"{dead} with zero Fisher left out")
        ax.set_xscale("log")
        ax.set_title(result.layer_name(g), fontsize=9)
        ax.set_xlabel("sqrt(v) / I(θ_i): × the Fisher")
        ax.set_ylabel("parameters")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7.5)
        if notes:
            ax.text(0.98, 0.6, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=7,
                    color="#555555")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Standard deviation of one draw relative to the Fisher, per parameter and layer "
                 "(1 = as large as the Fisher)")
    return fig


def sample_size(result, target: Target = DEFAULT_TARGET):
    """Inputs needed against the target relative error ρ, by the plan's one rule (normal
    approximation): left, :attr:`~fimvar.DiagonalResult.fisher` per layer, with this run's N and
    the error it reaches; right, the whole model, each estimator at the plan's cheapest M. The
    markers at ρ are the plan's numbers (:meth:`~fimvar.DiagonalResult.plan`)."""
    fig, (left, right) = _new(11.0, 4.6, ncols=2, top=0.84, bottom=0.13)
    plan = result.plan(target.rho, target.delta)
    grid = np.logspace(-2, 0, 60)
    rho, delta = target.rho, target.delta
    n = result.num_inputs

    def curve(group_plan, estimator: str, draws: int) -> list[float]:
        return [group_plan.inputs_for(estimator, Target(r, delta), draws) for r in grid]

    for g in result.groups:
        gp = plan.group(g)
        accuracy = gp.accuracy["exact"]
        if accuracy.inputs_needed is None:
            continue
        line, = left.plot(grid, curve(gp, "exact", 0), label=plan.name(g), gid=f"curve:{g}")
        left.plot([rho], [accuracy.inputs_needed], "o", color=line.get_color(), gid=f"needed:{g}")
        if accuracy.error_at_confidence is not None and grid[0] <= accuracy.error_at_confidence <= grid[-1]:
            left.plot([accuracy.error_at_confidence], [n], "s", markerfacecolor="white",
                      color=line.get_color(), gid=f"run:{g}")
    left.axhline(n, color="#777777", linewidth=0.8, linestyle="--", label=f"this run: N = {n:,}")
    if plan.available != n:
        left.axhline(plan.available, color="#777777", linewidth=0.8, linestyle="-.",
                     label=f"your data: {plan.available:,}")
    whole = plan.group(MODEL_GROUP) if plan.find(MODEL_GROUP) else plan.groups[0]
    for estimator in ESTIMATORS:
        best = whole.get(estimator, "normal")
        if best is None:
            continue
        label = (f"{LABELS[estimator]} (no draws)" if estimator == "exact"
                 else f"{LABELS[estimator]}, M = {best.draws} draw{'s' if best.draws != 1 else ''}")
        right.plot(grid, curve(whole, estimator, best.draws), color=COLORS[estimator], label=label,
                   gid=f"curve:{estimator}")
        right.plot([rho], [best.inputs], "o", color=COLORS[estimator], gid=f"design:{estimator}")
    for ax, title in ((left, "r.fisher (exact over the labels), per layer\n● at ρ: inputs needed; "
                             "□ on the dashed line: the error this run reaches"),
                      (right, "whole model, each estimator at the plan's cheapest M\n● at ρ: the plan's "
                              "inputs")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(rho, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("target relative error ρ (dotted: the report's)")
        ax.set_ylabel("inputs N needed")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.7), high)  # fewer than one input is no design
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7.5)
    fig.suptitle(f"Inputs needed for ‖Î−I‖/‖I‖ ≤ ρ with probability {1 - delta:g}: N = z²(a + b/M)/(ρ²‖I‖²), "
                 f"z = {plan.z:.3g} (normal approximation)")
    return fig


def matrices(result: FullResult, target: Target = DEFAULT_TARGET):
    """Heat maps of the full Fisher and of the per-entry standard deviation of one draw of Î1."""
    fig, (left, right) = _new(10.0, 4.4, ncols=2, top=0.88)
    for ax, values, title in ((left, result.fisher, "Fisher E_x I(θ|x)"),
                              (right, result.v1.clamp_min(0).sqrt(), "std of one draw of Î1, sqrt(v1)")):
        image = ax.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("parameter j")
        ax.set_ylabel("parameter i")
        fig.colorbar(image, ax=ax, shrink=0.8)
        edges = [s.start for s in result.slices.values()][1:]
        for edge in edges:
            ax.axhline(edge - 0.5, color="white", linewidth=0.5)
            ax.axvline(edge - 0.5, color="white", linewidth=0.5)
    fig.suptitle(f"Full-matrix Fisher (P={result.fisher.shape[0]}, N={result.num_inputs}, {result.family}); "
                 "white lines separate parameter tensors")
    return fig


def hidden_units(result: HiddenResult, target: Target = DEFAULT_TARGET):
    """Per hidden unit of each module: the Fisher, and the std of one draw of its estimate."""
    fig, axes = _new(5.0 * max(1, len(result)), 4.0, ncols=max(1, len(result)), top=0.86)
    axes = np.atleast_1d(axes)
    for ax, (name, module) in zip(axes, result.items(), strict=True):
        units = np.arange(module.fisher_diagonal.numel())
        ax.plot(units, module.fisher_diagonal.numpy(), "o", color=COLORS["fisher"], markersize=3,
                label="Fisher of the unit")
        ax.plot(units, module.v1_diagonal.clamp_min(0).sqrt().numpy(), "^", color=COLORS["i1"],
                markersize=3, label="std of one draw of the estimate")
        ax.set_yscale("log")
        ax.set_xticks(units if len(units) <= 12 else units[:: max(1, len(units) // 10)])
        ax.set_xlabel("unit")
        ax.set_title(f"module {name} (output shape {tuple(module.shape)})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(f"Fisher information of hidden representations ({result.family})")
    return fig


def weight_norms(result: WeightNormResult, target: Target = DEFAULT_TARGET):
    """Per Linear layer, the exact Jacobian norms and Σ v1 next to their bounds of [A]."""
    fig, axes = _new(11.0, 4.0, ncols=3, top=0.84)
    layers = [layer.layer for layer in result]
    x = np.arange(len(layers))
    panels = (("frobenius", "frobenius_bound", "‖∂h/∂W̄‖_F"), ("spectral", "spectral_bound", "‖∂h/∂W̄‖_2σ"),
              ("v1_sum", "v1_bound", "Σ v1 over the layer"))
    for ax, (exact, bound, title) in zip(axes, panels, strict=True):
        ax.plot(x, [getattr(layer, exact) for layer in result], "o", color=COLORS["fisher"], label="exact")
        ax.plot(x, [getattr(layer, bound) for layer in result], "v", color=COLORS["i2"], label="bound of [A]")
        ax.set_yscale("log")
        _layer_ticks(ax, x, layers)
        ax.set_title(title)
        ax.set_xlabel("Linear layer")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(f"Weight-norm bounds of [A] (input averages, N={result.num_inputs})")
    return fig


def _design(result: AuditResult) -> str:
    design = f"N = {result.num_inputs} inputs"
    if result.batch_size:
        design += f", batches of {result.batch_size}"
    return design + f", {result.samples} label draw{'s' if result.samples != 1 else ''} per input"


def _pct(value: float) -> str:
    return f"{100 * value:.3g} %"


def _audit_layout(groups: list[str]):
    """Three panels side by side for a few short layer names, else stacked (sharing the layer
    axis, labelled once at the bottom) with room for the rotated names; margins in inches."""
    from matplotlib.figure import Figure

    longest = max(len(g) for g in groups)
    stacked = len(groups) > 5 or longest > 12
    names = 0.15 + (0.033 * longest if len(groups) > 6 else 0.0)  # rotated names need height
    bottom, top = 0.5 + 0.5 + names, 1.45  # x label, legend; title and note
    if stacked:
        width, panel, gap = min(20.0, max(13.0, 0.5 * len(groups) + 6.0)), 2.3, 0.75
        height = top + 3 * panel + 2 * gap + bottom
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(3, 1, sharex=True)
        fig.subplots_adjust(left=0.9 / width, right=1 - 0.25 / width, top=1 - top / height,
                            bottom=bottom / height, hspace=gap / panel)
    else:
        width, height = 13.0, top + 3.2 + bottom
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.07, right=0.985, top=1 - top / height, bottom=bottom / height, wspace=0.32)
    return fig, list(axes), stacked


def audit_figure(result: AuditResult, target: Target | None = None):
    """Per layer (model order, then the whole model) and audited estimator: (a) the relative
    bias ``‖E Î − I‖₂/‖I‖₂``, (b) the relative standard deviation ``√ΣVar/‖I‖₂`` of one run of
    the audited design, (c) the inputs needed for the audit's target (normal approximation), all
    from :meth:`AuditResult.layers` on log scales. A bias of exactly 0 sits on the bottom edge of
    (a) as a hollow marker ("unbiased"), an unreachable sample size on the top edge of (c).

    Args:
        result: an :class:`~fimvar.AuditResult`.
        target: must be ``None`` or the audit's own target (its numbers are made for that one).
    """
    if target is not None and target != result.target:
        raise FimvarError(f"this audit was made for relative error {result.target.rho:g} with probability "
                          f"{1 - result.target.delta:g}; audit again with rho={target.rho:g}, "
                          f"delta={target.delta:g} for another target")
    rows = result.layers()
    groups = list(dict.fromkeys(r.group for r in rows))
    estimators = list(result.entries)
    by = {(r.group, r.estimator): r for r in rows}
    rho, confidence = result.target.rho, 1 - result.target.delta
    threshold = result.std_threshold("normal")
    fig, axes, stacked = _audit_layout(groups)
    x = np.arange(len(groups))
    width = min(0.8 / max(1, len(estimators)), 0.12)
    offsets = {e: (j - (len(estimators) - 1) / 2) * width for j, e in enumerate(estimators)}
    panels = (
        ("relative_bias", "(a) relative bias", "‖E[Î] − I‖₂ / ‖I‖₂ (log)", rho,
         f"target ρ = {_pct(rho)}: above it, no N helps", "0 (unbiased)"),
        ("relative_std", "(b) relative std at this design", "√(Σ Var Î) / ‖I‖₂ (log)", threshold,
         f"ρ/z = {_pct(threshold)}: below it, meets ρ if unbiased", "0"),
        ("inputs", f"(c) inputs for {_pct(rho)} with prob. {confidence:g}", "inputs N (log)",
         float(result.num_inputs), f"this design's N = {result.num_inputs}: below it, N suffices", None),
    )
    for ax, (key, title, ylabel, reference, reference_label, zero_label) in zip(axes, panels, strict=True):
        def value(row, key=key) -> float:
            if key == "inputs":
                return math.inf if row.inputs["normal"] is None else float(row.inputs["normal"])
            return getattr(row, key)

        values = [value(r) for r in rows]
        shown = [v for v in values if v > 0 and math.isfinite(v)] + [reference]
        low, high = min(shown), max(shown)
        zeros, infinite = any(v == 0 for v in values), any(not math.isfinite(v) for v in values)
        floor, ceiling = low / 10 ** (0.9 if zeros else 0.3), high * 10 ** (0.9 if infinite else 0.3)
        for e in estimators:
            points = [(x[i] + offsets[e], value(by[(g, e)])) for i, g in enumerate(groups)]
            regular = [(px, v) for px, v in points if v > 0 and math.isfinite(v)]
            ax.plot([p for p, _ in regular], [v for _, v in regular], marker=MARKERS[e], linestyle="none",
                    color=COLORS[e], markersize=6, label=AUDIT_LABELS[e], gid=f"audit:{e}")
            for edge, special in ((floor, [p for p, v in points if v == 0]),
                                  (ceiling, [p for p, v in points if not math.isfinite(v)])):
                if special:
                    ax.plot(special, [edge] * len(special), marker=MARKERS[e], linestyle="none",
                            color=COLORS[e], markerfacecolor="white", markersize=6, gid=f"edge:{e}")
        style = "--" if key != "inputs" else ":"
        ax.axhline(reference, color="black", linewidth=0.9, linestyle=style)
        edge = {"xycoords": ax.get_yaxis_transform(), "textcoords": "offset points", "ha": "left",
                "fontsize": 7.5, "color": "#555555"}
        if zeros:  # just above the row of hollow markers on the bottom edge
            ax.annotate(zero_label or "0", (0.01, floor), xytext=(2, 5), va="bottom", **edge)
        if infinite:  # just below the row on the top edge
            label = "unreachable: bias ≥ ρ or ‖I‖ = 0" if key == "inputs" else "∞ (‖I‖ = 0)"
            ax.annotate(label, (0.01, ceiling), xytext=(2, -5), va="top", **edge)
        ax.set_yscale("log")
        ax.set_ylim(floor / 10 ** (0.25 if zeros else 0), ceiling * 10 ** (0.25 if infinite else 0))
        ax.set_xlim(-0.5, len(groups) - 0.5)
        if len(groups) > 1:
            ax.axvline(len(groups) - 1.5, color="#bbbbbb", linewidth=0.8)
        _layer_ticks(ax, x, groups)
        if not stacked or ax is axes[-1]:
            ax.set_xlabel("layer (parameter group); last: whole model")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{'– – ' if style == '--' else '····· '}{reference_label}", fontsize=9)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    height = fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 0.03 / height),
               frameon=False, title="estimator")
    fig.suptitle(f"Estimator audit per layer against the diagonal Fisher I ({result.family}; "
                 f"{_design(result)})", y=1 - 0.09 / height)
    fig.text(0.5, 1 - 0.38 / height,
             f"(a) a bias above the dashed line (ρ = {_pct(rho)}) cannot be averaged away.   "
             f"(b) below the dashed line (ρ/z = {_pct(threshold)}), an unbiased estimator meets {_pct(rho)} "
             f"with probability {confidence:g} at this design (normal approximation).\n"
             "(c) below the dotted line, this design's N inputs suffice.   Hollow markers: exactly 0 "
             "(bottom edge) or unreachable (top edge).\n"
             "std of EWC and GNB: over the shuffle (and the labels) of these inputs; of the others: over "
             "the inputs as a sample of the data (and the labels).", ha="center", va="top", fontsize=8,
             color="#333333", linespacing=1.4)
    return fig


def _short_ids(groups: list[str]) -> tuple[list[str], str]:
    """Group ids without the dotted prefix they all share (``transformer.h.0.ln_1`` → ``h.0.ln_1``),
    and that prefix (``transformer.``; empty when none)."""
    parts = [g.split(".") for g in groups]
    common = 0
    while len(groups) > 1 and all(len(p) > common + 1 for p in parts) and \
            len({p[common] for p in parts}) == 1:
        common += 1
    prefix = ".".join(parts[0][:common]) + "." if common else ""
    return [".".join(p[common:]) for p in parts], prefix


def _layer_colors(count: int) -> list:
    """One distinct colour per layer: matplotlib's cycle for up to 10, else a colour map."""
    from matplotlib import colormaps

    if count <= 10:
        return [f"C{i}" for i in range(count)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (count - 1)) for i in range(count)]


def sampled_noise(result: SampledResult, target: Target = DEFAULT_TARGET):
    """A sampled analysis per layer (log scale): the mean of Î1, the standard deviation of one
    draw of Î1 (label noise, sqrt v1), the input noise sqrt Var_x I(θ|x), and the standard error
    of Î1 with this run's N × M; an estimate of exactly 0 is a hollow marker on the bottom edge."""
    fig, ax = _new(9.0, 4.6, bottom=0.17, right=0.68)
    fig.subplots_adjust(left=0.11)
    rows = [r for r in result.group_summary(target.rho, target.delta) if r["group"] in result.groups]
    ids, prefix = _short_ids([r["group"] for r in rows])
    layers = ids if len(rows) > 6 else [r["layer"] for r in rows]
    x = np.arange(len(layers))
    series = {
        "Î1 (mean)": ("fisher", [r["i1"] for r in rows], "o"),
        "std of one draw of Î1 (label noise)": ("i1", [r["std_i1"] for r in rows], "^"),
        "input noise sqrt Var_x I(θ|x)": ("input", [math.sqrt(max(r["input_var"], 0.0)) for r in rows], "s"),
        f"std error of Î1 (N={result.num_inputs}, M={result.samples})":
            ("exact", [math.sqrt(max(r["variance_i1"], 0.0)) for r in rows], "D"),
    }
    floor, zeros_drawn = _layer_series(ax, x, layers, series, 6)
    _named_ticks(ax, x, layers)
    if len(rows) > 6:  # short ids: the rotated names need less room than _named_ticks allows
        fig.subplots_adjust(bottom=min(fig.subplotpars.bottom, 0.17 + 0.009 * max(len(n) for n in layers)))
    ax.set_xlabel(f"layer (module{' under ' + prefix if prefix and len(rows) > 6 else ''})")
    ax.set_ylabel("mean over the layer (log scale)")
    ax.set_title(f"Sampled Fisher Î1 and its noise per layer (N={result.num_inputs} inputs, "
                 f"M={result.samples} draws)")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if zeros_drawn:
        fig.text(0.715, 0.45, "Exactly 0 (hollow markers):\n" + "\n".join(_wrap(z, 40) for z in zeros_drawn),
                 fontsize=7.5, va="top", color="#333333")
    return fig


def sampled_sample_size(result: SampledResult, target: Target = DEFAULT_TARGET):
    """Inputs needed by Î1, by the plan's rule (normal approximation): left, per layer against the
    target relative error ρ with this run's M (● at the report's ρ, □ the error this run's N
    reaches); right, per layer and for the whole model against the draws M at the report's ρ
    (● the plan's cheapest M)."""
    fig, (left, right) = _new(11.0, 4.6, ncols=2, top=0.84, bottom=0.13, right=0.8)
    plan = result.plan(target.rho, target.delta)
    grid = np.logspace(-2, 0, 60)
    draws = np.unique(np.round(np.logspace(0, 2, 30)).astype(int))
    rho, delta, m, n = target.rho, target.delta, result.samples, result.num_inputs
    groups = list(result.groups) + ([MODEL_GROUP] if plan.find(MODEL_GROUP) else [])
    colors = _layer_colors(len(result.groups)) + ["black"]
    ids, prefix = _short_ids(list(result.groups))
    names = dict(zip(result.groups, ids if len(ids) > 6 else [plan.name(g) for g in result.groups],
                     strict=True)) | {MODEL_GROUP: MODEL_GROUP}
    for g, color in zip(groups, colors, strict=False):
        gp = plan.group(g)
        accuracy = gp.accuracy["i1"]
        if accuracy.inputs_needed is None:
            continue
        left.plot(grid, [gp.inputs_for("i1", Target(r, delta), m) for r in grid], label=names[g],
                  gid=f"curve:{g}", color=color, linewidth=2.0 if g == MODEL_GROUP else 1.3)
        left.plot([rho], [accuracy.inputs_needed], "o", color=color, gid=f"needed:{g}")
        if accuracy.error_at_confidence is not None and grid[0] <= accuracy.error_at_confidence <= grid[-1]:
            left.plot([accuracy.error_at_confidence], [n], "s", markerfacecolor="white", color=color,
                      gid=f"run:{g}")
        right.plot(draws, [gp.inputs_for("i1", target, int(d)) for d in draws], color=color, gid=f"draws:{g}",
                   **({"linewidth": 2.0} if g == MODEL_GROUP else {}))
        best = gp.recommended("normal")
        if best is not None:
            right.plot([best.draws], [best.inputs], "o", color=color, gid=f"design:{g}")
    left.axhline(n, color="#777777", linewidth=0.8, linestyle="--", label=f"this run: N = {n:,}")
    right.axhline(n, color="#777777", linewidth=0.8, linestyle="--")
    right.axvline(m, color="#777777", linewidth=0.8, linestyle=":")
    for ax, title, xlabel in (
            (left, f"per layer, Î1 with this run's M = {m}\n● at ρ: inputs needed; □ on the dashed line: "
                   "the error this run reaches", "target relative error ρ (dotted: the report's)"),
            (right, f"per layer at ρ = {rho:g}, against the draws M\n● the plan's cheapest M (cost: "
                    "forward + M backward passes)", "label draws M per input (dotted: this run's)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("inputs N needed")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.7), high)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    left.axvline(rho, color="black", linewidth=0.8, linestyle=":")
    left.legend(loc="upper left", bbox_to_anchor=(2.27, 1.0), fontsize=7,
                title=f"layer (under {prefix})" if prefix and len(ids) > 6 else "layer", title_fontsize=7.5)
    fig.suptitle(f"Inputs Î1 needs for ‖Î1−I‖/‖I‖ ≤ ρ with probability {1 - delta:g}: N = z²(a + "
                 "b/M)/(ρ²‖I‖²), "
                 f"z = {plan.z:.3g} (normal approximation)")
    return fig


#: figure builders of each result type
BUILDERS = {
    DiagonalResult: {"fisher_std": fisher_std, "bound_tightness": bound_tightness,
                     "relative_std": relative_std, "sample_size": sample_size},
    FullResult: {"matrices": matrices},
    HiddenResult: {"hidden_units": hidden_units},
    WeightNormResult: {"weight_norms": weight_norms},
    AuditResult: {"audit": audit_figure},
    SampledResult: {"fisher_std": sampled_noise, "sample_size": sampled_sample_size},
}
FIGURES = tuple(BUILDERS[DiagonalResult])


def _builders(result) -> dict:
    """The figures ``result`` has: those of its type, less ``bound_tightness`` without bounds."""
    builders = BUILDERS[type(result)]
    if isinstance(result, DiagonalResult) and not _upper_bounds(result):
        builders = {k: v for k, v in builders.items() if k != "bound_tightness"}
    return builders


def figure(result, which: str, target: Target | None = None):
    """The matplotlib ``Figure`` ``which`` of a result (``target`` ``None``: the builder's default,
    an audit's own target)."""
    import matplotlib

    builders = _builders(result)
    if which not in builders:
        if which in BUILDERS.get(type(result), {}):  # bound_tightness without bounds: its own message
            return BUILDERS[type(result)][which](result)
        raise FimvarError(f"unknown figure {which!r}; use one of {', '.join(builders)} or 'all'")
    with matplotlib.rc_context(_STYLE):
        return builders[which](result) if target is None else builders[which](result, target)


def save_figures(result, directory: str | Path, target: Target | None = None, *,
                 formats: tuple[str, ...] = FORMATS, which: tuple[str, ...] | None = None) -> list[Path]:
    """Write each figure as ``directory/<name>.<format>``; returns the paths written."""
    import matplotlib

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(_STYLE):
        for name in which or tuple(_builders(result)):
            fig = figure(result, name, target)
            for fmt in formats:
                path = directory / f"{name}.{fmt}"
                metadata = {"Date": None} if fmt == "svg" else {"Software": None}
                fig.savefig(path, format=fmt, dpi=110, metadata=metadata)
                paths.append(path)
    return paths


def plot(result, which: str = "all", path=None, target: Target | None = None):
    """``result.plot``: one figure (saved to ``path`` if given), or with ``all`` a dict of every
    figure of the result (saved into the folder ``path`` as PNG and SVG if given)."""
    if which == "all":
        if path is not None:
            save_figures(result, path, target)
        return {name: figure(result, name, target) for name in _builders(result)}
    fig = figure(result, which, target)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


for _result_type in BUILDERS:
    presents(_result_type, "plot")(plot)
