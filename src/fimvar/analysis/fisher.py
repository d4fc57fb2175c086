"""``fimvar.fisher_diagonal``: the exact diagonal Fisher alone, at the cost of its first
derivatives (no second derivatives, no label draws): ``E_x u_iᵀ I(h) u_i`` (docs/theory.md §2).

This is what an EWC penalty, Fisher merging or a diagonal Laplace approximation needs when the
error bars of :func:`fimvar.analyze` are not wanted; it equals ``analyze(...).fisher``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import parameter
from fimvar.analysis.driver import FamilyAnalysis
from fimvar.analysis.inputs import (
    check_parameters_finite,
    check_result_finite,
    trainable_parameters,
)
from fimvar.analysis.masking import check_masking_labels, masked_derivatives, masked_rows, position_mask
from fimvar.engine import make_engine
from fimvar.engine.graph import GraphEngine
from fimvar.errors import FimvarError
from fimvar.estimators.diagonal import fisher_sum
from fimvar.families import ExponentialFamily, get_family


class FisherAnalysis(FamilyAnalysis):
    """A resumable computation of the exact diagonal Fisher (see :func:`fisher_diagonal`)."""

    kind = "fisher"
    takes_labels = True  # only for the -100 positions of a language model
    labels_use = "only to leave out the positions labelled -100"

    def __init__(self, model: nn.Module, family: str | ExponentialFamily = "categorical",
                 engine: str = "auto", *, parameters: Iterable[str] | None = None,
                 memory_budget: int | str | None = None) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.parameter_names = trainable_parameters(model, parameters)
        check_parameters_finite(model, self.parameter_names)
        self.engine = make_engine(engine, model, self.parameter_names, self.memory_budget, second=False)

    def chunk_size(self, x: torch.Tensor) -> int:
        if isinstance(self.engine, GraphEngine):
            return self.engine.chunk_size(x, self.width, 0, factored=True)
        return self.engine.chunk_size(x, self.width, 0)

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        check_masking_labels(self.family, labels, "the exact Fisher (fisher_diagonal)")
        mask = position_mask(self.family, self.packing, x, labels)
        sums: dict[str, torch.Tensor] = {}
        if isinstance(self.engine, GraphEngine):  # a square root of I(h) backpropagated (§14.2)
            def factor(h: torch.Tensor) -> torch.Tensor:
                self.family.check_outputs(h)
                roots = self.family.fisher_factor(h)
                if mask is None:
                    return roots
                return masked_rows(roots, mask, h.shape[1] // self.family.positions)

            h, sums, blocks = self.engine.fisher_sums(x, factor)
        else:
            h, blocks = self.engine.derivatives(x, second=False)
            self.family.check_outputs(h)
        if mask is not None:
            blocks = masked_derivatives(blocks, mask, h.shape[1] // self.family.positions)
        sums.update({block.name: fisher_sum(self.family, h, block) for block in blocks})
        for name, value in sums.items():
            if not torch.isfinite(value).all():
                raise FimvarError(f"the derivatives of parameter {name!r} are NaN or Inf for some "
                                  "inputs; check the weights and inputs for overflow")
            self.accumulator.add(parameter(name, "fisher"), value)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family.name, "engine": self.engine.name,
                "parameters": self.parameter_names, "model": checkpoints.model_hash(self.model)}

    def result(self) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise FimvarError("the data is empty: no input was analysed")
        fisher = {name: self.accumulator.mean(parameter(name, "fisher")) for name in self.parameter_names}
        check_result_finite({"fisher": fisher})
        return fisher


def fisher_diagonal(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    engine: str = "auto",
    *,
    labels: torch.Tensor | None = None,
    parameters: Iterable[str] | None = None,
    memory_budget: int | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The exact diagonal Fisher ``E_x I(θ_i|x)``, float64, keyed by parameter name with the
    parameters' shapes — the ``fisher`` of :func:`fimvar.analyze` without its error bars, at the
    cost of the first derivatives only. Arguments as in :func:`fimvar.analyze`; ``labels`` only
    leave out the positions of a per-position model labelled ``-100`` (the Fisher itself takes
    its labels from the model).

    On the graph engine it backpropagates a square root ``S`` of ``I(h)`` (``I = S Sᵀ``) and sums
    the squared per-input gradients, ``Σ_k (J_θᵀ S_k)²`` (docs/theory.md §14.2): one backward
    pass per column of ``S``, like BackPACK's ``DiagGGNExact``."""
    analysis = FisherAnalysis(model, family, engine, parameters=parameters, memory_budget=memory_budget)
    analysis.run(x, labels, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
