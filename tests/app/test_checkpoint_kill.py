"""A real kill: ``fimvar analyze --checkpoint`` stopped with SIGKILL after its first checkpoint, then
restarted with the same arguments, finishes with every tensor equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

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


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    (tmp_path / "model.py").write_text(FACTORY)
    torch.manual_seed(1)
    weights = {"0.weight": torch.randn(12, 64) * 0.3, "0.bias": torch.randn(12) * 0.1,
               "2.weight": torch.randn(10, 12) * 0.5, "2.bias": torch.randn(10) * 0.1}
    torch.save(weights, tmp_path / "weights.pt")
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
