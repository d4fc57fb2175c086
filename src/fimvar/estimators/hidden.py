"""Per-chunk sums of the hidden-layer Fisher ([A], docs/theory.md §6).

For a module whose output is ``h_l`` (per input), ``B_l = ∂h/∂h_l`` (T × d) and

    I(h_l | x) = B_lᵀ I(h) B_l          estimated by  B_lᵀ [(1/M) Σ_m ε_m ε_mᵀ] B_l

with the label draws of every other mode. Each diagonal entry of the estimate is a mean of
``(b_j·ε)²``, whose single-draw variance is ``Var[(b_j·ε)²]`` (§3.1 with u = b_j).
"""

from __future__ import annotations

import torch

from fimvar.families import ExponentialFamily

#: hidden widths up to which the full d×d matrices are kept
MAX_FULL_WIDTH = 4096


def per_input_diagonal(family: ExponentialFamily, h: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
    """``diag I(h_l|x) = b_jᵀ I(h) b_j`` for every input and unit: ``(n, d)``; ``jacobian`` is
    ``B_l`` flattened to ``(n, T, d)``."""
    return family.quadratic(h, jacobian)


def chunk_sums(family: ExponentialFamily, h: torch.Tensor, jacobian: torch.Tensor,
               draws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the chunk's inputs of the estimate's diagonal, its single-draw variance and,
    for ``d ≤ MAX_FULL_WIDTH``, the d×d Fisher and estimate."""
    samples = draws.shape[1]
    scores = torch.einsum("nmt,ntd->nmd", draws, jacobian)
    sums = {
        "estimate_diagonal": (scores**2).mean(1).sum(0),
        "v1_diagonal": family.fourth_variance(h, jacobian).sum(0),
    }
    if jacobian.shape[2] <= MAX_FULL_WIDTH:
        sums["fisher"] = torch.einsum("nad,nab,nbe->de", jacobian, family.fisher(h), jacobian)
        sums["estimate"] = torch.einsum("nmd,nme->de", scores, scores) / samples
    return sums
