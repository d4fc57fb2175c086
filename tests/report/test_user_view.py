"""What a user sees first: the accuracy of this run per layer and whether the data set is big
enough (one sample-size rule everywhere), one vocabulary across the outputs, layer names, and
figures and a report page that explain themselves. Every number is checked against the result's
own tensors or an independent computation."""

from __future__ import annotations

import json
import math
import os
import re
from html.parser import HTMLParser

import pytest
import torch
from cases import make_case
from scipy.stats import norm

import fimvar
from fimvar import FimvarError
from fimvar.report.summary import COLUMNS
from fimvar.report.text import layer_table, plan_table, report_text


@pytest.fixture(scope="module")
def result():
    case = make_case("mlp-tanh", "categorical", inputs=30, dtype=torch.float32, outputs=4)
    return fimvar.analyze(case.model, case.x, "categorical", samples=3, labels=case.labels)


@pytest.fixture(scope="module")
def bare():
    case = make_case("mlp-tanh", "categorical", inputs=30, dtype=torch.float32, outputs=4)
    return fimvar.analyze(case.model, case.x, "categorical", samples=3, bounds=False)


def _sum(values: dict, members: list[str]) -> float:
    return sum(float(values[m].double().sum()) for m in members)


# ---------------------------------------------------------------------- the answer first
def test_standard_error_is_the_error_bar_of_the_fisher(result):
    n, m = result.num_inputs, result.samples
    exact = result.standard_error()  # default: the error bar of r.fisher
    for name in result.fisher:
        assert torch.allclose(exact[name], (result.input_var[name] / n).sqrt())
        i1 = result.standard_error("i1")[name]
        assert torch.allclose(i1, ((result.input_var[name] + result.v1[name] / m) / n).sqrt())
        other = result.standard_error("exact", inputs=4 * n)[name]
        assert torch.allclose(other, exact[name] / 2)
    assert torch.allclose(result.variance("exact")["0.weight"], exact["0.weight"] ** 2)  # the old name works
    with pytest.raises(FimvarError, match="unknown estimator"):
        result.standard_error("i3")


def test_accuracy_at_the_run_and_the_data_set(result):
    rho, delta = 0.1, 0.05
    z = float(norm.isf(delta / 2))
    plan = result.plan(rho, delta)
    assert plan.z == pytest.approx(z) and plan.inputs == result.num_inputs and plan.samples == result.samples
    groups = dict(result.groups) | {"(model)": list(result.fisher)}
    for group, members in groups.items():
        a = plan.group(group).accuracy["exact"]
        norm_ = math.sqrt(sum(float(result.fisher[p].double().pow(2).sum()) for p in members))
        se = math.sqrt(_sum(result.input_var, members) / result.num_inputs)
        assert a.fisher_norm == pytest.approx(norm_) and a.standard_error == pytest.approx(se)
        assert a.relative_error == pytest.approx(se / norm_)
        assert a.error_at_confidence == pytest.approx(z * se / norm_)
        needed = math.ceil(z**2 * _sum(result.input_var, members) / (rho**2 * norm_**2) * (1 - 1e-9))
        assert a.inputs_needed == needed
        # one rule: the plan's design of the exact estimator is the same number
        assert plan.group(group).get("exact").inputs == a.inputs_needed
        assert a.enough == (needed <= result.num_inputs)
        # the sampled estimators at the run's M
        i1 = plan.group(group).accuracy["i1"]
        se1 = math.sqrt((_sum(result.input_var, members) + _sum(result.v1, members) / result.samples)
                        / result.num_inputs)
        assert i1.draws == result.samples and i1.standard_error == pytest.approx(se1)
        assert i1.inputs_needed == plan.group(group).at_run_draws["i1"].inputs
    assert plan.accuracy() == {g.group: g.accuracy["exact"] for g in plan.groups}
    # whether the data set is big enough: against the inputs the user has
    needed = max(a.inputs_needed for a in plan.accuracy().values())
    assert all(a.enough for a in result.plan(rho, delta, available=needed).accuracy().values())
    short = result.plan(rho, delta, available=1)
    assert not any(a.enough for a in short.accuracy().values())
    assert any("not enough" in n for n in short.notes)
    for bad in (0, 1.5, True):
        with pytest.raises(FimvarError, match="available"):
            result.plan(available=bad)


def test_plan_and_report_lead_with_the_accuracy(result):
    plan = result.plan(0.1, 0.05)
    text = str(plan)
    assert text.startswith("Accuracy of r.fisher")
    assert text.index("Accuracy of") < text.index("Cheapest design")
    lines = text.splitlines()
    for g in plan.groups:
        a = g.accuracy["exact"]
        row = next(line for line in lines if line.startswith(plan.name(g.group)))
        assert f"{a.inputs_needed:,}" in row  # the same N as the plan's design of the exact estimator
        assert ("yes" in row) == a.enough
    assert f"z = z_{{1−δ/2}} = {plan.z:.3g}" in text.replace("\n", " ")
    assert max(len(line) for line in text.splitlines()) <= 80
    report = report_text(result)
    assert report.index("Accuracy of") < report.index("std Î1") < report.index("Cheapest design")
    assert report.count("Accuracy of") == 1 and plan_table(plan, accuracy=False).startswith("Cheapest")


# ---------------------------------------------------------------------- one vocabulary, layer names
def test_layer_names_from_the_modules(result, tmp_path):
    assert result.layer_name("0") == "0 Linear 3→4" and result.layer_name("2") == "2 Linear 4→4"
    assert result.layer_name("(model)") == "(model)"
    rows = {r["group"]: r for r in result.summary()["groups"]}
    assert rows["0"]["layer"] == "0 Linear 3→4"
    result.save(tmp_path, figures=False, html=False)
    assert fimvar.load(tmp_path).layer_name("2") == "2 Linear 4→4"
    from fimvar.analysis.groups import describe_module

    assert describe_module(torch.nn.Conv2d(1, 8, 3)) == "Conv2d 1→8 3×3"
    assert describe_module(torch.nn.Embedding(100, 32)) == "Embedding 100×32"
    assert describe_module(torch.nn.LayerNorm(64)) == "LayerNorm 64"
    assert describe_module(torch.nn.Tanh()) == "Tanh"


def test_one_vocabulary(result, bare):
    document = result.summary()
    row = document["groups"][0]
    assert not any(key.startswith("mean_std") for key in row)  # one standard deviation, not two
    assert set(COLUMNS) - {"fisher_norm", "standard_error", "relative_error", "error_at_confidence",
                           "inputs_needed", "enough"} <= set(row)
    assert set(row["accuracy"]["exact"]) >= {"fisher_norm", "standard_error", "relative_error",
                                              "error_at_confidence", "inputs_needed", "enough"}
    table = layer_table(result)
    header = table.splitlines()[0]
    for key in ("layer", "fisher", "std_i1", "std_i2", "relative_std_i1", "relative_std_i2", "better"):
        assert COLUMNS[key] in header
    for old in (" sd ", " win", "winner", " i2 "):
        assert old not in header
    # relative standard deviations read as multiples of the Fisher: 14×, not 14 %
    first = next(line for line in table.splitlines() if line.startswith("0 "))
    assert f"{row['relative_std_i1']:.2f}×" in first or f"{row['relative_std_i1']:.1f}×" in first
    page = fimvar.report.html.render(document)
    for key in ("layer", "std_i1", "relative_std_i1", "better", "alpha_star"):
        assert f">{COLUMNS[key]}</th>" in page
    assert "winner" not in page
    # without bounds: nothing non-finite printed, no empty bound column
    text = bare.table()
    assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE) and "UB/" not in text
    assert "UB/V1" not in fimvar.report.html.render(bare.summary())


# ---------------------------------------------------------------------- the page
class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.items: list[str] = []
        self.current: list[str] | None = None
        self.details = 0

    def handle_starttag(self, tag, attrs):
        if tag == "li":
            self.current = []
        if tag == "details":
            self.details += 1

    def handle_endtag(self, tag):
        if tag == "li" and self.current is not None:
            self.items.append("".join(self.current))
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current.append(data)


def test_report_page(result, tmp_path):
    out = result.save(tmp_path / "out")
    page = (out / "report.html").read_text()
    parser = _Text()
    parser.feed(page)
    findings = [i for i in parser.items if "lower variance" in i]
    assert findings and "0 Linear 3→4" in findings[0] + "".join(parser.items)
    assert not re.search(r"layers \((0|2)[,)]", findings[0])  # a layer is named, never a bare index
    # the accuracy section comes first and states the sample-size rule once
    assert page.index("id=\"accuracy\"") < page.index("id=\"findings\"") < page.index("id=\"layers\"")
    assert page.count("The sample-size rule") == 1 and "z = z<sub>1−δ/2</sub>" in page
    # vacuous lower bounds are not shown as a tight "holds"
    document = json.loads((out / "summary.json").read_text())
    zero = [b for b in document["bounds"] if b["side"] == "lower" and all(v in (0, None)
                                                                          for v in b["tightness"].values())]
    assert zero
    for b in zero:
        cells = page[page.index(f"<td class=\"l\">{b['name']}</td>"):]
        cells = cells[:cells.index("</tr>")]
        assert "vacuous" in cells and "holds" not in cells
    # the long trace table is collapsible, the files are links
    assert parser.details >= 2 and "<summary><b>Trace and Frobenius bounds</b>" in page
    for name in ["summary.json", "fisher.safetensors", *document["files"]["figures"]]:
        assert f"<a href=\"{name}\">" in page
    # the run table does not break words: its first column never wraps
    assert "table.run td:first-child{white-space:nowrap}" in page


def test_files_have_the_usual_mode(result, tmp_path):
    out = result.save(tmp_path / "out", figures=False)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    mask = os.umask(0)
    os.umask(mask)
    assert modes["fisher.safetensors"] == modes["summary.json"] == 0o666 & ~mask


# ---------------------------------------------------------------------- figures
def _labels(ax) -> list[str]:
    return [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]


def test_fisher_std_figure(result):
    fig = result.plot("fisher_std")
    ax = fig.axes[0]
    names = [result.layer_name(g) for g in result.groups]
    assert _labels(ax) == names
    rows = {r["group"]: r for r in result.group_summary()}
    for line in ax.get_lines():
        assert line.get_linestyle() == "None"  # points: layers are not joined
    fisher = next(line for line in ax.get_lines() if line.get_gid() == "series:fisher")
    assert list(fisher.get_ydata()) == pytest.approx([rows[g]["fisher"] for g in result.groups])
    zeros = [line for line in ax.get_lines() if (line.get_gid() or "").startswith("zero:")]
    texts = " ".join(t.get_text() for t in fig.texts + ax.texts)
    if zeros:  # Î2 is exact in the linear output layer: its std is exactly 0, said on the figure
        assert "exactly 0" in texts.lower() or "Exactly 0" in texts
        assert all(line.get_markerfacecolor() == "white" for line in zeros)


def test_bound_tightness_figure(result, bare, tmp_path):
    fig = result.plot("bound_tightness")
    ax = fig.axes[0]
    assert _labels(ax) == [result.layer_name(g) for g in result.groups]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(re.search(r"thm|cor\d|prop\d|lemma\d|_upper", label) for label in legend)
    assert all(line.get_linestyle() == "None" for line in ax.get_lines() if line.get_gid())
    assert len([t for t in ax.get_yticklabels() if t.get_text()]) >= 3  # readable ticks
    v2 = result.bounds["thm4.1_v2_upper"].group_tightness(result.groups)
    texts = " ".join(t.get_text() for t in fig.texts)
    for group, value in v2.items():
        if not math.isfinite(value):  # v2 = 0 in the output layer: said on the figure
            assert result.layer_name(group) in texts and "v2 = 0" in texts
    # without bounds there is no such figure; a stale one is removed
    out = result.save(tmp_path / "out", html=False)
    assert (out / "figures" / "bound_tightness.png").exists()
    bare.save(out, html=False)
    assert not (out / "figures" / "bound_tightness.png").exists()
    assert (out / "figures" / "fisher_std.png").exists()
    assert "bound_tightness" not in bare.plot()
    with pytest.raises(FimvarError, match="no bound"):
        bare.plot("bound_tightness")


def test_relative_std_figure(result):
    fig = result.plot("relative_std")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [result.layer_name(g) for g in result.groups]
    for ax, members in zip(shown, result.groups.values(), strict=True):
        counts = {}
        for patch in ax.patches:  # step outlines, one per estimator, no filled overlap
            assert not patch.get_fill()
        for e in ("i1", "i2"):
            r = torch.cat([result.relative_std(e)[m].reshape(-1) for m in members])
            counts[e] = int(((r > 0) & r.isfinite()).sum())
        legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
        for e, label in (("i1", "Î1"), ("i2", "Î2")):
            if counts[e]:
                assert f"{label} ({counts[e]} parameters)" in legend


def test_sample_size_figure_is_the_plan(result):
    rho, delta = 0.2, 0.05
    fig = result.plot("sample_size", rho=rho, delta=delta)
    left, right = fig.axes
    plan = result.plan(rho, delta)
    for g in result.groups:
        needed = next(line for line in left.get_lines() if line.get_gid() == f"needed:{g}")
        assert list(needed.get_xdata()) == [rho]
        assert list(needed.get_ydata()) == [plan.group(g).accuracy["exact"].inputs_needed]
    whole = plan.group("(model)")
    for line in right.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("design:"):
            assert list(line.get_ydata()) == [whole.get(gid.split(":")[1]).inputs]
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert not any("exact" in label and "M =" in label for label in legend)
    title = fig._suptitle.get_text()
    assert "Chebyshev" not in title and "dashed" not in title and f"z = {plan.z:.3g}" in title


def test_long_layer_names_stay_readable():
    """Long names go on three lines (id, type, shape), many layers are rotated: every tick still
    reads as the layer's full name."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh()), torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
        torch.nn.Linear(5, 3))
    r = fimvar.analyze(model, torch.randn(6, 1, 6, 6), "categorical", bounds=False)
    names = [r.layer_name(g) for g in r.groups]
    assert names[0] == "0.0 Conv2d 1→2 3×3"
    ticks = r.plot("fisher_std").axes[0].get_xticklabels()
    assert [t.get_text().replace("\n", " ") for t in ticks] == names
    assert all(t.get_text().count("\n") == 2 for t in ticks)  # 4 long names: id / type / shape
    lines = r.table().splitlines()
    assert any(line.startswith("0.0 Conv2d 1→2 ") for line in lines)  # cut at a word, not mid-shape
