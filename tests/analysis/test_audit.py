"""fimvar.audit against the estimators run as their users write them (docs/theory.md §15).

- EWC: every shuffle of N = 6 inputs enumerated (exact, to 1e-10), and 10⁴ random shuffles of
  12 inputs: ``torch.randperm``, per batch ``model.zero_grad(); F.cross_entropy(model(xb), yb)
  .backward(); acc += p.grad**2``, divided by the number of batches; also 10⁴ passes of
  independent batches drawn with replacement.
- GNB (Sophia): labels sampled from the model's softmax, batch-mean loss, ``B * p.grad**2``.
- Î1 / MC Fisher (k labels per input), Î2 (the Hessian diagonal of the loss at sampled labels)
  and the empirical Fisher over resampled inputs: the users' per-input gradients (Hessians) of
  every label, by autograd, picked by 10⁴ simulated draws.

The simulations run on an MLP, a 1-d CNN and a pre-norm transformer encoder block (attention by
SDPA, LayerNorm, a GELU MLP).

Sample means agree with the predicted expectation within 5 standard errors (from the predicted
variance), sample variances with the predicted variance within 5 standard errors (from the
sample fourth central moment). The predictions come from ``fimvar.audit`` (the engine's
per-sample quantities), never from the simulation.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from cases import make_case
from checks import assert_close, check_moments, flat
from torch.func import functional_call, grad, vmap

import fimvar
from fimvar.engine.functional import differentiable
from fimvar.errors import FimvarError

REPEATS = 10_000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny backward passes: one thread avoids the oversubscription of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def ewc_pass(model, x, y, order, batch_size) -> torch.Tensor:
    """Avalanche's EWC importances: per batch the squared gradient of the mean loss, averaged."""
    acc = [torch.zeros_like(p) for p in model.parameters()]
    batches = 0
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        model.zero_grad()
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        for a, p in zip(acc, model.parameters(), strict=True):
            a += p.grad**2
        batches += 1
    return torch.cat([(a / batches).reshape(-1) for a in acc])


def gnb_pass(model, x, order, batch_size, draw) -> torch.Tensor:
    """Sophia's Gauss–Newton–Bartlett estimate: per batch, labels sampled from the model
    (``draw(logits, index)``), then B · (gradient of the batch-mean loss)², averaged over the pass."""
    acc = [torch.zeros_like(p) for p in model.parameters()]
    batches = 0
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        model.zero_grad()
        logits = model(x[index])
        with torch.no_grad():
            sampled = draw(logits, index)
        F.cross_entropy(logits, sampled).backward()
        for a, p in zip(acc, model.parameters(), strict=True):
            a += len(index) * p.grad**2
        batches += 1
    return torch.cat([(a / batches).reshape(-1) for a in acc])


def sampler(generator):
    """The Sophia recipe's draw: one label per input from the softmax of its logits."""
    return lambda logits, index: torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def replicated_passes(model, inputs, labels, batch_size, scale) -> torch.Tensor:
    """The same pass for R independent replicates at once, ``(R, P)``: replicate r's inputs
    ``inputs[r]`` (in their order) with labels ``labels[r]``, cut into consecutive batches of
    ``batch_size``; per batch the gradient of the users' batch-mean loss (``F.cross_entropy``,
    mean reduction) by ``torch.func.grad``, vmapped over the replicates, times ``scale``, squared,
    averaged over the batches. :func:`check_replicates` shows it equals the ``.backward()`` loop."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(values, xb, yb):
        return F.cross_entropy(functional_call(model, values, (xb,)), yb)

    per_batch = vmap(grad(loss), in_dims=(None, 0, 0))
    total, batches = None, 0
    for start in range(0, inputs.shape[1], batch_size):
        grads = per_batch(params, inputs[:, start:start + batch_size], labels[:, start:start + batch_size])
        squared = torch.cat([(scale * grads[n]).pow(2).reshape(len(inputs), -1) for n in names], 1)
        total = squared if total is None else total + squared
        batches += 1
    return total / batches


def check_replicates(values, literal) -> None:
    """The first replicates of a vectorised simulation against the users' literal loop."""
    expected = torch.stack(literal)
    assert_close(values[: len(literal)], expected, "audit simulation = users' loop", rtol=1e-12)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_ewc_over_every_shuffle(batch_size):
    """Every one of the 720 orders of 6 inputs (randperm is uniform over them): the exact mean
    and variance of EWC's one pass equal fimvar's closed forms."""
    case = make_case("mlp-tanh", "categorical", inputs=6, seed=5)
    values = torch.stack([ewc_pass(case.model, case.x, case.labels, list(order), batch_size)
                          for order in itertools.permutations(range(6))])
    a = fimvar.audit(case.model, case.x, "categorical", labels=case.labels, estimator="ewc",
                     batch_size=batch_size, seed=0)
    assert_close(flat(a.mean), values.mean(0), "audit ewc mean (all shuffles)", rtol=1e-10)
    assert_close(flat(a.variance), values.var(0, unbiased=False), "audit ewc variance (all shuffles)",
                 rtol=1e-9)


@pytest.mark.parametrize("model_name", ["mlp-tanh", "conv1d", "encoder-attention"])
def test_ewc_and_gnb_one_pass_by_simulation(model_name):
    """10⁴ one-pass runs over random shuffles (``torch.randperm``) of 12 inputs in batches of 4:
    EWC (data labels) and GNB (labels sampled from the model)."""
    case = make_case(model_name, "categorical", inputs=12, seed=2)
    model, x, y = case.model, case.x, case.labels
    n, batch_size = 12, 4
    generator = torch.Generator().manual_seed(1)
    orders = torch.stack([torch.randperm(n, generator=generator) for _ in range(2 * REPEATS)])
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    sampled = torch.multinomial(probs, REPEATS, replacement=True, generator=generator).T  # (R, n)
    ewc = replicated_passes(model, x[orders[:REPEATS]], y[orders[:REPEATS]], batch_size, 1.0)
    gnb_orders = orders[REPEATS:]
    gnb = replicated_passes(model, x[gnb_orders], sampled.gather(1, gnb_orders), batch_size, batch_size**0.5)
    check_replicates(ewc, [ewc_pass(model, x, y, orders[r], batch_size) for r in range(50)])
    check_replicates(gnb, [gnb_pass(model, x, orders[REPEATS + r], batch_size,
                                    lambda logits, index, r=r: sampled[r, index]) for r in range(50)])
    a = fimvar.audit(model, x, "categorical", labels=y, estimator=["ewc", "gnb"], batch_size=batch_size)
    check_moments(ewc, flat(a["ewc"].mean), flat(a["ewc"].variance), f"ewc {model_name}")
    check_moments(gnb, flat(a["gnb"].mean), flat(a["gnb"].variance), f"gnb {model_name}")
    # GNB is unbiased: its expectation is the exact Fisher
    assert_close(flat(a["gnb"].mean), flat(a.fisher), "audit gnb mean = Fisher", rtol=1e-14)


def test_gnb_literal_recipe_by_simulation():
    """Sophia's recipe itself, labels drawn from the logits inside the loop, 10⁴ steps (one batch
    of 6 per pass: the shuffle is checked above)."""
    case = make_case("mlp-tanh", "categorical", inputs=6, seed=4)
    model, x = case.model, case.x
    generator = torch.Generator().manual_seed(5)
    draw = sampler(generator)
    values = torch.stack([gnb_pass(model, x, torch.randperm(6, generator=generator), 6, draw)
                          for _ in range(REPEATS)])
    a = fimvar.audit(model, x, "categorical", estimator="gnb", batch_size=6)
    check_moments(values, flat(a.mean), flat(a.variance), "gnb literal recipe")


def test_batches_drawn_independently_by_simulation():
    """K = N/B batches of B inputs drawn with replacement: EWC's mean is EF/B + (1 − 1/B)μ², and
    both estimators' variances are unit_variance / N."""
    case = make_case("mlp-tanh", "categorical", inputs=12, seed=3)
    model, x, y = case.model, case.x, case.labels
    batch_size, n = 3, 12
    generator = torch.Generator().manual_seed(4)
    orders = torch.randint(0, n, (2 * REPEATS, n), generator=generator)
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    ewc = replicated_passes(model, x[orders[:REPEATS]], y[orders[:REPEATS]], batch_size, 1.0)
    # one label sampled afresh for every drawn input
    drawn = orders[REPEATS:]
    labels = torch.multinomial(probs[drawn].reshape(-1, probs.shape[1]), 1, generator=generator)
    gnb = replicated_passes(model, x[drawn], labels.reshape(REPEATS, n), batch_size, batch_size**0.5)
    check_replicates(ewc, [ewc_pass(model, x, y, orders[r], batch_size) for r in range(20)])
    a = fimvar.audit(model, x, "categorical", labels=y, estimator=["ewc", "gnb"], batch_size=batch_size)
    fisher = flat(a.fisher)
    for name, values in (("ewc", ewc), ("gnb", gnb)):
        e = a[name]
        check_moments(values, fisher + flat(e.bias_independent), flat(e.unit_variance) / n,
                      f"{name} independent batches")


def per_label(model, x, loss_of):
    """``loss_of(model, x_i, y)`` differentiated for every input and every label (T classes)."""
    width = model(x[:1]).shape[1]
    out = []
    for i in range(len(x)):
        out.append(torch.stack([loss_of(model, x[i:i + 1], torch.tensor([c])) for c in range(width)]))
    return torch.stack(out)  # (n, T, P)


def gradient_of(model, xi, yi):
    model.zero_grad()
    F.cross_entropy(model(xi), yi).backward()
    return gradient(model)


def hessian_diagonal_of(model, xi, yi):
    """The loss Hessian's diagonal by plain double backward, one entry at a time (attention on
    its math kernel, whose backward is differentiable)."""
    params = list(model.parameters())
    with differentiable(model):
        gradients = torch.autograd.grad(F.cross_entropy(model(xi), yi), params, create_graph=True)
        diagonal = []
        for p, g in zip(params, gradients, strict=True):
            flat_g = g.reshape(-1)
            for j in range(flat_g.numel()):
                row = torch.autograd.grad(flat_g[j], p, retain_graph=True, allow_unused=True)[0]
                diagonal.append(torch.zeros((), dtype=p.dtype) if row is None else row.reshape(-1)[j])
    return torch.stack(diagonal)


@pytest.mark.parametrize("model_name", ["mlp-tanh", "conv1d", "encoder-attention"])
def test_sampled_label_estimators_by_simulation(model_name):
    """Î1 and MC Fisher with k = 3 samples per input (the squared per-sample gradient at labels
    drawn from the model) and Î2 (the Hessian diagonal of the loss at drawn labels), inputs fixed."""
    case = make_case(model_name, "categorical", inputs=8, seed=6)
    model, x = case.model, case.x
    grads = per_label(model, x, gradient_of) ** 2  # (n, T, P)
    hessians = per_label(model, x, hessian_diagonal_of)
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    generator = torch.Generator().manual_seed(8)
    n = len(x)
    for estimator, k, table in (("i1", 1, grads), ("mc", 3, grads), ("i2", 1, hessians)):
        draws = torch.multinomial(probs, REPEATS * k, replacement=True, generator=generator)  # (n, R k)
        picked = table[torch.arange(n)[:, None], draws]  # (n, R k, P)
        values = picked.reshape(n, REPEATS, k, -1).mean((0, 2))
        a = fimvar.audit(model, x, "categorical", estimator=estimator, samples=k)
        e = a[estimator]
        check_moments(values, flat(a.mean), flat(e.variance_given_inputs), f"{estimator} {model_name}")


@pytest.mark.parametrize("model_name", ["mlp-tanh", "conv1d", "encoder-attention"])
def test_empirical_fisher_over_resampled_inputs(model_name):
    """The empirical Fisher of N inputs drawn with replacement from a population of 10: its mean
    is the population's EF (bias EF − I), its variance (1/N)·Var(g²) (population variance)."""
    case = make_case(model_name, "categorical", inputs=10, seed=7)
    model, x, y = case.model, case.x, case.labels
    squares = torch.stack([gradient_of(model, x[i:i + 1], y[i:i + 1]) ** 2 for i in range(10)])
    generator = torch.Generator().manual_seed(9)
    pick = torch.randint(0, 10, (REPEATS, 10), generator=generator)
    values = squares[pick].mean(1)
    a = fimvar.audit(model, x, "categorical", labels=y, estimator="empirical")
    # the audit's variance uses the unbiased variance of g² over the inputs; the population's is (N−1)/N of it
    check_moments(values, flat(a.mean), flat(a.variance) * 9 / 10, "empirical resampled")
    assert_close(flat(a.bias), squares.mean(0) - flat(a.fisher), "audit empirical bias", rtol=1e-12)
    assert_close(flat(a["empirical"].variance_given_inputs), torch.zeros(squares.shape[1]),
                 "audit empirical given inputs", rtol=0)


def test_exact_fisher_matches_the_enumerated_labels():
    case = make_case("mlp-tanh", "categorical", inputs=5, seed=1)
    model, x = case.model, case.x
    grads = per_label(model, x, gradient_of) ** 2
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    exact = (probs[:, :, None] * grads).sum(1)  # (n, P): per-input Fisher by enumeration
    a = fimvar.audit(model, x, "categorical", estimator="exact")
    assert_close(flat(a.mean), exact.mean(0), "audit exact mean", rtol=1e-12)
    assert_close(flat(a.variance), exact.var(0) / 5, "audit exact variance (inputs)", rtol=1e-10)
    assert flat(a.bias).abs().max() == 0


def test_chunks_and_batches_do_not_change_the_audit():
    """Inputs fed in uneven batches and chunks (merged centred power sums) give the audit of one
    chunk; the per-input gradients of the shifted inputs (large mean, small spread) keep their
    moments (compared with the two-pass moments of the users' per-sample gradients)."""
    case = make_case("mlp-tanh", "categorical", inputs=12, seed=0)
    model, x, y = case.model, case.x + 30.0, case.labels
    whole = fimvar.audit(model, x, "categorical", labels=y, estimator=["ewc", "empirical"], batch_size=4)
    pieces = fimvar.audit(model, [(x[:5], y[:5]), (x[5:7], y[5:7]), (x[7:], y[7:])], "categorical",
                          estimator=["ewc", "empirical"], batch_size=4, memory_budget=4000)
    for name in ("ewc", "empirical"):
        for q in ("mean", "variance", "bias"):
            assert_close(flat(getattr(pieces[name], q)), flat(getattr(whole[name], q)),
                         f"audit chunked {name} {q}", rtol=1e-9)
    g = torch.stack([gradient_of(model, x[i:i + 1], y[i:i + 1]) for i in range(12)])
    d = g - g.mean(0)
    p2, p4 = d.pow(2).sum(0), d.pow(4).sum(0)
    from fimvar.estimators.practical import ewc_variance
    assert_close(flat(pieces["ewc"].variance), ewc_variance(p2, p4, 12, 4), "audit ewc shifted inputs",
                 rtol=1e-8)


def test_all_estimators_table_and_recommendation():
    case = make_case("mlp-tanh", "categorical", inputs=12, seed=0)
    a = fimvar.audit(case.model, case.x, "categorical", labels=case.labels, batch_size=4)
    assert set(a.entries) == {"exact", "i1", "i2", "combined", "gnb", "empirical", "ewc"}
    text = str(a)
    assert "EWC" in text and "GNB" in text and "recommended" in text
    best = a.recommended()
    rows = {r.estimator: r for r in a.layers() if r.group == "(model)"}
    costs = {e: r.cost["normal"] for e, r in rows.items() if r.cost["normal"] is not None}
    assert best == min(costs, key=costs.get)
    # the biased estimators whose bias exceeds 5 % of the Fisher cannot meet the target
    for e in ("empirical", "ewc"):
        assert (rows[e].relative_bias >= 0.05) == (rows[e].inputs["normal"] is None)
    with pytest.raises(FimvarError, match="pick one"):
        _ = a.mean


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"estimator": "ewc", "batch_size": 5}, "divisible"),
    ({"estimator": "fisher", "batch_size": 4}, "unknown estimator"),
    ({"estimator": "ewc"}, "needs batch_size"),
    ({"estimator": "ewc", "batch_size": 0}, "batch_size"),
    ({"estimator": "empirical", "labels": None}, "labels"),
])
def test_bad_arguments_raise_one_error(kwargs, message):
    case = make_case("mlp-tanh", "categorical", inputs=12, seed=0)
    arguments = {"labels": case.labels, **kwargs}
    with pytest.raises(FimvarError, match=message):
        fimvar.audit(case.model, case.x, "categorical", **arguments)


@pytest.mark.parametrize("family", ["categorical", "gaussian", "bernoulli", "poisson"])
def test_ewc_extremes_against_autograd(family):
    """B = N: EWC is the squared gradient of the whole data set's mean loss (no shuffle noise);
    B = 1: it is the empirical Fisher. The loss is the oracle's log-likelihood (torch.distributions)."""
    from oracle import log_likelihood

    case = make_case("mlp-tanh", family, inputs=6, seed=3)
    model, x, y = case.model, case.x, case.labels
    model.zero_grad()
    h = model(x)
    loss = -torch.stack([log_likelihood(family, h[i], y[i]) for i in range(6)]).mean()
    loss.backward()
    full = gradient(model) ** 2
    squares = []
    for i in range(6):
        model.zero_grad()
        (-log_likelihood(family, model(x[i:i + 1])[0], y[i])).backward()
        squares.append(gradient(model) ** 2)
    whole = fimvar.audit(model, x, family, labels=y, estimator=["ewc", "gnb"], batch_size=6)
    single = fimvar.audit(model, x, family, labels=y, estimator=["ewc", "empirical"], batch_size=1)
    assert_close(flat(whole["ewc"].mean), full, "audit ewc B=N (full gradient squared)", rtol=1e-10)
    assert_close(flat(whole["ewc"].variance), torch.zeros_like(full), "audit ewc B=N variance", rtol=0,
                 floor=1e-12 * float(full.max() ** 2))
    assert_close(flat(single["ewc"].mean), torch.stack(squares).mean(0), "audit ewc B=1 = EF", rtol=1e-10)
    assert_close(flat(single["ewc"].mean), flat(single["empirical"].mean), "audit ewc B=1 = empirical",
                 rtol=1e-12)
    assert_close(flat(whole["gnb"].mean), flat(whole.fisher), "audit gnb mean = Fisher", rtol=1e-14)


def test_sequence_outputs_refuse_the_batch_and_data_label_estimators():
    case = make_case("sequence-tagger", "categorical", inputs=4, seed=0)
    with pytest.raises(FimvarError, match="per-position"):
        fimvar.audit(case.model, case.x, "categorical", labels=case.labels, estimator="ewc", batch_size=2)
    flat_case = make_case("mlp-tanh", "categorical", inputs=4, seed=0)
    with pytest.raises(FimvarError, match="per-position"):
        fimvar.audit(flat_case.model, flat_case.x, "categorical", estimator="token")
    a = fimvar.audit(case.model, case.x, "categorical", labels=case.labels, batch_size=2)
    assert set(a.entries) == {"exact", "i1", "token", "i2", "combined"}
    assert any("per-position outputs" in note for note in a.notes)


@pytest.mark.parametrize("model_name", ["sequence-tagger", "causal-lm"])
def test_per_token_squares_by_simulation(model_name):
    """The per-token squares of a sequence model as users write them — one label per position
    sampled from the model, ``Σ_t (∂ CE(h_t, y_t)/∂θ)²`` by autograd, averaged over the inputs —
    10⁴ times (each position's gradients of every label enumerated, then picked by the draws):
    mean and variance equal the audit's ``token`` entry (docs/theory.md §13.1), and its variance
    is below the per-sequence square's (Î1)."""
    case = make_case(model_name, "categorical", inputs=3, seed=2)
    model, x = case.model, case.x
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)  # (n, L, T)
    n, length, width = probs.shape
    per_token = torch.stack([torch.stack([torch.stack([
        gradient_of_position(model, x[i:i + 1], t, c) for c in range(width)]) for t in range(length)])
        for i in range(n)]) ** 2  # (n, L, T, P)
    generator = torch.Generator().manual_seed(3)
    labels = torch.multinomial(probs.reshape(-1, width), REPEATS, replacement=True,
                               generator=generator).reshape(n, length, REPEATS)
    picked = per_token.gather(2, labels[..., None].expand(-1, -1, -1, per_token.shape[-1]))
    values = picked.sum(1).mean(0)  # (R, P): the per-token squares averaged over the n inputs
    a = fimvar.audit(model, x, "categorical", estimator=["token", "i1"])
    token = a["token"]
    check_moments(values, flat(token.mean), flat(token.variance_given_inputs), f"per-token {model_name}")
    assert_close(flat(token.mean), flat(a.fisher), "per-token mean = Fisher", rtol=1e-14)
    assert (flat(token.variance_given_inputs) <= flat(a["i1"].variance_given_inputs) * (1 + 1e-12)).all()
    assert token.cost_per_input == a.cost.forward + length * a.cost.backward


def gradient_of_position(model, xi, t, c):
    """The users' per-token gradient: ``F.cross_entropy`` of position ``t`` at label ``c``."""
    model.zero_grad()
    F.cross_entropy(model(xi)[0, t:t + 1], torch.tensor([c])).backward()
    return gradient(model)


def test_a_resumed_audit_equals_an_uninterrupted_one(tmp_path):
    case = make_case("mlp-tanh", "categorical", inputs=12, seed=0)
    arguments = {"labels": case.labels, "estimator": ["ewc", "gnb", "empirical"], "batch_size": 4}
    whole = fimvar.audit(case.model, case.x, "categorical", **arguments, block_size=5)
    path = tmp_path / "audit.ckpt"
    first = fimvar.audit(case.model, case.x, "categorical", **arguments, block_size=5, checkpoint=path,
                         checkpoint_interval=0)
    resumed = fimvar.audit(case.model, case.x, "categorical", **arguments, block_size=5, checkpoint=path)
    for result in (first, resumed):
        for name in arguments["estimator"]:
            for q in ("mean", "variance", "bias"):
                assert torch.equal(flat(getattr(result[name], q)), flat(getattr(whole[name], q)))
    with pytest.raises(FimvarError):
        fimvar.audit(case.model, case.x, "categorical", **{**arguments, "batch_size": 6}, block_size=5,
                     checkpoint=path)


def test_a_resumed_sequence_audit_keeps_its_per_token_entry(tmp_path):
    """The per-position family comes back with the checkpoint: the resumed audit still holds the
    per-token squares, equal to the uninterrupted one's."""
    case = make_case("sequence-tagger", "categorical", inputs=6, seed=0)
    arguments = {"estimator": ["token", "i1"], "block_size": 4}
    whole = fimvar.audit(case.model, case.x, "categorical", **arguments)
    path = tmp_path / "audit.ckpt"
    fimvar.audit(case.model, case.x, "categorical", **arguments, checkpoint=path, checkpoint_interval=0)
    resumed = fimvar.audit(case.model, case.x, "categorical", **arguments, checkpoint=path)
    for name in arguments["estimator"]:
        assert torch.equal(flat(resumed[name].variance), flat(whole[name].variance))


def test_one_input_audits_without_nan():
    case = make_case("conv1d", "categorical", inputs=1, seed=0)
    a = fimvar.audit(case.model, case.x, "categorical", labels=case.labels, batch_size=1)
    for e in a.entries.values():
        for q in ("mean", "bias", "variance", "variance_given_inputs", "unit_variance"):
            assert torch.isfinite(flat(getattr(e, q))).all()
    assert "1 inputs" in str(a) or "only 1" in str(a)
