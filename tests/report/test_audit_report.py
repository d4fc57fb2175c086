"""The estimator audit's figure and report: the figure shows every audited estimator on every
layer (the numbers of :meth:`AuditResult.layers`, zeros and unreachable sample sizes on the axis
edges, never a NaN), ``save`` writes ``audit.json``, a valid PNG/SVG and ``report.html`` whose
table holds the result's numbers and embeds the figure."""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import fimvar
from fimvar import FimvarError
from fimvar.data import load_data
from fimvar.estimators.design import Target
from fimvar.models import digits_mlp
from fimvar.report import plots
from fimvar.results.audit import LABELS
from fimvar.results.groups import MODEL_GROUP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result():
    data = load_data("digits", inputs=40)
    return fimvar.audit(digits_mlp(), data.x, "categorical", labels=data.y, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN/inf or log-axis warning while drawing
        result.save(out, run={"model": "digits <mlp>", "data": "digits"})
    return out


def series(ax) -> dict[str, list]:
    """Per estimator key, its Line2D artists on ``ax`` (gid ``audit:<key>`` for the plotted
    values, ``edge:<key>`` for the markers on the axis edges)."""
    found: dict[str, list] = {}
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if ":" in gid:
            kind, key = gid.split(":", 1)
            found.setdefault(key, []).append((kind, line))
    return found


def test_figure_has_one_series_per_estimator_and_the_results_numbers(result):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = result.plot()
        fig.savefig(io.BytesIO(), format="png")  # drawn: log axes with every point, no warning
    assert len(fig.axes) == 3
    groups = list(result.groups) + [MODEL_GROUP]
    rows = {(r.group, r.estimator): r for r in result.layers()}
    quantities = ("relative_bias", "relative_std", "inputs")
    for ax, quantity in zip(fig.axes, quantities, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == groups
        assert ax.get_yscale() == "log"
        found = series(ax)
        assert set(found) == set(result.entries)
        low, high = ax.get_ylim()
        for key, lines in found.items():
            main = [line for kind, line in lines if kind == "audit"]
            assert len(main) == 1 and main[0].get_label() == LABELS[key]
            points = sum(len(line.get_xdata()) for _, line in lines)
            assert points == len(groups)  # every layer shown, on the axis or on an edge
            for _, line in lines:
                y = np.asarray(line.get_ydata(), dtype=float)
                assert np.isfinite(y).all() and (y > 0).all()
                assert ((y >= low) & (y <= high)).all()
            expected = []
            for g in groups:
                row = rows[(g, key)]
                value = row.inputs["normal"] if quantity == "inputs" else getattr(row, quantity)
                if value is not None and value > 0 and math.isfinite(value):
                    expected.append(float(value))
            assert np.allclose(np.asarray(main[0].get_ydata(), dtype=float), expected, rtol=1e-12)
    # the unbiased estimators sit on the bottom edge of (a), below every plotted bias
    bias_axis = fig.axes[0]
    unbiased = [k for k in result.entries if all(rows[(g, k)].relative_bias == 0 for g in groups)]
    assert {"exact", "i1", "i2", "combined", "gnb"} <= set(unbiased)
    plotted = [v for r in result.layers() if r.relative_bias > 0 for v in [r.relative_bias]]
    for key in unbiased:
        edges = [line for kind, line in series(bias_axis)[key] if kind == "edge"]
        assert len(edges) == 1 and max(edges[0].get_ydata()) < min(plotted)
    # the legend names every estimator with the result's labels, in the result's order
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [LABELS[k] for k in result.entries]
    title = fig._suptitle.get_text()
    assert f"N = {result.num_inputs}" in title and f"batches of {result.batch_size}" in title
    # the reference line of (b) is the result's threshold
    assert any(np.allclose(line.get_ydata(), result.std_threshold()) for line in fig.axes[1].get_lines()
               if not line.get_gid())


def test_saved_figure_is_a_valid_png_and_svg(saved):
    import matplotlib.image

    png = saved / "figures" / "audit.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 1000
    svg = (saved / "figures" / "audit.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


class _Page(HTMLParser):
    """The tables (after the heading id they follow) and the images of a page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._section = ""
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self._section = attrs.get("id", "")
        elif tag == "table":
            self._rows = self.tables.setdefault(self._section, [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _number(text: str) -> float | None:
    return None if text == "—" else float(text.replace(",", ""))


def test_report_html_holds_the_audit_table_and_the_figure(result, saved):
    import matplotlib.image

    page = _Page()
    page.feed((saved / "report.html").read_text(encoding="utf-8"))
    table = page.tables["audit"]
    header, body = table[0], table[1:]
    assert header[:4] == ["layer", "estimator", "rel. bias", "rel. std"]
    rows = result.layers()
    assert len(body) == len(rows)
    for cells, row in zip(body, rows, strict=True):
        assert cells[0] == row.group
        assert cells[1].removesuffix(" ★") == LABELS[row.estimator]
        for text, value in ((cells[2], row.relative_bias), (cells[3], row.relative_std),
                            (cells[5], row.cost["normal"]), (cells[7], row.cost["chebyshev"])):
            shown = _number(text)
            assert (shown is None) == (value is None or not math.isfinite(value))
            if shown is not None:
                assert shown == pytest.approx(value, rel=5e-3, abs=1e-12)
        for text, count in ((cells[4], row.inputs["normal"]), (cells[6], row.inputs["chebyshev"])):
            assert _number(text) == count
    starred = {cells[0]: cells[1].removesuffix(" ★") for cells in body if cells[1].endswith(" ★")}
    assert starred[MODEL_GROUP] == LABELS[result.recommended()]
    for group in result.groups:
        best = result.recommended(group)
        assert starred.get(group) == (LABELS[best] if best else None)
    # the estimators table and the run metadata (escaped)
    assert [cells[0] for cells in page.tables["estimators"][1:]] == [LABELS[k] for k in result.entries]
    assert "digits &lt;mlp&gt;" in (saved / "report.html").read_text(encoding="utf-8")
    # the figure, embedded as a valid PNG
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    data = base64.b64decode(page.images[0].split(",", 1)[1])
    assert data == (saved / "figures" / "audit.png").read_bytes()
    matplotlib.image.imread(io.BytesIO(data), format="png")
    # audit.json: the result's document, strict JSON
    document = json.loads((saved / "audit.json").read_text())
    assert document["kind"] == "audit" and document["files"]["report"] == "report.html"
    assert document["recommended"] == result.to_dict()["recommended"]
    for got, row in zip(document["layers"], rows, strict=True):
        assert got["inputs"] == row.inputs and got["relative_bias"] == pytest.approx(row.relative_bias)


def test_zero_fisher_layer_and_target_check(tmp_path):
    """A layer with zero Fisher (zero bias, infinite relative std, unreachable sizes): every point
    lands on an edge, no NaN, no warning; the figure refuses another target than the audit's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[2].weight.zero_()  # no gradient reaches layer 0
    x = torch.randn(12, 4)
    result = fimvar.audit(model, x, "categorical", estimator=["exact", "i1", "gnb"], batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = result.plot(path=tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    for ax in fig.axes:
        for lines in series(ax).values():
            for _, line in lines:
                assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()
    with pytest.raises(FimvarError, match="audit again"):
        plots.figure(result, "audit", Target(0.2, 0.05))
    with pytest.raises(FimvarError, match="unknown figure"):
        result.plot("pie")


def test_many_layers_stack_the_panels(tmp_path):
    """Eight layers with long names: the panels stack, share the layer axis (its names once, at
    the bottom) and every estimator still has one series per panel."""
    from collections import OrderedDict

    torch.manual_seed(0)
    layers = OrderedDict()
    for i in range(7):
        layers[f"encoder_block{i}_linear"] = torch.nn.Linear(3, 3)
        layers[f"act{i}"] = torch.nn.Tanh()
    layers["classifier_head"] = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(layers)
    result = fimvar.audit(model, torch.randn(8, 3), "categorical", estimator=["i1", "gnb"], batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = result.plot(path=tmp_path / "deep.png")
    top, middle, bottom = fig.axes
    assert top.get_position().y0 > middle.get_position().y0 > bottom.get_position().y0
    names = list(result.groups) + [MODEL_GROUP]
    assert len(names) == 9 and [t.get_text() for t in bottom.get_xticklabels()] == names
    assert not any(t.get_visible() for t in top.get_xticklabels())
    assert all(t.get_visible() for t in bottom.get_xticklabels())
    for ax in fig.axes:
        assert {k for k, lines in series(ax).items() for kind, _ in lines if kind == "audit"} == {"i1", "gnb"}


def test_every_estimator_has_a_style_and_hutchinson_is_drawn(tmp_path):
    """Every estimator of the catalogue has its colour and marker; an audit with all of them,
    Hutchinson and MC included, draws and saves without a warning, one series each."""
    from fimvar.results.audit import ESTIMATORS

    assert set(ESTIMATORS) <= set(plots.COLORS) and set(ESTIMATORS) <= set(plots.MARKERS)
    assert len({plots.MARKERS[e] for e in ESTIMATORS}) == len(ESTIMATORS)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,))
    flat = [e for e in ESTIMATORS if e != "token"]  # the per-token squares need sequence outputs
    result = fimvar.audit(model, x, "categorical", labels=labels, estimator=flat, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = result.plot()
        result.save(tmp_path / "all", run={"model": "mlp", "data": "random"})
    for ax in fig.axes:
        found = series(ax)
        assert set(found) == set(flat)
        main = [line for kind, line in found["hutchinson"] if kind == "audit"]
        assert main[0].get_marker() == plots.MARKERS["hutchinson"]
    page = (tmp_path / "all" / "report.html").read_text(encoding="utf-8")
    assert "Hutchinson" in page
