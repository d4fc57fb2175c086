"""Checkpoints of a running analysis: save the accumulated float64 sums, resume where they stop.

A checkpoint is one ``.safetensors`` file: the tensors are the
:class:`~fimvar.analysis.accumulator.Accumulator` sums (named ``"0"``, ``"1"``, …), and its header
metadata holds one JSON document (key ``fimvar_checkpoint``) with the format version, the kind of
analysis, the keys of the sums, the number of inputs done, a *fingerprint* of everything that
determines the result (family, draws, seed, engine, parameters, groups, a hash of the model's
weights and of the data) and, for data given as an iterable of batches, a hash of the inputs and
labels consumed so far (:class:`RowHash`).

Integrity: a second metadata entry (key ``fimvar_checksum``) is the SHA-256 of the exact JSON
document and of every tensor's name, dtype, shape and bytes. :func:`load` recomputes it, so a
flipped bit or a torn copy anywhere in the document or the tensors is refused with one clear
error instead of resuming from wrong sums; a damaged safetensors header (lengths, offsets) is
already refused by safetensors itself.

Writes are atomic: the file is written next to its destination (a hidden ``.NAME.XXXXXXXX.tmp``),
flushed to disk and moved into place with :func:`os.replace`, so a process killed at any moment
(even by SIGKILL) leaves either the previous checkpoint or the new one, never a torn file. A kill
during the write leaves the temporary file behind; :func:`remove_leftovers` (called when a run
starts) deletes those of the same checkpoint name.

Why a resumed run equals an uninterrupted one, bit for bit: label draws are counter-based on the
global input index (:mod:`fimvar.estimators.labels`), checkpoints are taken only between blocks of
a fixed size counted from input 0, so the resumed run adds the same chunk sums in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from fimvar.errors import FimvarError

#: version of the checkpoint format (bump on incompatible changes); 3 added the checksum and the
#: hash of the consumed data of iterables
FORMAT_VERSION = 3
_KEY = "fimvar_checkpoint"
_CHECKSUM = "fimvar_checksum"
#: the fields every checkpoint document holds, with their JSON types
_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "kind": (str,), "fingerprint": (dict,), "count": (int,), "keys": (list,),
    "has_labels": (bool, type(None)), "extra": (dict,),
}
#: what :func:`tempfile.mkstemp` puts between the prefix and the suffix of a temporary file
_TEMPORARY_PART = r"[a-z0-9_]{8}"


def tensor_hash(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the dtypes, shapes and bytes of some tensors (``None`` entries count too)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype};{tuple(value.shape)};".encode())
        digest.update(_bytes(value))
    return digest.hexdigest()


def _bytes(value: torch.Tensor):
    """The bytes of a contiguous CPU tensor, as a buffer (no copy)."""
    return value.reshape(-1).view(torch.uint8).numpy()


def model_hash(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of a model, by name."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(name.encode() + b"=" + tensor_hash(tensor).encode() + b";")
    return digest.hexdigest()


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in the order of the names."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(f"{name}=".encode() + tensor_hash(state[name]).encode() + b";")
    return digest.hexdigest()


def _checksum(document: str, state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(document.encode() + b";" + state_hash(state).encode()).hexdigest()


class RowHash:
    """Running SHA-256 of the rows of a stream of tensors (first dimension = rows).

    The digest depends only on the sequence of rows, not on how the stream is cut into batches:
    the bytes of the rows are hashed as one concatenation, and each run of rows with the same
    dtype and row shape is closed by a record ``|dtype;row shape;rows|`` (so that streams with
    different row layouts never hash alike).
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._layout: str | None = None
        self._run_rows = 0
        #: rows hashed so far
        self.rows = 0

    def update(self, tensor: torch.Tensor) -> None:
        value = tensor.detach().cpu().contiguous()
        layout = f"{value.dtype};{tuple(value.shape[1:])}"
        if layout != self._layout:
            self._close(self._digest)
            self._layout, self._run_rows = layout, 0
        self._digest.update(_bytes(value))
        self._run_rows += value.shape[0]
        self.rows += value.shape[0]

    def _close(self, digest) -> None:
        if self._layout is not None:
            digest.update(f"|{self._layout};{self._run_rows}|".encode())

    def hexdigest(self) -> str:
        digest = self._digest.copy()
        self._close(digest)
        return digest.hexdigest()


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def check_writable(path: str | os.PathLike) -> Path:
    """Create the folder of the checkpoint ``path`` if needed and check that a file can be written
    there (a probe file, written and deleted), with one clear error; run before any work."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise FimvarError(f"the checkpoint path {path} is a folder; give a file path "
                          f"(e.g. {path / 'run.ckpt'})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=directory)
        try:
            os.write(handle, b"fimvar")
        finally:
            os.close(handle)
            Path(probe).unlink(missing_ok=True)
    except OSError as error:
        raise FimvarError(f"cannot write the checkpoint {path}: {error.strerror or error}; "
                          "choose a writable checkpoint path (--checkpoint)") from error
    return path


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``.NAME.XXXXXXXX.tmp`` that a process killed while writing the
    checkpoint ``path`` left next to it (only those of this checkpoint name); returns them."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(_temporary_prefix(path)) + _TEMPORARY_PART + re.escape(".tmp"))
    removed = []
    try:
        candidates = list(directory.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        if pattern.fullmatch(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            try:
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed


def save(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write a checkpoint (tensors ``state`` and the JSON ``metadata``, with the
    checksum of both)."""
    from safetensors.torch import save as save_bytes

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    document = json.dumps({**metadata, "format_version": FORMAT_VERSION}, sort_keys=True)
    header = {_KEY: document, _CHECKSUM: _checksum(document, state)}
    payload = save_bytes(state, metadata=header)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=directory)
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
                          "choose a writable checkpoint path (--checkpoint)") from error


def _corrupted(path: Path, reason: str) -> FimvarError:
    return FimvarError(f"the checkpoint {path} is corrupted ({reason}); delete it to start over")


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Read and verify a checkpoint; ``None`` when the file does not exist.

    Raises:
        FimvarError: the file is not a safetensors file, not a fimvar checkpoint, of another format
            version, or corrupted (its checksum does not match, its document is not valid JSON or
            lacks fields).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as stream:
            header = stream.metadata() or {}
            state = {key: stream.get_tensor(key) for key in stream.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise FimvarError(
            f"{path} is not a readable fimvar checkpoint ({error}); if it is one, it is corrupted: "
            "delete it to start over; otherwise choose another checkpoint path"
        ) from error
    if _KEY not in header:
        raise FimvarError(f"{path} is not a fimvar checkpoint; delete it or choose another path")
    document = header[_KEY]
    try:
        metadata = json.loads(document)
    except ValueError as error:
        raise _corrupted(path, f"its header is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise _corrupted(path, "its header is not a JSON object")
    version = metadata.get("format_version")
    if _CHECKSUM not in header:
        if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
            raise FimvarError(f"the checkpoint {path} has format version {version}, this fimvar reads "
                              f"version {FORMAT_VERSION}; delete it to start over")
        raise _corrupted(path, "it has no checksum")
    if header[_CHECKSUM] != _checksum(document, state):
        raise _corrupted(path, "its checksum does not match its contents")
    if version != FORMAT_VERSION:
        raise FimvarError(f"the checkpoint {path} has format version {version}, this fimvar reads "
                          f"version {FORMAT_VERSION}; delete it to start over")
    _check_fields(path, metadata, state)
    return state, metadata


def _check_fields(path: Path, metadata: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Refuse a document that lacks a field, has one of the wrong type, or whose keys do not name
    its tensors ``"0"``, ``"1"``, …"""
    for field, types in _FIELDS.items():
        if field not in metadata:
            raise _corrupted(path, f"its header lacks the field {field!r}")
        value = metadata[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _corrupted(path, f"its field {field!r} is {value!r}")
    if metadata["count"] < 0:
        raise _corrupted(path, f"its field 'count' is {metadata['count']}")
    keys = metadata["keys"]
    if not all(isinstance(k, list) and len(k) == 4 and all(isinstance(p, str) for p in k) for k in keys):
        raise _corrupted(path, "its field 'keys' is not a list of [scope, owner, quantity, bound]")
    if sorted(state) != sorted(str(i) for i in range(len(keys))):
        raise _corrupted(path, f"it holds {len(state)} tensors for {len(keys)} keys")


def check_fingerprint(path: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written for a different run, naming what differs."""
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        raise FimvarError(
            f"the checkpoint {path} was written by a run with different {', '.join(differ)}; "
            "rerun with the same arguments to resume, or delete the checkpoint (or choose another "
            "--checkpoint path) to start over"
        )
