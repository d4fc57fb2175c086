"""Hidden-layer Fisher against brute force: E_y[∇_{h_l}ℓ ∇_{h_l}ℓᵀ] by exact enumeration, with the
gradient taken through the tail of the network (no B_l, no family contraction)."""

from __future__ import annotations

import pytest
import torch
from cases import FAMILIES, make_case
from checks import assert_close
from oracle import log_likelihood, support
from torch.func import grad, vmap

import fimvar


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("index", [0, 1, 3])
def test_hidden_fisher_matches_enumeration(family, index):
    case = make_case("mlp-sigmoid-softplus", family, inputs=3, seed=6)
    model = case.model
    head, tail = model[: index + 1], model[index + 1:]
    draws = 4
    with torch.no_grad():
        labels = fimvar.sample_labels(family, model(case.x), draws, seed=2)
    fisher, estimate, v1 = [], [], []
    for x1, ys_drawn in zip(case.x, labels, strict=True):
        hidden = head(x1[None])[0].detach()

        def loglik(z, y):
            return log_likelihood(family, tail(z[None])[0], y)

        ys, probs = support(family, tail(hidden[None])[0].detach())
        scores = vmap(grad(loglik), in_dims=(None, 0))(hidden, ys)
        f = torch.einsum("s,si,sj->ij", probs, scores, scores)
        fisher.append(f)
        v1.append(probs @ (scores**2 - torch.diagonal(f)) ** 2)
        drawn = vmap(grad(loglik), in_dims=(None, 0))(hidden, ys_drawn.double())
        estimate.append(drawn.T @ drawn / draws)
    result = fimvar.hidden_fisher(model, case.x, [str(index)], family, samples=draws, seed=2)[str(index)]
    expected = torch.stack(fisher).mean(0)
    assert_close(result.fisher, expected, f"hidden fisher [{family}]")
    assert_close(result.fisher_diagonal, torch.diagonal(expected), f"hidden fisher [{family}]")
    assert_close(result.estimate, torch.stack(estimate).mean(0), f"hidden estimate [{family}]")
    assert_close(result.v1_diagonal, torch.stack(v1).mean(0), f"hidden v1 [{family}]")
    diagonals = torch.stack([torch.diagonal(f) for f in fisher])
    assert_close(result.input_var_diagonal, diagonals.var(0), f"hidden input var [{family}]",
                 floor=1e-3 * float(expected.abs().max()) ** 2)


def test_unknown_module_is_a_clear_error():
    case = make_case("mlp-tanh", "categorical")
    with pytest.raises(fimvar.FimvarError, match="unknown module"):
        fimvar.hidden_fisher(case.model, case.x, ["7"])
