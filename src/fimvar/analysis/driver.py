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

Inside an initialised ``torch.distributed`` process group of more than one process, :meth:`run`
shards the data over the processes and merges their sums (:mod:`fimvar.analysis.distributed`,
docs/theory.md §16): every process gets the single-process result up to summation order.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis import distributed
from fimvar.analysis.accumulator import Accumulator
from fimvar.analysis.inputs import (
    batches,
    check_inputs,
    check_labels,
    check_memory_budget,
    check_model,
    model_mode_context,
    model_precision,
    model_reference,
    numpy_inputs,
    numpy_labels,
    output_family,
)
from fimvar.analysis.packing import (
    Packing,
    forward_keywords,
    packed_forward,
    positional_arity,
    split_labels,
    takes_arguments,
)
from fimvar.engine.functional import buffers_kept
from fimvar.errors import FimvarError, warn
from fimvar.families import ExponentialFamily
from fimvar.families.positions import with_positions

#: inputs per block when a run is checkpointed or shows progress and no batch size is given
DEFAULT_BLOCK = 256


class StreamingAnalysis(ABC):
    """A resumable analysis: feed batches with :meth:`update` (or :meth:`run`), read :meth:`result`."""

    #: what the checkpoint records as the kind of analysis
    kind: str = "analysis"
    #: whether the mode uses data labels (the empirical Fisher)
    takes_labels: bool = False
    #: what the mode does with data labels, for the warning about labels carried by the batches
    labels_use: str = "as data labels"

    def __init__(self, model: nn.Module, memory_budget: int | str | None = None) -> None:
        check_model(model)
        self.model = model
        #: bytes the engine may use per chunk: an int, or a string with a unit ("2GB", "512MiB")
        self.memory_budget = check_memory_budget(memory_budget)
        self.accumulator = Accumulator()
        self.has_labels: bool | None = None
        #: how the current run packs argument dicts/tuples (fimvar.analysis.packing), or None
        self.packing = None
        #: where the data labels of the last run came from: "labels=" (the argument) or "batches"
        #: ((inputs, labels) pairs or a dict key 'labels' of the batches); None without labels
        self.labels_from: str | None = None
        #: the floating dtype the model computes in (warned about when float16/bfloat16)
        self.precision = model_precision(model)
        #: the progress bar of the current run (tqdm), or None
        self.bar = None
        #: the global index (position in the whole data stream) of the first input of the chunk
        #: being analysed: what its label draws and probes are seeded by
        self.chunk_start = 0
        #: the processes whose sums this analysis holds (:meth:`merge_ranks`); 1 for one process
        self.world_size = 1
        #: whether the sums are already those of every process (no more inputs may be added)
        self.merged = False

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
        """Add the sums of one chunk (its first input has the global index :attr:`chunk_start`:
        seed its label draws with it) to :attr:`accumulator`; the driver then counts the chunk's
        inputs."""

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

    def merge_extra_states(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """The :meth:`extra_state` of several processes' analyses merged (those with inputs, in rank
        order); by default the first one's (what the first batch told, e.g. the output width)."""
        return dict(states[0])

    def stage(self, text: str) -> None:
        """Show what the current chunk is doing (e.g. ``parameter 3/12``) next to the progress bar,
        so that a long chunk does not look frozen; nothing without a progress bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    # ------------------------------------------------------------------ the loop
    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
               start: int | None = None) -> None:
        """Analyse one batch of inputs (and optional data labels), chunk by chunk.

        ``start`` is the global index of the batch's first input (its position in the whole data
        stream, which seeds the label draws; default :attr:`count`, the inputs analysed so far).
        Processes that feed their own shards by hand give the global indices of their inputs here,
        then call :meth:`merge_ranks` on every process.

        Any exception other than a :class:`FimvarError` raised while the model is differentiated
        (e.g. a forward that writes into a buffer, which ``torch.func`` forbids) becomes one
        :class:`FimvarError` with the original message, chained to the original exception; the
        sums of the chunk that failed are discarded, so the analysis stays as it was before it —
        unless that chunk had already added to sums updated in place (the sampled analysis: a
        language model's sums are not copied per chunk), after which every use of the analysis
        raises a :class:`FimvarError` (start again or resume from the checkpoint).
        """
        if self.merged:
            raise FimvarError("this analysis already holds the merged sums of every process "
                              "(merge_ranks); start a new one to analyse more inputs")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
            raise FimvarError(f"start must be the global index (an integer ≥ 0) of the batch's first "
                              f"input, got {start!r}")
        first = self.count if start is None else int(start)
        check_inputs(self.model, x)
        check_labels(x, labels)
        if labels is not None and not self.takes_labels:
            raise FimvarError(f"the {self.kind} analysis does not use data labels; drop them")
        if self.has_labels is not None and (labels is not None) != self.has_labels:
            raise FimvarError("give labels for every batch or for none")
        had_labels, self.has_labels = self.has_labels, labels is not None
        snapshot = self.accumulator.snapshot()
        try:
            with model_mode_context(self.model), buffers_kept(self.model):
                self.prepare(x)
                chunk = self.chunk_size(x)
                for start in range(0, x.shape[0], chunk):
                    stop = min(x.shape[0], start + chunk)
                    snapshot = self.accumulator.snapshot()
                    if x.shape[0] > chunk:
                        self.stage(f"chunk of inputs {self.count + 1}–{self.count + stop - start}")
                    self.chunk_start = first + start
                    self.update_chunk(x[start:stop], None if labels is None else labels[start:stop])
                    self.accumulator.finish_chunk(stop - start)
                    if self.bar is not None:  # inputs done, chunk by chunk
                        self.bar.update(stop - start)
        except BaseException as error:  # KeyboardInterrupt too: the sums hold whole chunks only
            self.accumulator.restore(snapshot)
            if self.count == 0:
                self.has_labels = had_labels
            if isinstance(error, FimvarError) or not isinstance(error, Exception):
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
        """Analyse every batch of ``data``: a tensor or NumPy array, or an iterable (e.g. a
        ``DataLoader``) of batches, of 1-tuples ``(inputs,)``, of ``(inputs, labels)`` pairs or of
        argument dicts (a dict entry ``labels`` that the forward does not take is the batch's
        labels). ``labels`` goes with a tensor ``data``; labels carried by the batches are used as
        data labels, with a warning, and recorded in the result (:meth:`run_metadata`).

        With ``checkpoint`` (or ``batch_size`` / ``progress``) the data is fed in blocks of
        ``batch_size`` inputs counted from input 0 (the batches of an iterable are cut and joined
        into such blocks, so how it is batched does not matter); a checkpoint is saved after a
        block when ``checkpoint_interval`` seconds have passed since the last one, and at the end.
        An existing checkpoint is resumed: its inputs are skipped, and the result equals that of an
        uninterrupted run with the same block size bit for bit.

        Before any work, the checkpoint's folder is checked to be writable and temporary files
        left there by a killed write of the same checkpoint are deleted. A save that fails later
        (disk full, folder removed) warns and the run goes on, so its result is not lost.

        Tensor data is fingerprinted by a hash of all of it. For an iterable, the checkpoint holds
        a hash of the inputs and labels consumed so far; a resumed run hashes the part it skips
        again and refuses data that differs there.

        Inside an initialised ``torch.distributed`` process group of ``W > 1`` processes, call it on
        every process with the same data (not a ``DistributedSampler``): block ``b`` of
        ``batch_size`` inputs (default 256, at most ``⌈N/W⌉``) is analysed by process ``b mod W``
        with the label draws of its global input indices, the sums are merged over the processes
        (:meth:`merge_ranks`), and every process holds the single-process result up to summation
        order (docs/theory.md §16). A checkpoint is one file per process, ``PATH.rank{r}-of-{W}``,
        resumed only with the same ``W`` and ``batch_size``.
        """
        if self.merged:
            raise FimvarError("this analysis already holds the merged sums of every process "
                              "(merge_ranks); start a new one to analyse more inputs")
        like = floating_reference(self.model)
        given = labels is not None
        data, labels = numpy_inputs(data, like), numpy_labels(labels, like)
        group = distributed.process_group()
        if group is not None:
            distributed.check_sampler(data)
        data, packing, labels = pack_arguments(self.model, data, labels, like)
        self.packing = packing
        with packed_forward(self.model, packing):
            if group is None:
                self._run(data, labels, batch_size, checkpoint, checkpoint_interval, progress, like)
            else:
                self._run_sharded(data, labels, batch_size, checkpoint, checkpoint_interval, progress,
                                  like, *group)
        if group is not None:
            self.merge_ranks()
        self.labels_from = None if not self.has_labels else ("labels=" if given else "batches")
        if self.labels_from == "batches":
            warn(f"the batches carry data labels ((inputs, labels) pairs, or a dict entry 'labels' that "
                 f"the model's forward does not take); the {self.kind} analysis uses them {self.labels_use}; "
                 "give batches of inputs only (e.g. DataLoader(TensorDataset(x))) to leave them out")
        return self

    def run_metadata(self) -> dict[str, Any]:
        """What a result records about the run besides its numbers: ``precision`` (the model's
        floating dtype) and, with data labels, ``data_labels`` (``"labels="``: given as the
        argument; ``"batches"``: carried by the batches; ``"given"``: fed to :meth:`update`)."""
        metadata: dict[str, Any] = {}
        if self.precision is not None:
            metadata["precision"] = self.precision
        if self.has_labels:
            metadata["data_labels"] = self.labels_from or "given"
        metadata["world_size"] = self.world_size
        return metadata

    def merge_ranks(self) -> None:
        """Merge the sums of every process of the default ``torch.distributed`` process group into
        this analysis (a collective: call it on every process, after the last :meth:`update`);
        :meth:`run` calls it itself. Plain sums are all-reduced in float64, centred sums gathered
        and merged pairwise in rank order (:func:`~fimvar.analysis.distributed.merge_accumulators`);
        every process then holds the same sums, and :attr:`world_size` is the number of processes.
        Nothing happens with one process."""
        group = distributed.process_group()
        if group is None:
            return
        if self.merged:
            raise FimvarError("this analysis already holds the merged sums of every process")
        states = distributed.all_gather({"count": self.count, "has_labels": self.has_labels,
                                         "extra": self.extra_state()})
        with_inputs = [s for s in states if s["count"] > 0]
        labelled = {s["has_labels"] for s in with_inputs}
        if len(labelled) > 1:
            raise FimvarError("some processes analysed data labels and others did not; give labels to "
                              "every process or to none")
        device = model_reference(self.model).device
        self.accumulator = distributed.merge_accumulators(self.accumulator, device)
        if with_inputs:
            self.has_labels = with_inputs[0]["has_labels"]
            self.load_extra_state(self.merge_extra_states([s["extra"] for s in with_inputs]))
        self.world_size = group[1]
        self.merged = True

    def _run(self, data, labels, batch_size, checkpoint, checkpoint_interval, progress,
             like: torch.Tensor | None) -> StreamingAnalysis:
        if checkpoint is None and batch_size is None and not progress:
            for x, y in batches(data, labels, like):
                self.update(x, y)
            return self
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise FimvarError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        block = int(batch_size or DEFAULT_BLOCK)
        fingerprint = consumed = None
        if checkpoint is not None:
            checkpoints.check_writable(checkpoint)
            distributed.check_world_size(checkpoint, 1)
            checkpoints.remove_leftovers(checkpoint)
            fingerprint = {**self.config(), "data": data_fingerprint(data, labels)}
            saved = self._resume(checkpoint, fingerprint)
            if not isinstance(data, torch.Tensor):
                consumed = ConsumedData(checkpoint, saved, self.count)
        skip = self.count
        total = data_length(data)
        if total is not None and skip > total:
            raise FimvarError(
                f"the checkpoint {checkpoint} holds {skip} inputs but the data has only {total}; "
                "delete the checkpoint to start over"
            )
        failed = False

        def save() -> None:
            nonlocal failed
            try:
                self.save_checkpoint(checkpoint, fingerprint,
                                     consumed=None if consumed is None else consumed.state())
            except FimvarError as error:
                if not failed:
                    reason = getattr(error.__cause__, "strerror", None) or error.__cause__ or error
                    warn(f"could not save the checkpoint {checkpoint} ({reason}); the analysis "
                         "goes on and its result is kept, but it cannot be resumed from this checkpoint")
                failed = True

        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (a log file, a pipe, a notebook's capture)
        bar = tqdm(total=total, initial=skip, unit="input", desc="fimvar", disable=None if progress else True,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        self.bar = None if bar.disable else bar
        last_save = time.monotonic()
        try:
            for x, y in data_blocks(data, labels, block, skip, consumed, like):
                self.update(x, y)
                if checkpoint is not None and time.monotonic() - last_save >= checkpoint_interval:
                    save()
                    last_save = time.monotonic()
        finally:
            self.bar = None
            bar.close()
        if consumed is not None:
            consumed.verify()  # when no block came after the skipped inputs
        if checkpoint is not None:
            save()
        return self

    def _run_sharded(self, data, labels, batch_size, checkpoint, checkpoint_interval, progress,
                     like: torch.Tensor | None, rank: int, world: int) -> None:
        """This process's share of a distributed run (blocks ``b ≡ rank mod world``), then the check
        that every process succeeded and was given the same model, arguments and data."""
        error: Exception | None = None
        state: dict[str, Any] = {"config": None, "data": None}
        try:
            read = self._shard(data, labels, batch_size, checkpoint, checkpoint_interval, progress, like,
                               rank, world)
            state = {"config": distributed.config_digest(self.config()), "data": read.state()}
        except Exception as failure:  # reported to every process, so that none waits in the merge
            error = failure
        distributed.check_ranks(error, state)

    def _shard(self, data, labels, batch_size, checkpoint, checkpoint_interval, progress,
               like: torch.Tensor | None, rank: int, world: int) -> ConsumedData:
        """Analyse the blocks of this process; returns the hashes of all the data it read."""
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise FimvarError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        total = data_length(data)
        block = distributed.default_block(total, world, int(batch_size or DEFAULT_BLOCK))
        shard = {"rank": rank, "world_size": world, "block": block, "position": 0}
        path = fingerprint = saved = None
        if checkpoint is not None:
            distributed.check_world_size(checkpoint, world)
            path = distributed.rank_path(checkpoint, rank, world)
            checkpoints.check_writable(path)
            checkpoints.remove_leftovers(path)
            fingerprint = {**self.config(), "data": data_fingerprint(data, labels), "world_size": world,
                           "rank": rank, "block": block}
            saved = self._resume(path, fingerprint)
            if saved is not None:
                position = (saved.get("shard") or {}).get("position")
                if isinstance(position, bool) or not isinstance(position, int) or position < self.count:
                    raise FimvarError(f"the checkpoint {path} is corrupted (it lacks the position of "
                                      "its process in the data); delete it to start over")
                shard["position"] = position
        position = shard["position"]
        # every block is hashed: the processes compare what they read, and a resumed run what it skips
        iterable = not isinstance(data, torch.Tensor)
        read = ConsumedData(path, saved if iterable else None, position)
        from tqdm import tqdm

        share = None if total is None else sum(min(block, total - b) for b in range(rank * block, total,
                                                                                    world * block))
        done_before = self.count
        bar = tqdm(total=share, initial=done_before, unit="input", desc=f"fimvar (process {rank})",
                   disable=None if (progress and rank == 0) else True, file=sys.stderr, dynamic_ncols=True,
                   leave=False)
        self.bar = None if bar.disable else bar

        failed = False

        def save(rows: int) -> None:
            nonlocal failed
            try:
                self.save_checkpoint(path, fingerprint, consumed=read.state() if iterable else None,
                                     shard={**shard, "position": rows})
            except FimvarError as error:
                if failed:
                    return
                failed = True
                reason = getattr(error.__cause__, "strerror", None) or error.__cause__ or error
                warn(f"could not save the checkpoint {path} ({reason}); the analysis goes on and its "
                     "result is kept, but it cannot be resumed from this checkpoint")

        rows = skipped = 0
        last_save = time.monotonic()
        try:
            for index, (x, y) in enumerate(data_blocks(data, labels, block, 0, None, like)):
                start, rows = rows, rows + x.shape[0]
                read.add(x, y)
                mine = index % world == rank
                if start < position:  # analysed before the checkpoint
                    if rows > position:
                        raise FimvarError(f"the checkpoint {path} stops inside a block of this data; "
                                          "resume with the same data and batch_size")
                    skipped += x.shape[0] if mine else 0
                    if rows == position:
                        read.verify()
                        if skipped != self.count:
                            raise FimvarError(f"the checkpoint {path} holds {self.count} inputs of this "
                                              f"process, but its blocks of the first {position} inputs "
                                              f"have {skipped}; resume with the same data and batch_size")
                    continue
                if not mine:
                    continue
                self.update(x, y, start=start)
                if path is not None and time.monotonic() - last_save >= checkpoint_interval:
                    save(rows)
                    last_save = time.monotonic()
        finally:
            self.bar = None
            bar.close()
        read.verify()  # the data ended before the checkpoint's position
        if path is not None:
            save(rows)
        return read

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The accumulated state: ``{"sums", "keys", "count", "has_labels", "extra", "config"}``."""
        tensors, keys = self.accumulator.state_dict()
        return {"sums": tensors, "keys": keys, "count": self.count, "has_labels": self.has_labels,
                "extra": self.extra_state(), "config": self.config(),
                "centred": self.accumulator.centred_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (from an analysis with the same :meth:`config`)."""
        if state.get("config") is not None:
            checkpoints.check_fingerprint("state", state["config"], self.config())
        device = model_reference(self.model).device
        self.accumulator = Accumulator.from_state_dict(state["sums"], state["keys"], state["count"],
                                                       device, state.get("centred"))
        self.has_labels = state.get("has_labels")
        self.load_extra_state(state.get("extra") or {})

    def save_checkpoint(self, path: str | os.PathLike, fingerprint: dict[str, Any] | None = None, *,
                        consumed: dict[str, Any] | None = None, shard: dict[str, Any] | None = None) -> None:
        """Atomically write the accumulated sums to ``path`` (see :mod:`fimvar.analysis.checkpoint`),
        with the ``fingerprint`` of the run and, for an iterable, the hashes of the ``consumed`` data
        (:meth:`ConsumedData.state`); in a distributed run, ``shard`` says which process wrote it
        and how far into the data stream it got."""
        from fimvar import __version__

        tensors, keys = self.accumulator.state_dict()
        fingerprint = fingerprint if fingerprint is not None else self.config()
        metadata = {
            "kind": self.kind, "fingerprint": fingerprint, "count": self.count, "keys": keys,
            "has_labels": self.has_labels, "extra": self.extra_state(), "fimvar_version": __version__,
            "centred": self.accumulator.centred_state(),
        }
        if consumed is not None:
            metadata["consumed"] = consumed
        if shard is not None:
            metadata["shard"] = shard
        checkpoints.save(path, tensors, metadata)

    def _resume(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """Restore the checkpoint at ``path`` if there is one (refusing one of another run); returns
        its metadata."""
        loaded = checkpoints.load(path)
        if loaded is None:
            return None
        if self.count:
            raise FimvarError("resume from a checkpoint needs a fresh analysis (no input analysed yet)")
        tensors, metadata = loaded
        checkpoints.check_fingerprint(path, metadata["fingerprint"], fingerprint)
        try:
            self.load_state_dict({"sums": tensors, "keys": metadata["keys"], "count": metadata["count"],
                                  "has_labels": metadata["has_labels"], "extra": metadata["extra"],
                                  "centred": metadata.get("centred")})
        except FimvarError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise FimvarError(f"the checkpoint {path} is corrupted (its state cannot be restored: "
                              f"{error}); delete it to start over") from error
        return metadata


class FamilyAnalysis(StreamingAnalysis):
    """A streaming analysis of one output family (set by the subclass as :attr:`family`): the
    first input fixes the outputs' width and, for per-position outputs ``(n, L, T)``, turns the
    family into the product over the L positions; both are kept in checkpoints."""

    family: ExponentialFamily
    width: int | None = None

    def prepare(self, x: torch.Tensor) -> None:
        if self.width is None:
            self.family, outputs = output_family(self.model, x[:1], self.family)
            self.width = outputs.shape[1]

    def extra_state(self) -> dict[str, Any]:
        return {"width": self.width, "positions": getattr(self.family, "positions", None)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.width = state.get("width")
        self.family = with_positions(self.family, state.get("positions"))


def data_fingerprint(data, labels) -> str:
    """Hash of tensor data and labels; an iterable is fingerprinted by what it yields instead
    (:class:`ConsumedData`)."""
    if isinstance(data, torch.Tensor) and (labels is None or isinstance(labels, torch.Tensor)):
        return checkpoints.tensor_hash(data, labels)
    return "iterable (consumed inputs and labels hashed)"


class ConsumedData:
    """Hashes of the inputs and labels an analysis consumed from an iterable, saved with its
    checkpoint (:class:`~fimvar.analysis.checkpoint.RowHash`: independent of the batching).

    A resumed run hashes the inputs it skips again; :meth:`verify` refuses data whose first
    inputs or labels differ from those the checkpoint analysed, or that has fewer of them.
    """

    def __init__(self, path: str | os.PathLike, saved: dict[str, Any] | None, count: int) -> None:
        self.path = path
        self.inputs = checkpoints.RowHash()
        self.labels = checkpoints.RowHash()
        self.expected: dict[str, Any] | None = None
        if saved is not None:
            expected = saved.get("consumed")
            if not (isinstance(expected, dict) and expected.get("rows") == count
                    and isinstance(expected.get("inputs"), str) and isinstance(expected.get("labels"), str)):
                raise FimvarError(f"the checkpoint {path} is corrupted (it lacks the hash of the "
                                  f"{count} inputs it analysed); delete it to start over")
            self.expected = expected

    def add(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Hash the next inputs (and their labels)."""
        self.inputs.update(x)
        if y is not None:
            self.labels.update(y)

    def state(self) -> dict[str, Any]:
        """What the checkpoint saves: ``{"rows", "inputs", "labels"}`` (SHA-256 hex digests)."""
        return {"rows": self.inputs.rows, "inputs": self.inputs.hexdigest(),
                "labels": self.labels.hexdigest()}

    def verify(self) -> None:
        """Compare the hashes of the skipped inputs with the saved ones (once)."""
        expected, self.expected = self.expected, None
        if expected is None:
            return
        rows = expected["rows"]
        advice = ("rerun with the same data to resume, or delete the checkpoint (or choose another "
                  "--checkpoint path) to start over")
        if self.inputs.rows < rows:
            raise FimvarError(f"the checkpoint {self.path} holds {rows} inputs but the data has only "
                              f"{self.inputs.rows}; {advice}")
        state = self.state()
        parts = {"inputs": f"the first {rows} inputs", "labels": f"the labels of the first {rows} inputs"}
        for part, what in parts.items():
            if state[part] != expected[part]:
                raise FimvarError(f"the checkpoint {self.path} was written for other data: {what} of this "
                                  f"data differ from those it analysed; {advice}")


class PackedBatches:
    """An iterable of batches whose inputs are argument dicts/tuples, yielding them packed
    (:mod:`fimvar.analysis.packing`); ``(arguments, labels)`` pairs keep their labels, and a dict's
    entry ``labels`` that the forward does not take becomes the batch's labels
    (:func:`~fimvar.analysis.packing.split_labels`)."""

    def __init__(self, data, packing: Packing, model: nn.Module, like: torch.Tensor | None = None) -> None:
        self.data, self.packing, self.like = data, packing, like
        self.dataset = getattr(data, "dataset", None)
        # read now: while fimvar runs, the model's forward takes the packed tensor
        self.keywords, self.arity = forward_keywords(model), positional_arity(model)

    def __iter__(self):
        for item in self.data:
            if takes_arguments(None, item, self.arity):
                arguments, labels = arguments_and_labels(self.keywords, item, self.like)
                packed = self.packing.pack(arguments)
                yield packed if labels is None else (packed, labels)
            elif (isinstance(item, (tuple, list)) and len(item) == 2
                  and takes_arguments(None, item[0], self.arity)):
                arguments, labels = arguments_and_labels(self.keywords, item[0], self.like)
                if labels is not None:
                    raise FimvarError("a batch is an (arguments, labels) pair whose dict has a 'labels' "
                                      "entry too; give the labels once")
                yield self.packing.pack(arguments), numpy_labels(item[1], self.like)
            else:
                raise FimvarError("every batch must give the model's arguments in the same form "
                                  "(a dict of tensors, or the first batch's tuple)")


def arguments_and_labels(keywords: list[str] | None, arguments, like: torch.Tensor | None = None):
    """Argument dicts/tuples with NumPy arrays as tensors (:func:`numpy_inputs`), and the data
    labels a dict carries (:func:`~fimvar.analysis.packing.split_labels` with the forward's
    ``keywords``; ``None`` if none)."""
    if isinstance(arguments, Mapping):
        arguments, labels = split_labels(keywords, {k: numpy_inputs(v, like) for k, v in arguments.items()})
        return arguments, numpy_labels(labels, like)
    return type(arguments)(numpy_inputs(v, like) for v in arguments), None


def pack_arguments(model: nn.Module, data, labels=None, like: torch.Tensor | None = None
                   ) -> tuple[Any, Packing | None, Any]:
    """``data`` with argument dicts/tuples packed into one tensor per batch, the packing
    (``None`` for tensor inputs) and the labels (those of ``labels=``, or of a dict's ``labels``
    entry). An iterable's first batch decides the layout."""
    if isinstance(data, torch.Tensor) or data is None:
        return data, None, labels
    if takes_arguments(model, data):
        arguments, carried = arguments_and_labels(forward_keywords(model), data, like)
        if carried is not None and labels is not None:
            raise FimvarError("the inputs' dict has a 'labels' entry and labels= is given too; give the "
                              "labels once")
        packing = Packing.of(arguments)
        return packing.pack(arguments), packing, labels if carried is None else carried
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        return data, None, labels
    iterator = iter(data)
    try:
        item = next(iterator)
    except StopIteration:
        return data, None, labels
    if iterator is data:  # a one-pass iterator: put the item back in front
        data = itertools.chain([item], iterator)
    first = item[0] if (isinstance(item, (tuple, list)) and len(item) == 2
                        and takes_arguments(model, item[0])) else item
    if not takes_arguments(model, first):
        return data, None, labels
    packing = Packing.of(arguments_and_labels(forward_keywords(model), first, like)[0])
    return PackedBatches(data, packing, model, like), packing, labels


def floating_reference(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating parameter or buffer (its dtype and device), or ``None``."""
    try:
        return model_reference(model)
    except FimvarError:
        return None


def data_length(data) -> int | None:
    """Number of inputs in ``data`` when it can be known without iterating."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


def data_blocks(data, labels, block: int, skip: int, consumed: ConsumedData | None = None,
                like: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Blocks of ``block`` inputs of ``data`` after its first ``skip`` inputs, counted from input 0
    (so a resumed run sees the same blocks).

    A tensor is sliced. The batches of an iterable are cut and joined into new blocks (copies), so
    the blocks do not depend on how the iterable is batched; a block ends early only where the
    dtype, the shape of an input, the device or the presence of labels changes, and at the end.
    With ``consumed``, the skipped inputs are hashed and checked (:meth:`ConsumedData.verify`)
    before the first block, and every block is hashed as it is handed out.
    """
    if isinstance(data, torch.Tensor):
        x, y = next(batches(data, labels, like))  # validates labels
        for start in range(skip, x.shape[0], block):
            yield x[start:start + block], (None if y is None else y[start:start + block])
        return
    if consumed is not None and skip == 0:
        consumed.verify()
    seen = 0  # inputs of the iterable read so far, while skipping
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # read but not handed out
    held = 0  # inputs in pending
    layout = None

    def emit(rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        xs, ys, left = [], [], rows
        while left:
            x, y = pending[0]
            n = min(left, x.shape[0])
            xs.append(x[:n])
            ys.append(None if y is None else y[:n])
            if n == x.shape[0]:
                pending.pop(0)
            else:
                pending[0] = (x[n:], None if y is None else y[n:])
            left -= n
        x = torch.cat(xs)
        y = None if ys[0] is None else torch.cat(ys)
        if consumed is not None:
            consumed.add(x, y)
        return x, y

    for x, y in batches(data, labels, like):
        check_batch(x, y)
        if x.shape[0] == 0:
            continue
        if seen < skip:
            n = min(x.shape[0], skip - seen)
            if consumed is not None:
                consumed.add(x[:n], None if y is None else y[:n])
            seen += n
            if seen == skip and consumed is not None:
                consumed.verify()
            if n == x.shape[0]:
                continue
            x, y = x[n:], (None if y is None else y[n:])
        batch_layout = (x.dtype, x.shape[1:], x.device,
                        None if y is None else (y.dtype, y.shape[1:], y.device))
        if held and batch_layout != layout:
            yield emit(held)
            held = 0
        layout = batch_layout
        pending.append((x, y))
        held += x.shape[0]
        while held >= block:
            yield emit(block)
            held -= block
    if held:
        yield emit(held)


def check_batch(x, y) -> None:
    """One clear error for a batch of an iterable that cannot be cut into blocks."""
    if not isinstance(x, torch.Tensor):
        raise FimvarError(f"inputs must be tensors, got {type(x).__name__}")
    if x.dim() == 0:
        raise FimvarError("the data is empty: pass at least one input (first dimension = samples)")
    if y is not None and not (isinstance(y, torch.Tensor) and y.dim() > 0):
        raise FimvarError(f"labels must be tensors with one entry per input, got {type(y).__name__}")
