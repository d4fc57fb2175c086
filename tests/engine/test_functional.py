"""The forwards fimvar substitutes while differentiating compute what the fused kernels do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fimvar
from fimvar.engine.functional import differentiable


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding", [None, 2])
def test_embedding_bag_equals_the_fused_kernel(mode, padding):
    torch.manual_seed(0)
    module = nn.EmbeddingBag(7, 3, mode=mode, padding_idx=padding).double()
    x = torch.randint(0, 7, (5, 4))
    x[0] = 2  # an empty bag when 2 is the padding index
    weights = torch.rand(5, 4, dtype=torch.float64) if mode == "sum" else None
    with torch.no_grad():
        fused = module(x, per_sample_weights=weights)
        with differentiable(module):
            substituted = module(x, per_sample_weights=weights)
    torch.testing.assert_close(substituted, fused, rtol=1e-14, atol=1e-14)


def test_embedding_bag_with_offsets_is_refused_clearly():
    module = nn.EmbeddingBag(7, 3)
    model = nn.Sequential(module, nn.Linear(3, 2))

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model[1](self.model[0](x.reshape(-1), torch.arange(0, x.numel(), x.shape[1])))

    with pytest.raises(fimvar.FimvarError, match="EmbeddingBag"):
        fimvar.analyze(Flat(), torch.randint(0, 7, (3, 4)), "categorical", engine="autodiff")


def test_attention_runs_on_the_math_kernel():
    """Inside the context the fused attention kernels are off: forward-mode AD works."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    tangent = torch.randn_like(q)

    def attend(q):
        return nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)

    model = nn.Linear(1, 1)
    with differentiable(model):
        _, derivative = torch.func.jvp(attend, (q,), (tangent,))
    eps = 1e-6
    numeric = (attend(q + eps * tangent) - attend(q - eps * tangent)) / (2 * eps)
    torch.testing.assert_close(derivative, numeric, rtol=1e-6, atol=1e-8)
