"""Brute-force ground truth, independent of fimvar's derivative and moment code.

For each input, the log-likelihood ``ℓ(θ; x, y)`` is written with ``torch.distributions`` and
differentiated with respect to the *flat* parameter vector by ``torch.func`` (gradient and full
Hessian, the latter as ``jacfwd`` of the gradient). Expectations over ``y ~ p(y|x; θ)`` are
exact: a sum over the support (categorical, Bernoulli; Poisson truncated far in the tail) or
Gauss–Hermite quadrature (Gaussian, exact for the polynomials of degree ≤ 11 that appear).
Nothing here uses u, w, ε or a family contraction.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import distributions as D
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from fimvar.engine.functional import differentiable


def log_likelihood(family: str, h: torch.Tensor, y: torch.Tensor, sigma: float = 1.0):
    if family == "categorical":
        return D.Categorical(logits=h).log_prob(y.long())
    if family == "gaussian":
        return D.Normal(h, sigma).log_prob(y).sum()
    if family == "bernoulli":
        return D.Bernoulli(logits=h).log_prob(y).sum()
    if family == "poisson":
        return D.Poisson(torch.exp(h)).log_prob(y).sum()
    raise ValueError(family)


def support(family: str, h: torch.Tensor, sigma: float = 1.0):
    """Label values and their probabilities (weights) for outputs ``h`` of one input."""
    width = h.shape[0]
    if family == "categorical":
        ys = torch.arange(width, dtype=torch.float64)
        return ys, torch.softmax(h, -1)
    if family == "bernoulli":
        ys = torch.tensor(list(itertools.product([0.0, 1.0], repeat=width)), dtype=torch.float64)
    elif family == "poisson":
        top = int(math.ceil(float(torch.exp(h).max()) * 3 + 40))
        ys = torch.tensor(list(itertools.product(range(top), repeat=width)), dtype=torch.float64)
    elif family == "gaussian":
        nodes, weights = np.polynomial.hermite.hermgauss(7)
        grid = torch.tensor(list(itertools.product(nodes, repeat=width)), dtype=torch.float64)
        w = torch.tensor([float(np.prod(c)) for c in itertools.product(weights, repeat=width)],
                         dtype=torch.float64) / math.pi ** (width / 2)
        return h[None, :] + sigma * math.sqrt(2) * grid, w
    probs = torch.stack([torch.exp(log_likelihood(family, h, y)) for y in ys])
    return ys, probs


def statistic(family: str, ys: torch.Tensor, width: int, sigma: float = 1.0) -> torch.Tensor:
    """Sufficient statistic t(y) of each label of a support, ``(S, T)`` (written out per family)."""
    if family == "categorical":
        return torch.eye(width, dtype=torch.float64)[ys.long()]
    if family == "gaussian":
        return ys / sigma**2
    return ys.to(torch.float64)


def product_support(family: str, h: torch.Tensor, positions: int, sigma: float = 1.0):
    """Labels of ``positions`` independent positions (``(S, L)`` or ``(S, L, T)``) and their
    probabilities: every combination of the positions' supports."""
    per_position = [support(family, ht, sigma) for ht in h.reshape(positions, -1)]
    combinations = list(itertools.product(*[range(len(p)) for _, p in per_position]))
    ys = torch.stack([torch.stack([per_position[t][0][i] for t, i in enumerate(c)]) for c in combinations])
    probs = torch.tensor([math.prod(float(per_position[t][1][i]) for t, i in enumerate(c))
                          for c in combinations], dtype=torch.float64)
    return ys, probs


class Oracle:
    """Exact per-input derivatives of the log-likelihood for one model; with ``positions`` the
    model's outputs are that many independent positions of the family (a sequence model): the
    likelihood is the product over positions, the support every combination of labels."""

    def __init__(self, model: torch.nn.Module, family: str, sigma: float = 1.0,
                 positions: int | None = None) -> None:
        self.model = model
        self.family = family
        self.sigma = sigma
        self.positions = positions
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=False):
            size = int(np.prod(shape)) if len(shape) else 1
            out[name] = theta[offset:offset + size].reshape(shape)
            offset += size
        return out

    def split(self, flat: torch.Tensor) -> dict:
        """Flat per-parameter vector (..., P) → dict of parameter-shaped tensors."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=False):
            size = int(np.prod(shape)) if len(shape) else 1
            out[name] = flat[..., offset:offset + size].reshape(*flat.shape[:-1], *shape)
            offset += size
        return out

    def outputs(self, x1: torch.Tensor, theta=None) -> torch.Tensor:
        """The outputs of one input as a function of the flat parameters. Attention runs on
        PyTorch's math kernel and recurrent layers unrolled (fimvar.engine.functional: the fused
        kernels cannot be differentiated by torch.func; tests/engine/test_recurrent.py checks the
        unrolled forward against the fused one)."""
        theta = self.theta if theta is None else theta
        with differentiable(self.model):
            out = functional_call(self.model, self.unflatten(theta), (x1[None],))
        out = getattr(out, "logits", out)
        if out.dim() > 2:  # (1, L, T): L independent positions (the documented convention)
            self.positions = math.prod(out.shape[1:-1])
        return out.reshape(-1)

    def output_derivatives(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u`` and ``w`` of every parameter entry for one input, each ``(T, P)``: the Jacobian of
        the outputs and the diagonals of their Hessians with respect to the flat parameters."""
        jacobian = jacrev(self.outputs, argnums=1)(x1, self.theta)
        basis = torch.eye(jacobian.shape[0], dtype=jacobian.dtype)
        hessians = vmap(lambda e: jacfwd(grad(lambda t: self.outputs(x1, t) @ e))(self.theta))(basis)
        return jacobian, torch.diagonal(hessians, dim1=1, dim2=2)

    def residuals(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ε_y = t(y) − E t(y)`` over the support of the labels of one input (``(S, T)``) and
        their probabilities (``(S,)``), by enumeration (no family code)."""
        h = self.outputs(x1).detach()
        ys, probs = self.support(h)
        if self.positions:
            stat = statistic(self.family, ys, h.shape[0] // self.positions, self.sigma).reshape(len(ys), -1)
        else:
            stat = statistic(self.family, ys, h.shape[0], self.sigma)
        return stat - probs @ stat, probs

    def support(self, h: torch.Tensor):
        if self.positions:
            return product_support(self.family, h, self.positions, self.sigma)
        return support(self.family, h, self.sigma)

    def loglik(self, theta, x1, y):
        h = self.outputs(x1, theta)
        if self.positions:
            return sum(log_likelihood(self.family, ht, yt, self.sigma)
                       for ht, yt in zip(h.reshape(self.positions, -1), y, strict=True))
        return log_likelihood(self.family, h, y, self.sigma)

    def score_and_hessian(self, x1: torch.Tensor, ys: torch.Tensor):
        """Gradients (S, P) and negative Hessians (S, P, P) of ℓ at labels ``ys``."""
        scores = vmap(grad(self.loglik), in_dims=(None, None, 0))(self.theta, x1, ys)
        # jacfwd of the gradient: torch.func's hessian (jacfwd of jacrev) returns wrong
        # off-diagonal entries through LayerNorm with torch 2.13 (tests/engine/test_full.py)
        neg_hessians = -vmap(jacfwd(grad(self.loglik)), in_dims=(None, None, 0))(self.theta, x1, ys)
        return scores, neg_hessians

    def conditional(self, x1: torch.Tensor) -> dict:
        """Exact moments for one input: fisher (P,), full fisher (P,P), v1, v2, c12, full
        variances and the Frobenius norms of the single-draw covariances of Î1 and Î2."""
        ys, probs = self.support(self.outputs(x1).detach())
        scores, neg_h = self.score_and_hessian(x1, ys)
        outer = scores[:, :, None] * scores[:, None, :]
        fisher_full = torch.einsum("s,sij->ij", probs, outer)
        fisher = torch.diagonal(fisher_full)
        hess_mean = torch.einsum("s,sij->ij", probs, neg_h)
        sq = scores**2 - fisher
        hd = torch.diagonal(neg_h, dim1=1, dim2=2) - fisher
        a = (outer - fisher_full).reshape(len(probs), -1)
        b = (neg_h - fisher_full).reshape(len(probs), -1)
        return {
            "fisher": fisher,
            "fisher_full": fisher_full,
            "hessian_mean": hess_mean,
            "v1": torch.einsum("s,sp->p", probs, sq**2),
            "v2": torch.einsum("s,sp->p", probs, hd**2),
            "c12": torch.einsum("s,sp->p", probs, sq * hd),
            "v1_full": torch.einsum("s,sp->p", probs, a**2).reshape(fisher_full.shape),
            "v2_full": torch.einsum("s,sp->p", probs, b**2).reshape(fisher_full.shape),
            "frobenius_i1": torch.sqrt(probs @ (a @ a.T) ** 2 @ probs),
            "frobenius_i2": torch.sqrt(probs @ (b @ b.T) ** 2 @ probs),
        }

    def analysis(self, x: torch.Tensor, labels=None, draws=None) -> dict:
        """Input averages, the unbiased input variance of I(θ_i|x), and with ``draws``
        (labels sampled per input, (n, M[, T])) the estimators Î1 and Î2; with ``labels`` the
        empirical Fisher."""
        per_input = [self.conditional(x1) for x1 in x]
        out = {k: torch.stack([p[k] for p in per_input]).mean(0) for k in per_input[0]}
        fisher_stack = torch.stack([p["fisher"] for p in per_input])
        out["input_var"] = (fisher_stack.var(0, unbiased=True) if len(x) > 1
                            else torch.zeros_like(out["fisher"]))
        full_stack = torch.stack([p["fisher_full"] for p in per_input])
        out["input_var_full"] = (full_stack.var(0, unbiased=True) if len(x) > 1
                                 else torch.zeros_like(out["fisher_full"]))
        if draws is not None:
            i1, i2 = [], []
            for x1, ys in zip(x, draws, strict=True):
                scores, neg_h = self.score_and_hessian(x1, ys.double())
                i1.append(torch.einsum("mi,mj->ij", scores, scores) / len(ys))
                i2.append(neg_h.mean(0))
            out["i1_full"] = torch.stack(i1).mean(0)
            out["i2_full"] = torch.stack(i2).mean(0)
            out["i1"] = torch.diagonal(out["i1_full"])
            out["i2"] = torch.diagonal(out["i2_full"])
        if labels is not None:
            emp = []
            for x1, y in zip(x, labels, strict=False):
                scores, _ = self.score_and_hessian(x1, y.double()[None])
                emp.append(scores[0] ** 2)
            out["empirical"] = torch.stack(emp).mean(0)
        return out
