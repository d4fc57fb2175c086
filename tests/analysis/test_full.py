"""Full-matrix mode against the brute-force oracle, and its bounds ([A], [B] App. C)."""

from __future__ import annotations

import functools

import pytest
import torch
from cases import FAMILIES, make_case
from checks import assert_close
from oracle import Oracle

import fimvar

MODELS = ["mlp-tanh", "conv1d", "layernorm"]


@functools.cache
def computed(model_name: str, family: str):
    case = make_case(model_name, family)
    result = fimvar.analyze_full(case.model, case.x, family, samples=2, seed=5)
    with torch.no_grad():
        draws = fimvar.sample_labels(family, case.model(case.x), 2, seed=5)
    truth = Oracle(case.model, family).analysis(case.x, draws=draws)
    return case, result, truth


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", MODELS)
def test_full_matrices_match_oracle(model_name, family):
    case, result, truth = computed(model_name, family)
    scale = float(truth["fisher_full"].abs().max())
    variance_scale = float(torch.maximum(truth["v1_full"].max(), truth["v2_full"].max()))
    pairs = [("fisher", "fisher_full", scale), ("i1", "i1_full", scale), ("i2", "i2_full", scale),
             ("v1", "v1_full", variance_scale), ("v2", "v2_full", variance_scale),
             ("input_var", "input_var_full", scale**2)]
    for mine, theirs, floor in pairs:
        assert_close(getattr(result, mine), truth[theirs], f"full {mine} [{family}]", floor=1e-3 * floor)
    assert_close(result.frobenius["frobenius_i1"], truth["frobenius_i1"], "full ‖Cov(Î1)‖_F")
    assert_close(result.frobenius["frobenius_i2"], truth["frobenius_i2"], "full ‖Cov(Î2)‖_F",
                 floor=1e-3 * result.frobenius["frobenius_i1"])


@pytest.mark.parametrize("family", FAMILIES)
def test_full_diagonal_equals_diagonal_mode(family):
    case, result, _ = computed("mlp-tanh", family)
    diagonal = fimvar.analyze(case.model, case.x, family, samples=2, seed=5, bounds=False)
    for quantity in ("fisher", "i1", "i2", "v1", "v2", "input_var"):
        flat = torch.cat([getattr(diagonal, quantity)[n].reshape(-1) for n in result.slices])
        assert_close(torch.diagonal(getattr(result, quantity)), flat, f"full vs diagonal {quantity}",
                     floor=1e-3 * float(flat.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", MODELS)
def test_full_mode_bounds_hold(model_name, family):
    _, result, _ = computed(model_name, family)
    frob = result.frobenius
    assert frob["frobenius_i1"] <= frob["frobenius_i1_bound"] * (1 + 1e-9)
    assert frob["frobenius_i2"] <= frob["frobenius_i2_bound"] * (1 + 1e-9) + 1e-300
    slack = 1e-9 * (result.v1.abs().max() + result.v2.abs().max())
    assert (result.v1 <= result.offdiagonal_bounds["appC_v1_upper"] * (1 + 1e-9) + slack).all()
    assert (result.v2 <= result.offdiagonal_bounds["appC_v2_upper"] * (1 + 1e-9) + slack).all()


def test_full_mode_refuses_large_models():
    model = torch.nn.Linear(100, 50).double()
    with pytest.raises(fimvar.FimvarError, match="parameters"):
        fimvar.analyze_full(model, torch.randn(2, 100, dtype=torch.float64), max_parameters=1000)
