"""Many processes (docs/theory.md §16): two processes of a gloo process group on 127.0.0.1
(``torch.multiprocessing.spawn``; tests/distributed_worker.py) analyse shards of the same data,
and every result — analyze with bounds and M = 2 draws, with blocks dealt round robin, from a
DataLoader, with Hutchinson probes; fisher_diagonal; the audit; analyze_full and hidden_fisher;
shards fed by hand — equals the independent single-process computation of this process to 1e-12
relative, on both processes, with an uneven split (9 inputs). Checkpoints are per process and
resume (bit for bit); another number of processes, another block size, a DistributedSampler and
different data are refused. The command line runs under
``python -m torch.distributed.run --nproc_per_node 2``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import pytest
import torch
import torch.distributed as dist
from checks import LARGEST_ERRORS, relative_error
from safetensors.torch import load_file

import fimvar
from fimvar import FimvarError
from fimvar.analysis import distributed
from fimvar.app.cli import main
from fimvar.report.tensors import tensors_of

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available in this "
                                       "PyTorch build")
TOLERANCE = 1e-12


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], label: str) -> None:
    """Every tensor within 1e-12 of the single-process one, relative to its largest entry (the
    largest difference is printed at the end of the run)."""
    assert got.keys() == want.keys(), label
    for key in want:
        assert got[key].shape == want[key].shape, f"{label} {key}"
        error = relative_error(got[key], want[key])
        LARGEST_ERRORS[f"two processes: {label}"] = max(LARGEST_ERRORS.get(f"two processes: {label}", 0.0),
                                                        error)
        assert error <= TOLERANCE, f"{label} {key}: relative difference {error:.2e}"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two processes got (the spawn runs once for the module)."""
    out = tmp_path_factory.mktemp("distributed")
    started = time.monotonic()
    try:
        torch.multiprocessing.spawn(worker.main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    except Exception as error:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("rank*.error")))
        if "gloo" in errors.lower() and "connect" in errors.lower():
            pytest.skip(f"gloo cannot connect two processes on 127.0.0.1 here: {errors.splitlines()[-1]}")
        raise AssertionError(f"a process failed:\n{errors or error}") from error
    print(f"\ntwo processes: {time.monotonic() - started:.1f} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


@pytest.fixture(scope="module")
def single():
    """The single-process computations, in this process (no process group)."""
    c = worker.case()
    model, x, labels = c.model, c.x, c.labels
    return {
        "analyze": fimvar.analyze(model, x, "categorical", samples=2, labels=labels),
        "graph": fimvar.analyze(model, x, "categorical", samples=2, engine="graph", bounds=False),
        "fisher": fimvar.fisher_diagonal(model, x, "categorical"),
        "sampled": worker.sampled_tensors(fimvar.analyze_sampled(model, x, "categorical", samples=2,
                                                                 batch_size=2, i2=True)),
        "audit": fimvar.audit(model, x, "categorical", labels=labels, batch_size=3, samples=2),
        "full_and_hidden": worker.full_and_hidden(model, x),
        "case": c,
    }


@pytest.mark.parametrize("scenario", ["analyze", "analyze_b2", "analyze_loader", "manual", "resumed"])
def test_analyze_equals_one_process(ranks, single, scenario):
    got, _ = ranks
    reference = single["analyze"]
    want = tensors_of(reference)
    for rank in range(2):
        result = got[rank][scenario]
        assert result["num_inputs"] == worker.INPUTS
        assert result["metadata"]["world_size"] == 2
        assert reference.metadata["world_size"] == 1
        assert_close(result["tensors"], want, f"analyze ({scenario})")
        for quantity, values in reference.group_exact.items():
            for group, value in values.items():
                assert relative_error(torch.tensor(result["group_exact"][quantity][group]),
                                      torch.tensor(value)) <= TOLERANCE
    # with data labels, bounds on, M = 2: the result has everything
    assert any(k.endswith("/empirical") for k in want) and any(k.startswith("0.weight/bound:") for k in want)


def test_every_process_gets_the_same_result(ranks):
    got, _ = ranks
    for scenario in ("analyze", "analyze_b2", "analyze_graph", "resumed"):
        first, second = got[0][scenario]["tensors"], got[1][scenario]["tensors"]
        assert all(torch.equal(first[k], second[k]) for k in first), scenario


def test_probes_the_exact_fisher_the_audit_and_the_other_modes(ranks, single):
    got, _ = ranks
    assert_close(got[0]["analyze_graph"]["tensors"], tensors_of(single["graph"]), "analyze (graph, probes)")
    for rank in range(2):
        assert_close(got[rank]["fisher"], single["fisher"], "fisher_diagonal")
        assert_close(got[rank]["sampled"], single["sampled"], "analyze_sampled with Î2")
        want = worker.audit_tensors(single["audit"])
        assert any(k.startswith("ewc/") for k in want)  # the fourth-order centred moments (Pébay)
        assert_close(got[rank]["audit"], want, "audit")
        assert got[rank]["audit_world_size"] == 2 and got[rank]["world_size"] == 2
        assert_close(got[rank]["full_and_hidden"], single["full_and_hidden"], "analyze_full, hidden_fisher")
    assert single["audit"].world_size == 1


def test_checkpoints_per_process_resume(ranks, tmp_path):
    got, out = ranks
    for rank in range(2):
        assert got[rank]["files"] == ["run.ckpt.rank0-of-2", "run.ckpt.rank1-of-2"]
        # process 0 stopped after its first block of 2; process 1 had done its 4 inputs
        assert got[rank]["done_before_resume"] == {"run.ckpt.rank0-of-2": 2, "run.ckpt.rank1-of-2": 4}
        resumed, uninterrupted = got[rank]["resumed"]["tensors"], got[rank]["analyze_b2"]["tensors"]
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # bit for bit
        again = got[rank]["resumed_again"]["tensors"]
        assert all(torch.equal(again[k], uninterrupted[k]) for k in again)
        assert "different block" in got[rank]["other_block"]
    assert got[0]["interrupted"] == "RuntimeError: stopped for the test"
    assert got[1]["interrupted"].startswith("FimvarError: process 0 of 2 failed (RuntimeError: stopped")
    # one process cannot resume the two processes' files, nor two processes one process's file
    c = worker.case()
    with pytest.raises(FimvarError, match="written by 2 processes.*torchrun --nproc_per_node 2"):
        fimvar.analyze(c.model, c.x, "categorical", samples=2, labels=c.labels, batch_size=2,
                       checkpoint=out / "run.ckpt")
    (tmp_path / "one.ckpt").write_bytes(b"")
    with pytest.raises(FimvarError, match="written by one process"):
        distributed.check_world_size(tmp_path / "one.ckpt", 2)
    distributed.check_world_size(tmp_path / "other.ckpt", 2)  # nothing there: fine


def test_refused(ranks):
    got, _ = ranks
    for rank in range(2):
        assert "DistributedSampler" in got[rank]["sampler"]
        assert "different data" in got[rank]["different_data"]


def test_merge_of_two_accumulators_is_exact():
    """Two processes' accumulators (5 and 4 inputs, fed in chunks of 2) merged equal the sums and
    central moments of all 9 values computed directly in two passes, far from 0 (no cancellation)."""
    from fimvar.analysis.accumulator import Accumulator, parameter
    from fimvar.estimators.practical import central_moments

    values = 1e3 + torch.randn(9, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, chan = parameter("w", "squares"), (parameter("w", "total"), parameter("w", "m2"))
    pebay = tuple(parameter("w", q) for q in ("g", "p2", "p3", "p4"))

    def accumulate(rows: torch.Tensor) -> Accumulator:
        accumulator = Accumulator()
        for chunk in rows.split(2):
            accumulator.add(plain, (chunk**2).sum(0))
            mean = chunk.mean(0)
            accumulator.add_moments(*chan, len(chunk), chunk.sum(0), ((chunk - mean) ** 2).sum(0))
            accumulator.add_central_moments(pebay, len(chunk), central_moments(chunk))
            accumulator.finish_chunk(len(chunk))
        return accumulator

    first = accumulate(values[:5])
    restored = Accumulator.from_state_dict(*first.state_dict(), first.count, centred=first.centred_state())
    assert restored.centred == first.centred == [chan, pebay]
    merged = restored.merge(accumulate(values[5:]))
    centred = values - values.mean(0)
    assert merged.count == 9
    want = {plain: (values**2).sum(0), chan[0]: values.sum(0), chan[1]: (centred**2).sum(0),
            pebay[0]: values.sum(0), pebay[1]: (centred**2).sum(0), pebay[2]: (centred**3).sum(0),
            pebay[3]: (centred**4).sum(0)}
    for key, value in want.items():
        scale = float((centred.abs() ** 3).sum(0).max()) if key == pebay[2] else 0.0  # Σ c³ may be ~0
        assert relative_error(merged.sums[key], value, floor=scale) <= TOLERANCE, key


def test_rank_paths_and_blocks():
    assert distributed.rank_path("/a/run.ckpt", 1, 4) == Path("/a/run.ckpt.rank1-of-4")
    assert distributed.default_block(9, 2, 256) == 5
    assert distributed.default_block(9, 2, 2) == 2
    assert distributed.default_block(None, 2, 256) == 256
    assert distributed.process_group() is None and distributed.world_size() == 1


def test_command_line_under_torchrun(tmp_path):
    """``python -m torch.distributed.run --nproc_per_node 2 -m fimvar analyze …`` writes the report
    once (process 0), with world_size 2, per-process checkpoints, and the single-process tensors."""
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError as error:
        pytest.skip(f"torch.distributed.run is not available: {error}")
    options = ["--model", "fimvar.models:digits_mlp", "--data", "digits", "--inputs", "21", "--family",
               "categorical", "--labels", "--samples", "2", "--device", "cpu", "--threads", "1",
               "--no-figures", "--no-html", "--batch-size", "4"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(Path(fimvar.__file__).parents[1]),
                                                                  os.environ.get("PYTHONPATH", "")] if p),
               OMP_NUM_THREADS="1")
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "fimvar", "analyze", *options,
               "--out", str(tmp_path / "two"), "--checkpoint", str(tmp_path / "run.ckpt")]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    print(f"\ntorchrun, two processes: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote summary.json") == 1  # only process 0 reports
    files = sorted(p.name for p in tmp_path.glob("run.ckpt*"))
    assert files == ["run.ckpt.rank0-of-2", "run.ckpt.rank1-of-2"]
    assert main(["analyze", *options, "--out", str(tmp_path / "one"), "--quiet"]) == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["run"]["world_size"] == 2 and one["run"]["world_size"] == 1
    assert two["run"]["inputs"] == one["run"]["inputs"] == 21
    assert_close(load_file(str(tmp_path / "two" / "fisher.safetensors")),
                 load_file(str(tmp_path / "one" / "fisher.safetensors")), "command line")
