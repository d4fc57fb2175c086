"""``fimvar.analyze_sampled``: Î1 and its variance from the label draws alone, whatever the number
of outputs T (docs/theory.md §17).

The exact quantities need one backward pass per output column — L·V of them for a language model.
Î1 needs one per label draw: the per-input gradients of ``ε_m·h`` (the graph engine,
:meth:`~fimvar.engine.graph.GraphEngine.draw_gradients`), squared. With M ≥ 2 draws per input,
the spread of the squares within an input estimates the label noise and the spread of their
per-input means between inputs the rest ([B] Thm 4.7): no exact Fisher is formed — except for the
parameters of a linear output layer (an untied language-model head), whose exact Fisher, label
noise and input noise have closed forms at any number of outputs (docs/theory.md §17.1,
:mod:`fimvar.estimators.head`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import parameter, run_key
from fimvar.analysis.driver import FamilyAnalysis
from fimvar.analysis.groups import GroupSpec, describe_groups, resolve_groups
from fimvar.analysis.inputs import (
    check_parameters_finite,
    check_result_finite,
    check_samples,
    model_reference,
    trainable_parameters,
)
from fimvar.analysis.masking import check_masking_labels, masked_residuals, position_mask
from fimvar.engine.graph import GraphEngine
from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators.diagonal import centred_fisher_squares
from fimvar.estimators.head import output_layer_sums, position_moments
from fimvar.estimators.labels import check_seed, draw_residuals, rademacher
from fimvar.estimators.sampled import entry_totals, pair_half_distances
from fimvar.estimators.tiling import TILE_ELEMENTS, tiles
from fimvar.families import ExponentialFamily, get_family
from fimvar.families.positions import Positions
from fimvar.results.sampled import SampledResult, SpreadSums

#: float64 elements of one tile of :meth:`SampledAnalysis._plain_sums` (2 MiB: its few passes stay in
#: cache, and a language model's ~10⁸ entries take ~10³ tiles, not 10⁴ small ones)
PLAIN_TILE_ELEMENTS = 1 << 18


class SampledAnalysis(FamilyAnalysis):
    """A resumable sampled analysis (see :func:`analyze_sampled`)."""

    kind = "sampled"
    takes_labels = True  # only for the -100 positions of a language model

    def __init__(self, model: nn.Module, family: str | ExponentialFamily = "categorical", samples: int = 2,
                 seed: int = 0, *, parameters: Iterable[str] | None = None, groups: GroupSpec = None,
                 memory_budget: int | str | None = None, i2: bool = False) -> None:
        super().__init__(model, memory_budget)
        if not isinstance(i2, bool):
            raise FimvarError(f"i2 must be True or False, got {i2!r}")
        #: whether Î2 is estimated too, by one Hutchinson probe of the Hessian per draw (§17.5)
        self.i2 = i2
        self.family = get_family(family)
        self.samples = check_samples(samples)
        if self.samples < 2:
            raise FimvarError("the sampled analysis estimates the label noise from the spread of the draws "
                              "of each input: give samples=2 or more")
        self.seed = check_seed(seed)
        self.parameter_names = trainable_parameters(model, parameters)
        self.groups = resolve_groups(self.parameter_names, groups)
        check_parameters_finite(model, self.parameter_names)
        self.engine = GraphEngine(model, self.parameter_names, self.memory_budget)
        #: the model's linear output layer, whose parameters' exact quantities are computed in
        #: closed form (docs/theory.md §17.1), and those parameters; ``None`` until the first chunk
        self.output_layer: str | None = None
        self.exact: list[str] | None = None

    def _find_output_layer(self, x: torch.Tensor) -> None:
        """Set :attr:`output_layer` and :attr:`exact` (once): the ``nn.Linear`` the graph engine
        proves to give the model's output (:meth:`GraphEngine.output_linear`), with one output
        per class of the family at each position; none otherwise."""
        name = self.engine.output_linear(x)
        module = None if name is None else self.engine.layers[name]
        classes = self.width // (self.family.positions if isinstance(self.family, Positions) else 1)
        if module is None or module.out_features != classes:
            self.output_layer, self.exact = None, []
            return
        self.output_layer = name
        names = self.engine.names
        own = {names[id(p)] for p in module.parameters(recurse=False) if id(p) in names}
        self.exact = [n for n in self.parameter_names if n in own]

    def chunk_size(self, x: torch.Tensor) -> int:
        """Chunks of an even number of inputs (at least 2, whatever the budget): the standard errors
        pair consecutive inputs within a chunk."""
        size = self.engine.chunk_size(x, self.samples, 0, factored=True)
        return max(2, size - size % 2)

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        check_masking_labels(family, labels, "the sampled analysis")
        mask = position_mask(family, self.packing, x, labels)

        drawn = {}

        def residuals(h: torch.Tensor) -> torch.Tensor:
            family.check_outputs(h)
            draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
            drawn["draws"] = draws
            return draws if mask is None else masked_residuals(draws, mask, h.shape[1] // family.positions)

        if self.exact is None:
            self._find_output_layer(x)
        keep = () if self.output_layer is None else (self.output_layer,)
        h, blocks, kept = self.engine.draw_gradients(x, residuals, keep)
        n = x.shape[0]
        if self.output_layer is not None:
            self._add_output_layer(h, kept[self.output_layer], mask)
        spreads = {}
        for block in blocks:
            spreads[block.name] = self._add_block(block, n)
        zero_input, zero_pair = torch.zeros(n, dtype=torch.float64), torch.zeros(n // 2, dtype=torch.float64)
        for name, p in self.model.named_parameters():  # no output depends on it
            if name in self.parameter_names and name not in spreads:
                zero = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                self.accumulator.add(parameter(name, "i1_within"), zero)
                self.accumulator.add_moments(parameter(name, "score"), parameter(name, "score_m2"), n,
                                             zero, zero)
                spreads[name] = (zero_input, zero_pair)
        self._add_spreads([spreads[k] for k in self.parameter_names])
        if self.i2:
            self._add_likelihood_probes(x, h, drawn["draws"], mask)

    def _add_likelihood_probes(self, x: torch.Tensor, h: torch.Tensor, draws: torch.Tensor,
                               mask: torch.Tensor | None) -> None:
        """Î2's sums from one Hutchinson probe of the negative log-likelihood's Hessian per input
        and draw (docs/theory.md §17.5), as Î1's from its squares: within-input spreads, the
        per-input means' total and centred sum of squares, and the spreads' sums."""
        family, n = self.family, x.shape[0]
        statistics = draws + family.mean(h)[:, None, :]  # t(y_m) = ε_m + η(h)
        keep = None
        if mask is not None:
            ones = torch.ones_like(h)[:, None, :]
            keep = masked_residuals(ones, mask, h.shape[1] // family.positions)[:, 0]
        names = self.parameter_names
        dtype = model_reference(self.model).dtype
        count = sum(self.model.get_parameter(k).numel() for k in names)

        def signs(i: int) -> torch.Tensor:  # input i's M directions, seeded by its global index
            index = torch.tensor([self.chunk_start + i])
            return rademacher(self.seed, index, self.samples, count, dtype, h.device)[0]

        probes = self.engine.likelihood_probes(x, names, statistics.to(dtype), family.mean,
                                               None if keep is None else keep.to(dtype), signs)
        spreads = [self._add_draw_sums(name, self.model.get_parameter(name).shape, n, "i2",
                                       *self._plain_sums(probes.pop(name), n, square=False))
                   for name in names]
        self._add_spreads(spreads, prefix="i2_")

    def _add_output_layer(self, h: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The exact sums of the output layer's parameters (docs/theory.md §17.1): the Fisher and
        its centred sum of squares over the chunk (merged by Chan's update), and the label noise
        ``v1`` of the per-sequence square."""
        module = self.engine.layers[self.output_layer]
        quadratic, fourth = position_moments(self.family, h, mask)
        squares = a.to(torch.float64).reshape(h.shape[0], quadratic.shape[1], -1) ** 2
        names = self.engine.names
        for p, inputs in ((module.weight, squares), (module.bias, None)):
            if p is None or id(p) not in names or names[id(p)] not in self.exact:
                continue
            elements = max(1, min(TILE_ELEMENTS, self.memory_budget // 64))  # ~8 float64 tiles
            sums, name = output_layer_sums(quadratic, fourth, inputs, elements), names[id(p)]
            self.accumulator.add(parameter(name, "exact_v1"), sums.v1)
            self.accumulator.add_moments(parameter(name, "exact_fisher"), parameter(name, "exact_fisher_m2"),
                                         h.shape[0], sums.fisher, sums.fisher_m2)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "output_layer": self.output_layer, "exact": self.exact}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        # a checkpoint written before the output layer was exact holds no exact sums: it stays sampled
        self.output_layer, self.exact = state.get("output_layer"), state.get("exact", [])

    def _add_block(self, block, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's sums for one parameter: the within-input sums of squares
        ``Σ_x Σ_m (s_m² − s̄²)²`` and the per-input means' total and centred sum of squares (Î1 is
        their total over N), all float64 and free of cancellation. Returns the tensor's per-input
        label-noise estimates ``w_x`` and its pairs' ``D`` (:mod:`fimvar.estimators.sampled`)."""
        if block.inputs is None:
            within, total, m2, label_noise, pairs = self._plain_sums(block.first, n)
        else:  # a factored weight's s_m = δ_m a shares a²: sums over inputs are matrix products
            first = block.first
            per_input = torch.empty(n, first.shape[2], dtype=torch.float64, device=first.device)
            spread = torch.empty_like(per_input)
            for rows, cols in tiles(n, first.shape[1], first.shape[2]):
                squares = first[rows, :, cols].to(torch.float64).square()  # not in place: shared
                mean = squares.mean(1)
                per_input[rows, cols] = mean
                spread[rows, cols] = (squares - mean[:, None]).square_().sum(1)
            within = block.reduce(spread, 4)
            total, total_sq = block.reduce(per_input, 2), block.reduce(per_input**2, 4)
            m2 = centred_fisher_squares(block, per_input, total, total_sq)
            label_noise = entry_totals(block, spread, 4)
            pairs = pair_half_distances(block, per_input)
        return self._add_draw_sums(block.name, block.shape, n, "i1", within, total, m2, label_noise, pairs)

    #: the accumulator's keys of each estimator's draw sums: within-input spread, total, centred m2
    DRAW_KEYS = {"i1": ("i1_within", "score", "score_m2"), "i2": ("i2_within", "i2", "i2_m2")}

    def _add_draw_sums(self, name: str, shape: torch.Size, n: int, estimator: str, within: torch.Tensor,
                       total: torch.Tensor, m2: torch.Tensor, label_noise: torch.Tensor,
                       pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one tensor's chunk sums of an estimator's draws (new tensors: handed over, updated in
        place) and return its per-input label-noise estimates ``w_x`` and its pairs' ``D``."""
        within_key, total_key, m2_key = self.DRAW_KEYS[estimator]
        acc = self.accumulator
        acc.add(parameter(name, within_key), within.reshape(shape), in_place=True)
        acc.add_moments(parameter(name, total_key), parameter(name, m2_key), n, total.reshape(shape),
                        m2.reshape(shape), in_place=True)
        return (label_noise / (self.samples - 1)).cpu(), pairs.cpu()

    def _plain_sums(self, first: torch.Tensor, n: int, square: bool = True) -> tuple[torch.Tensor, ...]:
        """:meth:`_add_block` for the plain layout ``first`` ``(n, M, J)`` (its squares; the values
        themselves without ``square``), fused a tile of entries
        at a time (every input of the tile in cache), in float64: the squares' means over the draws
        and their centred within-input spreads, the means' centred spread over the inputs (each
        centred on its own mean, two passes over cached data). Returns the sums over inputs of the
        within spreads and of the means, the means' centred sum of squares (all ``(J,)``), and per
        input (per pair) the within spreads (the pairs' ``D``) summed over the entries."""
        columns, samples = first.shape[2], self.samples
        device = first.device
        within, total, m2 = (torch.empty(columns, dtype=torch.float64, device=device) for _ in range(3))
        label_noise = torch.zeros(n, dtype=torch.float64, device=device)
        pairs = torch.zeros(n // 2, dtype=torch.float64, device=device)
        paired = n - n % 2
        step = max(1, PLAIN_TILE_ELEMENTS // (n * samples))
        for start in range(0, columns, step):
            cols = slice(start, start + step)
            squares = first[:, :, cols].to(torch.float64)  # (n, M, c), never changed in place: shared
            if square:
                squares = squares.square()
            if samples == 2:  # (a − ā)² + (b − ā)² = (a − b)²/2: one difference
                mean = (squares[:, 0] + squares[:, 1]).mul_(0.5)
                spread = (squares[:, 0] - squares[:, 1]).square_().mul_(0.5)
            else:
                mean = squares.sum(1).div_(samples)  # (n, c)
                spread = torch.zeros_like(mean)
                for m in range(samples):  # Σ_m (s_m² − s̄²)²
                    difference = squares[:, m] - mean
                    spread.addcmul_(difference, difference)
            within[cols] = spread.sum(0)
            label_noise += spread.sum(1)
            total[cols] = mean.sum(0)
            if n == 2:  # the chunk is one pair: its centred sum of squares is the pair's D
                half = (mean[0] - mean[1]).square_().mul_(0.5)
                m2[cols] = half
                pairs += half.sum()
                continue
            centred = mean - total[cols] / n
            m2[cols] = centred.square_().sum(0)
            if paired:
                pairs += 0.5 * (mean[0:paired:2] - mean[1:paired:2]).square_().sum(1)
        return within, total, m2, label_noise, pairs

    def _add_spreads(self, spreads: list[tuple[torch.Tensor, torch.Tensor]], prefix: str = "") -> None:
        """Sums of the per-input label-noise estimates ``w`` (K tensors) and of the pairs'
        ``z = (D, w̄)`` with their outer products, for the standard errors (docs/theory.md §17.2);
        ``prefix`` names those of Î2."""
        w = torch.stack([label for label, _ in spreads], 1)  # (n, K)
        pairs = w.shape[0] // 2
        z = torch.cat([torch.stack([d for _, d in spreads], 1),
                       (w[0 : 2 * pairs : 2] + w[1 : 2 * pairs : 2]) / 2], 1)  # (pairs, 2K)
        acc = self.accumulator
        acc.add(run_key(prefix + "label_noise"), w.sum(0))
        acc.add(run_key(prefix + "label_noise_outer"), w.T @ w)
        acc.add(run_key(prefix + "pairs"), torch.tensor(float(pairs)))
        acc.add(run_key(prefix + "pair"), z.sum(0))
        acc.add(run_key(prefix + "pair_outer"), z.T @ z)

    def _spread_sums(self, prefix: str) -> SpreadSums:
        sums = self.accumulator.sums
        return SpreadSums(self.parameter_names, self.count, sums[run_key(prefix + "label_noise")],
                          sums[run_key(prefix + "label_noise_outer")], int(sums[run_key(prefix + "pairs")]),
                          sums[run_key(prefix + "pair")], sums[run_key(prefix + "pair_outer")])

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "sums": 2, "family": self.family.name, "samples": self.samples,
                "seed": self.seed, "i2": self.i2,
                "parameters": self.parameter_names, "model": checkpoints.model_hash(self.model)}

    def result(self, consume: bool = False) -> SampledResult:
        """The result of the sums so far. ``consume``: build it in the sums' own memory (divided in
        place, a language model's float64 tensors are not copied), after which this analysis holds
        no sums (:func:`analyze_sampled` does so)."""
        n, m = self.count, self.samples
        if n == 0:
            raise FimvarError("the data is empty: no input was analysed")
        if n < 2:
            raise FimvarError("the sampled analysis needs at least 2 inputs to estimate the input noise")
        if getattr(self, "consumed", False):
            raise FimvarError("this analysis handed its sums to its result (result(consume=True)); "
                              "keep that result")
        names = self.parameter_names
        sums = self.accumulator.sums

        def mean(key, divisor: float) -> torch.Tensor:
            return sums[key].div_(divisor) if consume else sums[key] / divisor

        i1 = {k: mean(parameter(k, "score"), n) for k in names}
        v1 = {k: mean(parameter(k, "i1_within"), n * (m - 1)) for k in names}
        between = {k: mean(parameter(k, "score_m2"), n - 1).clamp_min_(0.0) if consume else
                   moments.sample_variance(n, sums[parameter(k, "score_m2")]) for k in names}
        unbiased = {k: torch.sub(between[k], v1[k], alpha=1.0 / m) for k in names}
        second = {}
        if self.i2:  # Î2 from the probes, in the same form (docs/theory.md §17.5)
            second = {"i2": {k: mean(parameter(k, "i2"), n) for k in names},
                      "v2": {k: mean(parameter(k, "i2_within"), n * (m - 1)) for k in names},
                      "between_i2": {k: moments.sample_variance(n, sums[parameter(k, "i2_m2")])
                                     for k in names},
                      "spreads_i2": self._spread_sums("i2_")}
        exact = [k for k in names if k in (self.exact or [])]
        fisher = {k: sums[parameter(k, "exact_fisher")] / n for k in exact}
        for k in exact:  # the output layer's exact terms (docs/theory.md §17.1)
            v1[k] = sums[parameter(k, "exact_v1")] / n
            unbiased[k] = moments.sample_variance(n, sums[parameter(k, "exact_fisher_m2")])
        result = SampledResult(
            family=self.family.name, samples=m, num_inputs=n,
            shapes={k: p.shape for k, p in self.model.named_parameters() if k in names},
            i1=i1, v1=v1, input_var={k: v.clamp_min(0.0) for k, v in unbiased.items()},
            input_var_unbiased=unbiased, between=between, fisher=fisher,
            spreads=self._spread_sums(""), **second,
            metadata={"seed": self.seed, "outputs": self.width, "engine": self.engine.name,
                      "exact": exact, **({"i2": True} if self.i2 else {}), **self.run_metadata()},
            groups=self.groups)
        layers = describe_groups(self.model, self.groups)
        if layers:
            result.metadata["layers"] = layers
        check_result_finite({"i1": i1, "v1": v1, "between": between, "fisher": fisher,
                             **{k: v for k, v in second.items() if k != "spreads_i2"}})
        if consume:
            self.consumed = True
            self.accumulator.sums = {}
        return result


def analyze_sampled(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 2,
    seed: int = 0,
    *,
    labels: torch.Tensor | None = None,
    parameters: Iterable[str] | None = None,
    groups: GroupSpec = None,
    memory_budget: int | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
    i2: bool = False,
) -> SampledResult:
    """Î1 with ``samples`` labels drawn from the model per input and the unbiased estimates of its
    variance's two terms from the draws (docs/theory.md §17), at the cost of ``samples`` backward
    passes per chunk whatever the number of outputs — a language model's vocabulary included.

    ``v1 = Σ_x Σ_m (s²_xm − s̄²_x)² / (N (M − 1))`` (label noise, unbiased for ``E_x v1(x)``),
    ``between`` the sample variance of the per-input means ``s̄²_x`` (unbiased for
    ``Var_x I(θ|x) + E_x v1/M``), the input noise ``between − v1/M``; ``variance()`` combines them
    for any design ([B] Thm 4.7). The draws are those of :func:`fimvar.analyze` with the same seed
    (so its ``i1`` equals analyze's). Runs on the graph engine (hooked layers only). ``labels``
    only leave out positions labelled ``-100``. ``groups``: the parameter groups of the per-layer
    summaries and plan (default one per module, as :func:`fimvar.analyze`). Other arguments as in
    :func:`fimvar.analyze`.

    The parameters of a linear output layer whose output is the model's output (checked by one
    probing forward; not a head tied to the embedding, whose score sums both uses) get their exact
    Fisher (``result.fisher``), exact ``v1`` and exact input noise in closed form (docs/theory.md
    §17.1), listed in ``result.metadata["exact"]``; ``variance`` uses them; their ``i1`` stays
    the sampled Î1.

    ``i2=True`` also estimates Î2 (``result.i2``, ``result.v2``, ``result.variance("i2")``): per
    input and draw one Hutchinson probe ``z ⊙ H z`` of the Hessian ``H`` of the negative
    log-likelihood at the sampled label (docs/theory.md §17.5), unbiased for the Fisher — what
    Hessian-diagonal optimisers and pruning codes compute (Sophia-H, AdaHessian, OBS) — with its
    variance (label and probe noise within an input, input noise between inputs) in the same
    unbiased forms. It costs one Hessian-vector product per input and draw (a double backward
    pass through the model for one input, about 4 gradients of it), on top of Î1's."""
    analysis = SampledAnalysis(model, family, samples, seed, parameters=parameters, groups=groups,
                               memory_budget=memory_budget, i2=i2)
    analysis.run(x, labels, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result(consume=True)
