"""``fimvar.analyze`` end to end (autodiff engine) against the brute-force oracle (1e-10): every
diagonal quantity, the group traces and Frobenius norms, the Fisher also as the expected negative
Hessian, and the independence of the results from batching."""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import pytest
import torch
from cases import ORACLE_CASES, make_case
from checks import assert_close
from oracle import Oracle

import fimvar

SAMPLES = 2


@functools.cache
def computed(model_name: str, family: str):
    case = make_case(model_name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(case.model, case.x, family, samples=SAMPLES, seed=3,
                                labels=case.labels, engine="autodiff")
    with torch.no_grad():
        outputs = case.model(case.x)
    draws = fimvar.sample_labels(family, outputs, SAMPLES, seed=3)
    truth = Oracle(case.model, family).analysis(case.x, labels=case.labels, draws=draws)
    return case, result, truth, Oracle(case.model, family)


def natural_scale(truth: dict, quantity: str) -> float:
    """The scale a quantity is judged on when its own values are rounding noise (e.g. c12 of a
    Gaussian model is exactly 0): Fisher-like values on the Fisher, variances on v1 and v2.
    A tensor is judged relative to the larger of its own largest value and 1e-3 of this scale."""
    if quantity in ("v1", "v2", "c12"):
        return float(torch.maximum(truth["v1"].max(), truth["v2"].max()))
    if quantity == "input_var":
        return float(truth["fisher"].max() ** 2)
    return float(truth["fisher"].abs().max())


@pytest.mark.parametrize("model_name,family", ORACLE_CASES)
def test_diagonal_quantities_match_oracle(model_name, family):
    case, result, truth, oracle = computed(model_name, family)
    for quantity in ("fisher", "v1", "v2", "c12", "input_var", "i1", "i2", "empirical"):
        expected = oracle.split(truth[quantity])
        floor = 1e-3 * natural_scale(truth, quantity)
        actual = getattr(result, quantity)
        for name in expected:
            assert actual[name].shape == expected[name].shape
            assert_close(actual[name], expected[name], f"{quantity} [{family}]", floor=floor)
    bias_flat = truth["empirical"] - truth["fisher"]
    bias = oracle.split(bias_flat)
    for name in bias:
        assert_close(result.empirical_bias[name], bias[name], f"empirical_bias [{family}]",
                     floor=1e-3 * natural_scale(truth, "fisher"))


@pytest.mark.parametrize("model_name,family", ORACLE_CASES)
def test_fisher_equals_the_expected_negative_hessian(model_name, family):
    """On smooth networks the Fisher is also E_y[−∇²ℓ] ([A], docs/theory.md §2): the result's
    Fisher (from u and I(h)) against the oracle's enumerated full Hessians of ℓ."""
    case, result, truth, oracle = computed(model_name, family)
    expected = oracle.split(torch.diagonal(truth["hessian_mean"]))
    for name, value in expected.items():
        assert_close(result.fisher[name], value, "Fisher vs E[−∇²ℓ]",
                     floor=1e-3 * natural_scale(truth, "fisher"))


#: first-order analyses on every engine: stacks (structured), a LayerNorm model (autodiff), the
#: architectures and a language model (graph, chosen by ``auto`` when second_order=False)
FIRST_ORDER_CASES = [("mlp-tanh", "categorical", "structured"), ("conv2d", "gaussian", "structured"),
                     ("mlp-sigmoid-softplus", "poisson", "structured"),
                     ("layernorm", "bernoulli", "autodiff"),
                     ("resnet-batchnorm", "categorical", "graph"), ("encoder-attention", "gaussian", "graph"),
                     ("lstm", "bernoulli", "auto"), ("causal-lm", "categorical", "auto")]


@pytest.mark.parametrize("model_name,family,engine", FIRST_ORDER_CASES)
def test_first_order_analysis_matches_oracle(model_name, family, engine):
    """``second_order=False``: the exact Fisher, v1, the input variance, Î1 (same draws), the
    empirical Fisher and the bounds on the Fisher, v1 and the input variance against the oracle
    (1e-10; the bounds hold; on the graph engine also without bounds, streamed in small chunks);
    Î2, v2 and c12 are absent and what needs them is refused with a FimvarError."""
    case, _, truth, oracle = computed(model_name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(case.model, case.x, family, samples=SAMPLES, seed=3,
                                labels=case.labels, engine=engine, second_order=False)
    assert result.engine == ("structured" if engine == "structured" else
                             "autodiff" if engine == "autodiff" else "graph")
    assert result.second_order is False and result.estimators == ("i1", "exact")
    assert result.i2 == result.v2 == result.c12 == {}
    runs = [result]
    if result.engine == "graph":  # without bounds the graph engine streams its layers (§14.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(fimvar.analyze(case.model, case.x, family, samples=SAMPLES, seed=3, bounds=False,
                                       labels=case.labels, engine=engine, second_order=False,
                                       memory_budget=2**16))
    for run in runs:
        for quantity in ("fisher", "v1", "input_var", "i1", "empirical"):
            expected = oracle.split(truth[quantity])
            for name, value in expected.items():
                assert_close(getattr(run, quantity)[name], value, f"first-order {quantity} [{family}]",
                             floor=1e-3 * natural_scale(truth, quantity))
    assert result.bounds and {b.quantity for b in result.bounds.values()} <= {"fisher", "v1", "input_var"}
    for bound in result.bounds.values():
        expected = oracle.split(truth[bound.quantity])
        for name, value in bound.values.items():
            slack = 1e-9 * float(expected[name].abs().max()) + 1e-300
            if bound.side == "upper":
                assert (value >= expected[name] - slack).all(), bound.name
            else:
                assert (value <= expected[name] + slack).all(), bound.name
    for needs_second in (lambda: result.variance("i2"), lambda: result.variance("combined"),
                         result.combined, result.alpha_star, result.covariance,
                         lambda: result.relative_std("i2"), lambda: result.draw_variance("i2")):
        with pytest.raises(fimvar.FimvarError, match="second_order=True"):
            needs_second()
    rows = result.group_summary()
    assert all(row["better"] == "i1" and row["std_i2"] is None and row["alpha_star"] is None
               for row in rows)
    assert result.plan().to_dict()


@pytest.mark.parametrize("model_name,family", ORACLE_CASES)
def test_group_traces_and_frobenius_match_oracle(model_name, family):
    case, result, truth, oracle = computed(model_name, family)
    for quantity, per_param in (("trace_fisher", "fisher"), ("trace_v1", "v1"), ("trace_v2", "v2")):
        expected = float(truth[per_param].sum())
        actual = result.group_exact[quantity].get("(model)", result.group_exact[quantity].get(
            next(iter(result.groups))))
        # judged on the scale of the quantity's family (v2 of a ReLU network is 0 up to rounding)
        floor = 1e-6 * natural_scale(truth, per_param)
        assert_close(actual, expected, f"{quantity} (model)", floor=floor)
    frobenius = result.group_exact["frobenius_i1"]["(model)"]
    assert_close(frobenius, truth["frobenius_i1"], "‖Cov(Î1)‖_F (model)")


@pytest.mark.parametrize("model_name", ["mlp-tanh", "mlp-sigmoid-softplus", "conv2d"])
def test_last_linear_layer_has_zero_v2(model_name):
    """[B] Remark 4.4: w_i = 0 for a linear output layer, so v2 = 0 exactly there."""
    case, result, truth, oracle = computed(model_name, "categorical")
    last = list(result.shapes)[-2:]
    for name in last:
        assert torch.count_nonzero(result.v2[name]) == 0
        assert torch.count_nonzero(result.c12[name]) == 0


def test_results_do_not_depend_on_batching():
    """Draws are seeded per global input index: one batch or many give the same numbers."""
    case = make_case("conv1d", "categorical", inputs=5, seed=4)
    whole = fimvar.analyze(case.model, case.x, "categorical", samples=3, seed=9, bounds=False)
    parts = fimvar.analyze(case.model, [case.x[:2], case.x[2:3], case.x[3:]], "categorical",
                           samples=3, seed=9, bounds=False)
    for quantity in ("fisher", "i1", "i2", "v1", "v2", "input_var"):
        for n in whole.fisher:
            expected = getattr(whole, quantity)[n]
            torch.testing.assert_close(getattr(parts, quantity)[n], expected, rtol=1e-12,
                                       atol=1e-12 * float(expected.abs().max()))


MEMORY_PROBE = """
import resource, sys, torch, warnings
from torch import nn
import fimvar
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1000))
x = torch.randn(8, 16)
fimvar.analyze(model, x[:1], "categorical", bounds=False)  # imports and kernels, not measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = fimvar.analyze(model, x, "categorical", memory_budget=int(sys.argv[1]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert all(b.holds() for b in result.bounds.values())
print((after - before) * 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_bounds_at_a_thousand_outputs_stay_within_the_memory_budget():
    """T = 1000 with every bound: the peak memory of the process grows by at most the budget
    (measured in a fresh process, ru_maxrss), and the bounds hold."""
    budget = 64 * 2**20
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(budget)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.split()[-1])
    assert growth <= budget, f"peak grew by {growth / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"


@pytest.mark.parametrize("engine", ["structured", "autodiff"])
def test_input_variance_of_nearly_identical_inputs(engine):
    """Inputs x₀ + 1e-7·noise (float64): the input variance (~1e-14 of I²) matches the oracle's
    two-pass variance of its per-input Fishers; identical inputs give (almost exactly) zero."""
    case = make_case("mlp-tanh", "categorical", inputs=1)
    noise = torch.randn(6, *case.x.shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    oracle = Oracle(case.model, "categorical")
    for spread in (1e-7, 0.0):
        x = case.x + spread * noise
        result = fimvar.analyze(case.model, x, "categorical", samples=1, bounds=False, engine=engine)
        truth = oracle.split(oracle.analysis(x)["input_var"])
        fisher = oracle.split(oracle.analysis(x)["fisher"])
        for name, expected in truth.items():
            if spread:
                assert_close(result.input_var[name], expected, "input variance, near-duplicates",
                             rtol=1e-5, floor=1e-3 * float(expected.abs().max()))
            else:
                assert (result.input_var[name] <= 1e-28 * fisher[name] ** 2).all()
