"""The linear output layer of ``fimvar.analyze_sampled`` in closed form (docs/theory.md §17.1): its
exact Fisher, label noise v1 and input noise against brute force over every label sequence, an
untied ``transformers`` head detected, and tied heads (the catalogue's causal LM, GPT-2) left to
the draws, whose Î1 equals a Monte Carlo written as users write it."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from cases import make_case
from checks import assert_close
from torch import nn
from torch.func import functional_call, grad, vmap

import fimvar
from fimvar.estimators.labels import sample_labels
from fimvar.families import get_family

VOCABULARY, LENGTH = 7, 4


class UntiedLM(nn.Module):
    """Token and position embeddings, a causal self-attention block (SDPA), a GELU MLP, a final
    LayerNorm and an untied linear head with a bias: ``(n, L, V)``."""

    def __init__(self, vocabulary: int = VOCABULARY, width: int = 4, length: int = LENGTH) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Parameter(0.3 * torch.randn(length, width))
        self.qkv = nn.Linear(width, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 5), nn.GELU(), nn.Linear(5, width))
        self.final = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        q, k, v = self.qkv(x).chunk(3, -1)
        x = x + nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.mlp(x)
        return self.head(self.final(x))


def _untied(inputs: int = 3):
    torch.manual_seed(0)
    model = UntiedLM().double().eval()
    with torch.no_grad():  # confident and diffuse positions alike
        model.head.weight.mul_(3.0)
    ids = torch.randint(0, VOCABULARY, (inputs, LENGTH), generator=torch.Generator().manual_seed(1))
    return model, ids


def _brute_force(model: nn.Module, ids: torch.Tensor, names: list[str], kept: torch.Tensor | None = None):
    """Exact per-input Fisher and v1 of the parameters ``names`` by enumerating every label
    sequence (V^L of them) with its probability: the score of ``Σ_t m_t log p(y_t|x)`` by
    autograd of the whole model (a functional call, the other parameters constant), then
    ``F = Σ_y p(y) s_y²`` and ``v1 = Σ_y p(y) (s_y² − F)²``; and the sample variance of ``F`` over
    the inputs. No fimvar derivative or family code."""
    params = dict(model.named_parameters())
    selected = {k: params[k].detach() for k in names}
    constants = {k: v.detach() for k, v in params.items() if k not in names}
    grid = torch.cartesian_prod(*[torch.arange(VOCABULARY)] * LENGTH)  # (V^L, L)
    fisher, v1 = [], []
    for i in range(ids.shape[0]):
        weights = torch.ones(LENGTH, dtype=torch.float64) if kept is None else kept[i].double()

        def loglik(p, y, i=i, weights=weights):
            logits = functional_call(model, ({**p, **constants},), (ids[i : i + 1],))[0]
            return (torch.log_softmax(logits, -1).gather(1, y[:, None])[:, 0] * weights).sum()

        with torch.no_grad():
            logp = torch.log_softmax(model(ids[i : i + 1])[0], -1)
        probs = torch.exp((logp.gather(1, grid.T).T * weights).sum(1))  # masked positions summed out
        probs = probs / probs.sum() if kept is not None else probs
        scores = vmap(grad(loglik), in_dims=(None, 0))(selected, grid)
        f = {k: torch.einsum("s,s...->...", probs, s**2) for k, s in scores.items()}
        fisher.append(f)
        v1.append({k: torch.einsum("s,s...->...", probs, (s**2 - f[k]) ** 2) for k, s in scores.items()})
    stack = {k: torch.stack([f[k] for f in fisher]) for k in names}
    mean_v1 = {k: torch.stack([v[k] for v in v1]).mean(0) for k in names}
    return {k: v.mean(0) for k, v in stack.items()}, mean_v1, {k: v.var(0) for k, v in stack.items()}


def _check_exact(sampled, truth, label: str) -> None:
    fisher, v1, input_var = truth
    for name in fisher:
        assert_close(sampled.fisher[name], fisher[name], f"closed-form head Fisher{label}", rtol=1e-10)
        assert_close(sampled.v1[name], v1[name], f"closed-form head v1{label}", rtol=1e-10)
        assert_close(sampled.input_var[name], input_var[name], f"closed-form head input noise{label}",
                     rtol=1e-10)


def test_untied_head_in_closed_form_equals_brute_force():
    """The head's weight and bias are exact; Fisher, v1 and the input noise equal the
    enumeration of all 7⁴ label sequences, and ``analyze``'s exact (autodiff) values; its v2 is
    0 there ([B] Remark 4.4). The other tensors stay sampled, and ``variance`` uses the exact
    terms for the head at every design, the draws' ``between`` for the others."""
    model, ids = _untied()
    sampled = fimvar.analyze_sampled(model, ids, samples=3, seed=5, batch_size=2)  # two chunks merged
    assert sampled.metadata["exact"] == ["head.weight", "head.bias"]
    assert set(sampled.fisher) == {"head.weight", "head.bias"}
    _check_exact(sampled, _brute_force(model, ids, ["head.weight", "head.bias"]), "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = fimvar.analyze(model, ids, samples=3, seed=5, bounds=False, engine="autodiff",
                               parameters=["head.weight", "head.bias"])
    for name in ("head.weight", "head.bias"):
        scale = float(exact.fisher[name].abs().max())
        for quantity in ("fisher", "v1", "input_var"):
            assert_close(getattr(sampled, quantity)[name], getattr(exact, quantity)[name],
                         f"closed-form head {quantity} vs analyze", rtol=1e-10)
        assert float(exact.v2[name].abs().max()) <= 1e-12 * scale**2
        assert_close(sampled.i1[name], exact.i1[name], "sampled head Î1 (same draws)", rtol=1e-10)
        for design in ({}, {"inputs": 50, "draws": 4}):
            expected = exact.variance("i1", **design)[name]
            assert_close(sampled.variance("i1", **design)[name], expected, "head Var(Î1)", rtol=1e-10)
        assert_close(sampled.variance("exact", inputs=9)[name], exact.variance("exact", inputs=9)[name],
                     "head Var(exact)", rtol=1e-10)
    other = sampled.variance("i1")["qkv.weight"]
    torch.testing.assert_close(other, sampled.between["qkv.weight"] / 3, rtol=0, atol=0)


def test_padding_positions_left_out_of_the_closed_form():
    """Labels of -100 leave their positions out of every sum: the enumeration with those
    positions' log-likelihoods dropped (their labels summed out)."""
    model, ids = _untied()
    labels = torch.zeros_like(ids)
    labels[0, -1] = labels[2, 1:] = -100
    sampled = fimvar.analyze_sampled(model, ids, samples=2, seed=1, labels=labels)
    assert sampled.metadata["exact"] == ["head.weight", "head.bias"]
    _check_exact(sampled, _brute_force(model, ids, ["head.weight", "head.bias"], labels != -100), ", padding")


def test_unit_moments_are_the_family_contractions():
    """The O(T) categorical unit moments equal the family's general contractions at ``u = e_c``."""
    h = torch.randn(5, 6, dtype=torch.float64) * 3
    family = get_family("categorical")
    units = torch.eye(6, dtype=torch.float64).expand(5, -1, -1)
    quadratic, fourth = family.unit_moments(h)
    assert_close(quadratic, family.quadratic(h, units), "categorical unit I_cc", rtol=1e-14)
    assert_close(fourth, family.fourth_variance(h, units), "categorical unit Var[ε_c²]", rtol=1e-13)


def test_conservative_detection():
    """Not exact: a tied head (the catalogue's causal LM), anything applied after the last
    Linear (a temperature), a head called twice, a head whose input depends on its own weight,
    a head whose outputs are one softmax over all positions."""

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids) / 2.0

    class Twice(UntiedLM):
        def forward(self, ids):
            x = super().forward(ids)
            return self.head(self.final(x[..., :4])) if x.shape[-1] >= 4 else x

    class SelfFed(UntiedLM):
        def forward(self, ids):
            x = self.tokens(ids) + self.head.weight[ids, :]
            return self.head(self.final(x))

    class Flat(UntiedLM):
        def forward(self, ids):
            return super().forward(ids).reshape(ids.shape[0], -1)  # one softmax over L·V

    case = make_case("causal-lm", "categorical", inputs=3)
    assert fimvar.analyze_sampled(case.model, case.x, samples=2).metadata["exact"] == []
    model, ids = _untied()
    for wrapped in (Scaled(model), Twice(), SelfFed(), Flat()):
        torch.manual_seed(0)
        wrapped = wrapped.double().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fimvar.analyze_sampled(wrapped, ids, samples=2)
        assert result.metadata["exact"] == [], type(wrapped).__name__
        assert result.fisher == {}


# ---------------------------------------------------------------------------------- transformers
try:  # the torchvision wheel next to the CPU build of torch does not import; transformers then
    import torchvision  # noqa: F401 (would fail to import its models) — hide it
except Exception:  # noqa: BLE001
    sys.modules["torchvision"] = None


def _gpt2(tied: bool):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=6, n_positions=4, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 6, (3, 3), generator=torch.Generator().manual_seed(2))
    return model, ids


def test_tied_gpt2_head_is_sampled_like_a_hand_written_monte_carlo():
    """GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``: not exact. Its Î1 (and every
    other tensor's) equals the per-sequence squared gradient of ``Σ_t log p(y_t|x)`` at the same
    sampled labels, by autograd on the whole model, one sequence at a time."""
    model, ids = _gpt2(tied=True)
    samples, seed = 3, 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = fimvar.analyze_sampled(model, {"input_ids": ids}, samples=samples, seed=seed)
    assert sampled.metadata["exact"] == [] and sampled.fisher == {}
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    labels = sample_labels("categorical", logits, samples, seed)  # (n, M, L): analyze's draws
    params = dict(model.named_parameters())
    totals = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(ids.shape[0]):
        for m in range(samples):
            logp = torch.log_softmax(model(input_ids=ids[i : i + 1]).logits[0], -1)
            loglik = logp.gather(1, labels[i, m][:, None]).sum()
            gradients = torch.autograd.grad(loglik, list(params.values()))
            for k, g in zip(params, gradients, strict=True):
                totals[k] += g.detach() ** 2
    for name, total in totals.items():
        assert_close(sampled.i1[name], total / (ids.shape[0] * samples), "tied GPT-2 Î1 vs hand Monte Carlo",
                     rtol=1e-10, floor=1e-12)


def test_untied_gpt2_head_is_exact():
    """With ``tie_word_embeddings=False`` the head is detected; its closed-form Fisher, v1 and
    input noise equal ``analyze``'s exact values (autodiff, the head alone)."""
    model, ids = _gpt2(tied=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = fimvar.analyze_sampled(model, {"input_ids": ids}, samples=2, seed=0)
        exact = fimvar.analyze(model, {"input_ids": ids}, samples=2, seed=0, bounds=False, engine="autodiff",
                               parameters=["lm_head.weight"])
    assert sampled.metadata["exact"] == ["lm_head.weight"]
    for quantity in ("fisher", "v1", "input_var"):
        assert_close(getattr(sampled, quantity)["lm_head.weight"], getattr(exact, quantity)["lm_head.weight"],
                     f"untied GPT-2 head {quantity}", rtol=1e-10)


def test_a_resumed_run_keeps_the_exact_output_layer(tmp_path):
    """The output layer and its exact sums come back with the checkpoint."""
    model, ids = _untied(inputs=4)
    whole = fimvar.analyze_sampled(model, ids, samples=2, batch_size=2)
    path = tmp_path / "sampled.ckpt"
    fimvar.analyze_sampled(model, ids, samples=2, batch_size=2, checkpoint=path, checkpoint_interval=0)
    resumed = fimvar.analyze_sampled(model, ids, samples=2, batch_size=2, checkpoint=path)
    assert resumed.metadata["exact"] == whole.metadata["exact"] == ["head.weight", "head.bias"]
    for quantity in ("fisher", "v1", "input_var", "i1"):
        for name, value in getattr(whole, quantity).items():
            assert torch.equal(getattr(resumed, quantity)[name], value)
