"""The unrolled recurrent layers equal PyTorch's fused kernels (docs/theory.md §10)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fimvar.engine.functional import differentiable

CONFIGURATIONS = [
    (cls, layers, bidirectional, batch_first, projection, initial, unbatched)
    for cls, layers, bidirectional, batch_first, projection, initial, unbatched in itertools.product(
        (nn.LSTM, nn.GRU, nn.RNN), (1, 2), (False, True), (False, True), (0, 2), (False, True), (False, True))
    if not (projection and cls is not nn.LSTM)
]


def _flat(output) -> list[torch.Tensor]:
    first, state = output
    return [first, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("cls,layers,bidirectional,batch_first,projection,initial,unbatched", CONFIGURATIONS)
def test_unrolled_layers_equal_the_fused_kernels(cls, layers, bidirectional, batch_first, projection,
                                                  initial, unbatched):
    torch.manual_seed(layers + 2 * bidirectional)
    options = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    if projection:
        options["proj_size"] = projection
    if cls is nn.RNN:
        options["nonlinearity"] = "relu" if layers == 2 else "tanh"
    module = cls(3, 4, **options).double().eval()
    shape = (5, 3) if unbatched else ((2, 5, 3) if batch_first else (5, 2, 3))
    x = torch.randn(*shape, dtype=torch.float64)
    args = (x,)
    if initial:
        batch = () if unbatched else (2,)
        directions = 2 if bidirectional else 1
        h0 = torch.randn(layers * directions, *batch, projection or 4, dtype=torch.float64)
        c0 = torch.randn(layers * directions, *batch, 4, dtype=torch.float64)
        args = (x, (h0, c0)) if cls is nn.LSTM else (x, h0)
    with torch.no_grad():
        fused = _flat(module(*args))
        with differentiable(module):
            assert "forward" in vars(module)
            unrolled = _flat(module(*args))
    assert "forward" not in vars(module)  # restored
    for a, b in zip(fused, unrolled, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
@pytest.mark.parametrize("unbatched", [False, True])
def test_unrolled_cells_equal_the_fused_kernels(cls, unbatched):
    torch.manual_seed(0)
    module = cls(3, 4).double()
    x = torch.randn(*(() if unbatched else (2,)), 3, dtype=torch.float64)
    with torch.no_grad():
        fused = module(x)
        with differentiable(module):
            unrolled = module(x)
    fused = fused if isinstance(fused, tuple) else (fused,)
    unrolled = unrolled if isinstance(unrolled, tuple) else (unrolled,)
    for a, b in zip(fused, unrolled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-13)
