"""The accumulator's sums updated in their own memory: only tensors it made and never handed out,
with the same values as new tensors, and a chunk interrupted after such an update refused
everywhere afterwards (no result, no checkpoint) instead of being half counted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fimvar
from fimvar.analysis.accumulator import Accumulator, parameter
from fimvar.analysis.sampled import SampledAnalysis
from fimvar.errors import FimvarError

KEY, TOTAL, M2 = parameter("w", "within"), parameter("w", "score"), parameter("w", "score_m2")


def _chunks(count: int = 4, size: int = 3):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(size, 5, generator=generator, dtype=torch.float64) for _ in range(count)]


def _feed(accumulator: Accumulator, chunks, in_place: bool) -> None:
    for values in chunks:
        mean = values.mean(0)
        accumulator.add(KEY, values.square().sum(0), in_place=in_place)
        accumulator.add_moments(TOTAL, M2, values.shape[0], values.sum(0),
                                (values - mean).square().sum(0), in_place=in_place)
        accumulator.finish_chunk(values.shape[0])


def test_in_place_sums_equal_new_tensors_and_keep_their_memory():
    chunks = _chunks()
    fresh, reused = Accumulator(), Accumulator()
    _feed(fresh, chunks[:1], in_place=False)
    _feed(reused, chunks[:1], in_place=True)
    pointers = {k: reused._sums[k].data_ptr() for k in (KEY, TOTAL, M2)}
    _feed(fresh, chunks[1:], in_place=False)
    _feed(reused, chunks[1:], in_place=True)
    assert {k: reused._sums[k].data_ptr() for k in (KEY, TOTAL, M2)} == pointers
    every = torch.cat(chunks)
    for key, expected in ((KEY, every.square().sum(0)), (TOTAL, every.sum(0)),
                          (M2, (every - every.mean(0)).square().sum(0))):
        torch.testing.assert_close(reused.sums[key], expected, rtol=1e-14, atol=0)
        assert torch.equal(reused.sums[key], fresh.sums[key])  # the same operations, in place


def test_tensors_handed_out_are_never_changed_afterwards():
    chunks = _chunks()
    accumulator = Accumulator()
    _feed(accumulator, chunks[:2], in_place=True)
    seen = accumulator.sums[KEY]  # a reader may keep it
    before = seen.clone()
    _feed(accumulator, chunks[2:3], in_place=True)
    assert torch.equal(seen, before) and accumulator._sums[KEY] is not seen
    copy = accumulator.copy()  # shared tensors: neither side writes into them
    shared = copy._sums[TOTAL]
    frozen = shared.clone()
    _feed(accumulator, chunks[3:], in_place=True)
    _feed(copy, chunks[3:], in_place=True)
    assert torch.equal(shared, frozen)
    torch.testing.assert_close(accumulator.sums[TOTAL], copy.sums[TOTAL], rtol=0, atol=0)
    state, _ = accumulator.state_dict()  # a checkpoint's tensors are handed out too
    saved = {k: v.clone() for k, v in state.items()}
    _feed(accumulator, chunks[:1], in_place=True)
    assert all(torch.equal(state[k], saved[k]) for k in state)


def test_a_tensor_not_handed_over_is_copied():
    """Without ``in_place`` the first chunk's tensor is copied: the caller may change it, or give
    the same tensor for two sums, and an in-place update of one sum leaves the other alone."""
    accumulator = Accumulator()
    zero = torch.zeros(5, dtype=torch.float64)
    accumulator.add(KEY, zero)
    accumulator.add_moments(TOTAL, M2, 3, zero, zero)
    zero += 7.0
    accumulator.finish_chunk(3)
    accumulator.add(KEY, torch.ones(5, dtype=torch.float64), in_place=True)
    assert torch.equal(accumulator._sums[KEY], torch.ones(5, dtype=torch.float64))
    assert torch.equal(accumulator._sums[TOTAL], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(accumulator._sums[M2], torch.zeros(5, dtype=torch.float64))
    assert len({accumulator._sums[k].data_ptr() for k in (KEY, TOTAL, M2)}) == 3


def test_restore_after_in_place_update_refuses_every_later_use():
    chunks = _chunks()
    accumulator = Accumulator()
    _feed(accumulator, chunks[:1], in_place=True)
    snapshot = accumulator.snapshot()
    accumulator.add(KEY, chunks[1].sum(0))  # a new tensor: restorable
    assert accumulator.restore(snapshot) and torch.equal(accumulator.sums[KEY], chunks[0].square().sum(0))
    _feed(accumulator, chunks[1:2], in_place=False)  # make them owned again
    snapshot = accumulator.snapshot()
    accumulator.add(KEY, chunks[2].sum(0), in_place=True)
    assert not accumulator.restore(snapshot)
    for use in (lambda: accumulator.sums, lambda: accumulator.state_dict(), lambda: accumulator.has(KEY),
                lambda: accumulator.snapshot(), lambda: accumulator.add(KEY, chunks[0].sum(0)),
                lambda: accumulator.owners("parameter", "score")):
        with pytest.raises(FimvarError, match="interrupted this analysis"):
            use()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_sampled_analysis_interrupted_mid_chunk_refuses_its_result(monkeypatch):
    """A chunk that fails after its first parameter's sums were merged in place: the error is
    raised, and the analysis (result, checkpoint, more inputs) refuses to go on."""
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    analysis = SampledAnalysis(_model(), samples=2, memory_budget="2kB")
    original = type(analysis)._add_block
    calls = []

    def failing(self, block, n):
        calls.append(block.name)
        if len(calls) == 6:  # the second chunk, after its first block
            raise RuntimeError("simulated out of memory")
        return original(self, block, n)

    monkeypatch.setattr(type(analysis), "_add_block", failing)
    with pytest.raises(FimvarError, match="simulated out of memory"):
        analysis.update(x)
    for use in (analysis.result, lambda: analysis.update(x), analysis.state_dict):
        with pytest.raises(FimvarError, match="interrupted this analysis"):
            use()


def test_failure_before_any_in_place_update_leaves_the_analysis_as_it_was(monkeypatch):
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = fimvar.analyze_sampled(_model(), x[:4], samples=2)
    analysis = SampledAnalysis(_model(), samples=2)
    analysis.update(x[:4])
    original = type(analysis).update_chunk

    def interrupted(self, *args):  # Ctrl-C before the chunk adds anything
        raise KeyboardInterrupt

    monkeypatch.setattr(type(analysis), "update_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        analysis.update(x[4:])
    monkeypatch.setattr(type(analysis), "update_chunk", original)
    result = analysis.result()
    assert analysis.count == 4
    for name in reference.i1:
        assert torch.equal(result.i1[name], reference.i1[name])
        assert torch.equal(result.between[name], reference.between[name])
