"""[A]'s weight-norm and spectral-norm bounds per Linear layer (docs/theory.md §5.4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fimvar.results.presentation import Presented


@dataclass
class LayerNormBound:
    """[A]'s bounds for one Linear layer, averaged over inputs."""

    layer: str
    frobenius: float
    frobenius_bound: float
    spectral: float
    spectral_bound: float
    v1_sum: float
    v1_bound: float


@dataclass
class WeightNormResult(Presented, Sequence[LayerNormBound]):
    """The :class:`LayerNormBound` of every Linear layer, in model order (a read-only list)."""

    family: str
    num_inputs: int
    layers: list[LayerNormBound]
    metadata: dict = field(default_factory=dict)

    def __getitem__(self, index):
        return self.layers[index]

    def __iter__(self) -> Iterator[LayerNormBound]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other) -> bool:
        if isinstance(other, WeightNormResult):
            return self.layers == other.layers and self.family == other.family
        return isinstance(other, list) and self.layers == other
