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


def describe_module(module) -> str:
    """A module's type and shape in a few characters: ``Linear 64→16``, ``Conv2d 1→8 3×3``,
    ``Embedding 100×32``, ``LayerNorm 64``; the type alone for other modules."""
    kind = type(module).__name__
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{kind} {module.in_features}→{module.out_features}"
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        size = getattr(module, "kernel_size", ())
        size = "×".join(str(k) for k in size) if isinstance(size, tuple) else str(size)
        return f"{kind} {module.in_channels}→{module.out_channels}" + (f" {size}" if size else "")
    if hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
        return f"{kind} {module.num_embeddings}×{module.embedding_dim}"
    shape = getattr(module, "normalized_shape", None) or getattr(module, "num_features", None)
    if shape:
        return f"{kind} {'×'.join(str(s) for s in shape) if isinstance(shape, tuple) else shape}"
    return kind


def describe_groups(model, groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Per group named after a module of ``model`` (the default groups), :func:`describe_module`
    of that module; groups that name no module (custom groups) are left out."""
    out = {}
    for group in groups:
        if group == "(root)":
            module = model
        else:
            try:
                module = model.get_submodule(group)
            except (AttributeError, TypeError):
                continue
        out[group] = describe_module(module)
    return out
