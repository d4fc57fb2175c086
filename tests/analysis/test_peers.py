"""The exact Fisher diagonal equals BackPACK's DiagGGNExact (a peer's independent code)."""

from __future__ import annotations

import pytest
import torch
from cases import make_case
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


#: catalogue models made of modules BackPACK supports in float64 (Linear, Conv1d, Tanh, ReLU, …)
MODELS = ["mlp-tanh", "conv1d", "relu-leaky"]


@pytest.mark.parametrize("name", MODELS)
def test_fisher_equals_backpack_diag_ggn_exact(name):
    case = make_case(name, "categorical", inputs=7, outputs=4)
    r = fimvar.analyze(case.model, case.x, "categorical", bounds=False)
    # CrossEntropyLoss(sum) has the softmax Hessian I(h): its GGN sums I(θ|x_n) over the inputs
    ggn = backpack_diag_ggn(case.model, nn.CrossEntropyLoss(reduction="sum"), case.x, case.labels)
    for param, value in ggn.items():
        torch.testing.assert_close(r.fisher[param] * len(case.x), value, rtol=1e-10, atol=1e-14)


def test_gaussian_fisher_equals_half_mse_ggn():
    case = make_case("conv1d", "gaussian", inputs=5, seed=1)
    r = fimvar.analyze(case.model, case.x, "gaussian", bounds=False)
    # MSELoss(sum) = Σ (y − μ)² has output Hessian 2 I; the Gaussian (σ = 1) Fisher is I
    ggn = backpack_diag_ggn(case.model, nn.MSELoss(reduction="sum"), case.x, case.labels)
    for param, value in ggn.items():
        torch.testing.assert_close(2 * r.fisher[param] * len(case.x), value, rtol=1e-10, atol=1e-14)
