"""``fimvar.analyze_full``: the P×P Fisher, Î1, Î2 and their entry-wise variances (small models)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import Key
from fimvar.analysis.driver import StreamingAnalysis
from fimvar.analysis.inputs import check_result_finite, check_samples, family_outputs, trainable_parameters
from fimvar.engine.full import FullDerivatives
from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators.bounds.tensor_eigen import bilinear_fourth_upper
from fimvar.estimators.full import chunk_sums, per_input_fisher
from fimvar.estimators.labels import check_seed, draw_residuals
from fimvar.families import ExponentialFamily, get_family
from fimvar.results.full import FullResult

#: largest number of parameters the full-matrix mode accepts by default
MAX_FULL_PARAMETERS = 4096
#: the per-input average Frobenius norms and their bounds ([A], docs/theory.md §5.3)
FROBENIUS = ("frobenius_i1", "frobenius_i2", "frobenius_i1_bound", "frobenius_i2_bound")
#: the entry-wise bounds of [B] App. C
OFFDIAGONAL = ("appC_v1_upper", "appC_v2_upper")


def _matrix(quantity: str) -> Key:
    return Key("matrix", "theta", quantity)


class FullAnalysis(StreamingAnalysis):
    """A resumable full-matrix analysis (see :func:`analyze_full`)."""

    kind = "full"

    def __init__(self, model: nn.Module, family: str | ExponentialFamily = "categorical",
                 samples: int = 1, seed: int = 0, *, parameters: Iterable[str] | None = None,
                 bounds: bool = True, max_parameters: int = MAX_FULL_PARAMETERS,
                 memory_budget: int | str | None = None) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.samples = check_samples(samples)
        self.seed = check_seed(seed)
        self.parameter_names = trainable_parameters(model, parameters)
        self.bounds = bounds
        named = dict(model.named_parameters())
        total = sum(named[n].numel() for n in self.parameter_names)
        if total > max_parameters:
            raise FimvarError(
                f"full-matrix mode needs P×P matrices and T×P×P Hessians; this model has {total} "
                f"parameters (limit {max_parameters}); use fimvar.analyze for the diagonal, select "
                "fewer parameters with parameters=[...], or raise max_parameters"
            )
        self.engine = FullDerivatives(model, self.parameter_names, self.memory_budget)
        self.width: int | None = None

    def prepare(self, x: torch.Tensor) -> None:
        self.width = family_outputs(self.model, x, self.family).shape[1]

    def chunk_size(self, x: torch.Tensor) -> int:
        return self.engine.chunk_size(self.width)

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        h, jacobian, hessians = self.engine.derivatives(x)
        family.check_outputs(h)
        draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
        gamma = bilinear_fourth_upper(family, h) if self.bounds else None
        for quantity, value in chunk_sums(family, h, jacobian, hessians, draws, gamma).items():
            self.accumulator.add(_matrix(quantity), value)
        total, m2 = moments.chunk_moments(per_input_fisher(family, h, jacobian))
        self.accumulator.add_moments(_matrix("fisher"), _matrix("fisher_m2"), h.shape[0], total, m2)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family.name, "samples": self.samples,
                "seed": self.seed, "parameters": self.parameter_names, "bounds": bool(self.bounds),
                "model": checkpoints.model_hash(self.model)}

    def result(self) -> FullResult:
        count = self.count
        if count == 0:
            raise FimvarError("the data is empty: pass at least one input")
        sums = {k.quantity: v for k, v in self.accumulator.sums.items()}
        result = FullResult(
            family=self.family.name, samples=self.samples, num_inputs=count,
            slices=self.engine.slices, shapes=self.engine.shapes,
            fisher=sums["fisher"] / count, i1=sums["i1"] / (count * self.samples),
            i2=sums["i2"] / (count * self.samples), v1=sums["v1"] / count, v2=sums["v2"] / count,
            input_var=moments.sample_variance(count, sums["fisher_m2"]),
            frobenius={k: float(sums[k]) / count for k in FROBENIUS},
            offdiagonal_bounds={k: sums[k] / count for k in OFFDIAGONAL if k in sums},
        )
        matrices = {q: getattr(result, q) for q in ("fisher", "i1", "i2", "v1", "v2", "input_var")}
        matrices.update({f"bound {k}": v for k, v in result.offdiagonal_bounds.items()})
        for quantity, matrix in matrices.items():  # name the parameter pair of the first bad entry
            bad = (~torch.isfinite(matrix)).nonzero()
            if len(bad):
                i, j = (next(n for n, s in result.slices.items() if s.start <= int(k) < s.stop)
                        for k in bad[0])
                check_result_finite({quantity: {i if i == j else f"{i} × {j}": matrix[tuple(bad[0])]}})
        check_result_finite({k: {"(all parameters)": v} for k, v in result.frobenius.items()})
        return result


def analyze_full(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
    *,
    parameters: Iterable[str] | None = None,
    bounds: bool = True,
    max_parameters: int = MAX_FULL_PARAMETERS,
    memory_budget: int | str | None = None,
    checkpoint=None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> FullResult:
    """Full P×P Fisher, Î1, Î2, entry-wise variances and Frobenius norms (small models).

    Args mirror :func:`fimvar.analyze`; ``bounds`` adds the entry-wise bounds of [B] App. C
    (their ``γ̃_max(M)`` needs an optimisation per input; the Frobenius norms and [A]'s bounds
    on them are always computed); ``max_parameters`` guards against P×P×T Hessians that do not
    fit in memory (use the diagonal mode for larger models).
    """
    analysis = FullAnalysis(model, family, samples, seed, parameters=parameters, bounds=bounds,
                            max_parameters=max_parameters, memory_budget=memory_budget)
    analysis.run(x, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
