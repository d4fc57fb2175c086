"""Positions left out of a per-position analysis (docs/theory.md §13).

A language model's batch is padded to one length; the padding positions are no part of the
likelihood. fimvar follows the two conventions of ``transformers``: with inputs given as a dict,
an ``attention_mask`` of shape ``(N, L)`` marks the positions that count (for a causal LM, its
outputs' positions are the inputs' positions); with per-position categorical data labels, a label
of ``-100`` leaves its position out. The masked log-likelihood ``Σ_t m_t log p(y_t|h_t)`` has the
derivatives ``m_t u_t`` and ``m_t w_t``, so masking multiplies the derivative rows of the left-out
positions by zero and is exact for every quantity.
"""

from __future__ import annotations

import dataclasses

import torch

from fimvar.analysis.packing import Packing
from fimvar.engine.base import ParameterDerivatives
from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily
from fimvar.families.positions import Positions

#: the label that leaves a position out (the ``ignore_index`` of ``transformers``)
IGNORED_LABEL = -100


def check_masking_labels(family: ExponentialFamily, labels: torch.Tensor | None, what: str) -> None:
    """For the analyses that draw their labels from the model (``what``: who says so): data labels
    are accepted only as the ``-100`` marks of a per-position categorical model's padding."""
    if labels is None:
        return
    if not (isinstance(family, Positions) and family.base.name == "categorical"
            and not labels.is_floating_point()):
        raise FimvarError(f"{what} takes its labels from the model: data labels only leave out the "
                          "positions of a per-position categorical model labelled -100; drop them "
                          "(labels=, or the labels of (inputs, labels) batches: give batches of inputs "
                          "only, e.g. DataLoader(TensorDataset(x)))")


def position_mask(family: ExponentialFamily, packing: Packing | None, x: torch.Tensor,
                  labels: torch.Tensor | None) -> torch.Tensor | None:
    """The positions that count, ``(n, L)`` bool, or ``None`` when all do."""
    if not isinstance(family, Positions):
        return None
    mask = None
    if packing is not None and packing.keys is not None and "attention_mask" in packing.keys:
        attention = packing.unpack(x)["attention_mask"]
        if attention.dim() == 2 and attention.shape[1] == family.positions:
            mask = attention != 0
        elif attention.numel() // attention.shape[0] != family.positions:
            raise FimvarError(
                f"the attention_mask has {attention.numel() // attention.shape[0]} positions per input "
                f"but the model returns {family.positions}; fimvar uses it to leave out padding "
                "positions, so it must mark the output positions")
    if labels is not None and family.base.name == "categorical" and not labels.is_floating_point():
        kept = labels != IGNORED_LABEL
        mask = kept if mask is None else mask & kept
    return mask


def _output_rows(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``(n, L)`` positions → ``(n, L·T)`` float64 weights of the output columns (0 or 1)."""
    return mask.to(torch.float64).repeat_interleave(width, dim=1)


def masked_derivatives(blocks: list[ParameterDerivatives], mask: torch.Tensor, width: int
                       ) -> list[ParameterDerivatives]:
    """The blocks with the derivative rows of left-out positions set to zero (blocks that share
    their tensors keep sharing them)."""
    rows = _output_rows(mask, width)[:, :, None]  # (n, L·T, 1)
    done: dict[int, torch.Tensor] = {}

    def masked(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in done:
            done[id(tensor)] = tensor * rows.to(tensor.dtype)
        return done[id(tensor)]

    return [dataclasses.replace(block, first=masked(block.first), second=masked(block.second))
            for block in blocks]


def masked_rows(values: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """``(n, L·T, …)`` with the rows of left-out positions set to zero (a square root of the
    Fisher, whose columns of those positions then vanish and are skipped)."""
    rows = _output_rows(mask, width).to(values.dtype)
    return values * rows.reshape(*rows.shape, *([1] * (values.dim() - 2)))


def masked_residuals(draws: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """Label residuals ``(n, M, L·T)`` with those of left-out positions set to zero (where the
    probes contract them with the outputs, docs/theory.md §14.1)."""
    return draws * _output_rows(mask, width)[:, None, :].to(draws.dtype)


def unmasked_labels(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Categorical labels with ``-100`` replaced by a valid class (its position is masked)."""
    if labels is None or labels.is_floating_point():
        return labels
    return labels.masked_fill(labels == IGNORED_LABEL, 0)
