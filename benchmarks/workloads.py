"""The reference workloads of design.md, and the variants of the scaling tables.

| id   | model                                                                 | family      | N    |
|------|-----------------------------------------------------------------------|-------------|------|
| mlp  | 784-256-256-10, sigmoid                                               | categorical | 1000 |
| deep | 784-256×4-10, tanh                                                    | categorical | 1000 |
| cnn  | conv(1→16,3)-tanh-conv(16→32,3)-tanh-avgpool(2)-flatten-linear(→10)   | categorical | 256  |
| reg  | 13-64-64-1, tanh                                                      | gaussian    | 1000 |

Weights use torch's default initialisation with a fixed seed; inputs are standard normal
(float32), data labels uniform (categorical) or standard normal (Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Workload:
    name: str
    description: str
    model: nn.Module
    x: torch.Tensor
    labels: torch.Tensor  # data labels, for the plain gradient
    family: str  # categorical | gaussian

    @property
    def width(self) -> int:
        return int(self.labels.max()) + 1 if self.family == "categorical" else self.labels.shape[1]


def mlp(width: int = 256, outputs: int = 10, activation=nn.Sigmoid) -> nn.Module:
    return nn.Sequential(nn.Linear(784, width), activation(), nn.Linear(width, width), activation(),
                         nn.Linear(width, outputs))


def deep() -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(784, 256), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(256, 256), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.Tanh(), nn.Conv2d(16, 32, 3), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 12 * 12, 10))


def regression() -> nn.Module:
    return nn.Sequential(nn.Linear(13, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def make(model: nn.Module, shape: tuple[int, ...], n: int, family: str, outputs: int,
         name: str, description: str, device: torch.device, seed: int = 0) -> Workload:
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, *shape, generator=generator)
    if family == "categorical":
        labels = torch.randint(0, outputs, (n,), generator=generator)
        labels[0] = outputs - 1  # every class index is in range, the width is known
    else:
        labels = torch.randn(n, outputs, generator=generator)
    return Workload(name, description, model.to(device).eval(), x.to(device), labels.to(device),
                    family)


def reference(name: str, device: torch.device, n: int | None = None) -> Workload:
    """One of the four reference workloads (``n`` overrides its number of inputs)."""
    torch.manual_seed(0)
    if name == "mlp":
        return make(mlp(), (784,), n or 1000, "categorical", 10, "mlp",
                    "784-256-256-10 sigmoid, categorical", device)
    if name == "deep":
        return make(deep(), (784,), n or 1000, "categorical", 10, "deep",
                    "784-256×4-10 tanh, categorical", device)
    if name == "cnn":
        return make(cnn(), (1, 28, 28), n or 256, "categorical", 10, "cnn",
                    "conv16-tanh-conv32-tanh-avgpool-linear, 1×28×28, categorical", device)
    if name == "reg":
        return make(regression(), (13,), n or 1000, "gaussian", 1, "reg",
                    "13-64-64-1 tanh, Gaussian", device)
    raise ValueError(f"unknown workload {name!r}; choose among mlp, deep, cnn, reg")


WORKLOADS = ("mlp", "deep", "cnn", "reg")


def scaling(device: torch.device) -> dict[str, list[tuple[str, Workload]]]:
    """The scaling tables: inputs N (mlp), hidden width (784-w-w-10 sigmoid, N = 1000) and
    outputs T (784-256-256-T sigmoid, N = 1000)."""
    tables: dict[str, list[tuple[str, Workload]]] = {"inputs N (mlp)": [], "width w (784-w-w-10)": [],
                                                    "outputs T (784-256-256-T)": []}
    for n in (1000, 4000, 16000):
        tables["inputs N (mlp)"].append((f"N = {n}", reference("mlp", device, n)))
    for width in (64, 128, 256, 512, 1024):
        torch.manual_seed(0)
        tables["width w (784-w-w-10)"].append((f"w = {width}", make(
            mlp(width), (784,), 1000, "categorical", 10, f"mlp-w{width}", "", device)))
    for outputs in (2, 10, 30, 100):
        torch.manual_seed(0)
        tables["outputs T (784-256-256-T)"].append((f"T = {outputs}", make(
            mlp(256, outputs), (784,), 1000, "categorical", outputs, f"mlp-T{outputs}", "", device)))
    return tables
