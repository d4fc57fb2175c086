"""The exact diagonal Fisher of users' networks, side by side in one process: fimvar
(``engine="auto"``, and its autodiff engine on a few inputs), BackPACK's ``DiagGGNExact``
(``extend(..., use_converter=True)``) and curvlinops' ``GGNLinearOperator``, as ratios to one
plain gradient of the same batch, with peak memory and the largest relative difference between
them.

    python benchmarks/architectures.py --threads 2
    python benchmarks/architectures.py --threads 2 --workloads resnet18,bert

Workloads:

- ``resnet18``: torchvision's ResNet-18 architecture (written out here: the torchvision wheel
  does not install next to the CPU build of torch), 3×32×32 inputs, 10 classes.
- ``bert``: a ``transformers`` BERT classifier from a configuration (random weights, offline),
  token ids with a padding ``attention_mask`` as a dict, ``.logits`` of 4 classes.
- ``gpt``: a ``transformers`` GPT-2 language model (tied embeddings), per-position outputs
  ``(N, L, V)``: fimvar treats every position as one categorical output, the peers a per-token
  cross-entropy over ``(N·L, V)``; padding left out by the ``attention_mask`` (fimvar) and by
  ``-100`` labels (the peers).
- ``gpt-small``: the same with a vocabulary and a sequence small enough for fimvar to finish
  (fimvar's cost grows with the ``L·V`` outputs per input).

The exact GGN of a cross-entropy with ``reduction="sum"`` is ``N`` times fimvar's Fisher (a mean
over inputs, summed over positions): every agreement below compares ``peer / N`` with fimvar.

curvlinops 3.x has no exact diagonal routine: its diagonal estimators (``hutchinson_diag``,
``xdiag``) are randomised. The exact diagonal through it takes one GGN-matrix product per
parameter; here it is computed for one entry per parameter tensor (the largest of fimvar's
Fisher) and its time extrapolated to every entry, and ``hutchinson_diag`` is timed with a few
products. The first-order analysis (``analyze(..., second_order=False)``: the exact Fisher, v1,
the input variance, Î1) is timed on all N inputs (``--first-order``). The full analysis
(``fimvar.analyze``: v1, v2, c12, Î1, Î2) of such networks runs on the graph engine with v2,
c12 and Î2 estimated by Hutchinson probes (docs/theory.md §14.1): it is timed on a few inputs
with a time limit (``--analyze``, ``--analyze-inputs``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from measure import Measurement, measure
from torch import nn

import fimvar
from fimvar.engine import make_engine

CPU = torch.device("cpu")
GiB = 2**30


# ---------------------------------------------------------------------------------- networks
class BasicBlock(nn.Module):
    def __init__(self, inputs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inputs != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inputs = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(inputs, planes, stride), BasicBlock(planes, planes)))
            inputs = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Logits(nn.Module):
    """A peer's view of a model: the logits as ``(rows, classes)`` (one row per input, or per
    position of a language model) from the dict of keyword inputs or a tensor of token ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(**x) if isinstance(x, dict) else self.model(x)
        out = getattr(out, "logits", out)
        return out.reshape(-1, out.shape[-1])


def _transformers():
    from fimvar.language import import_transformers  # hides a torchvision built for another torch

    return import_transformers()


# ---------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    title: str
    model: nn.Module  # as its users have it (fimvar)
    x: torch.Tensor | dict  # as its users have it
    labels: torch.Tensor  # (N,) or (N, L) with -100 at padding
    peer_model: nn.Module  # for the peers (eager attention where forward AD needs it)
    notes: list[str] = field(default_factory=list)
    positions: int = 1  # outputs per input

    @property
    def inputs(self) -> int:
        return self.labels.shape[0]


def subset(x, k: int):
    return {key: value[:k] for key, value in x.items()} if isinstance(x, dict) else x[:k]


def resnet18(args) -> Workload:
    torch.manual_seed(0)
    model = ResNet18().eval()
    n = args.inputs or 16
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    peer = copy.deepcopy(model)
    return Workload(f"ResNet-18, 3×32×32, 10 classes, N = {n}", model, x, labels, peer)


def _padded_ids(n: int, length: int, vocabulary: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocabulary, (n, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=generator)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return ids, mask, generator


def bert(args) -> Workload:
    transformers = _transformers()
    n, length, vocabulary = args.inputs or 64, 64, 1000

    def build(attention):
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=vocabulary, hidden_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, intermediate_size=512,
                                         max_position_embeddings=length, num_labels=4,
                                         attn_implementation=attention)
        return transformers.BertForSequenceClassification(config).eval()

    model = build("sdpa")
    peer = build("eager")
    peer.load_state_dict(model.state_dict())
    ids, mask, generator = _padded_ids(n, length, vocabulary, 1)
    labels = torch.randint(0, 4, (n,), generator=generator)
    return Workload(f"BERT (transformers {transformers.__version__}) for sequence classification: "
                    f"hidden 128, 4 layers, 4 heads, intermediate 512, vocabulary {vocabulary}, "
                    f"L = {length} (padded: {int(mask.sum())} of {mask.numel()} tokens), 4 classes, N = {n}",
                    model, {"input_ids": ids, "attention_mask": mask}, labels, peer,
                    notes=["fimvar gets the model as it is (SDPA attention); the peers an eager-attention "
                           "copy (curvlinops needs forward-mode AD, which SDPA on CPU lacks)"])


def _gpt(args, vocabulary: int, length: int, n: int, width: int, layers: int, heads: int,
         name: str) -> Workload:
    transformers = _transformers()

    def build(attention):
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=vocabulary, n_positions=length, n_embd=width,
                                         n_layer=layers, n_head=heads, bos_token_id=0, eos_token_id=0,
                                         tie_word_embeddings=True, attn_implementation=attention)
        return transformers.GPT2LMHeadModel(config).eval()

    model = build("sdpa")
    peer = build("eager")
    peer.load_state_dict(model.state_dict())
    ids, mask, generator = _padded_ids(n, length, vocabulary, 3)
    labels = torch.randint(0, vocabulary, (n, length), generator=generator)
    labels[mask == 0] = -100
    return Workload(f"{name} (transformers GPT2LMHeadModel, tied embeddings): n_embd {width}, "
                    f"{layers} layers, {heads} heads, vocabulary V = {vocabulary}, L = {length} "
                    f"(padded: {int(mask.sum())} of {mask.numel()} positions count), outputs "
                    f"(N, L, V), N = {n}",
                    model, {"input_ids": ids, "attention_mask": mask}, labels, peer, positions=length,
                    notes=["fimvar gets the model as it is (SDPA attention); the peers an eager-attention "
                           "copy, logits as (N·L, V) with a per-token cross-entropy (-100 at padding)"])


def gpt(args) -> Workload:
    return _gpt(args, 1000, 64, args.inputs or 64, 128, 4, 4, "GPT")


def gpt_small(args) -> Workload:
    return _gpt(args, 64, 8, args.inputs or 8, 64, 2, 2, "Small GPT")


WORKLOADS: dict[str, Callable[[argparse.Namespace], Workload]] = {
    "resnet18": resnet18, "bert": bert, "gpt": gpt, "gpt-small": gpt_small}


# ---------------------------------------------------------------------------------- methods
def logits(model: nn.Module, x) -> torch.Tensor:
    out = model(**x) if isinstance(x, dict) else model(x)
    out = getattr(out, "logits", out)
    return out.reshape(-1, out.shape[-1])


def relative_differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
                         ) -> tuple[dict[str, float], list[str]]:
    """``max|ours − theirs| / max|theirs|`` per parameter tensor, and the tensors left out because
    their exact Fisher is zero (below 1e-12 of the largest: e.g. an attention key's bias, which the
    softmax cancels; both sides are then rounding noise)."""
    top = max(float(t.abs().max()) for t in theirs.values())
    errors, zero = {}, []
    for name, other in theirs.items():
        scale = float(other.abs().max())
        if scale <= 1e-12 * top:
            zero.append(name)
        else:
            errors[name] = float((ours[name].double() - other.double()).abs().max()) / scale
    return errors, zero


def summary(errors: dict[str, float], zero: list[str]) -> str:
    """The largest relative difference and its tensor; the tensors above 1e-3 by name, and the
    largest over the others."""
    worst = max(errors, key=errors.get)
    text = f"largest relative difference {errors[worst]:.1e} ({worst})"
    bad = [name for name, e in errors.items() if e > 1e-3]
    if bad:
        rest = [e for name, e in errors.items() if e <= 1e-3]
        text += (f"; above 1e-3: {', '.join(f'{n} ({errors[n]:.1e})' for n in bad)}; the other "
                 f"{len(rest)} tensors: {max(rest, default=0.0):.1e}")
    if zero:
        text += f"; {len(zero)} tensors with zero Fisher left out"
    return text


def measured(run: Callable[[], object], *, repeats: int = 1, time_limit: float,
             memory_limit: int | None = None) -> Measurement:
    """``measure``, with a run interrupted at its time limit inside native code (where the
    interrupt may come back as a ``RuntimeError`` wrapped by the caller) reported as a timeout."""
    started = time.perf_counter()
    m = measure(run, device=CPU, repeats=repeats, time_limit=time_limit, memory_limit=memory_limit)
    if m.status.startswith("error") and time.perf_counter() - started >= time_limit - 0.5:
        m.status = "timeout"
    return m


class Row:
    def __init__(self, name: str, m: Measurement | None, note: str = "", status: str | None = None):
        self.name, self.m, self.note = name, m, note
        self.status = status if status is not None else ("ok" if m is None else m.status)


def run_workload(name: str, w: Workload, args) -> str:
    limit, memory = args.time_limit, int(args.memory_limit * GiB)
    rows: list[Row] = []
    agreement: list[str] = []
    flat_labels = w.labels.reshape(-1)
    n = w.inputs

    def gradient():
        w.model.zero_grad()
        nn.functional.cross_entropy(logits(w.model, w.x), flat_labels, reduction="sum").backward()

    unit = measure(gradient, device=CPU, repeats=3, time_limit=limit)
    rows.append(Row("gradient (summed NLL of the labels, `loss.backward()`; the smaller median of before "
                    "and after the methods)", unit))
    w.model.zero_grad(set_to_none=True)
    names = [p for p, q in w.model.named_parameters() if q.requires_grad]
    total = sum(q.numel() for q in w.model.parameters())
    found: dict[str, dict[str, torch.Tensor]] = {}

    # fimvar, engine="auto"
    engine = make_engine("auto", w.model, names, 2 * GiB, second=False).name
    width = w.positions * logits(w.model, subset(w.x, 1)).shape[-1]
    if args.fimvar_outputs and width > args.fimvar_outputs:
        rows.append(Row(f"fimvar `fisher_diagonal` (`engine=\"auto\"` → {engine})", None,
                        status=f"not run: {width:,} outputs per input (L·V) > --fimvar-outputs "
                               f"{args.fimvar_outputs:,}: it would take {width:,} backward passes per "
                               f"chunk and {width:,} × {total:,} derivatives per input"))
    else:
        def auto():
            found["fimvar"] = fimvar.fisher_diagonal(w.model, w.x, "categorical")

        fisher_m = measured(auto, time_limit=limit, memory_limit=memory)
        rows.append(Row(f"fimvar `fisher_diagonal` (`engine=\"auto\"` → {engine})", fisher_m))
        if args.first_order:  # the first-order analysis on all N inputs: issue target ≤ 1.5× the Fisher
            def first_order():
                found["first_order"] = fimvar.analyze(w.model, w.x, "categorical", bounds=False,
                                                      second_order=False)

            m = measured(first_order, time_limit=args.analyze_limit, memory_limit=memory)
            note = ""
            if m.status == "ok" and fisher_m.seconds:
                result = found["first_order"]
                note = f"{m.seconds / fisher_m.seconds:.2f}× the exact Fisher; engine {result.engine}"
                errors = relative_differences(result.fisher, found["fimvar"])
                agreement.append(f"fimvar first-order analysis vs `fisher_diagonal`, Fisher: "
                                 f"{summary(*errors)}")
            rows.append(Row("fimvar `analyze(bounds=False, second_order=False)` (exact Fisher, v1, input "
                            "variance, Î1; one draw)", m, note=note))

    # fimvar autodiff on a few inputs (the tests' ground truth), and fimvar auto on the same
    few_n = min(args.autodiff_inputs, n)
    few = subset(w.x, few_n)
    if args.fimvar_outputs and width > args.fimvar_outputs:
        rows.append(Row("fimvar `fisher_diagonal` (`engine=\"autodiff\"`)", None,
                        status="not run (as above)"))
    else:
        def autodiff():
            found["autodiff"] = fimvar.fisher_diagonal(w.model, few, "categorical", engine="autodiff")

        m = measured(autodiff, time_limit=limit, memory_limit=memory)
        if m.seconds is not None:
            m.seconds *= n / few_n
        rows.append(Row(f"fimvar `fisher_diagonal` (`engine=\"autodiff\"`; {few_n} inputs, "
                        f"time × {n / few_n:g})", m))
        if "autodiff" in found:
            same = fimvar.fisher_diagonal(w.model, few, "categorical")
            agreement.append(f"fimvar `engine=\"auto\"` ({engine}) vs `engine=\"autodiff\"` on the same "
                             f"{few_n} inputs: {summary(*relative_differences(same, found['autodiff']))}")

    # BackPACK
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact
    except ImportError:
        rows.append(Row("BackPACK `DiagGGNExact` (`use_converter=True`)", None, status="not installed"))
    else:
        loss = extend(nn.CrossEntropyLoss(reduction="sum"))
        tensor_x = w.x["input_ids"] if isinstance(w.x, dict) else w.x
        try:
            peer = copy.deepcopy(w.peer_model)
            if isinstance(w.x, dict):  # token ids alone (BackPACK's converter traces one tensor input)
                peer = Logits(peer)
            extended = extend(peer, use_converter=True)
        except Exception as error:  # noqa: BLE001 — reported as it is
            message = str(error).splitlines()[0][:120] if str(error) else ""
            rows.append(Row("BackPACK `DiagGGNExact` (`use_converter=True`)", None,
                            status=f"not supported: `extend` fails: {type(error).__name__}: {message}"))
        else:
            def backpack_run():
                extended.zero_grad()
                with backpack(DiagGGNExact()):
                    loss(logits(extended, tensor_x), flat_labels).backward()

            m = measured(backpack_run, time_limit=limit, memory_limit=memory)
            if m.status.startswith("error"):
                m.status = "not supported: " + m.status
            rows.append(Row("BackPACK `DiagGGNExact` (`use_converter=True`)", m))
            if m.status == "ok" and "fimvar" in found:
                prefix = "model." if isinstance(w.x, dict) else ""
                theirs = {p[len(prefix):]: q.diag_ggn_exact / n for p, q in extended.named_parameters()}
                agreement.append(f"fimvar vs BackPACK `DiagGGNExact` / N over {len(theirs)} tensors: "
                                 f"{summary(*relative_differences(found['fimvar'], theirs))}")
            del extended

    # curvlinops
    try:
        from curvlinops import GGNLinearOperator, hutchinson_diag
    except ImportError:
        rows.append(Row("curvlinops `GGNLinearOperator`", None, status="not installed"))
    else:
        peer = Logits(w.peer_model)
        params = [q for _, q in w.peer_model.named_parameters()]
        pnames = [p for p, _ in w.peer_model.named_parameters()]
        size = (lambda x: x["input_ids"].shape[0]) if isinstance(w.x, dict) else None
        try:
            ggn = GGNLinearOperator(peer, nn.CrossEntropyLoss(reduction="sum"), params, [(w.x, flat_labels)],
                                    batch_size_fn=size, check_deterministic=False)
        except Exception as error:  # noqa: BLE001
            rows.append(Row("curvlinops `GGNLinearOperator`", None,
                            status=f"not supported: {type(error).__name__}: "
                                   f"{str(error).splitlines()[0][:120]}"))
        else:
            reference = found.get("fimvar") or found.get("autodiff")
            offsets = [0]
            for q in params:
                offsets.append(offsets[-1] + q.numel())
            if reference is None:  # no fimvar result: the first entry of every tensor
                picks = [0 for _ in params]
            else:
                picks = [int(reference[p].reshape(-1).abs().argmax()) for p in pnames]
            columns = [offsets[i] + j for i, j in enumerate(picks)]
            values: list[torch.Tensor] = []

            def exact_columns():
                values.clear()
                for start in range(0, len(columns), args.columns):
                    chunk = columns[start:start + args.columns]
                    basis = torch.zeros(total, len(chunk))
                    basis[chunk, torch.arange(len(chunk))] = 1
                    product = ggn @ basis
                    values.append(product[chunk, torch.arange(len(chunk))])

            m = measured(exact_columns, time_limit=limit, memory_limit=memory)
            k = len(columns)
            per_column = None if m.seconds is None else m.seconds / k
            if m.seconds is not None:
                m.seconds = per_column * total
            rows.append(Row(f"curvlinops exact diagonal by {total:,} GGN-matrix products (timed on {k} "
                            f"columns, batches of {args.columns}, time × {total / k:,.0f})", m))
            if m.status == "ok" and reference is not None:
                theirs = torch.cat(values).double() / n
                ours = torch.stack([reference[p].reshape(-1)[j] for p, j in zip(pnames, picks, strict=True)])
                kept = theirs.abs() > 1e-12 * theirs.abs().max()
                errors = {p: float((ours[i] - theirs[i]).abs() / theirs[i].abs())
                          for i, p in enumerate(pnames) if kept[i]}
                zero = [p for i, p in enumerate(pnames) if not kept[i]]
                if "fimvar" in found:
                    agreement.append(f"fimvar vs curvlinops exact GGN / N, the largest entry of each of {k} "
                                     f"tensors: {summary(errors, zero)}")
            if args.hutchinson:
                estimate = {}

                def hutchinson():
                    torch.manual_seed(0)
                    estimate["diag"] = hutchinson_diag(ggn, args.hutchinson)

                m = measured(hutchinson, time_limit=limit, memory_limit=memory)
                rows.append(Row(f"curvlinops `hutchinson_diag` ({args.hutchinson} GGN-vector products; "
                                "randomised, not exact)", m))
                if m.status == "ok" and "fimvar" in found:
                    flat = estimate["diag"].double() / n
                    theirs = {p: flat[offsets[i]:offsets[i + 1]].reshape(params[i].shape)
                              for i, p in enumerate(pnames)}
                    ours = found["fimvar"]
                    errors = [float((theirs[p] - ours[p]).abs().max() / ours[p].abs().max())
                              for p in pnames if float(ours[p].abs().max()) > 0]
                    agreement.append(f"curvlinops `hutchinson_diag` ({args.hutchinson} products) vs fimvar: "
                                     f"median over tensors of max|difference| / max|fimvar| "
                                     f"{sorted(errors)[len(errors) // 2]:.1e} (its estimation error)")
            del ggn

    # fimvar.analyze (engine="auto": on these networks the graph engine, v2/c12/Î2 from
    # Hutchinson probes) on a few inputs, scaled to N
    if args.analyze:
        if args.fimvar_outputs and width > args.fimvar_outputs:
            rows.append(Row("fimvar `analyze(bounds=False)`", None, status="not run (as above)"))
        else:
            few = min(n, args.analyze_inputs)
            part = subset(w.x, few)

            def analyze():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found["analysis"] = fimvar.analyze(w.model, part, "categorical", bounds=False)

            m = measured(analyze, time_limit=args.analyze_limit, memory_limit=memory)
            if m.seconds is not None:
                m.seconds *= n / few
            note = ""
            if m.status == "ok":
                result = found["analysis"]
                estimated = sum(1 for q in result.estimated.values() if q)
                note = (f"engine {result.engine}; v2, c12, Î2 estimated by probes for {estimated} of "
                        f"{len(result.fisher)} tensors" if estimated else f"engine {result.engine}, exact")
            rows.append(Row(f"fimvar `analyze(bounds=False)` ({few} inputs, time × {n / few:g}; limit "
                            f"{args.analyze_limit:g} s)", m, note=note))

    after = measure(gradient, device=CPU, repeats=3, time_limit=limit)  # the machine may have changed
    w.model.zero_grad(set_to_none=True)
    if after.seconds is not None and (unit.seconds is None or after.seconds < unit.seconds):
        unit.seconds = after.seconds
    return report(name, w, rows, agreement, unit.seconds, total)


def report(name: str, w: Workload, rows: list[Row], agreement: list[str], unit: float | None,
           total: int) -> str:
    lines = [f"### {name}", "", f"{w.title}; {total:,} parameters.", ""]
    lines += [f"- {note}" for note in w.notes]
    lines += ["", "| method | time | × gradient | peak memory | status |", "|---|---|---|---|---|"]
    for row in rows:
        m = row.m
        seconds = "—" if m is None or m.seconds is None else (
            f"{m.seconds:.2f} s" if m.seconds < 1000 else f"{m.seconds:,.0f} s")
        ratio = "—"
        if m is not None and m.seconds is not None and unit:
            ratio = f"{m.seconds / unit:,.{0 if m.seconds / unit >= 10 else 1}f}×"
        peak = "—" if m is None or m.peak_bytes is None else f"{m.peak_bytes / 2**20:,.0f} MiB"
        status = row.status + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.name} | {seconds} | {ratio} | {peak} | {status} |")
    lines += [""] + [f"- {a}" for a in agreement]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default="resnet18,bert,gpt,gpt-small",
                        help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--inputs", type=int, default=None, help="N (default: 16 for resnet18, 64 for bert "
                        "and gpt, 16 for gpt-small)")
    parser.add_argument("--autodiff-inputs", type=int, default=2,
                        help="inputs for the autodiff engine (its time is scaled to N)")
    parser.add_argument("--columns", type=int, default=8, help="curvlinops: GGN columns per product")
    parser.add_argument("--hutchinson", type=int, default=8, help="curvlinops: products of hutchinson_diag "
                        "(0: not run)")
    parser.add_argument("--fimvar-outputs", type=int, default=20_000,
                        help="do not run fimvar where an input has more outputs than this (0: no limit)")
    parser.add_argument("--analyze", action=argparse.BooleanOptionalAction, default=True,
                        help="time fimvar.analyze(bounds=False) on a few inputs")
    parser.add_argument("--first-order", action=argparse.BooleanOptionalAction, default=True,
                        help="time fimvar.analyze(bounds=False, second_order=False) on all N inputs")
    parser.add_argument("--analyze-limit", type=float, default=300.0, help="seconds for fimvar.analyze")
    parser.add_argument("--analyze-inputs", type=int, default=4,
                        help="inputs for fimvar.analyze (its time is scaled to N)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per method")
    parser.add_argument("--memory-limit", type=float, default=8.0, help="GiB per method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}\n")
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        print(run_workload(name, WORKLOADS[name](args), args), flush=True)


if __name__ == "__main__":
    main()
