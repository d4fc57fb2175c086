"""Recurrent layers written out step by step, so that ``torch.func`` can differentiate them
(docs/theory.md §10).

PyTorch's fused kernels of ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells write into their
outputs in place, which ``vmap`` refuses. While fimvar differentiates a model,
:mod:`fimvar.engine.functional` replaces their ``forward`` by :func:`cell_forward` or
:func:`layer_forward`: the same recurrence in plain tensor operations (PyTorch's documented
equations, the same parameters), restored afterwards.
The tests check that the unrolled forward equals the fused one for every configuration
(layers, directions, ``batch_first``, projections, initial states, unbatched inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from fimvar.errors import FimvarError


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x @ weight.T
    return out if bias is None else out + bias


def lstm_step(x, state, weights):
    """One LSTM step: ``(h, c)`` from the input and the previous ``(h, c)``; with a projection
    ``weight_hr``, ``h = (o ⊙ tanh c) W_hrᵀ``."""
    h, c = state
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    gates = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w_hr is None else h @ w_hr.T), c


def gru_step(x, h, weights):
    """One GRU step: ``r, z = σ(·)``, ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
    ``h' = (1 − z) ⊙ n + z ⊙ h``."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    ir, iz, in_ = _linear(x, w_ih, b_ih).chunk(3, -1)
    hr, hz, hn = _linear(h, w_hh, b_hh).chunk(3, -1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * h


def rnn_step(x, h, weights, nonlinearity: str):
    """One Elman step: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or ReLU)."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    pre = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _step(module: nn.Module):
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return lstm_step
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return lambda x, h, weights: gru_step(x, h, weights)
    return lambda x, h, weights: rnn_step(x, h, weights, module.nonlinearity)


def _weights(module: nn.Module, suffix: str):
    def get(name):
        return getattr(module, name + suffix, None)
    return (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"))


def cell_forward(self: nn.Module, x: torch.Tensor, hx=None):
    is_lstm = isinstance(self, nn.LSTMCell)
    unbatched = x.dim() == 1
    if unbatched:
        x = x.unsqueeze(0)
        if hx is not None:
            hx = tuple(h.unsqueeze(0) for h in hx) if is_lstm else hx.unsqueeze(0)
    if hx is None:
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        hx = (zeros, zeros) if is_lstm else zeros
    out = _step(self)(x, hx, _weights(self, ""))
    if unbatched:
        out = tuple(o.squeeze(0) for o in out) if is_lstm else out.squeeze(0)
    return out


def layer_forward(self: nn.Module, x, hx=None):
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise FimvarError(f"fimvar cannot differentiate {type(self).__name__} on a PackedSequence; pad "
                          "the sequences and pass a tensor (and a mask of the positions to use)")
    is_lstm = isinstance(self, nn.LSTM)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
    elif self.batch_first:
        x = x.transpose(0, 1)  # (L, B, D)
    directions = 2 if self.bidirectional else 1
    batch = x.shape[1]
    out_size = self.proj_size if is_lstm and self.proj_size > 0 else self.hidden_size
    if hx is None:
        h0 = x.new_zeros(self.num_layers * directions, batch, out_size)
        c0 = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
    else:
        h0, c0 = hx if is_lstm else (hx, None)
    step = _step(self)
    final_h, final_c = [], []
    layer_input = x
    for layer in range(self.num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = _weights(self, suffix)
            state = (h0[index], c0[index]) if is_lstm else h0[index]
            steps = range(layer_input.shape[0])
            sequence = []
            for t in (reversed(steps) if direction else steps):
                state = step(layer_input[t], state, weights)
                sequence.append(state[0] if is_lstm else state)
            if direction:
                sequence.reverse()
            outputs.append(torch.stack(sequence))
            final_h.append(state[0] if is_lstm else state)
            if is_lstm:
                final_c.append(state[1])
        layer_input = torch.cat(outputs, -1) if directions == 2 else outputs[0]
        if self.training and self.dropout > 0 and layer < self.num_layers - 1:
            layer_input = nn.functional.dropout(layer_input, self.dropout, True)
    output = layer_input
    h_n = torch.stack(final_h)
    c_n = torch.stack(final_c) if is_lstm else None
    if unbatched:
        output, h_n = output.squeeze(1), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    elif self.batch_first:
        output = output.transpose(0, 1)
    return (output, (h_n, c_n)) if is_lstm else (output, h_n)
