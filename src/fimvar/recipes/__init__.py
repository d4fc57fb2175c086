"""Recipes: fimvar's Fisher where users need it (docs/recipes.md).

- :func:`ewc_penalty` / :class:`EWCPenalty` (``ewc.py``): an EWC penalty whose Fisher is computed
  on the number of inputs the sample-size plan asks for.
- :func:`fisher_merge` / :class:`FisherMerge` (``merging.py``): Fisher-weighted model merging with
  error bars on the merge weights.
- ``FimvarGGN`` (``laplace.py``): a laplace-torch curvature backend; laplace-torch is imported only
  when it is first used.
"""

from __future__ import annotations

from typing import Any

from fimvar.recipes.ewc import EWCPenalty, ewc_penalty
from fimvar.recipes.merging import FisherMerge, fisher_merge

__all__ = ["EWCPenalty", "FimvarGGN", "FisherMerge", "ewc_penalty", "fisher_merge"]


def __getattr__(name: str) -> Any:
    if name == "FimvarGGN":
        from fimvar.recipes import laplace

        return laplace.FimvarGGN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
