"""Extreme values of quartic forms on the unit sphere ("tensor eigenvalues", docs/theory.md §5).

``λ̃_min(M) = inf_{‖u‖=1} u⊗4·M`` and ``λ̃_max(M) = sup_{‖u‖=1} u⊗4·M`` have no closed form
in general. They are found per input by multi-start Riemannian ascent:

1. the form is evaluated on a fixed set of candidate directions (basis vectors, normalised sums
   and differences of pairs of basis vectors for T ≤ 12, seeded random directions);
2. the best ``keep`` candidates of every problem start an ascent on the sphere: each moves along
   the great circle of its Riemannian gradient by an angle that grows after an improvement and
   halves after a failure, so every start improves monotonically to a critical point;
3. the best value over the starts is returned.

Several problems (e.g. max and min of M and of K) run as one batch. The forms are callables on
batched directions ``(n, T, R) → (n, R)``, built from the same family contractions that the
estimators use, so no T⁴ tensor is formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fimvar.families import ExponentialFamily

#: a form: ``(h, v_1, …, v_k) ↦ values``, with ``h`` the ``(n, T)`` outputs of the inputs and each
#: ``v_j`` of shape ``(n, T, R)``; returns ``(n, R)``
Form = Callable[..., torch.Tensor]

#: seed of the random candidate directions; fixed so that results are reproducible
START_SEED = 2_147_483_647


@dataclass
class SphereProblem:
    """``sup`` (or ``inf`` when ``minimize``) of ``form(h, v_1, …, v_k)`` over unit vectors."""

    form: Form
    variables: int = 1
    minimize: bool = False

    def objective(self, h: torch.Tensor, *variables: torch.Tensor) -> torch.Tensor:
        value = self.form(h, *variables)
        return -value if self.minimize else value


def candidate_directions(width: int, random: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Unit candidate directions of shape ``(T, R)``."""
    eye = torch.eye(width, dtype=dtype, device=device)
    columns = [eye]
    if 2 <= width <= 12:
        a, b = torch.triu_indices(width, width, offset=1, device=device)
        columns += [(eye[:, a] + eye[:, b]) / 2**0.5, (eye[:, a] - eye[:, b]) / 2**0.5]
    generator = torch.Generator(device="cpu").manual_seed(START_SEED)
    noise = torch.randn(width, random, generator=generator, dtype=dtype).to(device)
    columns.append(noise / noise.norm(dim=0, keepdim=True))
    return torch.cat(columns, dim=1)


def _value_and_gradient(objective: Form, h: torch.Tensor, variables: list[torch.Tensor]):
    with torch.enable_grad():
        leaves = [v.detach().requires_grad_(True) for v in variables]
        value = objective(h, *leaves)
        grads = torch.autograd.grad(value.sum(), leaves)
    return value.detach(), [g.detach() for g in grads]


def ascend(
    objective: Form, h: torch.Tensor, starts: list[torch.Tensor], iterations: int = 200,
    tolerance: float = 1e-14,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Monotone Riemannian ascent of ``objective(h, …)`` from every start ``(n, T, R)``.

    Inputs whose values have all stopped changing (relative ``tolerance`` over 10 iterations)
    leave the active set, so the cost follows the slowest inputs only for those inputs.
    Returns the final values ``(n, R)`` and points.
    """
    variables = [s.clone() for s in starts]
    value, grads = _value_and_gradient(objective, h, variables)
    step = torch.full_like(value, 0.5)
    active = torch.arange(h.shape[0], device=h.device)
    checkpoint = value.clone()
    for iteration in range(iterations):
        part = [v[active] for v in variables]
        part_grads = [g[active] for g in grads]
        part_value, part_step = value[active], step[active]
        tangents = [g - (g * v).sum(1, keepdim=True) * v for g, v in zip(part_grads, part, strict=True)]
        norm = torch.sqrt(sum((t**2).sum(1) for t in tangents)).clamp_min(1e-300)
        angle = part_step[:, None, :]
        candidates = []
        for v, t in zip(part, tangents, strict=True):
            moved = torch.cos(angle) * v + torch.sin(angle) * t / norm[:, None, :]
            candidates.append(moved / moved.norm(dim=1, keepdim=True))
        cand_value, cand_grads = _value_and_gradient(objective, h[active], candidates)
        accept = cand_value > part_value
        keep = accept[:, None, :]
        for v, c in zip(variables, candidates, strict=True):
            v[active] = torch.where(keep, c, v[active])
        for g, cg in zip(grads, cand_grads, strict=True):
            g[active] = torch.where(keep, cg, g[active])
        value[active] = torch.where(accept, cand_value, part_value)
        step[active] = torch.where(accept, (part_step * 1.5).clamp_max(1.0), part_step * 0.5)
        if iteration % 10 == 9:
            moving = ((value[active] - checkpoint[active]).abs()
                      > tolerance * value[active].abs() + 1e-300).any(dim=1)
            checkpoint[active] = value[active]
            active = active[moving]
            if active.numel() == 0:
                break
    return value, variables


def sphere_extrema(
    problems: Sequence[SphereProblem],
    h: torch.Tensor,
    *,
    keep: int = 6,
    random: int = 256,
    iterations: int = 200,
) -> list[torch.Tensor]:
    """Solve several sphere problems for the ``n`` inputs of ``h`` (n, T) at once; one ``(n,)``
    tensor each."""
    n, width = h.shape
    candidates = candidate_directions(width, random, h.dtype, h.device)
    count = candidates.shape[1]
    keep = min(keep, count)
    starts_per_problem = []
    for problem in problems:
        # variable j of candidate r is the candidate direction (r + j) mod R
        variables = [torch.roll(candidates, shifts=-j, dims=1)[None].expand(n, -1, -1)
                     for j in range(problem.variables)]
        with torch.no_grad():
            scores = problem.objective(h, *variables)
        top = scores.topk(keep, dim=1).indices  # (n, keep)
        chosen = [torch.gather(v, 2, top[:, None, :].expand(-1, width, -1)) for v in variables]
        starts_per_problem.append(chosen)
    most = max(p.variables for p in problems)
    # pad every problem to the same number of variables so that one ascent runs them all
    stacked = []
    for j in range(most):
        stacked.append(torch.cat([
            chosen[j] if j < len(chosen) else chosen[0] for chosen in starts_per_problem
        ], dim=2))

    def objective(rows_h: torch.Tensor, *variables: torch.Tensor) -> torch.Tensor:
        values = []
        for index, problem in enumerate(problems):
            part = [v[:, :, index * keep:(index + 1) * keep] for v in variables[: problem.variables]]
            values.append(problem.objective(rows_h, *part))
        return torch.cat(values, dim=1)

    value, _ = ascend(objective, h, stacked, iterations)
    results = []
    for index, problem in enumerate(problems):
        best = value[:, index * keep:(index + 1) * keep].max(dim=1).values
        results.append(-best if problem.minimize else best)
    return results


#: the four tensor eigenvalues of the bounds (docs/theory.md §5.5)
EXTREMA = ("m_min", "m_max", "k_min", "k_max")


def tensor_extrema(family: ExponentialFamily, h: torch.Tensor) -> dict[str, torch.Tensor]:
    """``λ̃_min/max(M)`` and ``λ̃_min/max(K)`` per input (``m_min, m_max, k_min, k_max``, each
    ``(n,)``): the family's closed forms where it has them, the sphere ascent for the others."""
    found = dict(family.known_tensor_extrema(h))
    problems = {
        "m_min": SphereProblem(family.fourth_variance, minimize=True),
        "m_max": SphereProblem(family.fourth_variance),
        "k_min": SphereProblem(family.kurtosis_form, minimize=True),
        "k_max": SphereProblem(family.kurtosis_form),
    }
    missing = [key for key in EXTREMA if key not in found]
    if missing:
        found.update(zip(missing, sphere_extrema([problems[k] for k in missing], h), strict=True))
    return {key: found[key] for key in EXTREMA}
