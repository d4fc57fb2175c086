"""Which analysis :func:`fimvar.analyze` runs (docs/theory.md §17.3): the exact one, whose cost is
one backward pass per output column and input, or the sampled one (:mod:`fimvar.analysis.sampled`),
one backward pass per label draw whatever the number of columns.

The number of columns ``C`` is the width of one input's output (positions times classes for a
language model: ``L·V``), read from one forward pass on the first input. ``analyze`` takes the
exact path up to :data:`EXACT_COLUMNS_UP_TO` columns and the sampled path above, where the exact
one would cost hundreds of gradients per input.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from fimvar.analysis.inputs import batches, numpy_inputs, output_family
from fimvar.analysis.packing import packed_forward
from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily

EXACT_COLUMNS_UP_TO = 1024
PATHS = ("auto", "exact", "sampled")


def output_columns(model: nn.Module, data, family: ExponentialFamily):
    """The number of output columns of one input of ``data`` (one forward pass on its first input,
    without gradients) and ``data`` to analyse (a one-pass iterator gets its first batch put back
    in front). ``None`` when the forward fails: the analysis then reports that failure itself."""
    from fimvar.analysis.driver import floating_reference, pack_arguments

    probe = data
    if isinstance(data, Iterator):  # not a tensor, a dict or a DataLoader: those can be read again
        try:
            first = next(data)
        except StopIteration:
            return None, data
        data = itertools.chain([first], data)
        probe = [first]
    like = floating_reference(model)
    try:
        packed, packing, _ = pack_arguments(model, numpy_inputs(probe, like), None, like)
        for x, _ in batches(packed, None, like):
            if x.shape[0] == 0:
                return None, data
            with packed_forward(model, packing), torch.no_grad():
                _, outputs = output_family(model, x[:1], family)
            return int(outputs.shape[1]), data
    except Exception:  # noqa: BLE001 — the analysis that runs next reports it, with its own message
        return None, data
    return None, data


def choose_path(path: str, engine: str, columns: int | None) -> tuple[str, str]:
    """``("exact" | "sampled", why)`` for ``analyze(path=..., engine=...)`` on a model with
    ``columns`` output columns per input."""
    if path not in PATHS:
        raise FimvarError(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if path == "exact":
        return "exact", "path='exact' was given"
    if path == "sampled":
        if engine not in ("auto", "graph"):
            raise FimvarError(f"the sampled path runs on the graph engine; engine={engine!r} was given: "
                              "leave engine='auto' or take path='exact'")
        return "sampled", "path='sampled' was given"
    if engine != "auto" or columns is None or columns <= EXACT_COLUMNS_UP_TO:
        return "exact", (f"{columns} output columns per input (exact up to {EXACT_COLUMNS_UP_TO})"
                         if columns is not None else "the output width is read by the exact analysis")
    return "sampled", (f"{columns} output columns per input: the exact path needs one backward pass per "
                       f"column and input (above {EXACT_COLUMNS_UP_TO} analyze samples the labels instead; "
                       "path='exact' forces the exact path)")
