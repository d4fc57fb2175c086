"""A real kill: ``fimvar analyze --checkpoint`` stopped with SIGKILL after its first checkpoint, then
restarted with the same arguments, finishes with every tensor equal to an uninterrupted run; killed
while writing a checkpoint, its temporary file is removed by the next run. The command's other
checkpoint errors: an unwritable path is refused before any work, a save that fails later warns and
the results are still written, a corrupted checkpoint is one clear error."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fimvar.analysis import checkpoint
from fimvar.app.cli import main

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))
""")


def command(tmp_path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fimvar", "analyze", "--model", f"{tmp_path / 'model.py'}:make",
            "--weights", str(tmp_path / "weights.pt"), "--data", "digits", "--family", "categorical",
            "--inputs", "40", "--samples", "3", "--labels", "--batch-size", "4", "--out", str(tmp_path / out),
            "--no-figures", "--no-html", "-q", *extra]


def write_model(tmp_path) -> None:
    (tmp_path / "model.py").write_text(FACTORY)
    torch.manual_seed(1)
    weights = {"0.weight": torch.randn(12, 64) * 0.3, "0.bias": torch.randn(12) * 0.1,
               "2.weight": torch.randn(10, 12) * 0.5, "2.bias": torch.randn(10) * 0.1}
    torch.save(weights, tmp_path / "weights.pt")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    write_model(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the three runs alike, and quick on a shared machine
    ckpt = tmp_path / "run.ckpt"
    resume = ["--checkpoint", str(ckpt), "--checkpoint-interval", "0"]

    victim = subprocess.Popen(command(tmp_path, "killed", *resume), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    _, meta = checkpoint.load(ckpt)
    assert 0 < meta["count"] < 40 and meta["count"] % 4 == 0
    assert not (tmp_path / "killed" / "fisher.safetensors").exists()

    resumed = subprocess.run(command(tmp_path, "resumed", *resume), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoint {ckpt}" in resumed.stderr

    reference = subprocess.run(command(tmp_path, "reference"), env=env, capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr

    first = load_file(str(tmp_path / "reference" / "fisher.safetensors"))
    second = load_file(str(tmp_path / "resumed" / "fisher.safetensors"))
    assert first.keys() == second.keys() and len(first) > 20
    for key in first:
        assert torch.equal(first[key], second[key]), key
    a = json.loads((tmp_path / "reference" / "summary.json").read_text())
    b = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert a["groups"] == b["groups"] and a["bounds"] == b["bounds"] and a["plan"] == b["plan"]

    # the same checkpoint with other arguments is refused with a clear message
    code = main(command(tmp_path, "other", *resume, "--seed", "7")[3:])
    err = capsys.readouterr().err
    assert code == 2 and "different seed" in err and "Traceback" not in err


#: runs ``fimvar`` with os.replace stuck: the first checkpoint is written and flushed to its
#: temporary file, then the process names that file in the marker argv[1] and waits to be killed
STUCK_IN_A_WRITE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from fimvar.app.cli import main

    def stuck(source, destination):
        Path(sys.argv[1] + ".part").write_text(str(source))
        os.rename(sys.argv[1] + ".part", sys.argv[1])  # the marker appears complete
        time.sleep(600)

    os.replace = stuck
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_a_checkpoint_write_leaves_nothing_after_the_next_run(tmp_path, capsys):
    write_model(tmp_path)
    ckpt, marker = tmp_path / "run.ckpt", tmp_path / "writing"
    resume = ["--checkpoint", str(ckpt), "--checkpoint-interval", "0", "--no-bounds"]
    arguments = command(tmp_path, "killed", *resume)[3:]
    victim = subprocess.Popen([sys.executable, "-c", STUCK_IN_A_WRITE, str(marker), *arguments],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, err.decode()
    leftover = Path(marker.read_text())
    assert leftover.parent == tmp_path and leftover.name.startswith(".run.ckpt.")
    assert leftover.stat().st_size > 1000 and not ckpt.exists()  # a full-size hidden file, no checkpoint
    (tmp_path / ".other.ckpt.abcdefgh.tmp").write_text("another checkpoint's")

    assert main(command(tmp_path, "rerun", *resume)[3:]) == 0
    capsys.readouterr()
    assert not leftover.exists() and (tmp_path / ".other.ckpt.abcdefgh.tmp").exists()
    assert checkpoint.load(ckpt)[1]["count"] == 40


def test_unwritable_checkpoint_fails_before_the_analysis(tmp_path, capsys, monkeypatch):
    import fimvar.data

    write_model(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the data was loaded before the checkpoint path was checked")

    monkeypatch.setattr(fimvar.data, "load_data", no_work)
    (tmp_path / "a-file").write_text("")
    code = main(command(tmp_path, "ok", "--checkpoint", str(tmp_path / "a-file" / "run.ckpt"))[3:])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("fimvar: error: cannot write the checkpoint") and err.count("\n") == 1


def test_failed_checkpoint_saves_still_write_the_results(tmp_path, capsys, monkeypatch):
    write_model(tmp_path)
    assert main(command(tmp_path, "reference", "--no-bounds")[3:]) == 0

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # only checkpoints are flushed with fsync
    ckpt = tmp_path / "run.ckpt"
    capsys.readouterr()
    code = main(command(tmp_path, "ok", "--no-bounds", "--checkpoint", str(ckpt), "--checkpoint-interval",
                        "0")[3:])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count(f"fimvar: warning: could not save the checkpoint {ckpt} (No space left on device)") == 1
    first = load_file(str(tmp_path / "reference" / "fisher.safetensors"))
    second = load_file(str(tmp_path / "ok" / "fisher.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert not ckpt.exists() and not list(tmp_path.glob(".run.ckpt.*"))


def test_corrupted_checkpoint_is_one_clear_error(tmp_path, capsys):
    write_model(tmp_path)
    ckpt = tmp_path / "run.ckpt"
    arguments = command(tmp_path, "first", "--no-bounds", "--checkpoint", str(ckpt))[3:]
    assert main(arguments) == 0
    raw = bytearray(ckpt.read_bytes())
    raw[-100] ^= 4  # a bit of the sums
    ckpt.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fimvar: error: the checkpoint {ckpt} is corrupted") and "delete it" in err
    assert err.count("\n") == 1 and "Traceback" not in err
