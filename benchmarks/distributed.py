"""``fimvar.analyze`` over W processes (``torch.distributed``, docs/theory.md §16) against one
process: wall time of each, the speed-up, and the largest relative difference of every result
tensor (the merge is exact up to summation order: ~1e-16 expected, 1e-12 required).

    python benchmarks/distributed.py --processes 2 --device cpu --threads 1   # gloo, CPU processes
    python benchmarks/distributed.py --processes 8 --device cuda              # NCCL, one GPU each

The W processes are spawned here (``torch.multiprocessing.spawn``, a free port on 127.0.0.1);
process ``r`` uses ``cuda:r`` with ``--device cuda``. The one-process reference runs afterwards in
this process, on ``cpu`` or ``cuda:0``. Workload: a seeded MLP ``--widths`` (tanh), ``--inputs``
Gaussian inputs, ``--samples`` label draws, categorical, bounds off.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import fimvar
from fimvar.report.tensors import tensors_of


def workload(args, device: torch.device):
    torch.manual_seed(0)
    widths = [int(w) for w in args.widths.split(",")]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(device)
    x = torch.randn(args.inputs, widths[0], generator=torch.Generator().manual_seed(1)).to(device)
    return model, x


def analyse(args, device: torch.device):
    model, x = workload(args, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fimvar.analyze(model, x, "categorical", samples=args.samples, bounds=False,
                            batch_size=args.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def process(rank: int, world: int, port: int, args, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))
    try:
        dist.barrier()
        result, seconds = analyse(args, device)
        if rank == 0:
            torch.save({"tensors": tensors_of(result), "seconds": seconds,
                        "world_size": result.metadata["world_size"]}, Path(out) / "distributed.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--widths", default="784,256,256,10")
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="the block dealt to one process")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.processes:
        parser.error(f"--device cuda needs one GPU per process: {torch.cuda.device_count()} found")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        torch.multiprocessing.spawn(process, args=(args.processes, port, args, out), nprocs=args.processes)
        shared = torch.load(Path(out) / "distributed.pt", weights_only=False)
    torch.set_num_threads(args.threads)
    single, seconds = analyse(args, torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu"))
    want = tensors_of(single)
    worst = max(float((shared["tensors"][k] - v).abs().max()) / max(float(v.abs().max()), 1e-300)
                for k, v in want.items())
    print(f"{args.widths} MLP, N = {args.inputs}, M = {args.samples}, device {args.device}, "
          f"{args.threads} thread(s) per process")
    print(f"one process: {seconds:.2f} s; {shared['world_size']} processes: {shared['seconds']:.2f} s "
          f"(speed-up {seconds / shared['seconds']:.2f}×); largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
