"""Fisher information of hidden representations ([A], theory.md §6).

For a module whose output is ``h_l`` (per input), ``B_l = ∂h/∂h_l`` (T × d) and

    I(h_l | x) = B_lᵀ I(h) B_l          estimated by  B_lᵀ [(1/M) Σ_m ε_m ε_mᵀ] B_l

with the same label draws as :func:`fimvar.analyze`. Each diagonal entry of the estimate is a
mean of ``(b_j·ε)²``, whose single-draw variance is ``Var[(b_j·ε)²]`` (theory §3 with u = b_j).
``B_l`` is obtained by reverse-mode differentiation with respect to a zero perturbation added to
the module's output by a forward hook.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev, vmap

from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.inputs import batches, check_inputs, check_samples, family_outputs, model_mode_context
from fimvar.sampling import uniforms

#: hidden widths up to which the full d×d matrices are kept
MAX_FULL_WIDTH = 4096


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise FimvarError(
            f"unknown module {name!r}; choose among {[n for n in modules if n]}"
        )
    return modules[name]


def _output_shape(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Size:
    captured = {}

    def hook(_, __, output):
        if not isinstance(output, torch.Tensor):
            raise FimvarError(f"module {type(module).__name__} does not return a single tensor")
        captured["shape"] = output.shape[1:]

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    return captured["shape"]


def output_jacobians(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``∂h/∂h_l`` for every named module: ``(n, T, *shape_l)`` per module, float64."""
    out = {}
    for name in names:
        module = _module(model, name)
        shape = _output_shape(model, module, x)

        def perturbed(delta: torch.Tensor, x1: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
            handle = module.register_forward_hook(lambda _, __, output: output + delta)
            try:
                return model(x1.unsqueeze(0)).reshape(-1)
            finally:
                handle.remove()

        zero = torch.zeros(shape, dtype=x.dtype if x.is_floating_point() else torch.float32,
                           device=x.device)
        with torch.no_grad():  # torch.func differentiates inside; no graph to the parameters
            out[name] = vmap(jacrev(perturbed), in_dims=(None, 0))(zero, x).to(torch.float64)
    return out


@dataclass
class HiddenFisher:
    """Fisher information of one hidden representation, averaged over inputs.

    Attributes:
        fisher_diagonal: ``E_x diag I(h_l|x)`` (d,).
        estimate_diagonal: the sampled estimate's diagonal (d,).
        v1_diagonal: single-draw variance of each diagonal entry of the estimate, averaged
            over inputs (d,).
        input_var_diagonal: unbiased variance over inputs of ``diag I(h_l|x)`` (d,).
        fisher, estimate: the full d×d matrices when d ≤ ``MAX_FULL_WIDTH``, else ``None``.
    """

    module: str
    shape: torch.Size
    num_inputs: int
    samples: int
    fisher_diagonal: torch.Tensor
    estimate_diagonal: torch.Tensor
    v1_diagonal: torch.Tensor
    input_var_diagonal: torch.Tensor
    fisher: torch.Tensor | None = None
    estimate: torch.Tensor | None = None


def hidden_fisher(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    modules: Sequence[str],
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
) -> dict[str, HiddenFisher]:
    """Fisher information of the outputs of the named modules (e.g. ``["0", "2"]``).

    Uses the label draws of :func:`fimvar.analyze` with the same ``seed``.
    """
    family = get_family(family)
    samples = check_samples(samples)
    if isinstance(modules, str):
        modules = [modules]
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    shapes: dict[str, torch.Size] = {}
    count = 0
    with model_mode_context(model):
        for batch, _ in batches(x, None):
            check_inputs(model, batch)
            h = family_outputs(model, batch, family)
            index = torch.arange(count, count + batch.shape[0])
            noise = uniforms(seed, index, samples, family.uniform_width(h.shape[1]), h.device)
            eps = family.centered(h, family.sample(h, noise))  # (n, M, T)
            fisher_h = family.fisher(h)
            for name, jac in output_jacobians(model, batch, modules).items():
                shapes[name] = jac.shape[2:]
                b = jac.flatten(2)  # (n, T, d)
                diagonal = family.quadratic(h, b)
                scores = torch.einsum("nmt,ntd->nmd", eps, b)
                chunk = {
                    "fisher_diagonal": diagonal.sum(0),
                    "fisher_diagonal_sq": (diagonal**2).sum(0),
                    "estimate_diagonal": (scores**2).mean(1).sum(0),
                    "v1_diagonal": family.fourth_variance(h, b).sum(0),
                }
                if b.shape[2] <= MAX_FULL_WIDTH:
                    chunk["fisher"] = torch.einsum("nad,nab,nbe->de", b, fisher_h, b)
                    chunk["estimate"] = torch.einsum("nmd,nme->de", scores, scores) / samples
                for key, value in chunk.items():
                    sums[name][key] = sums[name][key] + value if key in sums[name] else value
            count += batch.shape[0]
    if count == 0:
        raise FimvarError("the data is empty: pass at least one input")
    results = {}
    for name, s in sums.items():
        mean = s["fisher_diagonal"] / count
        input_var = ((s["fisher_diagonal_sq"] - count * mean**2) / (count - 1) if count > 1
                     else torch.zeros_like(mean))
        results[name] = HiddenFisher(
            module=name, shape=shapes[name], num_inputs=count, samples=samples,
            fisher_diagonal=mean, estimate_diagonal=s["estimate_diagonal"] / count,
            v1_diagonal=s["v1_diagonal"] / count, input_var_diagonal=input_var.clamp_min(0.0),
            fisher=s["fisher"] / count if "fisher" in s else None,
            estimate=s["estimate"] / count if "estimate" in s else None,
        )
    return results
