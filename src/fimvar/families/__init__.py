"""Exponential families of network outputs (docs/theory.md §4)."""

from __future__ import annotations

from fimvar.errors import FimvarError
from fimvar.families.base import ExponentialFamily
from fimvar.families.bernoulli import Bernoulli
from fimvar.families.categorical import Categorical
from fimvar.families.gaussian import Gaussian
from fimvar.families.independent import IndependentFamily
from fimvar.families.poisson import Poisson

FAMILIES: dict[str, type[ExponentialFamily]] = {
    "categorical": Categorical,
    "gaussian": Gaussian,
    "bernoulli": Bernoulli,
    "poisson": Poisson,
}


def get_family(family: str | ExponentialFamily) -> ExponentialFamily:
    """Return a family object from its name (``categorical``, ``gaussian``, ``bernoulli``,
    ``poisson``) or pass a family object through."""
    if isinstance(family, ExponentialFamily):
        return family
    if isinstance(family, str) and family.lower() in FAMILIES:
        return FAMILIES[family.lower()]()
    raise FimvarError(
        f"unknown family {family!r}; use one of {', '.join(FAMILIES)} or an ExponentialFamily object"
    )


__all__ = [
    "FAMILIES",
    "Bernoulli",
    "Categorical",
    "ExponentialFamily",
    "Gaussian",
    "IndependentFamily",
    "Poisson",
    "get_family",
]
