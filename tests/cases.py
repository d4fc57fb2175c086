"""One catalogue of tiny test networks — models × families × devices — that every test draws from.

- :data:`ORACLE_MODELS`: small enough for the brute-force oracle (tests/oracle.py), including
  models that only the autodiff engine supports (a residual block, LayerNorm).
- :data:`STACKS`: feed-forward stacks of every module the structured engine supports.
- :data:`MODELS` is both; :func:`make_case` builds any of them (float64 by default, any device)
  with inputs and data labels; :func:`random_network` draws seeded random smooth MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FAMILY_WIDTH = {"categorical": 3, "gaussian": 2, "bernoulli": 3, "poisson": 2}
FAMILIES = tuple(FAMILY_WIDTH)
DEVICES = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())


class Residual(nn.Module):
    """x + tanh(W x), then a linear head."""

    def __init__(self, width: int, outputs: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + torch.tanh(self.inner(x)))


def _mlp_tanh(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, t)), (3,)


def _mlp_sigmoid_softplus(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Softplus(),
                         nn.Linear(3, t)), (3,)


def _mlp_gelu_nobias(t):
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.GELU(), nn.Linear(4, t, bias=False)), (3,)


def _mlp_silu_elu_logsigmoid(t):
    return nn.Sequential(nn.Linear(2, 3), nn.SiLU(), nn.Linear(3, 3), nn.ELU(), nn.Linear(3, 3),
                         nn.LogSigmoid(), nn.Linear(3, t)), (2,)


def _conv1d(t):
    return nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, t)), (1, 6)


def _conv2d(t):
    return nn.Sequential(nn.Conv2d(1, 2, 2, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, t)), (1, 4, 4)


def _residual(t):
    return Residual(3, t), (3,)


def _layernorm(t):
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, t)), (3,)


@dataclass(frozen=True)
class Tokens:
    """Inputs that are integer token ids in ``[0, vocabulary)``, ``length`` per input."""

    vocabulary: int
    length: int


class ResidualBatchNorm(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN plus a 1×1 projection, ReLU), pooled, a head."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.shortcut = nn.Conv2d(1, 2, 1)
        self.head = nn.Linear(2, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out = torch.relu(out + self.shortcut(x))
        return self.head(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block (multi-head attention by SDPA, a GELU MLP), mean
    pooling over positions and a classification head."""

    def __init__(self, outputs: int, width: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 6), nn.GELU(), nn.Linear(6, width))
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.norm1(x)
        x = x + self.attention(a, a, a, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class LSTMClassifier(nn.Module):
    """An LSTM over the sequence, its last hidden state through a linear head."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True)
        self.head = nn.Linear(3, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class CausalLM(nn.Module):
    """A tiny GPT-style language model: token and position embeddings, one pre-norm causal
    self-attention block (SDPA), a final LayerNorm and an output layer tied to the token
    embedding; one distribution over the vocabulary per position."""

    def __init__(self, vocabulary: int, width: int = 4, length: int = 3) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Parameter(0.3 * torch.randn(length, width))
        self.norm, self.final = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.tokens.weight  # tied, as in GPT-2

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        q, k, v = self.qkv(self.norm(x)).chunk(3, -1)
        x = x + self.out(nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self.head(self.final(x))


def _causal_lm(t):
    return CausalLM(t), Tokens(t, 3)


def _sequence_tagger(t):
    """Per-position outputs of a position-wise MLP: ``(n, 2, T)``."""
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, t)), (2, 3)


def _resnet_batchnorm(t):
    return _randomise_batchnorm(ResidualBatchNorm(t)), (1, 4, 4)


def _encoder_attention(t):
    return EncoderBlock(t), (3, 4)


def _lstm(t):
    return LSTMClassifier(t), (4, 2)


def _embedding_bag(t):
    return nn.Sequential(nn.EmbeddingBag(7, 3, mode="mean"), nn.Tanh(), nn.Linear(3, t)), Tokens(7, 4)


ORACLE_MODELS = {
    "mlp-tanh": _mlp_tanh,
    "mlp-sigmoid-softplus": _mlp_sigmoid_softplus,
    "mlp-gelu-nobias": _mlp_gelu_nobias,
    "mlp-silu-elu-logsigmoid": _mlp_silu_elu_logsigmoid,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "residual": _residual,
    "layernorm": _layernorm,
    "resnet-batchnorm": _resnet_batchnorm,
    "encoder-attention": _encoder_attention,
    "lstm": _lstm,
    "embedding-bag": _embedding_bag,
    "causal-lm": _causal_lm,
    "sequence-tagger": _sequence_tagger,
}


@dataclass
class Case:
    model_name: str
    family: str
    model: nn.Module
    x: torch.Tensor
    labels: torch.Tensor

    @property
    def id(self) -> str:
        return f"{self.model_name}-{self.family}"


def data_labels(family: str, outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Arbitrary labels in the family's domain (not drawn from the model); for outputs
    ``(n, L, T)`` one label per position."""
    *rows, width = outputs.shape
    if family == "categorical":
        return torch.randint(0, width, tuple(rows), generator=generator)
    if family == "bernoulli":
        return torch.randint(0, 2, (*rows, width), generator=generator).double()
    if family == "poisson":
        return torch.randint(0, 4, (*rows, width), generator=generator).double()
    return torch.randn(*rows, width, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# Stacks for the structured engine (tests/engine/test_structured.py): every supported module
# type, in hand-written and seeded random feed-forward stacks.

def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters (eval-mode BatchNorm)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.normal_(1.0, 0.3)
                    module.bias.normal_(0.0, 0.3)
    return model


def _deep_mixed(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 3),
                         nn.Softplus(beta=2.0), nn.Linear(3, 3), nn.GELU(approximate="tanh"),
                         nn.Linear(3, t)), (3,)


def _batchnorm_dropout(t):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.3),
                          nn.Linear(4, 4), nn.Linear(4, 3), nn.SiLU(), nn.Identity(),
                          nn.Linear(3, t))
    return _randomise_batchnorm(model), (3,)


def _relu_leaky(t):
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.LeakyReLU(0.2),
                         nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, t)), (3,)


def _nested_sigmoid_output(t):
    inner = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.LogSigmoid(), nn.Linear(4, 3)))
    return nn.Sequential(inner, nn.ELU(alpha=0.7), nn.Sequential(nn.Linear(3, t), nn.Sigmoid())), (3,)


def _cnn_groups(t):
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Sigmoid(),
                         nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.Tanh(),
                         nn.Conv2d(4, 4, 2, groups=4, bias=False), nn.Softplus(), nn.Flatten(),
                         nn.Linear(4, t)), (2, 6, 6)


def _cnn_pooling(t):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding="same", dilation=2), nn.BatchNorm2d(3),
                          nn.ELU(), nn.MaxPool2d(2, stride=1, padding=1),
                          nn.Conv2d(3, 2, 2, padding="same"), nn.SiLU(), nn.AvgPool2d(2),
                          nn.Dropout2d(0.2), nn.Flatten(), nn.Linear(8, 3), nn.Tanh(),
                          nn.Linear(3, t))
    return _randomise_batchnorm(model), (1, 4, 4)


def _conv1d_pooling(t):
    model = nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.GELU(),
                          nn.Conv1d(3, 4, 2, dilation=2), nn.BatchNorm1d(4), nn.Mish(),
                          nn.MaxPool1d(2), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(8, t))
    return _randomise_batchnorm(model), (2, 11)


def _sequence_linear(t):
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid(), nn.Flatten(),
                         nn.Linear(8, t)), (4, 3)


ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.LogSigmoid, nn.ELU, nn.GELU, nn.SiLU, nn.ReLU,
               nn.LeakyReLU)


def _random_mlp(seed: int):
    """A random MLP: 2–4 hidden layers, random activations, BatchNorm1d and Dropout."""

    def build(t):
        rng = torch.Generator().manual_seed(seed)

        def pick(n: int) -> int:
            return int(torch.randint(0, n, (1,), generator=rng))

        width = 2 + pick(3)
        layers: list[nn.Module] = []
        inputs = width
        for _ in range(2 + pick(3)):
            out = 2 + pick(4)
            layers.append(nn.Linear(inputs, out, bias=pick(4) > 0))
            if pick(4) == 0:
                layers.append(nn.BatchNorm1d(out))
            layers.append(ACTIVATIONS[pick(len(ACTIVATIONS))]())
            if pick(4) == 0:
                layers.append(nn.Dropout(0.5))
            inputs = out
        layers.append(nn.Linear(inputs, t))
        return _randomise_batchnorm(nn.Sequential(*layers)), (width,)

    return build


def _random_cnn(seed: int):
    """A random 1-d or 2-d CNN: 1–2 convolutions (random stride, padding, dilation, groups),
    activations, BatchNorm, average or max pooling, then a linear head."""

    def build(t):
        rng = torch.Generator().manual_seed(seed)

        def pick(n: int) -> int:
            return int(torch.randint(0, n, (1,), generator=rng))

        dims = 1 + pick(2)
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        pool = ((nn.AvgPool1d, nn.MaxPool1d) if dims == 1 else (nn.AvgPool2d, nn.MaxPool2d))[pick(2)]
        size = 9 if dims == 1 else 6
        while True:  # redraw until the stack keeps at least one position
            channels = 2
            layers: list[nn.Module] = []
            for _ in range(1 + pick(2)):
                groups = 2 if pick(2) else 1
                out = 2 * (1 + pick(2))
                layers.append(conv(channels, out, 2 + pick(2), stride=1 + pick(2),
                                   padding=pick(2), dilation=1 + pick(2), groups=groups,
                                   bias=pick(3) > 0))
                if pick(3) == 0:
                    layers.append(norm(out))
                layers.append(ACTIVATIONS[pick(len(ACTIVATIONS))]())
                channels = out
            layers += [pool(2, stride=1), nn.Flatten()]
            model = nn.Sequential(*layers)
            try:
                with torch.no_grad():
                    features = model.eval()(torch.zeros(1, 2, *([size] * dims))).shape[1]
            except RuntimeError:
                continue
            break
        model.append(nn.Linear(features, t))
        return _randomise_batchnorm(model), (2, *([size] * dims))

    return build


STACKS = {
    "deep-mixed": _deep_mixed,
    "batchnorm-dropout": _batchnorm_dropout,
    "relu-leaky": _relu_leaky,
    "nested-sigmoid-output": _nested_sigmoid_output,
    "cnn-groups": _cnn_groups,
    "cnn-pooling": _cnn_pooling,
    "conv1d-pooling": _conv1d_pooling,
    "sequence-linear": _sequence_linear,
    **{f"random-mlp-{seed}": _random_mlp(seed) for seed in range(3)},
    **{f"random-cnn-{seed}": _random_cnn(seed) for seed in range(3)},
}
#: every model of the catalogue
MODELS = {**ORACLE_MODELS, **STACKS}
#: catalogue models the structured engine supports, and those it must refuse
UNSUPPORTED_MODELS = {"residual": "Residual", "layernorm": "LayerNorm",
                      "resnet-batchnorm": "ResidualBatchNorm", "encoder-attention": "EncoderBlock",
                      "lstm": "LSTMClassifier", "embedding-bag": "EmbeddingBag",
                      "causal-lm": "CausalLM"}
STRUCTURED_MODELS = [m for m in MODELS if m not in UNSUPPORTED_MODELS]
#: (model, family) pairs checked against the brute-force oracle
#: (Poisson on the architecture models is left out: the oracle's truncated Poisson support times
#: their dense Hessians costs a minute per case, and Poisson adds nothing architectural)
ARCHITECTURES = ("resnet-batchnorm", "encoder-attention", "lstm", "embedding-bag")
#: per-position outputs (n, L, T): a language model (categorical) and a tagger (also Bernoulli)
SEQUENCE_CASES = [("causal-lm", "categorical"), ("sequence-tagger", "categorical"),
                  ("sequence-tagger", "bernoulli")]
ORACLE_CASES = [(m, f) for m in ORACLE_MODELS for f in FAMILIES
                if not (m in ARCHITECTURES and f == "poisson")
                and (m, f) not in [(s, g) for s, _ in SEQUENCE_CASES for g in FAMILIES]] + SEQUENCE_CASES


def make_case(model_name: str, family: str, inputs: int = 3, seed: int = 0, *,
              device: str = "cpu", dtype: torch.dtype = torch.float64, outputs: int | None = None) -> Case:
    """A catalogue model with ``inputs`` seeded inputs and data labels (not drawn from the model),
    in ``dtype`` on ``device``; ``outputs`` overrides the family's default output width."""
    torch.manual_seed(seed)
    model, shape = MODELS[model_name](outputs or FAMILY_WIDTH[family])
    model = model.double()
    if family == "poisson":  # keep rates moderate so that the oracle's truncated sum is exact
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.6)
    generator = torch.Generator().manual_seed(seed + 1)
    if isinstance(shape, Tokens):
        x = torch.randint(0, shape.vocabulary, (inputs, shape.length), generator=generator)
    else:
        x = torch.randn(inputs, *shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labels = data_labels(family, model.eval()(x), generator)
    model = model.to(device=device, dtype=dtype)
    labels = labels.to(device) if not labels.is_floating_point() else labels.to(device, torch.float64)
    x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    return Case(model_name, family, model, x, labels)


SMOOTH = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.LogSigmoid)


def random_network(seed: int, inputs: int = 2):
    """A seeded random smooth MLP (1–3 hidden layers), its family (cycling through the four) and
    ``inputs`` inputs; weights scaled by 0.5, 1 or 3 (confident outputs), Poisson by 0.5."""
    generator = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=generator))

    family = FAMILIES[seed % 4]
    outputs = {"categorical": 2 + pick(4), "gaussian": 1 + pick(3), "bernoulli": 1 + pick(3),
               "poisson": 1 + pick(2)}[family]
    widths = [2 + pick(3) for _ in range(1 + pick(3))]
    layers, previous = [], 2 + pick(3)
    width_in = previous
    for width in widths:
        layers += [nn.Linear(previous, width), SMOOTH[pick(len(SMOOTH))]()]
        previous = width
    layers.append(nn.Linear(previous, outputs))
    torch.manual_seed(seed)
    model = nn.Sequential(*layers).double()
    scale = 0.5 if family == "poisson" else [0.5, 1.0, 3.0][pick(3)]  # 3.0: confident outputs
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.randn(inputs, width_in, generator=generator, dtype=torch.float64)
    return model, x, family




