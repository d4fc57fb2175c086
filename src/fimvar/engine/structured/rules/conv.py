"""``Conv1d`` / ``Conv2d`` (stride, padding, dilation, groups): ``z[o, s] = Σ_{c,k} W[o, c, k]
x_unf[(c, k), s] + b[o]`` with ``x_unf`` the unfolded input of the group of ``o``.

The weight is shared over positions ``s``, so nothing factorises. The derivative of ``z`` along
``W[o, c, k]`` is ``d = x_unf[(c, k), :]`` in output channel ``o`` (a :class:`ChannelSparse`
tangent) and ``u = Σ_s G[:, o, s] x_unf[(c, k), s]``. For the second derivative, with ``H^a``
the output Hessian with respect to ``z``,

    w^a = dᵀ H^a d = Σ_{s,s'} H^a[(o,s),(o,s')] x_unf[s] x_unf[s']          (cross-position terms)
        = Σ_k Σ_j r^a_k[j] (Σ_s B_k[j, (o,s)] x_unf[s])²                    (docs/theory.md §6)

because ``H^a = Σ_k B_kᵀ diag(r^a_k) B_k`` over the activations ``k`` after the convolution
(``B_k = ∂z_k/∂z``). The square of a sum over positions holds every cross-position term; only
the activation right after the convolution (``B = I``) reduces to ``Σ_s r^a[o,s] x_unf[s]²``.
The tangent ``B_k d`` is pushed forward whole; derivatives are emitted in the plain layout.

Pushing a channel-sparse tangent through a further convolution is a convolution with one input
channel per direction group (``groups = C``), ``C`` times cheaper than pushing dense directions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fimvar.engine.base import ParameterDerivatives
from fimvar.engine.structured.rules.base import Rule, register, weight_and_bias_blocks
from fimvar.engine.structured.tangents import ChannelSparse, Dense, Tangent


@register(nn.Conv1d, nn.Conv2d)
class Conv(Rule):
    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.padding_mode != "zeros":
            return f"{type(module).__name__} with padding_mode={module.padding_mode!r}"
        return None

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__(module, name)
        self.dims = 1 if isinstance(module, nn.Conv1d) else 2
        kernel = module.kernel_size
        dilation = module.dilation
        if isinstance(module.padding, str):  # 'valid' or 'same' (possibly asymmetric)
            totals = [0 if module.padding == "valid" else d * (k - 1) for k, d in zip(kernel, dilation,
                                                                                  strict=True)]
            self.pre_pad = []
            for total in reversed(totals):  # F.pad lists the last axis first
                self.pre_pad += [total // 2, total - total // 2]
            self.padding = (0,) * self.dims
        else:
            self.pre_pad = []
            self.padding = tuple(module.padding)
        if not any(self.pre_pad):
            self.pre_pad = []

    # ------------------------------------------------------------------ helpers
    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        m = self.module
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, weight, None, m.stride, self.padding, m.dilation, groups)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pre_pad) if self.pre_pad else x

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """``x_unf`` of every group: ``(n, groups, C_g·K, positions)``."""
        m = self.module
        x = self._padded(x)
        if self.dims == 1:
            unf = F.unfold(x[:, :, None], (1, m.kernel_size[0]), (1, m.dilation[0]),
                           (0, self.padding[0]), (1, m.stride[0]))
        else:
            unf = F.unfold(x, m.kernel_size, m.dilation, self.padding, m.stride)
        return unf.reshape(x.shape[0], m.groups, -1, unf.shape[-1])

    # ------------------------------------------------------------------ rule
    def forward(self, x: torch.Tensor):
        y = self.module(x)
        return y, (x, tuple(y.shape[1:]))

    def _pads(self, axis: int) -> tuple[int, int]:
        """Extra zero padding ``(before, after)`` of spatial axis ``axis`` (``padding='same'``)."""
        if not self.pre_pad:
            return 0, 0
        index = 2 * (self.dims - 1 - axis)  # F.pad lists the last axis first
        return self.pre_pad[index], self.pre_pad[index + 1]

    def backward(self, cache, g: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = cache[0]
        n, width = g.shape[:2]
        spatial = [size + sum(self._pads(axis)) for axis, size in enumerate(x.shape[2:])]
        grad_input = torch.nn.grad.conv1d_input if self.dims == 1 else torch.nn.grad.conv2d_input
        pulled = grad_input((n * width, x.shape[1], *spatial), m.weight,
                            g.reshape(n * width, *g.shape[2:]), m.stride, self.padding,
                            m.dilation, m.groups)
        if self.pre_pad:  # the pullback of zero padding is cropping
            crop = [slice(None), slice(None)]
            for axis in range(self.dims):
                before, after = self._pads(axis)
                crop.append(slice(before, pulled.shape[2 + axis] - after))
            pulled = pulled[tuple(crop)]
        return pulled.reshape(n, width, *x.shape[1:])

    def push(self, cache, tangent: Tangent) -> Tangent:
        m = self.module
        weight = m.weight
        if isinstance(tangent, ChannelSparse) and not tangent.channel_last \
                and len(tangent.shape) == self.dims + 1:
            # input channel c of every direction group feeds only the outputs of its group
            n, channels, count, _ = tangent.expanded().shape
            groups, out_per_group = m.groups, m.out_channels // m.groups
            in_per_group = channels // groups
            compact = weight.reshape(groups, out_per_group, in_per_group, *weight.shape[2:])
            compact = compact.transpose(1, 2).reshape(channels * out_per_group, 1, *weight.shape[2:])
            images = tangent.expanded().reshape(n, channels, count, *tangent.shape[1:])
            images = self._padded(images.transpose(1, 2).reshape(n * count, channels,
                                                                  *tangent.shape[1:]))
            out = self._conv(images, compact, channels)  # (n·P, C·O_g, *out)
            spatial = out.shape[2:]
            if groups == 1:
                values = out.reshape(n, count * channels, m.out_channels, *spatial)
            else:
                full = out.new_zeros(n * count, groups, in_per_group, groups, out_per_group,
                                     *spatial)
                part = out.reshape(n * count, groups, in_per_group, out_per_group, *spatial)
                full.diagonal(dim1=1, dim2=3).copy_(part.movedim(1, -1))
                values = full.reshape(n, count * channels, m.out_channels, *spatial)
            return Dense(values, (count, channels), order=(1, 0))
        return tangent.dense().map(lambda v: self._conv(self._padded(v), weight, m.groups))

    def tangent(self, cache) -> ChannelSparse:
        x, shape = cache
        unf = self._unfold(x)
        if self.module.bias is not None:
            unf = torch.cat([unf, unf.new_ones(*unf.shape[:2], 1, unf.shape[3])], dim=2)
        return ChannelSparse(unf, self.module.out_channels, shape)

    def emit(self, cache, first, second, selected) -> list[ParameterDerivatives]:
        return weight_and_bias_blocks(first, second, selected, self.module, self.module.weight[0].numel())
