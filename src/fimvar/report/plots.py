"""Figures of a result (matplotlib, no pyplot state; PNG and SVG).

- ``fisher_std``: per layer, the mean Fisher next to the per-draw standard deviations of Î1 and Î2
  and the input noise ``sqrt(Var_x I(θ|x))``, on a log scale (the layout of [B] Fig. 2);
- ``bound_tightness``: per layer, ``Σ bound / Σ exact`` of every upper bound of [B] (1 = tight);
- ``relative_std``: histogram over parameters of the relative per-draw std ``sqrt(v)/I``;
- ``sample_size``: inputs needed against the target relative error ρ (theory §8, :mod:`fimvar.plan`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fimvar.plan import ESTIMATORS, LABELS, noise_terms, required_inputs

FIGURES = ("fisher_std", "bound_tightness", "relative_std", "sample_size")
FORMATS = ("png", "svg")
COLORS = {"fisher": "#222222", "i1": "#1f77b4", "i2": "#d95f02", "combined": "#1b9e77",
          "exact": "#7570b3", "input": "#999999"}
_STYLE = {"svg.hashsalt": "fimvar", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}


def _new(width: float = 7.0, height: float = 4.0, ncols: int = 1, right: float = 0.97, top: float = 0.91):
    """A figure with fixed margins (a tight or constrained layout would cost a full extra draw)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    fig.subplots_adjust(left=0.1 if ncols == 1 else 0.08, right=right, bottom=0.13, top=top, wspace=0.28)
    return fig, axes


def _layers(result) -> list[str]:
    return list(result.groups)


def _group_mean(values: dict[str, torch.Tensor], members: list[str]) -> float:
    total = sum(float(values[m].sum()) for m in members)
    return total / sum(values[m].numel() for m in members)


def _positive_floor(values: list[float]) -> float:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return min(positive) / 10 if positive else 1e-12


def _layer_ticks(ax, x, layers: list[str]) -> None:
    crowded = len(layers) > 6
    ax.set_xticks(x, layers, rotation=30 if crowded else 0, ha="right" if crowded else "center")


def fisher_std(result, **_):
    """Mean Fisher and per-draw standard deviations per layer (log scale)."""
    fig, ax = _new()
    layers = _layers(result)
    x = np.arange(len(layers))
    series = {
        "Fisher (mean)": ("fisher", [_group_mean(result.fisher, result.groups[g]) for g in layers], "o"),
        "std Î1 (one draw)": ("i1", [math.sqrt(_group_mean(result.v1, result.groups[g]))
                                     for g in layers], "^"),
        "std Î2 (one draw)": ("i2", [math.sqrt(max(0.0, _group_mean(result.v2, result.groups[g])))
                                     for g in layers], "v"),
        "input noise sqrt Var_x I(θ|x)": ("input", [math.sqrt(_group_mean(result.input_var, result.groups[g]))
                                                   for g in layers], "s"),
    }
    floor = _positive_floor([v for _, values, _ in series.values() for v in values])
    for label, (key, values, marker) in series.items():
        shown = [v if v > 0 else np.nan for v in values]
        ax.plot(x, shown, marker=marker, color=COLORS[key], label=label, linewidth=1.2)
        zeros = [i for i, v in enumerate(values) if v <= 0]
        if zeros:
            ax.plot(x[zeros], [floor] * len(zeros), marker=marker, linestyle="none", markerfacecolor="white",
                    color=COLORS[key], label=f"{label} = 0")
    ax.set_yscale("log")
    _layer_ticks(ax, x, layers)
    ax.set_xlabel("layer (parameter group)")
    ax.set_ylabel("value (log scale)")
    ax.set_title(f"Fisher and estimator noise per layer (N={result.num_inputs}, {result.family})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best")
    return fig


def bound_tightness(result, **_):
    """``Σ bound / Σ exact`` per layer for every upper bound ([B] Thm 4.1, Cor 4.2, …)."""
    fig, ax = _new(9.0, 4.0, right=0.6)
    layers = _layers(result)
    x = np.arange(len(layers))
    drawn = 0
    for name, bound in result.bounds.items():
        if bound.side != "upper":
            continue
        tightness = bound.group_tightness(result.groups)
        values = [tightness[g] for g in layers]
        if not any(math.isfinite(v) and v > 0 for v in values):
            continue
        ax.plot(x, [v if math.isfinite(v) and v > 0 else np.nan for v in values], marker="o",
                label=f"{name} ({bound.source})")
        drawn += 1
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="exact (tight)")
    ax.set_yscale("log")
    _layer_ticks(ax, x, layers)
    ax.set_xlabel("layer (parameter group)")
    ax.set_ylabel("bound / exact (log scale)")
    ax.set_title("Tightness of the upper bounds per layer" if drawn else "No bound computed")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def relative_std(result, **_):
    """Histogram over parameters of ``sqrt(v1)/I`` and ``sqrt(v2)/I`` (parameters with I > 0)."""
    fig, ax = _new()
    fisher = torch.cat([result.fisher[k].reshape(-1) for k in result.shapes]).double()
    keep = fisher > 0
    ratios = {}
    for key, values in (("i1", result.v1), ("i2", result.v2)):
        v = torch.cat([values[k].reshape(-1) for k in result.shapes]).double().clamp_min(0)
        ratios[key] = (v[keep].sqrt() / fisher[keep]).numpy()
    positive = np.concatenate([r[r > 0] for r in ratios.values()])
    if positive.size:
        low, high = np.log10(positive.min()), np.log10(positive.max())
        bins = np.logspace(low - 0.05, high + 0.05, 40)
        for key, r in ratios.items():
            zeros = int((r == 0).sum())
            label = f"{LABELS[key]} ({r.size - zeros} parameters" + (f"; {zeros} with zero variance)" if zeros
                                                                     else ")")
            if r.size - zeros:
                ax.hist(r[r > 0], bins=bins, alpha=0.55, color=COLORS[key], label=label)
            else:
                ax.plot([], [], color=COLORS[key], label=f"{LABELS[key]}: zero variance everywhere")
        ax.set_xscale("log")
    ax.set_xlabel("relative std of one draw, sqrt(v)/I(θ_i)")
    ax.set_ylabel("parameters")
    skipped = int((~keep).sum())
    ax.set_title("Per-parameter relative standard deviation"
                 + (f" ({skipped} parameters with zero Fisher left out)" if skipped else ""))
    ax.legend(loc="best")
    return fig


def sample_size(result, rho: float = 0.1, delta: float = 0.05, **_):
    """Inputs needed vs target relative error: per layer (combined estimator), and for the whole
    model per estimator; M = this run's draws, normal approximation (dashed: Chebyshev)."""
    fig, (left, right) = _new(10.0, 4.2, ncols=2, top=0.86)
    grid = np.logspace(-2, 0, 40)
    m = result.samples
    for group, members in result.groups.items():
        terms = noise_terms(result, members)
        normal = [required_inputs(terms, "combined", r, delta, "normal", m) for r in grid]
        if all(math.isinf(v) for v in normal):
            continue
        line, = left.plot(grid, normal, label=group)
        left.plot(grid, [required_inputs(terms, "combined", r, delta, "chebyshev", m) for r in grid],
                  linestyle="--", color=line.get_color(), linewidth=0.8)
    members = [p for g in result.groups.values() for p in g]
    terms = noise_terms(result, members)
    for estimator in ESTIMATORS:
        values = [required_inputs(terms, estimator, r, delta, "normal", m) for r in grid]
        right.plot(grid, values, color=COLORS[estimator], label=LABELS[estimator])
    for ax, title in ((left, "per layer, combined α*Î1+(1−α*)Î2"),
                      (right, "whole model, each estimator")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(rho, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("target relative error ρ")
        ax.set_ylabel(f"inputs N_x (M={m} draws each)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(f"Sample size for ‖Î−I‖/‖I‖ ≤ ρ with probability {1 - delta:g} "
                 "(solid: normal approx., dashed: Chebyshev)")
    return fig


_BUILDERS = {"fisher_std": fisher_std, "bound_tightness": bound_tightness, "relative_std": relative_std,
             "sample_size": sample_size}


def figure(result, which: str, *, rho: float = 0.1, delta: float = 0.05):
    """The matplotlib ``Figure`` ``which`` (one of :data:`FIGURES`)."""
    import matplotlib

    from fimvar.errors import FimvarError

    if which not in _BUILDERS:
        raise FimvarError(f"unknown figure {which!r}; use one of {', '.join(FIGURES)} or 'all'")
    with matplotlib.rc_context(_STYLE):
        return _BUILDERS[which](result, rho=rho, delta=delta)


def save_figures(result, directory: str | Path, *, rho: float = 0.1, delta: float = 0.05,
                 formats: tuple[str, ...] = FORMATS, which: tuple[str, ...] = FIGURES) -> list[Path]:
    """Write each figure as ``directory/<name>.<format>``; returns the paths written."""
    import matplotlib

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(_STYLE):
        for name in which:
            fig = figure(result, name, rho=rho, delta=delta)
            for fmt in formats:
                path = directory / f"{name}.{fmt}"
                metadata = {"Date": None} if fmt == "svg" else {"Software": None}
                fig.savefig(path, format=fmt, dpi=110, metadata=metadata)
                paths.append(path)
    return paths
