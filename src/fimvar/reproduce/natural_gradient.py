"""[B] Fig. 1: natural-gradient descent preconditioned by the diagonal Î1 or Î2 on two toys.

Linear regression (Gaussian, σ = 1) and logistic regression (Bernoulli) on ``x ∈ R² ~ N(0, I)``,
``θ_true = (1, 1)``, labels drawn from the true model. Each step takes 4 training points, draws
one label per input from the *current* model and preconditions the minibatch gradient of the
NLL (data labels) by the diagonal estimate:

    θ ← θ − η · g / (max(Î, 0) + δ)          Î = Î1 or Î2 from ``fimvar.analyze(samples=1)``

The per-step estimates come from the library. To keep the 2 × 10 seeds × 2 estimators × 16 384
steps affordable, every independent run of one step is analysed in **one** ``fimvar.analyze``
call on a block-diagonal model: run ``r`` owns the weights ``w[2r:2r+2]`` and its four inputs are
``x ⊗ e_r``, so the outputs are ``θ_r · x`` and the per-parameter means over the ``4R`` inputs
are ``Î_r / R`` exactly (other runs' inputs contribute zero derivatives). A hand-written
closed form of the 2-parameter estimators (with the library's own label draws,
``fimvar.sample_labels``) cross-checks this on the first step; it is never used for the updates.

For linear-in-θ models ``∂²h/∂θ_i² = 0``: Î2 equals the exact conditional Fisher of the
minibatch, its label variance is zero ([B] Remark 4.4) and only input noise remains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fimvar
from fimvar.reproduce.common import Claim, Outcome, fmt, save_figure, setup_matplotlib

FAMILIES = ("gaussian", "bernoulli")
TITLES = {"gaussian": "linear regression (Gaussian)", "bernoulli": "logistic regression (Bernoulli)"}
ESTIMATORS = ("i1", "i2")


@dataclass
class Settings:
    """Design of the toy (defaults: [B] App. A as stated in the issue; init and damping ours)."""

    seeds: int = 10
    epochs: int = 256
    train: int = 256
    test: int = 4096
    batch: int = 4
    lr: float = 0.01
    damping: float = 1e-4  # δ added to max(Î, 0) before dividing
    theta_true: tuple[float, float] = (1.0, 1.0)
    theta_init: tuple[float, float] = (-1.0, 0.0)
    variance_epochs: int = 17  # epochs (log-spaced) at which the closed-form variances are taken
    engine: str = "auto"


def variance_epochs(epochs: int, count: int) -> list[int]:
    """``count`` roughly log-spaced epochs in ``[0, epochs]``, always including both ends."""
    grid = np.unique(np.round(np.geomspace(1, epochs + 1, max(count - 1, 1))).astype(int) - 1)
    return sorted(set(grid.tolist()) | {0, epochs})


def make_data(family: str, settings: Settings, seed: int) -> dict[str, torch.Tensor]:
    """Training and test sets of one seed, labels from the true model (float64)."""
    generator = torch.Generator().manual_seed(10_000 * seed + (0 if family == "gaussian" else 1))
    theta = torch.tensor(settings.theta_true, dtype=torch.float64)
    data = {}
    for split, n in (("train", settings.train), ("test", settings.test)):
        x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        h = x @ theta
        if family == "gaussian":
            y = h + torch.randn(n, generator=generator, dtype=torch.float64)
        else:
            y = (torch.rand(n, generator=generator, dtype=torch.float64) < torch.sigmoid(h)).double()
        data[f"x_{split}"], data[f"y_{split}"] = x, y
    return data


def nll(family: str, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-point negative log-likelihood (Gaussian σ = 1 includes ½ log 2π)."""
    if family == "gaussian":
        return 0.5 * (y - h) ** 2 + 0.5 * float(np.log(2 * np.pi))
    return F.binary_cross_entropy_with_logits(h, y, reduction="none")


def stacked_model(theta: torch.Tensor) -> nn.Linear:
    """Block-diagonal model of ``R`` independent 2-parameter runs: weight ``(1, 2R)``."""
    runs = theta.shape[0]
    model = nn.Linear(2 * runs, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(theta.reshape(1, -1))
    return model


def single_model(theta: torch.Tensor) -> nn.Linear:
    model = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(theta.reshape(1, 2))
    return model


def hand_estimates(family: str, x_stack: torch.Tensor, theta: torch.Tensor, seed: int, batch: int):
    """Cross-check only: Î1, Î2 of every run by the 2-parameter closed forms, with the labels
    ``fimvar.analyze`` draws (``fimvar.sample_labels``). Returns two ``(R, 2)`` tensors."""
    runs = theta.shape[0]
    h = x_stack @ theta.reshape(-1)
    labels = fimvar.sample_labels(family, h[:, None], 1, seed=seed)[:, 0, 0]
    if family == "gaussian":
        eps, info = labels - h, torch.ones_like(h)
    else:
        p = torch.sigmoid(h)
        eps, info = labels - p, p * (1 - p)
    x = x_stack.reshape(runs, batch, runs, 2)[torch.arange(runs), :, torch.arange(runs)]  # (R, b, 2)
    i1 = ((x * eps.reshape(runs, batch, 1)) ** 2).mean(1)
    i2 = (x**2 * info.reshape(runs, batch, 1)).mean(1)
    return i1, i2


def train_family(family: str, settings: Settings, log) -> dict:
    """All seeds × {Î1, Î2} runs of one toy, in lock step. Returns per-epoch arrays."""
    s_count, batch = settings.seeds, settings.batch
    runs = 2 * s_count  # run r: estimator r // S, seed r % S
    data = [make_data(family, settings, s) for s in range(s_count)]
    x_train = torch.stack([d["x_train"] for d in data])  # (S, n, 2)
    y_train = torch.stack([d["y_train"] for d in data])
    x_test = torch.stack([d["x_test"] for d in data])
    y_test = torch.stack([d["y_test"] for d in data])
    theta = torch.tensor(settings.theta_init, dtype=torch.float64).repeat(runs, 1)
    seed_of = torch.arange(runs) % s_count
    steps_per_epoch = settings.train // batch
    eval_epochs = variance_epochs(settings.epochs, settings.variance_epochs)

    def test_nll(theta: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("rnd,rd->rn", x_test[seed_of], theta)
        return nll(family, h, y_test[seed_of]).mean(1)

    def summed_variances(theta: torch.Tensor, epoch: int) -> torch.Tensor:
        """Closed-form Σ_i Var Î_j(θ_i) of the per-step estimator (4 inputs, 1 draw each) at
        each run's θ, from an analysis of the test inputs (x ~ q): ``(R, 2)`` for j = 1, 2."""
        out = torch.zeros(runs, 2, dtype=torch.float64)
        for r in range(runs):
            result = fimvar.analyze(single_model(theta[r]), x_test[seed_of[r]], family, samples=1,
                                    seed=7 + epoch, engine=settings.engine, bounds=False)
            for j, estimator in enumerate(ESTIMATORS):
                var = result.variance(estimator, inputs=batch, draws=1)
                out[r, j] = sum(float(v.sum()) for v in var.values())
        return out

    nll_curve = [test_nll(theta)]
    trajectory = [theta.clone()]
    path = [theta.clone()]  # every step of the first two epochs, then every epoch (for plots)
    variances = {0: summed_variances(theta, 0)} if 0 in eval_epochs else {}
    negative_i2 = 0
    smallest_i1 = float("inf")
    cross_check = None
    engine_name = None
    step = 0
    for epoch in range(1, settings.epochs + 1):
        order = torch.stack([torch.randperm(settings.train,
                                            generator=torch.Generator().manual_seed(
                                                1_000_003 * s + epoch)) for s in range(s_count)])
        for k in range(steps_per_epoch):
            index = order[:, k * batch:(k + 1) * batch]  # (S, b)
            xb = torch.gather(x_train, 1, index[..., None].expand(-1, -1, 2))[seed_of]  # (R, b, 2)
            yb = torch.gather(y_train, 1, index)[seed_of]
            x_stack = torch.block_diag(*xb)  # (R·b, 2R): run r's inputs x ⊗ e_r
            model = stacked_model(theta)
            step_seed = 1 + step + 1_000_000 * FAMILIES.index(family)
            result = fimvar.analyze(model, x_stack, family, samples=1, seed=step_seed,
                                    engine=settings.engine, bounds=False)
            engine_name = result.engine
            i1 = result.i1["weight"].reshape(runs, 2) * runs
            i2 = result.i2["weight"].reshape(runs, 2) * runs
            if cross_check is None:
                h1, h2 = hand_estimates(family, x_stack, theta, step_seed, batch)
                cross_check = max(float((i1 - h1).abs().max() / h1.abs().max()),
                                  float((i2 - h2).abs().max() / h2.abs().max()))
            negative_i2 += int((i2[s_count:] < 0).any(1).sum())
            smallest_i1 = min(smallest_i1, float(i1[:s_count].min()))
            precond = torch.where((torch.arange(runs) < s_count)[:, None], i1, i2)
            # minibatch gradient of the mean NLL with the data labels
            h = torch.einsum("rbd,rd->rb", xb, theta)
            if family == "gaussian":
                residual = h - yb
            else:
                residual = torch.sigmoid(h) - yb
            grad = (residual[..., None] * xb).mean(1)
            theta = theta - settings.lr * grad / (precond.clamp_min(0.0) + settings.damping)
            step += 1
            if epoch <= 2:
                path.append(theta.clone())
        nll_curve.append(test_nll(theta))
        trajectory.append(theta.clone())
        if epoch > 2:
            path.append(theta.clone())
        if epoch in eval_epochs:
            variances[epoch] = summed_variances(theta, epoch)
        if epoch % 64 == 0 or epoch == settings.epochs:
            log(f"  {family}: epoch {epoch}/{settings.epochs}")
    nll_curve = torch.stack(nll_curve)  # (E+1, R)
    trajectory = torch.stack(trajectory)  # (E+1, R, 2)
    path = torch.stack(path)
    v_epochs = sorted(variances)
    v = torch.stack([variances[e] for e in v_epochs])  # (len, R, 2)
    return {
        "engine": engine_name,
        "nll": {est: nll_curve[:, i * s_count:(i + 1) * s_count] for i, est in enumerate(ESTIMATORS)},
        "trajectory": {est: trajectory[:, i * s_count:(i + 1) * s_count]
                       for i, est in enumerate(ESTIMATORS)},
        "path": {est: path[:, i * s_count:(i + 1) * s_count] for i, est in enumerate(ESTIMATORS)},
        "variance_epochs": v_epochs,
        # variance of estimator j along the run that uses estimator est: (len, S)
        "variance": {est: {f"V{j + 1}": v[:, i * s_count:(i + 1) * s_count, j] for j in range(2)}
                     for i, est in enumerate(ESTIMATORS)},
        "negative_i2_steps": negative_i2,
        "smallest_i1": smallest_i1,
        "cross_check_rel_error": cross_check,
    }


def summarise(family: str, res: dict, settings: Settings) -> dict:
    tail = max(1, settings.epochs // 4)  # last quarter of training
    out: dict = {"engine": res["engine"], "cross_check_rel_error": res["cross_check_rel_error"],
                 "negative_i2_steps": res["negative_i2_steps"], "smallest_i1": res["smallest_i1"]}
    for est in ESTIMATORS:
        curve = res["nll"][est]
        out[f"final_nll_median_{est}"] = float(curve[-tail:].mean(0).median())
        out[f"mean_nll_median_{est}"] = float(curve[1:].mean(0).median())
        out[f"final_distance_median_{est}"] = float(
            (res["trajectory"][est][-1] - torch.tensor(settings.theta_true)).norm(dim=1).median())
    # paired comparison (same data, init, minibatches; only the preconditioner differs)
    diff = res["nll"]["i1"][-tail:].mean(0) - res["nll"]["i2"][-tail:].mean(0)
    out["seeds_i2_better_final"] = int((diff > 0).sum())
    v1 = res["variance"]["i1"]["V1"]
    v2 = res["variance"]["i2"]["V2"]
    out["variance_i1_run_median"] = v1.median(1).values
    out["variance_i2_run_median"] = v2.median(1).values
    out["variance_ratio_median"] = float((v1 / v2).median())
    # along the same θ (the Î1 run): V2 ≤ V1 pointwise?
    same = res["variance"]["i1"]
    out["fraction_v2_below_v1_same_theta"] = float((same["V2"] <= same["V1"]).double().mean())
    return out


def plot(results: dict, settings: Settings, out: Path) -> str:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.2))
    colors = {"i1": "tab:red", "i2": "tab:blue"}
    labels = {"i1": "NG with Î1", "i2": "NG with Î2"}
    epochs = np.arange(settings.epochs + 1)
    for row, family in enumerate(FAMILIES):
        res = results[family]
        ax = axes[row, 0]
        for est in ESTIMATORS:
            curve = res["nll"][est].numpy()
            q10, q50, q90 = np.quantile(curve, [0.1, 0.5, 0.9], axis=1)
            ax.plot(epochs, q50, color=colors[est], label=f"{labels[est]} (median)")
            ax.fill_between(epochs, q10, q90, color=colors[est], alpha=0.2)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test NLL")
        ax.set_title(f"{TITLES[family]}\ntest NLL, median and 10–90% band")
        ax.legend()
        ax = axes[row, 1]
        for est in ESTIMATORS:
            path = res["path"][est].numpy()
            for s in range(path.shape[1]):
                ax.plot(path[:, s, 0], path[:, s, 1], color=colors[est], lw=0.6, alpha=0.5,
                        label=labels[est] if s == 0 else None)
        window = (-1.5, 3.0)
        outside = {est: int((np.abs(res["path"][est].numpy() - 0.75) > 2.25).any(-1).any(0).sum())
                   for est in ESTIMATORS}
        ax.plot(*settings.theta_true, "k*", ms=10, label="θ_true")
        ax.plot(*settings.theta_init, "ko", ms=4, label="θ_0")
        ax.set_xlim(*window)
        ax.set_ylim(*window)
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        ax.set_title("trajectories (steps of epochs 1–2, then epochs)\n"
                     f"seeds leaving the window: Î1 {outside['i1']}, Î2 {outside['i2']}")
        ax.legend()
        ax = axes[row, 2]
        v_epochs = np.array(res["variance_epochs"])
        for est, key in (("i1", "V1"), ("i2", "V2")):
            v = res["variance"][est][key].numpy()
            q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9], axis=1)
            ax.plot(v_epochs, q50, "o-", ms=3, color=colors[est],
                    label=f"Var Î{key[1]} along {labels[est]}")
            ax.fill_between(v_epochs, q10, q90, color=colors[est], alpha=0.2)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("summed variance (4 inputs × 1 draw)")
        ax.set_title("Σ_i Var of the preconditioner (closed form)\nmedian and 10–90% band")
        ax.legend()
    fig.suptitle(f"[B] Fig. 1 — natural gradient with diagonal Î1 vs Î2 ({settings.seeds} seeds, "
                 f"lr {settings.lr}, batch {settings.batch}, damping {settings.damping:g})")
    fig.tight_layout()
    return save_figure(fig, out, "natural_gradient")


def run(out: Path, quick: bool = False, seeds: int | None = None, log=print) -> Outcome:
    """Run [B] Fig. 1 (``quick``: 2 seeds, 6 epochs, 1024 test points)."""
    settings = Settings()
    if quick:
        settings = Settings(seeds=2, epochs=6, test=1024, variance_epochs=3)
    if seeds is not None:
        settings.seeds = seeds
    results = {family: train_family(family, settings, log) for family in FAMILIES}
    numbers = {family: summarise(family, results[family], settings) for family in FAMILIES}
    for family in FAMILIES:
        res = results[family]
        numbers[family]["curves"] = {
            "epochs": list(range(settings.epochs + 1)),
            **{f"nll_{est}_median": res["nll"][est].median(1).values for est in ESTIMATORS},
            "variance_epochs": res["variance_epochs"],
        }
    figure = plot(results, settings, out)

    g, b = numbers["gaussian"], numbers["bernoulli"]
    better = all(n["final_nll_median_i2"] <= n["final_nll_median_i1"] for n in (g, b))
    lower = all(n["fraction_v2_below_v1_same_theta"] == 1.0 for n in (g, b))
    claims = [
        Claim(
            "Î2 is preferable to Î1 as the natural-gradient preconditioner on the toys",
            "[B] Fig. 1: NG with Î2 trains better than with Î1 on linear and logistic regression",
            "median test NLL over the last quarter of training, Î1 vs Î2: "
            f"linear {fmt(g['final_nll_median_i1'], 4)} vs {fmt(g['final_nll_median_i2'], 4)} "
            f"({g['seeds_i2_better_final']}/{settings.seeds} seeds favour Î2), logistic "
            f"{fmt(b['final_nll_median_i1'], 4)} vs {fmt(b['final_nll_median_i2'], 4)} "
            f"({b['seeds_i2_better_final']}/{settings.seeds} seeds)",
            better,
        ),
        Claim(
            "The summed variance of Î2 is lower than that of Î1 along training",
            "[B] Fig. 1: the variance of Î2 is generally lower than that of Î1",
            "Σ_i Var Î2 ≤ Σ_i Var Î1 at every evaluated (epoch, seed) at the same θ "
            f"(fraction: linear {g['fraction_v2_below_v1_same_theta']:.2f}, logistic "
            f"{b['fraction_v2_below_v1_same_theta']:.2f}); median ratio V1/V2 along the runs: "
            f"linear {fmt(g['variance_ratio_median'])}, logistic {fmt(b['variance_ratio_median'])}",
            lower,
        ),
        Claim(
            "Linear-in-θ models: Î2 has no label noise and is never negative",
            "[B] Remark 4.4 (∂²h/∂θ² = 0 ⇒ V2 has input noise only)",
            f"negative Î2 entries in {g['negative_i2_steps'] + b['negative_i2_steps']} steps; "
            f"stacked-model estimates match the hand closed form to "
            f"{max(g['cross_check_rel_error'], b['cross_check_rel_error']):.1e}",
            g["negative_i2_steps"] + b["negative_i2_steps"] == 0
            and max(g["cross_check_rel_error"], b["cross_check_rel_error"]) < 1e-9,
        ),
    ]
    settings_dict = asdict(settings)
    settings_dict["engine_used"] = g["engine"]
    settings_dict["optimizer"] = ("θ ← θ − lr·g/(max(Î,0)+damping), g = minibatch mean NLL "
                                  "gradient with data labels; one label draw per input per step")
    return Outcome("natural-gradient", "[B] Fig. 1 — natural gradient toys", quick, settings_dict,
                   numbers, claims, [figure])
