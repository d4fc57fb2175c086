"""The result of a diagonal analysis: per-parameter tensors, variances, bounds, group summaries.

Notation (theory.md §3, §8): ``N`` inputs, ``M`` label draws per input. For each parameter
``θ_i``, with ``v_j`` the single-draw label variances averaged over inputs and ``input_var`` the
variance over inputs of ``I(θ_i|x)``,

    Var Î_j   = (input_var + v_j / M) / N                       ([B] Thm 4.7)
    Cov(Î1, Î2) = (input_var + c12 / M) / N                      (derived)
    α*        = (V2 − C) / (V1 + V2 − 2C),  Var Î_α* = (V1 V2 − C²) / (V1 + V2 − 2C)   (§8)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fimvar.accumulator import Accumulator
from fimvar.errors import FimvarError
from fimvar.statistics import BOUND_TERMS
from fimvar.trace_bounds import GROUP_BOUND_TERMS

Tensors = dict[str, torch.Tensor]
ESTIMATORS = ("i1", "i2", "combined", "exact")


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

    def violations(self, rtol: float = 1e-9) -> int:
        """Number of parameters where the bound fails beyond a relative tolerance."""
        count = 0
        for key, bound in self.values.items():
            exact = self.exact[key]
            slack = rtol * (exact.abs() + bound.abs()) + 1e-300
            bad = (bound < exact - slack) if self.side == "upper" else (bound > exact + slack)
            count += int(bad.sum())
        return count

    def holds(self, rtol: float = 1e-9) -> bool:
        return self.violations(rtol) == 0

    def group_violations(self, groups: dict[str, list[str]], rtol: float = 1e-9) -> dict[str, int]:
        """Number of parameters per group where the bound fails beyond ``rtol``."""
        return {group: Bound(self.name, self.source, self.quantity, self.side,
                             {m: self.values[m] for m in members},
                             {m: self.exact[m] for m in members}).violations(rtol)
                for group, members in groups.items()}

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
        for group, bound in self.values.items():
            exact = self.exact[group]
            slack = rtol * (abs(exact) + abs(bound)) + 1e-300
            if (self.side == "upper" and bound < exact - slack) or (
                self.side == "lower" and bound > exact + slack
            ):
                return False
        return True


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

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_accumulator(
        cls,
        accumulator: Accumulator,
        *,
        family: str,
        samples: int,
        engine: str,
        shapes: dict[str, torch.Size],
        groups: dict[str, list[str]],
    ) -> DiagonalResult:
        n = accumulator.count
        if n == 0:
            raise FimvarError("the data is empty: no input was analysed")
        names = list(shapes)

        def mean(quantity: str, scale: float = 1.0) -> Tensors:
            return {k: accumulator.sums[f"{k}/{quantity}"] / (n * scale) for k in names}

        fisher = mean("fisher")
        if n > 1:
            input_var = {k: (accumulator.sums[f"{k}/fisher_m2"] / (n - 1)).clamp_min(0.0)
                         for k in names}
        else:
            input_var = {k: torch.zeros_like(fisher[k]) for k in names}
        has_labels = f"{names[0]}/empirical" in accumulator.sums
        empirical = mean("empirical") if has_labels else None
        empirical_bias = {k: empirical[k] - fisher[k] for k in names} if has_labels else None
        draw_moments = {q: {k: accumulator.sums[f"{k}/{q}"] for k in names}
                        for q in ("i1_within", "i2_within", "i12_within")
                        if f"{names[0]}/{q}" in accumulator.sums}
        result = cls(
            family=family, samples=samples, num_inputs=n, engine=engine, shapes=shapes,
            groups=groups, fisher=fisher, i1=mean("i1", samples), i2=mean("i2", samples),
            v1=mean("v1"), v2=mean("v2"), c12=mean("c12"), input_var=input_var,
            empirical=empirical, empirical_bias=empirical_bias, draw_moments=draw_moments,
        )
        exact_of = {"fisher": fisher, "v1": result.v1, "v2": result.v2, "input_var": input_var}
        for term in BOUND_TERMS:
            if f"{names[0]}/bound:{term.name}" in accumulator.sums:
                result.bounds[term.name] = Bound(
                    term.name, term.source, term.quantity, term.side,
                    mean(f"bound:{term.name}"), exact_of[term.quantity],
                )
        result._collect_group_sums(accumulator)
        return result

    def _collect_group_sums(self, accumulator: Accumulator) -> None:
        n = accumulator.count
        for key, value in accumulator.sums.items():
            if key.startswith("group:") and "/bound:" not in key:
                group, quantity = key[len("group:"):].rsplit("/", 1)
                self.group_exact.setdefault(quantity, {})[group] = float(value) / n
        for term in GROUP_BOUND_TERMS:
            values = {}
            for key, value in accumulator.sums.items():
                if key.startswith("group:") and key.endswith(f"/bound:{term.name}"):
                    values[key[len("group:"):].rsplit("/", 1)[0]] = float(value) / n
            if values:
                exact = {g: self.group_exact[term.quantity][g] for g in values}
                self.group_bounds[term.name] = GroupBound(
                    term.name, term.source, term.quantity, term.side, values, exact
                )

    # ------------------------------------------------------------------ variances
    def _design(self, inputs: int | None, draws: int | None) -> tuple[int, int]:
        inputs = self.num_inputs if inputs is None else int(inputs)
        draws = self.samples if draws is None else int(draws)
        if inputs < 1 or draws < 1:
            raise FimvarError("inputs and draws must be at least 1")
        return inputs, draws

    def variance(self, estimator: str = "i1", inputs: int | None = None,
                 draws: int | None = None) -> Tensors:
        """Total variance of an estimator averaged over ``inputs`` inputs × ``draws`` draws
        (default: the design of this run, i.e. the variance of :attr:`i1` / :attr:`i2`).

        ``estimator``: ``i1``, ``i2``, ``combined`` (α* per parameter) or ``exact`` (the
        Rao–Blackwellised ``I(θ|x)`` averaged over inputs: input noise only).
        """
        inputs, draws = self._design(inputs, draws)
        if estimator not in ESTIMATORS:
            raise FimvarError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
        if estimator == "exact":
            return {k: v / inputs for k, v in self.input_var.items()}
        if estimator == "combined":
            v1 = self.variance("i1", inputs, draws)
            v2 = self.variance("i2", inputs, draws)
            cov = self.covariance(inputs, draws)
            out = {}
            for k in v1:
                denominator = v1[k] + v2[k] - 2 * cov[k]
                optimum = (v1[k] * v2[k] - cov[k] ** 2) / denominator
                out[k] = torch.where(denominator > 0, optimum.clamp_min(0.0),
                                     torch.minimum(v1[k], v2[k]))
            return out
        label = self.v1 if estimator == "i1" else self.v2
        return {k: (self.input_var[k] + label[k] / draws) / inputs for k in label}

    def covariance(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """``Cov(Î1, Î2)`` per parameter for the given design."""
        inputs, draws = self._design(inputs, draws)
        return {k: (self.input_var[k] + self.c12[k] / draws) / inputs for k in self.c12}

    def alpha_star(self, inputs: int | None = None, draws: int | None = None) -> Tensors:
        """Per-parameter weight of Î1 in the minimum-variance combination (theory §8).

        Where ``Var(Î1 − Î2) = 0`` the two estimators coincide and α* = 0 (Î2) is returned.
        """
        v1 = self.variance("i1", inputs, draws)
        v2 = self.variance("i2", inputs, draws)
        cov = self.covariance(inputs, draws)
        out = {}
        for k in v1:
            denominator = v1[k] + v2[k] - 2 * cov[k]
            safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
            out[k] = torch.where(denominator > 0, (v2[k] - cov[k]) / safe,
                                 torch.zeros_like(denominator))
        return out

    def combined(self, alpha: Tensors | float | None = None) -> Tensors:
        """``α Î1 + (1 − α) Î2``; α defaults to :meth:`alpha_star`. Unbiased for any fixed α;
        choose α on a probe run and apply it to independent draws to keep it unbiased."""
        alpha = self.alpha_star() if alpha is None else alpha
        if not isinstance(alpha, dict):
            alpha = {k: torch.full_like(v, float(alpha)) for k, v in self.i1.items()}
        return {k: alpha[k] * self.i1[k] + (1 - alpha[k]) * self.i2[k] for k in self.i1}

    def draw_variance(self, estimator: str = "i1") -> Tensors:
        """Monte Carlo estimate of the single-draw label variance ``v1`` (or ``v2``): the sample
        variance of the M draws of each input around their own mean, pooled over inputs,
        ``Σ_n Σ_m (X_nm − X̄_n)² / (N (M − 1))``. Unbiased for ``E_x v``; for one input it is the
        plain sample variance of the draws. Needs ``samples ≥ 2``."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("draw_variance is defined for 'i1' and 'i2'")
        return self._within(f"{estimator}_within")

    def draw_covariance(self) -> Tensors:
        """Monte Carlo estimate of ``c12`` (pooled within-input sample covariance of the draws
        of Î1 and Î2). Needs ``samples ≥ 2``."""
        return self._within("i12_within")

    def _within(self, key: str) -> Tensors:
        if key not in self.draw_moments:
            raise FimvarError("the Monte Carlo variance of the draws needs samples ≥ 2 label draws per "
                              "input; rerun with samples=2 or more")
        scale = self.num_inputs * (self.samples - 1)
        return {k: v / scale for k, v in self.draw_moments[key].items()}

    # ------------------------------------------------------------------ groups
    def group_summary(self) -> list[dict]:
        """One row per group: means over its parameters of the Fisher, the per-draw standard
        deviations (``std_i1 = sqrt(mean v1)``; ``mean_std_i1 = mean sqrt(v1)``), the variance
        shares, the better estimator, α* and bound tightness."""
        v_i1, v_i2 = self.variance("i1"), self.variance("i2")
        cov = self.covariance()
        rows = []
        for group, members in self.groups.items():
            def total(d: Tensors, members: list[str] = members) -> float:
                return sum(float(d[m].sum()) for m in members)

            count = sum(self.fisher[m].numel() for m in members)
            fisher = total(self.fisher) / count
            v1, v2 = total(self.v1) / count, total(self.v2) / count
            input_var = total(self.input_var) / count
            var1, var2, c = total(v_i1), total(v_i2), total(cov)
            denominator = var1 + var2 - 2 * c
            alpha = (var2 - c) / denominator if denominator > 0 else 0.0
            label1 = v1 / self.samples
            row = {
                "group": group,
                "parameters": count,
                "fisher": fisher,
                "std_i1": v1**0.5,
                "std_i2": v2**0.5,
                "mean_std_i1": total({m: self.v1[m].sqrt() for m in members}) / count,
                "mean_std_i2": total({m: self.v2[m].sqrt() for m in members}) / count,
                "relative_std_i1": v1**0.5 / fisher if fisher > 0 else float("inf"),
                "relative_std_i2": v2**0.5 / fisher if fisher > 0 else float("inf"),
                "input_var": input_var,
                "input_noise_share_i1": (input_var / (input_var + label1)
                                         if input_var + label1 > 0 else 0.0),
                "variance_i1": var1 / count,
                "variance_i2": var2 / count,
                "better": "i1" if var1 < var2 else "i2",
                "alpha_star": alpha,
            }
            for name in ("thm4.1_v1_upper", "thm4.1_v2_upper", "thm4.1_fisher_upper"):
                if name in self.bounds:
                    row[f"tightness:{name}"] = self.bounds[name].group_tightness({group: members})[group]
            rows.append(row)
        return rows

    def table(self) -> str:
        """A plain-text per-group table (80 columns)."""
        header = f"{'group':<16}{'params':>8}{'fisher':>11}{'std Î1':>11}{'std Î2':>11}" \
                 f"{'better':>7}{'α*':>7}{'UB/V1':>9}"
        lines = [header, "-" * len(header)]
        for row in self.group_summary():
            ub = row.get("tightness:thm4.1_v1_upper", float("nan"))
            lines.append(
                f"{row['group'][:15]:<16}{row['parameters']:>8}{row['fisher']:>11.3e}"
                f"{row['std_i1']:>11.3e}{row['std_i2']:>11.3e}{row['better']:>7}"
                f"{row['alpha_star']:>7.2f}{ub:>9.2f}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ reports
    def plan(self, rho: float = 0.1, delta: float = 0.05, **options):
        """Sample-size plan per group for relative error ``rho`` with probability ≥ ``1 − delta``:
        the estimator (Î1, Î2, combined, exact) and the inputs × draws it needs, by Chebyshev
        (``N ≥ v/(δρ²I²)``) and the normal approximation (``N ≥ z² v/(ρ²I²)``), theory §8. Options:
        ``cost`` (:class:`fimvar.plan.CostModel`), ``draws`` (fix M), ``include_model``.
        Returns a :class:`fimvar.plan.Plan` (``print(plan)`` shows the table)."""
        from fimvar.plan import plan

        return plan(self, rho, delta, **options)

    def summary(self, rho: float = 0.1, delta: float = 0.05) -> dict:
        """The ``summary.json`` document (run, per-layer rows, bounds, plan) as a dict; its
        schema is ``fimvar/report/summary.schema.json``."""
        from fimvar.report.summary import build_summary

        return build_summary(self, rho=rho, delta=delta)

    def save(self, directory, *, rho: float = 0.1, delta: float = 0.05, figures: bool = True,
             html: bool = True, run: dict | None = None):
        """Write ``summary.json``, ``fisher.safetensors``, ``figures/`` and ``report.html`` into
        ``directory``; read it back with :meth:`load`. Returns the folder path."""
        from fimvar.report.files import save

        return save(self, directory, rho=rho, delta=delta, figures=figures, html=html, run=run)

    def plot(self, which: str = "all", path=None, *, rho: float = 0.1, delta: float = 0.05):
        """A matplotlib figure: ``fisher_std``, ``bound_tightness``, ``relative_std`` or
        ``sample_size`` (``all``: a dict of the four). With ``path``, also save it there (for
        ``all``: a folder receiving ``<name>.png`` and ``.svg``)."""
        from pathlib import Path

        from fimvar.report.plots import FIGURES, figure, save_figures

        if which == "all":
            if path is not None:
                save_figures(self, path, rho=rho, delta=delta)
            return {name: figure(self, name, rho=rho, delta=delta) for name in FIGURES}
        fig = figure(self, which, rho=rho, delta=delta)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
        return fig

    @classmethod
    def load(cls, path) -> DiagonalResult:
        """Read a result written by :meth:`save` (its folder or its ``fisher.safetensors``)."""
        from fimvar.report.files import load

        return load(path)

    def __repr__(self) -> str:
        return (f"DiagonalResult(family={self.family!r}, inputs={self.num_inputs}, "
                f"samples={self.samples}, parameters={sum(s.numel() for s in self.shapes.values())}, "
                f"groups={len(self.groups)})")
