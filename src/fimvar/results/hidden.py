"""The Fisher information of hidden representations ([A], docs/theory.md §6)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from fimvar.results.presentation import Presented


@dataclass
class HiddenFisher:
    """Fisher information of one hidden representation, averaged over inputs.

    Attributes:
        fisher_diagonal: ``E_x diag I(h_l|x)`` (d,).
        estimate_diagonal: the sampled estimate's diagonal (d,).
        v1_diagonal: single-draw variance of each diagonal entry of the estimate, averaged
            over inputs (d,).
        input_var_diagonal: unbiased variance over inputs of ``diag I(h_l|x)`` (d,).
        fisher, estimate: the full d×d matrices when d ≤ ``MAX_FULL_WIDTH``, else ``None``.
    """

    module: str
    shape: torch.Size
    num_inputs: int
    samples: int
    fisher_diagonal: torch.Tensor
    estimate_diagonal: torch.Tensor
    v1_diagonal: torch.Tensor
    input_var_diagonal: torch.Tensor
    fisher: torch.Tensor | None = None
    estimate: torch.Tensor | None = None


@dataclass
class HiddenResult(Presented, Mapping[str, HiddenFisher]):
    """The :class:`HiddenFisher` of every analysed module, by module name (a read-only dict)."""

    family: str
    modules: dict[str, HiddenFisher]
    metadata: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> HiddenFisher:
        return self.modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)
