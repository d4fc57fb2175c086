"""``fimvar.analyze``: the diagonal Fisher, its two estimators, their variances and bounds."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import Accumulator, Key, parameter, parameter_bound
from fimvar.analysis.driver import FamilyAnalysis
from fimvar.analysis.groups import GroupSpec, describe_groups, resolve_groups
from fimvar.analysis.inputs import (
    check_derivatives_finite,
    check_parameters_finite,
    check_result_finite,
    check_samples,
    model_reference,
    trainable_parameters,
    warn_piecewise_linear,
)
from fimvar.analysis.masking import (
    masked_derivatives,
    masked_residuals,
    masked_rows,
    position_mask,
    unmasked_labels,
)
from fimvar.analysis.path import choose_path, output_columns
from fimvar.analysis.sampled import analyze_sampled
from fimvar.engine import GraphEngine, make_engine
from fimvar.errors import FimvarError, warn
from fimvar.estimators import moments
from fimvar.estimators.bounds.spectrum import BOUND_TERMS, Spectrum, bound_coefficients
from fimvar.estimators.bounds.trace import (
    GROUP_BOUND_TERMS,
    MAX_TRACE_WIDTH,
    OutputMoments,
    group_sums,
    trace_bytes,
)
from fimvar.estimators.diagonal import PROBE_SPREAD, PROBED, block_sums, streamed_block_sums
from fimvar.estimators.labels import check_seed, draw_residuals, rademacher
from fimvar.families import ExponentialFamily, get_family
from fimvar.families.positions import Positions
from fimvar.results.diagonal import Bound, DiagonalResult, GroupBound
from fimvar.results.groups import with_model_group
from fimvar.results.sampled import SampledResult

#: the per-parameter sums of the within-input moments of the draws (M ≥ 2)
DRAW_MOMENTS = ("i1_within", "i2_within", "i12_within")


class Analysis(FamilyAnalysis):
    """A resumable diagonal analysis: feed batches with :meth:`update`, read :meth:`result`.

    Label draws are seeded by the global index of each input (:mod:`fimvar.estimators.labels`),
    so the result does not depend on how the data is split into batches or chunks.
    """

    kind = "diagonal"
    takes_labels = True
    labels_use = "for the empirical Fisher and its bias"

    def __init__(
        self,
        model: nn.Module,
        family: str | ExponentialFamily = "categorical",
        samples: int = 1,
        seed: int = 0,
        engine: str = "auto",
        *,
        parameters: Iterable[str] | None = None,
        groups: GroupSpec = None,
        bounds: bool = True,
        memory_budget: int | str | None = None,
        second_order: bool = True,
    ) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.samples = check_samples(samples)
        self.seed = check_seed(seed)
        self.parameter_names = trainable_parameters(model, parameters)
        check_parameters_finite(model, self.parameter_names)
        self.groups = resolve_groups(self.parameter_names, groups)
        self.bounds = bounds
        if not isinstance(second_order, bool):
            raise FimvarError(f"second_order must be True or False, got {second_order!r}")
        self.second_order = second_order
        self.engine = make_engine(engine, model, self.parameter_names, self.memory_budget,
                                  second=self.second_order)
        self.masked_positions = 0  # per-position outputs left out (fimvar.analysis.masking)
        if second_order:  # the warning is about Î2, which a first-order analysis does not form
            warn_piecewise_linear(model)

    # ------------------------------------------------------------------ one chunk
    def streams_derivatives(self) -> bool:
        """Whether the chunks go through the graph engine's streamed derivatives (docs/theory.md
        §14.3, :meth:`_update_streamed`): its probes or a first-order analysis, and no bounds
        (they need every layer's ``u`` at once for the groups)."""
        graph = isinstance(self.engine, GraphEngine)
        return graph and (self.engine.estimates_second or not self.second_order) and not self.bounds

    def chunk_size(self, x: torch.Tensor) -> int:
        if self.streams_derivatives():
            return self.engine.chunk_size(x, self.width, self.samples, streamed=True)
        if not self.bounds:
            return self.engine.chunk_size(x, self.width, self.samples)
        # the bounds add one per-input table per bound record and the group forms
        blocks = len(self.parameter_names)
        return self.engine.chunk_size(x, self.width, self.samples, column_bytes=8 * len(BOUND_TERMS),
                                      input_bytes=trace_bytes(self.width, blocks))

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        if self.streams_derivatives():
            self._update_streamed(x, labels)
            return
        family = self.family
        self.stage(f"derivatives of {x.shape[0]} inputs")
        h, blocks = self.engine.derivatives(x, second=self.second_order)
        n = h.shape[0]
        draws, residual, mask = self._chunk_labels(x, h, labels)
        if mask is not None:
            blocks = masked_derivatives(blocks, mask, h.shape[1] // family.positions)
        probed = self.second_order and self.engine.estimates_second
        if probed:  # second-order quantities from probes (docs/theory.md §14.1)
            kept = draws if mask is None else masked_residuals(draws, mask, h.shape[1] // family.positions)
            blocks = with_probes(self.engine, x, blocks, kept, self.seed, self.chunk_start)
        output_moments, coefficients = None, None
        if self.bounds:
            if h.shape[1] <= MAX_TRACE_WIDTH:
                output_moments = OutputMoments(family, h)
            spectrum = Spectrum.of(family, h, getattr(output_moments, "fourth_symmetric", None))
            coefficients = bound_coefficients(spectrum)
            if probed or not self.second_order:  # the bounds on v2 need ‖w‖²: neither probes nor u give it
                coefficients = {term: c for term, c in coefficients.items() if term.quantity != "v2"}
        widest = max(b.first.shape[2] for b in blocks)
        draw_chunk = max(1, self.memory_budget // (8 * 6 * n * widest))
        for done, block in enumerate(blocks):
            self.stage(f"parameter {done + 1}/{len(blocks)} of {n} inputs")
            sums = block_sums(family, h, block, draws, residual, coefficients, draw_chunk,
                              self.second_order)
            check_derivatives_finite(block.name, sums.quantities)
            add_block_sums(self.accumulator, block.name, sums.quantities, n)
            name = block.name
            for term, value in sums.bounds.items():
                self.accumulator.add(parameter_bound(name, term.name), value)
        if output_moments is not None:
            by_name = {block.name: block for block in blocks}
            for group, members in with_model_group(self.groups).items():
                found = group_sums(output_moments, [by_name[m] for m in members],
                                   second=self.second_order and not probed)
                for quantity, value in found.exact.items():
                    self.accumulator.add(Key("group", group, quantity), value)
                for term, value in found.bounds.items():
                    self.accumulator.add(Key("group", group, "bound", term.name), value)

    def _update_streamed(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One chunk with the graph engine's derivatives streamed layer by layer (docs/theory.md
        §14.3): each layer's per-input gradients ``u`` are reduced to their statistics in tiles of
        entries that hold every input of the chunk as the engine yields them; the second-order
        terms from the probes as in :meth:`update_chunk` (none in a first-order analysis)."""
        family = self.family
        self.stage(f"derivatives of {x.shape[0]} inputs")
        h, blocks = self.engine.streamed_derivatives(x)
        n = h.shape[0]
        draws, residual, mask = self._chunk_labels(x, h, labels)
        positions_width = None if mask is None else h.shape[1] // family.positions
        probes = {}
        if self.second_order:
            self.stage(f"probes of {n} inputs")
            kept = draws if mask is None else masked_residuals(draws, mask, positions_width)
            probes = probe_estimates(self.engine, x, self.parameter_names, kept, self.seed, self.chunk_start)
        for done, block in enumerate(blocks):
            self.stage(f"parameter {done + 1}/{len(self.parameter_names)} of {n} inputs")
            curvature = probes.pop(block.name) if self.second_order else None
            block = dataclasses.replace(block.plain(), curvature=curvature)
            if mask is not None:
                block = dataclasses.replace(block, first=masked_rows(block.first, mask, positions_width))
            sums = streamed_block_sums(family, h, block, draws, residual)
            check_derivatives_finite(block.name, sums.quantities)
            add_block_sums(self.accumulator, block.name, sums.quantities, n, in_place=True)

    def _chunk_labels(self, x: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """After the checks of the chunk's outputs ``h``: its label draws' residuals ``ε``
        (``(n, M, T)``), those of its data labels (or ``None``) and the mask of the per-position
        outputs left out (``None`` when all count; docs/theory.md §13), counted in
        :attr:`masked_positions`."""
        family = self.family
        family.check_outputs(h)
        mask = position_mask(family, self.packing, x, labels)
        if mask is not None:
            labels = unmasked_labels(labels)
            self.masked_positions += int((~mask).sum())
        draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
        residual = None
        if labels is not None:
            residual = family.centered(h, family.check_labels(labels.to(h.device), h))
        return draws, residual, mask

    # ------------------------------------------------------------------ state and result
    def config(self) -> dict[str, Any]:
        family = {k: v for k, v in vars(self.family).items()
                  if isinstance(v, (str, int, float, bool, type(None)))}
        shapes = {name: list(p.shape) for name, p in self.model.named_parameters()
                  if name in self.parameter_names}
        return {
            "family": {"name": self.family.name, **family},
            "samples": self.samples,
            "seed": self.seed,
            "engine": self.engine.name,
            "parameters": {name: shapes[name] for name in self.parameter_names},
            "groups": self.groups,
            "bounds": bool(self.bounds),
            "model": checkpoints.model_hash(self.model),
            # only when off, so that the checkpoints of full analyses keep their fingerprint
            **({} if self.second_order else {"second_order": False}),
        }

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "masked_positions": self.masked_positions}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.masked_positions = int(state.get("masked_positions", 0))

    def merge_extra_states(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        return {**states[0], "masked_positions": sum(int(s.get("masked_positions", 0)) for s in states)}

    def result(self) -> DiagonalResult:
        shapes = {name: p.shape for name, p in self.model.named_parameters()
                  if name in self.parameter_names}
        shapes = {name: shapes[name] for name in self.parameter_names}
        result = diagonal_result(self.accumulator, family=self.family.name, samples=self.samples,
                                 engine=self.engine.name, shapes=shapes, groups=self.groups)
        result.metadata.update(seed=self.seed, outputs=self.width, **self.run_metadata())
        layers = describe_groups(self.model, self.groups)
        if layers:
            result.metadata["layers"] = layers
        if isinstance(self.family, Positions):
            result.metadata.update(positions=self.family.positions, masked_positions=self.masked_positions)
        notes = []
        if self.labels_from == "batches":
            notes.append("the batches carried data labels ((inputs, labels) pairs or a dict entry 'labels'): "
                         "the empirical Fisher and its bias were computed with them; give batches of "
                         "inputs only to leave them out")
        if self.precision in ("float16", "bfloat16"):
            notes.append(f"the model computes in {self.precision}: the derivatives, and so every value, "
                         "carry that precision (summed in float64); analyse a float32 copy for accurate "
                         "numbers")
        if not self.second_order:
            notes.append("a first-order analysis (second_order=False): the exact Fisher, Î1, v1, the "
                         "input variance and the empirical Fisher only; Î2, v2, c12, the combination "
                         "and the bounds on v2 were not computed")
        elif self.engine.estimates_second:
            notes.append("v2, c12 and Î2 were estimated without bias by Hutchinson probes (two "
                         "per label draw; docs/theory.md §14.1), not computed exactly: their standard "
                         "errors are in result.standard_errors and those of the variances in "
                         "result.variance_error(); the bounds on v2 need ‖w‖² and were not computed")
        if self.bounds and self.width is not None and self.width > MAX_TRACE_WIDTH:
            notes += [
                f"the per-layer trace bounds of [B] Thm D.1 were not computed: they need a "
                f"{self.width}×{self.width} eigendecomposition per input and layer (computed for "
                f"up to {MAX_TRACE_WIDTH} outputs)"]
        if notes:
            result.metadata["notes"] = notes
        return result


def with_probes(engine, x: torch.Tensor, blocks: list, draws: torch.Tensor, seed: int, start: int) -> list:
    """The blocks with their Hutchinson probes (docs/theory.md §14.1) at the label draws ``draws``
    (left-out positions already zeroed), in the plain layout (:func:`probe_estimates`)."""
    estimates = probe_estimates(engine, x, [block.name for block in blocks], draws, seed, start)
    return [dataclasses.replace(block.plain(), curvature=estimates[block.name]) for block in blocks]


def probe_estimates(engine, x: torch.Tensor, names: list[str], draws: torch.Tensor, seed: int, start: int
                    ) -> dict[str, torch.Tensor]:
    """The Hutchinson probes of the parameters ``names`` (``(n, M, 2, J)`` each; docs/theory.md
    §14.1) at the label draws ``draws``: random signs seeded by ``seed`` and the global input
    indices from ``start``, over the parameters in the order of ``names``."""
    n = draws.shape[0]
    # the probes are contracted in the model's precision (the blocks of the autodiff fallback
    # are float64 whatever the model's)
    dtype = model_reference(engine.model).dtype
    sizes = dict(engine.model.named_parameters())
    signs = rademacher(seed, torch.arange(start, start + n), 2 * draws.shape[1],
                       sum(sizes[name].numel() for name in names), dtype, draws.device)
    return engine.probe_estimates(x, names, draws, signs)


def add_block_sums(accumulator: Accumulator, name: str, quantities: dict[str, torch.Tensor], n: int,
                   skip: tuple[str, ...] = ("fisher_sq",), in_place: bool = False) -> None:
    """Add one parameter tensor's chunk sums (:func:`~fimvar.estimators.diagonal.block_sums`):
    plain sums, and the centred sums over inputs ``<q>_m2`` (the Fisher's; with probes, those of
    the estimates of v2 and c12) merged with Chan et al.'s update; ``skip``: quantities left out;
    ``in_place``: the caller hands the tensors over (:meth:`Accumulator.add`)."""
    streamed = {q: f"{q}_m2" for q in ("fisher", *PROBE_SPREAD) if f"{q}_m2" in quantities}
    for quantity, value in quantities.items():
        if quantity not in streamed and quantity not in streamed.values() and quantity not in skip:
            accumulator.add(parameter(name, quantity), value, in_place=in_place)
    for quantity, m2 in streamed.items():
        accumulator.add_moments(parameter(name, quantity), parameter(name, m2), n, quantities[quantity],
                                quantities[m2], in_place=in_place)


def diagonal_result(accumulator: Accumulator, *, family: str, samples: int, engine: str,
                    shapes: dict[str, torch.Size], groups: dict[str, list[str]]) -> DiagonalResult:
    """The :class:`~fimvar.DiagonalResult` of the accumulated sums (means over the inputs)."""
    n = accumulator.count
    if n == 0:
        raise FimvarError("the data is empty: no input was analysed")
    names = list(shapes)

    def mean(quantity: str, scale: float = 1.0) -> dict[str, torch.Tensor]:
        return {k: accumulator.sums[parameter(k, quantity)] / (n * scale) for k in names}

    fisher = mean("fisher")
    input_var = {k: moments.sample_variance(n, accumulator.sums[parameter(k, "fisher_m2")]) for k in names}
    has_labels = accumulator.has(parameter(names[0], "empirical"))
    empirical = mean("empirical") if has_labels else None
    second_order = accumulator.has(parameter(names[0], "i2"))  # not in a first-order analysis
    result = DiagonalResult(
        family=family, samples=samples, num_inputs=n, engine=engine, shapes=shapes,
        groups=groups, fisher=fisher, i1=mean("i1", samples),
        i2=mean("i2", samples) if second_order else {},
        v1=mean("v1"), v2=mean("v2") if second_order else {}, c12=mean("c12") if second_order else {},
        input_var=input_var, second_order=second_order,
        v1_token=mean("v1_token") if accumulator.has(parameter(names[0], "v1_token")) else None,
        empirical=empirical,
        empirical_bias={k: empirical[k] - fisher[k] for k in names} if has_labels else None,
        draw_moments={q: {k: accumulator.sums[parameter(k, q)] for k in names}
                      for q in DRAW_MOMENTS if accumulator.has(parameter(names[0], q))},
    )
    probed = [k for k in names if accumulator.has(parameter(k, PROBE_SPREAD["v2"]))]
    if probed:
        result.estimated = {k: (PROBED if k in probed else ()) for k in names}
        result.standard_errors = probe_standard_errors(accumulator, probed, samples)
        result.v2_unbiased = result.v2
        result.v2 = {k: v.clamp_min(0.0) for k, v in result.v2.items()}
    exact_of = {"fisher": fisher, "v1": result.v1, "v2": result.v2, "input_var": input_var}
    summed = set(accumulator.bounds("parameter"))
    for term in BOUND_TERMS:
        if term.name in summed:
            values = {k: accumulator.sums[parameter_bound(k, term.name)] / n for k in names}
            result.bounds[term.name] = Bound(term.name, term.source, term.quantity, term.side, values,
                                             exact_of[term.quantity])
    for quantity in accumulator.quantities("group"):
        sums = accumulator.owners("group", quantity)
        result.group_exact[quantity] = {g: float(v) / n for g, v in sums.items()}
    for term in GROUP_BOUND_TERMS:
        values = {g: float(v) / n for g, v in accumulator.owners("group", "bound", term.name).items()}
        if values:
            exact = {g: result.group_exact[term.quantity][g] for g in values}
            result.group_bounds[term.name] = GroupBound(term.name, term.source, term.quantity, term.side,
                                                        values, exact)
    check_diagonal_finite(result)
    return result


def probe_standard_errors(accumulator: Accumulator, names: list[str], samples: int
                          ) -> dict[str, dict[str, torch.Tensor]]:
    """Standard errors of the probe estimates of ``v2`` and ``c12`` (means over ``N`` inputs of
    per-input means over ``M`` draws ``e_xm``; docs/theory.md §14.1). With ``M ≥ 2`` from the
    spread within inputs, ``SE² = Σ_x Σ_m (e_xm − ē_x)² / ((M − 1) M N²)`` (unbiased); with one
    draw from the spread over inputs, ``SE² = Σ_x (ē_x − ē)² / ((N − 1) N)``, which also counts
    the inputs' own differences (overstated, never understated). Both sums are streamed free of
    cancellation."""
    inputs = accumulator.count
    if inputs * samples < 2:
        raise FimvarError("second-order quantities estimated by probes need at least two inputs × "
                          "draws for their standard errors: analyse two inputs or more, or samples ≥ 2")
    errors: dict[str, dict[str, torch.Tensor]] = {}
    for quantity, spread in PROBE_SPREAD.items():
        errors[quantity] = {}
        for k in names:
            if samples >= 2:
                m2 = accumulator.sums[parameter(k, spread)] / ((samples - 1) * samples * inputs**2)
            else:
                m2 = accumulator.sums[parameter(k, f"{quantity}_m2")] / ((inputs - 1) * inputs)
            errors[quantity][k] = m2.clamp_min(0.0).sqrt()
    return errors


def check_diagonal_finite(result: DiagonalResult) -> None:
    """Raise a :class:`FimvarError` naming the parameter (or group) and the quantity of the first
    NaN or Inf of ``result``: its tensors, bounds, group values and the derived variances, α* and
    combined estimate (a numerical failure is reported, never returned)."""
    quantities: dict[str, dict] = {q: getattr(result, q) for q in
                                   ("fisher", "i1", "i2", "v1", "v2", "c12", "input_var")}
    if result.empirical is not None:
        quantities.update(empirical=result.empirical, empirical_bias=result.empirical_bias)
    quantities.update({f"draw moment {q}": values for q, values in result.draw_moments.items()})
    quantities.update({f"standard error of {q}": values for q, values in result.standard_errors.items()})
    quantities.update({f"bound {name}": bound.values for name, bound in result.bounds.items()})
    check_result_finite(quantities)
    check_result_finite({f"variance of {e}": result.variance(e) for e in result.estimators})
    if result.second_order:
        alpha = result.alpha_star()
        check_result_finite({"covariance of i1 and i2": result.covariance(), "alpha_star": alpha,
                             "combined estimate": result.combined(alpha)})
    check_result_finite(dict(result.group_exact) | {f"bound {name}": bound.values
                                                    for name, bound in result.group_bounds.items()},
                        owner="group")


def analyze(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
    labels: torch.Tensor | Iterable | None = None,
    engine: str = "auto",
    *,
    parameters: Iterable[str] | None = None,
    groups: GroupSpec = None,
    bounds: bool = True,
    memory_budget: int | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    batch_size: int | None = None,
    progress: bool = False,
    path: str = "auto",
    second_order: bool = True,
) -> DiagonalResult | SampledResult:
    """Exact diagonal Fisher, the estimators Î1/Î2, their variances, covariance and bounds —
    or, for a model with more than :data:`~fimvar.analysis.path.EXACT_COLUMNS_UP_TO` output columns
    per input (a language model: positions × vocabulary), Î1 and its variance from the label draws
    (:func:`fimvar.analyze_sampled`, docs/theory.md §17).

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to ``(batch, T)`` natural parameters.
        x: inputs (first dimension = samples): a tensor, a NumPy array (moved to the model's device,
            floating arrays converted to its dtype), a dict or tuple of the forward's arguments, or
            an iterable of batches (e.g. a ``DataLoader``) of inputs, 1-tuples ``(inputs,)``,
            ``(inputs, labels)`` pairs or argument dicts. Labels carried by the batches (pairs,
            or a dict entry ``labels``/``label`` the forward does not take) are used as data
            labels, with a warning, and recorded as ``result.metadata["data_labels"] ==
            "batches"``.
        family: ``categorical``, ``gaussian``, ``bernoulli``, ``poisson`` or a family object.
        samples: label draws ``M ≥ 1`` per input for Î1 and Î2 (labels sampled from the model).
            The draws of an input are seeded by its position in the data stream (input 0, 1, …
            in the order the batches yield them; docs/theory.md §11): the batching does not
            change the result, but the order does — with ``DataLoader(shuffle=True)`` Î1 and Î2
            change from run to run (within their standard errors); iterate in a fixed order
            for reproducible draws.
        seed: seed of the label draws.
        labels: optional data labels for a tensor ``x``, for the empirical Fisher and its bias
            (with an iterable, let its batches carry them: ``labels=`` is then refused).
        engine: ``auto``, ``autodiff`` or ``structured``.
        parameters: names of the parameters to analyse (default: all that require grad).
        groups: parameter groups for summaries (default: one per module).
        bounds: also compute every bound of [B] and the trace/Frobenius forms.
        memory_budget: bytes the engine may use per chunk: an int, or a string with a unit
            such as ``"2GB"`` or ``"512MiB"`` (default 2 GiB).
        checkpoint: path of a checkpoint file (:mod:`fimvar.analysis.checkpoint`): saved
            periodically and at the end; when it exists, the run resumes from it (same
            arguments required).
        checkpoint_interval: seconds between two checkpoint saves (0: after every block).
        batch_size: inputs per block when checkpointing or showing progress (default 256);
            keep it fixed between a run and its resumption for a bit-identical result.
        progress: show a progress bar (tqdm) on stderr when it is a terminal (none in a log
            file or a pipe), advanced chunk by chunk, with the step of the current chunk
            (derivatives, parameter k of K) next to it.
        path: ``auto`` (the exact analysis up to ``EXACT_COLUMNS_UP_TO`` output columns per input,
            read from one forward pass on the first input; the sampled one above), ``exact`` or
            ``sampled``. The sampled path needs ``samples ≥ 2``, computes no bounds (a warning
            when ``bounds=True``) and takes data labels only as the ``-100``
            marks of padding (docs/theory.md §17.3); ``result.metadata["path"]`` and
            ``["path_reason"]`` say which path ran and why.
        second_order: ``False`` for a first-order analysis: the exact Fisher, Î1 and its
            variance (``v1``, the input variance), the empirical Fisher and the bounds on the
            Fisher and on ``v1`` — everything that needs the first derivatives ``u`` alone —,
            without Î2, ``v2``, ``c12`` and the combination (``result.estimators == ("i1",
            "exact")``; docs/theory.md §3.1). It skips the second derivatives (or, on the graph
            engine, the probes), the dearer half of the work; the first-order numbers are the
            same as those of a full analysis. Ignored on the sampled path (Î1 only there).

    Returns:
        A :class:`~fimvar.DiagonalResult` of float64 tensors (``result.fisher_as(model)``: in the
        parameters' dtype and device); ``result.metadata["precision"]`` names the dtype the model
        computed in (float16 and bfloat16 models are analysed with a warning); on the sampled
        path a :class:`~fimvar.SampledResult` (``i1``, ``variance("i1")`` as here).
    """
    columns = None
    if path == "auto" and engine == "auto":
        columns, x = output_columns(model, x, get_family(family))
    chosen, reason = choose_path(path, engine, columns)
    if chosen == "sampled":
        if check_samples(samples) < 2:
            raise FimvarError(f"analyze takes the sampled path ({reason}), which estimates the label noise "
                              "from the spread of several draws per input: give samples=2 or more")
        if bounds:
            warn(f"analyze takes the sampled path ({reason}); the bounds of [B] need the exact path and "
                 "are not computed: pass bounds=False to silence this warning")
        result = analyze_sampled(model, x, family, samples, seed, labels=labels, parameters=parameters,
                                 groups=groups, memory_budget=memory_budget, checkpoint=checkpoint,
                                 checkpoint_interval=checkpoint_interval, batch_size=batch_size,
                                 progress=progress)
        result.metadata.update(path="sampled", path_reason=reason)
        return result
    analysis = Analysis(model, family, samples, seed, engine, parameters=parameters,
                        groups=groups, bounds=bounds, memory_budget=memory_budget,
                        second_order=second_order)
    analysis.run(x, labels, batch_size=batch_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    result = analysis.result()
    result.metadata.update(path="exact", path_reason=reason)
    return result
