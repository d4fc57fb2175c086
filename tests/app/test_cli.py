"""The ``fimvar`` command end to end on bundled data (small sizes), its help, and its errors:
each user error is one ``fimvar: error:`` line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from checks import run_cli
from torch import nn

from fimvar.report import load, validate

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def make(hidden=4, outputs=10, inputs=64):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("boom")

    instance = nn.Sequential(nn.Linear(64, 3), nn.Tanh(), nn.Linear(3, 10))

    def on_meta():
        with torch.device("meta"):
            return nn.Sequential(nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 10))

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 10)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.linear(x)

    def counting():
        return Counting()

    def rates(log_rate=40.0):
        model = nn.Linear(64, 2)
        with torch.no_grad():
            model.weight.zero_()
            model.bias.fill_(log_rate)
        return model
""")


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "tiny_model.py"
    path.write_text(FACTORY)
    return path


def user_error(capsys, *argv: str, match: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("fimvar: error:") or "error:" in err, err
    assert "Traceback" not in err + out
    assert match in err, err
    return err


def test_help_on_every_command(capsys):
    for argv in ([], ["analyze"], ["demo"], ["plan"]):
        code, out, _ = run_cli(capsys, *argv, "--help")
        assert code == 0 and "usage: fimvar" in out
    code, out, _ = run_cli(capsys, "analyze", "--help")
    for option in ("--model", "--weights", "--data", "--family", "--samples", "--inputs", "--labels",
                   "--engine", "--device", "--out", "--checkpoint"):
        assert option in out
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("fimvar ")


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("fimvar") == "fimvar.app.cli:main"


def test_python_dash_m():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fimvar", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("fimvar ")


def test_analyze_end_to_end(tmp_path, factory, capsys):
    out = tmp_path / "out"
    weights = tmp_path / "w.pt"
    torch.manual_seed(3)
    torch.save(nn.Sequential(nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 10)).state_dict(), weights)
    code, stdout, err = run_cli(capsys, "analyze", "--model", f"{factory}:make", "--weights", str(weights),
                                "--data", "digits", "--family", "categorical", "--inputs", "24",
                                "--samples", "2", "--labels", "--out", str(out), "--no-figures")
    assert code == 0, err
    assert "Traceback" not in err
    printed = stdout
    lines = stdout.splitlines()
    assert any(line.startswith("layer") and "Fisher" in line for line in lines)
    table = stdout[stdout.index("layer"):stdout.index("bounds:")]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert {p.name for p in out.iterdir()} >= {"summary.json", "fisher.safetensors", "report.html"}
    summary = json.loads((out / "summary.json").read_text())
    validate(summary)
    assert summary["run"]["inputs"] == 24 and summary["run"]["samples"] == 2 and summary["run"]["labels"]
    assert summary["run"]["outputs"] == 10
    assert [g["group"] for g in summary["groups"]] == ["0", "2", "(model)"]
    result = load(out)
    assert result.num_inputs == 24 and result.empirical is not None
    # the same model given as an instance, and the plan command on the saved result
    code, stdout, err = run_cli(capsys, "plan", str(out), "--rho", "0.2", "--delta", "0.1")
    assert code == 0 and "Chebyshev" in stdout and "(model)" in stdout
    code, stdout, _ = run_cli(capsys, "plan", str(out), "--json", "--draws", "3")
    plan = json.loads(stdout)
    assert plan["draws"] == 3 and all(d["draws"] in (0, 3) for g in plan["groups"] for d in g["designs"])
    # the printed report and the plan lead with the accuracy of this run, in the plan's numbers
    assert printed.index("Accuracy of r.fisher") < printed.index("std Î1") < printed.index("Cheapest design")
    saved = result.plan(0.2, 0.1)
    needed = max(a.inputs_needed for a in saved.accuracy().values())
    code, stdout, err = run_cli(capsys, "plan", str(out), "--rho", "0.2", "--delta", "0.1", "--available",
                                str(needed))
    assert code == 0, err
    assert stdout.splitlines()[1].startswith("Accuracy of r.fisher")
    rows = [line for line in stdout.splitlines() if line.startswith(("0 Linear", "2 Linear", "(model)"))]
    for g in saved.groups:
        row = next(line for line in rows if line.startswith(saved.name(g.group)))
        assert f"{g.accuracy['exact'].inputs_needed:,}" in row and row.rstrip().endswith("yes")
    code, _, err = run_cli(capsys, "plan", str(out), "--available", "0")
    assert code == 2 and "available" in err
    code, stdout, _ = run_cli(capsys, "plan", str(out), "--json", "--available", "5")
    document = json.loads(stdout)
    assert document["available"] == 5
    assert all(not g["accuracy"]["exact"]["enough"] for g in document["groups"])


def test_analyze_other_specs(tmp_path, factory, capsys):
    """A module instance, a package factory with --model-arg, a TorchScript file; regression data."""
    code, _, err = run_cli(capsys, "analyze", "--model", f"{factory}:instance", "--data", "digits",
                           "--family", "categorical", "--inputs", "6", "--out", str(tmp_path / "a"),
                           "--no-figures", "--no-html", "-q", "--no-bounds")
    assert code == 0, err
    quiet = ["--no-figures", "--no-html", "-q"]
    code, _, err = run_cli(capsys, "analyze", "--model", "fimvar.models:mlp", "--model-arg",
                           "sizes=[10, 3, 1]", "--data", "diabetes", "--family", "gaussian", "--labels",
                           "--inputs", "8", "--normalize", "standard", "--out", str(tmp_path / "b"), *quiet)
    assert code == 0, err
    assert load(tmp_path / "b").family == "gaussian"
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(8, 4), nn.Sigmoid(), nn.Linear(4, 3)))
    scripted.save(str(tmp_path / "model.pt"))
    code, _, err = run_cli(capsys, "analyze", "--model", str(tmp_path / "model.pt"), "--data",
                           "synthetic:n=12,d=8,classes=3", "--family", "categorical", "--labels",
                           "--out", str(tmp_path / "c"), *quiet, "--engine", "autodiff")
    assert code == 0, err
    assert set(load(tmp_path / "c").fisher) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_analyze_first_order(tmp_path, capsys):
    """``--first-order``: a first-order analysis (the API's second_order=False), said in the saved
    result, the summary's run and the printed table; the exact Fisher is that of the full run."""
    options = ["--model", "fimvar.models:mlp", "--model-arg", "sizes=[10, 3, 1]", "--data", "diabetes",
               "--family", "gaussian", "--labels", "--inputs", "8", "--no-html"]
    code, printed, err = run_cli(capsys, "analyze", *options, "--first-order", "--out", str(tmp_path / "f"))
    assert code == 0, err
    assert "second_order=False" in printed
    first = load(tmp_path / "f")
    assert first.second_order is False and first.v2 == {} and first.empirical is not None
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["run"]["second_order"] is False
    code, _, err = run_cli(capsys, "analyze", *options, "-q", "--no-figures", "--out", str(tmp_path / "s"))
    assert code == 0, err
    full = load(tmp_path / "s")
    assert full.second_order is True
    for name, value in full.fisher.items():
        assert torch.allclose(first.fisher[name], value, rtol=1e-12, atol=0)


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--out", str(out), "--inputs", "16", "--epochs", "20",
                                "--no-figures")
    assert code == 0, err
    assert "test accuracy" in stdout and "fimvar analyze --model fimvar.models:digits_mlp" in stdout
    assert (out / "model.safetensors").exists() and (out / "report.html").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # the weights and tensors as readable as the rest
    validate(json.loads((out / "summary.json").read_text()))


def test_user_errors(tmp_path, factory, capsys):
    out = str(tmp_path / "out")
    base = ["analyze", "--out", out, "--no-figures", "--no-html", "-q", "--inputs", "4"]
    model = ["--model", f"{factory}:make"]
    digits = ["--data", "digits"]
    cat = ["--family", "categorical"]
    user_error(capsys, *base, *model, *digits, "--family", "multinomial", match="unknown family")
    user_error(capsys, *base, *model, "--data", "cifar10", *cat, match="unknown data spec")
    user_error(capsys, *base, *model, "--data", f"npz:{tmp_path}/none.npz", *cat, match="not found")
    user_error(capsys, *base, "--model", f"{tmp_path}/none.py:make", *digits, *cat, match="not found")
    user_error(capsys, *base, "--model", "no_such_package_xyz:make", *digits, *cat, match="cannot import")
    user_error(capsys, *base, "--model", f"{factory}:nothing", *digits, *cat, match="has no 'nothing'")
    user_error(capsys, *base, "--model", f"{factory}:not_a_module", *digits, *cat,
               match="not a torch.nn.Module")
    user_error(capsys, *base, "--model", f"{factory}:broken", *digits, *cat, match="boom")
    user_error(capsys, *base, "--model", str(factory), *digits, *cat, match="not a TorchScript file")
    user_error(capsys, *base, *model, "--weights", f"{tmp_path}/none.pt", *digits, *cat, match="not found")
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Sequential(nn.Linear(64, 7), nn.Tanh(), nn.Linear(7, 10)).state_dict(), wrong)
    user_error(capsys, *base, *model, "--weights", str(wrong), *digits, *cat, match="do not match the model")
    # output width: 5 logits cannot hold digit labels 0..9; a single output is not categorical
    user_error(capsys, *base, *model, "--model-arg", "outputs=5", *digits, *cat, "--labels",
               match="one logit per class")
    user_error(capsys, *base, *model, "--model-arg", "outputs=1", *digits, *cat, match="at least 2 outputs")
    user_error(capsys, *base, "--model", "fimvar.models:mlp", "--model-arg", "sizes=[10,4,3]", "--data",
               "diabetes", "--family", "gaussian", "--labels", match="shape")
    user_error(capsys, *base, *model, "--data", "synthetic:n=8,d=64", *cat, "--labels", match="has none")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    user_error(capsys, "analyze", "--out", str(blocker / "sub"), *model, *digits, *cat, match="--out")
    user_error(capsys, *base, *model, *digits, *cat, "--samples", "0", match="--samples")
    user_error(capsys, *base, *model, *digits, *cat, "--device", "cuda:7" if not torch.cuda.is_available()
               else "nonsense", match="device")
    user_error(capsys, "plan", str(tmp_path / "nowhere"), match="no saved fimvar result")
    code, _, err = run_cli(capsys, "analyze", "--model", "x:y")  # argparse: missing options
    assert code == 2 and "required" in err and "Traceback" not in err


def test_reproduce_delegates(capsys, monkeypatch):
    import fimvar.app.cli as cli

    calls = []

    class Fake:
        @staticmethod
        def main(argv):
            calls.append(argv)
            return 0

    monkeypatch.setitem(sys.modules, "fimvar.reproduce", Fake)
    assert cli.main(["reproduce", "mnist", "--quick"]) == 0 and calls == [["mnist", "--quick"]]
    monkeypatch.setitem(sys.modules, "fimvar.reproduce", None)  # as if not installed
    code, _, err = run_cli(capsys, "reproduce", "--help")
    assert code == 2 and "not installed" in err


def test_demo_help_has_a_single_percent_sign(capsys):
    code, out, _ = run_cli(capsys, "demo", "--help")
    assert code == 0 and "80% train" in " ".join(out.split()) and "%%" not in out


def test_plan_accepts_the_folder_its_summary_or_its_tensors(tmp_path, capsys):
    """`fimvar plan` on the output folder, its summary.json and its fisher.safetensors gives the
    same plan; any other file is one clear error."""
    import fimvar

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    out = tmp_path / "fimvar-out"
    fimvar.analyze(model, torch.randn(12, 3), "categorical", samples=2, bounds=False).save(
        out, figures=False, html=False)
    plans = []
    for given in (out, out / "summary.json", out / "fisher.safetensors"):
        code, stdout, err = run_cli(capsys, "plan", str(given), "--json")
        assert code == 0, err
        plans.append(json.loads(stdout))
    assert plans[0] == plans[1] == plans[2] and plans[0]["groups"]
    (out / "notes.txt").write_text("not a result")
    err = user_error(capsys, "plan", str(out / "notes.txt"), match="is not a saved fimvar result")
    assert "summary.json" in err and "fisher.safetensors" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text("{}")
    user_error(capsys, "plan", str(tmp_path / "other" / "summary.json"), match="no saved fimvar result")


class Branching(nn.Module):
    """A forward with a data-dependent ``if``: TorchScript keeps it, the converter makes it a
    ``torch.cond`` that torch.func cannot differentiate."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.first(x)
        return self.second(x)


def test_torchscript_errors(tmp_path, capsys, monkeypatch):
    """A TorchScript forward with a data-dependent `if`, a TorchScript model that does not fit the
    data, and any other conversion failure: each is one error that suggests a Python model spec."""
    import fimvar.models

    base = ["analyze", "--data", "digits", "--family", "categorical", "--inputs", "4", "--out",
            str(tmp_path / "out"), "--no-figures", "--no-html", "-q"]
    torch.jit.script(Branching()).save(str(tmp_path / "branching.pt"))
    err = user_error(capsys, *base, "--model", str(tmp_path / "branching.pt"),
                     match="data-dependent control flow")
    assert "torch.cond" in err and "file.py:function" in err and len(err.strip().splitlines()) == 1
    torch.jit.script(nn.Sequential(nn.Linear(5, 3))).save(str(tmp_path / "narrow.pt"))
    err = user_error(capsys, *base, "--model", str(tmp_path / "narrow.pt"), match="fails on the first inputs")
    assert "mat1 and mat2" in err and "--input-shape" in err
    torch.jit.script(nn.Sequential(nn.Linear(64, 10))).save(str(tmp_path / "plain.pt"))

    def failing(scripted, example):
        raise KeyError("TransformType.Grad")

    monkeypatch.setattr(fimvar.models, "_convert", failing)
    err = user_error(capsys, *base, "--model", str(tmp_path / "plain.pt"), match="cannot convert")
    assert "KeyError" in err and "file.py:function" in err


def one_line_error(capsys, *argv: str, match: str) -> str:
    """Exit status 2 and exactly one ``fimvar: error:`` line (warnings aside), no traceback."""
    err = user_error(capsys, *argv, match=match)
    errors = [line for line in err.splitlines() if not line.startswith("fimvar: warning:")]
    assert len(errors) == 1 and errors[0].startswith("fimvar: error:") and match in errors[0], err
    return errors[0]


def test_issue10_user_errors(tmp_path, factory, capsys):
    out = str(tmp_path / "out")
    base = ["analyze", "--out", out, "--no-figures", "--no-html", "-q", "--inputs", "4", "--data", "digits"]
    model = ["--model", f"{factory}:make", "--family", "categorical"]
    one_line_error(capsys, *base, *model, "--delta", "0.5", match="at most 0.215")
    one_line_error(capsys, *base, *model, "--rho", "1e-300", match="at least 1e-08")
    one_line_error(capsys, *base, *model, "--seed", str(2**64), match="seed")
    one_line_error(capsys, *base, "--model", f"{factory}:on_meta", "--family", "categorical",
                   match="meta device")
    one_line_error(capsys, *base, "--model", f"{factory}:counting", "--family", "categorical",
                   match="could not differentiate the model")
    one_line_error(capsys, *base, "--model", f"{factory}:rates", "--family", "poisson",
                   match="log(2**52)")
    code, _, err = run_cli(capsys, *base, "--model", f"{factory}:rates", "--model-arg", "log_rate=30.0",
                           "--family", "poisson")
    assert code == 0, err
    assert torch.isfinite(torch.stack([t.sum() for t in load(out).i1.values()])).all()
    # the plan command on a saved result goes through the same Target
    one_line_error(capsys, "plan", out, "--delta", "0.3", match="at most 0.215")
    one_line_error(capsys, "plan", out, "--rho", "1e-300", match="at least 1e-08")


def test_rerun_into_the_same_folder_removes_stale_files(tmp_path, factory, capsys):
    out = tmp_path / "out"
    argv = ["analyze", "--model", f"{factory}:make", "--data", "digits", "--family", "categorical",
            "--inputs", "6", "--out", str(out), "-q", "--no-bounds", "--no-figures"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and (out / "report.html").exists(), err
    (out / "figures").mkdir()
    (out / "figures" / "sample_size.svg").write_text("<svg/>")  # a figure of an earlier run
    code, _, err = run_cli(capsys, *argv, "--no-html")
    assert code == 0, err
    assert not (out / "report.html").exists() and not (out / "figures").exists()
    assert {p.name for p in out.iterdir()} == {"summary.json", "fisher.safetensors"}


def test_flat_npz_to_a_cnn_hints_at_input_shape(tmp_path, capsys):
    (tmp_path / "cnn.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 6 * 6, 10))
    """))
    generator = np.random.default_rng(0)
    np.savez(tmp_path / "flat.npz", x=generator.random((6, 64), dtype=np.float32), y=np.arange(6))
    common = ("analyze", "--model", f"{tmp_path / 'cnn.py'}:make", "--data", f"npz:{tmp_path / 'flat.npz'}",
              "--family", "categorical", "--out", str(tmp_path / "out"), "--no-figures", "--no-html", "-q")
    user_error(capsys, *common, match="--input-shape 1,8,8")
    code, _, err = run_cli(capsys, *common, "--input-shape", "1,8,8")
    assert code == 0, err
