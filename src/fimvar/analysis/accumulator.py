"""Float64 running sums over inputs, merged chunk by chunk, serialisable for checkpoints.

Every sum is filed under a :class:`Key`: what it belongs to (a parameter, a group of parameters,
a module, the whole matrix) and which quantity it is. The centred second moments of the
per-input values (for the input variance) are merged with the streaming algorithm of
:mod:`fimvar.estimators.moments`, the same for every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.estimators import moments

#: scopes of the sums: per parameter tensor, per parameter group (trace and Frobenius forms),
#: per module (hidden-layer Fisher, weight-norm bounds), or one P×P matrix (full mode)
SCOPES = ("parameter", "group", "module", "matrix")


@dataclass(frozen=True, order=True)
class Key:
    """What a sum belongs to (``scope``, ``owner``) and what it is (``quantity``; bounds are
    ``quantity="bound"`` with their ``bound`` name)."""

    scope: str
    owner: str
    quantity: str
    bound: str = ""

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}")


def parameter(owner: str, quantity: str) -> Key:
    return Key("parameter", owner, quantity)


def parameter_bound(owner: str, bound: str) -> Key:
    return Key("parameter", owner, "bound", bound)


class Accumulator:
    """Sums of per-input quantities, plus the number of inputs seen."""

    def __init__(self) -> None:
        self.sums: dict[Key, torch.Tensor] = {}
        self.count = 0

    def add(self, key: Key, value: torch.Tensor) -> None:
        """Add a chunk's sum of one quantity (call :meth:`finish_chunk` once per chunk)."""
        value = value.detach().to(torch.float64)
        if key in self.sums:
            self.sums[key] = self.sums[key] + value.to(self.sums[key].device)
        else:
            self.sums[key] = value.clone()

    def add_moments(self, total: Key, m2: Key, chunk_count: int, chunk_total: torch.Tensor,
                    chunk_m2: torch.Tensor) -> None:
        """Merge a chunk's ``(Σ I, Σ (I − Ī)²)`` into the sums ``total`` and ``m2`` (Chan et al.,
        :func:`fimvar.estimators.moments.merge`)."""
        chunk_total = chunk_total.detach().to(torch.float64)
        chunk_m2 = chunk_m2.detach().to(torch.float64)
        previous = self.sums.get(total)
        if previous is not None:
            chunk_total, chunk_m2 = chunk_total.to(previous.device), chunk_m2.to(previous.device)
        self.sums[total], self.sums[m2] = moments.merge(
            self.count, previous, self.sums.get(m2), chunk_count, chunk_total, chunk_m2)

    def finish_chunk(self, chunk_count: int) -> None:
        self.count += chunk_count

    def has(self, key: Key) -> bool:
        return key in self.sums

    def mean(self, key: Key) -> torch.Tensor:
        return self.sums[key] / self.count

    def owners(self, scope: str, quantity: str, bound: str = "") -> dict[str, torch.Tensor]:
        """``{owner: sum}`` of one quantity over every owner of a scope, in insertion order."""
        return {k.owner: v for k, v in self.sums.items()
                if k.scope == scope and k.quantity == quantity and k.bound == bound}

    def bounds(self, scope: str) -> list[str]:
        """Names of the bounds summed in a scope, in insertion order."""
        return list(dict.fromkeys(k.bound for k in self.sums if k.scope == scope and k.bound))

    def quantities(self, scope: str) -> list[str]:
        """Quantities (other than bounds) summed in a scope, in insertion order."""
        return list(dict.fromkeys(k.quantity for k in self.sums if k.scope == scope and not k.bound))

    # ------------------------------------------------------------------ serialisation
    def state_dict(self) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
        """Tensors named ``"0"``, ``"1"``, … and the list of their keys (no key is parsed back
        from a string)."""
        keys = list(self.sums)
        tensors = {str(i): self.sums[k].detach().cpu().contiguous() for i, k in enumerate(keys)}
        return tensors, [[k.scope, k.owner, k.quantity, k.bound] for k in keys]

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], keys: list[list[str]], count: int,
                        device: torch.device | str | None = None) -> Accumulator:
        accumulator = cls()
        accumulator.count = int(count)
        for index, key in enumerate(keys):
            value = tensors[str(index)].clone()
            accumulator.sums[Key(*key)] = value if device is None else value.to(device)
        return accumulator
