"""``fimvar.analyze``: the diagonal Fisher, its two estimators, their variances and bounds."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from fimvar import checkpoint as checkpoints
from fimvar.accumulator import Accumulator
from fimvar.engine import make_engine
from fimvar.engine.autodiff import default_memory_budget
from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.groups import GroupSpec, resolve_groups
from fimvar.inputs import (
    batches,
    check_derivatives_finite,
    check_inputs,
    check_parameters_finite,
    check_samples,
    family_outputs,
    model_mode_context,
    model_reference,
    trainable_parameters,
    warn_piecewise_linear,
)
from fimvar.result import DiagonalResult
from fimvar.sampling import uniforms
from fimvar.statistics import Spectrum, block_sums, bound_coefficients
from fimvar.trace_bounds import OutputMoments, group_sums

#: the group holding every analysed parameter, for model-level trace and Frobenius quantities
MODEL_GROUP = "(model)"
#: inputs per block when a run is checkpointed or shows progress and no batch size is given
DEFAULT_BLOCK = 256


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
        check_parameters_finite(model, self.parameter_names)
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
                self.width = family_outputs(self.model, x[:1], self.family).shape[1]
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
            check_derivatives_finite(block.name, sums)
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

    def run(
        self,
        data,
        labels=None,
        *,
        batch_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_interval: float = 60.0,
        progress: bool = False,
    ) -> Analysis:
        """Analyse every batch of ``data`` (see :func:`analyze` for the arguments).

        With ``checkpoint`` (or ``batch_size`` / ``progress``) a tensor ``data`` is fed in blocks
        of ``batch_size`` inputs counted from input 0; a checkpoint is saved after a block when
        ``checkpoint_interval`` seconds have passed since the last one, and at the end. An
        existing checkpoint is resumed: its inputs are skipped, and the result equals that of an
        uninterrupted run with the same block size bit for bit.
        """
        if checkpoint is None and batch_size is None and not progress:
            for x, y in batches(data, labels):
                self.update(x, y)
            return self
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise FimvarError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        block = int(batch_size or DEFAULT_BLOCK)
        fingerprint = None
        if checkpoint is not None:
            fingerprint = {**self.config(), "data": data_fingerprint(data, labels)}
            self._resume(checkpoint, fingerprint)
        skip = self.count
        total = _length(data)
        if total is not None and skip > total:
            raise FimvarError(
                f"the checkpoint {checkpoint} holds {skip} inputs but the data has only {total}; "
                "delete the checkpoint to start over"
            )
        from tqdm import tqdm

        bar = tqdm(total=total, initial=skip, unit="input", desc="fimvar", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        last_save = time.monotonic()
        try:
            for x, y in _blocks(data, labels, block, skip):
                self.update(x, y)
                bar.update(x.shape[0])
                if checkpoint is not None and time.monotonic() - last_save >= checkpoint_interval:
                    self.save_checkpoint(checkpoint, fingerprint)
                    last_save = time.monotonic()
        finally:
            bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint, fingerprint)
        return self

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """Everything besides the data that determines the result (the checkpoint fingerprint)."""
        family = {k: v for k, v in vars(self.family).items()
                  if isinstance(v, (str, int, float, bool, type(None)))}
        shapes = {name: list(p.shape) for name, p in self.model.named_parameters()
                  if name in self.parameter_names}
        return {
            "family": {"name": self.family.name, **family},
            "samples": self.samples,
            "seed": self.seed,
            "engine": self.engine.name,
            "parameters": {name: shapes[name] for name in self.parameter_names},
            "groups": self.groups,
            "bounds": bool(self.bounds),
            "model": checkpoints.model_hash(self.model),
        }

    def state_dict(self) -> dict[str, Any]:
        """The accumulated state: ``{"sums": tensors, "count", "width", "has_labels", "config"}``."""
        return {"sums": self.accumulator.state_dict(), "count": self.count, "width": self.width,
                "has_labels": self.has_labels, "config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (from an analysis with the same :meth:`config`)."""
        if state.get("config") is not None:
            checkpoints.check_fingerprint("state", state["config"], self.config())
        device = model_reference(self.model).device
        accumulator = Accumulator.from_state_dict(state["sums"])
        accumulator.sums = {k: v.to(device) for k, v in accumulator.sums.items()}
        self.accumulator = accumulator
        self.width = state.get("width")
        self.has_labels = state.get("has_labels")

    def save_checkpoint(self, path: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> None:
        """Atomically write the accumulated sums to ``path`` (see :mod:`fimvar.checkpoint`)."""
        from fimvar import __version__

        fingerprint = fingerprint if fingerprint is not None else self.config()
        checkpoints.save(path, self.accumulator.state_dict(), {
            "fingerprint": fingerprint, "count": self.count, "width": self.width,
            "has_labels": self.has_labels, "fimvar_version": __version__,
        })

    def _resume(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        loaded = checkpoints.load(path)
        if loaded is None:
            return
        if self.count:
            raise FimvarError("resume from a checkpoint needs a fresh Analysis (no input analysed yet)")
        state, metadata = loaded
        checkpoints.check_fingerprint(path, metadata.get("fingerprint", {}), fingerprint)
        self.load_state_dict({"sums": state, "width": metadata.get("width"),
                              "has_labels": metadata.get("has_labels")})

    def result(self) -> DiagonalResult:
        shapes = {name: p.shape for name, p in self.model.named_parameters()
                  if name in self.parameter_names}
        shapes = {name: shapes[name] for name in self.parameter_names}
        result = DiagonalResult.from_accumulator(
            self.accumulator, family=self.family.name, samples=self.samples,
            engine=self.engine.name, shapes=shapes, groups=self.groups,
        )
        result.metadata.update(seed=self.seed, outputs=self.width)
        return result


def data_fingerprint(data, labels) -> str:
    """Hash of tensor data and labels; iterables cannot be hashed without consuming them."""
    if isinstance(data, torch.Tensor) and (labels is None or isinstance(labels, torch.Tensor)):
        return checkpoints.tensor_hash(data, labels)
    return "iterable (not hashed)"


def _length(data) -> int | None:
    """Number of inputs in ``data`` when it can be known without iterating."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


def _blocks(data, labels, block: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches of ``data`` after its first ``skip`` inputs; a tensor is cut into blocks of
    ``block`` inputs counted from input 0 (so a resumed run sees the same blocks)."""
    if isinstance(data, torch.Tensor):
        x, y = next(batches(data, labels))  # validates labels
        for start in range(skip, x.shape[0], block):
            yield x[start:start + block], (None if y is None else y[start:start + block])
        return
    seen = 0
    for x, y in batches(data, labels):
        n = x.shape[0]
        if seen + n <= skip:
            seen += n
            continue
        offset = max(0, skip - seen)
        seen += n
        yield x[offset:], (None if y is None else y[offset:])


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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
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
        checkpoint: path of a checkpoint file (:mod:`fimvar.checkpoint`): saved periodically and
            at the end; when it exists, the run resumes from it (same arguments required).
        checkpoint_interval: seconds between two checkpoint saves (0: after every block).
        batch_size: inputs per block when checkpointing or showing progress (default 256);
            keep it fixed between a run and its resumption for a bit-identical result.
        progress: show a progress bar (tqdm) on stderr.

    Returns:
        A :class:`~fimvar.result.DiagonalResult`.
    """
    analysis = Analysis(model, family, samples, seed, engine, parameters=parameters,
                        groups=groups, bounds=bounds, memory_budget=memory_budget)
    analysis.run(x, labels, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
