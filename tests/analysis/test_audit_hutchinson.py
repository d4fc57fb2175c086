"""The Hutchinson estimator of the audit (docs/theory.md §15.7) against Hutchinson run as its users
write it (AdaHessian, Sophia-H, curvlinops ``hutchinson_diag``): per input a label sampled from
the model, the loss ``F.cross_entropy``, ``torch.autograd.grad(loss, params, create_graph=True)``,
then ``Hz`` by a second ``autograd.grad`` with Rademacher ``z``, and ``z * Hz`` (k probes averaged),
averaged over the inputs.

- By simulation: 10⁴ replicates, vectorised with ``torch.func`` (``jvp`` of ``grad``, vmapped over
  replicates, inputs and probes) and checked equal to the literal double-backward loop on the
  first 50 replicates (same labels and probes); sample mean and variance against the audit's
  expectation (the Fisher) and variance given the inputs within 5 standard errors.
- Brute force: every label enumerated, the full Hessian of each input's loss by double backward
  (row by row), its exact mean and variance over labels and probes; against the audit to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cases import make_case
from checks import assert_close, check_moments, flat
from oracle import log_likelihood, support
from torch.func import functional_call, grad, jvp, vmap

import fimvar
from fimvar.engine.functional import differentiable
from fimvar.errors import FimvarError

REPEATS = 10_000
LITERAL = 50


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unflatten(vector: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in params:
        out.append(vector[offset:offset + p.numel()].reshape(p.shape))
        offset += p.numel()
    return out


def hutchinson_literal(model, x, labels, probes) -> torch.Tensor:
    """The users' loop: per input, the loss at its (sampled) label, its gradient with the graph,
    one Hessian-vector product per Rademacher probe by a second ``autograd.grad``, ``z * Hz``
    averaged over the probes, then over the inputs. ``labels`` (n,), ``probes`` (n, k, P)."""
    params = list(model.parameters())
    acc = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), labels[i:i + 1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for z_flat in probes[i]:
            z = unflatten(z_flat, params)
            hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
            for a, zi, hzi in zip(acc, z, hz, strict=True):
                a += zi * hzi / len(probes[i])
    return torch.cat([(a / len(x)).reshape(-1) for a in acc])


def hutchinson_replicates(model, x, labels, probes) -> torch.Tensor:
    """The same for R replicates at once: ``labels`` (R, n), ``probes`` (R, n, k, P); ``Hz`` by
    forward-over-reverse ``jvp(grad(loss))``, vmapped over replicates, inputs and probes."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]

    def loss(theta, xi, yi):
        values = dict(zip(names, unflatten(theta, params), strict=True))
        return F.cross_entropy(functional_call(model, values, (xi[None],)), yi[None])

    theta = torch.cat([p.reshape(-1) for p in params])

    def one(xi, yi, z):
        return z * jvp(lambda t: grad(loss)(t, xi, yi), (theta,), (z,))[1]

    per_probe = vmap(one, in_dims=(None, None, 0))                   # k probes
    per_input = vmap(per_probe, in_dims=(0, 0, 0))                   # n inputs
    per_replicate = vmap(per_input, in_dims=(None, 0, 0), chunk_size=500)
    return per_replicate(x, labels, probes).mean((1, 2))            # (R, P)


@pytest.mark.parametrize(("model_name", "probes"), [("mlp-tanh", 1), ("mlp-tanh", 3), ("conv1d", 1),
                                                 ("encoder-attention", 1)])
def test_hutchinson_by_simulation(model_name, probes):
    case = make_case(model_name, "categorical", inputs=4, seed=6)
    model, x = case.model, case.x
    n = len(x)
    size = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    labels = torch.multinomial(probs, REPEATS, replacement=True, generator=generator).T  # (R, n)
    z = torch.randint(0, 2, (REPEATS, n, probes, size), generator=generator).to(torch.float64) * 2 - 1
    with differentiable(model):  # attention on its math kernel: forward AD and double backward
        values = hutchinson_replicates(model, x, labels, z)
        literal = torch.stack([hutchinson_literal(model, x, labels[r], z[r]) for r in range(LITERAL)])
    assert_close(values[:LITERAL], literal, "vectorised Hutchinson = users' loop", rtol=1e-12)
    a = fimvar.audit(model, x, "categorical", estimator="hutchinson", probes=probes)
    e = a["hutchinson"]
    assert e.probes == probes and e.draws == 1 and not e.estimated
    assert_close(flat(e.mean), flat(a.fisher), "Hutchinson mean = Fisher", rtol=0)
    check_moments(values, flat(e.mean), flat(e.variance_given_inputs), f"hutchinson {model_name} k={probes}")


def loss_hessian(model, family, xi, yi) -> torch.Tensor:
    """The full Hessian of one input's negative log-likelihood (the oracle's, torch.distributions)
    in all parameters, by double backward, row by row."""
    params = list(model.parameters())
    loss = -log_likelihood(family, model(xi[None])[0], yi)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(g[j], params, retain_graph=True)])
            for j in range(len(g))]
    return torch.stack(rows)


@pytest.mark.parametrize(("model_name", "family", "samples", "probes"), [
    ("mlp-sigmoid-softplus", "categorical", 1, 1), ("mlp-sigmoid-softplus", "categorical", 2, 3),
    ("conv2d", "categorical", 1, 2), ("mlp-tanh", "bernoulli", 1, 2), ("mlp-tanh", "gaussian", 1, 1)])
def test_hutchinson_variance_against_enumerated_hessians(model_name, family, samples, probes):
    """Var(ĥ_i | x) = Σ_y p_y (H_ii(y) − F_i)² + Σ_y p_y Σ_{j≠i} H_ij(y)²/k from the loss Hessians of
    every label of the oracle's support (Gauss–Hermite nodes for the Gaussian, exact here: H(y) is
    linear in y; the Poisson's truncated support is too long for a quick test), per input, divided
    by M labels and N² inputs."""
    case = make_case(model_name, family, inputs=3, seed=2)
    model, x = case.model, case.x
    means, variances = [], []
    for i in range(len(x)):
        with torch.no_grad():
            labels, weights = support(family, model(x[i:i + 1])[0])
        hessians = torch.stack([loss_hessian(model, family, x[i], y) for y in labels])
        p = (weights / weights.sum())[:, None]
        diagonal = hessians.diagonal(dim1=1, dim2=2)  # (labels, P)
        mean = (p * diagonal).sum(0)
        off = hessians.pow(2).sum(2) - diagonal.pow(2)
        variances.append((p * (diagonal - mean).pow(2)).sum(0) + (p * off).sum(0) / probes)
        means.append(mean)
    given = torch.stack(variances).sum(0) / (samples * len(x) ** 2)
    a = fimvar.audit(model, x, family, estimator="hutchinson", samples=samples, probes=probes)
    e = a["hutchinson"]
    assert_close(flat(e.mean), torch.stack(means).mean(0), f"Hutchinson mean (enumerated, {family})",
                 rtol=1e-9)
    assert_close(flat(e.variance_given_inputs), given, f"Hutchinson variance (enumerated, {family})",
                 rtol=1e-9)
    costs = fimvar.CostModel()
    assert e.cost_per_input == costs.forward + samples * probes * costs.hessian


def test_hutchinson_is_audited_on_request_and_refused_beyond_memory():
    case = make_case("mlp-tanh", "categorical", inputs=6, seed=0)
    default = fimvar.audit(case.model, case.x, "categorical", labels=case.labels, batch_size=3)
    assert "hutchinson" not in default.entries
    both = fimvar.audit(case.model, case.x, "categorical", estimator=["i2", "hutchinson"])
    assert both["hutchinson"].label == "Hutchinson" and "Hutchinson" in str(both)
    # one probe adds the probe term to Î2's label variance: never below Î2
    assert (flat(both["hutchinson"].variance) >= flat(both["i2"].variance)).all()
    assert both.to_dict()["estimators"]["hutchinson"]["probes"] == 1
    # inputs in chunks of 2 (a budget of two inputs' Hessians) and in uneven batches: the same audit
    chunked = fimvar.audit(case.model, [case.x[:3], case.x[3:]], "categorical",
                           estimator=["i2", "hutchinson"], memory_budget=200_000)
    for q in ("mean", "variance", "variance_given_inputs", "unit_variance"):
        assert_close(flat(getattr(chunked["hutchinson"], q)), flat(getattr(both["hutchinson"], q)),
                     f"Hutchinson chunked {q}", rtol=1e-12)
    with pytest.raises(FimvarError, match="per-input Hessians"):
        fimvar.audit(case.model, case.x, "categorical", estimator="hutchinson", memory_budget=10_000)
    for probes in (0, 1.5, True):
        with pytest.raises(FimvarError, match="probes"):
            fimvar.audit(case.model, case.x, "categorical", estimator="hutchinson", probes=probes)
