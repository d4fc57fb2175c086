"""The result of a diagonal analysis: per-parameter tensors, variances, bounds, per-layer rows.

Notation (docs/theory.md §3.3, §8): ``N`` inputs, ``M`` label draws per input. For each
parameter ``θ_i``, with ``v_j`` the single-draw label variances averaged over inputs and
``input_var`` the variance over inputs of ``I(θ_i|x)``, the variances, the covariance and the
minimum-variance combination come from :mod:`fimvar.estimators.variance`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators import variance as formulas
from fimvar.estimators.design import CostModel, Target
from fimvar.results.groups import MODEL_GROUP, with_model_group
from fimvar.results.plan import Plan, make_plan
from fimvar.results.presentation import load, present

Tensors = dict[str, torch.Tensor]
ESTIMATORS = ("i1", "i2", "combined", "exact")
#: the upper bounds whose per-layer tightness every row reports
ROW_BOUNDS = ("thm4.1_v1_upper", "thm4.1_v2_upper", "thm4.1_fisher_upper")


def bound_violated(bound, exact, side: str, rtol: float):
    """Where an upper (lower) bound lies below (above) the exact value beyond a relative
    tolerance ``rtol`` (tensors or floats alike)."""
    slack = rtol * (abs(exact) + abs(bound)) + 1e-300
    return (bound < exact - slack) if side == "upper" else (bound > exact + slack)


@dataclass
class Bound:
    """A per-parameter bound on the input average of a quantity, next to its exact value."""

    name: str
    source: str
    quantity: str
    side: str
    values: Tensors
    exact: Tensors

    def tightness(self) -> Tensors:
        """``bound / exact`` per parameter (NaN where the exact value is 0)."""
        out = {}
        for key, bound in self.values.items():
            exact = self.exact[key]
            out[key] = torch.where(exact != 0, bound / exact, torch.full_like(bound, float("nan")))
        return out

    def violations(self, rtol: float = 1e-9, members: list[str] | None = None) -> int:
        """Number of parameters (of ``members``, default all) where the bound fails beyond a
        relative tolerance."""
        keys = self.values if members is None else members
        return sum(int(bound_violated(self.values[key], self.exact[key], self.side, rtol).sum())
                   for key in keys)

    def holds(self, rtol: float = 1e-9) -> bool:
        return self.violations(rtol) == 0

    def group_tightness(self, groups: dict[str, list[str]]) -> dict[str, float]:
        """Per group ``Σ bound / Σ exact`` (NaN when the exact sum is 0)."""
        out = {}
        for group, members in groups.items():
            bound = sum(float(self.values[m].sum()) for m in members)
            exact = sum(float(self.exact[m].sum()) for m in members)
            out[group] = bound / exact if exact != 0 else float("nan")
        return out


@dataclass
class GroupBound:
    """A bound on a per-group (trace or Frobenius) quantity, averaged over inputs."""

    name: str
    source: str
    quantity: str
    side: str
    values: dict[str, float]
    exact: dict[str, float]

    def tightness(self) -> dict[str, float]:
        return {g: (v / self.exact[g] if self.exact[g] != 0 else float("nan"))
                for g, v in self.values.items()}

    def holds(self, rtol: float = 1e-9) -> bool:
        return not any(bound_violated(bound, self.exact[group], self.side, rtol)
                       for group, bound in self.values.items())


@dataclass
class DiagonalResult:
    """Everything :func:`fimvar.analyze` computes, keyed by parameter name.

    Attributes:
        fisher: exact diagonal Fisher ``E_x I(θ_i|x)``.
        i1, i2: the estimators Î1 (squared score) and Î2 (negative Hessian) from ``samples``
            label draws per input.
        v1, v2, c12: single-draw label variances of Î1, Î2 and their covariance, averaged
            over inputs.
        input_var: unbiased variance over inputs of ``I(θ_i|x)`` (0 for one input).
        empirical, empirical_bias: empirical Fisher with the data labels and ``EF − I``
            (``None`` without labels).
        bounds: per-parameter bounds (:class:`Bound`), keyed by name (``thm4.1_v1_upper``, …).
        group_bounds: per-group trace and Frobenius bounds (:class:`GroupBound`).
        groups: group name → parameter names (one group per module by default).
        estimated: per parameter, the quantities estimated without bias by Hutchinson probes
            (``v2``, ``c12``, ``i2``; docs/theory.md §14.1) instead of computed exactly; empty
            (or absent) where every quantity is exact.
        standard_errors: per estimated quantity (``v2``, ``c12``), the standard error of its
            estimate per parameter (:meth:`variance_error` carries it into the variances).
        v1_token: for per-position outputs (a sequence model, docs/theory.md §13.1), the
            single-draw label variance of the per-token squares ``Σ_t (u_t·ε_t)²`` (what ASDL and
            many LLM codes compute), averaged over inputs; ``None`` otherwise. :attr:`v1` is that
            of the per-sequence square ``(Σ_t u_t·ε_t)²``; both estimate the same Fisher.
        v2_unbiased: where ``v2`` is estimated, the unbiased estimate itself, which can fall
            below 0; ``v2`` is then ``max(v2_unbiased, 0)``, never farther from the truth (≥ 0)
            entry by entry. Sums over parameters (a layer's rows, the plan) add the unbiased
            estimates and clamp the sum (:meth:`label_variance_sum`).
        second_order: ``False`` for a first-order analysis (``analyze(..., second_order=False)``):
            ``i2``, ``v2`` and ``c12`` are then empty and :attr:`estimators` is ``("i1", "exact")``;
            what needs them (``variance("i2")``, the combination, ``covariance``) raises a
            :class:`~fimvar.FimvarError`.
    """

    family: str
    samples: int
    num_inputs: int
    engine: str
    shapes: dict[str, torch.Size]
    groups: dict[str, list[str]]
    fisher: Tensors
    i1: Tensors
    i2: Tensors
    v1: Tensors
    v2: Tensors
    c12: Tensors
    input_var: Tensors
    empirical: Tensors | None = None
    empirical_bias: Tensors | None = None
    bounds: dict[str, Bound] = field(default_factory=dict)
    group_bounds: dict[str, GroupBound] = field(default_factory=dict)
    group_exact: dict[str, dict[str, float]] = field(default_factory=dict)
    draw_moments: dict[str, Tensors] = field(default_factory=dict)
    #: run metadata (seed, output width, model/data description…), carried into saved reports
    metadata: dict = field(default_factory=dict)
    estimated: dict[str, tuple[str, ...]] = field(default_factory=dict)
    standard_errors: dict[str, Tensors] = field(default_factory=dict)
    v2_unbiased: Tensors | None = None
    v1_token: Tensors | None = None
    second_order: bool = True

    @property
    def estimators(self) -> tuple[str, ...]:
        """The estimators whose variance this result knows (and so those its plan designs):
        Î1, Î2, their combination and the exact Fisher; ``("i1", "exact")`` for a first-order
        analysis."""
        return ESTIMATORS if self.second_order else ("i1", "exact")

    def _require(self, estimator: str, what: str) -> None:
        """Raise a :class:`FimvarError` when ``estimator`` needs the second-order quantities of a
        first-order result, or is unknown."""
        if estimator not in ESTIMATORS:
            raise FimvarError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
        if estimator not in self.estimators:
            raise FimvarError(f"{what} of {estimator!r} needs v2 and c12, which a first-order analysis "
                              "(second_order=False) does not compute; rerun fimvar.analyze with "
                              "second_order=True")

    # ------------------------------------------------------------------ variances
    def label_variance_sum(self, estimator: str, members: Iterable[str]) -> float:
        """``Σ v`` over the parameter tensors ``members`` (``v1`` for ``i1``, ``v2`` for ``i2``):
        where ``v2`` is estimated by probes, the sum of its unbiased estimates, clamped at 0 once
        (a sum of per-entry clamped estimates ``max(v̂, 0)`` is biased upward by every entry whose
        probe noise exceeds its value; docs/theory.md §14.1)."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("label_variance_sum is defined for 'i1' and 'i2'")
        self._require(estimator, "the label variance")
        values = self.v1 if estimator == "i1" else self.v2 if self.v2_unbiased is None else self.v2_unbiased
        return max(sum(float(values[m].to(torch.float64).sum()) for m in members), 0.0)

    def layer_weights(self, tensors: Iterable[str] | None = None) -> dict[str, float]:
        """For every parameter tensor whose ``v2`` is estimated by probes (of ``tensors``, default
        all), the weight α of Î1 in the combination, one per layer: the minimiser of the layer's
        summed label variance ``α² Σv1 + (1 − α)² Σv2 + 2α(1 − α) Σc12`` over its estimated
        tensors (``Σv2`` by :meth:`label_variance_sum`), instead of one α per entry picked from the
        entry's own noisy estimates, whose plug-in variance would be a biased-low minimum
        (docs/theory.md §14.1). The input noise is the same for both estimators, so α does not
        depend on the design. A tensor listed by several groups takes its first group's."""
        layer: dict[str, list[str]] = {}  # estimated tensor → the estimated tensors of its first group
        for members in self.groups.values():
            estimated = [m for m in members if "v2" in self.estimated.get(m, ()) and m not in layer]
            for m in estimated:
                layer[m] = estimated
        wanted = layer if tensors is None else [m for m in tensors if m in layer]
        weights, found = {}, {}
        for m in wanted:
            key = id(layer[m])
            if key not in found:
                estimated = layer[m]
                cov = sum(float(self.c12[k].to(torch.float64).sum()) for k in estimated)
                found[key] = float(formulas.optimal_weight(self.label_variance_sum("i1", estimated),
                                                           self.label_variance_sum("i2", estimated), cov))
            weights[m] = found[key]
        return weights

    def label_variance(self, estimator: str) -> Tensors:
        """Per parameter, the label variance of one draw of an estimator: ``v1`` (``i1``), ``v2``
        (``i2``) or, for ``combined``, the combination's at :meth:`alpha_star` —
        ``(v1 v2 − c12²)/(v1 + v2 − 2 c12)`` with α* per entry, ``α² v1 + (1 − α)² v2 + 2α(1 − α)
        c12`` at the layer's α where ``v2`` is estimated (docs/theory.md §8.1, §14.1)."""
        if estimator not in ("i1", "i2", "combined"):
            raise FimvarError("label_variance is defined for 'i1', 'i2' and 'combined'")
        self._require(estimator, "the label variance")
        if estimator != "combined":
            return self.v1 if estimator == "i1" else self.v2
        weights, v1, v2, c12 = self.layer_weights(), self.v1, self.v2, self.c12
        return {k: formulas.combination_variance(weights[k], v1[k], v2[k], c12[k]).clamp_min(0.0)
                if k in weights else formulas.combined_variance(v1[k], v2[k], c12[k]) for k in v1}

    def combined_label_sum(self, members: Iterable[str]) -> float:
        """``Σ`` over ``members`` of the per-draw label variance of the combination: per entry
        ``(v1 v2 − c12²)/(v1 + v2 − 2 c12)`` (α* per entry) where everything is exact; at the
        layer's α (:meth:`layer_weights`) from the unbiased ``v2`` where it is estimated, summed
        and clamped at 0 once."""
        members = list(members)
        self._require("combined", "the label variance")
        weights, exact, estimated = self.layer_weights(members), 0.0, 0.0
        v2 = self.v2 if self.v2_unbiased is None else self.v2_unbiased
        for m in members:
            if m in weights:
                estimated += float(formulas.combination_variance(weights[m], self.v1[m], v2[m],
                                                                 self.c12[m]).sum())
            else:
                exact += float(formulas.combined_variance(self.v1[m], self.v2[m], self.c12[m]).sum())
        return exact + max(estimated, 0.0)

    def _design(self, inputs: int | None, draws: int | None) -> tuple[int, int]:
        inputs = self.num_inputs if inputs is None else int(inputs)
        draws = self.samples if draws is None else int(draws)
        if inputs < 1 or draws < 1:
            raise FimvarError("inputs and draws must be at least 1")
        return inputs, draws

    def variance(self, estimator: str = "i1", inputs: int | None = None,
                 draws: int | None = None) -> Tensors:
        """Total variance of an estimator averaged over ``inputs`` inputs × ``draws`` draws
        (default: the design of this run, i.e. the variance of :attr:`i1` / :attr:`i2`),
        ``(Var_x I(θ|x) + E_x v / M) / N`` ([B] Thm 4.7).

        ``estimator``: ``i1``, ``i2``, ``combined`` (at :meth:`alpha_star`, docs/theory.md §8.1) or
        ``exact`` (the Rao–Blackwellised ``I(θ|x)`` averaged over inputs: input noise only).
        """
        inputs, draws = self._design(inputs, draws)
        self._require(estimator, "the variance")
        if estimator == "combined":  # α* per entry; the layer's α where v2 is estimated (layer_weights)
            v1, v2 = self.variance("i1", inputs, draws), self.variance("i2", inputs, draws)
            cov, weights = self.covariance(inputs, draws), self.layer_weights()
            return {k: formulas.combination_variance(weights[k], v1[k], v2[k], cov[k]).clamp_min(0.0)
                    if k in weights else formulas.combined_variance(v1[k], v2[k], cov[k]) for k in v1}
        label = {"i1": self.v1, "i2": self.v2, "exact": None}[estimator]
        return {k: formulas.joint_variance(v, 0.0 if label is None else label[k], inputs, draws)
                for k, v in self.input_var.items()}

    def token_variance(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """Total variance of the per-token Monte Carlo Fisher of a sequence model — labels
        sampled per position, ``(1/(N M)) Σ_x Σ_m Σ_t (u_t·ε_tm)²`` —, ``(Var_x I(θ|x) + E_x
        v1_token / M) / N`` (docs/theory.md §13.1): never above :meth:`variance` ``("i1")``, the
        per-sequence square's, by ``2 Σ_{s≠t} I_s I_t / (N M)``."""
        inputs, draws = self._design(inputs, draws)
        if self.v1_token is None:
            raise FimvarError("the per-token estimator exists for per-position (sequence) outputs only; "
                              "this model has one output distribution per input")
        return {k: formulas.joint_variance(v, self.v1_token[k], inputs, draws)
                for k, v in self.input_var.items()}

    def standard_error(self, estimator: str = "exact", inputs: int | None = None,
                       draws: int | None = None) -> Tensors:
        """The error bar of an estimate per parameter: ``sqrt`` of :meth:`variance`.

        The default, ``standard_error("exact")``, is the error bar of :attr:`fisher`: exact over
        the labels (no label is sampled), but still noisy over the inputs, since :attr:`fisher` is
        an average over the N inputs analysed, ``sqrt(Var_x I(θ|x) / N)``. ``i1``, ``i2``,
        ``combined``: the error bars of :attr:`i1`, :attr:`i2`, :meth:`combined` (inputs and
        labels). ``inputs``, ``draws``: another design (default this run's)."""
        return {k: v.clamp_min(0).sqrt() for k, v in self.variance(estimator, inputs, draws).items()}

    def relative_std(self, estimator: str = "i1") -> Tensors:
        """Per parameter, the standard deviation of one draw relative to the Fisher,
        ``sqrt(v)/I(θ_i)`` (``v1`` for ``i1``, ``v2`` for ``i2``; a multiple: 14 is 14×); ``inf``
        where the Fisher is 0 (no relative error is defined there; never NaN)."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("relative_std is defined for 'i1' and 'i2'")
        self._require(estimator, "the relative standard deviation")
        label = self.v1 if estimator == "i1" else self.v2
        return {k: torch.where(f > 0, label[k].clamp_min(0).sqrt() / f, torch.full_like(f, float("inf")))
                for k, f in self.fisher.items()}

    def variance_error(self, estimator: str = "i2", inputs: int | None = None,
                       draws: int | None = None) -> Tensors:
        """Standard error of :meth:`variance` per parameter, from the standard errors of the
        estimated quantities it contains (docs/theory.md §14.1); zero where they are exact.

        ``Var(Î2)`` contains ``v2`` with the factor ``1/(N M)``; the variance of the combination
        contains ``v2`` and ``c12``, and its error is propagated to first order with absolute
        values (an upper bound whatever the correlation of the two estimates)."""
        inputs, draws = self._design(inputs, draws)
        self._require(estimator, "the variance's error")
        errors = self._quantity_errors()
        scale = 1.0 / (inputs * draws)
        if estimator in ("i1", "exact"):
            return {k: torch.zeros_like(v) for k, v in self.fisher.items()}
        if estimator == "i2":
            return {k: errors["v2"][k] * scale for k in self.fisher}
        v1, v2 = self.variance("i1", inputs, draws), self.variance("i2", inputs, draws)
        cov, weights = self.covariance(inputs, draws), self.layer_weights()
        return {k: formulas.combination_variance_error(weights[k], errors["v2"][k] * scale,
                                                       errors["c12"][k] * scale) if k in weights
                else formulas.combined_variance_error(v1[k], v2[k], cov[k], errors["v2"][k] * scale,
                                                      errors["c12"][k] * scale) for k in v1}

    def covariance_error(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """Standard error of :meth:`covariance` per parameter (zero where ``c12`` is exact)."""
        self._require("i2", "the covariance's error")
        inputs, draws = self._design(inputs, draws)
        return {k: e / (inputs * draws) for k, e in self._quantity_errors()["c12"].items()}

    def _quantity_errors(self) -> dict[str, Tensors]:
        return {q: {k: self.standard_errors.get(q, {}).get(k, torch.zeros_like(v))
                    for k, v in self.fisher.items()} for q in ("v2", "c12")}

    def covariance(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """``Cov(Î1, Î2) = (Var_x I(θ|x) + E_x c12 / M) / N`` per parameter for the given design."""
        self._require("i2", "the covariance")
        inputs, draws = self._design(inputs, draws)
        return {k: formulas.joint_variance(self.input_var[k], c, inputs, draws)
                for k, c in self.c12.items()}

    def alpha_star(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """Per-parameter weight of Î1 in the minimum-variance combination (docs/theory.md §8.1);
        for the tensors whose ``v2`` is estimated by probes, their layer's α
        (:meth:`layer_weights`, docs/theory.md §14.1).

        Where ``Var(Î1 − Î2) = 0`` the two estimators coincide and α* = 0 (Î2) is returned.
        """
        self._require("combined", "the weight α*")
        v1, v2 = self.variance("i1", inputs, draws), self.variance("i2", inputs, draws)
        cov, weights = self.covariance(inputs, draws), self.layer_weights()
        return {k: torch.full_like(v1[k], weights[k]) if k in weights
                else formulas.optimal_weight(v1[k], v2[k], cov[k]) for k in v1}

    def combined(self, alpha: Tensors | float | None = None) -> Tensors:
        """``α Î1 + (1 − α) Î2``; α defaults to :meth:`alpha_star`. Unbiased for any fixed α;
        choose α on a probe run and apply it to independent draws to keep it unbiased."""
        self._require("combined", "the estimate")
        alpha = self.alpha_star() if alpha is None else alpha
        if not isinstance(alpha, dict):
            alpha = {k: torch.full_like(v, float(alpha)) for k, v in self.i1.items()}
        return {k: formulas.combine(alpha[k], self.i1[k], self.i2[k]) for k in self.i1}

    def draw_variance(self, estimator: str = "i1") -> Tensors:
        """Monte Carlo estimate of the single-draw label variance ``v1`` (or ``v2``): the sample
        variance of the M draws of each input around their own mean, pooled over inputs,
        ``Σ_n Σ_m (X_nm − X̄_n)² / (N (M − 1))``. Unbiased for ``E_x v``; for one input it is the
        plain sample variance of the draws. Needs ``samples ≥ 2``."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("draw_variance is defined for 'i1' and 'i2'")
        self._require(estimator, "the draws' variance")
        return self._within(f"{estimator}_within")

    def draw_covariance(self) -> Tensors:
        """Monte Carlo estimate of ``c12`` (pooled within-input sample covariance of the draws
        of Î1 and Î2). Needs ``samples ≥ 2``."""
        self._require("i2", "the draws' covariance")
        return self._within("i12_within")

    def _within(self, key: str) -> Tensors:
        if key not in self.draw_moments:
            raise FimvarError("the Monte Carlo variance of the draws needs samples ≥ 2 label draws per "
                              "input; rerun with samples=2 or more")
        scale = self.num_inputs * (self.samples - 1)
        return {k: v / scale for k, v in self.draw_moments[key].items()}

    # ------------------------------------------------------------------ groups
    def layer_name(self, group: str) -> str:
        """The human name of a group: its id followed by the module's type and shape when the
        analysis knew the module (``"0 Linear 64→16"``); ``(model)`` for the pooled group."""
        if group == MODEL_GROUP:
            return group
        described = (self.metadata.get("layers") or {}).get(group)
        return f"{group} {described}" if described else group

    def group_summary(self, rho: float | None = None, delta: float | None = None, *,
                      plan=None, include_model: bool = False) -> list[dict]:
        """One row per group (and, with ``include_model``, one for the pooled ``(model)``):
        its id ``group`` and human name ``layer`` (:meth:`layer_name`), the means over its
        parameters of the Fisher and of the label variances of one draw (``std_i1 = sqrt(mean v1)``),
        the input-noise shares,
        the variances at this run's design, the better estimator, α*, the bounds' tightness,
        the empirical Fisher's bias, and from the plan (``plan``, or one made for ``rho``,
        ``delta``) the inputs this run's estimator needs, the ``accuracy`` of each estimator with
        this run's N and M (:class:`~fimvar.results.plan.Accuracy`) and the recommended designs.
        ``summary.json``'s ``groups`` are these rows (their names: docs/usage.md)."""
        plan = plan if plan is not None else make_plan(self, Target.of(rho, delta))
        groups = with_model_group(self.groups) if include_model else dict(self.groups)
        variances = {e: self.variance(e) for e in self.estimators}
        cov = self.covariance() if self.second_order else None
        return [self._row(group, members, variances, cov, plan) for group, members in groups.items()]

    def _row(self, group: str, members: list[str], variances: dict[str, Tensors], cov: Tensors | None,
             plan) -> dict:
        def total(d: Tensors) -> float:
            return sum(float(d[m].sum()) for m in members)

        count = sum(self.fisher[m].numel() for m in members)
        fisher = total(self.fisher) / count
        v1 = self.label_variance_sum("i1", members) / count
        input_var = total(self.input_var) / count
        var = {e: total(variances[e]) for e in self.estimators}
        v2 = alpha = None  # a first-order result: no Î2 and no combination
        if self.second_order:
            v2 = self.label_variance_sum("i2", members) / count
            # Var(Î2) and, at fixed α, Var(combined) are linear in v2: the group's from the summed
            # estimates (label_variance_sum, combined_label_sum)
            var["i2"] = formulas.joint_variance(input_var * count, v2 * count, self.num_inputs, self.samples)
            var["combined"] = formulas.joint_variance(input_var * count, self.combined_label_sum(members),
                                                      self.num_inputs, self.samples)
            alpha = formulas.optimal_weight(var["i1"], var["i2"], total(cov))
        better = "i2" if v2 is not None and var["i2"] <= var["i1"] else "i1"

        def share(label: float | None) -> float | None:
            if label is None:
                return None
            return input_var / (input_var + label) if input_var + label > 0 else 0.0

        def relative(std: float | None) -> float | None:
            if std is None:
                return None
            return std / fisher if fisher > 0 else math.inf

        def per_parameter(value: float | None) -> float | None:
            return None if value is None else value / count

        std_i2 = None if v2 is None else v2**0.5

        row = {
            "group": group,
            "layer": self.layer_name(group),
            "members": list(members),
            "parameters": count,
            "fisher": fisher,
            "std_i1": v1**0.5,
            "std_i2": std_i2,
            "relative_std_i1": relative(v1**0.5),
            "relative_std_i2": relative(std_i2),
            "input_var": input_var,
            "input_noise_share_i1": share(v1 / self.samples),
            "input_noise_share_i2": share(None if v2 is None else v2 / self.samples),
            "variance_i1": var["i1"] / count,
            "variance_i2": per_parameter(var.get("i2")),
            "variance_combined": per_parameter(var.get("combined")),
            "variance_exact": var["exact"] / count,
            "better": better,
            "alpha_star": alpha,
            "tightness": {name: bound.group_tightness({group: members})[group]
                          for name, bound in self.bounds.items()},
            "empirical": None,
            "target": None,
            "accuracy": {},
            "recommended": {"normal": None, "chebyshev": None},
        }
        group_plan = plan.find(group)
        if group_plan is not None:
            row["accuracy"] = {e: dataclasses.asdict(a) | {"enough": a.enough}
                               for e, a in group_plan.accuracy.items()}
            at_run = group_plan.at_run_draws.get(better)
            if at_run is not None:
                row["target"] = {"rho": plan.rho, "delta": plan.delta, "method": "normal",
                                 "estimator": at_run.estimator, "inputs": at_run.inputs,
                                 "draws": at_run.draws}
            row["recommended"] = {m: group_plan.recommended(m) for m in ("normal", "chebyshev")}
        if self.empirical is not None:
            fisher_sum, empirical_sum = total(self.fisher), total(self.empirical)
            row["empirical"] = {
                "fisher": empirical_sum / count,
                "relative_bias": (empirical_sum - fisher_sum) / fisher_sum if fisher_sum > 0 else None,
            }
        return row

    # ------------------------------------------------------------------ plan and presentation
    def plan(self, rho: float | None = None, delta: float | None = None, *,
             cost: CostModel | None = None, draws: int | None = None, include_model: bool = True,
             available: int | None = None) -> Plan:
        """How accurate this run is and what a target needs, per group, for relative error ``rho``
        (default 0.1) with probability ≥ ``1 − delta`` (default 0.95).

        First, per group, the :class:`~fimvar.results.plan.Accuracy` of each estimator with this
        run's N inputs and M draws (``plan.accuracy()``: that of :attr:`fisher`): its standard
        error, its relative error, the inputs the target needs with the same M, and whether the
        data set's ``available`` inputs (default: the N analysed) are enough. Then the cheapest
        design of each estimator (Î1, Î2, combined, exact): the inputs × draws it needs by the
        normal approximation (``N ≥ z² (a + b/M)/(ρ²‖I‖²)``, the rule of every sample size fimvar
        shows) and by Chebyshev (``z²`` replaced by ``1/δ``), docs/theory.md §8.2. ``cost``
        (:class:`fimvar.CostModel`), ``draws`` (fix M), ``include_model`` (add the pooled
        ``(model)`` group). Returns a :class:`fimvar.Plan` (``print(plan)`` shows the tables)."""
        return make_plan(self, Target.of(rho, delta), cost=cost, draws=draws, include_model=include_model,
                         available=available)

    def table(self, rho: float | None = None, delta: float | None = None) -> str:
        """The per-layer table of the command line (80 columns)."""
        return present(self, "table", Target.of(rho, delta))

    def summary(self, rho: float | None = None, delta: float | None = None) -> dict:
        """The ``summary.json`` document (run, per-layer rows, bounds, plan) as a dict; its
        schema is ``fimvar/report/summary.schema.json``."""
        return present(self, "summary", Target.of(rho, delta))

    def save(self, directory, *, rho: float | None = None, delta: float | None = None,
             figures: bool = True, html: bool = True, run: dict | None = None):
        """Write ``summary.json``, ``fisher.safetensors``, ``figures/`` and ``report.html`` into
        ``directory``; read it back with :meth:`load`. Returns the folder path."""
        return present(self, "save", directory, Target.of(rho, delta), figures=figures, html=html,
                       run=run)

    def plot(self, which: str = "all", path=None, *, rho: float | None = None,
             delta: float | None = None):
        """A matplotlib figure: ``fisher_std``, ``bound_tightness``, ``relative_std`` or
        ``sample_size`` (``all``: a dict of the four). With ``path``, also save it there (for
        ``all``: a folder receiving ``<name>.png`` and ``.svg``)."""
        return present(self, "plot", which, path, Target.of(rho, delta))

    @classmethod
    def load(cls, path) -> DiagonalResult:
        """Read a result written by :meth:`save` (its folder or its ``fisher.safetensors``)."""
        return load(path, cls)

    def fisher_as(self, model, quantity: str = "fisher") -> Tensors:
        """A per-parameter quantity (default the exact Fisher) in each parameter's dtype and on its
        device, keyed by name: ``fisher_as(model)[name] * (θ − θ*)²`` is an EWC penalty term.

        Args:
            model: the ``nn.Module`` the result is for (its parameters give dtype and device); a
                result without the model (e.g. loaded) can use any module with those parameters.
            quantity: ``fisher``, ``i1``, ``i2``, ``combined`` (α* Î1 + (1 − α*) Î2), ``empirical``,
                ``v1``, ``v2``, ``c12`` or ``input_var``; or an estimator's variance as
                ``variance:i1`` (``i2``, ``combined``, ``exact``).

        Returns:
            ``{name: tensor}`` for the analysed parameters, the parameters' shapes.
        """
        named = dict(model.named_parameters()) if hasattr(model, "named_parameters") else None
        if named is None:
            raise FimvarError(f"fisher_as needs the model (an nn.Module), got {type(model).__name__}")
        if quantity == "combined":
            values = self.combined()
        elif quantity.startswith("variance:"):
            values = self.variance(quantity.removeprefix("variance:"))
        elif quantity in ("fisher", "i1", "i2", "v1", "v2", "c12", "input_var", "empirical",
                          "empirical_bias"):
            values = getattr(self, quantity)
            if values is None:
                raise FimvarError(f"the result has no {quantity}: it was computed without data labels; "
                                  "give labels= for the empirical Fisher")
        else:
            raise FimvarError(f"unknown quantity {quantity!r}; use fisher, i1, i2, combined, empirical, "
                              "v1, v2, c12, input_var or variance:<estimator>")
        missing = [name for name in values if name not in named]
        if missing:
            raise FimvarError(f"the model has no parameters {missing[:3]}; give the model the result is for")
        out = {}
        for name, value in values.items():
            reference = named[name]
            if tuple(reference.shape) != tuple(value.shape):
                raise FimvarError(f"parameter {name!r} has shape {tuple(reference.shape)} in the model but "
                                  f"{tuple(value.shape)} in the result; give the model the result is for")
            converted = value.detach().to(device=reference.device, dtype=reference.dtype)
            if reference.is_floating_point() and not torch.isfinite(converted).all():
                raise FimvarError(f"the {quantity} of {name!r} overflows {reference.dtype} (largest value "
                                  f"{float(value.abs().max()):.3g}); keep it in float64 (result.{quantity}) "
                                  "or rescale it")
            out[name] = converted
        return out

    def __repr__(self) -> str:
        return (f"DiagonalResult(family={self.family!r}, inputs={self.num_inputs}, "
                f"samples={self.samples}, parameters={sum(s.numel() for s in self.shapes.values())}, "
                f"groups={len(self.groups)})")
