"""``fimvar.analyze``: the diagonal Fisher, its two estimators, their variances and bounds."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fimvar.accumulator import Accumulator
from fimvar.engine import make_engine
from fimvar.engine.autodiff import default_memory_budget
from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.groups import GroupSpec, resolve_groups
from fimvar.inputs import (
    batches,
    check_inputs,
    model_mode_context,
    trainable_parameters,
    warn_piecewise_linear,
)
from fimvar.result import DiagonalResult
from fimvar.sampling import uniforms
from fimvar.statistics import Spectrum, block_sums, bound_coefficients
from fimvar.trace_bounds import OutputMoments, group_sums

#: the group holding every analysed parameter, for model-level trace and Frobenius quantities
MODEL_GROUP = "(model)"


def check_samples(samples: int) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise FimvarError(f"samples (label draws per input) must be an integer ≥ 1, got {samples!r}")
    return samples


def model_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model on a batch and return its outputs as ``(n, T)``, with clear errors."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # the model's own error, re-raised with context
        raise FimvarError(
            f"the model failed on inputs of shape {tuple(x.shape)}: {error}"
        ) from error
    if not isinstance(out, torch.Tensor):
        raise FimvarError(f"the model must return a tensor, got {type(out).__name__}")
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2:
        raise FimvarError(
            f"the model returns shape {tuple(out.shape)}; fimvar needs (batch, outputs) — "
            "flatten the output in the model"
        )
    return out


class Analysis:
    """A resumable diagonal analysis: feed batches with :meth:`update`, read :meth:`result`.

    Label draws are seeded by the global index of each input (:mod:`fimvar.sampling`), so the
    result does not depend on how the data is split into batches or chunks.
    """

    def __init__(
        self,
        model: nn.Module,
        family: str | ExponentialFamily = "categorical",
        samples: int = 1,
        seed: int = 0,
        engine: str = "auto",
        *,
        parameters: Iterable[str] | None = None,
        groups: GroupSpec = None,
        bounds: bool = True,
        memory_budget: int | None = None,
    ) -> None:
        self.model = model
        self.family = get_family(family)
        self.samples = check_samples(samples)
        self.seed = int(seed)
        self.parameter_names = trainable_parameters(model, parameters)
        self.groups = resolve_groups(self.parameter_names, groups)
        self.bounds = bounds
        self.memory_budget = memory_budget or default_memory_budget()
        self.engine = make_engine(engine, model, self.parameter_names, self.memory_budget)
        self.accumulator = Accumulator()
        self.width: int | None = None
        self.has_labels: bool | None = None
        warn_piecewise_linear(model)

    @property
    def count(self) -> int:
        """Inputs analysed so far."""
        return self.accumulator.count

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Analyse one batch of inputs (and optional data labels)."""
        check_inputs(self.model, x)
        if (labels is not None) != bool(self.has_labels) and self.has_labels is not None:
            raise FimvarError("give labels for every batch or for none")
        self.has_labels = labels is not None
        with model_mode_context(self.model):
            if self.width is None:
                outputs = model_outputs(self.model, x[:1])
                self.family.check_outputs(outputs.to(torch.float64))
                self.width = outputs.shape[1]
            chunk = self.engine.chunk_size(x, self.width, self.samples)
            for start in range(0, x.shape[0], chunk):
                stop = min(x.shape[0], start + chunk)
                self._update_chunk(x[start:stop], None if labels is None else labels[start:stop])

    def _update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        h, blocks = self.engine.derivatives(x)
        family.check_outputs(h)
        n = h.shape[0]
        index = torch.arange(self.count, self.count + n)
        draws_uniform = uniforms(self.seed, index, self.samples, family.uniform_width(h.shape[1]),
                                 device=h.device)
        draws = family.centered(h, family.sample(h, draws_uniform))
        residual = None
        if labels is not None:
            residual = family.centered(h, family.check_labels(labels.to(h.device), h))
        coefficients = None
        if self.bounds:
            coefficients = bound_coefficients(Spectrum.of(family, h))
        widest = max(b.first.shape[2] for b in blocks)
        draw_chunk = max(1, self.memory_budget // (8 * 6 * n * widest))
        by_name = {}
        for block in blocks:
            sums = block_sums(family, h, block, draws, residual, coefficients, draw_chunk)
            self.accumulator.add_parameter(block.name, sums, n)
            by_name[block.name] = block
        if self.bounds:
            self._update_groups(h, by_name)
        self.accumulator.finish_chunk(n)

    def _update_groups(self, h: torch.Tensor, blocks: dict) -> None:
        moments = OutputMoments(self.family, h)
        grams = {name: block.gram() for name, block in blocks.items()}
        squares = ({name: block.square_gram() for name, block in blocks.items()}
                   if moments.tensor_forms else {})
        members_of = dict(self.groups)
        if len(self.groups) > 1:
            members_of[MODEL_GROUP] = self.parameter_names
        for group, members in members_of.items():
            gram_u = sum(grams[m][0] for m in members)
            gram_w = sum(grams[m][1] for m in members)
            square = sum(squares[m] for m in members) if squares else None
            self.accumulator.add_group(group, group_sums(moments, gram_u, gram_w, square))

    def run(self, data, labels=None) -> Analysis:
        """Analyse every batch of ``data`` (see :func:`analyze`)."""
        for x, y in batches(data, labels):
            self.update(x, y)
        return self

    def result(self) -> DiagonalResult:
        shapes = {name: p.shape for name, p in self.model.named_parameters()
                  if name in self.parameter_names}
        shapes = {name: shapes[name] for name in self.parameter_names}
        return DiagonalResult.from_accumulator(
            self.accumulator, family=self.family.name, samples=self.samples,
            engine=self.engine.name, shapes=shapes, groups=self.groups,
        )


def analyze(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
    labels: torch.Tensor | Iterable | None = None,
    engine: str = "auto",
    *,
    parameters: Iterable[str] | None = None,
    groups: GroupSpec = None,
    bounds: bool = True,
    memory_budget: int | None = None,
) -> DiagonalResult:
    """Exact diagonal Fisher, the estimators Î1/Î2, their variances, covariance and bounds.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to ``(batch, T)`` natural parameters.
        x: inputs (first dimension = samples), or an iterable of batches or ``(x, y)`` pairs.
        family: ``categorical``, ``gaussian``, ``bernoulli``, ``poisson`` or a family object.
        samples: label draws ``M ≥ 1`` per input for Î1 and Î2 (labels sampled from the model).
        seed: seed of the label draws.
        labels: optional data labels; give them for the empirical Fisher and its bias.
        engine: ``auto``, ``autodiff`` or ``structured``.
        parameters: names of the parameters to analyse (default: all that require grad).
        groups: parameter groups for summaries (default: one per module).
        bounds: also compute every bound of [B] and the trace/Frobenius forms.
        memory_budget: bytes the engine may use per chunk (default 2 GiB).

    Returns:
        A :class:`~fimvar.result.DiagonalResult`.
    """
    analysis = Analysis(model, family, samples, seed, engine, parameters=parameters,
                        groups=groups, bounds=bounds, memory_budget=memory_budget)
    return analysis.run(x, labels).result()
