"""[A]: tightness of the Frobenius bounds on ``‖Cov(Î1)‖_F`` and ``‖Cov(Î2)‖_F`` over training,
and the effect of weight decay on ``Var(Î1)`` as predicted by the weight-norm bound.

Small tanh MLPs (``|tanh'| ≤ 1``, as [A]'s weight-norm bound requires) on scikit-learn's real
8×8 digits, trained with SGD and an L2 penalty ``λ‖θ‖²/2`` (``weight_decay = λ``) for several
``λ``. After selected epochs, on a fixed set of test inputs:

- ``fimvar.analyze_full`` → the exact ``‖Cov(Î_j|x)‖_F`` (single draw, full P×P×P×P covariance,
  averaged over inputs) and [A]'s bounds ``‖J‖_F⁴ ‖M‖_F`` and ``(Σ_α ‖∇²h^α‖_F²) ‖I‖_F``;
- ``fimvar.weight_norm_bounds`` → per layer ``Σ_i v1(θ_i)`` next to
  ``λ̃_max(M) (Π_{k>l} ‖W⁻_k‖_F ‖h̄_{l−1}‖)⁴`` ([A] weight-norm bound with [B] Thm 4.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fimvar
from fimvar.reproduce.common import Claim, Outcome, fmt, save_figure, setup_matplotlib


@dataclass
class Settings:
    hidden: tuple[int, ...] = (6, 6)  # 64-6-6-10 tanh: 502 parameters
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    batch: int = 32
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 3e-2)
    full_inputs: int = 4  # test inputs of the full-matrix (Frobenius) analysis, seed 0 only
    full_epochs: tuple[int, ...] = (0, 2, 8, 30)
    norm_inputs: int = 50  # test inputs of the weight-norm analysis (every seed)
    norm_epochs: tuple[int, ...] | None = (0, 1, 2, 4, 8, 16, 30)  # None: every epoch
    seeds: int = 3
    test: int = 397  # digits: 1400 train / 397 test


def load_digits_split(test: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 1797 real 8×8 digits, pixels scaled to [0, 1], float64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float64) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[test:], y[test:], x[:test], y[:test]


def build(settings: Settings, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    widths = (64, *settings.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(widths[-1], 10))
    return nn.Sequential(*layers).double()


def frobenius_row(model: nn.Module, x: torch.Tensor) -> dict:
    """[A]'s Frobenius norms of Cov(Î1|x), Cov(Î2|x) (single draw, input average) and bounds."""
    full = fimvar.analyze_full(model, x, "categorical", samples=1, seed=0, bounds=True)
    row = dict(full.frobenius)
    row["tightness_i1"] = row["frobenius_i1_bound"] / row["frobenius_i1"]
    row["tightness_i2"] = row["frobenius_i2_bound"] / row["frobenius_i2"]
    return row


def norm_row(model: nn.Module, x: torch.Tensor) -> dict:
    """Per-layer Σ v1 and [A]'s weight-norm bound on it, and the squared weight norm."""
    norms = fimvar.weight_norm_bounds(model, x, "categorical")
    row: dict = {}
    row["layers"] = {n.layer: {"v1_sum": n.v1_sum, "v1_bound": n.v1_bound,
                               "jacobian_frobenius": n.frobenius,
                               "jacobian_frobenius_bound": n.frobenius_bound}
                     for n in norms}
    row["v1_total"] = sum(n.v1_sum for n in norms)
    row["v1_bound_total"] = sum(n.v1_bound for n in norms)
    row["weight_norm_sq"] = float(sum(m.weight.detach().pow(2).sum() for m in model
                                      if isinstance(m, nn.Linear)))
    return row


def run_config(settings: Settings, decay: float, seed: int, data, log) -> dict:
    x_train, y_train, x_test, y_test = data
    model = build(settings, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=decay)
    generator = torch.Generator().manual_seed(seed)
    x_full = x_test[: settings.full_inputs]
    x_norm = x_test[: settings.norm_inputs]
    history = {"epoch": [], "rows": [], "test_acc": [], "full_epoch": [], "full": []}
    for epoch in range(settings.epochs + 1):
        if epoch > 0:
            model.train()
            order = torch.randperm(x_train.shape[0], generator=generator)
            for start in range(0, x_train.shape[0], settings.batch):
                index = order[start:start + settings.batch]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[index]), y_train[index]).backward()
                optimizer.step()
        model.eval()
        if settings.norm_epochs is None or epoch in settings.norm_epochs:
            history["epoch"].append(epoch)
            history["rows"].append(norm_row(model, x_norm))
            with torch.no_grad():
                history["test_acc"].append(
                    float((model(x_test).argmax(1) == y_test).double().mean()))
        if seed == 0 and epoch in settings.full_epochs:
            history["full_epoch"].append(epoch)
            history["full"].append(frobenius_row(model, x_full))
    log(f"  weight decay {decay:g}, seed {seed}: test acc {history['test_acc'][-1]:.3f}, "
        f"Σ v1 {history['rows'][-1]['v1_total']:.3g}")
    return history


def plot(results: dict, settings: Settings, out: Path) -> str:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    cmap = plt.get_cmap("viridis")
    decays = list(results)
    for k, decay in enumerate(decays):
        color = cmap(k / max(1, len(decays) - 1))
        for s, history in enumerate(results[decay]):
            epochs = np.array(history["epoch"])
            rows = history["rows"]
            label = f"λ = {decay:g}" if s == 0 else None
            if history["full"]:
                full = history["full"]
                axes[0].plot(history["full_epoch"], [r["tightness_i1"] for r in full], "o-", ms=3,
                             color=color, label=label)
                axes[0].plot(history["full_epoch"], [r["tightness_i2"] for r in full], "s--", ms=3,
                             color=color)
            axes[1].plot(epochs, [r["v1_total"] for r in rows], "o-", ms=2.5, color=color, label=label)
            axes[1].plot(epochs, [r["v1_bound_total"] for r in rows], ":", color=color)
            axes[2].plot([r["weight_norm_sq"] for r in rows], [r["v1_total"] for r in rows], "o-",
                         ms=2.5, color=color, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_title(f"[A] Frobenius bound / exact ‖Cov‖_F, seed 0, {settings.full_inputs} "
                      "inputs\n(solid: Î1, dashed: Î2)")
    axes[0].legend()
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    axes[1].set_title(f"Σ_i v1(θ_i) (solid) and weight-norm bound (dotted)\n{settings.seeds} seeds, "
                      f"{settings.norm_inputs} test inputs")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("Σ ‖W‖_F²")
    axes[2].set_ylabel("Σ_i v1(θ_i)")
    axes[2].set_title("Var Î1 against the weight norm")
    arch = "-".join(str(w) for w in (64, *settings.hidden, 10))
    fig.suptitle(f"[A] — tanh MLP {arch} on sklearn digits, SGD + weight decay λ")
    fig.tight_layout()
    return save_figure(fig, out, "frobenius")


def run(out: Path, quick: bool = False, seeds: int | None = None, log=print) -> Outcome:
    settings = Settings()
    if quick:
        settings = Settings(hidden=(4, 4), epochs=6, full_inputs=2, full_epochs=(6,),
                            norm_inputs=16, norm_epochs=(0, 6), weight_decays=(0.0, 3e-2),
                            seeds=1)
    if seeds is not None:
        settings.seeds = seeds
    data = load_digits_split(settings.test)
    results = {decay: [run_config(settings, decay, seed, data, log) for seed in range(settings.seeds)]
               for decay in settings.weight_decays}
    figure = plot(results, settings, out)

    tight_i1 = [r["tightness_i1"] for hs in results.values() for h in hs for r in h["full"]]
    tight_i2 = [r["tightness_i2"] for hs in results.values() for h in hs for r in h["full"]]
    holds_i1 = all(t >= 1 - 1e-9 for t in tight_i1)
    holds_i2 = all(t >= 1 - 1e-9 for t in tight_i2)
    layer_bounds_hold = all(v["v1_sum"] <= v["v1_bound"] * (1 + 1e-9)
                            for hs in results.values() for h in hs for r in h["rows"]
                            for v in r["layers"].values())
    final = {decay: {
        "v1_total": float(np.median([h["rows"][-1]["v1_total"] for h in hs])),
        "v1_bound_total": float(np.median([h["rows"][-1]["v1_bound_total"] for h in hs])),
        "weight_norm_sq": float(np.median([h["rows"][-1]["weight_norm_sq"] for h in hs])),
        "test_acc": float(np.median([h["test_acc"][-1] for h in hs])),
    } for decay, hs in results.items()}
    decays = sorted(final)
    v1_seq = [final[d]["v1_total"] for d in decays]
    bound_seq = [final[d]["v1_bound_total"] for d in decays]
    v1_monotone = all(a >= b for a, b in zip(v1_seq, v1_seq[1:], strict=False))
    bound_monotone = all(a >= b for a, b in zip(bound_seq, bound_seq[1:], strict=False))
    # per seed: is the final Σ v1 lower with the largest λ than without weight decay?
    per_seed = [results[decays[-1]][s]["rows"][-1]["v1_total"] < results[decays[0]][s]["rows"][-1]["v1_total"]
                for s in range(settings.seeds)]
    # rank correlation of Σ v1 with the squared weight norm over every (λ, seed, epoch)
    pairs = np.array([(r["weight_norm_sq"], r["v1_total"]) for hs in results.values() for h in hs
                      for r in h["rows"]])
    ranks = np.argsort(np.argsort(pairs, axis=0), axis=0).astype(float)
    spearman = float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])
    numbers = {
        "tightness_i1_range": [min(tight_i1), max(tight_i1)],
        "tightness_i2_range": [min(tight_i2), max(tight_i2)],
        "tightness_i1_median": float(np.median(tight_i1)),
        "tightness_i2_median": float(np.median(tight_i2)),
        "final_by_weight_decay": final,
        "seeds_largest_decay_below_none": int(sum(per_seed)),
        "spearman_v1_vs_weight_norm": spearman,
        "histories": {str(d): hs for d, hs in results.items()},
    }
    seq = ", ".join(f"λ={d:g}: Σv1 {fmt(final[d]['v1_total'])}, bound {fmt(final[d]['v1_bound_total'])}, "
                    f"‖W‖² {fmt(final[d]['weight_norm_sq'])}" for d in decays)
    claims = [
        Claim(
            "[A] Frobenius bounds hold for Cov(Î1) and Cov(Î2) over training",
            "[A] Frobenius bounds (eqs. 17–18 in the seed slides): ‖Cov Î1‖_F ≤ ‖J‖_F⁴‖M‖_F/N, "
            "‖Cov Î2‖_F ≤ Σ‖∇²h‖_F² ‖I‖_F/N",
            f"bound / exact over all epochs and λ: Î1 {fmt(min(tight_i1))}–{fmt(max(tight_i1))} "
            f"(median {fmt(numbers['tightness_i1_median'])}), Î2 {fmt(min(tight_i2))}–"
            f"{fmt(max(tight_i2))} (median {fmt(numbers['tightness_i2_median'])})",
            holds_i1 and holds_i2,
        ),
        Claim(
            "The weight-norm bound on Σ v1 holds per layer",
            "[A] weight-norm bound (eq. 20 in the seed slides, |σ'| ≤ 1) with [B] Thm 4.1",
            "Σ_i v1 ≤ λ̃_max(M)(Π‖W⁻‖_F ‖h̄‖)⁴ in every layer, epoch and λ: "
            + ("yes" if layer_bounds_hold else "no"),
            layer_bounds_hold,
        ),
        Claim(
            "Weight decay lowers the weight-norm bound and Var(Î1)",
            "[A]: weight-norm regularisation lowers the variance of Î1 (via its weight-norm bound)",
            f"after {settings.epochs} epochs (median over {settings.seeds} seeds): {seq}; bound "
            f"decreasing in λ: {'yes' if bound_monotone else 'no'}, Σ v1 decreasing in λ: "
            f"{'yes' if v1_monotone else 'no'}; λ={decays[-1]:g} below λ={decays[0]:g} in "
            f"{sum(per_seed)}/{settings.seeds} seeds; Spearman ρ(Σ v1, ‖W‖²) over all "
            f"(λ, seed, epoch) = {spearman:.2f}",
            bound_monotone and v1_monotone,
        ),
    ]
    settings_dict = asdict(settings)
    settings_dict["data"] = "sklearn load_digits (1797 real 8×8 digits), 1400 train / 397 test"
    settings_dict["optimizer"] = f"SGD lr {settings.lr}, momentum {settings.momentum}, weight_decay λ"
    return Outcome("frobenius", "[A] — Frobenius bounds and weight decay", quick, settings_dict,
                   numbers, claims, [figure])
