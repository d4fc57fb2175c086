"""Many processes: ``torch.distributed`` data parallelism for every streaming analysis
(docs/theory.md §16).

Inside an initialised process group of ``W > 1`` processes (``torchrun``, or
``torch.distributed.init_process_group`` by the caller), every rank is given the *same* data and
:meth:`~fimvar.analysis.driver.StreamingAnalysis.run` takes its shard itself: the data is cut into
blocks counted from input 0 (:func:`~fimvar.analysis.driver.data_blocks`) and block ``b`` goes to
rank ``b mod W``. Each rank analyses its blocks with the label draws (and probes) of the inputs'
*global* indices, so the union of the ranks' draws is exactly the single process's. At the end the
ranks' float64 accumulators are merged (:func:`merge_accumulators`): plain sums all-reduced (SUM),
centred groups gathered and merged pairwise in rank order with the same updates as the chunks
(Chan et al.; Pébay), so every rank holds the single-process sums up to summation order.

Checkpoints are per rank: ``PATH.rank{r}-of-{W}`` (:func:`rank_path`); a run refuses files of
another number of processes (:func:`check_world_size`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from fimvar.analysis.accumulator import Accumulator, Key
from fimvar.errors import FimvarError


def process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the default process group when ``torch.distributed`` is
    initialised with more than one process, else ``None`` (a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def world_size() -> int:
    """The number of processes of the default process group (1 without one)."""
    group = process_group()
    return 1 if group is None else group[1]


def default_block(total: int | None, world: int, block: int) -> int:
    """The block of a distributed run: ``block``, at most ``⌈N/W⌉`` when the number of inputs
    ``N`` is known, so that every rank gets inputs (contiguous shards when ``N ≤ W·block``)."""
    if total is None or total == 0:
        return block
    return max(1, min(block, math.ceil(total / world)))


def check_sampler(data) -> None:
    """Refuse a ``DataLoader`` with a ``DistributedSampler``: fimvar shards the data itself and
    needs every rank to read all of it (to give each input its global index)."""
    from torch.utils.data import DistributedSampler

    batch_sampler = getattr(data, "batch_sampler", None)
    samplers = [getattr(data, "sampler", None), getattr(batch_sampler, "sampler", None)]
    if any(isinstance(s, DistributedSampler) for s in samplers):
        raise FimvarError(
            "the DataLoader has a DistributedSampler, but fimvar shards the data itself: give every "
            "process the same DataLoader without it (e.g. DataLoader(dataset, batch_size=…)); each "
            "process then analyses its share of the blocks (docs/theory.md §16)")


# ---------------------------------------------------------------------- checkpoints
_RANK_FILE = r"\.rank(\d+)-of-(\d+)"


def rank_path(path: str | Path, rank: int, world: int) -> Path:
    """The checkpoint file of one rank: ``PATH.rank{rank}-of-{world}`` next to ``PATH``."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{rank}-of-{world}")


def rank_files(path: str | Path) -> dict[int, list[Path]]:
    """The per-rank checkpoint files of ``PATH`` that exist, by the number of processes that wrote
    them."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(path.name) + _RANK_FILE)
    found: dict[int, list[Path]] = {}
    try:
        candidates = sorted(directory.iterdir())
    except OSError:
        return found
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_file():
            found.setdefault(int(match.group(2)), []).append(candidate)
    return found


def check_world_size(path: str | Path, world: int) -> None:
    """Refuse to resume the checkpoint ``path`` with ``world`` processes when it was written by
    another number of processes (per-rank files of another ``W``, or the single file of one
    process)."""
    path = Path(path)
    advice = "delete those files (or choose another --checkpoint path) to start over"
    others = {w: files for w, files in rank_files(path).items() if w != world}
    if others:
        w = min(others)
        names = ", ".join(f.name for f in others[w][:3])
        raise FimvarError(
            f"the checkpoint {path} was written by {w} processes ({names}); this run has {world}: "
            f"resume it with {w} processes (torchrun --nproc_per_node {w}), or {advice}")
    if world > 1 and path.exists():
        raise FimvarError(
            f"the checkpoint {path} was written by one process; this run has {world}: resume it "
            f"with one process, or delete it (or choose another --checkpoint path) to start over")


# ---------------------------------------------------------------------- collectives
def all_gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (small, picklable metadata)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def config_digest(config: dict[str, Any]) -> str:
    """A short hash of an analysis' configuration (to check that every rank runs the same one)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def check_ranks(error: BaseException | None, state: dict[str, Any]) -> None:
    """Exchange every rank's outcome and ``state`` after its share of a run, and raise on every
    rank when one failed or when the ranks were given different models, arguments or data.

    A rank that failed re-raises its own error; the others raise a :class:`FimvarError` naming
    the failed rank, so that no rank waits forever in the merge."""
    import torch.distributed as dist

    rank = dist.get_rank()
    message = None if error is None else " ".join(f"{type(error).__name__}: {error}".split())
    gathered = all_gather({"error": message, **state})
    if error is not None:
        raise error
    failed = [(r, g["error"]) for r, g in enumerate(gathered) if g["error"] is not None]
    if failed:
        r, text = failed[0]
        raise FimvarError(f"process {r} of {len(gathered)} failed ({text}); this process ({rank}) stops too")
    for field, what in (("config", "models or arguments (analysis, family, draws, seed, weights…)"),
                        ("data", "data (every process must be given the same inputs, labels and order)")):
        values = [g.get(field) for g in gathered]
        if any(v != values[0] for v in values):
            odd = next(r for r, v in enumerate(values) if v != values[0])
            raise FimvarError(f"the {len(gathered)} processes were given different {what}: process {odd} "
                              "differs from process 0; fimvar shards the data itself, so give every process "
                              "the same model, arguments and data (docs/theory.md §16)")


def merge_accumulators(accumulator: Accumulator, device: torch.device) -> Accumulator:
    """Every rank's accumulator merged into one (collective: call on every rank; each gets the same
    result): plain sums all-reduced (SUM) in float64, centred groups gathered and merged pairwise in
    rank order (:meth:`Accumulator.merge`), ranks without inputs left out.

    Raises:
        FimvarError: ranks with inputs hold different sums (another model or other arguments).
    """
    import torch.distributed as dist

    keys = list(accumulator.sums)
    mine = {"count": accumulator.count,
            "keys": [[k.scope, k.owner, k.quantity, k.bound] for k in keys],
            "shapes": [list(accumulator.sums[k].shape) for k in keys],
            "centred": accumulator.centred_state()}
    gathered = all_gather(mine)
    ranks = [r for r, g in enumerate(gathered) if g["count"] > 0]
    merged = Accumulator()
    if not ranks:
        return merged
    first = gathered[ranks[0]]
    for r in ranks[1:]:
        if sorted(map(tuple, gathered[r]["keys"])) != sorted(map(tuple, first["keys"])):
            raise FimvarError(f"processes {ranks[0]} and {r} accumulated different sums; give every process "
                              "the same model and arguments")
    order = [Key(*k) for k in first["keys"]]
    shapes = {k: torch.Size(s) for k, s in zip(order, first["shapes"], strict=True)}
    centred = [tuple(order[i] for i in group) for group in first["centred"]]
    grouped = [k for group in centred for k in group]
    plain = [k for k in order if k not in set(grouped)]

    def flat(selected: list[Key]) -> torch.Tensor:
        if accumulator.count == 0:
            return torch.zeros(sum(shapes[k].numel() for k in selected), dtype=torch.float64, device=device)
        parts = [accumulator.sums[k].to(device=device, dtype=torch.float64).reshape(-1) for k in selected]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)

    def unflat(vector: torch.Tensor, selected: list[Key]) -> dict[Key, torch.Tensor]:
        out, start = {}, 0
        for k in selected:
            size = shapes[k].numel()
            out[k] = vector[start:start + size].reshape(shapes[k]).clone()
            start += size
        return out

    total = flat(plain)
    if total.numel():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    sums = unflat(total, plain)
    if grouped:
        local = flat(grouped)
        pieces = [torch.empty_like(local) for _ in gathered]
        dist.all_gather(pieces, local)
        running = None
        for r in ranks:  # rank order
            part = Accumulator()
            part.count, part.centred = gathered[r]["count"], list(centred)
            part.sums = unflat(pieces[r], grouped)
            running = part if running is None else running.merge(part)
        sums.update(running.sums)
    merged.sums = {k: sums[k] for k in order}
    merged.centred = centred
    merged.count = sum(g["count"] for g in gathered)
    return merged
