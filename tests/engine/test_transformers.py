"""``transformers`` models as users have them (random weights from small configurations, offline):
a BERT classifier with its default attention (SDPA) and a padding mask, and a GPT-2 language
model with tied embeddings and per-position outputs — their dict inputs, ``.logits`` outputs and
data-dependent mask code, against the float64 oracle."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from oracle import Oracle

import fimvar
from fimvar.analysis.packing import Packing, packed_forward

try:  # the torchvision wheel next to the CPU build of torch does not import; transformers then
    import torchvision  # noqa: F401 (would fail to import its models) — hide it
except Exception:  # noqa: BLE001
    sys.modules["torchvision"] = None
transformers = pytest.importorskip("transformers")


def bert():
    config = transformers.BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=6, max_position_embeddings=8, num_labels=3)
    ids = torch.randint(0, 10, (3, 4), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[0, -1] = 0  # padding: the mask code branches on its values
    return transformers.BertForSequenceClassification(config), {"input_ids": ids, "attention_mask": mask}


def gpt2():
    config = transformers.GPT2Config(vocab_size=5, n_positions=4, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(2))
    return transformers.GPT2LMHeadModel(config), {"input_ids": ids}


@pytest.mark.parametrize("build", [bert, gpt2])
def test_transformers_models_match_the_oracle(build):
    torch.manual_seed(0)
    model, batch = build()
    model = model.double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fimvar.analyze(model, batch, samples=1)
        packing = Packing.of(batch)
        with packed_forward(model, packing):
            oracle = Oracle(model, "categorical")
            truth = oracle.analysis(packing.pack(batch))
    assert all(bound.holds() for bound in result.bounds.values())
    for quantity in ("fisher", "v1", "v2", "c12", "input_var"):
        expected = oracle.split(truth[quantity])
        scale = float(truth[quantity].abs().max())
        for name, value in expected.items():
            torch.testing.assert_close(getattr(result, quantity)[name], value, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("build", [bert, gpt2])
def test_graph_engine_on_transformers_models(build):
    """The graph engine's exact Fisher (hooks on BERT's Linear/LayerNorm/Embedding and GPT-2's
    ``Conv1D`` projections; BERT's batch-shared position embeddings by autodiff) against the
    oracle's."""
    torch.manual_seed(0)
    model, batch = build()
    model = model.double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = fimvar.fisher_diagonal(model, batch, engine="graph")
        packing = Packing.of(batch)
        with packed_forward(model, packing):
            oracle = Oracle(model, "categorical")
            truth = oracle.analysis(packing.pack(batch))
    expected = oracle.split(truth["fisher"])
    scale = float(truth["fisher"].abs().max())
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, rtol=1e-9, atol=1e-9 * scale)
    if build is gpt2:
        from fimvar.engine.graph import GraphEngine

        engine = GraphEngine(model, [n for n, _ in model.named_parameters()], 2**30)
        with packed_forward(model, packing):
            engine.chunk_size(packing.pack(batch), 15, 0)
        assert "transformer.h.0.attn.c_attn" in engine.layers  # Conv1D by its hook rule
