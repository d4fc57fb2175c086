"""Parameter groups: the unit of per-layer summaries (one group per module by default)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from fimvar.errors import FimvarError

GroupSpec = Mapping[str, Sequence[str]] | Callable[[str], str] | None


def module_of(parameter_name: str) -> str:
    """The module that owns a parameter (``"features.0.weight" → "features.0"``)."""
    return parameter_name.rpartition(".")[0] or "(root)"


def resolve_groups(parameter_names: Sequence[str], groups: GroupSpec = None) -> dict[str, list[str]]:
    """Map group names to parameter names, in model order.

    Args:
        parameter_names: the analysed parameters.
        groups: ``None`` (one group per module), a mapping ``group -> [parameter names]`` (every
            parameter must appear exactly once), or a callable ``parameter name -> group``.
    """
    if groups is None:
        groups = module_of
    if callable(groups):
        resolved: dict[str, list[str]] = {}
        for name in parameter_names:
            resolved.setdefault(str(groups(name)), []).append(name)
        return resolved
    known = set(parameter_names)
    seen: dict[str, str] = {}
    resolved = {}
    for group, members in groups.items():
        if isinstance(members, str):
            members = [members]
        for name in members:
            if name not in known:
                raise FimvarError(
                    f"group {group!r} names parameter {name!r}, which is not among the analysed "
                    f"parameters ({', '.join(parameter_names)})"
                )
            if name in seen:
                raise FimvarError(f"parameter {name!r} is in groups {seen[name]!r} and {group!r}")
            seen[name] = group
        resolved[group] = [n for n in parameter_names if n in set(members)]
    missing = [n for n in parameter_names if n not in seen]
    if missing:
        raise FimvarError(f"parameters {missing} belong to no group; add them to a group")
    return resolved
