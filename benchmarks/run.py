"""fimvar's benchmark suite: every method side by side, in one process, as ratios to one plain
gradient of the same model and batch (median of repeats), with peak memory.

    python benchmarks/run.py --update BENCHMARKS.md  # everything; results into BENCHMARKS.md
    python benchmarks/run.py --workloads mlp cnn     # some workloads only
    python benchmarks/run.py --no-scaling --repeats 5 --output results.md

A method that passes the time or memory limit is reported as ``timeout`` / ``oom`` (see
:mod:`measure`). Results are printed and written as markdown (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from measure import Measurement, measure
from methods import METHODS, SCALING, available, fimvar_fisher, format_bytes, gradient, ratio
from workloads import WORKLOADS, Workload, reference, scaling

import fimvar

COMMAND = "python benchmarks/run.py"
#: markers of the generated part of BENCHMARKS.md (``--update``)
START, END = "<!-- results:start -->", "<!-- results:end -->"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_gradient(workload: Workload, repeats: int) -> Measurement:
    return measure(gradient(workload), device=workload.x.device, repeats=max(repeats, 5),
                   time_limit=60.0)


def run_method(method, workload: Workload, args) -> Measurement:
    try:
        run = method.setup(workload)
    except Exception as error:  # a peer that cannot handle this model
        return Measurement(None, None, f"error: {type(error).__name__}: {str(error)[:100]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure(run, device=workload.x.device, repeats=args.repeats,
                       time_limit=args.time_limit, memory_limit=int(args.memory_limit * 2**30))


def agreement(workload: Workload) -> str:
    """fimvar's exact Fisher against BackPACK's DiagGGNExact (largest relative difference)."""
    if available("backpack") is not None:
        return ""
    from methods import backpack_method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = fimvar_fisher(workload)()
        extended = dict(backpack_method("DiagGGNExact", sampled=False)(workload)().named_parameters())
    scale = 2.0 if workload.family == "gaussian" else 1.0  # MSELoss(sum) = 2 × Gaussian NLL
    worst = 0.0
    for name, value in ours.items():
        theirs = getattr(extended[name], "diag_ggn_exact", None)
        if theirs is None:
            return ""
        theirs = theirs.double() / (scale * workload.x.shape[0])
        worst = max(worst, float((value - theirs).abs().max() / theirs.abs().max()))
    return f"fimvar's exact Fisher vs BackPACK DiagGGNExact: largest relative difference {worst:.1e}"


def workload_table(workload: Workload, args, log) -> tuple[str, dict]:
    log(f"\n## {workload.name}: {workload.description}, N = {workload.x.shape[0]}")
    before = time_gradient(workload, args.repeats)
    results: list[tuple] = []  # (method, measurement or None, note)
    for method in METHODS:
        if args.methods and not any(m in method.name for m in args.methods):
            continue
        note = available(method.peer)
        if note is not None:
            results.append((method, None, note))
            continue
        started = time.perf_counter()
        result = run_method(method, workload, args)
        log(f"  {method.name:36s} {result.status:10s} "
            f"{'' if result.seconds is None else f'{result.seconds:.3f} s'} "
            f"({time.perf_counter() - started:.0f} s wall)")
        results.append((method, result, ""))
    after = time_gradient(workload, args.repeats)  # the machine may have drifted meanwhile
    unit = min(t for t in (before.seconds, after.seconds) if t is not None)
    lines = [f"### {workload.name} — {workload.description}, N = {workload.x.shape[0]}\n",
             f"One gradient: {unit * 1e3:.1f} ms (the smaller of the medians timed before and "
             "after the methods).\n",
             "| method | computes | time (s) | × gradient | peak extra memory | status |",
             "|---|---|---|---|---|---|"]
    summary: dict = {"gradient": unit}
    for method, result, note in results:
        if result is None:
            lines.append(f"| {method.name} | {method.quantity} | — | — | — | skipped: {note} |")
            continue
        seconds = "—" if result.seconds is None else f"{result.seconds:.3f}"
        lines.append(f"| {method.name} | {method.quantity} | {seconds} | "
                     f"{ratio(result.seconds, unit)} | {format_bytes(result.peak_bytes)} | "
                     f"{result.status} |")
        summary[method.name] = result
    text = "\n".join(lines) + "\n"
    check = agreement(workload) if not args.methods else ""
    if check:
        text += f"\n{check}.\n"
        log("  " + check)
    return text, summary


def scaling_tables(device: torch.device, args, log) -> str:
    out = ["## Scaling\n",
           "Ratios to one gradient of the same model and batch; memory is the peak above the "
           "process's resident size before the call.\n"]
    for title, rows in scaling(device).items():
        log(f"\n## scaling: {title}")
        names = [m for m in METHODS if m.name in SCALING and available(m.peer) is None]
        head = "| " + title + " | gradient | " + " | ".join(
            f"{m.name} (× / memory)" for m in names) + " |"
        lines = [f"### {title}\n", head, "|" + "---|" * (len(names) + 2)]
        for label, workload in rows:
            grad = time_gradient(workload, args.repeats)
            cells = [label, f"{grad.seconds * 1e3:.1f} ms"]
            for method in names:
                result = run_method(method, workload, args)
                log(f"  {label:10s} {method.name:36s} {result.status:8s} {result.seconds}")
                if result.status != "ok":
                    cells.append(result.status)
                else:
                    cells.append(f"{ratio(result.seconds, grad.seconds)} / "
                                 f"{format_bytes(result.peak_bytes)}")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def summary_table(summaries: dict[str, dict]) -> str:
    columns = ["fimvar structured: full analysis", "fimvar structured: exact Fisher",
               "BackPACK DiagGGNExact", "BackPACK DiagHessian", "NNGeometry FIM PMatDiag",
               "torch.func per-sample", "fimvar autodiff: full analysis"]
    short = ["fimvar full analysis", "fimvar exact Fisher", "BackPACK DiagGGNExact",
             "BackPACK DiagHessian (Î2)", "NNGeometry FIM diag", "torch.func per-sample Fisher",
             "fimvar autodiff full"]
    lines = ["| workload | gradient | " + " | ".join(short) + " | fimvar full: peak memory |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for name, summary in summaries.items():
        unit = summary["gradient"]
        cells = [name, f"{unit * 1e3:.1f} ms"]
        for column in columns:
            result = summary.get(column)
            if result is None:
                cells.append("—")
            elif result.status != "ok":
                cells.append(result.status)
            else:
                cells.append(ratio(result.seconds, unit))
        full = summary.get(columns[0])
        cells.append(format_bytes(full.peak_bytes if full else None))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--scaling", dest="scaling", action="store_true", default=True,
                        help="also run the scaling tables (default)")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only methods whose name contains one of these strings")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per method (median)")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds per method and workload before it counts as a timeout")
    parser.add_argument("--memory-limit", type=float, default=8.0,
                        help="GiB of extra memory per method before it counts as out of memory")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", default="benchmarks/results.md", help="markdown file to write")
    parser.add_argument("--update", default=None,
                        help="also replace the part of this markdown file between "
                             f"'{START}' and '{END}' with the results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    head = [
        "# fimvar benchmark results\n",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "") + "  ",
        f"Software: python {platform.python_version()}, torch {torch.__version__}, "
        f"fimvar {fimvar.__version__}  ",
        f"Repeats: median of {args.repeats}; limits: {args.time_limit:.0f} s and "
        f"{args.memory_limit:g} GiB per method.\n",
    ]
    sections, summaries = [], {}
    for name in args.workloads:
        text, summary = workload_table(reference(name, device), args, log)
        sections.append(text)
        summaries[name] = summary
    body = ["## Summary (× one gradient)\n", summary_table(summaries), "## Workloads\n", *sections]
    if args.scaling:
        body.append(scaling_tables(device, args, log))
    report = "\n".join(head + body)
    print(report)
    if args.output:
        Path(args.output).write_text(report)
        log(f"\nwritten to {args.output}")
    if args.update:
        update(Path(args.update), report)
        log(f"updated {args.update}")


def update(path: Path, report: str) -> None:
    """Replace the generated part of ``path`` (between :data:`START` and :data:`END`)."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no '{START}' … '{END}' section to update")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    generated = report.replace("# fimvar benchmark results\n", "", 1).strip()
    generated = generated.replace("\n### ", "\n#### ").replace("\n## ", "\n### ")
    path.write_text(f"{head}{START}\n{generated}\n{END}{tail}")


if __name__ == "__main__":
    main()
