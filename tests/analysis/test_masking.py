"""Padding positions left out (fimvar.analysis.masking): an ``attention_mask`` or ``-100`` labels
give the numbers of the same sequences analysed unpadded, one by one."""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import make_case
from torch import nn

import fimvar


class MaskedLM(nn.Module):
    """The catalogue's causal LM taking ``(input_ids, attention_mask)``: causal attention makes a
    position's output independent of the padding after it, so the mask only marks positions."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids)


LENGTHS = (3, 2, 1, 3)


def padded_batch():
    case = make_case("causal-lm", "categorical", inputs=len(LENGTHS))
    mask = torch.zeros(len(LENGTHS), 3, dtype=torch.long)
    for i, length in enumerate(LENGTHS):
        mask[i, :length] = 1
    return MaskedLM(case.model), case.x, mask, case.labels


def one_by_one(model, ids, labels=None):
    """Σ over inputs of each unpadded sequence's exact quantities, divided by the count."""
    totals = {}
    for i, length in enumerate(LENGTHS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fimvar.analyze(model.lm, ids[i:i + 1, :length], "categorical", samples=1, bounds=False,
                               labels=None if labels is None else labels[i:i + 1, :length])
        for quantity in ("fisher", "v1", "v2", "c12") + (("empirical",) if labels is not None else ()):
            for name, value in getattr(r, quantity).items():
                totals[quantity, name] = totals.get((quantity, name), 0) + value / len(LENGTHS)
    return totals


def test_attention_mask_leaves_padding_out():
    model, ids, mask, _ = padded_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(model, {"input_ids": ids, "attention_mask": mask}, "categorical", samples=1)
        fisher = fimvar.fisher_diagonal(model, {"input_ids": ids, "attention_mask": mask}, "categorical")
    expected = one_by_one(model, ids)
    for (quantity, name), value in expected.items():
        torch.testing.assert_close(getattr(result, quantity)[f"lm.{name}"], value, rtol=1e-10, atol=1e-14)
        if quantity == "fisher":
            torch.testing.assert_close(fisher[f"lm.{name}"], value, rtol=1e-10, atol=1e-14)
    assert result.metadata["masked_positions"] == sum(3 - n for n in LENGTHS)
    assert all(bound.holds() for bound in result.bounds.values())


def test_ignored_labels_leave_their_positions_out():
    model, ids, _, labels = padded_batch()
    labels = labels.clone()
    for i, length in enumerate(LENGTHS):
        labels[i, length:] = -100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(model.lm, ids, "categorical", samples=1, labels=labels)
        fisher = fimvar.fisher_diagonal(model.lm, ids, "categorical", labels=labels)
    expected = one_by_one(model, ids, labels)
    for (quantity, name), value in expected.items():
        torch.testing.assert_close(getattr(result, quantity)[name], value, rtol=1e-10, atol=1e-14)
        if quantity == "fisher":
            torch.testing.assert_close(fisher[name], value, rtol=1e-10, atol=1e-14)


def test_a_mask_of_other_positions_is_refused():
    model, ids, _, _ = padded_batch()
    with pytest.raises(fimvar.FimvarError, match="attention_mask has 2 positions"):
        fimvar.analyze(model, {"input_ids": ids, "attention_mask": torch.ones(4, 2, dtype=torch.long)})


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("how", ["attention_mask", "labels"])
def test_streamed_graph_analysis_leaves_padding_out(how, second_order):
    """The graph engine without bounds streams its layers (docs/theory.md §14.3), a first-order
    analysis and one with probes alike: the exact quantities (Fisher, v1, the empirical Fisher) of
    a padded batch equal those of the unpadded sequences one by one (autodiff), to 1e-10; the
    probes see the same mask."""
    model, ids, mask, labels = padded_batch()
    labels = labels.clone()
    for i, length in enumerate(LENGTHS):
        labels[i, length:] = -100
    data = {"input_ids": ids, "attention_mask": mask} if how == "attention_mask" else ids
    analysed = model if how == "attention_mask" else model.lm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(analysed, data, "categorical", samples=2, bounds=False, engine="graph",
                                second_order=second_order, labels=None if how == "attention_mask" else labels,
                                memory_budget=2**16)
    prefix = "lm." if how == "attention_mask" else ""
    expected = one_by_one(model, ids, None if how == "attention_mask" else labels)
    assert result.metadata["masked_positions"] == sum(3 - n for n in LENGTHS)
    for (quantity, name), value in expected.items():
        if quantity in ("v2", "c12"):
            continue  # exact above, estimated by probes here (their own tests: test_probes.py)
        torch.testing.assert_close(getattr(result, quantity)[prefix + name], value, rtol=1e-10, atol=1e-14)
    if second_order:
        assert all(torch.isfinite(v).all() for v in result.v2.values())
