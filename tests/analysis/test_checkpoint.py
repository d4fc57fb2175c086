"""Checkpoint and resume in the Python API: an interrupted run resumed from its checkpoint gives
bit-identical results; a checkpoint from different arguments or other data, a corrupted one and an
unwritable path are refused; a failing save warns and keeps the result; leftovers of killed writes
are removed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import warnings

import pytest
import torch
from cases import make_case
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import fimvar
from fimvar import FimvarError
from fimvar.analysis import checkpoint
from fimvar.analysis.diagonal import Analysis
from fimvar.analysis.sampled import SampledAnalysis
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


@pytest.mark.parametrize("second_order", [True, False])
def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch, second_order):
    """Killed after 3 of 5 batches, the run resumes to the uninterrupted result bit for bit (a
    first-order run, second_order=False, too, and stays first-order)."""
    model, x, y = setup_run()
    options = dict(family="categorical", samples=3, labels=y, batch_size=8, second_order=second_order)
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
    assert resumed.second_order is second_order
    assert_identical(reference, resumed)
    # the finished checkpoint holds every input: a rerun does no work and gives the same result
    interrupt_after(monkeypatch, 0)
    again = fimvar.analyze(model, x, checkpoint=path, **options)
    assert_identical(reference, again)


def test_sampled_analysis_resumes_bit_identical(tmp_path, monkeypatch):
    """The sampled analysis (its sums updated in place, Î2's too) interrupted after 3 blocks and
    resumed from its checkpoint: the same tensors bit for bit, spread sums included."""
    model, x, _ = setup_run()
    options = dict(samples=2, batch_size=8, i2=True)
    reference = fimvar.analyze_sampled(model, x, "categorical", **options)
    path = tmp_path / "sampled.ckpt"
    original, calls = SampledAnalysis.update, {"n": 0}

    def update(self, x, labels=None, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, x, labels, **kwargs)

    monkeypatch.setattr(SampledAnalysis, "update", update)
    with pytest.raises(KeyboardInterrupt):
        fimvar.analyze_sampled(model, x, "categorical", checkpoint=path, checkpoint_interval=0, **options)
    monkeypatch.undo()
    assert checkpoint.load(path)[1]["count"] == 24
    resumed = fimvar.analyze_sampled(model, x, "categorical", checkpoint=path, **options)
    for q in ("i1", "v1", "between", "i2", "v2", "between_i2"):
        for name, value in getattr(reference, q).items():
            assert torch.equal(getattr(resumed, q)[name], value), (q, name)
    for field in ("label_noise", "label_noise_outer", "pair", "pair_outer"):
        for which in ("spreads", "spreads_i2"):
            mine, theirs = getattr(resumed, which), getattr(reference, which)
            assert torch.equal(getattr(mine, field), getattr(theirs, field)), (which, field)


def test_resume_with_batches_from_an_iterable(tmp_path, monkeypatch):
    model, x, y = setup_run()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)]
    reference = fimvar.analyze(model, batches, "categorical", samples=2)  # fed batch by batch
    path = tmp_path / "iter.ckpt"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fimvar.analyze(model, batches, "categorical", samples=2, checkpoint=path, checkpoint_interval=0,
                       batch_size=8)
    monkeypatch.undo()
    resumed = fimvar.analyze(model, batches, "categorical", samples=2, checkpoint=path, batch_size=8)
    assert_identical(reference, resumed)


@pytest.mark.parametrize("change,match", [
    ("samples", "samples"),
    ("seed", "seed"),
    ("family", "family"),
    ("data", "data"),
    ("weights", "model"),
    ("second_order", "second_order"),
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
    elif change == "second_order":  # a first-order run would mix its sums with the full run's
        kwargs["second_order"] = False
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


# ---------------------------------------------------------------------- integrity
FAST = dict(family="categorical", samples=2, bounds=False, batch_size=8)


def finished_checkpoint(tmp_path, name: str = "run.ckpt"):
    """A checkpoint of a finished run of 40 inputs, its bytes and the length of its JSON header."""
    model, x, y = setup_run()
    path = tmp_path / name
    fimvar.analyze(model, x, labels=y, checkpoint=path, **FAST)
    raw = path.read_bytes()
    (header,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header length, header, tensor bytes
    assert 8 + header < len(raw)
    return model, x, y, path, raw, header


def refused(path, raw: bytes) -> str:
    """Write ``raw`` to ``path`` and return the message of the error that loading it raises."""
    path.write_bytes(raw)
    with pytest.raises(FimvarError) as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert "delete it" in message and str(path) in message
    return message


def flipped(raw: bytes, offset: int, bit: int) -> bytes:
    changed = bytearray(raw)
    changed[offset] ^= 1 << bit
    return bytes(changed)


def test_flipped_bits_after_the_header_are_refused(tmp_path):
    model, x, y, path, raw, header = finished_checkpoint(tmp_path)
    start = 8 + header
    offsets = sorted({start, start + 1, len(raw) - 1, *range(start, len(raw), (len(raw) - start) // 23)})
    bad = tmp_path / "bad.ckpt"
    for k, offset in enumerate(offsets):
        message = refused(bad, flipped(raw, offset, k % 8))
        assert "is corrupted (its checksum does not match its contents)" in message, offset
    # a larger corruption (a zeroed stretch of the sums) too
    assert "checksum" in refused(bad, raw[:start + 64] + bytes(512) + raw[start + 576:])
    # and through fimvar.analyze, which resumes the intact file without computing anything
    with pytest.raises(FimvarError, match="corrupted.*delete it"):
        fimvar.analyze(model, x, labels=y, checkpoint=bad, **FAST)
    bad.write_bytes(raw)
    assert fimvar.analyze(model, x, labels=y, checkpoint=bad, **FAST).num_inputs == 40


def test_flipped_bits_in_the_header_are_refused(tmp_path):
    # the header holds the counts, keys and fingerprint: a change there must not resume either
    *_, raw, header = finished_checkpoint(tmp_path)
    bad = tmp_path / "bad.ckpt"
    for offset in [*range(8), *range(8, 8 + header, 29), 8 + header - 1]:
        refused(bad, flipped(raw, offset, offset % 8))
    # "count": 40 → 41 (one bit) keeps the JSON valid: only the checksum notices
    position = raw.index(b'\\"count\\": 40', 8) + len(b'\\"count\\": 4')
    assert raw[position:position + 1] == b"0"
    assert "checksum" in refused(bad, flipped(raw, position, 0))


@pytest.mark.parametrize("keep", ["nothing", "7 bytes", "the length", "half the header", "the header",
                                  "half the file", "all but one byte"])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    *_, raw, header = finished_checkpoint(tmp_path)
    length = {"nothing": 0, "7 bytes": 7, "the length": 8, "half the header": 8 + header // 2,
              "the header": 8 + header, "half the file": len(raw) // 2,
              "all but one byte": len(raw) - 1}[keep]
    message = refused(tmp_path / "bad.ckpt", raw[:length])
    assert "not a readable fimvar checkpoint" in message and "corrupted" in message


def test_garbled_header_is_refused(tmp_path):
    model, x, y, path, raw, _ = finished_checkpoint(tmp_path)
    state = {"0": torch.zeros(3, dtype=torch.float64)}
    bad = tmp_path / "bad.ckpt"

    def header(**metadata):
        save_file(state, str(bad), metadata=metadata)
        return refused(bad, bad.read_bytes())

    assert "not valid JSON" in header(fimvar_checkpoint="{\"count\": 4", fimvar_checksum="0" * 64)
    assert "not a JSON object" in header(fimvar_checkpoint="[1, 2]")
    current = json.dumps({"format_version": checkpoint.FORMAT_VERSION})
    assert "no checksum" in header(fimvar_checkpoint=current)
    assert "checksum does not match" in header(fimvar_checkpoint=current, fimvar_checksum="0" * 64)
    old = header(fimvar_checkpoint=json.dumps({"format_version": 2, "count": 8}))
    assert "format version 2" in old and f"reads version {checkpoint.FORMAT_VERSION}" in old
    # well-formed files (written by checkpoint.save, with a valid checksum) that lack fields or
    # have fields of the wrong type
    _, complete = checkpoint.load(path)
    fields = {k: complete[k] for k in ("kind", "fingerprint", "count", "has_labels", "extra")}
    for change, expected in [({"count": None}, "lacks the field 'count'"),
                             ({"keys": None}, "lacks the field 'keys'"),
                             ({"fingerprint": None}, "lacks the field 'fingerprint'"),
                             ({"count": "8"}, "field 'count' is '8'"),
                             ({"count": -8}, "field 'count' is -8"),
                             ({"keys": [["parameter", "0.weight", "fisher"]]}, "not a list of"),
                             ({"keys": [["parameter", "0.weight", "fisher", ""]] * 2},
                              "1 tensors for 2 keys")]:
        metadata = {**fields, "keys": [["parameter", "0.weight", "fisher", ""]], **change}
        checkpoint.save(bad, state, {k: v for k, v in metadata.items() if v is not None})
        with pytest.raises(FimvarError, match="is corrupted") as caught:
            checkpoint.load(bad)
        assert expected in str(caught.value), change
    # the same errors from fimvar.analyze
    with pytest.raises(FimvarError, match=r"is corrupted \(it holds 1 tensors for 2 keys\)"):
        fimvar.analyze(model, x, labels=y, checkpoint=bad, **FAST)


# ---------------------------------------------------------------------- data given as an iterable
def other_inputs(x: torch.Tensor, rows: slice) -> torch.Tensor:
    changed = x.clone()
    changed[rows] += 0.5
    return changed


def test_iterable_of_other_data_is_refused(tmp_path):
    model, x, y = setup_run()
    path = tmp_path / "loader.ckpt"
    # the run of the issue: 32 inputs of A from a DataLoader, then a DataLoader of B
    first = fimvar.analyze(model, DataLoader(x[:32], batch_size=8), checkpoint=path, **FAST)
    assert first.num_inputs == 32
    _, meta = checkpoint.load(path)
    assert meta["count"] == 32 and meta["consumed"]["rows"] == 32
    for other in (DataLoader(other_inputs(x, slice(0, 40))), DataLoader(other_inputs(x, slice(31, 32)), 5),
                  [b for b in other_inputs(x, slice(3, 4)).split(6)]):
        with pytest.raises(FimvarError, match=f"checkpoint {path} was written for other data: the first 32 "
                                              "inputs of this data differ"):
            fimvar.analyze(model, other, checkpoint=path, **FAST)
    # labels are fingerprinted too: the same inputs with other (or no) labels are refused
    labelled = tmp_path / "labelled.ckpt"
    fimvar.analyze(model, DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8), checkpoint=labelled,
                   **FAST)
    flipped_labels = y.clone()
    flipped_labels[7] = (flipped_labels[7] + 1) % 3
    for other in ([(x[:20], flipped_labels[:20]), (x[20:], flipped_labels[20:])], [x[:20], x[20:]]):
        with pytest.raises(FimvarError, match="the labels of the first 32 inputs of this data differ"):
            fimvar.analyze(model, other, checkpoint=labelled, **FAST)
    # fewer inputs than the checkpoint holds (a generator: its length is not known in advance)
    with pytest.raises(FimvarError, match="holds 32 inputs but the data has only 24"):
        fimvar.analyze(model, (b for b in x[:24].split(8)), checkpoint=path, **FAST)


def test_iterable_that_agrees_on_the_consumed_inputs_resumes(tmp_path):
    # only what the checkpoint consumed must match: inputs after them may differ
    model, x, y = setup_run()
    path = tmp_path / "run.ckpt"
    fimvar.analyze(model, [(x[:16], y[:16])], checkpoint=path, **FAST)
    changed = other_inputs(x, slice(16, 40))
    resumed = fimvar.analyze(model, DataLoader(TensorDataset(changed, y), batch_size=6), checkpoint=path,
                             **FAST)
    assert_identical(fimvar.analyze(model, changed, labels=y, **FAST), resumed)


@pytest.mark.parametrize("resume_with", ["list of 3", "DataLoader of 7", "DataLoader of 40"])
def test_rebatched_iterable_resumes_bit_identically(tmp_path, monkeypatch, resume_with):
    model, x, y = setup_run()
    reference = fimvar.analyze(model, x, labels=y, **FAST)  # a tensor, in blocks of 8
    path = tmp_path / "run.ckpt"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fimvar.analyze(model, [(x[i:i + 5], y[i:i + 5]) for i in range(0, 40, 5)], checkpoint=path,
                       checkpoint_interval=0, **FAST)
    monkeypatch.undo()
    assert checkpoint.load(path)[1]["count"] == 16
    data = {"list of 3": [(x[i:i + 3], y[i:i + 3]) for i in range(0, 40, 3)],
            "DataLoader of 7": DataLoader(TensorDataset(x, y), batch_size=7),
            "DataLoader of 40": DataLoader(TensorDataset(x, y), batch_size=40)}[resume_with]
    assert_identical(reference, fimvar.analyze(model, data, checkpoint=path, **FAST))


def test_row_hash_is_the_hash_of_the_rows():
    x = torch.arange(60, dtype=torch.float32).reshape(20, 3)
    trailer = b"|torch.float32;(3,);20|"
    expected = hashlib.sha256(x.numpy().tobytes() + trailer).hexdigest()
    for pieces in ([x], list(x.split(7)), [x[:1], x[1:1], x[1:]], [x.t().contiguous().t()]):
        hashed = checkpoint.RowHash()
        for piece in pieces:
            hashed.update(piece)
        assert hashed.hexdigest() == expected and hashed.rows == 20
    reshaped = checkpoint.RowHash()
    reshaped.update(x.reshape(10, 6))  # the same bytes as other rows
    assert reshaped.hexdigest() != expected


# ---------------------------------------------------------------------- unwritable paths
def test_unwritable_checkpoint_path_is_refused_before_any_work(tmp_path, monkeypatch):
    model, x, y = setup_run()

    def no_work(self, x, labels=None):
        raise AssertionError("the analysis started before the checkpoint path was checked")

    monkeypatch.setattr(Analysis, "update", no_work)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FimvarError, match="cannot write the checkpoint .*a-file/run.ckpt"):
        fimvar.analyze(model, x, checkpoint=tmp_path / "a-file" / "run.ckpt", **FAST)
    with pytest.raises(FimvarError, match="is a folder; give a file path"):
        fimvar.analyze(model, x, checkpoint=tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no probe left behind


def test_failing_save_warns_and_keeps_the_result(tmp_path, monkeypatch):
    model, x, y = setup_run()
    reference = fimvar.analyze(model, x, labels=y, **FAST)
    path = tmp_path / "run.ckpt"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # the probe passes, every save fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fimvar.analyze(model, x, labels=y, checkpoint=path, checkpoint_interval=0, **FAST)
    monkeypatch.undo()
    assert_identical(reference, result)
    messages = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    assert len(messages) == 1, messages  # once, although each of the 5 saves failed
    assert f"could not save the checkpoint {path} (No space left on device)" in messages[0]
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary file


# ---------------------------------------------------------------------- leftovers of killed writes
def test_leftover_temporary_files_of_the_checkpoint_are_removed(tmp_path):
    model, x, y = setup_run()
    leftovers = [".run.ckpt.abcd_123.tmp", ".run.ckpt.zz99zz99.tmp"]
    kept = [".run.ckpt.x.abcdefgh.tmp", ".other.ckpt.abcdefgh.tmp", "run.ckpt.abcdefgh.tmp",
            ".run.ckpt.abcdefgh.txt", ".run.ckpt.abcdefg.tmp", ".run.ckpt.ABCDEFGH.tmp", "notes.txt"]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x" * 1000)
    (tmp_path / ".run.ckpt.folder00.tmp").mkdir()  # the pattern, but a folder: not ours
    fimvar.analyze(model, x, labels=y, checkpoint=tmp_path / "run.ckpt", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".run.ckpt.folder00.tmp", "run.ckpt"])
