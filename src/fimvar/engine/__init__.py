"""Engines: back ends that compute per-sample output derivatives (see :mod:`.base`)."""

from __future__ import annotations

from torch import nn

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.errors import FimvarError

ENGINES: dict[str, type[Engine]] = {"autodiff": AutodiffEngine}


def make_engine(name: str, model: nn.Module, parameter_names: list[str], memory_budget: int) -> Engine:
    """Build the engine ``name`` (``auto`` picks the fastest one that supports the model)."""
    if name == "auto":
        name = "autodiff"
    if name not in ENGINES:
        raise FimvarError(f"unknown engine {name!r}; use 'auto' or one of {', '.join(ENGINES)}")
    return ENGINES[name](model, parameter_names, memory_budget)


__all__ = ["ENGINES", "AutodiffEngine", "Engine", "ParameterDerivatives", "make_engine"]
