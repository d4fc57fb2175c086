"""Derivatives of the outputs with respect to hidden representations (module outputs), and the
inputs of chosen modules, for the hidden-layer Fisher and [A]'s weight-norm bounds.

``B_l = ∂h/∂h_l`` is obtained by reverse-mode differentiation (``torch.func``) with respect to a
zero perturbation added to the module's output by a forward hook (docs/theory.md §6).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import jacrev, vmap

from fimvar.engine.functional import differentiable
from fimvar.errors import FimvarError


def named_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``, with one clear error when there is none."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise FimvarError(f"unknown module {name!r}; choose among {[n for n in modules if n]}")
    return modules[name]


def output_shape(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Size:
    """Per-input shape of ``module``'s output when ``model`` runs on ``x``."""
    captured = {}

    def hook(_, __, output):
        if not isinstance(output, torch.Tensor):
            raise FimvarError(f"module {type(module).__name__} does not return a single tensor")
        captured["shape"] = output.shape[1:]

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    return captured["shape"]


def output_jacobians(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``∂h/∂h_l`` for every named module: ``(n, T, *shape_l)`` per module, float64."""
    out = {}
    for name in names:
        module = named_module(model, name)
        shape = output_shape(model, module, x)

        def perturbed(delta: torch.Tensor, x1: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
            handle = module.register_forward_hook(lambda _, __, output: output + delta)
            try:
                return model(x1.unsqueeze(0)).reshape(-1)
            finally:
                handle.remove()

        zero = torch.zeros(shape, dtype=x.dtype if x.is_floating_point() else torch.float32,
                           device=x.device)
        with torch.no_grad(), differentiable(model):  # torch.func differentiates inside
            out[name] = vmap(jacrev(perturbed), in_dims=(None, 0))(zero, x).to(torch.float64)
    return out


@contextmanager
def captured_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: while it is open, every forward call of the named modules stores its
    (first) input in the yielded dict, by name."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(
        lambda mod, args, out, name=n: inputs.__setitem__(name, args[0].detach()))
        for n, m in modules.items()]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()
