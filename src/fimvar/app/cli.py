"""The ``fimvar`` command: ``analyze``, ``demo``, ``plan``, ``audit`` and ``reproduce``.

Every error the user can cause is a :class:`~fimvar.errors.FimvarError`, printed as
``fimvar: error: <message>`` on stderr with exit status 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from fimvar.errors import FimvarError, warn
from fimvar.estimators.design import DEFAULT_TARGET

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DESCRIPTION = (
    "Fisher information of a neural network and how far its estimates can be trusted: per layer, "
    "the exact diagonal Fisher, the variances of the estimators Î1 (squared score) and Î2 (negative "
    "Hessian) with labels sampled from the model, bounds, and the samples a target accuracy needs "
    "(Soen & Sun, NeurIPS 2021 and 2024)."
)
EPILOG = "Start with `fimvar demo`. Every command has --help."


# ---------------------------------------------------------------------- parser
def _add_analysis_options(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    group = parser.add_argument_group("estimation")
    group.add_argument("--samples", "-M", type=int, default=4 if demo else None, metavar="M",
                       help="label draws per input for Î1 and Î2 (default: " + ("4)" if demo else
                            "1; 4 for a language model, --model hf:…)"))
    group.add_argument("--inputs", "-N", type=int, default=None, metavar="N",
                       help="analyse the first N inputs (default: all" + (" test inputs)" if demo else ")"))
    group.add_argument("--seed", type=int, default=0, help="seed of the label draws (default: 0)")
    group.add_argument("--engine", default="auto", choices=("auto", "structured", "autodiff", "graph"),
                       help="derivative engine: auto (structured where every layer is supported, "
                            "else autodiff), structured (fast) or autodiff (any model, slow)")
    group.add_argument("--device", default="auto",
                       help="cpu, cuda, cuda:1, … or auto (cuda when available; default)")
    group.add_argument("--no-bounds", action="store_true", help="skip the bounds of [A]/[B] (faster)")
    group.add_argument("--first-order", action="store_true",
                       help="a first-order analysis: the exact Fisher, Î1, v1, the input variance and the "
                            "empirical Fisher, without Î2, v2, c12 and the combination (faster: no "
                            "second derivatives; docs/usage.md)")
    if not demo:
        group.add_argument("--i2", action="store_true",
                           help="a language model (--model hf:…): also Î2, by one Hutchinson probe of the "
                                "Hessian per draw (docs/theory.md §17.5; a Hessian-vector product per "
                                "sequence and draw)")
    group.add_argument("--threads", type=int, default=1 if demo else None, metavar="T",
                       help="CPU threads for torch (default: " + ("1, fastest for the small demo model"
                            if demo else "torch's default") + ")")
    out = parser.add_argument_group("output")
    out.add_argument("--out", "-o", default="fimvar-demo" if demo else "fimvar-out", metavar="DIR",
                     help="output folder (default: %(default)s)")
    out.add_argument("--rho", type=float, default=DEFAULT_TARGET.rho,
                     help="target relative error of the plan in the report (default: %(default)s)")
    out.add_argument("--delta", type=float, default=DEFAULT_TARGET.delta,
                     help="failure probability of the plan: confidence 1−δ (default: %(default)s)")
    out.add_argument("--no-figures", action="store_true", help="do not write figures")
    out.add_argument("--no-html", action="store_true", help="do not write report.html")
    out.add_argument("--quiet", "-q", action="store_true", help="print only the output folder")


def build_parser() -> argparse.ArgumentParser:
    from fimvar import __version__

    parser = argparse.ArgumentParser(prog="fimvar", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fimvar {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze", help="analyse a model on data: per-layer table, summary.json, tensors, figures, report",
        description="Analyse a model on a data set and write summary.json, fisher.safetensors, figures "
                    "and report.html to --out.",
        epilog="Model SPEC: package.module:function, path/to/file.py:function (called with the "
               "--model-arg values), a TorchScript file, or a transformers causal language model "
               "hf:DIR (save_pretrained folder, local files only), hf:CONFIG.json (random weights) or "
               "hf:gpt2-tiny (built in). Data SPEC: digits, diabetes, mnist5k, "
               "npz:PATH[#x=KEY,y=KEY], pt:PATH, csv:PATH[#label=COLUMN], idx:IMAGES[,LABELS], "
               "synthetic[:n=256,d=8,classes=3], and for hf: models text:FILE[#length=64] or "
               "text:bundled[#length=64] (non-overlapping windows of tokens). Examples: fimvar analyze "
               "--model fimvar.models:digits_mlp --data digits --family categorical --inputs 200; fimvar "
               "analyze --model hf:gpt2-tiny --data text:bundled",
    )
    model = analyze.add_argument_group("model and data")
    model.add_argument("--model", "-m", required=True, metavar="SPEC", help="the model (see below)")
    model.add_argument("--weights", "-w", metavar="FILE",
                       help="state dict to load: .safetensors or a torch.save file (weights_only)")
    model.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="keyword argument of the model factory (repeatable; values are Python literals)")
    model.add_argument("--data", "-d", required=True, metavar="SPEC", help="the data (see below)")
    model.add_argument("--family", "-f", default=None, metavar="NAME",
                       help="output distribution: categorical, gaussian, bernoulli or poisson (required; "
                            "a language model, --model hf:…, is categorical)")
    model.add_argument("--labels", action="store_true",
                       help="also compute the empirical Fisher with the data's labels and its bias")
    model.add_argument("--split", default="all", choices=("all", "train", "test"),
                       help="all inputs, or a seeded 80/20 train/test split (default: all)")
    model.add_argument("--normalize", default="none", choices=("none", "standard", "minmax"),
                       help="per-feature normalisation of the inputs (default: none)")
    model.add_argument("--input-shape", metavar="SHAPE",
                       help="reshape each input, e.g. 1,8,8 for a CNN on digits")
    model.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"),
                       help="convert the model and the inputs (default: the model's dtype); bfloat16 and "
                            "float16 models are differentiated in that precision, summed in float64")
    _add_analysis_options(analyze)
    resume = analyze.add_argument_group("checkpoint")
    resume.add_argument("--checkpoint", metavar="PATH",
                        help="save the accumulated sums to PATH periodically and resume from it when it "
                             "exists (same arguments required)")
    resume.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between checkpoints (default: 60; 0: after every batch)")
    resume.add_argument("--batch-size", type=int, default=256, metavar="B",
                        help="inputs per batch (default: 256); keep it when resuming")

    demo = commands.add_parser(
        "demo", help="train a small MLP on the bundled digits and analyse it (seconds)",
        description="Train a 64-16-10 tanh MLP on scikit-learn's digits (80% train split, full-batch "
                    "Adam, a few seconds), then analyse it on the test split with the data labels and "
                    "write everything to --out.",
    )
    demo.add_argument("--hidden", type=int, default=16, help="hidden units (default: 16)")
    demo.add_argument("--activation", default="tanh", help="hidden activation (default: tanh)")
    demo.add_argument("--epochs", type=int, default=150, help="training epochs (default: 150)")
    _add_analysis_options(demo, demo=True)

    plan = commands.add_parser(
        "plan", help="sample sizes per layer for a target relative error (from a saved analysis)",
        description="First, per layer, how accurate the saved Fisher is with the N inputs analysed "
                    "(standard error, relative error, the inputs the target needs, whether --available "
                    "inputs suffice); then, for a target relative error ρ and confidence 1−δ, per layer: "
                    "which estimator (Î1, Î2, their minimum-variance combination, or the exact Fisher), "
                    "how many "
                    "inputs N_x and label draws M, by Chebyshev and by the normal approximation, and "
                    "the estimated cost (docs/theory.md §8).",
        epilog="Target: ‖Î−I‖₂/‖I‖₂ ≤ ρ over each layer's parameters. Cost model, in backward passes "
               "of one input: forward F per input; per draw 1 (Î1) or H (Î2, combined); exact: T "
               "backward passes per input.",
    )
    plan.add_argument("result", metavar="DIR",
                      help="folder written by `fimvar analyze` or `fimvar demo`, or its summary.json or "
                           "fisher.safetensors")
    plan.add_argument("--rho", type=float, default=DEFAULT_TARGET.rho,
                      help="target relative error ρ (default: %(default)s)")
    plan.add_argument("--delta", type=float, default=DEFAULT_TARGET.delta,
                      help="failure probability δ: confidence 1−δ (default: %(default)s)")
    plan.add_argument("--draws", type=int, default=None, metavar="M",
                      help="fix the label draws per input (default: optimise M)")
    plan.add_argument("--forward-cost", type=float, default=0.5, metavar="F",
                      help="cost of a forward pass, in backward passes (default: 0.5)")
    plan.add_argument("--hessian-cost", type=float, default=2.0, metavar="H",
                      help="cost of a Hessian-diagonal pass, in backward passes (default: 2)")
    plan.add_argument("--available", type=int, default=None, metavar="N",
                      help="the inputs your data set has: says per layer whether they are enough "
                           "(default: the N analysed)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    audit = commands.add_parser(
        "audit", help="bias, variance and needed sample size of EWC, GNB, the empirical Fisher, Î1, Î2…",
        description="Per layer, every estimator people call the Fisher (EWC's squared batch-mean "
                    "gradient, Sophia's GNB, the empirical Fisher, Monte Carlo Fisher = Î1, Î2, their "
                    "combination, Hutchinson's Hessian diagonal (on request), the exact Fisher): its "
                    "bias against the diagonal Fisher, its relative standard deviation at the design, "
                    "the inputs it needs for the target "
                    "and their cost, and the cheapest estimator that meets it (docs/theory.md §15).",
        epilog="Model and data SPECs as in `fimvar analyze --help`. EWC and the empirical Fisher need "
               "--labels; EWC and GNB need --batch-size dividing the number of inputs. Example: fimvar "
               "audit --model fimvar.models:digits_mlp --data digits --family categorical --labels "
               "--inputs 64 --batch-size 16 --out fimvar-audit",
    )
    what = audit.add_argument_group("model and data")
    what.add_argument("--model", "-m", required=True, metavar="SPEC", help="the model")
    what.add_argument("--weights", "-w", metavar="FILE", help="state dict to load")
    what.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="keyword argument of the model factory (repeatable)")
    what.add_argument("--data", "-d", required=True, metavar="SPEC", help="the data")
    what.add_argument("--family", "-f", required=True, metavar="NAME", help="output distribution")
    what.add_argument("--labels", action="store_true", help="use the data's labels (EWC, empirical)")
    what.add_argument("--split", default="all", choices=("all", "train", "test"))
    what.add_argument("--normalize", default="none", choices=("none", "standard", "minmax"))
    what.add_argument("--input-shape", metavar="SHAPE", help="reshape each input, e.g. 1,8,8")
    what.add_argument("--inputs", "-N", type=int, default=None, metavar="N", help="the first N inputs")
    how = audit.add_argument_group("estimators")
    how.add_argument("--estimator", "-e", action="append", default=None, metavar="NAME",
                     help="exact, i1, mc, token, i2, combined, hutchinson, gnb, empirical or ewc "
                          "(repeatable; default: all but mc and hutchinson; token for sequence outputs)")
    how.add_argument("--batch-size", "-B", type=int, default=None, metavar="B",
                     help="batch size of EWC and GNB")
    how.add_argument("--samples", "-M", type=int, default=1, metavar="M",
                     help="label draws per input of Î1, Î2, the combination, MC and Hutchinson (default: 1)")
    how.add_argument("--probes", "-k", type=int, default=1, metavar="K",
                     help="Rademacher probes per label draw of Hutchinson's estimate (default: 1)")
    how.add_argument("--seed", type=int, default=0, help="seed of the label draws (default: 0)")
    how.add_argument("--engine", default="auto", choices=("auto", "structured", "autodiff", "graph"))
    how.add_argument("--threads", type=int, default=None, metavar="T", help="CPU threads for torch")
    how.add_argument("--rho", type=float, default=0.05, help="target relative error (default: 0.05)")
    how.add_argument("--delta", type=float, default=0.05,
                     help="failure probability: confidence 1−δ (default: 0.05)")
    how.add_argument("--json", action="store_true", help="print the audit as JSON")
    out = audit.add_argument_group("output")
    out.add_argument("--out", "-o", default=None, metavar="DIR",
                     help="also write audit.json, figures/audit.png|svg and report.html (the tables with "
                          "the figure) to DIR")
    out.add_argument("--no-figures", action="store_true", help="with --out: do not write the figure")
    out.add_argument("--no-html", action="store_true", help="with --out: do not write report.html")

    commands.add_parser(
        "reproduce", add_help=False, help="reproduce the papers' experiments (fimvar reproduce --help)",
        description="Delegates to fimvar.reproduce.",
    )
    return parser


# ---------------------------------------------------------------------- helpers
def _launched() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by ``torchrun`` (or any launcher that sets
    ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) with more than one process, else ``None``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return None
    return (rank, world, local) if world > 1 else None


def _rank() -> int:
    """This process's rank: of the initialised process group, else of the launcher's environment."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for --help or an error
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    launched = _launched()
    return 0 if launched is None else launched[0]


def _err(message: str, always: bool = False) -> None:
    """Print ``fimvar: message`` on stderr; under ``torchrun`` only process 0 does, except errors
    (``always``), which every process prints with its rank."""
    rank = _rank()
    if rank == 0:
        print(f"fimvar: {message}", file=sys.stderr)
    elif always:
        print(f"fimvar (process {rank}): {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if _rank() == 0:
        print(f"fimvar: warning: {message}", file=sys.stderr)


#: whether this command initialised the torch.distributed process group (and so destroys it)
_JOINED: list[bool] = []


def _join_processes(device) -> tuple[int, int] | None:
    """Under ``torchrun`` with more than one process, join the process group (gloo on CPU, NCCL
    on CUDA) unless the caller already did; returns ``(rank, world_size)``, or ``None`` for one
    process. The analysis then shards the data over the processes (docs/theory.md §16)."""
    launched = _launched()
    if launched is None:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise FimvarError("this command was started with several processes (WORLD_SIZE > 1), but this "
                          "PyTorch has no torch.distributed; run one process")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _JOINED.append(True)
    return dist.get_rank(), dist.get_world_size()


def _leave_processes() -> None:
    if _JOINED:
        import torch.distributed as dist

        _JOINED.clear()
        if dist.is_initialized():
            dist.destroy_process_group()


def _resolve_device(name: str):
    import torch

    launched = _launched()
    if launched is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", launched[2] % torch.cuda.device_count())  # one GPU per process
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise FimvarError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FimvarError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def _progress_enabled(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _say(args, text: str = "") -> None:
    if not args.quiet:
        print(text, flush=True)


def _check_numbers(args) -> None:
    from fimvar.estimators.design import Target
    from fimvar.estimators.labels import check_seed

    if args.samples < 1:
        raise FimvarError(f"--samples must be ≥ 1, got {args.samples}")
    if args.inputs is not None and args.inputs < 1:
        raise FimvarError(f"--inputs must be ≥ 1, got {args.inputs}")
    Target(args.rho, args.delta)  # --rho, --delta: the checks (and messages) of the Python API
    check_seed(args.seed)
    if getattr(args, "batch_size", 1) < 1:
        raise FimvarError(f"--batch-size must be ≥ 1, got {args.batch_size}")


def _finish(args, analysis, result, run: dict, started: float) -> int:
    from fimvar.estimators.design import Target
    from fimvar.report.files import SAMPLED_TENSORS, TENSORS, save, save_sampled
    from fimvar.report.text import report_text, sampled_report_text
    from fimvar.results.plan import make_plan
    from fimvar.results.sampled import SampledResult

    result.metadata.update(run)
    if _rank() != 0:  # under torchrun only process 0 writes the report and prints
        return EXIT_OK
    target = Target(args.rho, args.delta)
    plan = make_plan(result, target)
    sampled = isinstance(result, SampledResult)
    if not args.quiet:
        print((sampled_report_text if sampled else report_text)(result, target, plan))
    out = (save_sampled if sampled else save)(result, args.out, target, figures=not args.no_figures,
                                              html=not args.no_html, plan=plan)
    files = ["summary.json", SAMPLED_TENSORS if sampled else TENSORS]
    if not args.no_figures:
        files.append("figures/")
    if not args.no_html:
        files.append("report.html")
    if args.quiet:
        print(out)
    else:
        print(f"\nwrote {', '.join(files)} to {out}/ in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def _run_analysis(args, model, x, y, run: dict, started: float, checkpoint: str | None = None,
                  batch_size: int | None = None, interval: float = 60.0) -> int:
    from fimvar.analysis import checkpoint as checkpoints
    from fimvar.analysis import distributed
    from fimvar.analysis.diagonal import Analysis

    analysis = Analysis(model, args.family, args.samples, args.seed, args.engine,
                        bounds=not args.no_bounds, second_order=not args.first_order)
    run["engine"] = analysis.engine.name
    group = distributed.process_group()
    if checkpoint is not None and group is None:
        loaded = checkpoints.load(checkpoint)
        if loaded is not None:
            done = int(loaded[1].get("count", 0))
            _err(f"resuming from checkpoint {checkpoint}: {done} of {x.shape[0]} inputs already done")
    elif checkpoint is not None and group[0] == 0:
        path = distributed.rank_path(checkpoint, *group)
        try:  # a bad file is reported by the run itself, to every process
            loaded = checkpoints.load(path)
        except FimvarError:
            loaded = None
        if loaded is not None:
            done = int(loaded[1].get("count", 0))
            _err(f"resuming from checkpoint {path} (process 0 of {group[1]}): {done} of its inputs "
                 "already done")
    analysis.run(x, y, batch_size=batch_size, checkpoint=checkpoint, checkpoint_interval=interval,
                 progress=_progress_enabled(args))
    return _finish(args, analysis, analysis.result(), run, started)


# ---------------------------------------------------------------------- commands
def cmd_analyze(args) -> int:
    import torch

    from fimvar.analysis import checkpoint as checkpoints
    from fimvar.data import load_data, parse_shape
    from fimvar.families import get_family
    from fimvar.models import load_model, parse_model_args
    from fimvar.report.files import writable_directory

    started = time.monotonic()
    if args.model.strip().startswith("hf:"):
        return cmd_analyze_language(args, started)
    if args.i2:
        raise FimvarError("--i2 is for a language model (--model hf:…), whose sampled analysis estimates "
                          "Î1 alone by default; the analysis of this model gives Î2 exactly: drop --i2")
    if args.family is None:
        raise FimvarError("--family is required: categorical, gaussian, bernoulli or poisson (only a "
                          "language model, --model hf:…, is categorical by itself)")
    if args.samples is None:
        args.samples = 1
    if args.data.strip().startswith("text:"):
        raise FimvarError("text data (--data text:…) is tokenised for a transformers language model: give "
                          "--model hf:DIR, hf:CONFIG.json or hf:gpt2-tiny")
    _check_numbers(args)
    family = get_family(args.family)
    if _rank() == 0:  # under torchrun only process 0 writes the report
        writable_directory(args.out)
    if args.checkpoint and Path(args.checkpoint).is_dir():
        raise FimvarError(f"--checkpoint {args.checkpoint} is a folder; give a file path (e.g. run.ckpt)")
    if args.checkpoint:  # before any work, not at the first save
        checkpoints.check_writable(args.checkpoint)
    device = _resolve_device(args.device)
    _join_processes(device)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    data = load_data(args.data, split=args.split, normalize=args.normalize, inputs=args.inputs,
                     input_shape=shape)
    for note in data.notes:
        _err(f"note: {note}")
    if args.labels and data.y is None:
        raise FimvarError(
            f"--labels needs labels but {data.name} has none; drop --labels, or give labels (npz/pt key "
            "y, a CSV column named label, or idx:IMAGES,LABELS)"
        )
    model = load_model(args.model, weights=args.weights, kwargs=parse_model_args(args.model_arg),
                       example=data.x[:2])
    if args.dtype:
        model = model.to(getattr(torch, args.dtype))
    model = model.to(device)
    reference = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()),
                     None)
    dtype = reference.dtype if reference is not None else torch.float32
    x = data.x.to(device=device, dtype=dtype)
    y = data.y.to(device) if (args.labels and data.y is not None) else None
    _check_width(model, x, family, data, args.labels)
    run = {
        "model": args.model + (f" (weights {args.weights})" if args.weights else ""),
        "data": data.describe(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "command": "fimvar " + " ".join(shlex.quote(a) for a in args.argv),
    }
    _say(args, f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; "
               f"data {data.describe()}")
    return _run_analysis(args, model, x, y, run, started, checkpoint=args.checkpoint,
                         batch_size=args.batch_size, interval=args.checkpoint_interval)


def cmd_analyze_language(args, started: float) -> int:
    """``fimvar analyze --model hf:… --data text:…``: a transformers causal language model on
    token windows of a text, by the sampled analysis (docs/theory.md §17; the exact quantities
    would cost L·V backward passes per sequence), with the report of a
    :class:`~fimvar.SampledResult`."""
    import torch

    from fimvar.analysis import checkpoint as checkpoints
    from fimvar.analysis.sampled import SampledAnalysis
    from fimvar.data import Dataset, apply_split, take
    from fimvar.language import load_language_model, text_sequences
    from fimvar.models import load_weights
    from fimvar.report.files import writable_directory

    if args.samples is None:
        args.samples = 4
    _check_numbers(args)
    if args.family not in (None, "categorical"):
        raise FimvarError(f"a language model (--model hf:…) predicts categorical tokens; drop --family "
                          f"{args.family}")
    for given, option in ((args.labels, "--labels"), (args.normalize != "none", "--normalize"),
                          (args.input_shape, "--input-shape"), (args.model_arg, "--model-arg")):
        if given:
            raise FimvarError(f"{option} does not apply to a language model (--model hf:…): the labels are "
                              "the next tokens, sampled from the model")
    if args.first_order and args.i2:
        raise FimvarError("--first-order leaves Î2 out and --i2 asks for it: give one of them (a language "
                          "model's analysis is first-order without --i2)")
    if args.engine not in ("auto", "graph"):
        raise FimvarError(f"a language model is analysed by the sampled analysis on the graph engine; drop "
                          f"--engine {args.engine}")
    if not args.data.strip().startswith("text:"):
        raise FimvarError(f"--model hf:… reads text, not {args.data!r}: give --data text:bundled or "
                          "text:FILE[#length=L]")
    if _rank() == 0:
        writable_directory(args.out)
    if args.checkpoint and Path(args.checkpoint).is_dir():
        raise FimvarError(f"--checkpoint {args.checkpoint} is a folder; give a file path (e.g. run.ckpt)")
    if args.checkpoint:
        checkpoints.check_writable(args.checkpoint)
    device = _resolve_device(args.device)
    _join_processes(device)
    lm = load_language_model(args.model.strip()[len("hf:"):])
    if args.weights:
        load_weights(lm.model, args.weights)
    ids, described, length = text_sequences(args.data.strip()[len("text:"):], lm)
    data = apply_split(Dataset(ids, None, described, "language"), args.split)
    if args.inputs is not None:
        data = take(data, args.inputs)
    for note in data.notes:
        _err(f"note: {note}")
    model = lm.model
    if args.dtype:
        model = model.to(getattr(torch, args.dtype))
    model = model.to(device)
    analysis = SampledAnalysis(model, "categorical", args.samples, args.seed, i2=args.i2)
    run = {
        "model": lm.description + (f" (weights {args.weights})" if args.weights else ""),
        "data": described + (f"; {len(data)} of them analysed" + (f" ({args.split} split)"
                                                                   if args.split != "all" else "")
                             if len(data) != ids.shape[0] else ""),
        "tokenizer": "bytes" if lm.tokenizer is None else type(lm.tokenizer).__name__,
        "sequence_length": length,
        "device": str(device),
        "command": "fimvar " + " ".join(shlex.quote(a) for a in args.argv),
    }
    _say(args, f"model {lm.description}: {sum(p.numel() for p in model.parameters()):,} parameters, "
               f"vocabulary {lm.vocabulary}; data {described}; analysing {len(data)} sequences × "
               f"{args.samples} label draws (sampled analysis, docs/theory.md §17)")
    analysis.run(data.x.to(device), None, batch_size=args.batch_size, checkpoint=args.checkpoint,
                 checkpoint_interval=args.checkpoint_interval, progress=_progress_enabled(args))
    return _finish(args, analysis, analysis.result(), run, started)


def _check_width(model, x, family, data, labels: bool) -> None:
    """Warn when a classifier's output width differs from the data's number of classes."""
    from fimvar.analysis.inputs import output_family

    was_training = model.training
    model.eval()
    try:
        family, outputs = output_family(model, x[:1], family)  # per-position: T per position
        width = outputs.shape[1] // getattr(family, "positions", 1)
    finally:
        model.train(was_training)
    if family.name == "categorical" and data.classes and data.classes != width:
        message = (f"the model has {width} outputs but {data.name} has {data.classes} classes "
                   f"(labels 0..{data.classes - 1})")
        if labels:
            raise FimvarError(f"{message}; with --labels the model needs one logit per class: change "
                              "its last layer or the data")
        warn(f"{message}; check --model and --data")


def cmd_demo(args) -> int:
    from fimvar.data import apply_split, load_data, take
    from fimvar.models import accuracy, digits_mlp, train_classifier
    from fimvar.report.files import writable_directory

    started = time.monotonic()
    _check_numbers(args)
    if args.hidden < 1 or args.epochs < 0:
        raise FimvarError("--hidden must be ≥ 1 and --epochs ≥ 0")
    out = writable_directory(args.out)
    device = _resolve_device(args.device)
    data = load_data("digits")
    train, test = apply_split(data, "train"), apply_split(data, "test")
    model = digits_mlp(args.hidden, args.activation, seed=args.seed)
    t0 = time.monotonic()
    loss = train_classifier(model, train.x, train.y, epochs=args.epochs, seed=args.seed)
    acc = accuracy(model, test.x, test.y)
    _say(args, f"trained a 64-{args.hidden}-10 {args.activation} MLP on {len(train)} digits in "
               f"{time.monotonic() - t0:.1f} s: training loss {loss:.3f}, test accuracy {100 * acc:.1f}%")
    from safetensors.torch import save_file

    from fimvar.report.tensors import usual_mode

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    usual_mode(out / "model.safetensors")
    if args.inputs is not None:
        test = take(test, args.inputs)
    model = model.to(device)
    x, y = test.x.to(device), test.y.to(device)
    weights = Path(args.out) / "model.safetensors"
    args.family = "categorical"
    margs = "" if (args.hidden, args.activation) == (16, "tanh") else \
        f" --model-arg hidden={args.hidden} --model-arg activation={args.activation}"
    equivalent = (f"fimvar analyze --model fimvar.models:digits_mlp{margs} --weights {weights} --data digits "
                  f"--split test --family categorical --labels --samples {args.samples}"
                  + (f" --inputs {args.inputs}" if args.inputs else ""))
    run = {"model": f"fimvar.models:digits_mlp (64-{args.hidden}-10 {args.activation}, weights {weights})",
           "data": test.describe(), "device": str(device), "dtype": "float32",
           "command": equivalent, "test_accuracy": acc}
    code = _run_analysis(args, model, x, y, run, started, batch_size=256)
    _say(args, f"same analysis from the saved weights: {equivalent}")
    return code


def cmd_plan(args) -> int:
    from fimvar.estimators.design import CostModel
    from fimvar.report.files import load

    result = load(args.result)
    if args.forward_cost < 0 or args.hessian_cost < 0:
        raise FimvarError("costs must be non-negative")
    cost = CostModel(forward=args.forward_cost, hessian=args.hessian_cost,
                     outputs=result.metadata.get("outputs"))
    the_plan = result.plan(args.rho, args.delta, cost=cost, draws=args.draws, available=args.available)
    if args.json:
        from fimvar.report.summary import clean

        print(json.dumps(clean(the_plan.to_dict()), indent=2, allow_nan=False))
    else:
        print(f"{result!r} from {args.result}")
        print(the_plan.table(detailed=True))
    return EXIT_OK


def cmd_audit(args) -> int:
    import torch

    from fimvar.analysis.audit import audit
    from fimvar.data import load_data, parse_shape
    from fimvar.models import load_model, parse_model_args

    if args.inputs is not None and args.inputs < 1:
        raise FimvarError(f"--inputs must be ≥ 1, got {args.inputs}")
    if args.out is not None:  # before any work
        from fimvar.report.files import writable_directory

        if _rank() == 0:  # under torchrun only process 0 writes the report
            writable_directory(args.out)
    elif args.no_figures or args.no_html:
        raise FimvarError("--no-figures and --no-html apply to the report folder; give --out DIR")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    data = load_data(args.data, split=args.split, normalize=args.normalize, inputs=args.inputs,
                     input_shape=shape)
    if args.labels and data.y is None:
        raise FimvarError(f"--labels needs labels but {data.name} has none; drop --labels")
    model = load_model(args.model, weights=args.weights, kwargs=parse_model_args(args.model_arg),
                       example=data.x[:2])
    reference = next((t for t in model.parameters() if t.is_floating_point()), None)
    x = data.x.to(reference.dtype) if reference is not None else data.x
    _join_processes(torch.device("cpu"))  # the audit command runs on the CPU
    result = audit(model, x, args.family, labels=data.y if args.labels else None,
                   estimator=args.estimator, batch_size=args.batch_size, seed=args.seed,
                   samples=args.samples, probes=args.probes, rho=args.rho, delta=args.delta,
                   engine=args.engine)
    if _rank() != 0:  # under torchrun only process 0 prints and writes the report
        return EXIT_OK
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(result.summary())
    if args.out is not None:
        from fimvar.report.files import save_audit

        run = {"model": args.model + (f" (weights {args.weights})" if args.weights else ""),
               "data": data.describe(), "command": "fimvar " + " ".join(shlex.quote(a) for a in args.argv)}
        out = save_audit(result, args.out, run=run, figures=not args.no_figures, html=not args.no_html)
        files = ["audit.json"] + (["figures/audit.png|svg"] if not args.no_figures else []) \
            + (["report.html"] if not args.no_html else [])
        print(f"wrote {', '.join(files)} to {out}/", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def cmd_reproduce(argv: list[str]) -> int:
    import importlib

    try:
        reproduce = importlib.import_module("fimvar.reproduce")
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("fimvar.reproduce"):
            raise FimvarError("the paper reproductions (fimvar.reproduce) are not installed in this "
                              "version of fimvar") from error
        raise
    entry = getattr(reproduce, "main", None)
    if entry is None:
        raise FimvarError("fimvar.reproduce has no main(argv) entry point")
    code = entry(argv)
    return int(code or 0)


# ---------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the ``fimvar`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("FIMVAR_DEBUG"))
    silent = _rank() != 0  # under torchrun only process 0 prints its output
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.showwarning = _show_warning
        if silent:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        try:
            if argv and argv[0] == "reproduce":
                return cmd_reproduce(argv[1:])
            parser = build_parser()
            args = parser.parse_args(argv)
            args.argv = argv
            if args.command is None:
                parser.print_help()
                return EXIT_USAGE
            command = {"analyze": cmd_analyze, "demo": cmd_demo, "plan": cmd_plan,
                       "audit": cmd_audit}[args.command]
            threads = getattr(args, "threads", None)
            if threads is None:
                return command(args)
            if threads < 1:
                raise FimvarError(f"--threads must be ≥ 1, got {threads}")
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return command(args)
            finally:  # leave an in-process caller's setting as it was
                torch.set_num_threads(previous)
        except FimvarError as error:
            _err(f"error: {error}", always=True)
            return EXIT_USAGE
        except KeyboardInterrupt:
            _err("interrupted (with --checkpoint, rerun the same command to resume)", always=True)
            return EXIT_INTERRUPTED
        except SystemExit as exit_:  # argparse: --help, --version, usage errors
            return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
        except BrokenPipeError:  # `fimvar … | head`
            with contextlib.suppress(Exception):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return EXIT_OK
        except Exception as error:
            if debug:
                raise
            _err(f"internal error: {type(error).__name__}: {error}\n"
                 "This is a bug in fimvar or an unexpected model; rerun with FIMVAR_DEBUG=1 for the "
                 "traceback and report it.", always=True)
            return EXIT_INTERNAL
        finally:
            _leave_processes()


if __name__ == "__main__":
    sys.exit(main())
