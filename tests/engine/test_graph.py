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
from fimvar.engine import graph
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


class _PickedPositions(_SharedPositions):
    """The batch-free output's first copy picked (``[0]``): expanding it to the batch keeps the
    outputs but not their per-input derivatives."""

    def forward(self, ids):
        positions = self.positions(torch.arange(ids.shape[1])[None])[0]
        return self.head((self.tokens(ids) + positions).flatten(1))


@pytest.mark.parametrize(("model_class", "fallback"), [(_SharedPositions, None),
                                                       (_PickedPositions, ["positions.weight"])])
def test_layers_shared_by_the_batch(model_class, fallback):
    """An embedding called on batch-free ids and only broadcast afterwards is expanded to one
    copy per input and served by the hooks; one whose copies the forward picks goes to autodiff.
    Both give the autodiff engine's Fisher."""
    torch.manual_seed(0)
    model = model_class().double()
    ids = torch.randint(0, 7, (4, 4), generator=torch.Generator().manual_seed(1))
    expected = fimvar.fisher_diagonal(model, ids, engine="autodiff")
    found = fimvar.fisher_diagonal(model, ids, engine="graph")
    for name, value in expected.items():
        assert_close(found[name], value, "graph engine: broadcast embedding", rtol=1e-12)
    engine = GraphEngine(model, [n for n, _ in model.named_parameters()], 2**30)
    engine.chunk_size(ids, 2, 0)
    assert (None if engine.fallback is None else engine.fallback.parameter_names) == fallback
    assert (model.positions in engine.expanded) == (fallback is None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_batched_columns_match_autodiff(model_name, family, monkeypatch):
    """Backward passes batched over the square root's columns by autograd's vmap (as for a
    language model's many columns, here from 2 on; docs/theory.md §14.2): the same Fisher as the
    autodiff engine."""
    monkeypatch.setattr(graph, "BATCHED_COLUMNS_FROM", 1)
    case = make_case(model_name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fimvar.fisher_diagonal(case.model, case.x, family, engine="autodiff")
        found = fimvar.fisher_diagonal(case.model, case.x, family, engine="graph")
    scale = max(float(v.abs().max()) for v in expected.values())
    for name, value in expected.items():
        assert_close(found[name], value, f"graph engine, batched columns [{family}]", rtol=1e-11,
                     floor=1e-9 * scale)


class _Square(torch.autograd.Function):
    """A custom autograd Function whose backward reads a value (``.item()``): autograd's batched
    backward (vmap) cannot run it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        scale = 2.0 if float(g.abs().max().item()) < 1e300 else 0.0
        return scale * x * g


class _CustomFunction(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.second(_Square.apply(torch.tanh(self.first(x))))


def test_columns_fall_back_to_one_pass_each_without_a_batching_rule(monkeypatch):
    """The batched backward fails on the custom Function: the engine says so (``batch_columns``
    off) and takes one pass per column; the Fisher equals ``Σ_c p_c (∂ log p_c/∂θ)²`` summed over
    inputs by plain autograd, class by class."""
    monkeypatch.setattr(graph, "BATCHED_COLUMNS_FROM", 1)
    torch.manual_seed(0)
    model = _CustomFunction().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    engine = GraphEngine(model, [n for n, _ in model.named_parameters()], 2**30)
    _, sums, others = engine.fisher_sums(x, fimvar.families.get_family("categorical").fisher_factor)
    assert not engine.batch_columns and not others
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        log_p = torch.log_softmax(model(x[i:i + 1])[0], -1)
        for c in range(3):
            grads = torch.autograd.grad(log_p[c], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads, strict=True):
                expected[n] += log_p[c].exp().detach() * g**2
    for name, value in expected.items():
        assert_close(sums[name], value, "graph engine, one pass per column", rtol=1e-12)


@pytest.mark.parametrize("model_name", ["conv1d", "conv2d", "resnet-batchnorm"])
def test_convolutions_by_position_grams_match_autodiff(model_name, monkeypatch):
    """Convolutions with few output positions square their per-input gradients as a product of
    Gram matrices over positions (docs/theory.md §14.2); here every convolution does (the limit
    raised), and the Fisher is the autodiff engine's."""
    calls = []
    original = GraphEngine._position_gram_square

    def counted(context, shape):
        calls.append(shape)
        return original(context, shape)

    monkeypatch.setattr(GraphEngine, "_position_gram_square", staticmethod(counted))
    monkeypatch.setattr(graph, "GRAM_POSITIONS_PER_COLUMN", 10**6)
    case = make_case(model_name, "categorical")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fimvar.fisher_diagonal(case.model, case.x, "categorical", engine="autodiff")
        found = fimvar.fisher_diagonal(case.model, case.x, "categorical", engine="graph")
    convolutions = [m for m in case.model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert len(calls) >= len(convolutions) > 0
    scale = max(float(v.abs().max()) for v in expected.values())
    for name, value in expected.items():
        assert_close(found[name], value, "graph engine, convolutions by position Grams", rtol=1e-11,
                     floor=1e-9 * scale)
