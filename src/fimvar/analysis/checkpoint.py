"""Checkpoints of a running analysis: save the accumulated float64 sums, resume where they stop.

A checkpoint is one ``.safetensors`` file: the tensors are the
:class:`~fimvar.analysis.accumulator.Accumulator` sums (named ``"0"``, ``"1"``, …), and its header
metadata holds one JSON document (key ``fimvar_checkpoint``) with the format version, the kind of
analysis, the keys of the sums, the number of inputs done and a *fingerprint* of everything that
determines the result (family, draws, seed, engine, parameters, groups, a hash of the model's
weights and of the data).

Writes are atomic: the file is written next to its destination, flushed to disk and moved into
place with :func:`os.replace`, so a process killed at any moment (even by SIGKILL) leaves either the
previous checkpoint or the new one, never a torn file.

Why a resumed run equals an uninterrupted one, bit for bit: label draws are counter-based on the
global input index (:mod:`fimvar.sampling`), checkpoints are taken only between blocks of a fixed
size counted from input 0, so the resumed run adds the same chunk sums in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fimvar.errors import FimvarError

#: version of the checkpoint format (bump on incompatible changes)
FORMAT_VERSION = 2
_KEY = "fimvar_checkpoint"


def tensor_hash(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the dtypes, shapes and bytes of some tensors (``None`` entries count too)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype};{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of a model, by name."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(name.encode() + b"=" + tensor_hash(tensor).encode() + b";")
    return digest.hexdigest()


def save(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write a checkpoint (tensors ``state`` and the JSON ``metadata``)."""
    from safetensors.torch import save as save_bytes

    path = Path(path)
    header = {_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata}, sort_keys=True)}
    payload = save_bytes({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=header)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise FimvarError(f"cannot write the checkpoint {path}: {error.strerror or error}; "
                          "choose a writable --checkpoint path") from error


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Read a checkpoint; ``None`` when the file does not exist."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as stream:
            header = stream.metadata() or {}
            state = {key: stream.get_tensor(key) for key in stream.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise FimvarError(f"{path} is not a readable fimvar checkpoint ({error}); delete it to start over") \
            from error
    if _KEY not in header:
        raise FimvarError(f"{path} is not a fimvar checkpoint; delete it or choose another path")
    metadata = json.loads(header[_KEY])
    if metadata.get("format_version") != FORMAT_VERSION:
        raise FimvarError(
            f"the checkpoint {path} has format version {metadata.get('format_version')}, this fimvar "
            f"reads version {FORMAT_VERSION}; delete it to start over"
        )
    return state, metadata


def check_fingerprint(path: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written for a different run, naming what differs."""
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        raise FimvarError(
            f"the checkpoint {path} was written by a run with different {', '.join(differ)}; "
            "rerun with the same arguments to resume, or delete the checkpoint (or choose another "
            "--checkpoint path) to start over"
        )
