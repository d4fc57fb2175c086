"""Language models from ``transformers`` and text as token ids, offline (``fimvar analyze --model
hf:… --data text:…``).

Model specs (``hf:`` prefix; nothing is ever downloaded):

==============================  ==============================================================
``hf:DIR``                      a model folder saved by ``save_pretrained``:
                                ``AutoModelForCausalLM.from_pretrained(DIR, local_files_only=True)``;
                                its tokenizer too when the folder has one
``hf:CONFIG.json``              a ``config.json`` (``AutoConfig``): the model with random
                                weights (seeded, :data:`INIT_SEED`); ``--weights`` loads a state dict
``hf:gpt2-tiny``                a built-in GPT-2 configuration (:data:`BUILTIN`: vocabulary 256,
                                2 layers of width 32, 128 positions), random weights as above
==============================  ==============================================================

Data specs: ``text:FILE[#length=L]`` (a UTF-8 text file) and ``text:bundled[#length=L]`` (the
public-domain text shipped in ``fimvar/corpus``, see its README), cut into non-overlapping
windows of ``L`` tokens (default :data:`DEFAULT_LENGTH`; the tail shorter than ``L`` is dropped).
Tokenisation: the model folder's tokenizer (``AutoTokenizer``, local files only) when it has one,
else the UTF-8 bytes of the text as ids 0–255 — which needs a vocabulary of at least 256 tokens.

``transformers`` is optional: without it an ``hf:`` spec stops with one :class:`FimvarError`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from fimvar.errors import FimvarError

#: the built-in configurations (GPT-2, byte-level vocabulary)
BUILTIN = {
    "gpt2-tiny": {"model_type": "gpt2", "vocab_size": 256, "n_positions": 128, "n_embd": 32, "n_layer": 2,
                  "n_head": 2, "bos_token_id": 0, "eos_token_id": 0},
}
#: seed of the random weights of a model built from a configuration
INIT_SEED = 0
DEFAULT_LENGTH = 64
BYTES = 256
CORPUS = "declaration.txt"
#: files whose presence in a model folder means it has a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def import_transformers():
    """``transformers``, with a broken ``torchvision`` (a wheel built for another torch) hidden
    first — transformers imports it optionally and would fail on it; one :class:`FimvarError`
    when transformers is not installed."""
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001 — any failure: transformers then runs without it
            sys.modules["torchvision"] = None
    try:
        import transformers
    except ImportError as error:
        raise FimvarError("--model hf:… needs the transformers package, which is not installed: pip install "
                          "transformers (fimvar does not depend on it otherwise)") from error
    transformers.logging.set_verbosity_error()
    return transformers


@dataclass
class LanguageModel:
    """A causal language model and how its text is tokenised."""

    model: nn.Module
    tokenizer: object | None  # a transformers tokenizer; None: UTF-8 bytes
    vocabulary: int
    positions: int | None  # the longest sequence the model takes (None: unknown)
    description: str

    @property
    def tokenisation(self) -> str:
        return "tokens: UTF-8 bytes as ids 0-255" if self.tokenizer is None else \
            f"tokens: the model folder's tokenizer, {type(self.tokenizer).__name__}"


def load_language_model(spec: str) -> LanguageModel:
    """The model of an ``hf:`` spec (the part after ``hf:``, see the module docs), in eval mode."""
    spec = spec.strip()
    if not spec:
        raise FimvarError(f"--model hf: needs a model folder, a config.json or a built-in name "
                          f"({', '.join(BUILTIN)})")
    path = Path(spec).expanduser()
    if spec in BUILTIN and not path.exists():
        transformers = import_transformers()
        config = transformers.AutoConfig.for_model(**BUILTIN[spec])
        return _from_config(transformers, config, f"hf:{spec} (built-in GPT-2 configuration, random weights, "
                                                  f"seed {INIT_SEED})", None)
    if not path.exists():
        raise FimvarError(f"--model hf:{spec}: no such folder or file (a folder saved with save_pretrained, "
                          "a "
                          f"config.json, or a built-in name: {', '.join(BUILTIN)}); nothing is downloaded")
    transformers = import_transformers()
    if path.is_file():
        try:
            config_dict = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FimvarError(f"--model hf:{spec}: cannot read it as a JSON configuration "
                              f"({error})") from error
        if not isinstance(config_dict, dict) or "model_type" not in config_dict:
            raise FimvarError(f"--model hf:{spec}: a configuration needs \"model_type\" (e.g. \"gpt2\"), as "
                              "config.json files written by save_pretrained have")
        try:
            config = transformers.AutoConfig.for_model(**config_dict)
        except (ValueError, KeyError, TypeError) as error:
            raise FimvarError(f"--model hf:{spec}: transformers does not accept this configuration "
                              f"({error})") from error
        return _from_config(transformers, config, f"hf:{spec} (configuration, random weights, seed "
                                                  f"{INIT_SEED})", None)
    if not (path / "config.json").is_file():
        raise FimvarError(f"--model hf:{spec}: the folder has no config.json; give a folder written by "
                          "save_pretrained")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise FimvarError(f"--model hf:{spec}: cannot load a causal language model from it "
                          f"({str(error).splitlines()[0][:200]})") from error
    tokenizer = None
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise FimvarError(f"--model hf:{spec}: the folder's tokenizer does not load "
                              f"({str(error).splitlines()[0][:200]})") from error
    return _wrap(model, tokenizer, f"hf:{spec} ({type(model).__name__}, from_pretrained, local files)")


def _from_config(transformers, config, description: str, tokenizer) -> LanguageModel:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(INIT_SEED)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError as error:
        raise FimvarError(f"{description}: not a causal language model configuration ({error})") from error
    finally:
        torch.random.set_rng_state(generator_state)
    return _wrap(model, tokenizer, description)


def _wrap(model: nn.Module, tokenizer, description: str) -> LanguageModel:
    config = model.config
    vocabulary = int(getattr(config, "vocab_size", 0) or 0)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    model.eval()
    return LanguageModel(model, tokenizer, vocabulary, int(positions) if positions else None, description)


def read_text(spec: str) -> tuple[str, str]:
    """``(text, name)`` of the part of a ``text:`` data spec before ``#``: ``bundled`` or a file."""
    if spec == "bundled":
        text = resources.files("fimvar").joinpath("corpus", CORPUS).read_text(encoding="utf-8")
        return text, "text:bundled (US Declaration of Independence, public domain)"
    path = Path(spec).expanduser()
    if not path.exists():
        raise FimvarError(f"text file not found: {path}")
    if path.is_dir():
        raise FimvarError(f"{path} is a folder; give a text file (UTF-8)")
    try:
        return path.read_text(encoding="utf-8-sig"), f"text:{spec}"
    except UnicodeDecodeError as error:
        raise FimvarError(f"{path} is not UTF-8 text (byte {error.start}); convert it to UTF-8") from error


def text_sequences(spec: str, lm: LanguageModel) -> tuple[torch.Tensor, str, int]:
    """The token ids ``(N, L)`` of a ``text:`` data spec (after ``text:``) for the model ``lm``:
    its text tokenised (the model's tokenizer, else UTF-8 bytes) and cut into non-overlapping
    windows of ``length`` tokens. Returns the ids, a description and ``L``."""
    from fimvar.data import _parse_options

    source, _, options = spec.partition("#")
    options = _parse_options(options, "text", ("length",))
    try:
        length = int(options.get("length", DEFAULT_LENGTH))
    except ValueError as error:
        raise FimvarError(f"length must be an integer, got {options['length']!r}") from error
    if length < 1:
        raise FimvarError(f"length must be ≥ 1 token, got {length}")
    if lm.positions is not None and length > lm.positions:
        raise FimvarError(f"length={length} is longer than the model's {lm.positions} positions; give "
                          f"text:…#length={min(lm.positions, DEFAULT_LENGTH)} or shorter")
    text, name = read_text(source.strip())
    if lm.tokenizer is None:
        if lm.vocabulary < BYTES:
            raise FimvarError(f"the model's vocabulary has {lm.vocabulary} tokens and no tokenizer came "
                              "with it: "
                              f"byte-level tokenisation (UTF-8 bytes as ids 0-255) needs a vocabulary of at "
                              f"least {BYTES}; give a model folder with its tokenizer, or a model with "
                              f"vocab_size ≥ {BYTES}")
        ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    else:
        ids = torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() and int(ids.max()) >= lm.vocabulary:
            raise FimvarError(f"the tokenizer gives id {int(ids.max())} but the model's vocabulary has "
                              f"{lm.vocabulary} tokens: the folder's tokenizer does not belong to its model")
    count = ids.numel() // length
    if count < 2:
        raise FimvarError(f"{name} has {ids.numel()} tokens: fewer than 2 windows of length={length}; give a "
                          "longer text or a shorter length")
    sequences = ids[: count * length].reshape(count, length)
    dropped = ids.numel() - count * length
    described = (f"{name}: {count} sequences of {length} tokens ({lm.tokenisation}"
                 + (f"; the last {dropped} tokens dropped" if dropped else "") + ")")
    return sequences, described, length
