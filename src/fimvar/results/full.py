"""The result of the full-matrix mode: P×P matrices over the flat parameter vector."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.variance import joint_variance
from fimvar.results.presentation import Presented


@dataclass
class FullResult(Presented):
    """P×P results over the flat parameter vector (``named_parameters`` order; see
    :attr:`slices`). Variances are single-draw label variances averaged over inputs, like the
    diagonal mode's ``v1``/``v2``; :meth:`variance` gives the total for the run's design.

    Attributes:
        fisher: ``E_x I(θ|x)``; i1, i2: the estimators; v1, v2: entry-wise single-draw label
            variances ([A] Thm 4 and 6); input_var: entry-wise ``Var_x I(θ|x)``.
        frobenius: input averages of ``‖Cov Î1‖_F``, ``‖Cov Î2‖_F`` (one draw) and [A]'s bounds
            on them (``frobenius_i1_bound``, ``frobenius_i2_bound``).
        offdiagonal_bounds: [B] App. C's entry-wise upper bounds on ``v1`` and ``v2``.
    """

    family: str
    samples: int
    num_inputs: int
    slices: dict[str, slice]
    shapes: dict[str, torch.Size]
    fisher: torch.Tensor
    i1: torch.Tensor
    i2: torch.Tensor
    v1: torch.Tensor
    v2: torch.Tensor
    input_var: torch.Tensor
    frobenius: dict[str, float] = field(default_factory=dict)
    offdiagonal_bounds: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def variance(self, estimator: str = "i1") -> torch.Tensor:
        """Entry-wise total variance ``(input_var + v/M)/N`` of :attr:`i1` or :attr:`i2`
        ([B] Thm 4.7)."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("estimator must be 'i1' or 'i2'")
        label = self.v1 if estimator == "i1" else self.v2
        return joint_variance(self.input_var, label, self.num_inputs, self.samples)

    def block(self, matrix: torch.Tensor, first: str, second: str | None = None) -> torch.Tensor:
        """The block of a P×P matrix between two parameter tensors (flattened)."""
        second = first if second is None else second
        return matrix[self.slices[first], self.slices[second]]

    def offdiagonal_exact(self) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
        """Each entry-wise bound of [B] App. C with the quantity it bounds:
        ``{name: (quantity, bound, exact)}``."""
        exact = {"appC_v1_upper": ("v1", self.v1), "appC_v2_upper": ("v2", self.v2)}
        return {name: (exact[name][0], bound, exact[name][1])
                for name, bound in self.offdiagonal_bounds.items()}
