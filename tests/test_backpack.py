"""The exact Fisher diagonal equals BackPACK's DiagGGNExact (a peer's independent code)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fimvar

backpack = pytest.importorskip("backpack")
from backpack import extend  # noqa: E402
from backpack.extensions import DiagGGNExact  # noqa: E402


def backpack_diag_ggn(model, loss, x, y):
    model = extend(model)
    loss = extend(loss)
    model.zero_grad()
    with backpack.backpack(DiagGGNExact()):
        loss(model(x), y).backward()
    return {n: p.diag_ggn_exact.detach().clone() for n, p in model.named_parameters()}


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4)),
    "cnn": lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, stride=2),
                                 nn.Sigmoid(), nn.Flatten(), nn.Linear(8, 4)),
}
SHAPES = {"mlp": (6,), "cnn": (1, 6, 6)}


@pytest.mark.parametrize("name", MODELS)
def test_fisher_equals_backpack_diag_ggn_exact(name):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    x = torch.randn(7, *SHAPES[name], dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    r = fimvar.analyze(model, x, "categorical", bounds=False)
    # CrossEntropyLoss(sum) has the softmax Hessian I(h): its GGN sums I(θ|x_n) over the inputs
    ggn = backpack_diag_ggn(model, nn.CrossEntropyLoss(reduction="sum"), x, y)
    for param, value in ggn.items():
        torch.testing.assert_close(r.fisher[param] * len(x), value, rtol=1e-10, atol=1e-14)


def test_gaussian_fisher_equals_half_mse_ggn():
    torch.manual_seed(1)
    model = MODELS["mlp"]().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    r = fimvar.analyze(model, x, "gaussian", bounds=False)
    # MSELoss(sum) = Σ (y − μ)² has output Hessian 2 I; the Gaussian (σ = 1) Fisher is I
    ggn = backpack_diag_ggn(model, nn.MSELoss(reduction="sum"), x, torch.randn(5, 4, dtype=torch.float64))
    for param, value in ggn.items():
        torch.testing.assert_close(2 * r.fisher[param] * len(x), value, rtol=1e-10, atol=1e-14)
