"""The one loop every analysis runs through: batches, memory-budgeted chunks, float64
accumulation, progress, checkpoints and resumption.

A mode (diagonal, full-matrix, hidden-layer, weight-norm) subclasses :class:`StreamingAnalysis`
and says only what one chunk of inputs adds to the :class:`~fimvar.analysis.accumulator.Accumulator`
(:meth:`~StreamingAnalysis.update_chunk`), how many inputs a chunk may hold
(:meth:`~StreamingAnalysis.chunk_size`), what determines its result
(:meth:`~StreamingAnalysis.config`) and how to build the result from the sums
(:meth:`~StreamingAnalysis.result`). Label draws are seeded by the global index of each input
(:mod:`fimvar.estimators.labels`), so no result depends on how the data is split into batches or
chunks, and a resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import Accumulator
from fimvar.analysis.inputs import (
    batches,
    check_inputs,
    check_labels,
    check_memory_budget,
    check_model,
    model_mode_context,
    model_reference,
)
from fimvar.errors import FimvarError

#: inputs per block when a run is checkpointed or shows progress and no batch size is given
DEFAULT_BLOCK = 256


class StreamingAnalysis(ABC):
    """A resumable analysis: feed batches with :meth:`update` (or :meth:`run`), read :meth:`result`."""

    #: what the checkpoint records as the kind of analysis
    kind: str = "analysis"
    #: whether the mode uses data labels (the empirical Fisher)
    takes_labels: bool = False

    def __init__(self, model: nn.Module, memory_budget: int | str | None = None) -> None:
        check_model(model)
        self.model = model
        #: bytes the engine may use per chunk: an int, or a string with a unit ("2GB", "512MiB")
        self.memory_budget = check_memory_budget(memory_budget)
        self.accumulator = Accumulator()
        self.has_labels: bool | None = None

    @property
    def count(self) -> int:
        """Inputs analysed so far."""
        return self.accumulator.count

    # ------------------------------------------------------------------ what a mode provides
    @abstractmethod
    def chunk_size(self, x: torch.Tensor) -> int:
        """How many inputs of ``x`` one chunk may hold within the memory budget."""

    @abstractmethod
    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Add the sums of one chunk (its first input has the global index :attr:`count`) to
        :attr:`accumulator`; the driver then counts the chunk's inputs."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything besides the data that determines the result (the checkpoint fingerprint)."""

    @abstractmethod
    def result(self):
        """The result object built from the accumulated sums."""

    def prepare(self, x: torch.Tensor) -> None:  # noqa: B027 (optional hook)
        """Called before the first chunk of every batch (e.g. to read the output width)."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-ready state besides the sums, saved in checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`extra_state`."""

    # ------------------------------------------------------------------ the loop
    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Analyse one batch of inputs (and optional data labels), chunk by chunk.

        Any exception other than a :class:`FimvarError` raised while the model is differentiated
        (e.g. a forward that writes into a buffer, which ``torch.func`` forbids) becomes one
        :class:`FimvarError` with the original message, chained to the original exception; the
        sums of the chunk that failed are discarded, so the analysis stays as it was before it.
        """
        check_inputs(self.model, x)
        check_labels(x, labels)
        if labels is not None and not self.takes_labels:
            raise FimvarError(f"the {self.kind} analysis does not use data labels; drop them")
        if self.has_labels is not None and (labels is not None) != self.has_labels:
            raise FimvarError("give labels for every batch or for none")
        had_labels, self.has_labels = self.has_labels, labels is not None
        sums = dict(self.accumulator.sums)  # the sums are replaced, never modified in place
        try:
            with model_mode_context(self.model):
                self.prepare(x)
                chunk = self.chunk_size(x)
                for start in range(0, x.shape[0], chunk):
                    stop = min(x.shape[0], start + chunk)
                    sums = dict(self.accumulator.sums)
                    self.update_chunk(x[start:stop], None if labels is None else labels[start:stop])
                    self.accumulator.finish_chunk(stop - start)
        except Exception as error:
            self.accumulator.sums = sums
            if self.count == 0:
                self.has_labels = had_labels
            if isinstance(error, FimvarError):
                raise
            message = " ".join(f"{type(error).__name__}: {error}".split())
            hint = ("lower memory_budget" if "out of memory" in message.lower() else
                    "fimvar differentiates the forward with torch.func, which needs a pure function "
                    "of the inputs and parameters: no in-place writes into buffers or other captured "
                    "tensors, no .item()/.numpy(), no branching on tensor values; rewrite the forward")
            raise FimvarError(f"fimvar could not differentiate the model ({message}); {hint}") from error

    def run(
        self,
        data,
        labels=None,
        *,
        batch_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_interval: float = 60.0,
        progress: bool = False,
    ) -> StreamingAnalysis:
        """Analyse every batch of ``data`` (a tensor, or an iterable of batches or of
        ``(inputs, labels)`` pairs).

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
        total = data_length(data)
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
            for x, y in data_blocks(data, labels, block, skip):
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
    def state_dict(self) -> dict[str, Any]:
        """The accumulated state: ``{"sums", "keys", "count", "has_labels", "extra", "config"}``."""
        tensors, keys = self.accumulator.state_dict()
        return {"sums": tensors, "keys": keys, "count": self.count, "has_labels": self.has_labels,
                "extra": self.extra_state(), "config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (from an analysis with the same :meth:`config`)."""
        if state.get("config") is not None:
            checkpoints.check_fingerprint("state", state["config"], self.config())
        device = model_reference(self.model).device
        self.accumulator = Accumulator.from_state_dict(state["sums"], state["keys"], state["count"],
                                                       device)
        self.has_labels = state.get("has_labels")
        self.load_extra_state(state.get("extra") or {})

    def save_checkpoint(self, path: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> None:
        """Atomically write the accumulated sums to ``path`` (see :mod:`fimvar.analysis.checkpoint`)."""
        from fimvar import __version__

        tensors, keys = self.accumulator.state_dict()
        fingerprint = fingerprint if fingerprint is not None else self.config()
        checkpoints.save(path, tensors, {
            "kind": self.kind, "fingerprint": fingerprint, "count": self.count, "keys": keys,
            "has_labels": self.has_labels, "extra": self.extra_state(), "fimvar_version": __version__,
        })

    def _resume(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        loaded = checkpoints.load(path)
        if loaded is None:
            return
        if self.count:
            raise FimvarError("resume from a checkpoint needs a fresh analysis (no input analysed yet)")
        tensors, metadata = loaded
        checkpoints.check_fingerprint(path, metadata.get("fingerprint", {}), fingerprint)
        self.load_state_dict({"sums": tensors, "keys": metadata["keys"], "count": metadata["count"],
                              "has_labels": metadata.get("has_labels"), "extra": metadata.get("extra")})


def data_fingerprint(data, labels) -> str:
    """Hash of tensor data and labels; iterables cannot be hashed without consuming them."""
    if isinstance(data, torch.Tensor) and (labels is None or isinstance(labels, torch.Tensor)):
        return checkpoints.tensor_hash(data, labels)
    return "iterable (not hashed)"


def data_length(data) -> int | None:
    """Number of inputs in ``data`` when it can be known without iterating."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


def data_blocks(data, labels, block: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
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
