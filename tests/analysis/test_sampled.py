"""``fimvar.analyze_sampled`` (docs/theory.md §17): Î1 from per-input gradients of the draws on
the graph engine, against the analysis from the exact derivatives with the same draws, and its
variance estimates against the closed forms over 10⁴ draws per input."""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import MODELS, make_case
from checks import assert_close
from oracle import Oracle

import fimvar


def _exact(case, family, samples, seed, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fimvar.analyze(case.model, case.x, family, samples=samples, seed=seed, bounds=False,
                              engine="autodiff", **kwargs)


CASES = [(m, "categorical") for m in sorted(MODELS)] + [
    (m, f) for m in ("mlp-tanh", "conv2d", "sequence-tagger", "causal-lm") for f in ("bernoulli", "gaussian")]


@pytest.mark.parametrize(("model_name", "family"), CASES)
def test_same_draws_as_analyze(model_name, family):
    """The draws are analyze's (seeded by input index): Î1 and the within-input spread of its
    squares equal those of the exact derivatives ``(u·ε_m)²`` to rounding."""
    case = make_case(model_name, family, inputs=4)
    sampled = fimvar.analyze_sampled(case.model, case.x, family, samples=3, seed=2, batch_size=3)
    exact = _exact(case, family, 3, 2)
    within = exact.draw_variance("i1")
    scale = max(float(v.abs().max()) for v in exact.i1.values())
    for name in exact.fisher:
        assert_close(sampled.i1[name], exact.i1[name], f"sampled Î1 [{family}]", rtol=1e-10,
                     floor=1e-12 * scale)
        if name in sampled.metadata["exact"]:  # the output layer in closed form (§17.1)
            assert_close(sampled.v1[name], exact.v1[name], f"closed-form v1 [{family}]", rtol=1e-10,
                         floor=1e-12 * scale**2)
            assert_close(sampled.fisher[name], exact.fisher[name], f"closed-form Fisher [{family}]",
                         rtol=1e-10, floor=1e-12 * scale)
        else:
            assert_close(sampled.v1[name], within[name], f"sampled v1 from the draws [{family}]",
                         rtol=1e-9, floor=1e-12 * scale**2)


@pytest.mark.parametrize("model_name", ["mlp-tanh", "sequence-tagger"])
def test_variance_estimates_are_unbiased(model_name):
    """Over 400 seeds × 25 draws (10⁴ draws per input) the estimates of the label noise v1, the
    input noise and Var(Î1) average to the closed forms of the exact analysis, within 5 standard
    errors of their own spread over the seeds."""
    case = make_case(model_name, "categorical", inputs=4, seed=3)
    exact = _exact(case, "categorical", 25, 0)
    runs, draws = 400, 25
    estimates = {"v1": [], "input_var_unbiased": [], "variance": []}
    for seed in range(runs):
        s = fimvar.analyze_sampled(case.model, case.x, "categorical", samples=draws, seed=seed)
        estimates["v1"].append(torch.cat([v.reshape(-1) for v in s.v1.values()]))
        unbiased = s.input_var_unbiased
        estimates["input_var_unbiased"].append(torch.cat([v.reshape(-1) for v in unbiased.values()]))
        estimates["variance"].append(torch.cat([v.reshape(-1) for v in s.variance("i1").values()]))
    expected = {"v1": exact.v1, "input_var_unbiased": exact.input_var, "variance": exact.variance("i1")}
    for quantity, values in estimates.items():
        values = torch.stack(values)
        truth = torch.cat([v.reshape(-1) for v in expected[quantity].values()])
        error = (values.mean(0) - truth).abs()
        standard = values.std(0) / runs**0.5
        scale = float(truth.abs().max())
        z = float((error / (standard + 1e-12 * scale)).max())
        assert z <= 5, f"{quantity}: {z:.1f} standard errors off"


def test_padding_left_out_like_analyze():
    """Labels of -100 leave their positions out of the draws, as in analyze."""
    case = make_case("causal-lm", "categorical", inputs=3)
    labels = case.labels.clone()
    labels[0, -1] = labels[2, 1:] = -100
    sampled = fimvar.analyze_sampled(case.model, case.x, "categorical", samples=2, seed=4, labels=labels)
    exact = _exact(case, "categorical", 2, 4, labels=labels)
    for name, value in exact.i1.items():
        assert_close(sampled.i1[name], value, "sampled Î1, padding masked", rtol=1e-10,
                     floor=1e-12 * float(value.abs().max()))


def test_a_vocabulary_of_five_thousand_runs_without_the_exact_path():
    """An LM with V = 5,000 and L = 8 (40,000 outputs per input): the sampled analysis needs only
    its M backward passes; its Î1 is finite and positive, its variances non-negative."""
    torch.manual_seed(0)
    vocabulary, width = 5000, 8
    model = torch.nn.Sequential(torch.nn.Embedding(vocabulary, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, vocabulary))
    ids = torch.randint(0, vocabulary, (6, 8))
    s = fimvar.analyze_sampled(model, ids, "categorical", samples=2)
    assert s.metadata["outputs"] == 8 * vocabulary
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in s.i1.values())
    assert float(s.i1["2.weight"].sum()) > 0
    assert all((v >= 0).all() for v in s.variance("i1", inputs=100, draws=4).values())


def test_bad_designs_raise_one_error():
    case = make_case("mlp-tanh", "categorical", inputs=4)
    with pytest.raises(fimvar.FimvarError, match="samples=2"):
        fimvar.analyze_sampled(case.model, case.x, samples=1)
    with pytest.raises(fimvar.FimvarError, match="at least 2 inputs"):
        fimvar.analyze_sampled(case.model, case.x[:1])
    with pytest.raises(fimvar.FimvarError, match="takes its labels from the model"):
        fimvar.analyze_sampled(case.model, case.x, labels=torch.zeros(4, dtype=torch.long))
    s = fimvar.analyze_sampled(case.model, case.x)
    with pytest.raises(fimvar.FimvarError, match="holds no Î2"):
        s.variance("i2")
    with pytest.raises(fimvar.FimvarError, match="'i1', 'i2'"):
        s.variance("i3")
    with pytest.raises(fimvar.FimvarError, match="i2 must be True or False"):
        fimvar.analyze_sampled(case.model, case.x, i2="yes")


def test_standard_errors_of_the_variance_estimates_match_their_spread():
    """Over 300 independent runs (inputs drawn with replacement from a pool, fresh label draws),
    the reported standard error of each summed variance estimate against the spread of the
    estimates themselves: that of the label noise (from every input's own estimate) matches it,
    those from the pairs of inputs (input noise, between, Var(Î1) at this and another design) and
    those of the output layer's closed forms are upper estimates (docs/theory.md §17.2), but not
    vacuous ones."""
    case = make_case("mlp-tanh", "categorical", inputs=64, seed=5)
    runs, inputs = 300, 40
    hidden = ["0.weight", "0.bias"]  # the output layer's quantities are exact (§17.1): not these
    queries = {"v1": ("v1", hidden, {}), "input_var": ("input_var", hidden, {}),
               "between": ("between", hidden, {}), "variance": ("variance", hidden, {}),
               "variance at 100 × 8": ("variance", hidden, {"inputs": 100, "draws": 8}),
               "variance of 0.weight": ("variance", ["0.weight"], {}),
               "v1, output layer exact": ("v1", None, {}),
               "variance, output layer exact": ("variance", None, {})}
    values = {k: [] for k in queries}
    errors = {k: [] for k in queries}
    generator = torch.Generator().manual_seed(0)
    for seed in range(runs):
        chosen = case.x[torch.randint(0, 64, (inputs,), generator=generator)]
        result = fimvar.analyze_sampled(case.model, chosen, "categorical", samples=2, seed=seed)
        for key, (quantity, tensors, design) in queries.items():
            value, error = result.estimate(quantity, tensors, **design)
            values[key].append(value)
            errors[key].append(error)
    for key in queries:
        spread = torch.tensor(values[key]).std()
        ratio = float(torch.tensor(errors[key]).mean() / spread)
        low, high = (0.8, 1.25) if key == "v1" else (0.8, 6.0) if "exact" in key else (0.8, 3.0)
        assert low <= ratio <= high, f"{key}: reported standard error / spread of the estimates = {ratio:.2f}"


def _flat(tensors, names):
    return torch.cat([tensors[k].reshape(-1) for k in names])


def _z_scores(values: list[torch.Tensor], truth: torch.Tensor) -> float:
    """The largest distance of the runs' mean from the truth, in standard errors of that mean."""
    values = torch.stack(values)
    standard = values.std(0) / values.shape[0] ** 0.5
    return float(((values.mean(0) - truth).abs() / (standard + 1e-12 * float(truth.abs().max()))).max())


def test_i2_probes_match_the_oracle():
    """Î2 by one Hutchinson probe of the Hessian per draw (docs/theory.md §17.5), over 200 seeds × 50
    draws (10⁴ draws per input): its mean is the exact Fisher, its within-input spread ``v2`` the
    oracle's label noise of the Hessian diagonal plus the probes' ``Σ_{j≠i} H_ij²``, its
    between-input spread ``s²_x(I) + E v2/M`` — from the brute-force Hessians of every label."""
    case = make_case("mlp-tanh", "categorical", inputs=4, seed=3)
    oracle = Oracle(case.model, "categorical")
    fisher, noise = [], []
    for x1 in case.x:
        labels, probs = oracle.support(oracle.outputs(x1).detach())
        _, hessians = oracle.score_and_hessian(x1, labels)  # of the negative log-likelihood
        diagonal = torch.diagonal(hessians, dim1=1, dim2=2)  # (labels, P)
        mean = probs @ diagonal
        off_diagonal = (hessians**2).sum(2) - diagonal**2
        fisher.append(mean)
        noise.append(probs @ (diagonal - mean) ** 2 + probs @ off_diagonal)
    fisher, noise = torch.stack(fisher), torch.stack(noise)
    runs, draws = 200, 50
    truth = {"i2": fisher.mean(0), "v2": noise.mean(0), "between_i2": fisher.var(0) + noise.mean(0) / draws}
    estimates = {k: [] for k in truth}
    for seed in range(runs):
        result = fimvar.analyze_sampled(case.model, case.x, "categorical", samples=draws, seed=seed, i2=True)
        for quantity in truth:
            estimates[quantity].append(_flat(getattr(result, quantity), oracle.names))
    for quantity, values in estimates.items():
        z = _z_scores(values, truth[quantity])
        assert z <= 5, f"{quantity}: {z:.1f} standard errors off"
    exact = _exact(case, "categorical", 2, 0)
    assert_close(truth["i2"], _flat(exact.fisher, oracle.names), "oracle Hessian mean = Fisher", rtol=1e-10)


def test_i2_probes_leave_padding_out():
    """With labels of -100, Î2's probes differentiate the likelihood of the kept positions only: over
    100 seeds × 20 draws its mean is the exact Fisher of those positions (the tied embedding of a
    causal LM included)."""
    case = make_case("causal-lm", "categorical", inputs=3)
    labels = case.labels.clone()
    labels[0, -1] = labels[2, 1:] = -100
    exact = _exact(case, "categorical", 2, 0, labels=labels)
    names = list(exact.fisher)
    values = []
    for seed in range(100):
        result = fimvar.analyze_sampled(case.model, case.x, "categorical", samples=20, seed=seed,
                                        labels=labels, i2=True)
        values.append(_flat(result.i2, names))
    z = _z_scores(values, _flat(exact.fisher, names))
    assert z <= 5, f"Î2 with padding: {z:.1f} standard errors off"
