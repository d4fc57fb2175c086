"""One catalogue of tiny float64 test networks (models × families) that every test draws from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FAMILY_WIDTH = {"categorical": 3, "gaussian": 2, "bernoulli": 3, "poisson": 2}
FAMILIES = tuple(FAMILY_WIDTH)


class Residual(nn.Module):
    """x + tanh(W x), then a linear head."""

    def __init__(self, width: int, outputs: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + torch.tanh(self.inner(x)))


def _mlp_tanh(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, t)), (3,)


def _mlp_sigmoid_softplus(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Softplus(),
                         nn.Linear(3, t)), (3,)


def _mlp_gelu_nobias(t):
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.GELU(), nn.Linear(4, t, bias=False)), (3,)


def _mlp_silu_elu_logsigmoid(t):
    return nn.Sequential(nn.Linear(2, 3), nn.SiLU(), nn.Linear(3, 3), nn.ELU(), nn.Linear(3, 3),
                         nn.LogSigmoid(), nn.Linear(3, t)), (2,)


def _conv1d(t):
    return nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, t)), (1, 6)


def _conv2d(t):
    return nn.Sequential(nn.Conv2d(1, 2, 2, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, t)), (1, 4, 4)


def _residual(t):
    return Residual(3, t), (3,)


def _layernorm(t):
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, t)), (3,)


MODELS = {
    "mlp-tanh": _mlp_tanh,
    "mlp-sigmoid-softplus": _mlp_sigmoid_softplus,
    "mlp-gelu-nobias": _mlp_gelu_nobias,
    "mlp-silu-elu-logsigmoid": _mlp_silu_elu_logsigmoid,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "residual": _residual,
    "layernorm": _layernorm,
}


@dataclass
class Case:
    model_name: str
    family: str
    model: nn.Module
    x: torch.Tensor
    labels: torch.Tensor

    @property
    def id(self) -> str:
        return f"{self.model_name}-{self.family}"


def data_labels(family: str, outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Arbitrary labels in the family's domain (not drawn from the model)."""
    n, width = outputs.shape
    if family == "categorical":
        return torch.randint(0, width, (n,), generator=generator)
    if family == "bernoulli":
        return torch.randint(0, 2, (n, width), generator=generator).double()
    if family == "poisson":
        return torch.randint(0, 4, (n, width), generator=generator).double()
    return torch.randn(n, width, generator=generator, dtype=torch.float64)


def make_case(model_name: str, family: str, inputs: int = 3, seed: int = 0) -> Case:
    torch.manual_seed(seed)
    model, shape = MODELS[model_name](FAMILY_WIDTH[family])
    model = model.double()
    if family == "poisson":  # keep rates moderate so that the oracle's truncated sum is exact
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.6)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(inputs, *shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        outputs = model(x)
    return Case(model_name, family, model, x, data_labels(family, outputs, generator))


ALL_CASES = [(m, f) for m in MODELS for f in FAMILIES]
