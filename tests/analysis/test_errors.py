"""Each kind of bad input raises one FimvarError whose message says what to change."""

from __future__ import annotations

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


def test_model_output_with_too_many_dimensions():
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))).double()
    raises("batch, outputs", model, X)


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
