"""The exponential-family interface used by every engine.

A network output ``h ∈ R^T`` holds the natural parameters of ``p(y|h) = π(y) exp(t(y)ᵀh − F(h))``.
With ``ε = t(y) − η(h)`` the centered sufficient statistic, the estimators of the Fisher
information need only a handful of contractions of the moments of ε with direction vectors
``u`` (first output derivatives of a parameter) and ``w`` (second output derivatives), see
docs/theory.md §3–§4:

    quadratic(u)        = uᵀ I u                       (I = Cov ε = ∇²F)
    fourth_variance(u)  = Var[(u·ε)²] = E(u·ε)⁴ − (uᵀIu)²
    third_moment(u, w)  = E[(u·ε)² (w·ε)]

Every contraction is batched: ``h`` has shape ``(n, T)`` and direction vectors have shape
``(n, T, K)``; results have shape ``(n, K)``. All inputs are float64.

A new family needs its sampler, its statistic and its moment tensors (:meth:`fisher`,
:meth:`third_cumulant`, :meth:`fourth_moment`); the contractions then follow generically.
Subclasses override the contractions with cancellation-free closed forms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from fimvar.errors import FimvarError


class ExponentialFamily(ABC):
    """Base class of output distributions. Subclasses set :attr:`name`."""

    name: str = "family"
    #: smallest output width the family accepts
    min_width: int = 1

    def __init__(self, width: int | None = None) -> None:
        self.width = width

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ----------------------------------------------------------------- validation
    def check_outputs(self, h: torch.Tensor) -> None:
        """Raise :class:`FimvarError` unless ``h`` is a finite ``(n, T)`` output of this family."""
        if h.dim() != 2:
            raise FimvarError(
                f"the model must return a 2-d tensor (batch, outputs) for family '{self.name}', "
                f"got shape {tuple(h.shape)}; per-position outputs (batch, positions, outputs) go to "
                "fimvar.analyze or fimvar.fisher_diagonal, which treat each position as an independent "
                "output (docs/theory.md §13): do not flatten them into one distribution"
            )
        width = h.shape[1]
        if width < self.min_width:
            raise FimvarError(
                f"family '{self.name}' needs at least {self.min_width} outputs per input, the "
                f"model returns {width}; {self._width_hint()}"
            )
        if self.width is not None and width != self.width:
            raise FimvarError(
                f"family '{self.name}' was declared with {self.width} outputs but the model "
                f"returns {width}; change the model's last layer or the family's width"
            )
        if not torch.isfinite(h).all():
            raise FimvarError(
                "the model produced NaN or Inf outputs; check the weights and the inputs "
                "(fimvar needs finite outputs)"
            )

    def _width_hint(self) -> str:
        return "change the model's last layer"

    @abstractmethod
    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Validate data labels for outputs ``h`` (n, T) and return them in canonical form."""

    # ----------------------------------------------------------------- sampling
    @abstractmethod
    def uniform_width(self, width: int) -> int:
        """Number of uniform numbers one draw consumes, for an output of width ``width``."""

    @abstractmethod
    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Labels ``y ~ p(y|h)`` from uniforms of shape ``(n, M, uniform_width)``.

        Returns labels of shape ``(n, M)`` (categorical) or ``(n, M, T)``.
        """

    @abstractmethod
    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        """Sufficient statistic ``t(y)`` of shape ``labels.shape[:k] + (T,)``, float64."""

    @abstractmethod
    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """Mean parameters ``η(h) = E t(y)``, shape ``(n, T)``."""

    def centered(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``ε = t(y) − η(h)``; labels of shape ``(n,)``/``(n, T)`` or with a draw axis."""
        stat = self.statistic(labels, h.shape[1])
        eta = self.mean(h)
        if stat.dim() == 3:
            eta = eta[:, None, :]
        return stat - eta

    # ----------------------------------------------------------------- moment tensors
    @abstractmethod
    def fisher(self, h: torch.Tensor) -> torch.Tensor:
        """``I(h) = Cov ε``, shape ``(n, T, T)``."""

    def fisher_factor(self, h: torch.Tensor) -> torch.Tensor:
        """A square root ``S`` of the Fisher, ``I(h) = S Sᵀ``, shape ``(n, T, K)`` (docs/theory.md
        §14.2): the diagonal Fisher of a parameter is then ``Σ_k (J_θᵀ S_k)²``, one backward pass
        per column. Generic form ``V √Λ`` from the eigendecomposition of ``I``; subclasses give
        closed forms."""
        eigenvalues, vectors = torch.linalg.eigh(self.fisher(h))
        return vectors * eigenvalues.clamp_min(0.0).sqrt()[:, None, :]

    def third_cumulant(self, h: torch.Tensor) -> torch.Tensor:
        """``κ3_abc = E[ε_a ε_b ε_c]``, shape ``(n, T, T, T)``."""
        raise NotImplementedError(f"family '{self.name}' does not provide its third cumulant")

    def fourth_moment(self, h: torch.Tensor) -> torch.Tensor:
        """``K_abcd = E[ε_a ε_b ε_c ε_d]``, shape ``(n, T, T, T, T)``."""
        raise NotImplementedError(f"family '{self.name}' does not provide its fourth moment")

    def fourth_central_tensor(self, h: torch.Tensor) -> torch.Tensor:
        """``M = K − I⊗I`` (docs/theory.md §1), shape ``(n, T, T, T, T)``."""
        fisher = self.fisher(h)
        return self.fourth_moment(h) - fisher[:, :, :, None, None] * fisher[:, None, None, :, :]

    def support_residuals(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(ε_y, π_y)`` over a short finite support of the labels: residuals ``(n, R, T)`` and
        probabilities ``(n, R)``; ``None`` when the support is infinite or too large."""
        return None

    def fourth_factor(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(D, π)`` with ``M_abcd = Σ_r π_r D_r[a,b] D_r[c,d]`` (``D`` of shape ``(n, R, T, T)``):
        ``D_y = ε_y ε_yᵀ − I`` over a short support (since ``Σ_y π_y ε_y ε_yᵀ = I``), or ``None``."""
        support = self.support_residuals(h)
        if support is None:
            return None
        eps, weights = support
        return eps[:, :, :, None] * eps[:, :, None, :] - self.fisher(h)[:, None], weights

    # ----------------------------------------------------------------- contractions
    def quadratic(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``uᵀ I u`` per column: ``(n, T, K) → (n, K)``."""
        return torch.einsum("nak,nab,nbk->nk", u, self.fisher(h), u)

    def fourth_variance(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``Var[(u·ε)²] = u⊗4·M`` per column ([B] Lemma 3.1). Generic form; subclasses
        override it with a cancellation-free closed form."""
        fourth = torch.einsum("nabcd,nak,nbk,nck,ndk->nk", self.fourth_moment(h), u, u, u, u)
        return (fourth - self.quadratic(h, u) ** 2).clamp_min(0.0)

    def unit_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`quadratic` and :meth:`fourth_variance` along the unit directions ``u = e_c``,
        ``(I_cc, Var[ε_c²])``, each ``(n, T)``: what a linear output layer's parameters need
        (docs/theory.md §17.1). Generic form (T² per input); subclasses give it in O(T)."""
        units = torch.eye(h.shape[1], dtype=h.dtype, device=h.device).expand(h.shape[0], -1, -1)
        return self.quadratic(h, units), self.fourth_variance(h, units)

    def third_moment(self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``E[(u·ε)² (w·ε)] = κ3(u, u, w)`` per column."""
        return torch.einsum("nabc,nak,nbk,nck->nk", self.third_cumulant(h), u, u, w)

    def contractions(
        self, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(uᵀIu, Var[(u·ε)²], wᵀIw, E[(u·ε)²(w·ε)])`` at once, each ``(n, K)``: everything the
        estimators need per input ([B] Lemma 3.1). Subclasses share intermediate work."""
        return (self.quadratic(h, u), self.fourth_variance(h, u), self.quadratic(h, w),
                self.third_moment(h, u, w))

    def first_order(self, h: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uᵀIu, Var[(u·ε)²])``, each ``(n, K)``: the part of :meth:`contractions` without ``w``
        (second-order quantities from probes, docs/theory.md §14.1)."""
        return self.quadratic(h, u), self.fourth_variance(h, u)

    def pair_fourth_variance(self, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``Var[(a_i·ε)(b_j·ε)]`` for all column pairs: ``(n,T,P), (n,T,Q) → (n, P, Q)``.

        This is the single-draw variance of the off-diagonal entry ``Î1_ij`` ([A] Thm 4).
        """
        fourth = torch.einsum("nabcd,nai,nbi,ncj,ndj->nij", self.fourth_moment(h), a, a, b, b)
        cross = torch.einsum("nai,nab,nbj->nij", a, self.fisher(h), b)
        return (fourth - cross**2).clamp_min(0.0)

    # ----------------------------------------------------------------- spectra
    def fisher_eigenvalues(self, h: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of ``I(h)`` in ascending order, shape ``(n, T)``."""
        return torch.linalg.eigvalsh(self.fisher(h))

    def fisher_eigenvalue_range(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_min(I), λ_max(I))`` per input, each ``(n,)`` (subclasses: cheaper closed forms)."""
        eigenvalues = self.fisher_eigenvalues(h)
        return eigenvalues[:, 0], eigenvalues[:, -1]

    def known_tensor_extrema(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensor eigenvalues ``λ̃_min/max`` of ``M`` and ``K`` over the unit sphere that the family
        knows in closed form (docs/theory.md §5.5): a dict with some of the keys ``m_min``,
        ``m_max``, ``k_min``, ``k_max`` (each ``(n,)``). The others are found numerically by
        :func:`fimvar.estimators.bounds.tensor_eigen.tensor_extrema`. Default: none known."""
        return {}

    def kurtosis_form(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``u⊗4·K = E(u·ε)⁴ = Var[(u·ε)²] + (uᵀIu)²`` per column (the form of λ̃(K))."""
        return self.fourth_variance(h, u) + self.quadratic(h, u) ** 2

    def statistic_norm_bound(self, h: torch.Tensor) -> torch.Tensor:
        """``B`` with ``‖ε‖² ≤ B`` almost surely ([B] Prop 4.3); ``inf`` when unbounded."""
        return torch.full((h.shape[0],), float("inf"), dtype=h.dtype, device=h.device)

    def categorical_margin(self, h: torch.Tensor) -> torch.Tensor | None:
        """``m(x)`` of [B] Thm 5.2 (categorical only); ``None`` for other families."""
        return None


def exclusive_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``Σ_{b≠a} x_b`` for every ``a`` along ``dim``, from prefix and suffix sums, so that no
    large term is added and then subtracted again (exact for non-negative ``x``)."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    prefix = torch.cat([zero, torch.cumsum(x, dim).narrow(dim, 0, x.shape[dim] - 1)], dim)
    reverse = torch.flip(torch.cumsum(torch.flip(x, (dim,)), dim), (dim,))
    suffix = torch.cat([reverse.narrow(dim, 1, x.shape[dim] - 1), zero], dim)
    return prefix + suffix


def exclusive_pair_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``Σ_{a≠b} x_a x_b`` along ``dim`` without the cancellation of ``(Σx)² − Σx²``."""
    return (x * exclusive_sum(x, dim)).sum(dim)
