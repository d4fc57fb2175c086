"""Full-matrix mode for small models: the P×P Fisher, Î1, Î2 and their entry-wise variances.

For one input, with ``J = ∂h/∂θ`` (T×P) and ``H_a = ∇²_θ h^a`` (P×P, a = 1…T):

    I(θ|x)         = Jᵀ I J                                           (theory §2)
    Î1 draw        = (Jᵀε)(Jᵀε)ᵀ              Î2 draw = Jᵀ I J − Σ_a ε_a H_a
    Var Î1_ij      = Var[(u_i·ε)(u_j·ε)]                              ([A] Thm 4)
    Var Î2_ij      = (∂²_ij h)ᵀ I (∂²_ij h)                           ([A] Thm 6)
    ‖Cov(Î1)‖_F²   = Σ M_abcd M_a'b'c'd' G_aa' G_bb' G_cc' G_dd',  G = J Jᵀ       (theory §3)
    ‖Cov(Î2)‖_F²   = tr(I H̃ I H̃),  H̃_αβ = ⟨H_α, H_β⟩_F                          (theory §3)

Bounds ([A] and [B] App. C), per input and then averaged over inputs:

    ‖Cov(Î1)‖_F ≤ ‖J‖_F⁴ ‖M‖_F            ‖Cov(Î2)‖_F ≤ (Σ_α ‖H_α‖_F²) ‖I‖_F
    Var Î1_ij ≤ ‖u_i‖² ‖u_j‖² γ̃_max(M)     Var Î2_ij ≤ ‖∂²_ij h‖² λ_max(I)

with ``γ̃_max(M) = sup_{‖a‖=‖b‖=1} Var[(a·ε)(b·ε)]``. The P⁴ covariance tensor is never formed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.inputs import (
    batches,
    check_inputs,
    check_samples,
    family_outputs,
    model_mode_context,
    trainable_parameters,
)
from fimvar.sampling import uniforms
from fimvar.tensor_eigen import SphereProblem, sphere_extrema
from fimvar.trace_bounds import covariance_frobenius

#: largest number of parameters the full-matrix mode accepts by default
MAX_FULL_PARAMETERS = 4096


@dataclass
class FullResult:
    """P×P results over the flat parameter vector (``named_parameters`` order; see
    :attr:`slices`). Variances are single-draw label variances averaged over inputs, like the
    diagonal mode's ``v1``/``v2``; :meth:`variance` gives the total for the run's design."""

    family: str
    samples: int
    num_inputs: int
    slices: dict[str, slice]
    shapes: dict[str, torch.Size]
    fisher: torch.Tensor
    i1: torch.Tensor
    i2: torch.Tensor
    v1: torch.Tensor
    v2: torch.Tensor
    input_var: torch.Tensor
    frobenius: dict[str, float] = field(default_factory=dict)
    offdiagonal_bounds: dict[str, torch.Tensor] = field(default_factory=dict)

    def variance(self, estimator: str = "i1") -> torch.Tensor:
        """Entry-wise total variance ``(input_var + v/M)/N`` of :attr:`i1` or :attr:`i2`."""
        if estimator not in ("i1", "i2"):
            raise FimvarError("estimator must be 'i1' or 'i2'")
        label = self.v1 if estimator == "i1" else self.v2
        return (self.input_var + label / self.samples) / self.num_inputs

    def block(self, matrix: torch.Tensor, first: str, second: str | None = None) -> torch.Tensor:
        """The block of a P×P matrix between two parameter tensors (flattened)."""
        second = first if second is None else second
        return matrix[self.slices[first], self.slices[second]]


def bilinear_fourth_max(family: ExponentialFamily, h: torch.Tensor) -> torch.Tensor:
    """``γ̃_max(M) = sup_{‖a‖=‖b‖=1} a^p b^q a^r b^s M_pqrs`` per input ([B] App. C)."""

    def form(rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Var[(a·ε)(b·ε)] for matching columns of a and b, via the moment tensors (T small)
        fourth = family.fourth_moment(rows)
        cross = torch.einsum("nar,nab,nbr->nr", a, family.fisher(rows), b)
        value = torch.einsum("nabcd,nar,nbr,ncr,ndr->nr", fourth, a, a, b, b)
        return value - cross**2

    (value,) = sphere_extrema([SphereProblem(form, variables=2)], h, random=64)
    return value


def analyze_full(
    model: nn.Module,
    x: torch.Tensor | Iterable,
    family: str | ExponentialFamily = "categorical",
    samples: int = 1,
    seed: int = 0,
    *,
    parameters: Iterable[str] | None = None,
    bounds: bool = True,
    max_parameters: int = MAX_FULL_PARAMETERS,
) -> FullResult:
    """Full P×P Fisher, Î1, Î2, entry-wise variances and Frobenius norms (small models).

    Args mirror :func:`fimvar.analyze`; ``bounds`` adds the entry-wise bounds of [B] App. C
    (their ``γ̃_max(M)`` needs an optimisation per input; the Frobenius norms and [A]'s bounds
    on them are always computed); ``max_parameters`` guards against P×P×T Hessians that do not
    fit in memory (use the diagonal mode for larger models).
    """
    family = get_family(family)
    samples = check_samples(samples)
    names = trainable_parameters(model, parameters)
    named = dict(model.named_parameters())
    total = sum(named[n].numel() for n in names)
    if total > max_parameters:
        raise FimvarError(
            f"full-matrix mode needs P×P matrices and T×P×P Hessians; this model has {total} "
            f"parameters (limit {max_parameters}); use fimvar.analyze for the diagonal, select "
            "fewer parameters with parameters=[...], or raise max_parameters"
        )
    slices, offset = {}, 0
    for name in names:
        slices[name] = slice(offset, offset + named[name].numel())
        offset += named[name].numel()
    frozen = {k: v.detach() for k, v in named.items() if k not in names}
    frozen.update({k: v.detach() for k, v in model.named_buffers()})
    flat = torch.cat([named[n].detach().reshape(-1) for n in names])

    def outputs_of(theta: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        params = {n: theta[slices[n]].reshape(named[n].shape) for n in names}
        return functional_call(model, (params, frozen), (x1.unsqueeze(0),)).reshape(-1)

    sums: dict[str, torch.Tensor] = {}
    count = 0
    with model_mode_context(model):
        for batch, _ in batches(x, None):
            check_inputs(model, batch)
            outputs = family_outputs(model, batch, family)
            # γ̃_max(M) of every input of the batch in one vectorised optimisation
            gamma = bilinear_fourth_max(family, outputs) if bounds else None
            for k, x1 in enumerate(batch):
                _accumulate_input(family, outputs_of, flat, x1, count, samples, seed,
                                  None if gamma is None else gamma[k], sums)
                count += 1
    if count == 0:
        raise FimvarError("the data is empty: pass at least one input")
    return _finish(sums, count, family, samples, slices, {n: named[n].shape for n in names})


def _accumulate_input(family, outputs_of, flat, x1, index, samples, seed, gamma, sums) -> None:
    h = outputs_of(flat, x1).detach().to(torch.float64)[None]  # (1, T)
    jac = jacrev(outputs_of)(flat, x1).to(torch.float64)  # (T, P)
    hessians = jacfwd(jacrev(outputs_of))(flat, x1).to(torch.float64)  # (T, P, P)
    fisher_h = family.fisher(h)[0]
    fisher = jac.T @ fisher_h @ jac
    noise = uniforms(seed, torch.tensor([index]), samples, family.uniform_width(h.shape[1]), h.device)
    eps = family.centered(h, family.sample(h, noise))[0]  # (M, T)
    scores = eps @ jac  # (M, P)
    # Welford update of the entry-wise input variance of I(θ|x)
    mean = sums.get("fisher_mean", torch.zeros_like(fisher))
    delta = fisher - mean
    sums["fisher_mean"] = mean + delta / (index + 1)
    previous_m2 = sums.get("fisher_m2", torch.zeros_like(fisher))
    sums["fisher_m2"] = previous_m2 + delta * (fisher - sums["fisher_mean"])
    per_input = {
        "fisher": fisher,
        "i1": scores.T @ scores,
        "i2": samples * fisher - torch.einsum("ma,aij->ij", eps, hessians),
        "v1": family.pair_fourth_variance(h, jac[None], jac[None])[0],
        "v2": torch.einsum("ab,aij,bij->ij", fisher_h, hessians, hessians),
    }
    gram = (jac @ jac.T)[None]
    fourth = family.fourth_central_tensor(h)
    hessian_gram = torch.einsum("aij,bij->ab", hessians, hessians)
    per_input["frobenius_i1"] = covariance_frobenius(fourth, gram)[0]
    per_input["frobenius_i2"] = torch.trace(fisher_h @ hessian_gram @ fisher_h @ hessian_gram
                                            ).clamp_min(0.0).sqrt()
    per_input["frobenius_i1_bound"] = torch.trace(gram[0]) ** 2 * fourth.pow(2).sum().sqrt()
    per_input["frobenius_i2_bound"] = torch.trace(hessian_gram) * fisher_h.pow(2).sum().sqrt()
    if gamma is not None:
        norms = jac.pow(2).sum(0)
        per_input["appC_v1_upper"] = gamma * norms[:, None] * norms[None]
        lam_max = torch.linalg.eigvalsh(fisher_h)[-1]
        per_input["appC_v2_upper"] = lam_max * hessians.pow(2).sum(0)
    for key, value in per_input.items():
        sums[key] = sums[key] + value if key in sums else value.clone()


def _finish(sums, count, family, samples, slices, shapes) -> FullResult:
    mean = {k: v / count for k, v in sums.items()}
    input_var = sums["fisher_m2"] / (count - 1) if count > 1 else torch.zeros_like(sums["fisher"])
    frobenius = {k: float(mean[k]) for k in ("frobenius_i1", "frobenius_i2", "frobenius_i1_bound",
                                              "frobenius_i2_bound") if k in mean}
    offdiagonal = {k: mean[k] for k in ("appC_v1_upper", "appC_v2_upper") if k in mean}
    return FullResult(
        family=family.name, samples=samples, num_inputs=count, slices=slices, shapes=shapes,
        fisher=mean["fisher"], i1=mean["i1"] / samples, i2=mean["i2"] / samples,
        v1=mean["v1"], v2=mean["v2"], input_var=input_var.clamp_min(0.0), frobenius=frobenius,
        offdiagonal_bounds=offdiagonal,
    )
