"""Each kind of bad input raises one FimvarError whose message says what to change."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fimvar
from fimvar import FimvarError


def mlp(outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, outputs)).double()


X = torch.randn(3, 4, dtype=torch.float64)


def raises(match: str, *args, **kwargs):
    with pytest.raises(FimvarError, match=match):
        fimvar.analyze(*args, **kwargs)


def test_wrong_output_width_for_categorical():
    raises("at least 2 outputs", mlp(1), X, "categorical")


def test_declared_width_mismatch():
    raises("declared with 4 outputs", mlp(3), X, fimvar.Categorical(width=4))


def test_per_position_outputs_where_a_mode_needs_one_output_per_input():
    """(N, L, T) outputs are L positions for analyze; the full-matrix mode refuses them clearly."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))).double()
    with pytest.raises(FimvarError, match="one output per position"):
        fimvar.analyze_full(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fimvar.analyze(model, X).metadata["positions"] == 2


@pytest.mark.parametrize("family,labels,match", [
    ("categorical", torch.tensor([0, 1, 3]), r"0\.\.2"),
    ("categorical", torch.tensor([0.0, 1.5, 2.0]), "integer class"),
    ("categorical", torch.tensor([0, 1]), "3 inputs but labels has 2"),
    ("bernoulli", torch.full((3, 3), 0.5, dtype=torch.float64), "0 or 1"),
    ("poisson", -torch.ones(3, 3, dtype=torch.float64), "non-negative integer"),
    ("gaussian", torch.ones(3, 2, dtype=torch.float64), r"shape \(3, 3\)"),
    ("gaussian", torch.full((3, 3), float("nan"), dtype=torch.float64), "NaN"),
])
def test_labels_outside_the_domain(family, labels, match):
    raises(match, mlp(3), X, family, labels=labels)


def test_nan_inputs():
    bad = X.clone()
    bad[1, 2] = float("nan")
    raises("NaN or Inf", mlp(), bad)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 17, 39])
def test_bad_inputs_are_found_slice_by_slice(monkeypatch, bad_value, where):
    """The finiteness check of the inputs runs a slice of inputs at a time (its temporaries stay
    small whatever N, issue 14) and still finds a NaN or Inf in any slice, with the same error."""
    from fimvar.analysis import inputs

    monkeypatch.setattr(inputs, "FINITE_SLICE_ELEMENTS", 24)  # 6 inputs of 4 features per slice
    checked = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: checked.append(t.numel()) or isfinite(t))
    x = torch.randn(40, 4, dtype=torch.float64)
    assert inputs.all_finite(x)
    assert checked == [1]  # finite inputs: one sum, no mask of the whole tensor
    x[where, 3] = bad_value
    checked.clear()
    assert not inputs.all_finite(x)
    assert max(checked) <= 24  # the sum is not finite: checked a slice at a time
    monkeypatch.setattr(torch, "isfinite", isfinite)
    raises("the inputs contain NaN or Inf; clean or impute the data first", mlp(), x)


def test_nan_outputs():
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    with torch.no_grad():  # finite weights whose outputs overflow
        model[2].bias.fill_(1e308)
        model[2].weight.fill_(1e308)
    raises("NaN or Inf outputs", model, X)


def test_nan_parameters():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    raises("contain NaN or Inf", model, X)


@pytest.mark.parametrize("data", [torch.zeros(0, 4, dtype=torch.float64), []])
def test_empty_data(data):
    raises("empty", mlp(), data)


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_samples_below_one(samples):
    raises("samples", mlp(), X, samples=samples)


def test_integer_inputs_to_a_float_model():
    raises("integers", mlp(), torch.ones(3, 4, dtype=torch.int64))


def test_dtype_mismatch():
    raises("float32 but the model is torch.float64", mlp(), X.float())


def test_inputs_on_another_device():
    raises("on meta but the model is on cpu", mlp(), torch.empty(3, 4, dtype=torch.float64, device="meta"))


def test_model_without_trainable_parameters():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    raises("no trainable parameters", model, X)


def test_unknown_family_and_engine():
    raises("unknown family", mlp(), X, "laplace")
    raises("unknown engine", mlp(), X, engine="fast")


def test_second_order_that_is_not_a_bool():
    raises("second_order must be True or False", mlp(), X, second_order="no")


def test_model_that_fails_on_the_inputs():
    raises("the model failed on inputs of shape", mlp(), torch.randn(3, 7, dtype=torch.float64))


def test_unknown_parameter_and_bad_groups():
    raises("unknown parameters", mlp(), X, parameters=["nope"])
    raises("belong to no group", mlp(), X, groups={"first": ["0.weight"]})


def test_relu_warning():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with pytest.warns(UserWarning, match="Gauss-Newton"):
        fimvar.analyze(model, X, bounds=False)


def test_training_mode_is_evaluated_in_eval_mode_and_restored():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    model.train()
    with pytest.warns(UserWarning, match="eval mode"):
        first = fimvar.analyze(model, X, bounds=False)
    assert model.training and model[2].training
    model.eval()
    second = fimvar.analyze(model, X, bounds=False)
    for name in first.fisher:
        assert torch.equal(first.fisher[name], second.fisher[name])


# ---------------------------------------------------------------------- issue 10
MODES = {
    "analyze": lambda model, x: fimvar.analyze(model, x, bounds=False),
    "fisher_diagonal": lambda model, x: fimvar.fisher_diagonal(model, x),
    "analyze_full": lambda model, x: fimvar.analyze_full(model, x, bounds=False),
    "hidden_fisher": lambda model, x: fimvar.hidden_fisher(model, x, ["1"]),
    "weight_norm_bounds": lambda model, x: fimvar.weight_norm_bounds(model, x),
}


@pytest.mark.parametrize("mode", MODES)
def test_model_on_the_meta_device(mode):
    model = mlp().to("meta")
    with pytest.raises(FimvarError, match="meta device.*to_empty"):
        MODES[mode](model, X)


class CountingForward(nn.Module):
    """A forward that writes into a buffer, which torch.func cannot differentiate."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3).double()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls += 1
        return torch.tanh(self.linear(x))


def test_forward_that_mutates_a_buffer_on_the_graph_engine():
    """fisher_diagonal differentiates with plain autograd (the graph engine), which allows the
    write: the Fisher is the one of the same function without it, and the buffer is restored."""
    model = CountingForward()
    fisher = fimvar.fisher_diagonal(model, X)
    assert float(model.calls) == 0
    reference = fimvar.fisher_diagonal(nn.Sequential(model.linear, nn.Tanh()), X, engine="autodiff")
    for name, value in reference.items():
        torch.testing.assert_close(fisher[name.replace("0.", "linear.")], value, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["analyze", "analyze_full", "hidden_fisher"])
def test_forward_that_mutates_a_buffer(mode):
    run = MODES[mode] if mode != "hidden_fisher" else (
        lambda model, x: fimvar.hidden_fisher(model, x, ["linear"]))
    with pytest.warns(UserWarning) if mode == "analyze" else _no_warning():
        with pytest.raises(FimvarError, match="could not differentiate the model") as caught:
            run(CountingForward(), X)
    message = str(caught.value)
    assert "in-place" in message and "\n" not in message  # the original message, on one line
    assert isinstance(caught.value.__cause__, RuntimeError)  # chained: raise … from error


def test_failed_update_leaves_the_analysis_unchanged():
    analysis = fimvar.Analysis(CountingForward(), engine="autodiff")
    with pytest.raises(FimvarError, match="could not differentiate"):
        analysis.update(X, torch.tensor([0, 1, 2]))
    assert analysis.count == 0 and analysis.accumulator.sums == {} and analysis.has_labels is None


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("budget,expected", [
    ("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GB", 15 * 10**8), (" 64 kib ", 64 * 1024),
    (2**31, 2**31), (np.int64(2**30), 2**30), ("1B", 1),
])
def test_memory_budget_forms(budget, expected):
    analysis = fimvar.Analysis(mlp(), memory_budget=budget)
    assert analysis.memory_budget == expected and type(analysis.memory_budget) is int


def test_a_small_memory_budget_gives_the_same_result():
    """1 kB forces one input per chunk; the sums over chunks equal those of one chunk."""
    x = torch.randn(12, 4, dtype=torch.float64)
    small = fimvar.analyze(mlp(), x, samples=2, memory_budget="1kB")
    default = fimvar.analyze(mlp(), x, samples=2)
    for name in default.fisher:
        for quantity in ("fisher", "i1", "i2", "v1", "input_var"):
            torch.testing.assert_close(getattr(small, quantity)[name], getattr(default, quantity)[name],
                                       rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("budget", [0, -5, True, 2.5e9, "2 parsecs", "GB", "", "0.1B", "-1GB", [2**30]])
def test_memory_budget_refused(budget):
    with pytest.raises(FimvarError, match="memory_budget"):
        fimvar.analyze(mlp(), X, memory_budget=budget)


def test_zero_d_labels():
    raises("0-d tensor", mlp(), X, labels=torch.tensor(1))
    raises("0-d tensor", mlp(), [(X, torch.tensor(1))])
    with pytest.raises(FimvarError, match="0-d tensor"):
        fimvar.Analysis(mlp()).update(X, torch.tensor(2))


def test_no_inputs():
    raises("is None", mlp(), None)
    raises("iterable of batches", mlp(), 3)
    raises("cannot convert the NumPy inputs", mlp(), np.array([["a", "b"]]))  # numbers are accepted
    raises("0-d tensor", mlp(), [torch.tensor(1.0, dtype=torch.float64)])


@pytest.mark.parametrize("container", [tuple, list])
def test_inputs_and_labels_passed_as_x(container):
    y = torch.tensor([0, 1, 2])
    raises("labels=", mlp(), container((X, y)))
    raises("labels=", mlp(), container((X, torch.randn(3, 3).double())), "gaussian")  # other shape


def test_two_batches_are_still_batches():
    """A list of two input batches is read as batches: the result equals that of their
    concatenation (the draws are seeded by the global input index)."""
    first, second = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    split = fimvar.analyze(mlp(), [first, second], samples=2, bounds=False)
    whole = fimvar.analyze(mlp(), torch.cat([first, second]), samples=2, bounds=False)
    for name in whole.fisher:
        torch.testing.assert_close(split.i1[name], whole.i1[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(split.fisher[name], whole.fisher[name], rtol=1e-12, atol=0)


def test_numpy_integers_for_samples_and_seed():
    reference = fimvar.analyze(mlp(), X, samples=2, seed=5, bounds=False)
    for samples, seed in ((np.int64(2), np.uint64(5)), (np.int32(2), np.int16(5))):
        result = fimvar.analyze(mlp(), X, samples=samples, seed=seed, bounds=False)
        assert result.samples == 2 and result.metadata["seed"] == 5
        for name in reference.i1:
            assert torch.equal(result.i1[name], reference.i1[name])


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, True, "1", None])
def test_seeds_outside_64_bits(seed):
    raises("seed", mlp(), X, seed=seed)
    with pytest.raises(FimvarError, match="seed"):
        fimvar.sample_labels("categorical", torch.zeros(2, 3), 1, seed=seed)


def test_largest_seed_is_its_own():
    """2**64 − 1 is accepted and does not draw the labels of seed 0 (2**64 would alias it)."""
    h = torch.randn(50, 3, dtype=torch.float64)
    largest = fimvar.sample_labels("categorical", h, 4, seed=2**64 - 1)
    assert not torch.equal(largest, fimvar.sample_labels("categorical", h, 4, seed=0))


@pytest.mark.parametrize("sigma", [1e-200, 1e300, 1e-78, 1e77, 0.0, float("inf"), float("nan"), True, "1"])
def test_gaussian_sigma_outside_the_float64_range(sigma):
    with pytest.raises(FimvarError, match="sigma"):
        fimvar.Gaussian(sigma)


@pytest.mark.parametrize("sigma", [1e-30, 1e60, np.float32(0.5)])
def test_gaussian_sigma_inside_the_range(sigma):
    """The bias of a last Linear layer has u = e_c: its Fisher is 1/σ² and its v1 is 2/σ⁴, at
    extreme but valid σ."""
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        model.weight.mul_(1e-3)
    r = fimvar.analyze(model, X, fimvar.Gaussian(sigma), samples=2)
    s = float(sigma)
    torch.testing.assert_close(r.fisher["bias"], torch.full((2,), 1 / s**2, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(r.v1["bias"], torch.full((2,), 2 / s**4, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert all(bound.holds() for bound in r.bounds.values())


def test_smallest_sigma_fails_clearly():
    """At the smallest σ, 1/σ⁴ ≈ 4e307 is finite but the per-layer Frobenius norms (sums of v1²)
    overflow: one FimvarError naming the group and the quantity, never NaN."""
    from fimvar.families.gaussian import SIGMA_MIN

    with pytest.raises(FimvarError, match=r"numerical failure: the \w+ of (parameter|group) '"):
        fimvar.analyze(nn.Linear(4, 2).double(), X, fimvar.Gaussian(SIGMA_MIN))


def test_overflow_in_a_result_is_a_numerical_failure():
    """Inputs of 1e60 into a Linear layer with Gaussian σ = 1e-20: the weight's Fisher
    (a²/σ² ~ 1e160) is finite but its v1 (2a⁴/σ⁴) overflows; the error names the parameter and
    the quantity."""
    model = nn.Linear(2, 2).double()
    x = torch.full((3, 2), 1e60, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1e-60)
    family = fimvar.Gaussian(1e-20)
    with pytest.raises(FimvarError, match=r"numerical failure: the v1 of parameter 'weight'"):
        fimvar.analyze(model, x, family)
    with pytest.raises(FimvarError, match=r"numerical failure: the v1 of parameter 'weight'"):
        fimvar.analyze_full(model, x, family, bounds=False)
    # per chunk (one input each) the Fisher 1e308 is finite, their sum is not
    with pytest.raises(FimvarError, match=r"numerical failure: the fisher of parameter 'weight'"):
        fimvar.fisher_diagonal(model, torch.full((3, 2), 1e154, dtype=torch.float64), "gaussian",
                               memory_budget=1)
