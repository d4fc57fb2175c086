"""Engines: back ends that compute per-sample output derivatives (see :mod:`.base`).

``auto`` picks the structured engine when every module of the model has a rule; otherwise the
graph engine where only first derivatives are needed (the exact Fisher); where second
derivatives are too, the autodiff engine (exact) for models of at most
:data:`EXACT_SECOND_PARAMETERS` selected parameters and the graph engine with probes (second-order
quantities estimated without bias, docs/theory.md §14.1) beyond, with one warning that says which
and why.
"""

from __future__ import annotations

from torch import nn

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.graph import GraphEngine
from fimvar.engine.structured import StructuredEngine, unsupported_reason
from fimvar.errors import FimvarError, warn

ENGINES: dict[str, type[Engine]] = {"autodiff": AutodiffEngine, "structured": StructuredEngine,
                                    "graph": GraphEngine}


#: with second derivatives and no structured rules, ``auto`` computes them exactly (autodiff
#: engine: T reverse passes per parameter entry and input) up to this many selected parameters
EXACT_SECOND_PARAMETERS = 20_000


def make_engine(name: str, model: nn.Module, parameter_names: list[str], memory_budget: int,
                second: bool = True) -> Engine:
    """Build the engine ``name``. ``auto`` picks the fastest one that supports the model: the
    structured engine; else, with first derivatives only (``second=False``), the graph engine;
    else the autodiff engine (exact) up to :data:`EXACT_SECOND_PARAMETERS` parameters and the
    graph engine with probes beyond. ``graph`` with ``second=True`` estimates the second-order
    quantities by probes (docs/theory.md §14.1)."""
    if name == "auto":
        reason = unsupported_reason(model)
        named = dict(model.named_parameters())
        count = sum(named[k].numel() for k in parameter_names)
        if reason is None:
            name = "structured"
        elif not second:
            name = "graph"
        elif count <= EXACT_SECOND_PARAMETERS:
            warn(f"engine='auto': the structured engine does not support {reason}; "
                 "using the autodiff engine (exact, slower)")
            name = "autodiff"
        else:
            warn(f"engine='auto': the structured engine does not support {reason}, and exact "
                 f"second derivatives of {count} parameters would take T reverse passes per "
                 "parameter and input; using the graph engine: first-order quantities exact, "
                 "v2, c12 and Î2 estimated without bias by Hutchinson probes, with their "
                 "standard errors (engine='autodiff' for exact ones)")
            name = "graph"
    if name not in ENGINES:
        raise FimvarError(f"unknown engine {name!r}; use 'auto' or one of {', '.join(ENGINES)}")
    if name == "graph":
        return GraphEngine(model, parameter_names, memory_budget, second=second)
    return ENGINES[name](model, parameter_names, memory_budget)


__all__ = ["ENGINES", "EXACT_SECOND_PARAMETERS", "AutodiffEngine", "Engine", "GraphEngine",
           "ParameterDerivatives", "StructuredEngine", "make_engine"]
