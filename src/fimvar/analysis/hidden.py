"""``fimvar.hidden_fisher``: the Fisher information of hidden representations ([A], docs/theory.md §6)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import Key
from fimvar.analysis.driver import StreamingAnalysis
from fimvar.analysis.inputs import check_result_finite, check_samples, family_outputs
from fimvar.engine.representations import named_module, output_jacobians, output_shape
from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators.hidden import chunk_sums, per_input_diagonal
from fimvar.estimators.labels import check_seed, draw_residuals
from fimvar.families import ExponentialFamily, get_family
from fimvar.results.hidden import HiddenFisher, HiddenResult


class HiddenAnalysis(StreamingAnalysis):
    """A resumable hidden-layer analysis (see :func:`hidden_fisher`)."""

    kind = "hidden"

    def __init__(self, model: nn.Module, modules: Sequence[str],
                 family: str | ExponentialFamily = "categorical", samples: int = 1, seed: int = 0,
                 *, memory_budget: int | str | None = None) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.samples = check_samples(samples)
        self.seed = check_seed(seed)
        self.modules = [modules] if isinstance(modules, str) else list(modules)
        for name in self.modules:
            named_module(model, name)
        self.shapes: dict[str, list[int]] = {}
        self.width: int | None = None

    def prepare(self, x: torch.Tensor) -> None:
        self.width = family_outputs(self.model, x[:1], self.family).shape[1]
        for name in self.modules:
            if name not in self.shapes:
                self.shapes[name] = list(output_shape(self.model, named_module(self.model, name), x))

    def chunk_size(self, x: torch.Tensor) -> int:
        # per input: the T×d Jacobian of every module with jacrev's copies, and the d×d sums
        widths = [int(torch.Size(self.shapes[m]).numel()) for m in self.modules]
        per_input = 8 * 16 * self.width * max(1, sum(widths)) * max(self.samples, 1)
        return max(1, min(4096, self.memory_budget // per_input))

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        h = family_outputs(self.model, x, family)
        draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
        for name, jacobian in output_jacobians(self.model, x, self.modules).items():
            b = jacobian.flatten(2)
            for quantity, value in chunk_sums(family, h, b, draws).items():
                self.accumulator.add(Key("module", name, quantity), value)
            total, m2 = moments.chunk_moments(per_input_diagonal(family, h, b))
            self.accumulator.add_moments(Key("module", name, "fisher_diagonal"),
                                         Key("module", name, "fisher_m2"), h.shape[0], total, m2)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family.name, "samples": self.samples,
                "seed": self.seed, "modules": self.modules, "model": checkpoints.model_hash(self.model)}

    def extra_state(self) -> dict[str, Any]:
        return {"shapes": self.shapes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.shapes = dict(state.get("shapes") or {})

    def result(self) -> HiddenResult:
        count = self.count
        if count == 0:
            raise FimvarError("the data is empty: pass at least one input")
        results = {}
        for name in self.modules:
            def mean(quantity: str, name: str = name) -> torch.Tensor | None:
                key = Key("module", name, quantity)
                return self.accumulator.sums[key] / count if self.accumulator.has(key) else None

            results[name] = HiddenFisher(
                module=name, shape=torch.Size(self.shapes[name]), num_inputs=count, samples=self.samples,
                fisher_diagonal=mean("fisher_diagonal"), estimate_diagonal=mean("estimate_diagonal"),
                v1_diagonal=mean("v1_diagonal"),
                input_var_diagonal=moments.sample_variance(
                    count, self.accumulator.sums[Key("module", name, "fisher_m2")]),
                fisher=mean("fisher"), estimate=mean("estimate"),
            )
        check_result_finite({quantity: {name: getattr(module, quantity) for name, module in results.items()}
                             for quantity in ("fisher_diagonal", "estimate_diagonal", "v1_diagonal",
                                              "input_var_diagonal", "fisher", "estimate")}, owner="module")
        return HiddenResult(self.family.name, results, {"seed": self.seed})


def hidden_fisher(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    modules: Sequence[str],
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
    *,
    memory_budget: int | str | None = None,
    checkpoint=None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> HiddenResult:
    """Fisher information of the outputs of the named modules (e.g. ``["0", "2"]``).

    Uses the label draws of :func:`fimvar.analyze` with the same ``seed``. Returns a
    :class:`~fimvar.results.hidden.HiddenResult`, a read-only dict of
    :class:`~fimvar.HiddenFisher` by module name.
    """
    analysis = HiddenAnalysis(model, modules, family, samples, seed, memory_budget=memory_budget)
    analysis.run(x, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
