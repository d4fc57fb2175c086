"""``fimvar.fisher_diagonal`` (first derivatives only) against the brute-force oracle, on both
engines, and its checkpoint."""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import ORACLE_CASES, STRUCTURED_MODELS, make_case
from checks import assert_close
from oracle import Oracle

import fimvar


@pytest.mark.parametrize("model_name,family", ORACLE_CASES[::3])
def test_fisher_diagonal_matches_oracle(model_name, family):
    case = make_case(model_name, family)
    expected = Oracle(case.model, family).split(Oracle(case.model, family).analysis(case.x)["fisher"])
    engines = ["autodiff"] + (["structured"] if model_name in STRUCTURED_MODELS else [])
    for engine in engines:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fisher = fimvar.fisher_diagonal(case.model, case.x, family, engine=engine)
        assert list(fisher) == list(expected)
        scale = max(float(v.abs().max()) for v in expected.values())
        for name, value in expected.items():
            assert_close(fisher[name], value, f"fisher_diagonal [{engine}]", floor=1e-3 * scale)


def test_fisher_diagonal_resumes_from_its_checkpoint(tmp_path):
    case = make_case("cnn-pooling", "categorical", inputs=12)
    path = tmp_path / "fisher.ckpt"
    first = fimvar.fisher_diagonal(case.model, case.x, "categorical", checkpoint=path, batch_size=4)
    again = fimvar.fisher_diagonal(case.model, case.x, "categorical", checkpoint=path, batch_size=4)
    assert all(first[k].equal(again[k]) for k in first)
    with pytest.raises(fimvar.FimvarError, match="different family"):
        fimvar.fisher_diagonal(case.model, case.x, "bernoulli", checkpoint=path, batch_size=4)


def test_fisher_diagonal_refuses_labels_it_would_not_use():
    """Data labels only mask the -100 positions of a language model; elsewhere they are refused."""
    case = make_case("mlp-tanh", "categorical")
    with pytest.raises(fimvar.FimvarError, match="takes its labels from the model"):
        labels = torch.zeros(case.x.shape[0], dtype=torch.long)
        fimvar.fisher_diagonal(case.model, case.x, "categorical", labels=labels)
