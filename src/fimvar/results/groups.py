"""The pooled group of every analysed parameter, next to the per-layer groups."""

from __future__ import annotations

#: name of the group holding every analysed parameter (model-level rows, trace forms and plans)
MODEL_GROUP = "(model)"


def with_model_group(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """``groups`` plus :data:`MODEL_GROUP` pooling all their parameters (when there is more
    than one group; one group already is the whole model)."""
    if len(groups) <= 1:
        return dict(groups)
    return {**groups, MODEL_GROUP: [name for members in groups.values() for name in members]}
