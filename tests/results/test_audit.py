"""AuditResult's per-layer rows and recommendation against hand computations (docs/theory.md §15.5)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from fimvar.errors import FimvarError
from fimvar.estimators.design import CostModel, Target
from fimvar.results.audit import AuditResult, EstimatorAudit


def entry(name, mean, bias, variance, unit, cost, batch=None):
    as_t = lambda v: {"w": torch.tensor(v, dtype=torch.float64)}  # noqa: E731
    return EstimatorAudit(name, name, "test", as_t(mean), as_t(bias), as_t(variance), as_t(variance),
                          as_t(bias), as_t(unit), cost, batch)


def make():
    fisher = [3.0, 4.0]  # ‖I‖ = 5
    entries = {
        "exact": entry("exact", fisher, [0.0, 0.0], [0.01, 0.02], [1.0, 2.0], 3.5),
        "i1": entry("i1", fisher, [0.0, 0.0], [0.03, 0.04], [3.0, 1.0], 1.5),
        "ewc": entry("ewc", [3.1, 4.0], [0.1, 0.0], [0.5, 0.5], [0.5, 0.5], 1.5, batch=4),
        "empirical": entry("empirical", [4.0, 4.0], [1.0, 0.0], [0.1, 0.1], [1.0, 1.0], 1.5),
    }
    return AuditResult("categorical", 10, 4, 1, {"w": torch.Size([2])}, {"layer": ["w"]},
                       {"w": torch.tensor(fisher, dtype=torch.float64)}, entries, Target(0.05, 0.05),
                       CostModel())


def test_layer_rows_by_hand():
    a = make()
    rows = {r.estimator: r for r in a.layers(include_model=False)}
    z2 = norm.ppf(1 - 0.025) ** 2
    # i1: a = 4, no bias: n = z² · 4 / (0.05 · 5)²
    assert rows["i1"].inputs["normal"] == math.ceil(z2 * 4 / 0.25**2)
    assert rows["i1"].inputs["chebyshev"] == math.ceil(20 * 4 / 0.25**2)
    assert rows["i1"].relative_std == pytest.approx(math.sqrt(0.07) / 5, rel=1e-14)
    # ewc: bias 0.1 takes part of the 0.25 budget; n rounded up to a multiple of B = 4
    n = math.ceil(z2 * 1.0 / 0.15**2)
    assert rows["ewc"].inputs["normal"] == 4 * math.ceil(n / 4)
    assert rows["ewc"].relative_bias == pytest.approx(0.1 / 5, rel=1e-14)
    # empirical: bias 1 > 0.25, out of reach
    assert rows["empirical"].inputs["normal"] is None and rows["empirical"].cost["normal"] is None
    costs = {e: r.cost["normal"] for e, r in rows.items() if r.cost["normal"] is not None}
    assert a.recommended() == min(costs, key=costs.get)
    assert "recommended" in str(a)


def test_single_estimator_access():
    a = make()
    with pytest.raises(FimvarError, match="pick one"):
        _ = a.variance
    with pytest.raises(FimvarError, match="not audited"):
        a["gnb"]
    a.entries = {"ewc": a.entries["ewc"]}
    assert a.bias["w"][0] == pytest.approx(0.1)
