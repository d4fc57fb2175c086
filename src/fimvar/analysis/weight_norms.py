"""``fimvar.weight_norm_bounds``: [A]'s weight-norm and spectral bounds of an MLP, next to the
exact Jacobian norms (docs/theory.md §5.4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import Key
from fimvar.analysis.driver import StreamingAnalysis
from fimvar.analysis.inputs import check_result_finite, family_outputs
from fimvar.engine.representations import captured_inputs, output_jacobians
from fimvar.errors import FimvarError
from fimvar.estimators.bounds.tensor_eigen import tensor_extrema
from fimvar.estimators.bounds.weight_norms import layer_sums, norms_above
from fimvar.families import ExponentialFamily, get_family
from fimvar.results.weight_norms import LayerNormBound, WeightNormResult

#: activations with |σ'| ≤ 1 everywhere
CONTRACTIVE = (nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid, nn.ReLU, nn.Identity, nn.Dropout,
               nn.Hardtanh, nn.Softsign)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise FimvarError("the weight-norm bounds of [A] need an nn.Sequential MLP")
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        contractive = isinstance(module, CONTRACTIVE) or (
            isinstance(module, nn.LeakyReLU) and abs(module.negative_slope) <= 1
        ) or (isinstance(module, nn.ELU) and 0 <= module.alpha <= 1)
        if not (isinstance(module, nn.Linear) or contractive):
            raise FimvarError(
                f"module {name} ({type(module).__name__}) is neither Linear nor an activation with "
                "|σ'| ≤ 1; the bounds of [A] do not apply"
            )
        layers.append((name, module))
    return layers


class WeightNormAnalysis(StreamingAnalysis):
    """A resumable evaluation of [A]'s weight-norm bounds (see :func:`weight_norm_bounds`)."""

    kind = "weight_norms"

    def __init__(self, model: nn.Sequential, family: str | ExponentialFamily = "categorical", *,
                 memory_budget: int | str | None = None) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.linear = {n: m for n, m in _layers(model) if isinstance(m, nn.Linear)}
        self.frobenius_above, self.spectral_above = norms_above(
            [m.weight for m in self.linear.values()])

    def chunk_size(self, x: torch.Tensor) -> int:
        return max(1, min(4096, x.shape[0]))

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        with captured_inputs(self.linear) as inputs:
            h = family_outputs(self.model, x, family)
        m_max = tensor_extrema(family, h)["m_max"]
        if m_max is None:
            raise FimvarError(f"no certified λ̃_max(M) is known for family '{family.name}' with "
                              f"{h.shape[1]} outputs, so the weight-norm bound on Σ v1 cannot be given")
        jacobians = output_jacobians(self.model, x, list(self.linear))
        for index, (name, module) in enumerate(self.linear.items()):
            a = inputs[name].reshape(x.shape[0], -1).to(torch.float64)
            if module.bias is not None:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            g = jacobians[name].reshape(x.shape[0], h.shape[1], -1)  # (n, T, out)
            sums = layer_sums(family, h, g, a, self.frobenius_above[index], self.spectral_above[index],
                              m_max)
            self.accumulator.add(Key("module", name, "norms"), sums)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family.name, "model": checkpoints.model_hash(self.model)}

    def result(self) -> WeightNormResult:
        if self.count == 0:
            raise FimvarError("the data is empty: pass at least one input")
        layers = [LayerNormBound(name, *(float(v) / self.count
                                         for v in self.accumulator.sums[Key("module", name, "norms")]))
                  for name in self.linear]
        check_result_finite({field: {layer.layer: getattr(layer, field) for layer in layers}
                             for field in ("frobenius", "frobenius_bound", "spectral", "spectral_bound",
                                           "v1_sum", "v1_bound")}, owner="layer")
        return WeightNormResult(self.family.name, self.count, layers)


def weight_norm_bounds(
    model: nn.Sequential, x: torch.Tensor | Iterable, family: str | ExponentialFamily = "categorical",
    *, memory_budget: int | str | None = None, checkpoint=None, checkpoint_interval: float = 60.0,
    batch_size: int | None = None, progress: bool = False,
) -> WeightNormResult:
    """Exact Jacobian norms per Linear layer next to [A]'s weight-norm and spectral bounds
    (a read-only list of :class:`~fimvar.LayerNormBound`)."""
    analysis = WeightNormAnalysis(model, family, memory_budget=memory_budget)
    analysis.run(x, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
