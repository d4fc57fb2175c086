"""The structured engine against the autodiff engine (the dense ground truth), at 1e-10.

Every catalogue model the structured engine supports (tests/cases.py: the oracle models and the
STACKS of every supported module) is compared twice: its raw per-sample derivatives ``u``, ``w``
(factored blocks multiplied out), and every quantity of a full analysis in all four families,
with identical label draws. Plus: unsupported modules, the ``auto`` fallback, chunking and the
memory budget.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from cases import DEVICES, FAMILIES, STRUCTURED_MODELS, UNSUPPORTED_MODELS, make_case
from checks import assert_close
from torch import nn

import fimvar
from fimvar.engine import AutodiffEngine, StructuredEngine
from fimvar.engine.structured import engine as structured_engine

SAMPLES = 2
#: models whose full analysis is compared in every family (the derivatives of every catalogue
#: model are compared in test_derivatives_match_autodiff)
ANALYSIS_MODELS = ["mlp-sigmoid-softplus", "conv2d", "deep-mixed", "batchnorm-dropout", "relu-leaky",
                   "cnn-pooling", "sequence-linear", "random-mlp-1", "random-cnn-0"]
QUANTITIES = ("fisher", "v1", "v2", "c12", "input_var", "i1", "i2", "empirical", "empirical_bias")


def dense_derivatives(block) -> tuple[torch.Tensor, torch.Tensor]:
    """``u`` and ``w`` of every entry, ``(n, T, numel)``, whatever the layout."""
    u, w = block.first, block.second
    if block.inputs is not None:
        a = block.inputs
        u = (u[..., None] * a[:, None, None, :]).flatten(2)
        w = (w[..., None] * (a**2)[:, None, None, :]).flatten(2)
    return u, w


def analyse(case, engine: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fimvar.analyze(case.model, case.x, case.family, samples=SAMPLES, seed=3,
                              labels=case.labels, engine=engine, **options)


@functools.cache
def reference(model_name: str, family: str):
    case = make_case(model_name, family)
    # the spectral bounds of a categorical model cost a sphere search per input: check them on
    # one categorical model and on every model of the other families
    bounds = family != "categorical" or model_name == "cnn-pooling"
    return case, bounds, analyse(case, "autodiff", bounds=bounds)


def natural_scale(result, quantity: str) -> float:
    """As in test_oracle: the scale a quantity is judged on where its own values are rounding
    noise (c12 of a Gaussian model is exactly 0): Fisher-like values on the Fisher, variances on
    v1 and v2, the input variance on the Fisher squared."""
    def largest(tensors):
        return max(float(t.abs().max()) for t in tensors.values())

    if quantity in ("v1", "v2", "c12"):
        return max(largest(result.v1), largest(result.v2))
    if quantity == "input_var":
        return largest(result.fisher) ** 2
    return largest(result.fisher)


@pytest.mark.parametrize("model_name", STRUCTURED_MODELS)
def test_derivatives_match_autodiff(model_name):
    case = make_case(model_name, "categorical", inputs=4)
    model = case.model.eval()
    names = [name for name, _ in model.named_parameters()]
    h_ref, ref = AutodiffEngine(model, names, 2**30).derivatives(case.x)
    h, blocks = StructuredEngine(model, names, 2**30).derivatives(case.x)
    assert_close(h, h_ref, "structured: outputs h")
    assert [b.name for b in blocks] == [b.name for b in ref]
    scale_w = max(float(b.second.abs().max()) for b in ref)
    for block, expected in zip(blocks, ref, strict=True):
        assert block.shape == expected.shape
        u, w = dense_derivatives(block)
        u_ref, w_ref = dense_derivatives(expected)
        assert_close(u, u_ref, "structured: u (first derivatives)")
        assert_close(w, w_ref, "structured: w (second derivatives)", floor=1e-6 * scale_w)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", ANALYSIS_MODELS)
def test_analysis_matches_autodiff(model_name, family):
    case, bounds, expected = reference(model_name, family)
    result = analyse(case, "structured", bounds=bounds)
    assert result.engine == "structured" and expected.engine == "autodiff"
    for quantity in QUANTITIES:
        floor = 1e-3 * natural_scale(expected, quantity)
        actual, truth = getattr(result, quantity), getattr(expected, quantity)
        for name in truth:
            assert actual[name].shape == truth[name].shape
            assert_close(actual[name], truth[name], f"structured: {quantity} [{family}]",
                         floor=floor)
    assert set(result.bounds) == set(expected.bounds)
    for name, bound in expected.bounds.items():
        floor = 1e-3 * max(float(v.abs().max()) for v in bound.values.values())
        for key, value in bound.values.items():
            assert_close(result.bounds[name].values[key], value, "structured: bounds", floor=floor)
    for quantity, groups in expected.group_exact.items():
        for group, value in groups.items():
            assert_close(result.group_exact[quantity][group], value, "structured: group sums",
                         floor=1e-12)


@pytest.mark.parametrize("model_name", sorted(UNSUPPORTED_MODELS))
def test_unsupported_module_is_named(model_name):
    case = make_case(model_name, "categorical")
    with pytest.raises(fimvar.FimvarError, match=UNSUPPORTED_MODELS[model_name]):
        fimvar.analyze(case.model, case.x, "categorical", engine="structured", bounds=False)


def test_unsupported_configurations_are_named():
    for module, text in ((nn.Conv2d(1, 1, 2, padding_mode="reflect"), "padding_mode"),
                         (nn.BatchNorm1d(2, track_running_stats=False), "running statistics"),
                         (nn.Flatten(0), "start_dim=0")):
        with pytest.raises(fimvar.FimvarError, match=text):
            StructuredEngine(nn.Sequential(nn.Linear(2, 2), module), ["0.weight"], 2**20)
    shared = nn.Linear(2, 2)
    with pytest.raises(fimvar.FimvarError, match="shares a parameter"):
        StructuredEngine(nn.Sequential(shared, nn.Tanh(), shared), ["0.weight"], 2**20)


def test_auto_falls_back_to_autodiff_with_one_warning():
    case = make_case("layernorm", "categorical")
    with pytest.warns(UserWarning, match="LayerNorm") as record:
        result = fimvar.analyze(case.model, case.x, "categorical", bounds=False)
    assert result.engine == "autodiff"
    assert sum("structured engine" in str(w.message) for w in record) == 1


def test_auto_picks_structured_when_supported():
    case = make_case("cnn-pooling", "categorical")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fimvar.analyze(case.model, case.x, "categorical", bounds=False)
    assert result.engine == "structured"
    assert not any("structured engine" in str(w.message) for w in record)


@pytest.mark.parametrize("model_name", ["deep-mixed", "cnn-pooling", "sequence-linear"])
def test_chunking_gives_the_same_result(model_name, monkeypatch):
    case = make_case(model_name, "bernoulli", inputs=7)
    whole = analyse(case, "structured", bounds=False)
    # tiny budget: chunks of one or two inputs, and tangents pushed one input at a time
    monkeypatch.setattr(structured_engine, "TANGENT_BYTES", 1)
    engine = StructuredEngine(case.model, [n for n, _ in case.model.named_parameters()], 2**14)
    case.model.eval()
    assert engine.chunk_size(case.x, 3, SAMPLES) < case.x.shape[0]
    pieces = analyse(case, "structured", bounds=False, memory_budget=2**14)
    for quantity in QUANTITIES:
        floor = 1e-3 * natural_scale(whole, quantity)
        for name, value in getattr(whole, quantity).items():
            assert_close(getattr(pieces, quantity)[name], value, "structured: chunked vs whole",
                         rtol=1e-11, floor=floor)


def test_chunk_size_follows_the_memory_budget():
    case = make_case("cnn-pooling", "categorical", inputs=2, dtype=torch.float32)
    model, x = case.model.eval(), case.x
    engine = StructuredEngine(model, [n for n, _ in model.named_parameters()], 2**20)
    sizes = []
    for budget in (2**18, 2**20, 2**22, 2**24):
        engine.memory_budget = budget
        sizes.append(engine.chunk_size(x, 3, 1))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[0] >= 1


def test_float32_model_agrees_with_autodiff():
    case = make_case("cnn-groups", "categorical", inputs=5, dtype=torch.float32)
    fast = analyse(case, "structured", bounds=False)
    slow = analyse(case, "autodiff", bounds=False)
    for quantity in ("fisher", "v1", "v2", "c12", "i1", "i2"):
        scale = natural_scale(slow, quantity)
        for name, value in getattr(slow, quantity).items():
            assert_close(getattr(fast, quantity)[name], value, "structured float32", rtol=1e-5,
                         floor=1e-3 * scale)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"] or
                         [pytest.param("cuda", marks=pytest.mark.skip(reason="no CUDA device here"))])
def test_other_devices_match_cpu(device):
    cpu = analyse(make_case("cnn-pooling", "categorical"), "structured", bounds=False)
    gpu = analyse(make_case("cnn-pooling", "categorical", device=device), "structured", bounds=False)
    for quantity in ("fisher", "v1", "v2", "c12", "i1", "i2"):
        for name, value in getattr(cpu, quantity).items():
            assert_close(getattr(gpu, quantity)[name].cpu(), value, "structured: CUDA vs CPU",
                         floor=1e-3 * natural_scale(cpu, quantity))
