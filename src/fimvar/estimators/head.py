"""The exact Fisher, label noise and input noise of a linear output layer in closed form, whatever
the number of outputs (docs/theory.md §17.1).

For a ``Linear`` layer whose output is the model's output (a language model's untied head,
``h_t = W a_t + b`` at every position t), the derivative of the outputs with respect to ``W_cj`` is
``a_tj`` on the output ``(t, c)`` and zero elsewhere, and its second derivative is zero. With the
labels of the positions independent given the input, the per-input quantities need only the
per-position moments of the family along the unit directions ``e_c``
(:meth:`~fimvar.families.base.ExponentialFamily.unit_moments`, ``I_t,cc`` and ``Var[ε_tc²]``;
categorical: ``p(1 − p)`` and ``p(1 − p)(1 − 2p)²``) and the squared layer inputs:

- ``I(W_cj|x) = Σ_t q_t`` with ``q_t = I_t,cc a_tj²``;
- ``v1(x) = Σ_t Var[ε_tc²] a_tj⁴ + 4 Σ_{s<t} q_s q_t`` (the per-sequence square, docs/theory.md §13,
  :func:`~fimvar.families.positions.sequence_fourth_variance`);
- ``v2 = c12 = 0`` ([B] Remark 4.4);
- the bias the same with ``a_tj = 1``.

No backward pass and no per-output derivative is formed: the cost is ``O(n L V d)`` elementwise per
chunk, the memory one tile of ``(n, L, V', d)`` values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.families import ExponentialFamily
from fimvar.families.positions import Positions, sequence_fourth_variance

#: most elements of one (n, L, V', d) tile of per-position values
TILE_ELEMENTS = 1 << 22


@dataclass
class OutputLayerSums:
    """A chunk's sums for one parameter of the output layer, float64, of the parameter's shape.

    Attributes:
        fisher: ``Σ_x I(θ|x)``.
        fisher_m2: ``Σ_x (I(θ|x) − Ī)²``, ``Ī`` the chunk's mean (two-pass; merged across chunks by
            Chan's update, docs/theory.md §12).
        v1: ``Σ_x v1(θ|x)``, the label variance of the per-sequence square.
    """

    fisher: torch.Tensor
    fisher_m2: torch.Tensor
    v1: torch.Tensor


def position_moments(family: ExponentialFamily, h: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``I_t,cc`` and ``Var[ε_tc²]`` per input, position and output, each ``(n, L, T)`` (L = 1 for
    outputs without positions), zero at the positions ``mask`` leaves out (``(n, L)`` bool)."""
    positions = family.positions if isinstance(family, Positions) else 1
    base = family.base if isinstance(family, Positions) else family
    n = h.shape[0]
    quadratic, fourth = base.unit_moments(h.to(torch.float64).reshape(n * positions, -1))
    quadratic, fourth = quadratic.reshape(n, positions, -1), fourth.reshape(n, positions, -1)
    if mask is not None:
        kept = mask.to(torch.float64)[:, :, None]
        quadratic, fourth = quadratic * kept, fourth * kept
    return quadratic, fourth


def output_layer_sums(quadratic: torch.Tensor, fourth: torch.Tensor, squares: torch.Tensor | None,
                      elements: int = TILE_ELEMENTS) -> OutputLayerSums:
    """The chunk's sums (:class:`OutputLayerSums`) for a weight ``(T, d)`` whose layer inputs
    squared are ``squares`` (``(n, L, d)``, float64), or for the bias (``squares=None``), from the
    unit moments ``quadratic``, ``fourth`` of :func:`position_moments` (``(n, L, T)``)."""
    n, positions, width = quadratic.shape
    bias = squares is None
    if bias:
        squares = quadratic.new_ones(n, positions, 1)
    dim = squares.shape[2]
    fisher = quadratic.new_empty(width, dim)
    fisher_m2, v1 = torch.empty_like(fisher), torch.empty_like(fisher)
    step = max(1, elements // max(n * positions * dim, 1))
    fourth_powers = squares**2
    for start in range(0, width, step):
        rows = slice(start, min(width, start + step))
        q = quadratic[:, :, rows, None] * squares[:, :, None, :]  # (n, L, T', d)
        own = fourth[:, :, rows, None] * fourth_powers[:, :, None, :]
        per_input = q.sum(1)  # I(θ|x), (n, T', d)
        mean = per_input.mean(0)
        fisher[rows] = per_input.sum(0)
        fisher_m2[rows] = ((per_input - mean) ** 2).sum(0)
        v1[rows] = sequence_fourth_variance(q, own).sum(0)
    if bias:
        fisher, fisher_m2, v1 = fisher[:, 0], fisher_m2[:, 0], v1[:, 0]
    return OutputLayerSums(fisher, fisher_m2, v1)
