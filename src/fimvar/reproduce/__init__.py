"""Reproductions of Soen & Sun [A] (NeurIPS 2021) and [B] (NeurIPS 2024) with fimvar's public API.

``python -m fimvar.reproduce NAME [--quick] [--out DIR] [--seeds K] [--threads T]`` (or
``fimvar reproduce``)
runs one experiment (or ``all``), writes its figures (PNG) and ``results.json`` (settings,
numbers, and the list of claims ``claim / paper / ours / holds``) under ``--out``, default
``reproduction/<name>/``, and prints the claim table.

Experiments:

- ``natural-gradient``: [B] Fig. 1, natural gradient with diagonal Î1 vs Î2 on two toys.
- ``mnist``: [B] Fig. 2, per-layer Fisher, estimator std and Thm 4.1 bounds on MNIST over training.
- ``mnist-logsigmoid``: [B] App. F, the same with a 5-layer log-sigmoid MLP and several seeds.
- ``frobenius``: [A], Frobenius bounds of Cov(Î1), Cov(Î2) and the weight-norm bound vs weight decay.
- ``estimators``: what EWC, Sophia's GNB, the MC and empirical Fishers estimate on two MLPs
  (bias and error against the Fisher; docs/estimators.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fimvar.errors import FimvarError
from fimvar.report.files import writable_directory
from fimvar.reproduce.common import Claim, Outcome, Stopwatch, write_json


def _natural_gradient(out: Path, quick: bool, seeds: int | None, log) -> Outcome:
    from fimvar.reproduce import natural_gradient

    return natural_gradient.run(out, quick=quick, seeds=seeds, log=log)


def _mnist(out: Path, quick: bool, seeds: int | None, log) -> Outcome:
    from fimvar.reproduce import mnist_layers

    return mnist_layers.run(out, quick=quick, seeds=seeds, log=log, variant="sigmoid")


def _mnist_logsigmoid(out: Path, quick: bool, seeds: int | None, log) -> Outcome:
    from fimvar.reproduce import mnist_layers

    return mnist_layers.run(out, quick=quick, seeds=seeds, log=log, variant="logsigmoid")


def _frobenius(out: Path, quick: bool, seeds: int | None, log) -> Outcome:
    from fimvar.reproduce import frobenius

    return frobenius.run(out, quick=quick, seeds=seeds, log=log)


def _estimators(out: Path, quick: bool, seeds: int | None, log) -> Outcome:
    from fimvar.reproduce import estimators

    return estimators.run(out, quick=quick, seeds=seeds, log=log)


#: experiment name → runner ``(out, quick, seeds, log) -> Outcome``
EXPERIMENTS: dict[str, Callable[..., Outcome]] = {
    "natural-gradient": _natural_gradient,
    "mnist": _mnist,
    "mnist-logsigmoid": _mnist_logsigmoid,
    "frobenius": _frobenius,
    "estimators": _estimators,
}


def run_experiment(name: str, out: Path | str | None = None, quick: bool = False,
                   seeds: int | None = None, log=print) -> Outcome:
    """Run one experiment, write ``results.json`` and its figures under ``out``.

    Raises:
        KeyError: for an unknown experiment.
        FimvarError: when ``out`` cannot be created or written (checked before the run).
    """
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose among {', '.join(EXPERIMENTS)}")
    out = writable_directory(Path(out) if out is not None else Path("reproduction") / name)
    with Stopwatch() as watch:
        outcome = EXPERIMENTS[name](out, quick, seeds, log)
    outcome.seconds = watch.seconds
    write_json(out / "results.json", outcome.to_dict())
    return outcome


def claim_table(claims: list[Claim]) -> str:
    """Plain-text table of claims."""
    lines = []
    for c in claims:
        lines.append(f"[{'holds' if c.holds else 'FAILS'}] {c.claim}")
        lines.append(f"    paper: {c.paper}")
        lines.append(f"    ours:  {c.ours}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m fimvar.reproduce NAME [--quick] [--out DIR] [--seeds K]``."""
    parser = argparse.ArgumentParser(
        prog="fimvar reproduce",
        description="Reproduce the experiments of Soen & Sun [A] (2021) and [B] (2024).",
    )
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment to run")
    parser.add_argument("--quick", action="store_true",
                        help="small, fast version (seconds) that still checks the qualitative claims")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default reproduction/NAME; with 'all', one "
                             "subfolder per experiment)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (repeats)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads while running (default 1: these small workloads "
                             "run fastest single-threaded, and far faster on a shared CPU)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    if args.out is None:
        outs = {name: Path("reproduction") / name for name in names}
    else:
        outs = {name: args.out / name if args.name == "all" else args.out for name in names}
    try:  # every output folder before the first run: a run takes minutes, the check none
        for out in outs.values():
            writable_directory(out)
    except FimvarError as error:
        print(f"fimvar: error: {error}", file=sys.stderr)
        return 2
    failed = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for name in names:
            out = outs[name]
            print(f"== {name}{' (quick)' if args.quick else ''} → {out}", flush=True)
            outcome = run_experiment(name, out, args.quick, args.seeds,
                                     log=lambda m: print(m, flush=True))
            print(claim_table(outcome.claims))
            print(f"   {outcome.seconds:.1f} s; figures: {', '.join(outcome.figures)}", flush=True)
            failed += sum(not c.holds for c in outcome.claims)
    finally:
        torch.set_num_threads(threads)
    print(f"{failed} claim(s) not reproduced" if failed else "all claims reproduced")
    return 0


__all__ = ["EXPERIMENTS", "Claim", "Outcome", "claim_table", "main", "run_experiment"]
