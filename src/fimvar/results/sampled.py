"""The result of the sampled analysis (:func:`fimvar.analyze_sampled`, docs/theory.md §17): Î1
and the unbiased estimates of its two noise terms, from the draws themselves, at any number of
outputs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.design import CostModel, Target
from fimvar.estimators.sampled import mean_standard_error
from fimvar.estimators.variance import joint_variance
from fimvar.results.groups import MODEL_GROUP, with_model_group
from fimvar.results.plan import Plan, make_plan
from fimvar.results.presentation import load, present

Tensors = dict[str, torch.Tensor]
SPREAD_QUANTITIES = ("v1", "input_var", "between", "variance")


@dataclass
class SpreadSums:
    """Float64 sums, over the inputs and over consecutive pairs of inputs, of per-tensor statistics
    that give the standard errors of the variance estimates (docs/theory.md §17.2): per input
    ``w_x`` (K tensors: the label noise summed over a tensor's entries), per pair
    ``z = (D, w̄)`` (``D`` the half squared distance of the pair's per-input means, ``w̄`` the
    pair's mean ``w``)."""

    names: list[str]
    inputs: int
    label_noise: torch.Tensor  # Σ_x w_x, (K,)
    label_noise_outer: torch.Tensor  # Σ_x w_x w_xᵀ, (K, K)
    pairs: int
    pair: torch.Tensor  # Σ z, (2K,)
    pair_outer: torch.Tensor  # Σ z zᵀ, (2K, 2K)

    def selection(self, tensors: Iterable[str] | None) -> torch.Tensor:
        """``(K,)`` indicator of the tensors (every tensor for ``None``), float64."""
        chosen = set(self.names) if tensors is None else set(tensors)
        unknown = chosen - set(self.names)
        if unknown:
            raise FimvarError(f"unknown parameter tensor(s) {sorted(unknown)[:3]}; the result holds "
                              f"{self.names[:5]}{' …' if len(self.names) > 5 else ''}")
        return torch.tensor([float(k in chosen) for k in self.names], dtype=torch.float64)


@dataclass
class SampledResult:
    """Î1 with labels sampled from the model and its variance, estimated from the draws.

    Attributes:
        family: the output family (per position for a sequence model).
        samples: label draws M per input (≥ 2).
        num_inputs: inputs N analysed.
        shapes: parameter shapes.
        i1: Î1, ``(1/(N M)) Σ_x Σ_m (ε_xm·u_x)²`` (for a sequence model the per-sequence square),
            sampled for every tensor (the output layer's too).
        v1: unbiased estimate of the label noise ``E_x v1(x)``: the within-input sample variance
            of the M squares, pooled over the inputs; for the tensors of ``metadata["exact"]``
            the exact ``E_x v1(x)`` of the analysed inputs (docs/theory.md §17.1).
        input_var: estimate of the input noise ``Var_x I(θ|x)``, ``s²_between − v1/M`` clamped
            at 0 (never farther from the truth); the unbiased value is :attr:`input_var_unbiased`.
            For the tensors of ``metadata["exact"]`` the sample variance of the exact ``I(θ|x)``
            over the analysed inputs.
        input_var_unbiased: ``s²_between − v1/M``, unbiased, possibly below 0 (exact tensors: as
            :attr:`input_var`).
        between: the sample variance over inputs of their per-input means ``(1/M) Σ_m (ε_xm·u_x)²``,
            unbiased for ``Var_x I(θ|x) + E_x v1(x)/M`` (from the draws, for every tensor).
        fisher: the exact Fisher ``(1/N) Σ_x I(θ|x)`` of the tensors computed in closed form — the
            parameters of a linear output layer (an untied language-model head), listed in
            ``metadata["exact"]`` (docs/theory.md §17.1); no entry for the others.
        spreads: the sums behind the standard errors of the variance estimates
            (:meth:`estimate`).
        i2, v2, between_i2, spreads_i2: with ``analyze_sampled(..., i2=True)`` (else empty): Î2
            with one Hutchinson probe of the Hessian per draw, ``(1/(N M)) Σ z ⊙ H z``
            (unbiased for the Fisher), the within-input sample variance of its draws pooled over
            the inputs (unbiased for ``E_x [v2(x) + probe noise]``, docs/theory.md §17.5), the
            sample variance of its per-input means and their spread sums — the same forms as
            Î1's.
        metadata: run metadata (seed, outputs, engine, precision, ``exact``).
        groups: group name → parameter names (one group per module from
            :func:`fimvar.analyze_sampled`; one per parameter tensor when not given).
    """

    #: the estimators whose variance this result knows, and so those its plan designs
    estimators = ("i1",)

    family: str
    samples: int
    num_inputs: int
    shapes: dict[str, torch.Size]
    i1: Tensors
    v1: Tensors
    input_var: Tensors
    input_var_unbiased: Tensors
    between: Tensors
    fisher: Tensors = field(default_factory=dict)
    spreads: SpreadSums | None = None
    metadata: dict = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    i2: Tensors = field(default_factory=dict)
    v2: Tensors = field(default_factory=dict)
    between_i2: Tensors = field(default_factory=dict)
    spreads_i2: SpreadSums | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = {name: [name] for name in self.shapes}

    def _terms(self, estimator: str) -> tuple[Tensors, Tensors, SpreadSums | None]:
        """The label noise, the between-input variance and the spread sums of ``estimator``."""
        if estimator == "i2":
            if not self.i2:
                raise FimvarError("this result holds no Î2: run analyze_sampled(..., i2=True)")
            return self.v2, self.between_i2, self.spreads_i2
        return self.v1, self.between, self.spreads

    def _input_noise(self, estimator: str) -> Tensors:
        """The unbiased input noise ``between − label noise/M`` of ``estimator`` (Î1: with the closed
        forms' for the tensors of ``metadata["exact"]``, :attr:`input_var_unbiased`)."""
        if estimator == "i1":
            return self.input_var_unbiased
        label, between, _ = self._terms(estimator)
        return {k: between[k] - label[k] / self.samples for k in between}

    def variance(self, estimator: str = "i1", inputs: int | None = None,
                 draws: int | None = None) -> Tensors:
        """Estimated variance of Î1 over ``inputs`` inputs × ``draws`` draws (default this run's),
        ``(Var_x I + E_x v1 / M) / N`` ([B] Thm 4.7) with both terms estimated without bias
        (docs/theory.md §17); at this run's design it is ``between / N``. ``"exact"``: the exact
        Fisher averaged over ``inputs`` inputs (input noise only). For the tensors of
        ``metadata["exact"]`` both use the exact input and label noise (docs/theory.md §17.1),
        at every design."""
        inputs = self.num_inputs if inputs is None else int(inputs)
        draws = self.samples if draws is None else int(draws)
        if inputs < 1 or draws < 1:
            raise FimvarError("inputs and draws must be at least 1")
        if estimator not in ("i1", "i2", "exact"):
            raise FimvarError("the sampled analysis estimates the variance of 'i1', 'i2' (with i2=True) "
                              f"and 'exact', not {estimator!r}")
        if estimator == "i2":  # probes: no closed form for any tensor; its own input noise estimate
            v2, between, _ = self._terms("i2")
            if inputs == self.num_inputs and draws == self.samples:
                return {k: v / inputs for k, v in between.items()}
            return {k: joint_variance(v, v2[k], inputs, draws).clamp_min(0.0)
                    for k, v in self._input_noise("i2").items()}
        own_design = estimator == "i1" and inputs == self.num_inputs and draws == self.samples
        exact = set(self.fisher)

        def label(k: str):
            return 0.0 if estimator == "exact" else self.v1[k]

        return {k: (self.between[k] / inputs if own_design and k not in exact else
                    joint_variance(v, label(k), inputs, draws).clamp_min(0.0))
                for k, v in self.input_var_unbiased.items()}

    def estimate(self, quantity: str = "variance", tensors: Iterable[str] | None = None,
                 inputs: int | None = None, draws: int | None = None,
                 estimator: str = "i1") -> tuple[float, float]:
        """A variance estimate summed over the entries of ``tensors`` (default every tensor: a layer
        is the list of its tensors' names) and its standard error (docs/theory.md §17.2).

        ``quantity``: ``v1`` (label noise; standard error from the spread of the inputs' own
        estimates ``w_x``), ``input_var`` (its unbiased value ``between − v1/M``), ``between``, or
        ``variance`` (of Î1 over ``inputs`` × ``draws``, default this run's design:
        ``(between + (1/draws − 1/M) v1)/inputs`` before clamping, [B] Thm 4.7). The last three
        take their standard error from the consecutive pairs of inputs ``(D, w̄)``: the mean of
        the pairs' ``D`` uses fewer pairs than ``between`` (every pair of inputs), so by
        Rao–Blackwell its spread is an upper estimate for independent, identically distributed
        inputs; the value itself is the full-data estimate. For the tensors computed in closed
        form (``metadata["exact"]``) the value is the closed form's and the error that of the draws,
        an upper estimate again (the closed form is the draws' estimate averaged over the labels).
        ``estimator="i2"`` (a result of ``i2=True``): the same for Î2, ``v1`` then meaning its
        label-and-probe noise :attr:`v2` (docs/theory.md §17.5).

        Returns ``(value, standard_error)`` as floats.
        """
        if quantity not in SPREAD_QUANTITIES:
            raise FimvarError(f"quantity must be one of {', '.join(map(repr, SPREAD_QUANTITIES))}, "
                              f"got {quantity!r}")
        if estimator not in ("i1", "i2"):
            raise FimvarError(f"estimator must be 'i1' or 'i2', got {estimator!r}")
        label_noise, between, spreads = self._terms(estimator)
        if spreads is None:
            raise FimvarError("this result holds no spread sums; rerun the analysis")
        chosen = None if tensors is None else set(tensors)
        g = spreads.selection(chosen)
        names = [k for k in spreads.names if chosen is None or k in chosen]
        m = self.samples

        def summed(values: Tensors) -> float:
            return float(sum(float(values[k].sum()) for k in names))

        unbiased = self._input_noise(estimator)
        if quantity == "v1":
            error = mean_standard_error(spreads.inputs, spreads.label_noise, spreads.label_noise_outer, g)
            return summed(label_noise), self._checked(error, "inputs")
        if quantity == "variance":
            inputs = self.num_inputs if inputs is None else int(inputs)
            draws = m if draws is None else int(draws)
            if inputs < 1 or draws < 1:
                raise FimvarError("inputs and draws must be at least 1")
            value = (summed(unbiased) + summed(label_noise) / draws) / inputs
            weights = torch.cat([g, (1.0 / draws - 1.0 / m) * g]) / inputs
        elif quantity == "input_var":
            value, weights = summed(unbiased), torch.cat([g, -g / m])
        else:
            value, weights = summed(between), torch.cat([g, 0.0 * g])
        error = mean_standard_error(spreads.pairs, spreads.pair, spreads.pair_outer, weights)
        return value, self._checked(error, "pairs of inputs")

    def _variance_error(self, members: list[str], count: int) -> float | None:
        """The standard error of the group's mean ``variance_i1`` (:meth:`estimate`), ``None``
        when it cannot be estimated (no spread sums, fewer than 2 pairs of inputs)."""
        if self.spreads is None or self.spreads.pairs < 2:
            return None
        return self.estimate("variance", members)[1] / count

    @staticmethod
    def _checked(error: float | None, units: str) -> float:
        if error is None:
            raise FimvarError(f"a standard error needs at least 2 {units}: analyse more inputs")
        return error
    def standard_error(self, estimator: str = "i1", inputs: int | None = None,
                       draws: int | None = None) -> Tensors:
        """``sqrt`` of :meth:`variance`, per parameter: the error bar of :attr:`i1` (default)."""
        return {k: v.sqrt() for k, v in self.variance(estimator, inputs, draws).items()}

    # ------------------------------------------------------------------ groups and plan
    def layer_name(self, group: str) -> str:
        """The human name of a group (``"transformer.h.0.attn.c_attn Conv1D"``), as
        :meth:`fimvar.DiagonalResult.layer_name`."""
        if group == MODEL_GROUP:
            return group
        described = (self.metadata.get("layers") or {}).get(group)
        return f"{group} {described}" if described else group

    def plan(self, rho: float | None = None, delta: float | None = None, *,
             cost: CostModel | None = None, draws: int | None = None, include_model: bool = True,
             available: int | None = None) -> Plan:
        """Per group, how accurate :attr:`i1` is with this run's N sequences × M draws and the
        cheapest N × M for relative error ``rho`` (default 0.1) with probability ≥ ``1 − delta``,
        ``‖Î1_g − I_g‖₂/‖I_g‖₂ ≤ ρ`` — the target, the rule ``N ≥ k (a + b/M)/(ρ²‖I_g‖²)`` and the
        cost model of :meth:`fimvar.DiagonalResult.plan` (docs/theory.md §8.2), with the group sums
        of :func:`fimvar.results.plan.noise_terms`: ``a`` = Σ :attr:`input_var`, ``b`` = Σ :attr:`v1`
        and ``‖I_g‖²`` estimated by ``‖Î1_g‖²`` (docs/theory.md §17.4). Only Î1 is designed: the
        sampled analysis estimates no other estimator's variance."""
        return make_plan(self, Target.of(rho, delta), cost=cost, draws=draws, include_model=include_model,
                         available=available)

    def group_summary(self, rho: float | None = None, delta: float | None = None, *,
                      plan: Plan | None = None, include_model: bool = False) -> list[dict]:
        """One row per group (with ``include_model``, one for the pooled ``(model)``): the mean
        and the sum (``trace_i1``: the estimate of the layer's Fisher trace) of Î1 over its
        parameters, ``std_i1 = sqrt(mean v1)`` and ``relative_std_i1`` (one draw), the input noise
        and its share ``a / (a + b/M)`` of Î1's variance at this run's design (the label noise's
        is the rest), the mean variance of Î1 and its standard error (:meth:`estimate`; ``None``
        below 2 pairs of inputs), and from the plan the ``accuracy`` of Î1 with this
        run's N and M (standard error ``sqrt(Σ Var)``, relative error ``/ ‖Î1_g‖₂``), the inputs
        the target needs at this M (``target``) and the cheapest designs (``recommended``).
        ``summary.json``'s ``groups`` of a sampled analysis are these rows."""
        plan = plan if plan is not None else make_plan(self, Target.of(rho, delta))
        groups = with_model_group(self.groups) if include_model else dict(self.groups)
        variance = self.variance("i1")
        rows = []
        for group, members in groups.items():
            def total(values: Tensors, members=members) -> float:
                return sum(float(values[m].sum()) for m in members)

            count = sum(self.i1[m].numel() for m in members)
            trace = total(self.i1)
            mean, v1, input_var = trace / count, total(self.v1), total(self.input_var)
            label = v1 / self.samples
            row = {
                "group": group,
                "layer": self.layer_name(group),
                "members": list(members),
                "parameters": count,
                "i1": mean,
                "trace_i1": trace,
                "std_i1": (v1 / count) ** 0.5,
                "relative_std_i1": (v1 / count) ** 0.5 / mean if mean > 0 else math.inf,
                "input_var": input_var / count,
                "input_noise_share_i1": input_var / (input_var + label) if input_var + label > 0 else 0.0,
                "variance_i1": total(variance) / count,
                "variance_i1_standard_error": self._variance_error(members, count),
                "accuracy": {},
                "target": None,
                "recommended": {"normal": None, "chebyshev": None},
            }
            group_plan = plan.find(group)
            if group_plan is not None:
                row["accuracy"] = {e: dataclasses.asdict(a) | {"enough": a.enough}
                                   for e, a in group_plan.accuracy.items()}
                at_run = group_plan.at_run_draws.get("i1")
                if at_run is not None:
                    row["target"] = {"rho": plan.rho, "delta": plan.delta, "method": "normal",
                                     "estimator": "i1", "inputs": at_run.inputs, "draws": at_run.draws}
                row["recommended"] = {m: group_plan.recommended(m) for m in ("normal", "chebyshev")}
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ presentation
    def table(self, rho: float | None = None, delta: float | None = None) -> str:
        """The command line's report (80 columns): accuracy of Î1, per-layer noise, plan."""
        return present(self, "table", Target.of(rho, delta))

    def summary(self, rho: float | None = None, delta: float | None = None) -> dict:
        """The ``summary.json`` document (``kind: "sampled"``) as a dict."""
        return present(self, "summary", Target.of(rho, delta))

    def save(self, directory, *, rho: float | None = None, delta: float | None = None,
             figures: bool = True, html: bool = True, run: dict | None = None):
        """Write ``summary.json``, ``sampled.safetensors``, ``figures/`` and ``report.html`` into
        ``directory``; read it back with :meth:`load`. Returns the folder path."""
        return present(self, "save", directory, Target.of(rho, delta), figures=figures, html=html, run=run)

    def plot(self, which: str = "all", path=None, *, rho: float | None = None,
             delta: float | None = None):
        """A matplotlib figure: ``fisher_std`` or ``sample_size`` (``all``: a dict of both)."""
        return present(self, "plot", which, path, Target.of(rho, delta))

    @classmethod
    def load(cls, path) -> SampledResult:
        """Read a result written by :meth:`save` (its folder or its ``sampled.safetensors``)."""
        return load(path, cls)

    def __repr__(self) -> str:
        return (f"SampledResult(family={self.family!r}, N={self.num_inputs}, M={self.samples}, "
                f"{len(self.shapes)} parameter tensors)")
