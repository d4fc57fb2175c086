"""``fimvar audit`` end to end on the bundled digits: the per-layer table, the JSON document (its
numbers equal those of :func:`fimvar.audit` on the same model and data), and one-line errors."""

from __future__ import annotations

import json

import torch

import fimvar
from fimvar.app.cli import main
from fimvar.data import load_data
from fimvar.models import digits_mlp

BASE = ["audit", "--model", "fimvar.models:digits_mlp", "--data", "digits", "--family", "categorical",
        "--inputs", "40", "--threads", "1"]


def test_audit_table_and_json(capsys):
    assert main(BASE + ["--labels", "--batch-size", "8"]) == 0
    table = capsys.readouterr().out
    assert "EWC" in table and "GNB" in table and "recommended" in table
    assert main(BASE + ["--labels", "--batch-size", "8", "-e", "ewc", "-e", "gnb", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["estimators"]) == {"ewc", "gnb"}
    data = load_data("digits", inputs=40)
    expected = fimvar.audit(digits_mlp(), data.x, "categorical", labels=data.y, estimator=["ewc", "gnb"],
                            batch_size=8)
    rows = {(r["group"], r["estimator"]): r for r in document["layers"]}
    for row in expected.layers():
        got = rows[(row.group, row.estimator)]
        assert abs(got["relative_bias"] - row.relative_bias) <= 1e-12 * max(1.0, row.relative_bias)
        assert got["inputs"] == row.inputs
    assert torch.get_num_threads() >= 1


def test_audit_errors_are_one_line(capsys):
    assert main(BASE + ["--labels", "--batch-size", "7", "-e", "ewc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fimvar: error:") and "divisible" in err and "Traceback" not in err
    assert main(BASE + ["-e", "ewc", "--batch-size", "8"]) == 2
    assert "labels" in capsys.readouterr().err


def test_audit_writes_a_report_folder(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(BASE + ["--labels", "--batch-size", "8", "-e", "ewc", "-e", "i1", "--out", str(out)]) == 0
    assert f"to {out}/" in capsys.readouterr().out
    document = json.loads((out / "audit.json").read_text())
    assert set(document["estimators"]) == {"ewc", "i1"} and document["run"]["data"].startswith("digits")
    assert (out / "figures" / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "fimvar estimator audit" in page and page.count("data:image/png;base64,") == 1
    # again without the page: the stale report.html goes, the document stays
    assert main(BASE + ["-e", "i1", "--out", str(out), "--no-html", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimators"].keys() == {"i1"}
    assert not (out / "report.html").exists() and (out / "figures" / "audit.svg").exists()
    assert main(BASE + ["-e", "i1", "--no-html"]) == 2
    assert "--out" in capsys.readouterr().err


def test_audit_hutchinson_from_the_command_line(capsys):
    """``-e hutchinson -k 2``: the estimator with its probes and cost ``F + M k H`` in the document."""
    arguments = ["audit", "--model", "fimvar.models:digits_mlp", "--data", "digits", "--family",
                 "categorical", "--inputs", "2", "--threads", "1"]
    assert main(arguments + ["-e", "hutchinson", "-k", "2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    entry = document["estimators"]["hutchinson"]
    costs = fimvar.CostModel()
    assert set(document["estimators"]) == {"hutchinson"} and entry["probes"] == 2
    assert entry["cost_per_input"] == costs.forward + 2 * costs.hessian
    assert all(r["relative_bias"] == 0 for r in document["layers"])
    assert main(arguments + ["-e", "hutchinson", "-k", "0"]) == 2
    assert "probes" in capsys.readouterr().err
