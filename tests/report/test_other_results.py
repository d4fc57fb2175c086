"""Full-matrix, hidden-layer and weight-norm results: saved, loaded back unchanged, summarised
(strict JSON) and plotted."""

from __future__ import annotations

import json

import matplotlib.image
import torch
from cases import make_case

import fimvar


def test_full_hidden_and_weight_norm_results_round_trip(tmp_path):
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=4)
    results = {
        "full": fimvar.analyze_full(case.model, case.x, samples=2),
        "hidden": fimvar.hidden_fisher(case.model, case.x, ["1", "3"], samples=2),
        "weight_norms": fimvar.weight_norm_bounds(case.model, case.x),
    }
    figures = {"full": "matrices", "hidden": "hidden_units", "weight_norms": "weight_norms"}
    for kind, result in results.items():
        out = result.save(tmp_path / kind)
        document = json.loads((out / "summary.json").read_text())
        assert document["kind"] == kind and document["files"]["figures"]
        json.dumps(document, allow_nan=False)
        image = matplotlib.image.imread(out / "figures" / f"{figures[kind]}.png")
        assert image.shape[0] > 200
        again = type(result).load(out)
        if kind == "full":
            for q in ("fisher", "i1", "i2", "v1", "v2", "input_var"):
                assert torch.equal(getattr(again, q), getattr(result, q))
            assert again.frobenius == result.frobenius and again.slices == result.slices
        elif kind == "hidden":
            assert list(again) == ["1", "3"]
            for name in again:
                assert torch.equal(again[name].fisher, result[name].fisher)
                assert torch.equal(again[name].input_var_diagonal, result[name].input_var_diagonal)
        else:
            assert list(again) == list(result)
        assert set(result.plot()) == {figures[kind]}
