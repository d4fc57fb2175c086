"""Validation of the model and the data, and iteration over inputs in chunks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from fimvar.errors import FimvarError

#: modules whose second derivative vanishes almost everywhere ([A], docs/theory.md §2)
PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold)
#: modules that behave differently in training mode
MODE_DEPENDENT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.modules.batchnorm._BatchNorm)


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


def check_parameters_finite(model: nn.Module, names: Iterable[str]) -> None:
    """Raise when a parameter or buffer holds NaN or Inf."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    bad = [n for n, t in named.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FimvarError(f"the model's parameters or buffers {bad} contain NaN or Inf; fix the weights")


def check_derivatives_finite(name: str, sums: dict) -> None:
    """Raise when an engine produced NaN or Inf derivatives. NaN and Inf propagate into the
    chunk's sums of ``uᵀIu`` and ``wᵀIw``, so those (one value per parameter) are checked
    instead of the much larger per-input derivatives."""
    if not (torch.isfinite(sums["fisher"]).all() and torch.isfinite(sums["v2"]).all()):
        raise FimvarError(
            f"the derivatives of parameter {name!r} are NaN or Inf for some inputs; check "
            "the weights and inputs for overflow"
        )


def warn_piecewise_linear(model: nn.Module) -> bool:
    """Warn when the model has ReLU-like activations; returns whether it has."""
    found = sorted({type(m).__name__ for m in model.modules() if isinstance(m, PIECEWISE_LINEAR)})
    if found:
        warnings.warn(
            f"the model uses piecewise-linear activations ({', '.join(found)}): their second "
            "derivative is 0 almost everywhere, so Î2's label variance is then 0 in every layer "
            "except through smooth parts and Î2 equals the Gauss-Newton term ([A], docs/theory.md §2)",
            stacklevel=3,
        )
    return bool(found)


def model_reference(model: nn.Module) -> torch.Tensor:
    """A floating parameter or buffer that fixes the model's device and dtype."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor
    raise FimvarError("the model has no floating-point parameters or buffers")


def check_inputs(model: nn.Module, x: torch.Tensor) -> None:
    """One clear error for inputs the model cannot take."""
    if not isinstance(x, torch.Tensor):
        raise FimvarError(f"inputs must be tensors, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
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
        if not torch.isfinite(x).all():
            raise FimvarError("the inputs contain NaN or Inf; clean or impute the data first")
    elif not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
        raise FimvarError(
            f"the inputs are integers ({x.dtype}) but the model has no embedding layer; convert "
            "them to floating point (x.float())"
        )


def batches(
    data: torch.Tensor | Iterable, labels: torch.Tensor | Iterable | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` batches from a tensor, an iterable of tensors, or an iterable of
    ``(x, y)`` pairs (e.g. a ``DataLoader``)."""
    if isinstance(data, torch.Tensor):
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise FimvarError("when x is a tensor, labels must be a tensor too")
        if labels is not None and labels.shape[0] != data.shape[0]:
            raise FimvarError(
                f"x has {data.shape[0]} inputs but labels has {labels.shape[0]}; they must match"
            )
        yield data, labels
        return
    label_iter = iter(labels) if labels is not None else None
    for item in data:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise FimvarError("batches given as tuples must be (inputs, labels) pairs")
            x, y = item
        else:
            x, y = item, None
        if label_iter is not None:
            try:
                y = next(label_iter)
            except StopIteration:
                raise FimvarError("labels ran out before the inputs did") from None
        if y is not None and isinstance(y, torch.Tensor) and y.shape[0] != x.shape[0]:
            raise FimvarError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
        yield x, y


def check_samples(samples: int) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise FimvarError(f"samples (label draws per input) must be an integer ≥ 1, got {samples!r}")
    return samples


def model_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model on a batch and return its outputs as ``(n, T)``, with clear errors."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # the model's own error, re-raised with context
        raise FimvarError(
            f"the model failed on inputs of shape {tuple(x.shape)}: {error}"
        ) from error
    if not isinstance(out, torch.Tensor):
        raise FimvarError(f"the model must return a tensor, got {type(out).__name__}")
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2:
        raise FimvarError(
            f"the model returns shape {tuple(out.shape)}; fimvar needs (batch, outputs) — "
            "flatten the output in the model"
        )
    return out


def family_outputs(model: nn.Module, x: torch.Tensor, family) -> torch.Tensor:
    """:func:`model_outputs` in float64, checked against ``family`` (an
    :class:`~fimvar.families.ExponentialFamily`: output width, finite values)."""
    outputs = model_outputs(model, x).to(torch.float64)
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
            warnings.warn(
                "the model is in training mode and has Dropout/BatchNorm; fimvar analyses it "
                "in eval mode (deterministic outputs) and restores the mode afterwards",
                stacklevel=3,
            )
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for module, mode in self.modes.items():
            module.training = mode
        return False
