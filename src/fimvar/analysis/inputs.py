"""Validation of the model and the data, and iteration over inputs in chunks."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation

import torch
from torch import nn

from fimvar.analysis.packing import is_array as is_numpy
from fimvar.engine.base import default_memory_budget
from fimvar.engine.functional import output_tensor
from fimvar.errors import FimvarError, warn
from fimvar.families import ExponentialFamily
from fimvar.families.positions import Positions

#: modules whose second derivative vanishes almost everywhere ([A], docs/theory.md §2)
PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold)
#: modules that behave differently in training mode
MODE_DEPENDENT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.modules.batchnorm._BatchNorm)


def check_model(model: nn.Module) -> None:
    """Raise unless ``model`` is an ``nn.Module`` whose parameters and buffers hold values (not on
    the ``meta`` device)."""
    if not isinstance(model, nn.Module):
        raise FimvarError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    meta = [name for name, tensor in tensors if tensor.is_meta]
    if meta:
        shown = ", ".join(meta[:3]) + (", …" if len(meta) > 3 else "")
        raise FimvarError(
            f"the model is on the meta device: its tensors ({shown}) have shapes but no values; "
            "build it on a real device, or materialise it first (model.to_empty(device='cpu') and "
            "then model.load_state_dict(...))"
        )


#: units of a memory budget given as a string, in bytes
MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*")


def check_memory_budget(budget: int | str | None) -> int:
    """The memory budget in bytes: ``None`` (the default budget), a positive integer number of
    bytes, or a string with a unit such as ``"2GB"``, ``"512MiB"`` or ``"1.5 GB"`` (B, kB, MB,
    GB, TB: powers of 1000; KiB, MiB, GiB, TiB: powers of 1024)."""
    if budget is None:
        return default_memory_budget()
    hint = ("give a number of bytes (an integer such as 2**31) or a string with a unit such as '2GB' or "
            "'512MiB'")
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        count = int(budget)
    elif isinstance(budget, str):
        match = _MEMORY.fullmatch(budget)
        unit = match.group(2).lower() if match else None
        if unit not in MEMORY_UNITS:
            raise FimvarError(f"memory_budget {budget!r} is not an amount of memory; {hint} (units: B, "
                              "kB, MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024)")
        try:
            count = int(Decimal(match.group(1)) * MEMORY_UNITS[unit])
        except InvalidOperation as error:  # pragma: no cover - the pattern admits only decimals
            raise FimvarError(f"memory_budget {budget!r} is not an amount of memory; {hint}") from error
    else:
        raise FimvarError(f"memory_budget must be an integer number of bytes or a string, got "
                          f"{type(budget).__name__} {budget!r}; {hint}")
    if count < 1:
        raise FimvarError(f"memory_budget must be at least 1 byte, got {budget!r}; {hint}")
    return count


def trainable_parameters(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Names of the parameters to analyse (all that require grad, or the given ones)."""
    if not isinstance(model, nn.Module):
        raise FimvarError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    available = [n for n, p in model.named_parameters() if p.requires_grad]
    if names is None:
        if not available:
            raise FimvarError(
                "the model has no trainable parameters (none requires grad); unfreeze the "
                "parameters to analyse or pass parameters=[...]"
            )
        return available
    names = list(names)
    all_names = dict(model.named_parameters())
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise FimvarError(f"unknown parameters {unknown}; choose among {list(all_names)}")
    if not names:
        raise FimvarError("parameters=[] selects nothing to analyse")
    return names


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry is finite, without a mask of the whole tensor: the sum (one pass) is
    finite exactly when every entry is, unless it overflows — then the entries are checked a slice
    of inputs at a time (``isfinite`` of the whole tensor at once holds temporaries of up to 1.75×
    its size)."""
    if values.numel() == 0 or not (values.is_floating_point() or values.is_complex()):
        return True
    if bool(torch.isfinite(values.sum())):
        return True
    if values.dim() == 0 or values.numel() <= FINITE_SLICE_ELEMENTS:
        return bool(torch.isfinite(values).all())
    rows = max(1, FINITE_SLICE_ELEMENTS // max(1, values[0].numel()))
    return all(bool(torch.isfinite(piece).all()) for piece in values.split(rows))


def check_parameters_finite(model: nn.Module, names: Iterable[str]) -> None:
    """Raise when a parameter or buffer holds NaN or Inf."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    bad = [n for n, t in named.items() if t.is_floating_point() and not all_finite(t.detach())]
    if bad:
        raise FimvarError(f"the model's parameters or buffers {bad} contain NaN or Inf; fix the weights")


def check_result_finite(quantities: Mapping[str, Mapping[str, torch.Tensor | float | None]],
                        owner: str = "parameter") -> None:
    """Raise a :class:`FimvarError` naming the owner (a parameter, module, group or layer) and the
    quantity of the first value of a result that is NaN or Inf: a numerical failure (overflow
    in float64) that fimvar reports instead of returning it.

    Args:
        quantities: ``{quantity: {owner name: tensor or number}}``; ``None`` values are skipped.
        owner: what the names of the inner dicts are (``parameter``, ``module``, ``group``…).
    """
    for quantity, values in quantities.items():
        for name, value in values.items():
            if value is None:
                continue
            finite = all_finite(value) if isinstance(value, torch.Tensor) \
                else math.isfinite(float(value))
            if not finite:
                raise FimvarError(
                    f"numerical failure: the {quantity} of {owner} {name!r} is NaN or Inf (it "
                    "overflows float64); the model's outputs or derivatives are too large for this "
                    "family: rescale the inputs or the weights, or analyse other parameters"
                )


def check_derivatives_finite(name: str, sums: dict) -> None:
    """Raise when an engine produced NaN or Inf derivatives. NaN and Inf propagate into the
    chunk's sums of ``uᵀIu`` and ``wᵀIw`` (without ``w``: ``uᵀIu`` alone), so those (one value
    per parameter) are checked instead of the much larger per-input derivatives."""
    if not (all_finite(sums["fisher"]) and ("v2" not in sums or all_finite(sums["v2"]))):
        raise FimvarError(
            f"the derivatives of parameter {name!r} are NaN or Inf for some inputs; check "
            "the weights and inputs for overflow"
        )


def warn_piecewise_linear(model: nn.Module) -> bool:
    """Warn when the model has ReLU-like activations; returns whether it has."""
    found = sorted({type(m).__name__ for m in model.modules() if isinstance(m, PIECEWISE_LINEAR)})
    if found:
        warn(
            f"the model uses piecewise-linear activations ({', '.join(found)}): their second "
            "derivative is 0 almost everywhere, so Î2's label variance is then 0 in every layer "
            "except through smooth parts and Î2 equals the Gauss-Newton term ([A], docs/theory.md §2)"
        )
    return bool(found)


#: floating dtypes whose derivatives are too coarse for the variances (warned about)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def model_precision(model: nn.Module) -> str | None:
    """The floating dtype the model computes in (``"float32"``, ``"bfloat16"``…; ``None`` when it
    has no floating tensor), warning once per call when it is float16 or bfloat16."""
    try:
        dtype = model_reference(model).dtype
    except FimvarError:
        return None
    name = str(dtype).removeprefix("torch.")
    if dtype in LOW_PRECISION:
        warn(f"the model computes in {name} (about {_digits(dtype)} significant digits): its "
             "derivatives, and so the Fisher, Î1, Î2 and their variances, carry that precision although "
             "fimvar sums them in float64 (bfloat16 was 1.2 % off float32 on a small network); for "
             "accurate numbers analyse a float32 copy, e.g. fimvar.analyze(copy.deepcopy(model).float(), "
             "x.float(), ...), and convert the result with result.fisher_as(model)")
    return name


def _digits(dtype: torch.dtype) -> int:
    """Decimal significant digits of a floating dtype (2 for bfloat16, 3 for float16)."""
    return max(1, round(-math.log10(torch.finfo(dtype).eps)))


def model_reference(model: nn.Module) -> torch.Tensor:
    """A floating parameter or buffer that fixes the model's device and dtype."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor
    raise FimvarError("the model has no floating-point parameters or buffers")


#: elements of one slice of :func:`all_finite` (its temporaries stay a few MB whatever the data)
FINITE_SLICE_ELEMENTS = 1 << 20


def check_inputs(model: nn.Module, x: torch.Tensor) -> None:
    """One clear error for inputs the model cannot take."""
    if not isinstance(x, torch.Tensor):
        raise FimvarError(f"inputs must be tensors, got {type(x).__name__}{_tensor_hint(x)}")
    if x.dim() == 0:
        raise FimvarError("the inputs are a 0-d tensor (one number); give a batch whose first "
                          "dimension counts the inputs, e.g. x[None] or x.reshape(-1, 1)")
    if x.shape[0] == 0:
        raise FimvarError("the data is empty: pass at least one input (first dimension = samples)")
    reference = model_reference(model)
    if x.device != reference.device:
        raise FimvarError(
            f"the inputs are on {x.device} but the model is on {reference.device}; move one of "
            f"them (e.g. x.to('{reference.device}'))"
        )
    if x.is_floating_point():
        if x.dtype != reference.dtype:
            raise FimvarError(
                f"the inputs are {x.dtype} but the model is {reference.dtype}; convert one of "
                f"them (x.to({reference.dtype}) or model.to({x.dtype}))"
            )
        if not all_finite(x):
            raise FimvarError("the inputs contain NaN or Inf; clean or impute the data first")
    elif not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
        raise FimvarError(
            f"the inputs are integers ({x.dtype}) but the model has no embedding layer; convert "
            "them to floating point (x.float())"
        )


def _tensor_hint(value) -> str:
    """How to turn a non-tensor into a tensor, for error messages."""
    module = type(value).__module__ or ""
    if module.startswith("numpy") or module.startswith("pandas"):
        return "; convert it with torch.as_tensor(...)"
    return ""


def check_labels(x: torch.Tensor, labels, where: str = "x") -> None:
    """Raise unless ``labels`` (or ``None``) is a tensor with one entry per input of ``x``
    (``where`` names ``x`` in the message)."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise FimvarError(f"labels must be a tensor, got {type(labels).__name__}{_tensor_hint(labels)}")
    if labels.dim() == 0:
        raise FimvarError(
            "labels are a 0-d tensor (one number); give one label per input, of shape (n,) or (n, T), "
            f"with n = {x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else 'the number of inputs'}"
        )
    if isinstance(x, torch.Tensor) and x.dim() and labels.shape[0] != x.shape[0]:
        raise FimvarError(f"{where} has {x.shape[0]} inputs but labels has {labels.shape[0]}; they must "
                          "match")


def _looks_like_pair(data) -> bool:
    """Whether ``data`` is an ``(inputs, labels)`` pair given in place of the inputs: a tuple or
    list of two tensors with the same number of rows that cannot be two batches of inputs (their
    other dimensions or their dtypes differ)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    x, y = data
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.dim() == 0 or y.dim() == 0:
        return False
    return x.shape[0] == y.shape[0] and (x.shape[1:] != y.shape[1:] or x.dtype != y.dtype)


def _numpy_tensor(value, what: str, hint: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, RuntimeError) as error:
        raise FimvarError(f"cannot convert the NumPy {what} ({value.dtype}) to a tensor: {error}; give "
                          f"{hint}") from error


def numpy_inputs(value, like: torch.Tensor | None):
    """A NumPy array of inputs as a tensor on ``like``'s device, floating arrays in ``like``'s
    dtype (the conversion a user would write: ``torch.as_tensor(x, dtype=model_dtype)``); other
    values unchanged. Without ``like`` (a model with no floating tensor) only ``torch.as_tensor``."""
    if not is_numpy(value):
        return value
    tensor = _numpy_tensor(value, "inputs", "numbers (a float or integer array)")
    if like is None:
        return tensor
    return tensor.to(device=like.device, dtype=like.dtype if tensor.is_floating_point() else None)


def numpy_labels(value, like: torch.Tensor | None):
    """NumPy labels as a tensor (their dtype kept) on ``like``'s device; other values unchanged."""
    if not is_numpy(value):
        return value
    tensor = _numpy_tensor(value, "labels", "class indices or numbers")
    return tensor if like is None else tensor.to(like.device)


#: how to give data labels with an iterable of batches
ITERABLE_LABELS = ("with an iterable of batches (e.g. a DataLoader), the labels come with the batches: "
                   "let it yield (inputs, labels) pairs, e.g. DataLoader(TensorDataset(x, y)), instead "
                   "of passing labels=")


def batches(
    data: torch.Tensor | Iterable, labels: torch.Tensor | Iterable | None,
    like: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` batches from a tensor, an iterable of tensors, of 1-tuples ``(x,)``
    (a ``DataLoader`` of a ``TensorDataset(x)``), or of ``(x, y)`` pairs (e.g. a ``DataLoader`` of
    a ``TensorDataset(x, y)``). NumPy arrays become tensors on ``like``'s device (floating inputs
    in its dtype, :func:`numpy_inputs`).

    ``labels`` goes with a tensor ``x``; with an iterable, it may only be an iterable of label
    tensors, one per batch of inputs-only batches.
    """
    if data is None:
        raise FimvarError("x (the inputs) is None; pass a tensor of inputs (first dimension = samples) "
                          "or an iterable of batches")
    data, labels = numpy_inputs(data, like), numpy_labels(labels, like)
    if isinstance(data, torch.Tensor):
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise FimvarError("when x is a tensor, labels must be a tensor too"
                              + _tensor_hint(labels))
        check_labels(data, labels)
        yield data, labels
        return
    if _looks_like_pair(data):
        raise FimvarError(
            "x is a pair of tensors (inputs, labels), not inputs; pass the inputs as x and the labels "
            "as labels=, e.g. fimvar.analyze(model, x, labels=y) (or an iterable of (inputs, labels) "
            "batches such as a DataLoader)"
        )
    if _tensor_hint(data) or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise FimvarError(f"x must be a tensor of inputs or an iterable of batches, got "
                          f"{type(data).__name__}{_tensor_hint(data)}")
    if isinstance(labels, torch.Tensor):
        raise FimvarError(f"labels= is a tensor but x is an iterable of batches; {ITERABLE_LABELS}")
    label_iter = iter(labels) if labels is not None else None
    for item in data:
        if isinstance(item, (tuple, list)):
            if len(item) == 1:  # DataLoader(TensorDataset(x)): inputs only
                x, y = item[0], None
            elif len(item) == 2:
                x, y = item
            else:
                raise FimvarError(
                    f"a batch is a {type(item).__name__} of {len(item)} items; give batches of inputs, "
                    "1-tuples (inputs,) or (inputs, labels) pairs (a model with several positional "
                    "inputs takes a tuple of exactly that many tensors)")
        else:
            x, y = item, None
        x, y = numpy_inputs(x, like), numpy_labels(y, like)
        if label_iter is not None:
            if y is not None:
                raise FimvarError("the batches are (inputs, labels) pairs and labels= is given too; drop "
                                  "labels= (the labels of the batches are used)")
            try:
                y = numpy_labels(next(label_iter), like)
            except StopIteration:
                raise FimvarError("labels ran out before the inputs did") from None
        if y is not None and isinstance(x, torch.Tensor) and x.dim():
            check_labels(x, y, "a batch")
        yield x, y


def check_samples(samples: int) -> int:
    """The number of label draws per input: an integer ≥ 1 (a Python or NumPy integer, not a bool)."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise FimvarError(f"samples (label draws per input) must be an integer ≥ 1, got {samples!r}")
    return int(samples)


def check_probes(probes: int) -> int:
    """The number of Rademacher probes per label draw of Hutchinson's estimate: an integer ≥ 1."""
    if isinstance(probes, bool) or not isinstance(probes, numbers.Integral) or probes < 1:
        raise FimvarError(f"probes (Rademacher probes per label draw) must be an integer ≥ 1, got {probes!r}")
    return int(probes)


def model_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model on a batch and return its outputs as ``(n, T)``, with clear errors."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # the model's own error, re-raised with context
        raise FimvarError(
            f"the model failed on inputs of shape {tuple(x.shape)}: {error}{_shape_hint(model, x)}"
        ) from error
    out = output_tensor(out)
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() < 2:
        raise FimvarError(
            f"the model returns shape {tuple(out.shape)}; fimvar needs (batch, outputs) or "
            "(batch, positions, outputs)"
        )
    return out


#: convolutions, which take images (or sequences / volumes) rather than flat vectors
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _shape_hint(model: nn.Module, x: torch.Tensor) -> str:
    """For flat ``(n, d)`` inputs to a model whose first layer with parameters is a convolution:
    how to give each input its shape (with a guess for square images)."""
    if x.dim() != 2:
        return ""
    first = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
    if not isinstance(first, CONVOLUTIONS):
        return ""
    spatial = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)]
    channels, features = first.in_channels, x.shape[1]
    side = round((features / channels) ** (1 / spatial)) if features % channels == 0 else 0
    if side and channels * side**spatial == features:
        shape = (channels,) + (side,) * spatial
    else:
        shape = (channels,) + ("…",) * spatial
    text = ",".join(map(str, shape))
    python = ", ".join(map(str, shape))
    takes = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}[spatial]
    return (f"; the inputs are flat vectors of {features} features but the model starts with a "
            f"{type(first).__name__}, which takes inputs of shape {takes}: "
            f"reshape each input (fimvar analyze: --input-shape {text}; Python: x.reshape(len(x), {python}))")


def output_family(model: nn.Module, x: torch.Tensor, family: ExponentialFamily
                  ) -> tuple[ExponentialFamily, torch.Tensor]:
    """The family of the model's whole output and the outputs, from one forward pass: ``family``
    for ``(n, T)`` outputs, and for ``(n, L, T)`` (or ``(n, L1, L2, …, T)``) outputs one independent
    ``family`` output per position (:class:`~fimvar.families.positions.Positions`, docs/theory.md
    §13); the outputs as :func:`family_outputs` gives them."""
    outputs = model_outputs(model, x)
    if outputs.dim() > 2 and not isinstance(family, Positions):
        family = Positions(family, math.prod(outputs.shape[1:-1]))
    return family, _checked_outputs(outputs, family)


def family_outputs(model: nn.Module, x: torch.Tensor, family) -> torch.Tensor:
    """:func:`model_outputs` in float64 as ``(n, T)`` (per-position outputs flattened), checked
    against ``family`` (an :class:`~fimvar.families.ExponentialFamily`: output width, finite
    values)."""
    return _checked_outputs(model_outputs(model, x), family)


def _checked_outputs(outputs: torch.Tensor, family) -> torch.Tensor:
    outputs = outputs.to(torch.float64)
    if outputs.dim() > 2 and isinstance(family, Positions):
        outputs = outputs.reshape(outputs.shape[0], -1)
    elif outputs.dim() > 2:
        raise FimvarError(
            f"the model returns shape {tuple(outputs.shape)}: one output per position; this mode "
            "needs (batch, outputs) and does not analyse per-position outputs: use fimvar.analyze or "
            "fimvar.fisher_diagonal, which treat each position as an independent output (docs/theory.md "
            "§13). Do not flatten the positions into the outputs: (batch, positions·outputs) would be "
            "one distribution over all positions at once (one softmax over L·V classes), another model "
            "with another Fisher")
    family.check_outputs(outputs)
    return outputs


def model_mode_context(model: nn.Module):
    """Context manager: evaluate a model in eval mode (Dropout/BatchNorm deterministic) and
    restore its mode after; warns when the mode had to change."""
    return _EvalMode(model)


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {}

    def __enter__(self):
        self.modes = {m: m.training for m in self.model.modules()}
        if any(m.training for m in self.model.modules() if isinstance(m, MODE_DEPENDENT)):
            warn(
                "the model is in training mode and has Dropout/BatchNorm; fimvar analyses it "
                "in eval mode (deterministic outputs) and restores the mode afterwards"
            )
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for module, mode in self.modes.items():
            module.training = mode
        return False
