"""The report of a sampled analysis (``SampledResult``: docs/theory.md §17.4): its per-layer rows,
text table, ``summary.json`` against the schema, tensors read back, figures drawn from the plan's
numbers, ``report.html``, and a folder reused by a diagonal run and a sampled one."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from cases import make_case
from checks import assert_same_document

import fimvar
from fimvar.report import validate
from fimvar.report.plots import figure


@pytest.fixture(scope="module")
def result():
    case = make_case("causal-lm", "categorical", inputs=10, seed=4)
    return fimvar.analyze_sampled(case.model, case.x, samples=3, seed=2)


def test_rows_follow_the_layer_sums(result):
    rows = result.group_summary(include_model=True)
    assert [r["group"] for r in rows] == list(result.groups) + ["(model)"]
    for row in rows:
        members = row["members"]
        a = sum(float(result.input_var[m].sum()) for m in members)
        b = sum(float(result.v1[m].sum()) for m in members)
        trace = sum(float(result.i1[m].sum()) for m in members)
        assert row["trace_i1"] == pytest.approx(trace, rel=1e-12)
        assert row["i1"] == pytest.approx(trace / row["parameters"], rel=1e-12)
        assert row["input_noise_share_i1"] == pytest.approx(a / (a + b / result.samples), rel=1e-12)
        accuracy = row["accuracy"]["i1"]
        norm = math.sqrt(sum(float((result.i1[m] ** 2).sum()) for m in members))
        assert accuracy["standard_error"] == pytest.approx(math.sqrt((a + b / 3) / 10), rel=1e-12)
        assert accuracy["relative_error"] == pytest.approx(accuracy["standard_error"] / norm, rel=1e-12)
    with pytest.raises(fimvar.FimvarError, match="no estimator 'exact'"):
        result.plan().accuracy("exact")
    assert result.plan().accuracy()["(model)"].estimator == "i1"


def test_table_summary_and_files(result, tmp_path):
    text = result.table(0.05)
    assert "Accuracy of Î1 with M=3 draws" in text and "Σ Î1" in text and "(model)" in text
    assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE)
    assert max(len(line) for line in text.splitlines()) <= 84
    document = result.summary(0.05)
    validate(document)
    assert document["kind"] == "sampled" and document["run"]["precision"] == "float64"
    broken = json.loads(json.dumps(document))
    del broken["groups"][0]["trace_i1"]
    with pytest.raises(fimvar.FimvarError, match="trace_i1"):
        validate(broken)
    out = result.save(tmp_path / "s", rho=0.05)
    for name in ("summary.json", "sampled.safetensors", "report.html", "figures/fisher_std.png",
                 "figures/sample_size.svg"):
        assert (out / name).is_file(), name
    again = fimvar.load(out)
    assert isinstance(again, fimvar.SampledResult) and again.groups == result.groups
    assert again.metadata["layers"] == result.metadata["layers"]
    for q in ("i1", "v1", "input_var", "input_var_unbiased", "between", "fisher"):
        for name, value in getattr(result, q).items():
            assert torch.equal(getattr(again, q)[name], value)
    assert again.estimate("variance", inputs=50, draws=4) == result.estimate("variance", inputs=50, draws=4)
    assert_same_document(fimvar.SampledResult.load(out / "summary.json").summary(0.05)["groups"],
                         json.loads((out / "summary.json").read_text())["groups"])
    html = (out / "report.html").read_text()
    for section in ("id=\"accuracy\"", "id=\"findings\"", "id=\"layers\"", "id=\"plan\"", "id=\"figures\""):
        assert section in html
    assert not re.search(r"\bnan\b|\binf\b", re.sub(r"base64,[^\"]+", "", html), re.IGNORECASE)


def test_figures_show_the_plans_numbers(result):
    plan = result.plan(0.05, 0.05)
    fig = figure(result, "sample_size", fimvar.Target(0.05, 0.05))
    left = fig.axes[0]
    points = {line.get_gid(): line for line in left.get_lines() if line.get_gid()}
    for group in list(result.groups) + ["(model)"]:
        needed = plan.group(group).accuracy["i1"].inputs_needed
        assert points[f"needed:{group}"].get_ydata()[0] == pytest.approx(needed, rel=0.01)
    right = {line.get_gid(): line for line in fig.axes[1].get_lines() if line.get_gid()}
    best = plan.group("(model)").recommended("normal")
    assert right["design:(model)"].get_xydata()[0].tolist() == [best.draws, best.inputs]
    noise = figure(result, "fisher_std", fimvar.Target(0.05, 0.05))
    ys = {line.get_gid(): line.get_ydata() for line in noise.axes[0].get_lines() if line.get_gid()}
    rows = [r for r in result.group_summary() if r["group"] in result.groups]
    positive = [r["i1"] for r in rows if r["i1"] > 0]
    assert list(ys["series:fisher"]) == pytest.approx(positive, rel=1e-12)


def test_a_folder_reused_by_a_sampled_run_holds_only_its_files(result, tmp_path):
    case = make_case("mlp-tanh", "categorical", inputs=6)
    fimvar.analyze(case.model, case.x, "categorical").save(tmp_path)
    assert (tmp_path / "fisher.safetensors").is_file()
    result.save(tmp_path, figures=False, html=False)
    assert not (tmp_path / "fisher.safetensors").exists() and not (tmp_path / "report.html").exists()
    assert not (tmp_path / "figures").exists()
    assert isinstance(fimvar.load(tmp_path), fimvar.SampledResult)
    fimvar.analyze(case.model, case.x, "categorical").save(tmp_path, figures=False, html=False)
    assert isinstance(fimvar.load(tmp_path), fimvar.DiagonalResult)


def test_i2_is_written_and_read_back(tmp_path):
    """A result with Î2 (``i2=True``) keeps it, its noise terms and their spread sums in
    ``sampled.safetensors``; one without has none after loading either."""
    case = make_case("mlp-tanh", "categorical", inputs=6, seed=1)
    result = fimvar.analyze_sampled(case.model, case.x, samples=3, seed=2, i2=True)
    folder = result.save(tmp_path / "i2", figures=False)
    summary = json.loads((folder / "summary.json").read_text())
    validate(summary)
    assert summary["run"]["i2"] is True
    assert "Î2 is estimated too" in (folder / "report.html").read_text()
    assert "Σ Var(Î2)" in result.table()
    again = fimvar.load(folder)
    for q in ("i2", "v2", "between_i2"):
        assert getattr(again, q).keys() == getattr(result, q).keys()
        for name, value in getattr(result, q).items():
            assert torch.equal(getattr(again, q)[name], value)
    for design in ({}, {"inputs": 50, "draws": 4}):
        assert again.estimate("variance", estimator="i2", **design) == \
            result.estimate("variance", estimator="i2", **design)
        for name, value in result.variance("i2", **design).items():
            assert torch.equal(again.variance("i2", **design)[name], value)
    folder = fimvar.analyze_sampled(case.model, case.x, samples=3).save(tmp_path / "plain", figures=False)
    plain = fimvar.load(folder)
    assert plain.i2 == {} and plain.spreads_i2 is None and "i2" not in plain.metadata
    assert "No exact Fisher, Î2 or bound is computed" in (folder / "report.html").read_text()
