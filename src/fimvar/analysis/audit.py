"""The estimator audit (docs/theory.md §15): the expectation, bias and variance of the estimators
people call "the Fisher" — EWC, Sophia's GNB, the empirical Fisher, Monte Carlo Fisher with k
samples, Î1, Î2, their combination, Hutchinson's Hessian diagonal at sampled labels, the exact
Fisher — from one streaming pass over the inputs.

One chunk adds the per-parameter sums of the diagonal analysis
(:func:`~fimvar.estimators.diagonal.block_sums`: ``ΣF``, ``ΣF²``, ``Σv1``, …) and, with data
labels, the centred power sums (up to the fourth) of the per-input data-label gradients ``g_i``
and the centred sum of squares of ``g_i²``, merged across chunks without cancellation
(:mod:`fimvar.estimators.practical`). With ``"hutchinson"`` a chunk also adds the probe term
``Σ_x Q_i(x)`` of docs/theory.md §15.7, from the exact per-input Jacobians and output Hessians of
:class:`~fimvar.engine.full.FullDerivatives` (small models: ``T·P²`` numbers per input).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fimvar.analysis import checkpoint as checkpoints
from fimvar.analysis.accumulator import parameter
from fimvar.analysis.diagonal import add_block_sums, diagonal_result, with_probes
from fimvar.analysis.driver import FamilyAnalysis
from fimvar.analysis.groups import resolve_groups
from fimvar.analysis.inputs import (
    check_derivatives_finite,
    check_parameters_finite,
    check_probes,
    check_result_finite,
    check_samples,
    trainable_parameters,
)
from fimvar.analysis.masking import masked_derivatives, masked_residuals, position_mask
from fimvar.engine import make_engine
from fimvar.engine.base import ParameterDerivatives
from fimvar.engine.full import FullDerivatives
from fimvar.errors import FimvarError
from fimvar.estimators import moments
from fimvar.estimators import practical as formulas
from fimvar.estimators.design import CostModel, Target
from fimvar.estimators.diagonal import block_sums
from fimvar.estimators.labels import check_seed, draw_residuals
from fimvar.estimators.variance import joint_variance
from fimvar.families import ExponentialFamily, get_family
from fimvar.families.positions import Positions
from fimvar.results.audit import AUDIT_TARGET, ESTIMATORS, AuditResult, EstimatorAudit
from fimvar.results.diagonal import DiagonalResult

#: estimators that need the data labels, and those that need a batch size
NEED_LABELS = ("empirical", "ewc")
NEED_BATCHES = ("ewc", "gnb")
#: the centred power sums of the data-label gradients g_i (docs/theory.md §15.1)
GRADIENT_MOMENTS = ("gradient", "gradient_p2", "gradient_p3", "gradient_p4")
#: elements of one tile of per-input gradient values
TILE_ELEMENTS = 1 << 22
#: estimators audited only when asked for: Hutchinson's probe term needs per-input Hessians
ON_REQUEST = ("mc", "hutchinson")
#: the estimators audited for per-position (sequence) outputs: the per-input and sampled-label
#: ones; the batch and data-label estimators have per-token conventions of their own
SEQUENCE_ESTIMATORS = ("exact", "i1", "mc", "token", "i2", "combined")
#: the accumulated probe term of Hutchinson's estimate (docs/theory.md §15.7)
PROBE_TERM = "hutchinson_probe"
#: bytes of the per-input Hessians per output and squared parameter count (float64, the
#: contractions' intermediates: a safety factor of 4, as in FullDerivatives.chunk_size)
HESSIAN_BYTES = 4 * 8


def gradient_values(block: ParameterDerivatives, residual: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
    """The per-input data-label gradients ``g = −(t(ŷ) − η)·u`` of one parameter tensor, float64, as
    tiles ``(columns of the flattened parameter, values (n, columns))``; a factored weight's
    ``g_{jm} = r_j a_m`` (docs/theory.md §9.1) a tile of its inputs' columns at a time."""
    cache = block.shared
    if "audit_projection" not in cache:
        cache["audit_projection"] = -torch.einsum("nt,ntj->nj", residual, block.first.to(torch.float64))
    projected = cache["audit_projection"]  # (n, J)
    n, width = projected.shape
    if block.inputs is None:
        return [(slice(0, width), projected)]
    inputs = block.inputs.to(torch.float64)
    columns = inputs.shape[1]
    step = max(1, TILE_ELEMENTS // max(1, n * width))
    tiles = []
    for start in range(0, columns, step):
        cols = slice(start, min(columns, start + step))
        values = projected[:, :, None] * inputs[:, None, cols]  # (n, J, m')
        tiles.append((cols, values))
    return tiles


class AuditAnalysis(FamilyAnalysis):
    """A streaming estimator audit: feed batches with :meth:`update`, read :meth:`result`."""

    kind = "audit"
    takes_labels = True
    labels_use = "for the empirical Fisher and EWC"

    def __init__(self, model: nn.Module, family: str | ExponentialFamily = "categorical",
                 estimator: str | Iterable[str] | None = None, batch_size: int | None = None,
                 samples: int = 1, seed: int = 0, engine: str = "auto", *,
                 parameters: Iterable[str] | None = None, target: Target | None = None,
                 cost: CostModel | None = None, memory_budget: int | str | None = None,
                 probes: int = 1) -> None:
        super().__init__(model, memory_budget)
        self.family = get_family(family)
        self.estimators = check_estimators(estimator)
        self.explicit = estimator not in (None, "all")
        if batch_size is not None:
            formulas.check_partition(batch_size, batch_size)
        elif self.explicit and set(self.estimators) & set(NEED_BATCHES):
            raise FimvarError(f"the {'/'.join(e for e in self.estimators if e in NEED_BATCHES)} "
                              "estimator needs batch_size (the batch size of its one pass)")
        self.batch_size = batch_size
        self.samples = check_samples(samples)
        self.probes = check_probes(probes)
        self.seed = check_seed(seed)
        self.target = target or AUDIT_TARGET
        self.cost = cost
        self.parameter_names = trainable_parameters(model, parameters)
        check_parameters_finite(model, self.parameter_names)
        self.groups = resolve_groups(self.parameter_names, None)
        self.engine = make_engine(engine, model, self.parameter_names, self.memory_budget)
        self.hessians: FullDerivatives | None = None
        if "hutchinson" in self.estimators:
            self.hessians = FullDerivatives(model, self.parameter_names, self.memory_budget)

    # ------------------------------------------------------------------ one chunk
    def prepare(self, x: torch.Tensor) -> None:
        first = self.width is None
        super().prepare(x)
        refused = [e for e in self.estimators if e not in audited_for(self.family)]
        if first and refused and self.explicit:
            raise FimvarError(
                f"the {'/'.join(refused)} estimator is not audited for "
                + ("per-position (sequence) outputs; audit one of " + ", ".join(SEQUENCE_ESTIMATORS)
                   if isinstance(self.family, Positions) else "one output distribution per input: the "
                   "per-token squares need per-position (N, L, T) outputs"))
        if self.hessians is not None:
            size = self.hessians.size
            needed = HESSIAN_BYTES * self.width * (size * size + size)
            if needed > self.memory_budget:
                raise FimvarError(
                    f"the Hutchinson audit forms the exact per-input Hessians of the {self.width} outputs "
                    f"in the {size} analysed parameters ({self.width}×{size}² numbers, about "
                    f"{needed / 1e9:.3g} GB with its contractions) for its probe variance "
                    f"(docs/theory.md §15.7), beyond memory_budget = {self.memory_budget / 1e9:.3g} GB; "
                    "restrict parameters= to fewer parameters, or raise memory_budget")

    def chunk_size(self, x: torch.Tensor) -> int:
        chunk = self.engine.chunk_size(x, self.width, self.samples, column_bytes=8 * 8)
        if self.hessians is not None:
            size = self.hessians.size
            per_input = HESSIAN_BYTES * self.width * (size * size + size)
            chunk = min(chunk, max(1, self.memory_budget // per_input))
        return chunk

    def update_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        family = self.family
        h, blocks = self.engine.derivatives(x)
        family.check_outputs(h)
        n = h.shape[0]
        mask = position_mask(family, self.packing, x, labels)  # padding left out (§13)
        if mask is not None:
            blocks = masked_derivatives(blocks, mask, h.shape[1] // family.positions)
        if isinstance(family, Positions):  # labels only mark padding: no data-label estimator here
            labels = None
        draws = draw_residuals(family, h, self.samples, self.seed, self.chunk_start)
        if self.engine.estimates_second:  # v2, c12 from probes (docs/theory.md §14.1)
            kept = draws if mask is None else masked_residuals(draws, mask, h.shape[1] // family.positions)
            blocks = with_probes(self.engine, x, blocks, kept, self.seed, self.chunk_start)
        residual = None
        if labels is not None:
            residual = family.centered(h, family.check_labels(labels.to(h.device), h))
        widest = max(b.first.shape[2] for b in blocks)
        draw_chunk = max(1, self.memory_budget // (8 * 6 * n * widest))
        acc = self.accumulator
        for block in blocks:
            sums = block_sums(family, h, block, draws, residual, None, draw_chunk)
            check_derivatives_finite(block.name, sums.quantities)
            add_block_sums(acc, block.name, sums.quantities, n, skip=("empirical",))
            if residual is not None:
                self._add_gradients(block, residual, n)
        if self.hessians is not None:
            self._add_probe_terms(x, family)

    def _add_probe_terms(self, x: torch.Tensor, family: ExponentialFamily) -> None:
        """Add the chunk's ``Σ_x Q_i(x)``, the probe term of Hutchinson's variance
        (:func:`~fimvar.estimators.practical.hutchinson_probe_terms`), per parameter tensor."""
        h, jacobian, hessians = self.hessians.derivatives(x)
        probe = formulas.hutchinson_probe_terms(jacobian, hessians, family.fisher(h)).sum(0)
        for name, columns in self.hessians.slices.items():
            value = probe[columns].reshape(self.hessians.shapes[name])
            if not torch.isfinite(value).all():
                raise FimvarError(f"the second derivatives of parameter {name!r} are NaN or Inf for some "
                                  "inputs; check the weights and inputs for overflow")
            self.accumulator.add(parameter(name, PROBE_TERM), value)

    def _add_gradients(self, block: ParameterDerivatives, residual: torch.Tensor, n: int) -> None:
        """Merge the chunk's centred power sums of ``g_i`` and the centred sum of squares of
        ``g_i²`` (the empirical Fisher's per-input values) into the accumulator."""
        shape = block.shape
        columns = shape.numel() if block.inputs is None else block.inputs.shape[1]
        rows = 1 if block.inputs is None else shape.numel() // columns
        parts = [torch.empty(rows, columns, dtype=torch.float64, device=residual.device)
                 for _ in range(6)]
        for cols, values in gradient_values(block, residual):
            flat = values.reshape(n, -1) if block.inputs is None else values
            found = formulas.central_moments(flat)
            squares = moments.chunk_moments(flat * flat)
            for part, value in zip(parts, (*found, *squares), strict=True):
                part[:, cols] = value.reshape(rows, -1)
        chunk = tuple(p.reshape(shape) for p in parts)
        acc, name = self.accumulator, block.name
        acc.add_central_moments(tuple(parameter(name, q) for q in GRADIENT_MOMENTS), n, chunk[:4])
        acc.add_moments(parameter(name, "empirical"), parameter(name, "empirical_m2"), n, chunk[4], chunk[5])

    # ------------------------------------------------------------------ state and result
    def config(self) -> dict[str, Any]:
        family = {k: v for k, v in vars(self.family).items()
                  if isinstance(v, (str, int, float, bool, type(None)))}
        return {"family": {"name": self.family.name, **family}, "estimators": list(self.estimators),
                "batch_size": self.batch_size, "samples": self.samples, "seed": self.seed,
                **({"probes": self.probes} if self.hessians is not None else {}),
                "engine": self.engine.name, "parameters": list(self.parameter_names),
                "model": checkpoints.model_hash(self.model)}

    def result(self) -> AuditResult:
        n = self.count
        if n == 0:
            raise FimvarError("the data is empty: no input was analysed")
        shapes = {name: p.shape for name, p in self.model.named_parameters()}
        shapes = {name: shapes[name] for name in self.parameter_names}
        base = diagonal_result(self.accumulator, family=self.family.name, samples=self.samples,
                               engine=self.engine.name, shapes=shapes, groups=self.groups)
        notes: list[str] = []
        chosen = [e for e in self.estimators if e in audited_for(self.family)]
        if not self.has_labels:
            missing = [e for e in chosen if e in NEED_LABELS]
            if missing and self.explicit:
                raise FimvarError(f"the {'/'.join(missing)} estimator uses the data labels; give labels= "
                                  "(or batches of (inputs, labels) pairs)")
            if missing:
                notes.append("no data labels: the empirical Fisher and EWC are not audited (give labels=)")
            chosen = [e for e in chosen if e not in NEED_LABELS]
        if self.batch_size is None:
            if any(e in NEED_BATCHES for e in chosen):
                notes.append("no batch_size: EWC and GNB are not audited (give batch_size=)")
            chosen = [e for e in chosen if e not in NEED_BATCHES]
        elif any(e in NEED_BATCHES for e in chosen):
            formulas.check_partition(n, self.batch_size)
        cost = self.cost or CostModel(outputs=self.width)
        positions = getattr(self.family, "positions", 1)
        entries = {e: entry(e, base, self.accumulator, cost, self.batch_size, self.probes, positions)
                   for e in chosen}
        if isinstance(self.family, Positions) and not self.explicit:
            notes.append("per-position outputs: EWC, GNB, the empirical Fisher and Hutchinson are not "
                         "audited (their per-token conventions differ); the per-token squares are")
        if n < 30:
            notes.append(f"only {n} inputs: the input-noise terms and the sample sizes are rough")
        if self.labels_from == "batches":
            notes.append("the batches carried data labels ((inputs, labels) pairs or a dict entry 'labels'): "
                         "the empirical Fisher and EWC were audited with them")
        check_result_finite({f"{q} of {e}": getattr(a, q) for e, a in entries.items()
                             for q in ("mean", "bias", "variance", "variance_given_inputs",
                                       "bias_independent", "unit_variance")})
        return AuditResult(family=self.family.name, num_inputs=n, batch_size=self.batch_size,
                           samples=self.samples, shapes=shapes, groups=self.groups, fisher=base.fisher,
                           entries=entries, target=self.target, cost=cost, notes=notes,
                           world_size=self.world_size)


def audited_for(family: ExponentialFamily) -> tuple[str, ...]:
    """The estimators an audit of ``family``'s outputs can hold: for per-position outputs
    :data:`SEQUENCE_ESTIMATORS`, otherwise all but the per-token squares."""
    if isinstance(family, Positions):
        return SEQUENCE_ESTIMATORS
    return tuple(e for e in ESTIMATORS if e != "token")


def check_estimators(estimator: str | Iterable[str] | None) -> tuple[str, ...]:
    """The audited estimators: one name, several, or ``None``/``"all"`` for every one but those of
    :data:`ON_REQUEST` (MC Fisher with k samples is Î1 with M = k; Hutchinson needs per-input
    Hessians, so it is audited only when named)."""
    if estimator is None or estimator == "all":
        return tuple(e for e in ESTIMATORS if e not in ON_REQUEST)
    names = [estimator] if isinstance(estimator, str) else list(estimator)
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown or not names:
        raise FimvarError(f"unknown estimator {unknown[0] if unknown else estimator!r}; use one of "
                          f"{', '.join(ESTIMATORS)} or 'all'")
    return tuple(dict.fromkeys(names))


DESCRIPTIONS = {
    "exact": "exact diagonal Fisher Σ_y p(y|x) g_y² averaged over the inputs ([B] §2, docs/theory.md §8.3)",
    "i1": "Î1: squared score of labels sampled from the model, M per input ([B] §2)",
    "mc": "Monte Carlo Fisher with k = M samples per input (BackPACK DiagGGNMC, NNGeometry "
          "FIM_MonteCarlo, laplace-torch stochastic=True): Î1 with M = k",
    "i2": "Î2: negative Hessian diagonal at labels sampled from the model ([B] §2)",
    "combined": "α*Î1 + (1−α*)Î2, α* per parameter (docs/theory.md §8.1)",
    "token": "per-token squares Σ_t (∂ log p(y_t|h_t)/∂θ)² of a sequence model, one label per position "
             "sampled from the model, M per input (ASDL, LLM pruning and quantisation codes; docs/theory.md "
             "§13.1); unbiased, with a lower label variance than the per-sequence square (Î1)",
    "hutchinson": "Hutchinson's Hessian diagonal z ⊙ (H z) of the per-input loss, Rademacher z, at labels "
                  "sampled from the model (AdaHessian, Sophia-H, curvlinops hutchinson_diag; Hutchinson "
                  "1989; docs/theory.md §15.7)",
    "gnb": "Sophia's Gauss–Newton–Bartlett: B·(batch-mean gradient, one sampled label per input)², "
           "averaged over one pass (Liu et al. 2023)",
    "empirical": "empirical Fisher: per-input squared gradient with the data labels (Kunstner et al. "
                 "2019; [B] §6)",
    "ewc": "EWC: squared gradient of the batch-mean loss with the data labels, averaged over one pass "
           "(Kirkpatrick et al. 2017; Avalanche EWCPlugin)",
}


def entry(estimator: str, base: DiagonalResult, acc, cost: CostModel, batch_size: int | None,
          probes: int = 1, positions: int = 1) -> EstimatorAudit:
    """The :class:`EstimatorAudit` of one estimator from the accumulated sums (docs/theory.md §15)."""
    n, m = base.num_inputs, base.samples
    names = list(base.fisher)
    fisher = base.fisher
    zero = {k: torch.zeros_like(v) for k, v in fisher.items()}

    def summed(quantity: str) -> dict[str, torch.Tensor]:
        return {k: acc.sums[parameter(k, quantity)] for k in names}

    def make(mean, variance, given, bias_independent, unit, randomness, per_input, draws=None,
             batch=None, **extra) -> EstimatorAudit:
        return EstimatorAudit(estimator, DESCRIPTIONS[estimator], randomness, mean,
                              {k: mean[k] - fisher[k] for k in names}, variance, given,
                              bias_independent, unit, per_input, batch, draws, **extra)

    over_inputs = f"over the {n} inputs as a sample of the data and the label draws ({m} per input)"
    if estimator in ("i1", "mc", "i2", "combined"):
        kind = "i1" if estimator == "mc" else estimator
        label = base.label_variance(kind)
        given = {k: joint_variance(0.0, label[k], n, m) for k in names}
        unit = {k: joint_variance(base.input_var[k], label[k], 1, m) for k in names}
        return make(fisher, base.variance(kind), given, zero, unit, over_inputs,
                    cost.per_input(kind, m), draws=m)
    if estimator == "token":  # the per-token squares of a sequence model, docs/theory.md §13.1
        label = base.v1_token
        given = {k: joint_variance(0.0, label[k], n, m) for k in names}
        unit = {k: joint_variance(base.input_var[k], label[k], 1, m) for k in names}
        variance = {k: joint_variance(base.input_var[k], label[k], n, m) for k in names}
        return make(fisher, variance, given, zero, unit,
                    f"over the {n} inputs as a sample of the data and the label draws ({m} per position)",
                    cost.per_token(m, positions), draws=m)
    if estimator == "hutchinson":  # docs/theory.md §15.7
        probe = {k: acc.sums[parameter(k, PROBE_TERM)] / n for k in names}
        label = {k: formulas.hutchinson_label_variance(base.v2[k], probe[k], probes) for k in names}
        given = {k: joint_variance(0.0, label[k], n, m) for k in names}
        unit = {k: joint_variance(base.input_var[k], label[k], 1, m) for k in names}
        variance = {k: joint_variance(base.input_var[k], label[k], n, m) for k in names}
        probed = any(base.estimated.values())
        estimated = ["v2 (Hutchinson probes of the engine, docs/theory.md §14.1)"] if probed else []
        return make(fisher, variance, given, zero, unit,
                    f"over the {n} inputs as a sample of the data, the label draws ({m} per input) and "
                    f"the Rademacher probes ({probes} per draw)", cost.hutchinson(m, probes), draws=m,
                    probes=probes, estimated=estimated)
    if estimator == "exact":
        return make(fisher, base.variance("exact"), zero, zero, dict(base.input_var),
                    f"over the {n} inputs as a sample of the data (no label noise)",
                    cost.per_input("exact", 0))
    if estimator == "empirical":
        variance = {k: formulas.empirical_variance(v, n) for k, v in summed("empirical_m2").items()}
        spread = {k: v * n for k, v in variance.items()}
        return make(dict(base.empirical), variance, zero,
                    {k: base.empirical[k] - fisher[k] for k in names}, spread,
                    f"over the {n} inputs as a sample of the data (the data labels fixed with them)",
                    cost.forward + cost.backward)
    batches = n // batch_size
    if estimator == "gnb":
        total, squares, v1 = summed("fisher"), summed("fisher_sq"), summed("v1")
        variance = {k: formulas.gnb_variance(total[k], squares[k], v1[k], n, batch_size) for k in names}
        unit = {k: formulas.gnb_variance_independent(total[k], squares[k], v1[k], n, batch_size, 1)
                * batch_size for k in names}
        return make(dict(fisher), variance, variance, zero, unit,
                    f"over the shuffle of the {n} inputs into {batches} batches of {batch_size} and the "
                    "sampled labels (one per input)", cost.forward + cost.backward, draws=1, batch=batch_size)
    # EWC
    total, p2, p3, p4 = (summed(q) for q in GRADIENT_MOMENTS)
    mean = {k: formulas.ewc_mean(total[k] / n, p2[k], n, batch_size) for k in names}
    variance = {k: formulas.ewc_variance(p2[k], p4[k], n, batch_size) for k in names}
    independent = {k: formulas.ewc_mean_independent(total[k] / n, p2[k], n, batch_size) - fisher[k]
                   for k in names}
    unit = {k: formulas.ewc_variance_independent(total[k] / n, p2[k], p3[k], p4[k], n, batch_size, 1)
            * batch_size for k in names}
    return make(mean, variance, variance, independent, unit,
                f"over the shuffle of the {n} inputs into {batches} batches of {batch_size} (data labels)",
                cost.forward + cost.backward, batch=batch_size)


def audit(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    labels: torch.Tensor | Iterable | None = None,
    estimator: str | Iterable[str] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    samples: int = 1,
    *,
    probes: int = 1,
    rho: float | None = None,
    delta: float | None = None,
    cost: CostModel | None = None,
    engine: str = "auto",
    parameters: Iterable[str] | None = None,
    memory_budget: int | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    block_size: int | None = None,
    progress: bool = False,
) -> AuditResult:
    """Audit the estimators people call "the Fisher" on a model and data (docs/theory.md §15).

    Per parameter: each estimator's exact expectation, its bias against the diagonal Fisher of the
    inputs, and its variance at the design; per layer (``print(result)``): relative bias, relative
    standard deviation, the inputs needed for relative error ``rho`` with probability
    ``1 − delta`` (normal approximation and Chebyshev), their cost, and the cheapest estimator
    that meets the target (:meth:`~fimvar.AuditResult.recommended`).

    Estimators (``estimator``; ``None`` or ``"all"``: every one the arguments allow; a list: those):

    - ``"ewc"``: one pass over the N inputs shuffled into batches of ``batch_size`` (N divisible
      by it), the square of the gradient of the batch-mean negative log-likelihood with the data
      labels, averaged over the batches (Kirkpatrick et al. 2017, Avalanche's ``EWCPlugin``);
      expectation ``μ² + σ²(N−B)/(B(N−1))`` and variance over the shuffle.
    - ``"gnb"``: the same pass with one label per input sampled from the model,
      ``batch_size × (batch-mean gradient)²`` averaged over the batches (Liu et al. 2023,
      Sophia); unbiased; variance over the shuffle and the labels.
    - ``"empirical"``: the mean of the per-input squared gradients with the data labels
      (Kunstner et al. 2019; [B] §6); variance over the inputs as a sample of the data.
    - ``"i1"``, ``"i2"``, ``"combined"``, ``"exact"``: as in :func:`fimvar.analyze` (``samples``
      label draws per input; variance over the inputs and the labels).
    - ``"mc"``: Monte Carlo Fisher with ``k = samples`` labels per input (BackPACK
      ``DiagGGNMC(mc_samples=k)``, NNGeometry ``FIM_MonteCarlo(trials=k)``, laplace-torch
      ``stochastic=True``): Î1 with M = k.
    - ``"hutchinson"`` (only when named): Hutchinson's estimate of the Hessian diagonal of each
      input's loss, ``(1/k) Σ_r z_r ⊙ (H(y) z_r)`` with ``k = probes`` Rademacher vectors over all
      analysed parameters and ``samples`` labels per input sampled from the model, averaged
      (AdaHessian, Yao et al. 2021; Sophia-H, Liu et al. 2023; curvlinops ``hutchinson_diag``;
      Hutchinson 1989). Unbiased for the Fisher; variance ``(Var_x I + E_x[v2 + Q/k]/M)/N`` with
      the probe term ``Q_i = E_y Σ_{j≠i} H_ij(y)²`` computed exactly from per-input Hessians of
      the outputs (docs/theory.md §15.7): small models only (``T·P²`` numbers per input within
      ``memory_budget``, else a :class:`~fimvar.errors.FimvarError`).

    Args:
        model: an ``nn.Module`` mapping a batch to ``(batch, T)`` natural parameters.
        x: inputs, or an iterable of batches or ``(x, y)`` pairs.
        family: the output distribution (``categorical``: the loss is ``F.cross_entropy``).
        labels: data labels (needed for ``ewc`` and ``empirical``).
        estimator: which estimator(s) to audit.
        batch_size: the batch size B of EWC and GNB (needed for them).
        seed: seed of the label draws behind ``i1``/``i2`` (they do not change the audit's values).
        samples: label draws per input M of Î1, Î2, the combination, Hutchinson and MC (``k``).
        probes: Rademacher probes per label draw of Hutchinson's estimate (default 1).
        rho, delta: the target, relative error ``rho`` (default 0.05) with probability
            ``≥ 1 − delta`` (default 0.05) of each layer's diagonal Fisher in the Euclidean norm.
        cost: the :class:`~fimvar.CostModel` (backward passes per input).
        engine, parameters, memory_budget: as in :func:`fimvar.analyze`.
        checkpoint, checkpoint_interval, progress: as in :func:`fimvar.analyze` (resumable).
        block_size: inputs per block when checkpointing or showing progress (``analyze``'s
            ``batch_size``; here ``batch_size`` is the audited estimators' batch size).

    Returns:
        An :class:`~fimvar.AuditResult`; with one estimator, ``result.mean[name]``,
        ``result.variance[name]``, ``result.bias[name]`` are its tensors.
    """
    target = Target.of(AUDIT_TARGET.rho if rho is None else rho,
                       AUDIT_TARGET.delta if delta is None else delta)
    analysis = AuditAnalysis(model, family, estimator, batch_size, samples, seed, engine,
                             parameters=parameters, target=target, cost=cost, memory_budget=memory_budget,
                             probes=probes)
    analysis.run(x, labels, batch_size=block_size, checkpoint=checkpoint,
                 checkpoint_interval=checkpoint_interval, progress=progress)
    return analysis.result()
