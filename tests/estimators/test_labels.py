"""Counter-based label draws (docs/theory.md §11): uniform, reproducible, and what analyze uses."""

from __future__ import annotations

import torch
from cases import FAMILIES, make_case
from scipy import stats

import fimvar
from fimvar.estimators.labels import draw_labels, uniforms
from fimvar.families import get_family


def test_uniforms_are_uniform():
    values = uniforms(123, torch.arange(2000), 10, 3).reshape(-1).numpy()
    assert ((values > 0) & (values < 1)).all()
    assert stats.kstest(values, "uniform").pvalue > 1e-4
    again = uniforms(123, torch.arange(1000, 2000), 10, 3).reshape(-1).numpy()
    assert (again == values[30_000:]).all()


def test_draws_depend_only_on_seed_and_input_index():
    """The draws of inputs 3…6 are the same whether they are drawn alone or within 0…9, on the
    rows the model's outputs give them; sample_labels gives the same labels."""
    for family in FAMILIES:
        case = make_case("mlp-tanh", family, inputs=10)
        h = case.model(case.x).detach()
        whole = draw_labels(get_family(family), h, 5, seed=3, start=0)
        part = draw_labels(get_family(family), h[3:7], 5, seed=3, start=3)
        assert torch.equal(whole[3:7], part)
        assert torch.equal(fimvar.sample_labels(family, h, 5, seed=3), whole)
        assert not torch.equal(draw_labels(get_family(family), h, 5, seed=4, start=0), whole)
