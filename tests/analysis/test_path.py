"""``fimvar.analyze`` chooses between the exact and the sampled path by the number of output columns
(docs/theory.md §17.2): a language model above ``EXACT_COLUMNS_UP_TO`` columns gets the sampled
analysis, with analyze's own draws, and every way of forcing or misusing the choice is one clear
error."""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import CausalLM
from checks import assert_close

import fimvar
from fimvar.analysis.path import EXACT_COLUMNS_UP_TO
from fimvar.errors import FimvarError

VOCABULARY, LENGTH = 400, 3  # 1200 output columns per input


def _language_model():
    torch.manual_seed(0)
    model = CausalLM(VOCABULARY, width=4, length=LENGTH).double()
    ids = torch.randint(0, VOCABULARY, (6, LENGTH), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_many_classes_take_the_sampled_path_with_analyzes_draws():
    """Above the threshold analyze returns the sampled result and says why; forcing the exact path
    on the same model gives the same Î1 (the draws are seeded alike)."""
    torch.manual_seed(0)
    classes = EXACT_COLUMNS_UP_TO + 6
    model = torch.nn.Linear(2, classes).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    sampled = fimvar.analyze(model, x, samples=2, seed=3, bounds=False)
    assert isinstance(sampled, fimvar.SampledResult)
    assert sampled.metadata["path"] == "sampled"
    assert f"{classes} output columns" in sampled.metadata["path_reason"]
    exact = fimvar.analyze(model, x, samples=2, seed=3, bounds=False, path="exact")
    assert isinstance(exact, fimvar.DiagonalResult) and exact.metadata["path"] == "exact"
    for name, value in exact.i1.items():
        assert_close(sampled.i1[name], value, "Î1, sampled path vs exact path", rtol=1e-10,
                     floor=1e-12 * float(value.abs().max()))
    assert set(sampled.variance("i1")) == set(exact.i1)


def test_language_model_takes_the_sampled_path():
    """A language model of 400 words × 3 positions: analyze's result is analyze_sampled's."""
    model, ids = _language_model()
    assert VOCABULARY * LENGTH > EXACT_COLUMNS_UP_TO
    auto = fimvar.analyze(model, ids, samples=2, seed=3, bounds=False)
    direct = fimvar.analyze_sampled(model, ids, samples=2, seed=3)
    assert auto.metadata["path"] == "sampled" and "1200 output columns" in auto.metadata["path_reason"]
    for name, value in direct.i1.items():
        assert torch.equal(auto.i1[name], value), name


def test_small_models_keep_the_exact_path_and_a_generator_is_read_once():
    """A classifier keeps the exact path; a one-pass generator of batches loses no batch to the
    forward pass that reads the width."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    whole = fimvar.analyze(model, x, bounds=False)
    assert whole.metadata["path"] == "exact"
    streamed = fimvar.analyze(model, (x[i : i + 3] for i in range(0, 8, 3)), bounds=False)
    assert streamed.num_inputs == 8
    assert_close(streamed.fisher["0.weight"], whole.fisher["0.weight"], "Fisher from a generator", rtol=1e-12)


def test_sampled_path_from_a_generator_and_forced():
    model, ids = _language_model()
    streamed = fimvar.analyze(model, (ids[i : i + 4] for i in range(0, 6, 4)), samples=2, bounds=False)
    direct = fimvar.analyze_sampled(model, ids, samples=2)
    assert streamed.num_inputs == 6
    for name, value in direct.i1.items():
        assert_close(streamed.i1[name], value, "sampled Î1 from a generator", rtol=1e-12)
    forced = fimvar.analyze(model, ids[:, :1], samples=2, bounds=False, path="sampled")
    assert forced.metadata["path"] == "sampled"
    assert forced.metadata["path_reason"] == "path='sampled' was given"


@pytest.mark.parametrize(("arguments", "message"), [
    ({"samples": 1}, "give samples=2 or more"),
    ({"samples": 2, "path": "fast"}, "path must be one of"),
    ({"samples": 2, "path": "sampled", "engine": "autodiff"}, "runs on the graph engine"),
])
def test_misuse_is_one_clear_error(arguments, message):
    model, ids = _language_model()
    with pytest.raises(FimvarError, match=message):
        fimvar.analyze(model, ids, bounds=False, **arguments)


def test_bounds_on_the_sampled_path_warn():
    model, ids = _language_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fimvar.analyze(model, ids, samples=2)
    assert any("bounds of [B] need the exact path" in str(w.message) for w in caught)
