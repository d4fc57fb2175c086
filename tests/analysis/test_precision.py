"""float32 models: derivatives in float32, statistics and sums in float64."""

from __future__ import annotations

import copy

import torch
from cases import make_case

import fimvar


def test_float32_model_matches_float64_within_single_precision():
    case = make_case("mlp-sigmoid-softplus", "categorical", inputs=6)
    single = copy.deepcopy(case.model).float()
    r64 = fimvar.analyze(case.model, case.x, "categorical", samples=2, bounds=False)
    r32 = fimvar.analyze(single, case.x.float(), "categorical", samples=2, bounds=False)
    for quantity in ("fisher", "v1", "v2", "i1", "i2"):
        for name, expected in getattr(r64, quantity).items():
            actual = getattr(r32, quantity)[name]
            assert actual.dtype == torch.float64
            scale = float(expected.abs().max())
            assert float((actual - expected).abs().max()) <= 1e-5 * scale + 1e-12, (quantity, name)
