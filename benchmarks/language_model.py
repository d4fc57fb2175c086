"""Î1 of a GPT-2-small language model with labels drawn from the model, and its error bars, side
by side in one process with the estimators users write by hand, as ratios to one plain gradient
of the same batch, with peak memory.

    python benchmarks/language_model.py --threads 2                 # GPT-2 small, 16 × 128 tokens
    python benchmarks/language_model.py --threads 2 --layers 2      # a quicker, shallower one

Methods (M label draws per token, the per-sequence squared gradient, as Fisher merging, EWC and
Laplace codes compute it):

- ``gradient``: the summed negative log-likelihood of the data labels, ``loss.backward()``;
- ``fimvar.analyze(model, ids, samples=M, bounds=False)``: takes the sampled path by itself
  (docs/theory.md §17.3): Î1, the label and input noise and their standard errors;
- ``loop``: a batch-size-1 loop — for every sequence one forward pass, then per draw the labels
  sampled from the model, ``loss.backward(retain_graph=True)`` and the squared gradient added to
  a float64 sum (Î1 alone, no error bar);
- ``torch.func``: ``vmap(grad)`` over the sequences, in chunks of ``--func-chunk``, per draw.

The loop draws the labels fimvar draws (``fimvar.estimators.labels.sample_labels``, seeded by the
sequence's index), so their Î1 must agree to float32 rounding: the largest relative difference
is printed.
"""

from __future__ import annotations

import argparse
import platform
import warnings

import torch
from measure import Measurement, measure
from torch import nn

import fimvar
from fimvar.estimators.labels import sample_labels

CPU = torch.device("cpu")
GiB = 2**30


def _transformers():
    from fimvar.language import import_transformers  # hides a torchvision built for another torch

    return import_transformers()


def build(args) -> nn.Module:
    transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=args.vocabulary, n_positions=args.length, n_embd=args.width,
                                     n_layer=args.layers, n_head=args.heads, tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(config).eval()


def hand_loop(model: nn.Module, ids: torch.Tensor, draws: int) -> dict[str, torch.Tensor]:
    """Î1 as users write it: one sequence at a time, one backward pass per draw."""
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    sums = {k: torch.zeros(p.shape, dtype=torch.float64) for k, p in named}
    for i in range(ids.shape[0]):
        logits = model(input_ids=ids[i : i + 1]).logits  # (1, L, V)
        labels = sample_labels("categorical", logits, draws, seed=0, start=i)  # (1, M, L)
        for m in range(draws):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(logits[0], labels[0, m], reduction="sum")
            loss.backward(retain_graph=m < draws - 1)
            for k, p in named:
                sums[k] += p.grad.to(torch.float64) ** 2
    model.zero_grad(set_to_none=True)
    return {k: v / (ids.shape[0] * draws) for k, v in sums.items()}


def func_per_sample(model: nn.Module, ids: torch.Tensor, draws: int, chunk: int) -> dict[str, torch.Tensor]:
    """Î1 by ``torch.func``: per-sequence gradients by ``vmap(grad)``, ``chunk`` sequences at a time."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in model.named_parameters()}
    sums = {k: torch.zeros(p.shape, dtype=torch.float64) for k, p in params.items()}

    def loss(p, sequence, labels):
        logits = functional_call(model, p, (sequence[None],), {}).logits[0]
        return nn.functional.cross_entropy(logits, labels, reduction="sum")

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    labels = sample_labels("categorical", logits, draws, seed=0)  # (N, M, L)
    del logits
    for m in range(draws):
        grads = per_sample(params, ids, labels[:, m])
        for k, g in grads.items():
            sums[k] += (g.to(torch.float64) ** 2).sum(0)
        del grads
    return {k: v / (ids.shape[0] * draws) for k, v in sums.items()}


def cell(m: Measurement, unit: float, draws: int | None = None) -> str:
    if m.status != "ok":
        return f"{m.status} | | |"
    per_draw = "" if draws is None else f"{m.seconds / unit / draws:.2f}×"
    memory = "" if m.peak_bytes is None else f"{m.peak_bytes / GiB:.2f} GiB"
    return f"{m.seconds:.1f} s ({m.seconds / unit:.1f}×) | {per_draw} | {memory} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocabulary", type=int, default=50257)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--func-chunk", type=int, default=2, help="sequences per vmap chunk of torch.func")
    parser.add_argument("--methods", default="fimvar,loop,func", help="comma-separated: fimvar, loop, func")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds per method")
    parser.add_argument("--memory-limit", type=float, default=12.0, help="GiB per method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = build(args)
    ids = torch.randint(0, args.vocabulary, (args.sequences, args.length),
                        generator=torch.Generator().manual_seed(1))
    parameters = sum(p.numel() for p in model.parameters())
    limits = {"time_limit": args.time_limit, "memory_limit": int(args.memory_limit * GiB)}

    def gradient():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1),
                                    reduction="sum").backward()

    before = measure(gradient, device=CPU, repeats=2, **limits)
    model.zero_grad(set_to_none=True)
    print(f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}\n")
    print(f"GPT-2 ({args.layers} layers, width {args.width}, {args.heads} heads, vocabulary "
          f"{args.vocabulary}, tied embeddings; {parameters / 1e6:.1f} M parameters), "
          f"{args.sequences} sequences × {args.length} tokens, M = {args.draws} draws per token\n")
    print("| method | time (× gradient) | per draw | peak memory |")
    print("|---|---|---|---|")
    print(f"| gradient (`loss.backward()`, median of 2, before) | {before.seconds:.2f} s (1×) | | "
          f"{(before.peak_bytes or 0) / GiB:.2f} GiB |", flush=True)
    found = {}

    class Rows(list):
        def append(self, row):  # each row printed as soon as it is measured (a later one may be killed)
            super().append(row)
            name, m, draws = row
            print(f"| {name} | {cell(m, before.seconds, draws)}", flush=True)

    rows = Rows()
    methods = args.methods.split(",")
    if "fimvar" in methods:
        result = {}

        def run_fimvar():
            result["r"] = fimvar.analyze(model, ids, samples=args.draws, bounds=False)

        rows.append(("fimvar `analyze(samples=M, bounds=False)` (sampled path: Î1, v1, input noise, "
                     "standard errors)", measure(run_fimvar, device=CPU, repeats=1, **limits), args.draws))
        if "r" in result:
            found["fimvar"], r = result["r"].i1, result["r"]
            variance, error = r.estimate("variance")
            label, _ = r.estimate("v1")
            share = label / (args.sequences * args.draws) / variance
            print(f"fimvar: path {r.metadata['path']!r}; Var(Î1) summed over the entries {variance:.3e} ± "
                  f"{error:.1e} (standard error); label noise {100 * share:.0f} % of it", flush=True)
    if "loop" in methods:
        result = {}
        rows.append(("batch-size-1 loop, `backward` per draw (Î1 only)",
                     measure(lambda: result.setdefault("i1", hand_loop(model, ids, args.draws)), device=CPU,
                             repeats=1, **limits), args.draws))
        if "i1" in result:
            found["loop"] = result["i1"]
    if "func" in methods:
        result = {}
        rows.append((f"`torch.func` `vmap(grad)`, chunks of {args.func_chunk} (Î1 only)",
                     measure(lambda: result.setdefault("i1", func_per_sample(model, ids, args.draws,
                                                                              args.func_chunk)),
                             device=CPU, repeats=1, **limits), args.draws))
        if "i1" in result:
            found["func"] = result["i1"]
    after = measure(gradient, device=CPU, repeats=2, **limits)
    print(f"\ngradient after the methods: {after.seconds:.2f} s")
    reference = found.get("fimvar")
    for name, values in found.items():
        if name == "fimvar" or reference is None:
            continue
        worst = max(float((values[k] - reference[k]).abs().max() / reference[k].abs().max().clamp_min(1e-300))
                    for k in reference)
        print(f"\nÎ1 of {name} vs fimvar (same draws): largest difference {worst:.1e} of a tensor's "
              "largest entry")


if __name__ == "__main__":
    main()
