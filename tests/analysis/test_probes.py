"""Second-order quantities estimated by Hutchinson probes (graph engine, docs/theory.md §14.1):
the per-sample Hessian-vector products against the oracle's Hessians, the random signs, the
unbiasedness of v2 and c12 within 5 of their own standard errors over 10⁴ draws against the
exact autodiff values (padding masked included), the honesty of those standard errors over
repeated seeds, and what the result says about which quantities are estimated."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from cases import make_case
from checks import assert_close
from oracle import Oracle

import fimvar
from fimvar.engine.graph import GraphEngine
from fimvar.estimators.labels import rademacher, uniforms

HVP_MODELS = ("residual", "layernorm", "resnet-batchnorm", "encoder-attention", "lstm", "causal-lm")


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("model_name", HVP_MODELS)
def test_probe_estimates_match_the_oracle(model_name):
    """``g = z ⊙ ∇²_θ(ε·h(x)) z`` per input, draw and probe against the oracle's Hessian-vector
    product (double backward through ``functional_call`` of the flat parameters; SDPA on the
    math kernel, the LSTM unrolled), and the parameters' layout."""
    case = make_case(model_name, "categorical", inputs=2)
    model = case.model.eval()
    names = [n for n, _ in model.named_parameters()]
    engine = GraphEngine(model, names, 2**30, second=True)
    oracle = Oracle(model, "categorical")
    width = oracle.outputs(case.x[0]).numel()
    draws = torch.randn(2, 2, width, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    signs = rademacher(0, torch.arange(2), 4, oracle.theta.numel())
    probed = engine.probe_estimates(case.x, names, draws, signs)
    assert list(probed) == names
    assert all(probed[name].shape == (2, 2, 2, p.numel()) for name, p in model.named_parameters())
    flat = torch.cat(list(probed.values()), -1)  # (n, M, 2, P)
    for i in range(2):
        for m in range(2):
            theta = oracle.theta.clone().requires_grad_()
            (gradient,) = torch.autograd.grad(oracle.outputs(case.x[i], theta) @ draws[i, m], theta,
                                              create_graph=True)
            for probe in range(2):
                z = signs[i, 2 * m + probe]
                (product,) = torch.autograd.grad(gradient @ z, theta, retain_graph=True)
                assert_close(flat[i, m, probe], z * product, f"{model_name}: z ⊙ Hz", rtol=1e-10,
                             floor=1e-12 * float(product.abs().max()))


def test_rademacher_signs():
    """±1, balanced, the same for an input whatever the batch it comes in, different for every
    probe and input, and independent of the label draws of the same seed."""
    signs = rademacher(7, torch.arange(4), 3, 100_003)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 5 / math.sqrt(signs.numel())
    again = rademacher(7, torch.arange(2, 4), 3, 100_003)
    assert torch.equal(again, signs[2:])
    flat = signs.reshape(12, -1)
    agreement = (flat @ flat.T / flat.shape[1] - torch.eye(12)).abs().max()
    assert agreement < 5 / math.sqrt(flat.shape[1])
    coins = uniforms(7, torch.arange(4), 3, 64) < 0.5  # the label draws' uniforms
    matched = (2 * coins.to(torch.float64) - 1) * rademacher(7, torch.arange(4), 3, 64)
    assert abs(float(matched.mean())) < 5 / math.sqrt(matched.numel())


PROBE_CASES = [("mlp-tanh", "categorical", False), ("encoder-attention", "bernoulli", False),
               ("causal-lm", "categorical", True)]


@pytest.mark.parametrize(("model_name", "family", "masked"), PROBE_CASES)
def test_probe_estimates_are_unbiased(model_name, family, masked):
    """v2 and c12 from 10⁴ draws × 2 probes agree with the exact autodiff values within 5 of
    their own standard errors; the first-order quantities are the exact ones. With ``masked``,
    some positions of a language model's labels are −100 (left out)."""
    case = make_case(model_name, family, inputs=2)
    labels = case.labels
    if masked:
        labels = labels.clone()
        labels[0, 1] = labels[1, 0] = -100
    exact = _quiet(fimvar.analyze, case.model, case.x, family, samples=2, labels=labels, engine="autodiff",
                   bounds=False)
    probed = fimvar.analyze(case.model, case.x, family, samples=10_000, labels=labels, engine="graph",
                            bounds=False)
    assert probed.engine == "graph"
    for name in exact.fisher:
        assert probed.estimated[name] == ("v2", "c12", "i2")
        for quantity in ("fisher", "v1", "empirical"):
            assert_close(getattr(probed, quantity)[name], getattr(exact, quantity)[name],
                         f"{model_name} {quantity}", rtol=1e-10, floor=1e-14)
        for quantity in ("v2", "c12"):
            error = probed.standard_errors[quantity][name]
            estimate = probed.v2_unbiased[name] if quantity == "v2" else probed.c12[name]
            gap = (estimate - getattr(exact, quantity)[name]).abs()
            scale = float(getattr(exact, quantity)[name].abs().max()) + 1e-300
            assert bool((gap <= 5 * error + 1e-12 * scale).all()), (
                f"{model_name} {name} {quantity}: largest gap "
                f"{float((gap / error.clamp_min(1e-300)).max()):.1f} standard errors")


@pytest.mark.parametrize(("model_name", "family"), [("resnet-batchnorm", "categorical"),
                                                     ("encoder-attention", "gaussian"), ("lstm", "poisson")])
def test_streamed_derivatives_give_the_exact_first_order_quantities(model_name, family):
    """The analysis with the graph engine's streamed derivatives (docs/theory.md §14.3: statistics
    layer by layer, in tiles holding every input) gives the exact first-order quantities of the
    autodiff engine with the same label draws: Fisher, v1, input variance, Î1 with its
    within-input moments, empirical Fisher."""
    case = make_case(model_name, family, inputs=3)
    exact = _quiet(fimvar.analyze, case.model, case.x, family, samples=3, labels=case.labels,
                   engine="autodiff", bounds=False)
    probed = fimvar.analyze(case.model, case.x, family, samples=3, labels=case.labels, engine="graph",
                            bounds=False, memory_budget=2**16)  # several chunks
    for name in exact.fisher:
        for quantity in ("fisher", "v1", "input_var", "i1", "empirical"):
            assert_close(getattr(probed, quantity)[name], getattr(exact, quantity)[name],
                         f"streamed: {model_name} {quantity}", rtol=1e-10, floor=1e-14)
        assert_close(probed.draw_moments["i1_within"][name], exact.draw_moments["i1_within"][name],
                     f"streamed: {model_name} i1_within", rtol=1e-10, floor=1e-14)


def test_streamed_derivatives_give_the_whole_derivatives_path(monkeypatch):
    """The analysis with streamed derivatives (docs/theory.md §14.3) and the one with every layer's
    derivatives at once (§14.1) on the same graph engine, draws and probe signs give the same
    numbers, second-order estimates and their standard errors included (several chunks, two
    draws, data labels)."""
    case = make_case("encoder-attention", "categorical", inputs=4)
    run = dict(samples=2, labels=case.labels, engine="graph", bounds=False, memory_budget=2**17)
    streamed = fimvar.analyze(case.model, case.x, "categorical", **run)
    monkeypatch.setattr(fimvar.analysis.diagonal.Analysis, "streams_derivatives", lambda self: False)
    whole = fimvar.analyze(case.model, case.x, "categorical", **run)
    for name in whole.fisher:
        for quantity in ("fisher", "v1", "v2", "c12", "i1", "i2", "input_var", "empirical"):
            assert_close(getattr(streamed, quantity)[name], getattr(whole, quantity)[name],
                         f"streamed vs whole: {quantity}", rtol=1e-12, floor=1e-14)
        for quantity in ("v2", "c12"):
            assert_close(streamed.standard_errors[quantity][name], whole.standard_errors[quantity][name],
                         f"streamed vs whole: standard error of {quantity}", rtol=1e-12, floor=1e-14)


@pytest.mark.parametrize("engine,second_order", [("graph", True), ("graph", False), ("structured", False)])
def test_streamed_derivatives_keep_v1_accurate_in_float32(engine, second_order):
    """Where ``(u·ε)²`` is nearly deterministic (two classes, near-uniform softmax: ``v1 ≪ q²``),
    the streamed analysis of a float32 model still gives ``v1`` and the within-input moments of
    Î1 to float32 accuracy against the float64 model on the autodiff engine: ``u`` is centred in
    float64 and the draws projected from it, so that every ``ũ_y`` shares the rounding of ``u``
    (§4's two-pass form keeps its relative accuracy; docs/theory.md §14.3). The same for a
    first-order analysis, streamed on the graph engine or not on the structured one (a float32
    centring here would lose three digits of v1: 3e-3, measured and not kept)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[2].weight.mul_(1e-4)
        model[2].bias.zero_()
    x = torch.randn(32, 6)
    run = dict(samples=4, bounds=False, seed=1)
    ours = fimvar.analyze(model, x, "categorical", engine=engine, second_order=second_order, **run)
    exact = _quiet(fimvar.analyze, model.double(), x.double(), "categorical", engine="autodiff", **run)
    for name in exact.fisher:
        assert_close(ours.v1[name], exact.v1[name], "float32 streamed: v1", rtol=1e-5)
        assert_close(ours.draw_moments["i1_within"][name], exact.draw_moments["i1_within"][name],
                     "float32 streamed: i1_within", rtol=1e-5)


def test_standard_errors_are_honest():
    """Over 80 seeds the spread of the unbiased v2 and c12 estimates matches the standard errors
    the runs report (M ≥ 2: from the spread within inputs, unbiased), to the noise of an SD of 80."""
    case = make_case("mlp-tanh", "categorical", inputs=2)
    runs = [fimvar.analyze(case.model, case.x, samples=20, seed=seed, engine="graph", bounds=False)
            for seed in range(80)]
    for quantity in ("v2", "c12"):
        values = torch.stack([(r.v2_unbiased if quantity == "v2" else r.c12)["0.weight"] for r in runs])
        reported = torch.stack([r.standard_errors[quantity]["0.weight"] for r in runs]).mean(0)
        ratio = values.std(0) / reported
        # the SD of 80 runs is within ±30 % of the truth with overwhelming probability
        assert bool((ratio < 1.3).all()), f"{quantity}: standard errors understated ({ratio.max():.2f})"
        assert bool((ratio > 0.7).all()), f"{quantity}: standard errors overstated ({ratio.min():.2f})"


def test_probes_do_not_depend_on_chunking():
    case = make_case("encoder-attention", "categorical", inputs=3)
    whole = fimvar.analyze(case.model, case.x, samples=3, engine="graph")
    pieces = fimvar.analyze(case.model, case.x, samples=3, engine="graph", memory_budget=2**14)
    for quantity in ("fisher", "v2", "c12", "i1", "i2"):
        for name, value in getattr(whole, quantity).items():
            assert_close(getattr(pieces, quantity)[name], value, quantity, rtol=1e-11, floor=1e-15)
    for name, value in whole.standard_errors["v2"].items():
        assert_close(pieces.standard_errors["v2"][name], value, "standard error", rtol=1e-9, floor=1e-15)


def test_what_the_result_says():
    """Bounds on v2 need ‖w‖²: not computed; those of the first-order quantities hold. The
    variance of Î2 carries v2's standard error with the factor 1/(N M); the combination's error
    is finite and non-negative; a single value cannot have a standard error."""
    case = make_case("residual", "categorical", inputs=3)
    result = fimvar.analyze(case.model, case.x, samples=4, engine="graph")
    assert not any(b.quantity == "v2" for b in result.bounds.values())
    assert "thm4.1_v1_upper" in result.bounds and all(b.holds() for b in result.bounds.values())
    assert not any(q.startswith("trace_v2") for q in result.group_exact)
    for name, error in result.variance_error("i2").items():
        assert_close(error, result.standard_errors["v2"][name] / 12, "error of Var(Î2)")
    for error in result.variance_error("combined").values():
        assert bool(torch.isfinite(error).all() and (error >= 0).all())
    assert all(float(e.abs().max()) == 0 for e in result.variance_error("i1").values())
    with pytest.raises(fimvar.FimvarError, match="two inputs"):
        fimvar.analyze(case.model, case.x[:1], samples=1, engine="graph")
    assert all(bool((v >= 0).all()) for v in result.v2.values())
    notes = " ".join(result.summary()["run"]["notes"])
    assert "Hutchinson" in notes and "standard_errors" in notes


def test_saved_and_loaded(tmp_path):
    case = make_case("residual", "categorical", inputs=3)
    result = fimvar.analyze(case.model, case.x, samples=2, engine="graph")
    loaded = fimvar.load(result.save(tmp_path / "run", figures=False, html=False))
    assert loaded.estimated == result.estimated
    for name in result.fisher:
        assert torch.equal(loaded.standard_errors["c12"][name], result.standard_errors["c12"][name])
        assert torch.equal(loaded.v2_unbiased[name], result.v2_unbiased[name])


def test_auto_estimates_beyond_the_exact_limit(monkeypatch):
    case = make_case("residual", "categorical", inputs=2)
    monkeypatch.setattr(fimvar.engine, "EXACT_SECOND_PARAMETERS", 0)
    with pytest.warns(UserWarning, match="Hutchinson"):
        result = fimvar.analyze(case.model, case.x, samples=2)
    assert result.engine == "graph" and result.estimated
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="autodiff"):
        result = fimvar.analyze(case.model, case.x, samples=2)
    assert result.engine == "autodiff" and not any(result.estimated.values())


def test_the_audit_uses_the_probes_too():
    """fimvar.audit on the graph engine: the variance of Î2 it reports is the one of analyze with
    the same draws and probes (itself checked against the exact values above)."""
    case = make_case("encoder-attention", "categorical", inputs=3)
    audited = fimvar.audit(case.model, case.x, estimator="i2", samples=3, engine="graph")
    analysed = fimvar.analyze(case.model, case.x, samples=3, engine="graph", bounds=False)
    for name, value in analysed.variance("i2").items():
        assert_close(audited.variance[name], value, "audit Var(Î2) with probes", rtol=1e-12, floor=1e-300)
    assert any(float(e.max()) > 0 for e in analysed.standard_errors["v2"].values())  # estimated


def test_float32_model_with_data_labels():
    """Probes on a float32 model with data labels: the empirical Fisher (from u and the data
    residuals) is the autodiff engine's, to float32 rounding."""
    case = make_case("residual", "categorical", inputs=3, dtype=torch.float32)
    exact = _quiet(fimvar.analyze, case.model, case.x, samples=2, labels=case.labels, engine="autodiff")
    probed = fimvar.analyze(case.model, case.x, samples=2, labels=case.labels, engine="graph")
    for name, value in exact.empirical.items():
        assert_close(probed.empirical[name], value, "float32 empirical Fisher with probes", rtol=1e-5,
                     floor=1e-7 * float(value.abs().max()))


class _PositionFirst(torch.nn.Module):
    """A bare parameter registered before the layers (a learned position embedding): the graph
    engine leaves it to its float64 autodiff fallback, which must not set the probes' precision."""

    def __init__(self) -> None:
        super().__init__()
        self.position = torch.nn.Parameter(0.1 * torch.randn(3, 4))
        self.embed = torch.nn.Linear(2, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x) + self.position).mean(1))


def test_float32_model_with_a_fallback_parameter_first():
    torch.manual_seed(0)
    model, x = _PositionFirst(), torch.randn(5, 3, 2)
    exact = _quiet(fimvar.analyze, model, x, samples=2, engine="autodiff", bounds=False)
    probed = fimvar.analyze(model, x, samples=2, engine="graph", bounds=False)
    assert probed.estimated["position"] == ("v2", "c12", "i2")
    for name, value in exact.fisher.items():
        assert_close(probed.fisher[name], value, "float32 Fisher with probes, fallback first", rtol=1e-5,
                     floor=1e-7 * float(value.abs().max()))
