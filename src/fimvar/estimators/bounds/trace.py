"""Group-level ("trace") quantities and bounds: [B] Thm D.1 and the Frobenius bounds of [A].

For a group of parameters with per-input Gram matrices ``G = Σ_i u_i u_iᵀ`` (T×T),
``G_w = Σ_i w_i w_iᵀ`` and ``Q = Σ_i vec(u_i u_iᵀ) vec(u_i u_iᵀ)ᵀ`` (T²×T²):

    Σ_i I(θ_i|x) = tr(I G)        Σ_i v2 = tr(I G_w)        Σ_i v1 = tr(M̄ Q)

with ``M̄`` the T²×T² matrix ``M_(ab),(cd)``. Von Neumann's trace inequality gives [B] Thm D.1:
``Σ_t σ_t(G) λ_{T+1−t}(I) ≤ tr(I G) ≤ Σ_t σ_t(G) λ_t(I)`` (both sorted decreasingly), and
likewise for the other two.

The Frobenius norm of the full covariance of Î1 restricted to the group, for one draw
([A] and docs/theory.md §3), is ``‖Cov(Î1)‖_F² = Σ M_abcd M_a'b'c'd' G_aa' G_bb' G_cc' G_dd'``, bounded by
``‖J‖_F⁴ ‖M‖_F = (tr G)² ‖M‖_F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.engine.base import ParameterDerivatives
from fimvar.estimators.tiling import row_tiles
from fimvar.families import ExponentialFamily

#: the T²×T² forms (trace bound of V1, Frobenius norm of Cov(Î1)) are computed up to this width
MAX_TENSOR_WIDTH = 12
#: the trace forms need T×T eigendecompositions per input and group: computed up to this width
MAX_TRACE_WIDTH = 128


def trace_bytes(width: int, blocks: int) -> int:
    """Bytes per input the group forms of one chunk hold (:func:`group_sums`): two T×T Gram
    matrices per parameter tensor, I(h), their sums and eigendecompositions, and the S×S forms
    for ``T ≤ MAX_TENSOR_WIDTH``."""
    if width > MAX_TRACE_WIDTH:
        return 0
    pairs = width * (width + 1) // 2 if width <= MAX_TENSOR_WIDTH else 0
    return 8 * ((2 * blocks + 6) * width * width + (blocks + 4) * pairs * pairs)


def symmetric_pairs(width: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index pairs ``a ≤ b`` of an orthonormal basis of the symmetric T×T matrices, with the
    scale of each coordinate (1 on the diagonal, √2 off it)."""
    first, second = torch.triu_indices(width, width, device=device)
    scale = torch.full(first.shape, 2.0, dtype=torch.float64, device=device).sqrt()
    scale[first == second] = 1.0
    return first, second, scale


def _shared_grams(block: ParameterDerivatives, square: bool) -> dict:
    """The Gram matrices of ``first``/``second`` alone (before the factor of the layer input),
    computed once per chunk for the blocks that share them (a ``Linear`` weight and its bias),
    ``first`` converted to float64 once per row tile for both:

    - ``gram``: ``Σ_j g_j g_jᵀ`` and ``Σ_j s_j s_jᵀ`` over the columns, ``(n, T, T)`` each;
    - ``square_gram`` (with ``square``): ``Σ_j c_j c_jᵀ``, ``(n, S, S)``, with ``c_j`` the symmetric
      coordinates of ``g_j g_jᵀ`` (:func:`square_gram`);
    - ``square_small`` where there are fewer columns J than S: the J×J matrix ``(g_jᵀ g_k)²`` =
      ``c_jᵀ c_k``, whose eigenvalues are the non-zero ones of the S×S matrix (rank ≤ J).
    """
    cache = block.shared
    have = cache.setdefault("grams", {})
    if "gram" in have and ("square_gram" in have or not square):
        return have
    n, width, columns = block.first.shape
    need_gram = "gram" not in have
    if need_gram:
        gram_u = block.first.new_empty(n, width, width, dtype=torch.float64)
        gram_w = torch.empty_like(gram_u)
    no_second = all(stride == 0 for stride in block.second.stride())  # a broadcast zero
    if square:
        pairs = width * (width + 1) // 2
        squares = block.first.new_empty(n, pairs, pairs, dtype=torch.float64)
        small = block.first.new_empty(n, columns, columns, dtype=torch.float64) if columns < pairs else None
    for rows in row_tiles(n, (pairs if square else width) * columns):
        first = block.first[rows].to(torch.float64)
        if need_gram:
            torch.bmm(first, first.transpose(1, 2), out=gram_u[rows])
            if no_second:
                gram_w[rows] = 0.0
            else:
                second = block.second[rows].to(torch.float64)
                torch.bmm(second, second.transpose(1, 2), out=gram_w[rows])
        if square:
            coordinates = _square_coordinates(first)
            torch.bmm(coordinates, coordinates.transpose(1, 2), out=squares[rows])
            if small is not None:
                torch.bmm(first.transpose(1, 2), first, out=small[rows]).square_()
    if need_gram:
        have["gram"] = gram_u, gram_w
    if square:
        have["square_gram"] = squares
        have["square_small"] = small
    return have


def _square_coordinates(first: torch.Tensor) -> torch.Tensor:
    """The symmetric coordinates of ``g_j g_jᵀ`` for every column ``j`` of ``first`` (``(n, T, J)``
    → ``(n, S, J)``, the order of :func:`symmetric_pairs`): ``g_a²`` and ``√2 g_a g_b`` (a < b),
    one row of pairs ``(a, ·)`` per product, without gathering."""
    n, width, columns = first.shape
    coordinates = first.new_empty(n, width * (width + 1) // 2, columns)
    root = 2.0**0.5
    offset = 0
    for a in range(width):
        row = first[:, a : a + 1]
        torch.mul(row, row, out=coordinates[:, offset : offset + 1])
        if a + 1 < width:
            torch.mul(first[:, a + 1 :], row * root, out=coordinates[:, offset + 1 : offset + width - a])
        offset += width - a
    return coordinates


def _input_factor(block: ParameterDerivatives, degree: int) -> torch.Tensor | None:
    """``Σ_m a_m^degree`` per input for a factored block (``(n,)``), ``None`` for a plain one."""
    return None if block.inputs is None else block.input_power(degree).sum(1)


def gram(block: ParameterDerivatives) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input Gram matrices ``Σ_i u_i u_iᵀ`` and ``Σ_i w_i w_iᵀ`` over the entries of one
    parameter tensor, each ``(n, T, T)`` (the ``J Jᵀ`` of [B] Thm D.1)."""
    gram_u, gram_w = _shared_grams(block, square=False)["gram"]
    if block.inputs is not None:  # factored: Σ_{j,m} G_j G_jᵀ a_m² = (Σ_j G_j G_jᵀ) ‖a‖²
        gram_u = gram_u * _input_factor(block, 2)[:, None, None]
        gram_w = gram_w * _input_factor(block, 4)[:, None, None]
    return gram_u, gram_w


def square_gram(block: ParameterDerivatives) -> torch.Tensor:
    """``Q = Σ_i vec(u_i u_iᵀ) vec(u_i u_iᵀ)ᵀ`` ([B] Thm D.1 for V1) in orthonormal coordinates
    of the symmetric T×T matrices, shape ``(n, S, S)`` with ``S = T(T+1)/2``.

    ``vec(u uᵀ)`` lies in that subspace; its coordinates are ``u_a²`` (a = b) and ``√2 u_a u_b``
    (a < b) in the order of :func:`symmetric_pairs`. The T²×T² matrix Q has the same
    eigenvalues plus ``T(T−1)/2`` zeros, at a fraction of the cost."""
    square = _shared_grams(block, square=True)["square_gram"]
    if block.inputs is not None:
        square = square * _input_factor(block, 4)[:, None, None]
    return square


class _ScaledGram:
    """A group's Gram matrix ``Σ_s f_s G_s`` over its sources ``s`` (the blocks sharing their
    derivatives, a weight and its bias: ``f_s = ‖a‖^d + 1``, ``(n,)``, non-negative). With one
    source the sum is never formed: its traces and eigenvalues are those of ``G_s`` times
    ``f_s``."""

    def __init__(self, sources: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
        self.sources = sources  # (matrix, factor, small matrix with the same non-zero eigenvalues)
        self._total = None

    @property
    def single(self) -> bool:
        return len(self.sources) == 1

    def total(self) -> torch.Tensor:
        if self._total is None:
            total = None
            for matrix, factor, _ in self.sources:
                if total is None:
                    total = matrix * factor[:, None, None]
                else:
                    total.addcmul_(matrix, factor[:, None, None])
            self._total = total
        return self._total

    def trace_with(self, other: torch.Tensor) -> torch.Tensor:
        """``Σ_n tr(other_n G_n)`` for a symmetric ``other`` (both symmetric: ``Σ other ⊙ G``)."""
        if self.single:
            matrix, factor, _ = self.sources[0]
            return torch.dot(torch.einsum("npq,npq->n", other, matrix), factor)
        return torch.einsum("npq,npq->", other, self.total())

    def eigenvalues(self) -> torch.Tensor:
        """Ascending eigenvalues per input, clamped at 0 (a Gram matrix is PSD); for one source with
        fewer columns J than rows, from its J×J matrix (the other eigenvalues are 0)."""
        if not self.single:
            return torch.linalg.eigvalsh(self.total()).clamp_min(0.0)
        matrix, factor, small = self.sources[0]
        if small is None:
            return torch.linalg.eigvalsh(matrix).clamp_min(0.0) * factor[:, None]
        values = torch.linalg.eigvalsh(small).clamp_min(0.0) * factor[:, None]
        zeros = values.new_zeros(values.shape[0], matrix.shape[1] - values.shape[1])
        return torch.cat([zeros, values], dim=1)


def _group_sum(blocks: list[ParameterDerivatives], key: str, index: int | None, degree: int) -> _ScaledGram:
    """One Gram matrix of a group, summed over its blocks, each scaled by its layer input's
    factor, with one term per shared source (:class:`_ScaledGram`)."""
    sources: dict[int, tuple[dict, torch.Tensor]] = {}
    for block in blocks:
        have = _shared_grams(block, square=key != "gram")
        factor = _input_factor(block, degree)
        if factor is None:
            factor = torch.ones(block.first.shape[0], dtype=torch.float64, device=block.first.device)
        key_id = id(block.shared)
        if key_id in sources:
            sources[key_id] = have, sources[key_id][1] + factor
        else:
            sources[key_id] = have, factor
    return _ScaledGram([(have[key] if index is None else have[key][index], factor,
                         have["square_small"] if key == "square_gram" else None)
                        for have, factor in sources.values()])


@dataclass(frozen=True)
class GroupBoundTerm:
    """A bound on a per-group (trace or Frobenius) quantity, summed over the group's parameters."""

    name: str
    quantity: str  # trace_fisher, trace_v1, trace_v2, frobenius_i1
    side: str
    source: str


TRACE_FISHER_LOWER = GroupBoundTerm("thmD.1_trace_fisher_lower", "trace_fisher", "lower", "[B] Thm D.1")
TRACE_FISHER_UPPER = GroupBoundTerm("thmD.1_trace_fisher_upper", "trace_fisher", "upper", "[B] Thm D.1")
TRACE_V1_LOWER = GroupBoundTerm("thmD.1_trace_v1_lower", "trace_v1", "lower", "[B] Thm D.1")
TRACE_V1_UPPER = GroupBoundTerm("thmD.1_trace_v1_upper", "trace_v1", "upper", "[B] Thm D.1")
TRACE_V2_LOWER = GroupBoundTerm("thmD.1_trace_v2_lower", "trace_v2", "lower", "[B] Thm D.1")
TRACE_V2_UPPER = GroupBoundTerm("thmD.1_trace_v2_upper", "trace_v2", "upper", "[B] Thm D.1")
FROBENIUS_I1_UPPER = GroupBoundTerm("A_frobenius_i1_upper", "frobenius_i1", "upper", "[A] Frobenius bound")
GROUP_BOUND_TERMS: tuple[GroupBoundTerm, ...] = (
    TRACE_FISHER_LOWER, TRACE_FISHER_UPPER, TRACE_V1_LOWER, TRACE_V1_UPPER, TRACE_V2_LOWER,
    TRACE_V2_UPPER, FROBENIUS_I1_UPPER,
)


@dataclass
class GroupSums:
    """Chunk sums of a group's exact trace/Frobenius quantities and of their bounds (scalars)."""

    exact: dict[str, torch.Tensor]
    bounds: dict[GroupBoundTerm, torch.Tensor]


def symmetric_fourth(family: ExponentialFamily, h: torch.Tensor, factor=None) -> torch.Tensor:
    """``M̄``, the T²×T² matrix ``M_(ab),(cd)``, in orthonormal coordinates of the symmetric
    matrices: ``(n, S, S)`` with ``S = T(T+1)/2`` (its T² eigenvalues are these and ``T(T−1)/2``
    zeros). From the family's short factorisation ``M = Σ_r π_r D_r ⊗ D_r`` when it has one
    (``factor``, or :meth:`~fimvar.families.ExponentialFamily.fourth_factor`), else from M."""
    first, second, scale = symmetric_pairs(h.shape[1], h.device)
    factor = family.fourth_factor(h) if factor is None else factor
    if factor is not None:
        matrices, weights = factor
        coordinates = matrices[:, :, first, second] * scale  # (n, R, S)
        return torch.einsum("nrp,nr,nrq->npq", coordinates, weights, coordinates)
    fourth = family.fourth_central_tensor(h)
    block = fourth[:, first, second][:, :, first, second] * scale[:, None] * scale[None, :]
    return 0.5 * (block + block.transpose(1, 2))


class OutputMoments:
    """Per-input moment tensors of the outputs, shared by every group of one chunk.

    ``fourth_symmetric`` is ``M̄`` in orthonormal coordinates of the symmetric matrices
    (``(n, S, S)``, ``S = T(T+1)/2``): ``M̄`` vanishes on antisymmetric matrices and maps into the
    symmetric ones, so its T² eigenvalues are those of ``fourth_symmetric`` plus ``T(T−1)/2``
    zeros, and ``tr(M̄ Q) = tr(fourth_symmetric · Q_sym)``. When the family factorises
    ``M = Σ_y π_y D_y ⊗ D_y`` (:meth:`~fimvar.families.ExponentialFamily.fourth_factor`), the
    eigenvalues, ``‖M‖_F`` and ``‖Cov(Î1)‖_F`` use the factor instead of T⁴ tensors.
    """

    def __init__(self, family: ExponentialFamily, h: torch.Tensor) -> None:
        n = h.shape[0]
        self.width = width = h.shape[1]
        self.fisher = family.fisher(h)
        self.fisher_eigenvalues = family.fisher_eigenvalues(h)  # ascending
        self.tensor_forms = width <= MAX_TENSOR_WIDTH
        if not self.tensor_forms:
            return
        pad = width * (width - 1) // 2
        self.factor = family.fourth_factor(h)
        self.fourth_symmetric = symmetric_fourth(family, h, self.factor)
        if self.factor is not None:
            matrices, weights = self.factor  # (n, R, T, T), (n, R)
            first, second, scale = symmetric_pairs(width, h.device)
            coordinates = matrices[:, :, first, second] * scale  # (n, R, S)
            root = weights.clamp_min(0.0).sqrt()
            # the non-zero eigenvalues of M̄ = Cᵀ diag(π) C are those of the R×R matrix √π C Cᵀ √π
            small = torch.einsum("nr,nrp,nsp,ns->nrs", root, coordinates, coordinates, root)
            nonzero = torch.linalg.eigvalsh(small).clamp_min(0.0)
            inner = torch.einsum("nrab,nsab->nrs", matrices, matrices)
            self.fourth_norm = torch.einsum("nr,nrs,ns->n", weights, inner**2, weights).clamp_min(0).sqrt()
            zeros = torch.zeros(n, width**2 - nonzero.shape[1], dtype=h.dtype, device=h.device)
            self.fourth_eigenvalues = torch.sort(torch.cat([nonzero, zeros], 1), dim=1).values
        else:
            self.fourth = family.fourth_central_tensor(h)  # M, (n, T, T, T, T)
            self.fourth_norm = self.fourth.pow(2).sum((1, 2, 3, 4)).sqrt()
            eigenvalues = torch.linalg.eigvalsh(self.fourth_symmetric)
            zeros = torch.zeros(n, pad, dtype=h.dtype, device=h.device)
            self.fourth_eigenvalues = torch.sort(torch.cat([eigenvalues, zeros], 1), dim=1).values

    def covariance_frobenius(self, gram: torch.Tensor) -> torch.Tensor:
        """``‖Cov(Î1)‖_F`` of one draw for a group with Gram matrices ``gram``, ``(n,)``."""
        if self.factor is None:
            return covariance_frobenius(self.fourth, gram)
        matrices, weights = self.factor
        # Cov_ijkl = Σ_y π_y (u_iᵀ D_y u_j)(u_kᵀ D_y u_l), so
        # ‖Cov‖_F² = Σ_{y,y'} π_y π_y' tr(D_y G D_y' G)²: a sum of non-negative terms, O(T⁴)
        moved = torch.einsum("nrab,nbc->nrac", matrices, gram)
        traces = torch.einsum("nrab,nsba->nrs", moved, moved)
        return torch.einsum("nr,nrs,ns->n", weights, traces**2, weights).clamp_min(0.0).sqrt()


def _von_neumann(gram_eigenvalues: torch.Tensor, eigenvalues: torch.Tensor):
    """Lower and upper trace bounds from two ascending spectra, summed over the chunk."""
    lower = (gram_eigenvalues * torch.flip(eigenvalues, (-1,))).sum(-1)
    upper = (gram_eigenvalues * eigenvalues).sum(-1)
    return lower.sum(), upper.sum()


def covariance_frobenius(fourth: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``‖Cov(Î1)‖_F`` for one draw per input, ``(n,)``: ``⟨M, M ×₁G ×₂G ×₃G ×₄G⟩^{1/2}``."""
    moved = torch.einsum("nabcd,nai->nibcd", fourth, gram)
    moved = torch.einsum("nibcd,nbj->nijcd", moved, gram)
    moved = torch.einsum("nijcd,nck->nijkd", moved, gram)
    moved = torch.einsum("nijkd,ndl->nijkl", moved, gram)
    return (fourth * moved).sum((1, 2, 3, 4)).clamp_min(0.0).sqrt()


def frobenius_i1_bound(gram_u: torch.Tensor, fourth_norm: torch.Tensor) -> torch.Tensor:
    """``‖Cov(Î1)‖_F ≤ ‖J‖_F⁴ ‖M‖_F = (tr G)² ‖M‖_F`` per input ([A], docs/theory.md §5.3)."""
    return torch.einsum("naa->n", gram_u) ** 2 * fourth_norm


def group_sums(moments: OutputMoments, blocks: list[ParameterDerivatives], second: bool = True) -> GroupSums:
    """Chunk sums of the exact group quantities and of their bounds for the parameter tensors
    ``blocks`` of one group ([B] Thm D.1, [A] Frobenius bound, docs/theory.md §5.2); with
    ``second=False`` (no ``w``: second-order quantities from probes) without those of ``v2``.
    The Gram matrices of blocks that share their derivatives (a weight and its bias) are formed
    once and scaled by the sum of their input factors (:func:`_group_sum`)."""
    gram_u = _group_sum(blocks, "gram", 0, 2)
    exact: dict[str, torch.Tensor] = {}
    bounds: dict[GroupBoundTerm, torch.Tensor] = {}
    fisher = moments.fisher
    exact["trace_fisher"] = gram_u.trace_with(fisher)
    bounds[TRACE_FISHER_LOWER], bounds[TRACE_FISHER_UPPER] = _von_neumann(
        gram_u.eigenvalues(), moments.fisher_eigenvalues)
    if second:
        gram_w = _group_sum(blocks, "gram", 1, 4)
        exact["trace_v2"] = gram_w.trace_with(fisher)
        bounds[TRACE_V2_LOWER], bounds[TRACE_V2_UPPER] = _von_neumann(gram_w.eigenvalues(),
                                                                      moments.fisher_eigenvalues)
    if moments.tensor_forms:
        square = _group_sum(blocks, "square_gram", None, 4)
        exact["trace_v1"] = square.trace_with(moments.fourth_symmetric)
        square_eig = square.eigenvalues()
        n = square_eig.shape[0]
        zeros = torch.zeros(n, moments.width**2 - square_eig.shape[1], dtype=square_eig.dtype,
                            device=square_eig.device)
        square_eig = torch.cat([zeros, square_eig], dim=1)  # Q is PSD: its zeros come first
        bounds[TRACE_V1_LOWER], bounds[TRACE_V1_UPPER] = _von_neumann(square_eig, moments.fourth_eigenvalues)
        gram_total = gram_u.total()
        exact["frobenius_i1"] = moments.covariance_frobenius(gram_total).sum()
        bounds[FROBENIUS_I1_UPPER] = frobenius_i1_bound(gram_total, moments.fourth_norm).sum()
    return GroupSums(exact, bounds)
