"""Inputs given as keyword or positional arguments (a ``transformers`` batch ``{"input_ids": …,
"attention_mask": …}``, or a tuple for a forward with several inputs).

fimvar's driver, engines and checkpoints work on one tensor per batch whose first dimension
counts the inputs. Several argument tensors with the same first dimension are *packed* into one
such tensor — each flattened to ``(n, k_i)`` and joined along dimension 1, in one dtype that holds
every value exactly (int64 for integer arguments; the floating arguments' dtype otherwise) — and
while fimvar runs, the model's ``forward`` unpacks them: each argument gets back its shape and
dtype and the original forward is called with it. Differentiation is with respect to the
parameters only, so the packing changes no number.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fimvar.errors import FimvarError


@dataclass(frozen=True)
class Packing:
    """How the arguments of one batch are laid out in the packed tensor."""

    keys: tuple  # argument names (keyword arguments) or None (positional)
    shapes: tuple[tuple[int, ...], ...]  # per-input shape of each argument
    dtypes: tuple[torch.dtype, ...]
    dtype: torch.dtype  # of the packed tensor

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    @classmethod
    def of(cls, arguments: Mapping | tuple | list) -> Packing:
        keys = tuple(arguments) if isinstance(arguments, Mapping) else None
        values = list(arguments.values()) if isinstance(arguments, Mapping) else list(arguments)
        names = [repr(k) for k in keys] if keys is not None else [f"#{i}" for i in range(len(values))]
        if not values:
            raise FimvarError("the inputs are an empty dict or tuple; give the model's input tensors")
        for name, value in zip(names, values, strict=True):
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                raise FimvarError(
                    f"input argument {name} is {type(value).__name__}"
                    f"{' (0-d)' if isinstance(value, torch.Tensor) else ''}; every argument must be a "
                    "tensor whose first dimension counts the inputs (fix other options in a wrapper "
                    "around the model)")
        counts = {value.shape[0] for value in values}
        if len(counts) != 1:
            shown = ", ".join(f"{n}: {v.shape[0]}" for n, v in zip(names, values, strict=True))
            raise FimvarError(f"the input arguments have different numbers of inputs ({shown})")
        floating = {value.dtype for value in values if value.is_floating_point()}
        if len(floating) > 1:
            shown = sorted(map(str, floating))
            raise FimvarError(f"the floating-point input arguments have different dtypes {shown}; "
                              "convert them to the model's dtype")
        dtype = floating.pop() if floating else torch.int64
        if dtype != torch.int64:
            limit = 2 ** (round(-math.log2(torch.finfo(dtype).eps)) + 1)  # integers held exactly
            for name, value in zip(names, values, strict=True):
                if not value.is_floating_point() and value.numel() and int(value.abs().max()) > limit:
                    raise FimvarError(f"input argument {name} holds integers above {limit}, which {dtype} "
                                      "cannot hold exactly next to the floating-point arguments")
        return cls(keys, tuple(tuple(v.shape[1:]) for v in values), tuple(v.dtype for v in values), dtype)

    def pack(self, arguments: Mapping | tuple | list) -> torch.Tensor:
        """The arguments of one batch as one ``(n, Σ k_i)`` tensor (refused if laid out otherwise)."""
        other = Packing.of(arguments)
        if other != self:
            raise FimvarError(
                "a batch's input arguments differ from the first batch's (names, shapes per input or "
                "dtypes); every batch must have the same layout (pad sequences to one length)")
        values = list(arguments.values()) if isinstance(arguments, Mapping) else list(arguments)
        n = values[0].shape[0]
        return torch.cat([v.reshape(n, -1).to(self.dtype) for v in values], 1)

    def unpack(self, packed: torch.Tensor):
        """The arguments back from a packed ``(n, Σ k_i)`` tensor: a dict or a tuple."""
        pieces = torch.split(packed, self.sizes, dim=-1)
        values = [p.reshape(*packed.shape[:-1], *shape).to(dtype)
                  for p, shape, dtype in zip(pieces, self.shapes, self.dtypes, strict=True)]
        return dict(zip(self.keys, values, strict=True)) if self.keys is not None else tuple(values)


def positional_arity(model: nn.Module) -> int:
    """How many positional tensors the model's forward requires (parameters without defaults)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in signature.parameters.values() if p.kind in kinds and p.default is p.empty)


#: keys of a dict batch read as the data labels when the model's forward does not take them
LABEL_KEYS = ("labels", "label")


def forward_keywords(model: nn.Module) -> list[str] | None:
    """The names the model's forward takes as keyword arguments (``None``: any, ``**kwargs``)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return [name for name, p in signature.parameters.items() if p.kind in kinds]


def split_labels(accepted: list[str] | None, arguments: Mapping) -> tuple[Mapping, torch.Tensor | None]:
    """A dict batch without the entry that holds its data labels, and those labels: the key
    ``labels`` or ``label`` when the model's forward does not take it (``accepted``: the names
    :func:`forward_keywords` gives; a forward that takes it, such as a ``transformers`` model's,
    gets it as an argument, and no data labels are read). Any other key the forward does not take
    is refused with the forward's arguments named."""
    if accepted is None:
        return arguments, None
    extra = [key for key in arguments if key not in accepted]
    found = [key for key in extra if key in LABEL_KEYS]
    others = [key for key in extra if key not in LABEL_KEYS]
    if others or len(found) > 1:
        shown = ", ".join(repr(k) for k in (others or found))
        raise FimvarError(
            f"the dict batch has the keys {shown}, which the model's forward({', '.join(accepted)}) does "
            "not take; fimvar passes each entry of a dict batch to forward as a keyword argument: rename "
            "the entries after forward's arguments or drop them (one key 'labels' or 'label' that forward "
            "does not take is read as the data labels)")
    if not found:
        return arguments, None
    key = found[0]
    return {k: v for k, v in arguments.items() if k != key}, arguments[key]


def takes_arguments(model: nn.Module | None, x, arity: int | None = None) -> bool:
    """Whether ``x`` is a set of arguments to pack: a dict, or a tuple/list whose length is the
    number of positional tensors the forward requires (≥ 2; ``arity``, or read from ``model``)."""
    if isinstance(x, Mapping):
        return True
    if not (isinstance(x, (tuple, list)) and len(x) >= 2):
        return False
    arity = positional_arity(model) if arity is None else arity
    return all(isinstance(v, torch.Tensor) or is_array(v) for v in x) and arity == len(x)


def is_array(value) -> bool:
    """Whether ``value`` is a NumPy array (without importing NumPy)."""
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


@contextlib.contextmanager
def packed_forward(model: nn.Module, packing: Packing | None) -> Iterator[None]:
    """Within the context the model takes the packed tensor of :class:`Packing` (no-op for
    ``None``); its own forward is restored on exit."""
    if packing is None:
        yield
        return
    had_own = "forward" in vars(model)
    original = model.forward

    def forward(self, packed: torch.Tensor):
        arguments = packing.unpack(packed)
        return original(**arguments) if isinstance(arguments, dict) else original(*arguments)

    model.forward = types.MethodType(forward, model)
    try:
        yield
    finally:
        if had_own:
            model.forward = original
        else:
            del model.forward
