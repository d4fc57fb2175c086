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
