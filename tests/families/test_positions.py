"""Per-position outputs as one product family (docs/theory.md §13), checked against the
enumeration of the product's support (every combination of the positions' labels), Monte Carlo
draws, and a language model simulated as its users write it (10⁴ sampled label sequences)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from cases import make_case

import fimvar
from fimvar.estimators.bounds.tensor_eigen import tensor_extrema
from fimvar.estimators.labels import draw_labels, uniforms
from fimvar.families import get_family
from fimvar.families.positions import Positions

POSITIONS, WIDTH = 3, 2


def enumerate_product(name: str, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals ``(S, L·T)`` and probabilities ``(S,)`` of one input's product distribution,
    written out from the per-position probabilities (no fimvar code)."""
    per_position = h.reshape(POSITIONS, WIDTH)
    if name == "categorical":
        probs = torch.softmax(per_position, -1)
        labels = list(itertools.product(range(WIDTH), repeat=POSITIONS))
        stat = torch.stack([torch.cat([torch.eye(WIDTH, dtype=torch.float64)[y] for y in c]) for c in labels])
        weight = torch.tensor([math.prod(float(probs[t, y]) for t, y in enumerate(c)) for c in labels],
                              dtype=torch.float64)
    else:  # bernoulli
        p = torch.sigmoid(per_position).reshape(-1)
        labels = list(itertools.product([0.0, 1.0], repeat=POSITIONS * WIDTH))
        stat = torch.tensor(labels, dtype=torch.float64)
        weight = torch.tensor([math.prod(float(p[i]) if y else 1 - float(p[i]) for i, y in enumerate(c))
                               for c in labels], dtype=torch.float64)
    return stat - weight @ stat, weight


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_product_family_equals_the_enumerated_product(name):
    family = Positions(get_family(name), POSITIONS)
    generator = torch.Generator().manual_seed(0)
    h = 1.5 * torch.randn(2, POSITIONS * WIDTH, generator=generator, dtype=torch.float64)
    u = torch.randn(2, POSITIONS * WIDTH, 5, generator=generator, dtype=torch.float64)
    w = torch.randn(2, POSITIONS * WIDTH, 5, generator=generator, dtype=torch.float64)
    q, fourth, second, third = family.contractions(h, u, w)
    pairs = family.pair_fourth_variance(h, u, w)
    for n in range(2):
        eps, p = enumerate_product(name, h[n])
        a, b = eps @ u[n], eps @ w[n]  # (S, K)
        torch.testing.assert_close(family.fisher(h)[n], torch.einsum("s,sa,sb->ab", p, eps, eps))
        torch.testing.assert_close(q[n], p @ a**2)
        torch.testing.assert_close(fourth[n], p @ a**4 - (p @ a**2) ** 2)
        torch.testing.assert_close(second[n], p @ b**2)
        torch.testing.assert_close(third[n], p @ (a**2 * b))
        products = torch.einsum("s,si,sj->ij", p, a, b)
        torch.testing.assert_close(pairs[n], torch.einsum("s,si,sj->ij", p, a**2, b**2) - products**2)
        fourth_moment = torch.einsum("s,sa,sb,sc,sd->abcd", p, *[eps] * 4)
        torch.testing.assert_close(family.fourth_moment(h)[n], fourth_moment)
        third_cumulant = torch.einsum("s,sa,sb,sc->abc", p, *[eps] * 3)
        torch.testing.assert_close(family.third_cumulant(h)[n], third_cumulant)
        root = family.fisher_factor(h)[n]  # I = S Sᵀ (docs/theory.md §14.2)
        torch.testing.assert_close(root @ root.T, torch.einsum("s,sa,sb->ab", p, eps, eps))


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_tensor_eigenvalues_of_the_product_are_sound(name):
    """The certified λ̃ of the product enclose the values at 20 000 random unit directions (and
    the basis vectors) of each of 20 inputs, computed by enumeration."""
    family = Positions(get_family(name), POSITIONS)
    generator = torch.Generator().manual_seed(1)
    h = 2.0 * torch.randn(20, POSITIONS * WIDTH, generator=generator, dtype=torch.float64)
    found = tensor_extrema(family, h)
    directions = torch.cat([torch.eye(POSITIONS * WIDTH, dtype=torch.float64),
                            torch.randn(20_000, POSITIONS * WIDTH, generator=generator, dtype=torch.float64)])
    directions = directions / directions.norm(dim=1, keepdim=True)
    for n in range(20):
        eps, p = enumerate_product(name, h[n])
        a = eps @ directions.T  # (S, R)
        m = p @ a**4 - (p @ a**2) ** 2
        k = p @ a**4
        assert float(found["m_max"][n]) >= float(m.max()) * (1 - 1e-12)
        assert float(found["k_max"][n]) >= float(k.max()) * (1 - 1e-12)
        assert float(found["m_min"][n]) <= float(m.min()) * (1 + 1e-12)
        assert float(found["k_min"][n]) <= float(k.min()) * (1 + 1e-12)


def test_draws_follow_the_product_distribution():
    """10⁴ draws per input: the mean statistic matches the mean parameters within 5 standard
    errors per coordinate, and the positions of one draw use distinct uniforms."""
    family = Positions(get_family("categorical"), POSITIONS)
    h = torch.tensor([[2.0, -1.0, 0.0, 0.5, -2.0, 1.0]], dtype=torch.float64)
    labels = draw_labels(family, h, 10_000, seed=5, start=0)
    assert labels.shape == (1, 10_000, POSITIONS)
    stat = family.statistic(labels, POSITIONS * WIDTH)[0]  # (M, L·T)
    mean = family.mean(h)[0]
    error = stat.mean(0) - mean
    standard = (mean * (1 - mean) / 10_000).sqrt()
    assert (error.abs() <= 5 * standard).all()
    noise = uniforms(5, torch.tensor([0]), 1, family.uniform_width(POSITIONS * WIDTH))
    assert noise.shape[-1] == POSITIONS * get_family("categorical").uniform_width(WIDTH)


def test_language_model_sampled_fisher_as_users_write_it():
    """A tiny causal LM with tied embeddings: 10⁴ label sequences sampled from the model per
    input, the per-sequence loss ``Σ_t CE(logits_t, y_t)`` differentiated with autograd and
    squared (what Fisher-merging/EWC codes do): the mean of the squares matches fimvar's exact
    Fisher, and their variance fimvar's v1, each within 5 of its own standard error."""
    case = make_case("causal-lm", "categorical", inputs=2)
    model, x = case.model, case.x
    result = fimvar.analyze(model, x, "categorical", samples=1, bounds=False)
    draws = 10_000
    params = dict(model.named_parameters())
    names = list(params)

    def loss(p, ids, y):
        logits = torch.func.functional_call(model, p, (ids[None],))[0]
        return -torch.log_softmax(logits, -1).gather(-1, y[:, None]).sum()

    per_label = torch.func.vmap(torch.func.grad(loss), in_dims=(None, None, 0))
    for n in range(len(x)):
        with torch.no_grad():
            probs = torch.softmax(model(x[n:n + 1])[0], -1)
        y = torch.multinomial(probs, draws, replacement=True, generator=torch.Generator().manual_seed(n)).T
        squares = torch.cat([g.reshape(draws, -1) for g in per_label(params, x[n], y).values()], 1) ** 2
        single = fimvar.analyze(model, x[n:n + 1], "categorical", samples=1, bounds=False)
        fisher = torch.cat([single.fisher[k].reshape(-1) for k in names])
        v1 = torch.cat([single.v1[k].reshape(-1) for k in names])
        mean_error = (squares.mean(0) - fisher).abs()
        assert (mean_error <= 5 * (v1 / draws).sqrt() + 1e-12).all()
        # the variance of the squares, with its standard error from 100 batches of 100 draws
        batches = squares.reshape(100, 100, -1).var(1)  # (batches, P)
        spread = batches.std(0) / math.sqrt(100)
        assert ((squares.var(0) - v1).abs() <= 5 * spread + 1e-10 * v1.max()).all()
    assert result.metadata["outputs"] == 3 * 3


def test_language_model_per_token_squares_as_users_write_them(tmp_path):
    """The per-token squares of ASDL and LLM pruning codes, ``Σ_t (∂ log p(y_t|h_t)/∂θ)²`` with one
    label per position sampled from the model (10⁴ label sequences, per-token gradients by
    ``torch.func``): their mean is the exact Fisher and their variance ``v1_token``
    (docs/theory.md §13.1), each within 5 of its own standard error; ``v1_token`` is below the
    per-sequence ``v1`` and ``token_variance`` combines it with the input noise."""
    case = make_case("causal-lm", "categorical", inputs=2)
    model, x = case.model, case.x
    draws = 10_000
    params = dict(model.named_parameters())
    names = list(params)

    def per_token(t):  # the gradient of position t's loss, for every draw of the labels
        def token_loss(p, ids, y):
            logits = torch.func.functional_call(model, p, (ids[None],))[0]
            return -torch.log_softmax(logits[t], -1).gather(-1, y[t:t + 1]).sum()
        return torch.func.vmap(torch.func.grad(token_loss), in_dims=(None, None, 0))
    for n in range(len(x)):
        with torch.no_grad():
            probs = torch.softmax(model(x[n:n + 1])[0], -1)
        y = torch.multinomial(probs, draws, replacement=True, generator=torch.Generator().manual_seed(n)).T
        length = probs.shape[0]
        squares = 0
        for t in range(length):  # over positions: the per-token gradients of every draw
            grads = per_token(t)(params, x[n], y)
            squares = squares + torch.cat([g.reshape(draws, -1) for g in grads.values()], 1) ** 2
        single = fimvar.analyze(model, x[n:n + 1], "categorical", samples=1, bounds=False)
        fisher = torch.cat([single.fisher[k].reshape(-1) for k in names])
        token = torch.cat([single.v1_token[k].reshape(-1) for k in names])
        sequence = torch.cat([single.v1[k].reshape(-1) for k in names])
        assert ((squares.mean(0) - fisher).abs() <= 5 * (token / draws).sqrt() + 1e-12).all()
        batches = squares.reshape(100, 100, -1).var(1)
        spread = batches.std(0) / math.sqrt(100)
        assert ((squares.var(0) - token).abs() <= 5 * spread + 1e-10 * token.max()).all()
        assert (token <= sequence * (1 + 1e-12)).all() and (token < sequence).any()
        variance = single.token_variance(draws=4)
        for k in names:  # one input: no input noise, the label part alone over 4 draws
            torch.testing.assert_close(variance[k], single.v1_token[k] / 4, rtol=1e-12, atol=0)
    single.save(tmp_path, figures=False, html=False)  # kept by the saved result
    loaded = fimvar.load(tmp_path)
    assert all(torch.equal(loaded.v1_token[k], single.v1_token[k]) for k in names)
