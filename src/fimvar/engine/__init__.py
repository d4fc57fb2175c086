"""Engines: back ends that compute per-sample output derivatives (see :mod:`.base`).

``auto`` picks the structured engine when every module of the model has a rule; otherwise the
graph engine where only first derivatives are needed (the exact Fisher) and the autodiff engine
where second derivatives are (with one warning naming the module that is not supported).
"""

from __future__ import annotations

import warnings

from torch import nn

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.graph import GraphEngine
from fimvar.engine.structured import StructuredEngine, unsupported_reason
from fimvar.errors import FimvarError

ENGINES: dict[str, type[Engine]] = {"autodiff": AutodiffEngine, "structured": StructuredEngine,
                                    "graph": GraphEngine}


def make_engine(name: str, model: nn.Module, parameter_names: list[str], memory_budget: int,
                second: bool = True) -> Engine:
    """Build the engine ``name``. ``auto`` picks the fastest one that supports the model: the
    structured engine, else (first derivatives only, ``second=False``) the graph engine, else
    the autodiff engine."""
    if name == "auto":
        reason = unsupported_reason(model)
        if reason is None:
            name = "structured"
        elif not second:
            name = "graph"
        else:
            warnings.warn(f"engine='auto': the structured engine does not support {reason}; "
                          "using the autodiff engine (exact, slower)", stacklevel=3)
            name = "autodiff"
    if name not in ENGINES:
        raise FimvarError(f"unknown engine {name!r}; use 'auto' or one of {', '.join(ENGINES)}")
    if name == "graph" and second:
        raise FimvarError("engine='graph' computes first derivatives only (the exact Fisher: "
                          "fimvar.fisher_diagonal); this analysis needs second derivatives: use "
                          "engine='auto', 'structured' or 'autodiff'")
    return ENGINES[name](model, parameter_names, memory_budget)


__all__ = ["ENGINES", "AutodiffEngine", "Engine", "GraphEngine", "ParameterDerivatives",
           "StructuredEngine", "make_engine"]
