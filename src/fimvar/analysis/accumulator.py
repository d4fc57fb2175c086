"""Float64 running sums over inputs, merged chunk by chunk, serialisable for checkpoints.

Every sum is filed under a :class:`Key`: what it belongs to (a parameter, a group of parameters,
a module, the whole matrix) and which quantity it is. The centred second moments of the
per-input values (for the input variance) are merged with the streaming algorithm of
:mod:`fimvar.estimators.moments`, the same for every mode; the audit's centred moments up to the
fourth with Pébay's update (:func:`fimvar.estimators.practical.merge_central_moments`).

Every sum is either plain (chunks, and the processes of a distributed run, add it) or one member
of a *centred group* — ``(Σ I, m2)`` or ``(Σ g, P2, P3, P4)`` — recorded in :attr:`Accumulator.centred`,
which says how two accumulators are merged exactly (:meth:`Accumulator.merge`; docs/theory.md §16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.estimators import moments
from fimvar.estimators.practical import merge_central_moments

#: scopes of the sums: per parameter tensor, per parameter group (trace and Frobenius forms),
#: per module (hidden-layer Fisher, weight-norm bounds), one P×P matrix (full mode), or the whole
#: run (the sampled analysis's moments across parameter tensors)
SCOPES = ("parameter", "group", "module", "matrix", "run")


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


def run_key(quantity: str) -> Key:
    return Key("run", "", quantity)


def parameter_bound(owner: str, bound: str) -> Key:
    return Key("parameter", owner, "bound", bound)


class Accumulator:
    """Sums of per-input quantities, plus the number of inputs seen."""

    def __init__(self) -> None:
        self.sums: dict[Key, torch.Tensor] = {}
        self.count = 0
        #: the centred groups, in the order they were first merged: ``(total, m2)`` (Chan et al.)
        #: or ``(total, p2, p3, p4)`` (Pébay); every other sum is plain
        self.centred: list[tuple[Key, ...]] = []
        self._known: set[tuple[Key, ...]] = set()  # the groups of centred, for a fast membership test

    def _register(self, keys: tuple[Key, ...]) -> None:
        if len(self._known) != len(self.centred):  # centred was assigned (a copy, a merge, a restore)
            self._known = set(self.centred)
        if keys not in self._known:
            self._known.add(keys)
            self.centred.append(keys)

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
        self._register((total, m2))
        self.sums[total], self.sums[m2] = moments.merge(
            self.count, previous, self.sums.get(m2), chunk_count, chunk_total, chunk_m2)

    def add_central_moments(self, keys: tuple[Key, Key, Key, Key], chunk_count: int,
                            chunk: tuple[torch.Tensor, ...]) -> None:
        """Merge a chunk's ``(Σ g, P2, P3, P4)`` (centred power sums) into the sums ``keys``
        (Pébay, :func:`~fimvar.estimators.practical.merge_central_moments`)."""
        chunk = tuple(c.detach().to(torch.float64) for c in chunk)
        previous = tuple(self.sums[k] for k in keys) if keys[0] in self.sums else None
        if previous is not None:
            chunk = tuple(c.to(previous[0].device) for c in chunk)
        self._register(tuple(keys))
        merged = merge_central_moments(self.count, previous, chunk_count, chunk)
        self.sums.update(zip(keys, merged, strict=True))

    def finish_chunk(self, chunk_count: int) -> None:
        self.count += chunk_count

    def merge(self, other: Accumulator) -> Accumulator:
        """The accumulator of the union of two disjoint sets of inputs (``self``'s first): plain
        sums added, centred groups merged by the same pairwise updates as the chunks (Chan et al.;
        Pébay), so the result equals one accumulator over all the inputs up to summation order."""
        if other.count == 0:
            return self.copy()
        if self.count == 0:
            return other.copy()
        if set(self.sums) != set(other.sums):
            differ = sorted(str(k) for k in set(self.sums) ^ set(other.sums))[:3]
            raise ValueError(f"the accumulators hold different sums ({', '.join(differ)}, …)")
        merged = Accumulator()
        known = set(self.centred)
        merged.centred = list(self.centred) + [g for g in other.centred if g not in known]
        grouped = {k for group in merged.centred for k in group}
        for key, value in self.sums.items():
            if key not in grouped:
                merged.sums[key] = value + other.sums[key].to(value.device)
        for group in merged.centred:
            mine = tuple(self.sums[k] for k in group)
            theirs = tuple(other.sums[k].to(mine[0].device) for k in group)
            if len(group) == 2:
                values = moments.merge(self.count, *mine, other.count, *theirs)
            else:
                values = merge_central_moments(self.count, mine, other.count, theirs)
            merged.sums.update(zip(group, values, strict=True))
        merged.sums = {k: merged.sums[k] for k in self.sums}  # self's order
        merged.count = self.count + other.count
        return merged

    def copy(self) -> Accumulator:
        """An independent copy (the tensors are shared: sums are replaced, never modified)."""
        copy = Accumulator()
        copy.sums, copy.count, copy.centred = dict(self.sums), self.count, list(self.centred)
        return copy

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

    def centred_state(self) -> list[list[int]]:
        """:attr:`centred` as lists of indices into the keys of :meth:`state_dict`."""
        index = {k: i for i, k in enumerate(self.sums)}
        return [[index[k] for k in group] for group in self.centred if all(k in index for k in group)]

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], keys: list[list[str]], count: int,
                        device: torch.device | str | None = None,
                        centred: list[list[int]] | None = None) -> Accumulator:
        accumulator = cls()
        accumulator.count = int(count)
        restored = [Key(*key) for key in keys]
        for index, key in enumerate(restored):
            value = tensors[str(index)].clone()
            accumulator.sums[key] = value if device is None else value.to(device)
        for group in centred or []:
            if not (isinstance(group, list) and len(group) in (2, 4)
                    and all(isinstance(i, int) and 0 <= i < len(restored) for i in group)):
                raise ValueError(f"a centred group {group!r} does not name the sums")
            accumulator.centred.append(tuple(restored[i] for i in group))
        return accumulator
