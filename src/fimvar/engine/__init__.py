"""Engines: back ends that compute per-sample output derivatives (see :mod:`.base`).

``auto`` picks the structured engine when every module of the model has a rule, and the
autodiff engine otherwise (with one warning naming the module that is not supported).
"""

from __future__ import annotations

import warnings

from torch import nn

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.structured import StructuredEngine, unsupported_reason
from fimvar.errors import FimvarError

ENGINES: dict[str, type[Engine]] = {"autodiff": AutodiffEngine, "structured": StructuredEngine}


def make_engine(name: str, model: nn.Module, parameter_names: list[str], memory_budget: int) -> Engine:
    """Build the engine ``name`` (``auto`` picks the fastest one that supports the model)."""
    if name == "auto":
        reason = unsupported_reason(model)
        if reason is None:
            name = "structured"
        else:
            warnings.warn(f"engine='auto': the structured engine does not support {reason}; "
                          "using the autodiff engine (exact, slower)", stacklevel=3)
            name = "autodiff"
    if name not in ENGINES:
        raise FimvarError(f"unknown engine {name!r}; use 'auto' or one of {', '.join(ENGINES)}")
    return ENGINES[name](model, parameter_names, memory_budget)


__all__ = ["ENGINES", "AutodiffEngine", "Engine", "ParameterDerivatives", "StructuredEngine",
           "make_engine"]
