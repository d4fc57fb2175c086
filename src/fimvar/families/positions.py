"""Per-position outputs: L independent outputs of one family as one exponential family
(docs/theory.md §13).

A model that returns ``(N, L, T)`` (a sequence model, a language model) has one family output
per position; the labels of the L positions are independent given the input, so the per-input
likelihood is the product over positions and the per-input Fisher is
``I(θ|x) = Σ_t J_tᵀ I(h_t) J_t``. The product of L exponential families is an exponential family
of width L·T whose natural parameters are the flattened outputs, whose statistic is the
concatenation of the positions' statistics, and whose moment tensors are block-diagonal.
:class:`Positions` is that family: every estimator, variance and bound of fimvar applies to it
unchanged, with these per-input contractions (``s_t = u_t·ε_t``, independent, zero-mean):

- ``uᵀIu = Σ_t q_t`` (``q_t = u_tᵀ I_t u_t``), ``wᵀIw = Σ_t w_tᵀI_tw_t``;
- ``Var[(u·ε)²] = Σ_t Var[s_t²] + 4 Σ_{s<t} q_s q_t`` (every term ≥ 0: no cancellation);
- ``E[(u·ε)²(w·ε)] = Σ_t E[s_t² (w_t·ε_t)]`` (mixed terms have a lone zero-mean factor).
"""

from __future__ import annotations

import torch

from fimvar.errors import FimvarError
from fimvar.families.base import ExponentialFamily, exclusive_sum


def _pairs(q: torch.Tensor) -> torch.Tensor:
    """``Σ_{s<t} q_s q_t`` over dim 1 from cumulative sums (no cancellation for q ≥ 0)."""
    return (q * (q.cumsum(1) - q)).sum(1)


def sequence_fourth_variance(q: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``Var[(Σ_t s_t)²] = Σ_t Var[s_t²] + 4 Σ_{s<t} q_s q_t`` over dim 1 (the positions) from the
    positions' ``q_t = E s_t²`` and ``own = Var[s_t²]``: the label variance of the per-sequence
    square (docs/theory.md §13), a sum of non-negative terms."""
    return own.sum(1) + 4 * _pairs(q)


class Positions(ExponentialFamily):
    """``positions`` independent outputs of ``base``; outputs ``h`` are ``(n, L·T)``, the
    flattened ``(n, L, T)`` (position-major)."""

    def __init__(self, base: ExponentialFamily, positions: int) -> None:
        super().__init__(None)
        if isinstance(base, Positions):
            raise FimvarError("per-position outputs of per-position outputs: flatten the positions")
        self.base = base
        self.positions = int(positions)
        self.name = base.name
        self.min_width = base.min_width

    def __repr__(self) -> str:
        return f"Positions({self.base!r}, {self.positions})"

    # ---------------------------------------------------------------- layout
    def split(self, h: torch.Tensor) -> torch.Tensor:
        """``(n, L·T) → (n·L, T)``: one row per input and position."""
        return h.reshape(h.shape[0] * self.positions, -1)

    def _columns(self, u: torch.Tensor) -> torch.Tensor:
        """``(n, L·T, K) → (n·L, T, K)``."""
        n, _, k = u.shape
        return u.reshape(n, self.positions, -1, k).reshape(n * self.positions, -1, k)

    def _per_input(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """``(n·L, …) → (n, L, …)``."""
        return values.reshape(n, self.positions, *values.shape[1:])

    # ---------------------------------------------------------------- validation and sampling
    def check_outputs(self, h: torch.Tensor) -> None:
        if h.dim() != 2 or h.shape[1] % self.positions:
            raise FimvarError(f"per-position outputs need shape (batch, {self.positions}·T), "
                              f"got {tuple(h.shape)}")
        self.base.check_outputs(self.split(h))

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        if labels.dim() < 2 or labels.shape[0] != n or labels.shape[1] != self.positions:
            raise FimvarError(
                f"labels of per-position outputs must have shape (batch, {self.positions}, …) — one "
                f"label per position — got {tuple(labels.shape)}")
        flat = labels.reshape(n * self.positions, *labels.shape[2:])
        return self.base.check_labels(flat, self.split(h)).reshape(labels.shape)

    def uniform_width(self, width: int) -> int:
        return self.positions * self.base.uniform_width(width // self.positions)

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Labels ``(n, M, L)`` (categorical) or ``(n, M, L, T)``: position t of draw m uses its own
        slice of the draw's uniforms."""
        n, draws, _ = uniforms.shape
        per_position = uniforms.reshape(n, draws, self.positions, -1).transpose(1, 2)
        labels = self.base.sample(self.split(h), per_position.reshape(n * self.positions, draws, -1))
        return self._per_input(labels, n).transpose(1, 2)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        """``t(y)`` of labels ``(…, L)`` or ``(…, L, T)``: the positions' statistics, concatenated."""
        return self.base.statistic(labels, width // self.positions).flatten(-2)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.base.mean(self.split(h)).reshape(h.shape)

    # ---------------------------------------------------------------- moment tensors
    def _block_diagonal(self, blocks: torch.Tensor, n: int) -> torch.Tensor:
        """``(n·L, T, T) → (n, L·T, L·T)`` with the blocks on the diagonal."""
        width = blocks.shape[-1]
        per_input = self._per_input(blocks, n).permute(0, 2, 3, 1)  # (n, T, T, L)
        dense = torch.diag_embed(per_input)  # (n, T, T, L, L)
        return dense.permute(0, 3, 1, 4, 2).reshape(n, self.positions * width, self.positions * width)

    def _same_position(self, width: int, order: int, device) -> torch.Tensor:
        """Indicator that ``order`` flattened indices lie in one position, ``(L·T,)*order``."""
        position = torch.arange(self.positions * width, device=device) // width
        grids = torch.meshgrid(*([position] * order), indexing="ij")
        return torch.stack([g == grids[0] for g in grids]).all(0)

    def _embed(self, tensors: torch.Tensor, n: int, order: int) -> torch.Tensor:
        """Per-position tensors ``(n·L, T, …)`` of ``order`` indices, placed on the all-same-position
        entries of a dense ``(n, L·T, …)`` tensor (zero elsewhere)."""
        width = tensors.shape[-1]
        full = self.positions * width
        out = torch.zeros(n, *([full] * order), dtype=tensors.dtype, device=tensors.device)
        per_input = self._per_input(tensors, n)
        for t in range(self.positions):
            block = (slice(None),) + (slice(t * width, (t + 1) * width),) * order
            out[block] = per_input[:, t]
        return out

    def fisher(self, h: torch.Tensor) -> torch.Tensor:
        return self._block_diagonal(self.base.fisher(self.split(h)), h.shape[0])

    def fisher_factor(self, h: torch.Tensor) -> torch.Tensor:
        # I is block diagonal over positions, so is its square root: column (t, k) of S is the
        # base factor's column k at position t, zero at the other positions
        return self._block_diagonal(self.base.fisher_factor(self.split(h)), h.shape[0])

    def third_cumulant(self, h: torch.Tensor) -> torch.Tensor:
        return self._embed(self.base.third_cumulant(self.split(h)), h.shape[0], 3)

    def fourth_moment(self, h: torch.Tensor) -> torch.Tensor:
        """``E ε_aε_bε_cε_d``: the position's own fourth moment when all four indices share a
        position, else the Gaussian-like pairings ``I_ab I_cd + I_ac I_bd + I_ad I_bc`` (I is
        block-diagonal, so only pairings within positions survive)."""
        fisher = self.fisher(h)
        pairings = sum(torch.einsum(f"n{a},n{b}->nabcd", fisher, fisher)
                       for a, b in (("ab", "cd"), ("ac", "bd"), ("ad", "bc")))
        own = self._embed(self.base.fourth_moment(self.split(h)), h.shape[0], 4)
        same = self._same_position(h.shape[1] // self.positions, 4, h.device)
        return torch.where(same, own, pairings)

    # ---------------------------------------------------------------- contractions
    def quadratic(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._per_input(self.base.quadratic(self.split(h), self._columns(u)), h.shape[0]).sum(1)

    def fourth_variance(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        hp, up, n = self.split(h), self._columns(u), h.shape[0]
        q = self._per_input(self.base.quadratic(hp, up), n)
        own = self._per_input(self.base.fourth_variance(hp, up), n)
        return sequence_fourth_variance(q, own)

    def token_fourth_variance(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``Var[Σ_t (u_t·ε_t)²] = Σ_t Var[(u_t·ε_t)²]`` per column: the label variance of the
        per-token squared scores (docs/theory.md §13.1), without the cross-position terms
        ``4 Σ_{s<t} q_s q_t`` of the per-sequence square (:meth:`fourth_variance`)."""
        own = self.base.fourth_variance(self.split(h), self._columns(u))
        return self._per_input(own, h.shape[0]).sum(1)

    def third_moment(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        values = self.base.third_moment(self.split(h), self._columns(u), self._columns(w))
        return self._per_input(values, h.shape[0]).sum(1)

    def contractions(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor):
        n = h.shape[0]
        q, fourth, second, third = (self._per_input(v, n) for v in self.base.contractions(
            self.split(h), self._columns(u), self._columns(w)))
        return q.sum(1), sequence_fourth_variance(q, fourth), second.sum(1), third.sum(1)

    def pair_fourth_variance(self, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``Var[(a·ε)(b·ε)] = Σ_t Var[α_tβ_t] + Σ_{t≠s} A_t B_s + Σ_{t≠s} c_t c_s`` with
        ``α_t = a_t·ε_t``, ``A_t = E α_t²``, ``c_t = E α_tβ_t`` (pairings across positions)."""
        hp, n = self.split(h), h.shape[0]
        ap, bp = self._columns(a), self._columns(b)
        own = self._per_input(self.base.pair_fourth_variance(hp, ap, bp), n).sum(1)
        fisher = self.base.fisher(hp)
        first = self._per_input(torch.einsum("rai,rab,rbi->ri", ap, fisher, ap), n)  # (n, L, P)
        second = self._per_input(torch.einsum("raj,rab,rbj->rj", bp, fisher, bp), n)  # (n, L, Q)
        cross = self._per_input(torch.einsum("rai,rab,rbj->rij", ap, fisher, bp), n)  # (n, L, P, Q)
        across = torch.einsum("nlp,nlq->npq", first, exclusive_sum(second, 1))
        return own + across + (cross * exclusive_sum(cross, 1)).sum(1)

    # ---------------------------------------------------------------- spectra
    def fisher_eigenvalues(self, h: torch.Tensor) -> torch.Tensor:
        values = self.base.fisher_eigenvalues(self.split(h)).reshape(h.shape[0], -1)
        return values.sort(1).values

    def fisher_eigenvalue_range(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.base.fisher_eigenvalue_range(self.split(h))
        n = h.shape[0]
        return self._per_input(low, n).amin(1), self._per_input(high, n).amax(1)

    def statistic_norm_bound(self, h: torch.Tensor) -> torch.Tensor:
        return self._per_input(self.base.statistic_norm_bound(self.split(h)), h.shape[0]).sum(1)


def with_positions(family: ExponentialFamily, positions: int | None) -> ExponentialFamily:
    """``family`` for ``positions`` independent positions (itself for ``None``)."""
    if positions is None or isinstance(family, Positions):
        return family
    return Positions(family, positions)

