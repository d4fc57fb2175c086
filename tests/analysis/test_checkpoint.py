"""Checkpoint and resume in the Python API: an interrupted run resumed from its checkpoint gives
bit-identical results; a checkpoint from different arguments is refused."""

from __future__ import annotations

import pytest
import torch
from cases import make_case

import fimvar
from fimvar import FimvarError
from fimvar.analysis import checkpoint
from fimvar.analysis.diagonal import Analysis
from fimvar.report.tensors import tensors_of


def setup_run():
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=40, dtype=torch.float32)
    return case.model, case.x, case.labels


def assert_identical(a, b) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert a.num_inputs == b.num_inputs
    assert a.group_exact == b.group_exact


def interrupt_after(monkeypatch, blocks: int) -> None:
    original = Analysis.update
    calls = {"n": 0}

    def update(self, x, labels=None):
        if calls["n"] == blocks:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, x, labels)

    monkeypatch.setattr(Analysis, "update", update)


def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch):
    model, x, y = setup_run()
    options = dict(family="categorical", samples=3, labels=y, batch_size=8)
    reference = fimvar.analyze(model, x, **options)
    path = tmp_path / "run.ckpt"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fimvar.analyze(model, x, checkpoint=path, checkpoint_interval=0, **options)
    monkeypatch.undo()
    _, meta = checkpoint.load(path)
    assert meta["count"] == 24
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left behind
    resumed = fimvar.analyze(model, x, checkpoint=path, **options)
    assert_identical(reference, resumed)
    # the finished checkpoint holds every input: a rerun does no work and gives the same result
    interrupt_after(monkeypatch, 0)
    again = fimvar.analyze(model, x, checkpoint=path, **options)
    assert_identical(reference, again)


def test_resume_with_batches_from_an_iterable(tmp_path, monkeypatch):
    model, x, y = setup_run()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)]
    reference = fimvar.analyze(model, batches, "categorical", samples=2)
    path = tmp_path / "iter.ckpt"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fimvar.analyze(model, batches, "categorical", samples=2, checkpoint=path, checkpoint_interval=0)
    monkeypatch.undo()
    resumed = fimvar.analyze(model, batches, "categorical", samples=2, checkpoint=path)
    assert_identical(reference, resumed)


@pytest.mark.parametrize("change,match", [
    ("samples", "samples"),
    ("seed", "seed"),
    ("family", "family"),
    ("data", "data"),
    ("weights", "model"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, change, match):
    model, x, y = setup_run()
    path = tmp_path / "run.ckpt"
    fimvar.analyze(model, x, "categorical", samples=2, checkpoint=path)
    kwargs = dict(family="categorical", samples=2, seed=0)
    if change == "samples":
        kwargs["samples"] = 3
    elif change == "seed":
        kwargs["seed"] = 1
    elif change == "family":
        kwargs["family"] = "bernoulli"
    elif change == "data":
        x = x + 1
    else:
        with torch.no_grad():
            model[0].weight.add_(0.1)
    with pytest.raises(FimvarError, match=f"different.*{match}"):
        fimvar.analyze(model, x, checkpoint=path, **kwargs)


def test_unreadable_checkpoint(tmp_path):
    model, x, _ = setup_run()
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FimvarError, match="not a readable fimvar checkpoint"):
        fimvar.analyze(model, x, "categorical", checkpoint=path)
    with pytest.raises(FimvarError, match="cannot write the checkpoint"):
        fimvar.analyze(model, x, "categorical", checkpoint=path / "inside-a-file.ckpt")


def test_state_dict_round_trip():
    model, x, _ = setup_run()
    first = Analysis(model, "categorical", samples=2)
    first.update(x[:16])
    second = Analysis(model, "categorical", samples=2)
    second.load_state_dict(first.state_dict())
    first.update(x[16:])
    second.update(x[16:])
    assert_identical(first.result(), second.result())
    other = Analysis(model, "categorical", samples=5)
    with pytest.raises(FimvarError, match="samples"):
        other.load_state_dict(first.state_dict())
