"""``fimvar analyze --model hf:… --data text:…``: a transformers causal language model end to end
from the command line, offline — the sampled analysis (docs/theory.md §17) on token windows of the
bundled public-domain text, its files, and its user errors."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from checks import run_cli
from scipy.stats import norm

import fimvar
from fimvar.errors import FimvarError
from fimvar.language import import_transformers, load_language_model, text_sequences
from fimvar.report import load, validate

try:  # hides a broken torchvision first, as the command line does
    transformers = import_transformers()
except FimvarError:
    pytest.skip("transformers is not installed", allow_module_level=True)

ARGS = ["--data", "text:bundled#length=32", "--inputs", "12", "--samples", "3", "--seed", "1",
        "--threads", "1", "--rho", "0.05", "-q"]


def user_error(capsys, *argv: str, match: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("fimvar: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def api_result():
    """The same analysis through the Python API."""
    lm = load_language_model("gpt2-tiny")
    ids, _, _ = text_sequences("bundled#length=32", lm)
    return fimvar.analyze_sampled(lm.model, ids[:12], samples=3, seed=1)


def test_language_model_end_to_end(tmp_path, capsys, api_result):
    out = tmp_path / "lm"
    code, printed, err = run_cli(capsys, "analyze", "--model", "hf:gpt2-tiny", *ARGS, "--out", str(out))
    assert code == 0, err
    assert printed.strip() == str(out)
    assert "torchvision" not in err and "Traceback" not in err
    for name in ("summary.json", "sampled.safetensors", "report.html", "figures/fisher_std.png",
                 "figures/fisher_std.svg", "figures/sample_size.png", "figures/sample_size.svg"):
        assert (out / name).is_file(), name
    assert not (out / "fisher.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    validate(summary)
    assert summary["kind"] == "sampled"
    run = summary["run"]
    assert (run["inputs"], run["samples"], run["seed"], run["precision"]) == (12, 3, 1, "float32")
    assert (run["tokenizer"], run["sequence_length"], run["outputs"]) == ("bytes", 32, 32 * 256)
    # the numbers are the Python API's
    r = api_result
    expected = r.group_summary(plan=r.plan(0.05, 0.05), include_model=True)
    assert [g["group"] for g in summary["groups"]] == [g["group"] for g in expected]
    for row, want in zip(summary["groups"], expected, strict=True):
        for key in ("i1", "trace_i1", "std_i1", "input_var", "input_noise_share_i1", "variance_i1"):
            assert row[key] == pytest.approx(want[key], rel=1e-12, abs=0), (row["group"], key)
        accuracy = want["accuracy"]["i1"]
        assert row["accuracy"]["i1"]["relative_error"] == pytest.approx(accuracy["relative_error"], rel=1e-12)
        assert row["accuracy"]["i1"]["inputs_needed"] == accuracy["inputs_needed"]
        assert row["recommended"]["normal"]["inputs"] == want["recommended"]["normal"].inputs
        assert row["recommended"]["normal"]["draws"] == want["recommended"]["normal"].draws
    # the saved tensors read back as the same result, and `fimvar plan` takes the folder
    again = load(out)
    assert isinstance(again, fimvar.SampledResult)
    for name, value in r.i1.items():
        assert torch.equal(again.i1[name], value)
        assert torch.equal(again.v1[name], r.v1[name])
    code, printed, err = run_cli(capsys, "plan", str(out), "--rho", "0.05")
    assert code == 0, err
    assert "Î1" in printed and "(model)" in printed
    html = (out / "report.html").read_text()
    assert "sampled Fisher" in html and "data:image/png;base64," in html and "Plan: relative error" in html


def test_plan_meets_the_target_by_the_variance_formula(api_result):
    """The plan's N × M, checked independently: the variance of Î1 at that design, by
    ``SampledResult.variance(inputs=N, draws=M)`` summed over the layer, gives z·sqrt(Σ Var)/‖Î1‖ ≤ ρ
    with z = z_{1−δ/2}; and N − 1 inputs do not, by the same sums written out from the tensors."""
    r, rho, delta = api_result, 0.05, 0.05
    z = float(norm.isf(delta / 2))
    plan = r.plan(rho, delta)
    checked = 0
    for group in plan.groups:
        members = r.groups.get(group.group) or [m for ms in r.groups.values() for m in ms]
        norm_i1 = math.sqrt(sum(float((r.i1[m] ** 2).sum()) for m in members))
        for design in (group.recommended("normal"), group.at_run_draws["i1"]):
            n, m = design.inputs, design.draws
            variance = r.variance("i1", inputs=n, draws=m)
            total = sum(float(variance[k].sum()) for k in members)
            assert z * math.sqrt(total) / norm_i1 <= rho * (1 + 1e-9), (group.group, n, m)

            def error_with(inputs: int, m=m, members=members, norm_i1=norm_i1) -> float:
                a = sum(float(r.input_var[k].sum()) for k in members)  # (a + b/M)/N, a = Σ input_var
                b = sum(float(r.v1[k].sum()) for k in members)  # b = Σ v1
                return z * math.sqrt((a + b / m) / inputs) / norm_i1

            assert error_with(n) <= rho * (1 + 1e-9)
            if n > 1:
                assert error_with(n - 1) > rho, (group.group, n, m)
            checked += 1
    assert checked == 2 * len(plan.groups)
    # the run's own accuracy is sqrt(Σ Var)/‖Î1‖ with the run's N, M
    whole = plan.group("(model)").accuracy["i1"]
    a = sum(float(v.sum()) for v in r.input_var.values())
    b = sum(float(v.sum()) for v in r.v1.values())
    norm_all = math.sqrt(sum(float((v ** 2).sum()) for v in r.i1.values()))
    assert whole.relative_error == pytest.approx(math.sqrt((a + b / r.samples) / r.num_inputs) / norm_all,
                                                 rel=1e-12)


def test_model_folder_with_its_tokenizer(tmp_path, capsys):
    """A folder written by save_pretrained, with a word-level tokenizer trained offline on the
    corpus: the folder's tokenizer is used (a vocabulary below 256 is then fine)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from fimvar.language import read_text

    text, _ = read_text("bundled")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(vocab_size=120, special_tokens=["[UNK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    folder = tmp_path / "word-lm"
    fast.save_pretrained(folder)
    config = transformers.GPT2Config(vocab_size=len(fast), n_positions=16, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "analyze", "--model", f"hf:{folder}", "--data", "text:bundled#length=16",
                           "--inputs", "6", "--samples", "2", "--no-figures", "--no-html", "-q",
                           "--threads", "1", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    validate(summary)
    assert summary["run"]["tokenizer"] == type(transformers.AutoTokenizer.from_pretrained(folder)).__name__
    assert "the model folder's tokenizer" in summary["run"]["data"]
    assert "from_pretrained" in summary["run"]["model"]


def test_bfloat16_language_model_states_its_precision(tmp_path, capsys):
    out = tmp_path / "bf16"
    code, _, err = run_cli(capsys, "analyze", "--model", "hf:gpt2-tiny", "--data", "text:bundled#length=16",
                           "--inputs", "6", "--dtype", "bfloat16", "--no-figures", "--no-html", "-q",
                           "--threads", "1", "--out", str(out))
    assert code == 0, err
    assert "bfloat16" in err  # the warning, as one line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["precision"] == "bfloat16"
    again = load(out)
    assert all(v.dtype == torch.float64 and torch.isfinite(v).all() for v in again.i1.values())


def test_user_errors(tmp_path, capsys):
    base = ["analyze", "--out", str(tmp_path / "out"), "-q", "--no-figures", "--no-html"]
    text = ["--data", "text:bundled"]
    user_error(capsys, *base, "--model", f"hf:{tmp_path}/no-such-model", *text, match="no such folder")
    (tmp_path / "empty").mkdir()
    user_error(capsys, *base, "--model", f"hf:{tmp_path}/empty", *text, match="no config.json")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50, "n_positions": 64, "n_embd": 8,
                                 "n_layer": 1, "n_head": 2}))
    err = user_error(capsys, *base, "--model", f"hf:{small}", *text, match="vocabulary has 50 tokens")
    assert "256" in err
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", "--data", "text:bundled#length=500",
               match="longer than the model's 128 positions")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", "--data", f"text:{tmp_path}/none.txt",
               match="text file not found")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", "--data", "digits", match="reads text")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", *text, "--family", "gaussian", match="categorical")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", *text, "--labels", match="--labels")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", *text, "--samples", "1", match="samples=2")
    user_error(capsys, *base, "--model", "fimvar.models:digits_mlp", *text, "--family", "categorical",
               match="--model hf:")
    user_error(capsys, *base, "--model", "fimvar.models:digits_mlp", "--data", "digits", match="--family")
    user_error(capsys, *base, "--model", "fimvar.models:digits_mlp", "--data", "digits", "--family",
               "categorical", "--i2", match="drop --i2")
    user_error(capsys, *base, "--model", "hf:gpt2-tiny", *text, "--i2", "--first-order", match="one of them")


def test_i2_from_the_command_line(tmp_path, capsys):
    """``--i2``: Î2 by Hutchinson probes in the report's last line and in ``sampled.safetensors``,
    the same values as the Python API with the same seed."""
    out = tmp_path / "i2"
    args = ["--data", "text:bundled#length=16", "--inputs", "6", "--samples", "2", "--seed", "3",
            "--threads", "1", "--no-figures", "--no-html"]
    code, printed, err = run_cli(capsys, "analyze", "--model", "hf:gpt2-tiny", *args, "--i2",
                                 "--out", str(out))
    assert code == 0, err
    assert "Î2 (one Hutchinson probe of the Hessian per draw" in printed and "Σ Var(Î2)" in printed
    saved = load(out)
    lm = load_language_model("gpt2-tiny")
    ids, _, _ = text_sequences("bundled#length=16", lm)
    api = fimvar.analyze_sampled(lm.model, ids[:6], samples=2, seed=3, i2=True)
    for name, value in api.i2.items():
        torch.testing.assert_close(saved.i2[name], value, rtol=1e-12, atol=0)


def test_without_transformers(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    user_error(capsys, "analyze", "--model", "hf:gpt2-tiny", "--data", "text:bundled", "--out",
               str(tmp_path / "out"), match="needs the transformers package")
