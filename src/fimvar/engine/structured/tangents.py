"""Tangents: the derivatives of one layer's activations with respect to the parameter directions
of an earlier layer, pushed forward through the network one module at a time.

Why they are needed (docs/theory.md §6 and §9). In a feed-forward stack every
module is linear in its input except the elementwise activations ``φ`` (max pooling is piecewise
linear, its second derivative is 0 almost everywhere). A parameter ``θ_i`` enters the output
``z_l`` of its layer linearly, so the chain rule gives the diagonal second derivative of every
output ``h^a`` as a sum over the activations ``k`` after layer ``l``:

    w_i^a = ∂²h^a/∂θ_i² = Σ_k Σ_j r^a_k[j] (∂z_k[j]/∂θ_i)²,    r^a_k = φ''(z_k) ⊙ ∂h^a/∂φ(z_k)

with ``z_k`` the input of activation ``k``. ``r`` comes from the backward pass (T columns);
``∂z_k/∂θ_i`` is the tangent of direction ``i`` at ``z_k``. For a ``Linear`` layer the directions
are the unit vectors of its output (``∂z_k/∂W[j,m] = B_{l,k}[:, j] a_m``), which gives
``Hdiag[a, j] = Σ_k Σ_q r^a_k[q] B_{l,k}[q, j]²`` (docs/theory.md §9.3).

A tangent holds the directions of one layer at the current activation, for a chunk of ``n``
inputs, in the cheapest form that is exact:

- :class:`Diagonal` — ``diag(v)``: unit output directions of a ``Linear`` layer, scaled.
- :class:`ScaledShared` — ``diag(p) M diag(s)`` with ``M`` a weight matrix shared by all inputs:
  one ``Linear`` layer further on (``B_{l,l+1}² = W² ⊙ φ'²`` needs no per-input product).
- :class:`ChannelSparse` — directions that each live in one channel (a convolution's or
  BatchNorm's parameters, a ``Linear`` weight shared over positions).
- :class:`Dense` — every direction materialised, ``(n, directions, *shape)``.

Every form can :meth:`~Tangent.contract` itself with the ``r`` (power 2) or ``G`` (power 1) of
an activation, :meth:`~Tangent.scale` by an elementwise factor, and fall back to :class:`Dense`.
"""

from __future__ import annotations

import math

import torch


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


class Tangent:
    """Directions (``dirs``, their canonical shape) at activations of per-input ``shape``."""

    shape: tuple[int, ...]
    dirs: tuple[int, ...]

    def contract(self, coefficient: torch.Tensor, power: int) -> torch.Tensor:
        """``Σ_j c[n, a, j] t[n, i, j]^power`` for every direction ``i``:
        ``(n, T, *shape) → (n, T, *dirs)``."""
        raise NotImplementedError

    def scale(self, factor: torch.Tensor) -> Tangent:
        """Multiply every direction elementwise by ``factor``, of shape ``(n or 1, *shape)``."""
        raise NotImplementedError

    def dense(self) -> Dense:
        """The same tangent with every direction materialised."""
        raise NotImplementedError

    def reshape(self, shape: tuple[int, ...]) -> Tangent:
        """The same directions after a reshape (``Flatten``) of the activations."""
        return self.dense().reshape(shape)

    def numel(self) -> int:
        """Elements held (for the memory budget)."""
        raise NotImplementedError


class Dense(Tangent):
    """``t[n, i] = values[n, i] · dir_scale[n, i]`` over ``*shape``. The direction axis
    enumerates ``stored`` (a permutation ``order`` of the canonical direction axes), so that no
    large transpose is ever copied; ``dir_scale`` (``None`` = 1) is a per-direction factor kept
    apart because it commutes with every later linear map."""

    def __init__(self, values: torch.Tensor, stored: tuple[int, ...],
                 order: tuple[int, ...] | None = None,
                 dir_scale: torch.Tensor | None = None) -> None:
        self.values = values
        self.stored = tuple(stored)
        self.order = tuple(order) if order is not None else tuple(range(len(stored)))
        self.dir_scale = dir_scale  # (n or 1, directions) or None
        self.shape = tuple(values.shape[2:])
        self.dirs = tuple(self.stored[i] for i in self.order)

    def with_values(self, values: torch.Tensor) -> Dense:
        """The same directions with new activations (after a map of the activations)."""
        return Dense(values, self.stored, self.order, self.dir_scale)

    def _canonical(self, out: torch.Tensor, power: int) -> torch.Tensor:
        if self.dir_scale is not None:
            out = out * (self.dir_scale**power)[:, None, :]
        n, width = out.shape[:2]
        out = out.reshape(n, width, *self.stored)
        if self.order != tuple(range(len(self.stored))):
            out = out.permute(0, 1, *(2 + i for i in self.order))
        return out.reshape(n, width, *self.dirs)

    def contract(self, coefficient: torch.Tensor, power: int) -> torch.Tensor:
        n = self.values.shape[0]
        flat = self.values.reshape(n, self.values.shape[1], -1)
        if power == 2:
            flat = flat * flat
        out = torch.bmm(coefficient.reshape(n, coefficient.shape[1], -1), flat.transpose(1, 2))
        return self._canonical(out, power)

    def scale(self, factor: torch.Tensor) -> Dense:
        factor = factor.reshape(factor.shape[0], 1, *self.shape)
        return self.with_values(self.values * factor)

    def map(self, function) -> Dense:
        """Apply a linear map of the activations (batched over inputs and directions)."""
        n, count = self.values.shape[:2]
        out = function(self.values.reshape(n * count, *self.shape))
        return self.with_values(out.reshape(n, count, *out.shape[1:]))

    def dense(self) -> Dense:
        return self

    def reshape(self, shape: tuple[int, ...]) -> Dense:
        n, count = self.values.shape[:2]
        return self.with_values(self.values.reshape(n, count, *shape))

    def numel(self) -> int:
        return self.values.numel()


class Diagonal(Tangent):
    """``t[n] = diag(v[n])`` over a flat activation of size ``D`` (unit output directions of a
    ``Linear`` layer, after elementwise scalings); ``v = None`` is the identity."""

    def __init__(self, v: torch.Tensor | None, size: int, rows: int,
                 reference: torch.Tensor | None = None) -> None:
        self.v = v  # (n or 1, D) or None
        self.rows = rows
        self.reference = reference if v is None else v  # dtype and device
        self.shape = (size,)
        self.dirs = self.shape

    def contract(self, coefficient: torch.Tensor, power: int) -> torch.Tensor:
        if self.v is None:
            return coefficient
        return coefficient * (self.v**power)[:, None, :]

    def scale(self, factor: torch.Tensor) -> Diagonal:
        factor = factor.reshape(factor.shape[0], self.shape[0])
        return Diagonal(factor if self.v is None else self.v * factor, self.shape[0], self.rows)

    def dense(self) -> Dense:
        v = self.v if self.v is not None else self.reference.new_ones(1, self.shape[0])
        return Dense(torch.diag_embed(v.expand(self.rows, -1)), self.dirs)

    def reshape(self, shape: tuple[int, ...]) -> Tangent:
        return self if tuple(shape) == self.shape else self.dense().reshape(shape)

    def numel(self) -> int:
        return 0 if self.v is None else self.v.numel()


class ScaledShared(Tangent):
    """``t[n] = diag(p[n]) · M · diag(s[n])``: ``M`` (K × D) shared by every input, ``p`` a
    per-input row scaling (``None`` = 1), ``s`` a per-input column scaling. A ``Diagonal``
    tangent becomes one after a ``Linear`` layer; its contraction is one GEMM with ``M²``."""

    def __init__(self, matrix: torch.Tensor, row: torch.Tensor | None, column: torch.Tensor | None,
                 rows: int) -> None:
        self.matrix = matrix
        self.row = row  # (n or 1, K) or None
        self.column = column  # (n or 1, D) or None
        self.rows = rows
        self.shape = (matrix.shape[0],)
        self.dirs = (matrix.shape[1],)

    def contract(self, coefficient: torch.Tensor, power: int) -> torch.Tensor:
        if self.row is not None:
            coefficient = coefficient * (self.row**power)[:, None, :]
        out = coefficient @ (self.matrix**power)
        if self.column is not None:
            out = out * (self.column**power)[:, None, :]
        return out

    def scale(self, factor: torch.Tensor) -> ScaledShared:
        factor = factor.reshape(factor.shape[0], self.shape[0])
        row = factor if self.row is None else self.row * factor
        return ScaledShared(self.matrix, row, self.column, self.rows)

    def transposed_product(self, weight: torch.Tensor) -> Dense:
        """The tangent after a further linear map ``weight`` (K2 × K): per input
        ``diag(s) Mᵀ diag(p) weightᵀ``, stored as ``(n, D, K2)`` (one batched GEMM)."""
        if self.row is None:
            out = (self.matrix.T @ weight.T)[None]  # (1, D, K2): no per-input product
        else:  # (n, D, K) then one GEMM (n·D, K) × (K, K2)
            out = (self.matrix.T.contiguous()[None] * self.row[:, None, :]) @ weight.T
        return Dense(out.expand(self.rows, -1, -1), self.dirs, dir_scale=self.column)

    def dense(self) -> Dense:
        eye = torch.eye(self.shape[0], dtype=self.matrix.dtype, device=self.matrix.device)
        return self.transposed_product(eye)

    def reshape(self, shape: tuple[int, ...]) -> Tangent:
        return self if tuple(shape) == self.shape else self.dense().reshape(shape)

    def numel(self) -> int:
        return sum(t.numel() for t in (self.row, self.column) if t is not None)


class ChannelSparse(Tangent):
    """Directions ``(c, p)`` that live in channel ``c`` only: ``t[n, (c, p)][c, s] =
    values[n, c // (C / Cv), p, s]`` and 0 in every other channel.

    ``values`` is ``(n, Cv, P, S)`` with ``Cv`` dividing ``C`` (``Cv = 1``: the same values for
    every channel, e.g. a convolution's unfolded input; ``Cv = groups``). The activations have
    per-input ``shape``; ``channel_last`` says whether the channel axis is the first (``C, *S``,
    possibly flattened afterwards) or the last one (``*S, C``, a ``Linear`` on a sequence).
    """

    def __init__(self, values: torch.Tensor, channels: int, shape: tuple[int, ...],
                 channel_last: bool = False) -> None:
        self.values = values
        self.channels = channels
        self.shape = tuple(shape)
        self.channel_last = channel_last
        self.dirs = (channels, values.shape[2])

    @property
    def positions(self) -> int:
        return _numel(self.shape) // self.channels

    def view(self, x: torch.Tensor, lead: int) -> torch.Tensor:
        """``(*lead, *shape) → (*lead, C, S)`` (a view or a transpose, never a copy)."""
        head = x.shape[:lead]
        if self.channel_last:
            return x.reshape(*head, self.positions, self.channels).transpose(-1, -2)
        return x.reshape(*head, self.channels, self.positions)

    def unview(self, x: torch.Tensor, lead: int) -> torch.Tensor:
        """``(*lead, C, S) → (*lead, *shape)``."""
        head = x.shape[:lead]
        if self.channel_last:
            x = x.transpose(-1, -2)
        return x.reshape(*head, *self.shape)

    def expanded(self) -> torch.Tensor:
        """``values`` with one slice per channel, ``(n, C, P, S)``."""
        n, groups, count, positions = self.values.shape
        if groups == self.channels:
            return self.values
        per_group = self.channels // groups
        full = self.values[:, :, None].expand(n, groups, per_group, count, positions)
        return full.reshape(n, self.channels, count, positions)

    def contract(self, coefficient: torch.Tensor, power: int) -> torch.Tensor:
        n, width = coefficient.shape[:2]
        groups = self.values.shape[1]
        c = self.view(coefficient, 2).reshape(n, width, groups, self.channels // groups, -1)
        v = self.values if power == 1 else self.values**power
        out = torch.einsum("ntgos,ngps->ntgop", c, v)
        return out.reshape(n, width, self.channels, self.values.shape[2])

    def scale(self, factor: torch.Tensor) -> ChannelSparse:
        factor = self.view(factor, 1)  # (n or 1, C, S)
        values = self.expanded() * factor[:, :, None, :]
        return ChannelSparse(values, self.channels, self.shape, self.channel_last)

    def with_values(self, values: torch.Tensor, shape: tuple[int, ...]) -> ChannelSparse:
        """Same directions after a per-channel map of the positions (pooling)."""
        return ChannelSparse(values, self.channels, shape, self.channel_last)

    def dense(self) -> Dense:
        n, _, count, positions = self.values.shape
        full = self.values.new_zeros(n, self.channels, count, self.channels, positions)
        full.diagonal(dim1=1, dim2=3).copy_(self.expanded().permute(0, 2, 3, 1))
        full = self.unview(full.reshape(n, self.channels * count, self.channels, positions), 2)
        return Dense(full, self.dirs)

    def reshape(self, shape: tuple[int, ...]) -> ChannelSparse:
        # a reshape keeps the element order, so the channel/position view stays valid
        return ChannelSparse(self.values, self.channels, tuple(shape), self.channel_last)

    def numel(self) -> int:
        return self.values.numel()
