"""One process of the two-process tests of tests/analysis/test_distributed.py (started by
``torch.multiprocessing.spawn``): joins a gloo process group on 127.0.0.1, runs every distributed
scenario on a catalogue model and saves what it got to ``OUT/rank{r}.pt`` for the test, which
compares it with the single-process computation."""

from __future__ import annotations

import datetime
import os
import traceback
import warnings
from pathlib import Path

import torch

#: the scenarios' data: N = 9 inputs (an uneven split over two processes)
INPUTS = 9
MODEL = "mlp-tanh"
FAMILY = "categorical"


def use_loopback() -> None:
    """Let gloo talk over the loopback interface (the sandbox's host name may not resolve)."""
    if Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def case():
    from cases import make_case

    return make_case(MODEL, FAMILY, inputs=INPUTS)


def audit_tensors(result) -> dict[str, torch.Tensor]:
    """Every tensor of an :class:`~fimvar.AuditResult`, keyed ``estimator/quantity/parameter``."""
    out = {f"fisher/{k}": v for k, v in result.fisher.items()}
    for estimator, entry in result.entries.items():
        for quantity in ("mean", "bias", "variance", "variance_given_inputs", "bias_independent",
                         "unit_variance"):
            for name, value in getattr(entry, quantity).items():
                out[f"{estimator}/{quantity}/{name}"] = torch.as_tensor(value, dtype=torch.float64)
    return out


def full_and_hidden(model, x) -> dict[str, torch.Tensor]:
    """The tensors of the full-matrix and hidden-layer modes (M = 2 draws)."""
    import fimvar

    full = fimvar.analyze_full(model, x, FAMILY, samples=2)
    out = {f"full/{q}": getattr(full, q) for q in ("fisher", "i1", "i2", "v1", "v2", "input_var")}
    out.update({f"full/frobenius/{k}": torch.tensor(v) for k, v in full.frobenius.items()})
    for name, module in fimvar.hidden_fisher(model, x, ["1"], FAMILY, samples=2).items():
        for q in ("fisher_diagonal", "estimate_diagonal", "v1_diagonal", "input_var_diagonal"):
            out[f"hidden/{name}/{q}"] = getattr(module, q)
    return out


def sampled_tensors(result) -> dict[str, torch.Tensor]:
    """Every tensor of a sampled analysis with Î2: the estimates, their noise terms, the spread sums."""
    out = {f"{name}/{q}": getattr(result, q)[name] for q in ("i1", "v1", "between", "i2", "v2", "between_i2")
           for name in result.shapes}
    for prefix, spreads in (("spreads", result.spreads), ("spreads_i2", result.spreads_i2)):
        out.update({f"{prefix}/{k}": getattr(spreads, k)
                    for k in ("label_noise", "label_noise_outer", "pair", "pair_outer")})
        out[f"{prefix}/pairs"] = torch.tensor(float(spreads.pairs))
    return out


def diagonal(result) -> dict:
    from fimvar.report.tensors import tensors_of

    return {"tensors": tensors_of(result), "metadata": dict(result.metadata),
            "num_inputs": result.num_inputs, "group_exact": result.group_exact}


def scenarios(rank: int, world: int, out: Path) -> dict:
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    import fimvar
    from fimvar import FimvarError
    from fimvar.analysis import checkpoint, distributed
    from fimvar.analysis.diagonal import Analysis

    c = case()
    model, x, labels = c.model, c.x, c.labels
    got: dict = {"rank": rank}
    # analyze with bounds and data labels, the default block: contiguous shards of 5 and 4 inputs
    got["analyze"] = diagonal(fimvar.analyze(model, x, FAMILY, samples=2, labels=labels))
    # blocks of 2 inputs, dealt round robin: process 0 has inputs 0-1, 4-5, 8; process 1 2-3, 6-7
    got["analyze_b2"] = diagonal(fimvar.analyze(model, x, FAMILY, samples=2, labels=labels, batch_size=2))
    # a DataLoader (batches of 4, cut into blocks of 2), every process iterating all of it
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batches carry data labels: used, with a warning
        got["analyze_loader"] = diagonal(fimvar.analyze(model, loader, FAMILY, samples=2, batch_size=2))
    # Hutchinson probes of the graph engine (seeded by the global index too), and their spreads
    got["analyze_graph"] = diagonal(fimvar.analyze(model, x, FAMILY, samples=2, engine="graph",
                                                   bounds=False))
    got["fisher"] = fimvar.fisher_diagonal(model, x, FAMILY)
    # the sampled analysis with Î2's probes (sums updated in place; the same blocks of 2 as one
    # process, so the same pairs of inputs for the standard errors)
    sampled = fimvar.analyze_sampled(model, x, FAMILY, samples=2, batch_size=2, i2=True)
    got["sampled"] = sampled_tensors(sampled)
    got["audit"] = audit_tensors(fimvar.audit(model, x, FAMILY, labels=labels, batch_size=3, samples=2))
    got["audit_world_size"] = fimvar.audit(model, x, FAMILY, estimator="exact").world_size
    got["full_and_hidden"] = full_and_hidden(model, x)

    # shards fed by hand: update(…, start=global index) on every process, then merge_ranks
    analysis = Analysis(model, FAMILY, samples=2)
    shard = slice(0, 5) if rank == 0 else slice(5, INPUTS)
    analysis.update(x[shard], labels[shard], start=shard.start)
    analysis.merge_ranks()
    got["manual"] = diagonal(analysis.result())

    # checkpoints: process 0 stops after its first block; process 1 finishes its share
    path = out / "run.ckpt"
    original = Analysis.update
    calls = {"n": 0}

    def stopping(self, x, labels=None, *, start=None):
        if rank == 0 and calls["n"] == 1:
            raise RuntimeError("stopped for the test")
        calls["n"] += 1
        return original(self, x, labels, start=start)

    Analysis.update = stopping
    try:
        fimvar.analyze(model, x, FAMILY, samples=2, labels=labels, batch_size=2, checkpoint=path,
                       checkpoint_interval=0)
    except (RuntimeError, FimvarError) as error:
        got["interrupted"] = f"{type(error).__name__}: {error}"
    finally:
        Analysis.update = original
    dist.barrier()
    got["files"] = sorted(p.name for p in out.iterdir() if p.name.startswith("run.ckpt"))
    got["done_before_resume"] = {p.name: checkpoint.load(p)[1]["count"]
                                 for p in out.iterdir() if p.name.startswith("run.ckpt.rank")}
    dist.barrier()  # both have read the files before process 0 resumes (and rewrites its own)
    got["resumed"] = diagonal(fimvar.analyze(model, x, FAMILY, samples=2, labels=labels, batch_size=2,
                                             checkpoint=path, checkpoint_interval=0))
    # resuming a finished run again: nothing left to do, the same result
    got["resumed_again"] = diagonal(fimvar.analyze(model, x, FAMILY, samples=2, labels=labels,
                                                   batch_size=2, checkpoint=path))
    try:  # another block size is another sharding
        fimvar.analyze(model, x, FAMILY, samples=2, labels=labels, batch_size=3, checkpoint=path)
    except FimvarError as error:
        got["other_block"] = str(error)

    # refused: a DistributedSampler, and different data on the two processes
    sampler = DistributedSampler(TensorDataset(x), num_replicas=world, rank=rank, shuffle=False)
    try:
        fimvar.analyze(model, DataLoader(TensorDataset(x), batch_size=4, sampler=sampler), FAMILY)
    except FimvarError as error:
        got["sampler"] = str(error)
    other = x.clone()
    if rank == 1:
        other[-1] += 1.0
    try:
        fimvar.analyze(model, other, FAMILY, bounds=False)
    except FimvarError as error:
        got["different_data"] = str(error)
    got["world_size"] = distributed.world_size()
    return got


def main(rank: int, world: int, port: int, out: str) -> None:
    """The entry point of one spawned process."""
    import torch.distributed as dist

    use_loopback()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        got = scenarios(rank, world, Path(out))
    except Exception:
        (Path(out) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    torch.save(got, Path(out) / f"rank{rank}.pt")
