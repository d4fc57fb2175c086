"""Float64 running sums over inputs, merged chunk by chunk, serialisable for checkpoints.

Every sum is filed under a :class:`Key`: what it belongs to (a parameter, a group of parameters,
a module, the whole matrix) and which quantity it is. The centred second moments of the
per-input values (for the input variance) are merged with the streaming algorithm of
:mod:`fimvar.estimators.moments`, the same for every mode; the audit's centred moments up to the
fourth with Pébay's update (:func:`fimvar.estimators.practical.merge_central_moments`).

Every sum is either plain (chunks, and the processes of a distributed run, add it) or one member
of a *centred group* — ``(Σ I, m2)`` or ``(Σ g, P2, P3, P4)`` — recorded in :attr:`Accumulator.centred`,
which says how two accumulators are merged exactly (:meth:`Accumulator.merge`; docs/theory.md §16).

A chunk's sums normally replace the running ones by new tensors, so that a chunk that fails leaves
the sums as they were (:meth:`Accumulator.snapshot`, :meth:`Accumulator.restore`). A language
model's 10⁸ sums per quantity are instead updated in their own memory (``in_place=True``: no new
gigabyte tensor per chunk), which is allowed only for tensors the accumulator made and never handed
out (read through :attr:`Accumulator.sums`, :meth:`Accumulator.owners`, a checkpoint's
:meth:`Accumulator.state_dict`, a :meth:`Accumulator.copy`); a chunk that fails after such an
update cannot be undone, and the accumulator then refuses every later use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators.practical import merge_central_moments

#: scopes of the sums: per parameter tensor, per parameter group (trace and Frobenius forms),
#: per module (hidden-layer Fisher, weight-norm bounds), one P×P matrix (full mode), or the whole
#: run (the sampled analysis's moments across parameter tensors)
SCOPES = ("parameter", "group", "module", "matrix", "run")


@dataclass(frozen=True)
class Snapshot:
    """The sums of an accumulator at one moment (:meth:`Accumulator.snapshot`) and which of their
    tensors it owned."""

    sums: dict
    owned: set


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
        self._sums: dict[Key, torch.Tensor] = {}
        #: the sums whose tensors this accumulator made and never handed out: the only ones that
        #: :meth:`add` and :meth:`add_moments` with ``in_place=True`` may update in place
        self._owned: set[Key] = set()
        self._changed_in_place = False  # since the last snapshot()
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

    # ------------------------------------------------------------------ the sums and who holds them
    @property
    def sums(self) -> dict[Key, torch.Tensor]:
        """The sums by key. Whoever reads them may keep the tensors, so none of them is updated in
        place afterwards (the next chunk replaces them)."""
        if isinstance(self._sums, _Interrupted):
            self._sums.refuse()
        self._owned.clear()
        return self._sums

    @sums.setter
    def sums(self, value: dict[Key, torch.Tensor]) -> None:
        self._sums = value
        self._owned = set()

    def snapshot(self) -> Snapshot:
        """The sums as they are now, for :meth:`restore` if the next chunk fails."""
        self._changed_in_place = False
        return Snapshot(dict(self._sums), set(self._owned))

    def restore(self, snapshot: Snapshot) -> bool:
        """Go back to ``snapshot``. When a sum was updated in place since it was taken (the chunk
        that failed had already added to it), nothing can be restored: every later use of the
        sums raises a :class:`~fimvar.errors.FimvarError` instead, and ``False`` is returned."""
        if self._changed_in_place:
            self._sums, self._owned = _Interrupted(), set()
            return False
        self._sums, self._owned = dict(snapshot.sums), set(snapshot.owned)
        return True

    def _take(self, key: Key, value: torch.Tensor, handed_over: bool) -> torch.Tensor:
        """``value`` (float64, detached) as this accumulator's own tensor for ``key``: itself when
        the caller handed it over (or the conversion to float64 made a new one), else a copy
        (``detach`` alone shares the caller's memory)."""
        converted = value.detach().to(torch.float64)
        self._owned.add(key)
        return converted if handed_over or value.dtype != torch.float64 else converted.clone()

    def add(self, key: Key, value: torch.Tensor, *, in_place: bool = False) -> None:
        """Add a chunk's sum of one quantity (call :meth:`finish_chunk` once per chunk). With
        ``in_place``, the caller hands ``value`` over and the sum is updated in its own memory when
        no one else holds it (a language model's 10⁸ sums: no new tensor per chunk)."""
        previous = self._sums.get(key)
        if previous is None:
            self._sums[key] = self._take(key, value, in_place)
        elif in_place and key in self._owned:
            self._changed_in_place = True
            previous.add_(value.detach().to(device=previous.device, dtype=torch.float64))
        else:
            self._sums[key] = previous + value.detach().to(device=previous.device, dtype=torch.float64)
            self._owned.add(key)

    def add_moments(self, total: Key, m2: Key, chunk_count: int, chunk_total: torch.Tensor,
                    chunk_m2: torch.Tensor, *, in_place: bool = False) -> None:
        """Merge a chunk's ``(Σ I, Σ (I − Ī)²)`` into the sums ``total`` and ``m2`` (Chan et al.,
        :func:`fimvar.estimators.moments.merge`); ``in_place`` as in :meth:`add` (``chunk_m2`` is
        then overwritten)."""
        self._register((total, m2))
        previous = self._sums.get(total)
        if previous is None:
            self._sums[total] = self._take(total, chunk_total, in_place)
            self._sums[m2] = self._take(m2, chunk_m2, in_place)
            return
        chunk_total = chunk_total.detach().to(device=previous.device, dtype=torch.float64)
        chunk_m2 = chunk_m2.detach().to(device=previous.device, dtype=torch.float64)
        if in_place and total in self._owned and m2 in self._owned:
            self._changed_in_place = True
            moments.merge_into(self.count, previous, self._sums[m2], chunk_count, chunk_total, chunk_m2)
            return
        self._sums[total], self._sums[m2] = moments.merge(
            self.count, previous, self._sums[m2], chunk_count, chunk_total, chunk_m2)
        self._owned.update((total, m2))

    def add_central_moments(self, keys: tuple[Key, Key, Key, Key], chunk_count: int,
                            chunk: tuple[torch.Tensor, ...]) -> None:
        """Merge a chunk's ``(Σ g, P2, P3, P4)`` (centred power sums) into the sums ``keys``
        (Pébay, :func:`~fimvar.estimators.practical.merge_central_moments`)."""
        chunk = tuple(c.detach().to(torch.float64) for c in chunk)
        previous = tuple(self._sums[k] for k in keys) if keys[0] in self._sums else None
        if previous is not None:
            chunk = tuple(c.to(previous[0].device) for c in chunk)
        self._register(tuple(keys))
        merged = merge_central_moments(self.count, previous, chunk_count, chunk)
        self._sums.update(zip(keys, merged, strict=True))

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
        if set(self._sums) != set(other._sums):
            differ = sorted(str(k) for k in set(self._sums) ^ set(other._sums))[:3]
            raise ValueError(f"the accumulators hold different sums ({', '.join(differ)}, …)")
        merged = Accumulator()
        known = set(self.centred)
        merged.centred = list(self.centred) + [g for g in other.centred if g not in known]
        grouped = {k for group in merged.centred for k in group}
        for key, value in self._sums.items():
            if key not in grouped:
                merged._sums[key] = value + other._sums[key].to(value.device)
        for group in merged.centred:
            mine = tuple(self._sums[k] for k in group)
            theirs = tuple(other._sums[k].to(mine[0].device) for k in group)
            if len(group) == 2:
                values = moments.merge(self.count, *mine, other.count, *theirs)
            else:
                values = merge_central_moments(self.count, mine, other.count, theirs)
            merged._sums.update(zip(group, values, strict=True))
        merged._sums = {k: merged._sums[k] for k in self._sums}  # self's order
        merged._owned = set(merged._sums)
        merged.count = self.count + other.count
        return merged

    def copy(self) -> Accumulator:
        """An independent copy (the tensors are shared: neither updates them in place afterwards)."""
        copy = Accumulator()
        copy.sums, copy.count, copy.centred = dict(self._sums), self.count, list(self.centred)
        self._owned.clear()  # shared now: neither updates them in place
        return copy

    def has(self, key: Key) -> bool:
        return key in self._sums

    def mean(self, key: Key) -> torch.Tensor:
        return self._sums[key] / self.count

    def owners(self, scope: str, quantity: str, bound: str = "") -> dict[str, torch.Tensor]:
        """``{owner: sum}`` of one quantity over every owner of a scope, in insertion order."""
        found = {k: v for k, v in self._sums.items()
                 if k.scope == scope and k.quantity == quantity and k.bound == bound}
        self._owned.difference_update(found)  # handed out
        return {k.owner: v for k, v in found.items()}

    def bounds(self, scope: str) -> list[str]:
        """Names of the bounds summed in a scope, in insertion order."""
        return list(dict.fromkeys(k.bound for k in self._sums if k.scope == scope and k.bound))

    def quantities(self, scope: str) -> list[str]:
        """Quantities (other than bounds) summed in a scope, in insertion order."""
        return list(dict.fromkeys(k.quantity for k in self._sums if k.scope == scope and not k.bound))

    # ------------------------------------------------------------------ serialisation
    def state_dict(self) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
        """Tensors named ``"0"``, ``"1"``, … and the list of their keys (no key is parsed back
        from a string)."""
        keys = list(self._sums)
        tensors = {str(i): self._sums[k].detach().cpu().contiguous() for i, k in enumerate(keys)}
        self._owned.clear()  # the tensors may be the sums themselves
        return tensors, [[k.scope, k.owner, k.quantity, k.bound] for k in keys]

    def centred_state(self) -> list[list[int]]:
        """:attr:`centred` as lists of indices into the keys of :meth:`state_dict`."""
        index = {k: i for i, k in enumerate(self._sums)}
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
            accumulator._sums[key] = value if device is None else value.to(device)
            accumulator._owned.add(key)
        for group in centred or []:
            if not (isinstance(group, list) and len(group) in (2, 4)
                    and all(isinstance(i, int) and 0 <= i < len(restored) for i in group)):
                raise ValueError(f"a centred group {group!r} does not name the sums")
            accumulator.centred.append(tuple(restored[i] for i in group))
        return accumulator


class _Interrupted(dict):
    """The sums of an accumulator whose chunk failed after it had updated some of them in place:
    any read or write raises, so that no result and no checkpoint is made from them."""

    def refuse(self, *args, **kwargs):
        raise FimvarError("an error interrupted this analysis while it was adding a chunk to its sums, "
                          "which now hold part of that chunk: start a new analysis, or resume the run "
                          "from its checkpoint (which holds whole chunks only)")

    __getitem__ = __setitem__ = __contains__ = __iter__ = __len__ = get = items = keys = values = refuse
    update = setdefault = pop = copy = refuse
