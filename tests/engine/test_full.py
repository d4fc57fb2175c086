"""The full-matrix engine's output Hessians against plain double backward (torch.autograd, no
torch.func), one output and one parameter entry at a time; LayerNorm included, where
``jacfwd(jacrev(h))`` of torch 2.13 returns wrong off-diagonal entries."""

from __future__ import annotations

import pytest
import torch
from cases import make_case
from checks import assert_close

from fimvar.engine.full import FullDerivatives


@pytest.mark.parametrize("model_name", ["layernorm", "mlp-tanh", "residual"])
def test_output_hessians_match_double_backward(model_name):
    case = make_case(model_name, "categorical", inputs=2)
    model = case.model.eval()
    names = [n for n, _ in model.named_parameters()]
    engine = FullDerivatives(model, names, 2**30)
    _, _, hessians = engine.derivatives(case.x)
    for i, x1 in enumerate(case.x):
        theta = engine.flat.clone().requires_grad_()
        outputs = engine._outputs(theta, x1)
        for a in range(outputs.numel()):
            (gradient,) = torch.autograd.grad(outputs[a], theta, create_graph=True)
            rows = [torch.autograd.grad(gradient[k], theta, retain_graph=True)[0]
                    for k in range(theta.numel())]
            assert_close(hessians[i, a], torch.stack(rows), f"{model_name}: output Hessian", rtol=1e-12,
                         floor=1e-14)
