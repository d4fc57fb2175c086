"""Inputs as keyword or positional arguments (a dict such as a ``transformers`` batch, a tuple for
a forward with several inputs), packed into one tensor per batch (fimvar.analysis.packing)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fimvar


class KeywordModel(nn.Module):
    """Token ids and an attention mask, as a ``transformers`` model takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        h = self.embedding(input_ids) * attention_mask[..., None]
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


class OneTensor(nn.Module):
    """The same model written by hand for one tensor holding both arguments (the reference)."""

    def __init__(self, model: KeywordModel) -> None:
        super().__init__()
        self.embedding, self.head = model.embedding, model.head

    def forward(self, x):
        return KeywordModel.forward(self, x[:, :4], x[:, 4:])


def _batch(n: int = 6):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (n, 4), generator=generator)
    mask = torch.ones(n, 4, dtype=torch.long)
    mask[::2, -1] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _close(a, b):
    for quantity in ("fisher", "v1", "v2", "i1", "i2", "input_var"):
        for name, value in getattr(a, quantity).items():
            torch.testing.assert_close(value, getattr(b, quantity)[name], rtol=1e-12, atol=1e-15)


def test_dict_inputs_equal_the_hand_packed_model():
    torch.manual_seed(0)
    model = KeywordModel().double()
    batch = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(model, batch, samples=2)
        reference = fimvar.analyze(OneTensor(model), torch.cat(list(batch.values()), 1), samples=2)
    _close(result, reference)
    assert "forward" not in vars(model)  # the model's own forward is back


def test_a_dataloader_of_dicts_resumes_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = KeywordModel().double()
    batch = _batch()
    rows = [{k: v[i] for k, v in batch.items()} for i in range(6)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = fimvar.analyze(model, batch, samples=2)
        first = fimvar.analyze(model, DataLoader(rows[:4], batch_size=3), samples=2,
                               checkpoint=tmp_path / "run.ckpt", batch_size=2)
        resumed = fimvar.analyze(model, DataLoader(rows, batch_size=4), samples=2,
                                 checkpoint=tmp_path / "run.ckpt", batch_size=2)
    assert first.num_inputs == 4 and resumed.num_inputs == 6
    _close(resumed, whole)


def test_positional_arguments():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, x, z):
            return torch.tanh(self.a(x)) + self.b(z)

    class Joined(nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.a, self.b = model.a, model.b

        def forward(self, xz):
            return TwoInputs.forward(self, xz[:, :3], xz[:, 3:])

    torch.manual_seed(0)
    model = TwoInputs().double()
    x, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _close(fimvar.analyze(model, (x, z)), fimvar.analyze(Joined(model), torch.cat([x, z], 1)))


@pytest.mark.parametrize("bad,match", [
    ({"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
     "different numbers"),
    ({"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": True}, "must be a tensor"),
    ({}, "empty"),
])
def test_bad_arguments_get_one_clear_error(bad, match):
    with pytest.raises(fimvar.FimvarError, match=match):
        fimvar.analyze(KeywordModel(), bad)


def test_batches_with_another_layout_are_refused():
    batch = _batch()
    other = {"input_ids": batch["input_ids"][:, :3], "attention_mask": batch["attention_mask"][:, :3]}
    with pytest.raises(fimvar.FimvarError, match="same layout"):
        fimvar.analyze(KeywordModel().double(), [batch, other])
