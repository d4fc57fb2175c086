"""How a result reaches its tables, documents, figures and files without importing them.

Results hold data and mathematics only. Their presentation — text tables, the ``summary.json``
document, figures, saved folders — lives in :mod:`fimvar.report`, which imports the results and
registers its functions here when ``fimvar`` is imported. A result's ``save``/``plot``/``table``
methods look the function up by the result's class, so the dependency only points from the
report to the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fimvar.errors import FimvarError

_PRESENTERS: dict[tuple[type, str], Callable[..., Any]] = {}


def presents(result_type: type, verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for the report's functions: ``verb`` (``save``, ``plot``, ``table``, …) of
    results of ``result_type``."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        _PRESENTERS[(result_type, verb)] = function
        return function

    return decorate


def present(result: Any, verb: str, *args: Any, **options: Any) -> Any:
    """Call the registered ``verb`` of ``result``'s class."""
    for kind in type(result).__mro__:
        function = _PRESENTERS.get((kind, verb))
        if function is not None:
            return function(result, *args, **options)
    raise FimvarError(f"{type(result).__name__} has no {verb!r} (import fimvar.report to load the "
                      "report functions)")


def load(path: Any, result_type: type) -> Any:
    """Read a result of ``result_type`` saved by its ``save`` (the report's registered loader)."""
    function = _PRESENTERS.get((result_type, "load"))
    if function is None:
        raise FimvarError(f"no loader for {result_type.__name__} (import fimvar.report to load the "
                          "report functions)")
    return function(path)


class Presented:
    """The presentation methods of the full-matrix, hidden-layer and weight-norm results (the
    diagonal result has its own, with a sample-size target)."""

    def summary(self) -> dict:
        """The ``summary.json`` document of the result, as a dict."""
        return present(self, "summary")

    def save(self, directory, *, figures: bool = True):
        """Write ``summary.json``, the result's tensors (if any) and ``figures/`` into
        ``directory``; read it back with :meth:`load`. Returns the folder path."""
        return present(self, "save", directory, figures=figures)

    def plot(self, which: str = "all", path=None):
        """The result's matplotlib figure(s) (``all``: a dict of them); with ``path``, also save."""
        return present(self, "plot", which, path)

    @classmethod
    def load(cls, path):
        """Read a result written by :meth:`save` (its folder)."""
        return load(path, cls)
