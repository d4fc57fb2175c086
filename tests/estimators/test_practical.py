"""The closed forms of docs/theory.md §15 against exact enumeration: every order of N = 6 values
(a uniform shuffle), every batch drawn with replacement, every label assignment of a discrete
model; the streaming merge of central moments against two-pass moments; the sample size with a
bias against the unbiased design of docs/theory.md §8.2."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from checks import assert_close

from fimvar.errors import FimvarError
from fimvar.estimators import practical
from fimvar.estimators.design import NoiseTerms, Target
from fimvar.estimators.design import required_inputs as unbiased_required_inputs

N = 6
PERMUTATIONS = torch.tensor(list(itertools.permutations(range(N))))  # (720, 6)


def gradients(seed: int, shift: float = 0.7) -> torch.Tensor:
    """Per-input values of 3 parameters, (N, 3)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, generator=generator, dtype=torch.float64) + shift


def moments_of(g: torch.Tensor):
    total, p2, p3, p4 = practical.central_moments(g)
    return total / g.shape[0], p2, p3, p4


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_ewc_one_pass_over_every_shuffle(batch_size, seed):
    g = gradients(seed)
    batches = g[PERMUTATIONS].reshape(len(PERMUTATIONS), N // batch_size, batch_size, 3).mean(2)
    values = batches.pow(2).mean(1)  # (720, 3): the estimator for every order
    mean, p2, _, p4 = moments_of(g)
    assert_close(practical.ewc_mean(mean, p2, N, batch_size), values.mean(0), "ewc mean (enumerated)",
                 rtol=1e-12)
    assert_close(practical.ewc_variance(p2, p4, N, batch_size), values.var(0, unbiased=False),
                 "ewc variance (enumerated)", rtol=1e-12, floor=float(values.mean(0).pow(2).max()))


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_ewc_independent_batches_over_every_draw(batch_size):
    g = gradients(2, shift=-0.4)
    draws = torch.tensor(list(itertools.product(range(N), repeat=batch_size)))  # every batch
    values = g[draws].mean(1).pow(2)
    mean, p2, p3, p4 = moments_of(g)
    fisher_like = (g**2).mean(0)  # EF
    expected_mean = practical.ewc_mean_independent(mean, p2, N, batch_size)
    assert_close(expected_mean, values.mean(0), "ewc independent mean (enumerated)", rtol=1e-12)
    assert_close(expected_mean, fisher_like / batch_size + (1 - 1 / batch_size) * mean**2,
                 "ewc independent mean = EF/B + (1-1/B)mu^2", rtol=1e-12)
    for batches in (1, 4):
        assert_close(practical.ewc_variance_independent(mean, p2, p3, p4, N, batch_size, batches),
                     values.var(0, unbiased=False) / batches, "ewc independent variance (enumerated)",
                     rtol=1e-11)


def discrete_scores(seed: int, width: int = 3):
    """A discrete GNB model: per input, label probabilities p_i and scores s_i(y) = (e_y − p_i)·c_i
    (zero mean under p_i), for 2 parameters: probabilities (N, T), scores (N, T, 2)."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(N, width, generator=generator, dtype=torch.float64), -1)
    directions = torch.randn(N, width, 2, generator=generator, dtype=torch.float64)
    residual = torch.eye(width, dtype=torch.float64)[None] - probs[:, None, :]  # (N, y, T)
    return probs, torch.einsum("nyt,ntp->nyp", residual, directions)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6])
def test_gnb_one_pass_over_every_shuffle_and_label(batch_size):
    probs, scores = discrete_scores(3)
    width = probs.shape[1]
    labels = torch.tensor(list(itertools.product(range(width), repeat=N)))  # (729, 6)
    weight = probs[torch.arange(N), labels].prod(1)  # probability of each assignment
    s = scores[torch.arange(N), labels]  # (729, 6, 2)
    k = N // batch_size
    ordered = s[:, PERMUTATIONS]  # (729, 720, 6, 2)
    values = batch_size * ordered.reshape(*ordered.shape[:2], k, batch_size, 2).mean(3).pow(2).mean(2)
    w = (weight[:, None] / len(PERMUTATIONS)).expand(values.shape[:2])[..., None]
    mean = (w * values).sum((0, 1))
    variance = (w * (values - mean) ** 2).sum((0, 1))
    fisher = (probs[..., None] * scores**2).sum(1)  # F_i, (N, 2)
    v1 = (probs[..., None] * scores**4).sum(1) - fisher**2
    assert_close(mean, fisher.mean(0), "gnb mean = Fisher (enumerated)", rtol=1e-12)
    predicted = practical.gnb_variance(fisher.sum(0), (fisher**2).sum(0), v1.sum(0), N, batch_size)
    assert_close(predicted, variance, "gnb variance (enumerated)", rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_gnb_independent_batches_over_every_draw(batch_size):
    probs, scores = discrete_scores(4)
    width = probs.shape[1]
    # every batch of inputs with replacement × every label of each slot
    slots = list(itertools.product(range(N), range(width)))
    combos = torch.tensor(list(itertools.product(range(len(slots)), repeat=batch_size)))
    pick = torch.tensor(slots)[combos]  # (C, B, 2): input, label
    weight = (probs[pick[..., 0], pick[..., 1]] / N).prod(1)
    s = scores[pick[..., 0], pick[..., 1]]  # (C, B, 2)
    values = batch_size * s.mean(1).pow(2)
    mean = (weight[:, None] * values).sum(0)
    variance = (weight[:, None] * (values - mean) ** 2).sum(0)
    fisher = (probs[..., None] * scores**2).sum(1)
    v1 = (probs[..., None] * scores**4).sum(1) - fisher**2
    assert_close(mean, fisher.mean(0), "gnb independent mean (enumerated)", rtol=1e-12)
    for batches in (1, 3):
        predicted = practical.gnb_variance_independent(fisher.sum(0), (fisher**2).sum(0), v1.sum(0), N,
                                                       batch_size, batches)
        assert_close(predicted, variance / batches, "gnb independent variance (enumerated)", rtol=1e-12)


def test_same_batch_probabilities_by_counting():
    """q2, q3, q22 as frequencies over every order of 6 inputs in batches of 2 and 3."""
    for batch_size in (2, 3):
        batch = PERMUTATIONS.argsort(1) // batch_size  # batch of every input, per order
        q2, q3, q22 = practical.same_batch_probabilities(N, batch_size)
        pair = (batch[:, 0] == batch[:, 1]).double().mean()
        triple = ((batch[:, 0] == batch[:, 1]) & (batch[:, 1] == batch[:, 2])).double().mean()
        pairs = ((batch[:, 0] == batch[:, 1]) & (batch[:, 2] == batch[:, 3])).double().mean()
        assert (float(pair), float(triple), float(pairs)) == pytest.approx(
            (float(q2), float(q3), float(q22)), abs=1e-15)


def test_merged_central_moments_equal_two_pass_moments():
    generator = torch.Generator().manual_seed(5)
    values = 1e3 + torch.randn(23, 4, generator=generator, dtype=torch.float64) * 1e-2
    state, count = None, 0
    for chunk in (values[:1], values[1:9], values[9:10], values[10:]):
        state = practical.merge_central_moments(count, state, len(chunk), practical.central_moments(chunk))
        count += len(chunk)
    d = values - values.mean(0)
    for got, want, label in zip(state, (values.sum(0), d.pow(2).sum(0), d.pow(3).sum(0), d.pow(4).sum(0)),
                                ("sum", "P2", "P3", "P4"), strict=True):
        assert_close(got, want, f"merged central moment {label}", rtol=1e-9)


def test_required_inputs_without_bias_is_the_unbiased_design():
    target = Target(0.05, 0.05)
    terms = NoiseTerms(parameters=3, fisher_sq=4.0, input=1.5, label={"i1": 2.0})
    for method in ("normal", "chebyshev"):
        ours = practical.required_inputs(1.5 + 2.0, 0.0, 2.0, target, method)
        theirs = unbiased_required_inputs(terms, "i1", target, method, 1)
        assert ours == pytest.approx(theirs, rel=1e-14)
    # a bias takes a share of the error budget; at ρ‖I‖ the target is out of reach
    unbiased = practical.required_inputs(3.5, 0.0, 2.0, target, "normal")
    assert practical.required_inputs(3.5, 0.05, 2.0, target, "normal") == pytest.approx(
        unbiased * (0.1 / 0.05) ** 2, rel=1e-14)  # (ρ‖I‖)² / (ρ‖I‖ − ‖b‖)²
    assert math.isinf(practical.required_inputs(3.5, 0.1, 2.0, target, "normal"))


def test_partition_must_divide_the_inputs():
    with pytest.raises(FimvarError, match="divisible"):
        practical.check_partition(10, 4)
    with pytest.raises(FimvarError, match="batch_size"):
        practical.check_partition(10, 0)
