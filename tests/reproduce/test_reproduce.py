"""Quick versions of the paper reproductions (``fimvar.reproduce``): they run end to end through
the command line and write their figures and ``results.json``; the qualitative claims that are
robust at quick size are checked here from the raw per-epoch numbers the run records (not from
the run's own verdicts). Claims that need the full-size runs are only reported (see
docs/reproduction.md)."""

from __future__ import annotations

import json
import warnings

import pytest

from fimvar.reproduce import EXPERIMENTS, main


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run every experiment once in quick mode through ``main``; returns name → (json, dir, s)."""
    root = tmp_path_factory.mktemp("reproduce")
    runs = {}
    for name in EXPERIMENTS:
        out = root / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([name, "--quick", "--out", str(out)]) == 0
        runs[name] = (json.loads((out / "results.json").read_text()), out)
    return runs


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_outputs(quick_runs, name):
    result, out = quick_runs[name]
    assert result["name"] == name and result["quick"] is True
    assert result["figures"], "every experiment writes at least one figure"
    for figure in result["figures"]:
        assert (out / figure).stat().st_size > 10_000, f"{figure} looks empty"
    for claim in result["claims"]:
        assert set(claim) == {"claim", "paper", "ours", "holds"}
        assert isinstance(claim["holds"], bool)


def _layer_rows(result: dict, kind: str = "conditional"):
    """Every per-epoch row of per-layer numbers (``{layer: {quantity: value}}``) of every seed."""
    return [row for history in result["numbers"]["histories"] for row in history[kind]]


@pytest.mark.parametrize("name", ["mnist", "mnist-logsigmoid"])
def test_mnist_layers(quick_runs, name):
    """[B] Fig. 2 / App. F: v2 = 0 in the linear last layer ([B] Remark 4.4) at every epoch; the
    Thm 4.1 upper bounds hold on the layer averages; the Monte Carlo std over the draws is within
    20 % of the closed form; for the sigmoid MLP, v1 < v2 in layers 1–3 and the last layer has
    the largest v1."""
    result, _ = quick_runs[name]
    rows = _layer_rows(result)
    assert rows
    for row in rows:
        layers = list(row)
        assert row[layers[-1]]["v2"] == 0
        for values in row.values():
            for quantity in ("fisher", "std_i1", "std_i2"):
                assert values[quantity] <= values[f"{quantity}_upper"] * (1 + 1e-9)
            for std in ("std_i1", "std_i2"):
                if values[std] > 0:
                    assert abs(values[f"sample_{std}"] / values[std] - 1) < 0.2
        if name == "mnist":
            assert all(row[layer]["v1"] < row[layer]["v2"] for layer in layers[:3])
            assert max(layers, key=lambda layer: row[layer]["v1"]) == layers[-1]


def test_natural_gradient(quick_runs):
    """[B] Fig. 1: at every evaluated θ the summed variance of Î2 is below Î1's, Î2 of the
    linear-in-θ models is never negative, and the stacked model matches the closed form."""
    numbers = quick_runs["natural-gradient"][0]["numbers"]
    for toy in ("gaussian", "bernoulli"):
        assert numbers[toy]["fraction_v2_below_v1_same_theta"] == 1.0
        assert numbers[toy]["negative_i2_steps"] == 0
        assert numbers[toy]["cross_check_rel_error"] < 1e-10


def test_frobenius(quick_runs):
    """[A]: the Frobenius bounds on Cov(Î1), Cov(Î2) and the weight-norm bound on Σ v1 hold at
    every recorded epoch and weight decay."""
    histories = quick_runs["frobenius"][0]["numbers"]["histories"]
    checked = 0
    for runs in histories.values():
        for run in runs:
            for full in run["full"]:
                assert full["frobenius_i1"] <= full["frobenius_i1_bound"]
                assert full["frobenius_i2"] <= full["frobenius_i2_bound"]
            for row in run["rows"]:
                for layer in row["layers"].values():
                    assert layer["v1_sum"] <= layer["v1_bound"] * (1 + 1e-9)
                    assert layer["jacobian_frobenius"] <= layer["jacobian_frobenius_bound"] * (1 + 1e-9)
                    checked += 1
    assert checked > 0


def test_unknown_experiment_is_rejected():
    with pytest.raises(SystemExit):
        main(["no-such-experiment"])


def test_read_only_output_folder_is_refused_before_running(tmp_path, capsys, monkeypatch):
    """`--out` in a read-only folder: one `fimvar: error:` line and exit status 2 before any
    experiment runs (the runners are replaced by a recorder), from both entry points."""
    import os

    import fimvar.reproduce as reproduce
    from fimvar import FimvarError
    from fimvar.app.cli import main as cli_main

    ran = []
    for name in EXPERIMENTS:
        monkeypatch.setitem(reproduce.EXPERIMENTS, name, lambda *args: ran.append(args))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable anyway")
        for out in (locked, locked / "sub"):
            for entry, argv in ((main, []), (cli_main, ["reproduce"])):
                assert entry([*argv, "natural-gradient", "--quick", "--out", str(out)]) == 2
                err = capsys.readouterr().err
                assert err.startswith("fimvar: error:") and len(err.strip().splitlines()) == 1, err
                assert str(out) in err and "writable --out" in err
        assert main(["all", "--quick", "--out", str(locked)]) == 2
        assert "writable --out" in capsys.readouterr().err
        with pytest.raises(FimvarError, match="writable --out"):
            reproduce.run_experiment("frobenius", locked / "frobenius", quick=True)
        assert not ran
    finally:
        locked.chmod(0o700)


def test_estimators(quick_runs):
    """The estimator table's identities, from formulas written separately in fimvar.audit: EWC
    at B = 1 is the empirical Fisher (same bias; one pass at B = 1 does not depend on the shuffle,
    variance 0), GNB is unbiased at every batch size, and the empirical Fisher's bias makes 5 %
    unreachable."""
    for rows in quick_runs["estimators"][0]["numbers"].values():
        by = {(r["key"], r["design"]): r for r in rows}
        assert abs(by["ewc", "B = 1"]["relative_bias"] - by["empirical", ""]["relative_bias"]) < 1e-9
        assert by["ewc", "B = 1"]["relative_std"] < 1e-6
        assert all(by["gnb", f"B = {b}"]["relative_bias"] < 1e-9 for b in (1, 32, 128))
        assert by["empirical", ""]["inputs_needed"] is None
        assert by["exact", ""]["relative_bias"] < 1e-9 and by["mc", ""]["relative_bias"] < 1e-9
