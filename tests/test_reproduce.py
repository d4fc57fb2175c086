"""Quick versions of the paper reproductions (``fimvar.reproduce``): they run end to end through
the command line, write their figures and ``results.json``, and reproduce the qualitative
claims that are robust at quick size. Claims that need the full-size runs are only reported
(see docs/reproduction.md), not asserted here."""

from __future__ import annotations

import json
import time
import warnings

import pytest

from fimvar.reproduce import EXPERIMENTS, main

#: claims asserted at quick size (the prefix of each claim's text)
ROBUST = {
    "natural-gradient": [
        "The summed variance of Î2 is lower than that of Î1",
        "Linear-in-θ models: Î2 has no label noise",
    ],
    "mnist": [
        "V2 = 0 in the last layer",
        "The last layer has the largest V1",
        "V1 < V2 in the first three layers",
        "Thm 4.1 bounds hold and the Monte Carlo std matches",
    ],
    "mnist-logsigmoid": [
        "Log-sigmoid MLP: V2 = 0 in the last layer",
    ],
    "frobenius": [
        "[A] Frobenius bounds hold",
        "The weight-norm bound on Σ v1 holds per layer",
    ],
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run every experiment once in quick mode through ``main``; returns name → (json, dir, s)."""
    root = tmp_path_factory.mktemp("reproduce")
    runs = {}
    for name in EXPERIMENTS:
        out = root / name
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([name, "--quick", "--out", str(out)]) == 0
        seconds = time.perf_counter() - start
        runs[name] = (json.loads((out / "results.json").read_text()), out, seconds)
    return runs


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_outputs(quick_runs, name):
    result, out, _ = quick_runs[name]
    assert result["name"] == name and result["quick"] is True
    assert result["figures"], "every experiment writes at least one figure"
    for figure in result["figures"]:
        assert (out / figure).stat().st_size > 10_000, f"{figure} looks empty"
    for claim in result["claims"]:
        assert set(claim) == {"claim", "paper", "ours", "holds"}
        assert isinstance(claim["holds"], bool)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_robust_claims(quick_runs, name):
    result, _, _ = quick_runs[name]
    claims = {c["claim"]: c for c in result["claims"]}
    for prefix in ROBUST[name]:
        matches = [c for text, c in claims.items() if text.startswith(prefix)]
        assert len(matches) == 1, f"no claim starting with {prefix!r}"
        assert matches[0]["holds"], f"{name}: {matches[0]['claim']} — ours: {matches[0]['ours']}"


def test_quick_total_time(quick_runs):
    total = sum(seconds for _, _, seconds in quick_runs.values())
    assert total < 120, f"quick reproductions took {total:.0f} s (budget 60 s, 2× slack for load)"


def test_unknown_experiment_is_rejected():
    with pytest.raises(SystemExit):
        main(["no-such-experiment"])
