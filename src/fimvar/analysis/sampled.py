"""``fimvar.analyze_sampled``: Î1 and its variance from the label draws alone, whatever the number
of outputs T (docs/theory.md §17).

The exact quantities need one backward pass per output column — L·V of them for a language model.
Î1 needs one per label draw: the per-input gradients of ``ε_m·h`` (the graph engine,
:meth:`~fimvar.engine.graph.GraphEngine.draw_gradients`), squared. With M ≥ 2 draws per input,
the spread of the squares within an input estimates the label noise and the spread of their
per-input means between inputs the rest ([B] Thm 4.7): no exact Fisher is formed.
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
from fimvar.analysis.groups import GroupSpec, describe_groups, resolve_groups
from fimvar.analysis.inputs import (
    check_parameters_finite,
    check_result_finite,
    check_samples,
    trainable_parameters,
)
from fimvar.analysis.masking import check_masking_labels, masked_residuals, position_mask
from fimvar.engine.graph import GraphEngine
from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators.diagonal import centred_fisher_squares
from fimvar.estimators.labels import check_seed, draw_residuals
from fimvar.estimators.tiling import tiles
from fimvar.families import ExponentialFamily, get_family
from fimvar.results.sampled import SampledResult


class SampledAnalysis(FamilyAnalysis):
    """A resumable sampled analysis (see :func:`analyze_sampled`)."""

    kind = "sampled"
    takes_labels = True  # only for the -100 positions of a language model

    def __init__(self, model: nn.Module, family: str | ExponentialFamily = "categorical", samples: int = 2,
                 seed: int = 0, *, parameters: Iterable[str] | None = None, groups: GroupSpec = None,
                 memory_budget: int | str | None = None) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.samples = check_samples(samples)
        if self.samples < 2:
            raise FimvarError("the sampled analysis estimates the label noise from the spread of the draws "
                              "of each input: give samples=2 or more")
        self.seed = check_seed(seed)
        self.parameter_names = trainable_parameters(model, parameters)
        self.groups = resolve_groups(self.parameter_names, groups)
        check_parameters_finite(model, self.parameter_names)
        self.engine = GraphEngine(model, self.parameter_names, self.memory_budget)

    def chunk_size(self, x: torch.Tensor) -> int:
        return self.engine.chunk_size(x, self.samples, 0, factored=True)

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        check_masking_labels(family, labels, "the sampled analysis")
        mask = position_mask(family, self.packing, x, labels)

        def residuals(h: torch.Tensor) -> torch.Tensor:
            family.check_outputs(h)
            draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
            return draws if mask is None else masked_residuals(draws, mask, h.shape[1] // family.positions)

        _, blocks = self.engine.draw_gradients(x, residuals)
        n = x.shape[0]
        done = set()
        for block in blocks:
            self._add_block(block, n)
            done.add(block.name)
        for name, p in self.model.named_parameters():  # no output depends on it
            if name in self.parameter_names and name not in done:
                zero = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                for quantity in ("i1", "i1_within"):
                    self.accumulator.add(parameter(name, quantity), zero)
                self.accumulator.add_moments(parameter(name, "score"), parameter(name, "score_m2"), n,
                                             zero, zero)

    def _add_block(self, block, n: int) -> None:
        """The chunk's sums for one parameter: ``Σ_x Σ_m s²``, the within-input sums of squares
        ``Σ_x Σ_m (s_m² − s̄²)²`` and the per-input means' total and centred sum of squares, all
        float64 and free of cancellation (a factored weight's ``s_m = δ_m a`` shares ``a²``)."""
        first = block.first  # (n, M, J)
        columns = first.shape[2]
        totals = torch.empty(n, columns, dtype=torch.float64, device=first.device)
        within = torch.empty_like(totals)
        for rows, cols in tiles(n, first.shape[1], columns):
            squares = first[rows, :, cols].to(torch.float64) ** 2
            mean = squares.mean(1)
            totals[rows, cols] = squares.sum(1)
            within[rows, cols] = ((squares - mean[:, None]) ** 2).sum(1)
        per_input = totals / self.samples
        acc, name = self.accumulator, block.name
        acc.add(parameter(name, "i1"), block.reduce(totals, 2))
        acc.add(parameter(name, "i1_within"), block.reduce(within, 4))
        total, total_sq = block.reduce(per_input, 2), block.reduce(per_input**2, 4)
        acc.add_moments(parameter(name, "score"), parameter(name, "score_m2"), n, total,
                        centred_fisher_squares(block, per_input, total, total_sq))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family.name, "samples": self.samples, "seed": self.seed,
                "parameters": self.parameter_names, "model": checkpoints.model_hash(self.model)}

    def result(self) -> SampledResult:
        n, m = self.count, self.samples
        if n == 0:
            raise FimvarError("the data is empty: no input was analysed")
        if n < 2:
            raise FimvarError("the sampled analysis needs at least 2 inputs to estimate the input noise")
        names = self.parameter_names
        sums = self.accumulator.sums
        i1 = {k: sums[parameter(k, "i1")] / (n * m) for k in names}
        v1 = {k: sums[parameter(k, "i1_within")] / (n * (m - 1)) for k in names}
        between = {k: moments.sample_variance(n, sums[parameter(k, "score_m2")]) for k in names}
        unbiased = {k: between[k] - v1[k] / m for k in names}
        result = SampledResult(
            family=self.family.name, samples=m, num_inputs=n,
            shapes={k: p.shape for k, p in self.model.named_parameters() if k in names},
            i1=i1, v1=v1, input_var={k: v.clamp_min(0.0) for k, v in unbiased.items()},
            input_var_unbiased=unbiased, between=between,
            metadata={"seed": self.seed, "outputs": self.width, "engine": self.engine.name,
                      **self.run_metadata()},
            groups=self.groups)
        layers = describe_groups(self.model, self.groups)
        if layers:
            result.metadata["layers"] = layers
        check_result_finite({"i1": i1, "v1": v1, "between": between})
        return result


def analyze_sampled(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 2,
    seed: int = 0,
    *,
    labels: torch.Tensor | None = None,
    parameters: Iterable[str] | None = None,
    groups: GroupSpec = None,
    memory_budget: int | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> SampledResult:
    """Î1 with ``samples`` labels drawn from the model per input and the unbiased estimates of its
    variance's two terms from the draws (docs/theory.md §17), at the cost of ``samples`` backward
    passes per chunk whatever the number of outputs — a language model's vocabulary included.

    ``v1 = Σ_x Σ_m (s²_xm − s̄²_x)² / (N (M − 1))`` (label noise, unbiased for ``E_x v1(x)``),
    ``between`` the sample variance of the per-input means ``s̄²_x`` (unbiased for
    ``Var_x I(θ|x) + E_x v1/M``), the input noise ``between − v1/M``; ``variance()`` combines them
    for any design ([B] Thm 4.7). The draws are those of :func:`fimvar.analyze` with the same seed
    (so its ``i1`` equals analyze's). Runs on the graph engine (hooked layers only). ``labels``
    only leave out positions labelled ``-100``. ``groups``: the parameter groups of the per-layer
    summaries and plan (default one per module, as :func:`fimvar.analyze`). Other arguments as in
    :func:`fimvar.analyze`."""
    analysis = SampledAnalysis(model, family, samples, seed, parameters=parameters, groups=groups,
                               memory_budget=memory_budget)
    analysis.run(x, labels, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
