"""The autodiff engine's per-input derivatives u = ∂h/∂θ_i and w = ∂²h/∂θ_i² against the oracle's
Jacobian and full Hessians of the flat parameter vector (docs/theory.md §10)."""

from __future__ import annotations

import pytest
import torch
from cases import ORACLE_MODELS, make_case
from checks import assert_close
from oracle import Oracle

from fimvar.engine import AutodiffEngine


@pytest.mark.parametrize("model_name", list(ORACLE_MODELS))
def test_derivatives_match_the_oracle(model_name):
    case = make_case(model_name, "categorical", inputs=3)
    names = [n for n, _ in case.model.named_parameters()]
    h, blocks = AutodiffEngine(case.model, names, 2**30).derivatives(case.x)
    oracle = Oracle(case.model, "categorical")
    for k, x1 in enumerate(case.x):
        u, w = oracle.output_derivatives(x1)
        expected_u, expected_w = oracle.split(u), oracle.split(w)
        assert_close(h[k], oracle.outputs(x1).detach(), "autodiff: outputs h")
        for block in blocks:
            shape = (u.shape[0], *block.shape)
            assert_close(block.first[k].reshape(shape), expected_u[block.name], "autodiff: u")
            assert_close(block.second[k].reshape(shape), expected_w[block.name], "autodiff: w",
                         floor=1e-6 * float(w.abs().max()))


def test_first_derivatives_only():
    case = make_case("mlp-tanh", "gaussian")
    names = [n for n, _ in case.model.named_parameters()]
    _, full = AutodiffEngine(case.model, names, 2**30).derivatives(case.x)
    _, first = AutodiffEngine(case.model, names, 2**30).derivatives(case.x, second=False)
    for a, b in zip(full, first, strict=True):
        assert torch.equal(a.first, b.first) and not b.second.any()
