"""The graph engine (hooks around layers, autograd between them) against the autodiff engine:
the exact Fisher of every catalogue model, tied weights, layers used functionally, and the clear
refusal of second derivatives (docs/theory.md §14)."""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import MODELS, make_case
from checks import assert_close

import fimvar
from fimvar.engine.graph import GraphEngine

FAMILIES = ("categorical", "gaussian", "bernoulli", "poisson")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_exact_fisher_matches_autodiff(model_name, family):
    case = make_case(model_name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fimvar.fisher_diagonal(case.model, case.x, family, engine="autodiff")
        found = fimvar.fisher_diagonal(case.model, case.x, family, engine="graph", memory_budget=2**16)
    scale = max(float(v.abs().max()) for v in expected.values())
    for name, value in expected.items():
        assert_close(found[name], value, f"graph engine: Fisher [{family}]", rtol=1e-11, floor=1e-9 * scale)


def test_which_parameters_the_layers_cover():
    """Attention projections used functionally and bare parameters go to the autodiff engine; a
    tied weight is covered by both of its layers."""
    attention = make_case("encoder-attention", "categorical")
    engine = GraphEngine(attention.model, [n for n, _ in attention.model.named_parameters()], 2**30)
    engine.chunk_size(attention.x, 3, 0)
    assert set(engine.fallback.parameter_names) == {"attention.in_proj_weight", "attention.in_proj_bias",
                                                    "attention.out_proj.weight", "attention.out_proj.bias"}
    lm = make_case("causal-lm", "categorical")
    engine = GraphEngine(lm.model, [n for n, _ in lm.model.named_parameters()], 2**30)
    engine.chunk_size(lm.x, 9, 0)
    assert engine.fallback.parameter_names == ["positions"]
    assert {"tokens", "head"} <= set(engine.layers)  # the tied weight's two uses


def test_auto_picks_the_graph_engine_for_the_fisher_alone():
    case = make_case("residual", "categorical")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the graph engine is fast
        fimvar.fisher_diagonal(case.model, case.x)
    with pytest.raises(fimvar.FimvarError, match="first derivatives only"):
        GraphEngine(case.model, [n for n, _ in case.model.named_parameters()], 2**30).derivatives(case.x)


class _SharedPositions(torch.nn.Module):
    """Token embeddings plus position embeddings looked up on ids of shape (1, L), broadcast over
    the batch (as BERT does): the position layer's output is shared by the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(7, 3)
        self.positions = torch.nn.Embedding(4, 3)
        self.head = torch.nn.Linear(12, 2)

    def forward(self, ids):
        positions = self.positions(torch.arange(ids.shape[1])[None])
        return self.head((self.tokens(ids) + positions).flatten(1))


def test_layers_shared_by_the_batch_go_to_autodiff():
    torch.manual_seed(0)
    model = _SharedPositions().double()
    ids = torch.randint(0, 7, (4, 4), generator=torch.Generator().manual_seed(1))
    expected = fimvar.fisher_diagonal(model, ids, engine="autodiff")
    found = fimvar.fisher_diagonal(model, ids, engine="graph")
    for name, value in expected.items():
        assert_close(found[name], value, "graph engine: broadcast embedding", rtol=1e-12)
    engine = GraphEngine(model, [n for n, _ in model.named_parameters()], 2**30)
    engine.chunk_size(ids, 2, 0)
    assert engine.fallback.parameter_names == ["positions.weight"]
