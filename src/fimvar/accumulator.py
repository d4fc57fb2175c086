"""Float64 running sums over inputs, combinable chunk by chunk and serialisable.

Keys are ``"<parameter>/<quantity>"`` for per-parameter tensors and ``"group:<group>/<quantity>"``
for per-group scalars. The centred second moment of ``I(θ_i|x)`` (``fisher_m2``) is merged with
the pairwise update of Chan, Golub & LeVeque, so the input variance does not suffer the
cancellation of ``Σ I² − (Σ I)²/N``.
"""

from __future__ import annotations

import torch


class Accumulator:
    """Sums of per-input quantities, plus the number of inputs seen."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add_parameter(self, name: str, chunk: dict[str, torch.Tensor], chunk_count: int) -> None:
        """Merge the chunk sums of one parameter (call once per parameter and chunk, then
        :meth:`finish_chunk`)."""
        previous = self.count
        previous_fisher = self.sums.get(f"{name}/fisher")
        for quantity, value in chunk.items():
            key = f"{name}/{quantity}"
            value = value.detach().to(torch.float64)
            if quantity == "fisher_m2" and previous > 0:
                old_mean = previous_fisher / previous
                new_mean = chunk["fisher"].to(torch.float64) / chunk_count
                delta = new_mean - old_mean
                value = value + delta**2 * (previous * chunk_count / (previous + chunk_count))
            self._add(key, value)

    def add_group(self, group: str, chunk: dict[str, torch.Tensor]) -> None:
        for quantity, value in chunk.items():
            self._add(f"group:{group}/{quantity}", value.detach().to(torch.float64))

    def finish_chunk(self, chunk_count: int) -> None:
        self.count += chunk_count

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key in self.sums:
            self.sums[key] = self.sums[key] + value.to(self.sums[key].device)
        else:
            self.sums[key] = value.clone()

    def get(self, key: str) -> torch.Tensor | None:
        return self.sums.get(key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu().contiguous() for k, v in self.sums.items()}
        state["__count__"] = torch.tensor(self.count, dtype=torch.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Accumulator:
        accumulator = cls()
        accumulator.count = int(state["__count__"])
        accumulator.sums = {k: v.clone() for k, v in state.items() if k != "__count__"}
        return accumulator
