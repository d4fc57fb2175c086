"""Reports: summary.json against its JSON Schema, the safetensors round trip, the figures, and
report.html (self-contained; rendered by headless Chromium without console errors)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from cases import make_case

import fimvar
from fimvar import FimvarError
from fimvar.report import load, schema, validate
from fimvar.report.tensors import tensors_of
from fimvar.report.text import layer_table


@pytest.fixture(scope="module")
def result():
    case = make_case("mlp-tanh", "categorical", inputs=30, dtype=torch.float32, outputs=4)
    return fimvar.analyze(case.model, case.x, "categorical", samples=3, labels=case.labels)


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result.save(out, run={"model": "test model <b>&</b>", "data": "random"})
    return out


def test_summary_matches_its_schema(result, saved):
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    document = json.loads((saved / "summary.json").read_text())
    validate(document)
    assert document["schema_version"] == 1
    assert document["run"]["family"] == "categorical" and document["run"]["seed"] == 0
    assert document["run"]["model"] == "test model <b>&</b>"
    assert {g["group"] for g in document["groups"]} == {"0", "2", "(model)"}
    assert document["files"]["tensors"] == "fisher.safetensors"
    assert all(Path(saved / f).exists() for f in document["files"]["figures"])
    # without labels, without bounds, with infinities (a parameter group with zero Fisher)
    dead = make_case("mlp-tanh", "categorical", inputs=4, dtype=torch.float32)
    with torch.no_grad():
        dead.model[0].weight.zero_()
        dead.model[0].bias.zero_()
        dead.model[2].weight.zero_()
    bare = fimvar.analyze(dead.model, dead.x, "categorical", bounds=False)
    document = bare.summary()
    validate(document)
    json.dumps(document, allow_nan=False)  # strict JSON: non-finite numbers became null
    broken = dict(document, schema_version=2)
    with pytest.raises(FimvarError, match="schema_version"):
        validate(broken)


def test_safetensors_round_trip(result, saved):
    from safetensors import safe_open

    with safe_open(str(saved / "fisher.safetensors"), framework="pt") as stream:
        keys = set(stream.keys())
        header = json.loads(stream.metadata()["fimvar"])
    assert "0.weight/fisher" in keys and "2.bias/v1" in keys and "0.weight/bound:thm4.1_v1_upper" in keys
    assert "0.weight/empirical" in keys and "2.weight/alpha_star" in keys
    assert header["format_version"] == 1 and header["shapes"]["0.weight"] == [4, 3]
    loaded = load(saved)
    assert loaded.family == result.family and loaded.samples == result.samples
    assert loaded.num_inputs == result.num_inputs and loaded.groups == result.groups
    original, again = tensors_of(result), tensors_of(loaded)
    assert original.keys() == again.keys()
    for key in original:
        assert torch.equal(original[key], again[key]), key
    assert loaded.table() == result.table()
    assert repr(loaded.group_summary()) == repr(result.group_summary())  # NaN-aware equality
    assert repr(loaded.plan().to_dict()) == repr(result.plan().to_dict())
    assert loaded.draw_variance("i1")["0.weight"].equal(result.draw_variance("i1")["0.weight"])
    holds = {n: b.holds() for n, b in result.bounds.items()}
    assert {n: b.holds() for n, b in loaded.bounds.items()} == holds
    assert loaded.group_bounds.keys() == result.group_bounds.keys()
    assert fimvar.DiagonalResult.load(saved / "fisher.safetensors").num_inputs == result.num_inputs
    with pytest.raises(FimvarError, match="no saved fimvar result"):
        load(saved / "missing")


def test_terminal_table_fits_80_columns(result):
    table = layer_table(result)
    assert max(len(line) for line in table.splitlines()) <= 80
    assert table.splitlines()[0].split()[:4] == ["layer", "Fisher", "std", "Î1"]
    for group in ("0", "2", "(model)"):
        assert any(line.startswith(group) for line in table.splitlines())


def test_figures(result, saved, tmp_path):
    import matplotlib.image

    names = {"fisher_std", "bound_tightness", "relative_std", "sample_size"}
    for name in names:
        png = saved / "figures" / f"{name}.png"
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 400
        svg = (saved / "figures" / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    figures = result.plot()
    assert set(figures) == names
    fig = result.plot("sample_size", tmp_path / "s.png", rho=0.2)
    assert (tmp_path / "s.png").exists() and len(fig.axes) == 2
    with pytest.raises(FimvarError, match="unknown figure"):
        result.plot("pie")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value:
                self.links.append(value)


def test_report_html_is_self_contained(saved):
    page = (saved / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    images = [link for link in parser.links if link.startswith("data:")]
    assert images and all(link.startswith("data:image/png;base64,") for link in images)
    # every other link is a relative link to a file of the folder (the file list)
    files = [link for link in parser.links if not link.startswith("data:")]
    assert files and all((saved / link).is_file() for link in files)
    assert not re.search(r"https?://|url\(", page)
    for link in images:  # every embedded figure is a valid PNG
        import matplotlib.image

        matplotlib.image.imread(io.BytesIO(base64.b64decode(link.split(",", 1)[1])), format="png")
    assert parser.tags.count("table") >= 5 and parser.tags.count("img") == 4
    assert "test model &lt;b&gt;&amp;&lt;/b&gt;" in page  # metadata is escaped


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(browser: str, page: Path, profile: Path) -> tuple[str, str]:
    """Load a page in headless Chromium: its DOM after rendering, and the browser's log."""
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed: put chromium, chromium-browser "
                    "or google-chrome on the PATH (Debian/Ubuntu: sudo apt-get install chromium; .ci/run "
                    "installs it) to check that report.html renders")
def test_report_renders_in_headless_chromium(saved, tmp_path):
    browser = chromium()
    # the check can see console errors: a page that logs one is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom')</script></body></html>")
    _, log = render(browser, bad, tmp_path / "profile-bad")
    assert any("boom" in line for line in console_messages(log))
    dom, log = render(browser, saved / "report.html", tmp_path / "profile")
    assert console_messages(log) == []
    assert "<h1>fimvar report</h1>" in dom
    for section in ("Per-layer summary", "Plan: relative error", "Bounds and their tightness", "Figures",
                    "Empirical Fisher"):
        assert section in dom, section
    assert dom.count("<table") >= 5 and dom.count("data:image/png;base64,") == 4
    assert "(model)" in dom
    assert not re.search(r">\s*-?(nan|NaN|inf|Infinity)\s*<", dom)  # no raw non-finite number shown


def _rewrite_header(source: Path, target: Path, header: str | None) -> None:
    """Copy a safetensors file with its ``fimvar`` metadata replaced by ``header``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as stream:
        tensors = {key: stream.get_tensor(key) for key in stream.keys()}
    save_file(tensors, str(target), metadata=None if header is None else {"fimvar": header})


@pytest.mark.parametrize("header,match", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"format": "fimvar.diagonal-result", "format_version": 1}), "lack 'shapes'"),
    (json.dumps({"format": "fimvar.diagonal-result", "format_version": 1, "shapes": {"0.weight": "x"},
                 "family": "categorical", "samples": 1, "num_inputs": 1, "engine": "e",
                 "groups": {}, "labels": False, "draw_moments": []}), "malformed"),
    (json.dumps({"format": "fimvar.diagonal-result", "format_version": 1, "shapes": {"0.weight": [4, 3]},
                 "family": "categorical", "samples": "many", "num_inputs": 1, "engine": "e",
                 "groups": {}, "labels": False, "draw_moments": []}), "malformed"),
])
def test_load_malformed_metadata(saved, tmp_path, header, match):
    broken = tmp_path / "fisher.safetensors"
    _rewrite_header(saved / "fisher.safetensors", broken, header)
    with pytest.raises(FimvarError, match=match):
        load(tmp_path)


def test_load_malformed_metadata_of_other_results(tmp_path):
    case = make_case("mlp-tanh", "categorical", inputs=3)
    full = fimvar.analyze_full(case.model, case.x, bounds=False).save(tmp_path / "full", figures=False)
    hidden = fimvar.hidden_fisher(case.model, case.x, ["1"]).save(tmp_path / "hidden", figures=False)
    for folder, name, result_type, format_ in (
            (full, "full.safetensors", fimvar.FullResult, "fimvar.full-result"),
            (hidden, "hidden.safetensors", fimvar.HiddenResult, "fimvar.hidden-result")):
        for header in ("{", json.dumps({"format": format_, "format_version": 1})):
            _rewrite_header(folder / name, tmp_path / name, header)
            with pytest.raises(FimvarError, match="not JSON|lack"):
                result_type.load(tmp_path / name)


def test_saving_again_removes_stale_files(result, tmp_path):
    """A second save without the report or the figures removes those of the first; files that
    are not fimvar's own kinds stay."""
    out = tmp_path / "out"
    result.save(out)
    assert (out / "report.html").exists() and (out / "figures" / "fisher_std.png").exists()
    (out / "figures" / "mine.png").write_bytes(b"not ours")
    (out / "notes.txt").write_text("keep me")
    result.save(out, figures=False, html=False)
    assert not (out / "report.html").exists()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["mine.png"]
    assert (out / "notes.txt").read_text() == "keep me"
    document = json.loads((out / "summary.json").read_text())
    assert document["files"]["figures"] == [] and "report" not in document["files"]
    (out / "figures" / "mine.png").unlink()
    result.save(out, figures=False)  # an emptied figures/ goes too
    assert not (out / "figures").exists() and (out / "report.html").exists()


def test_first_order_result_round_trip_summary_and_report(tmp_path):
    """A first-order result (second_order=False) saves and loads bit-identically (still first-order),
    its summary matches the schema with null Î2 columns, its table shows — for them, and its
    report.html renders (headless Chromium, when installed) without console errors or raw NaN."""
    case = make_case("mlp-tanh", "categorical", inputs=30, dtype=torch.float32, outputs=4)
    first = fimvar.analyze(case.model, case.x, "categorical", samples=3, labels=case.labels,
                           second_order=False)
    out = first.save(tmp_path / "first", run={"model": "first-order"})
    loaded = load(out)
    assert loaded.second_order is False and loaded.estimators == ("i1", "exact") and loaded.v2 == {}
    original, again = tensors_of(first), tensors_of(loaded)
    assert original.keys() == again.keys() and not any("/i2" in k or "/v2" in k for k in original)
    for key in original:
        assert torch.equal(original[key], again[key]), key
    document = json.loads((out / "summary.json").read_text())
    validate(document)
    assert document["run"]["second_order"] is False
    assert all(g["std_i2"] is None and g["better"] == "i1" for g in document["groups"])
    assert "—" in layer_table(first) and "second_order=False" in layer_table(first)
    assert all((out / f).exists() for f in document["files"]["figures"])
    browser = chromium()
    if browser is not None:
        dom, log = render(browser, out / "report.html", tmp_path / "profile")
        assert console_messages(log) == [] and "first-order analysis" in dom
        assert not re.search(r">\s*-?(nan|NaN|inf|Infinity)\s*<", dom)
