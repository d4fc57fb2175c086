"""Data specs: bundled real data (from packages, never the network), user files, options, errors."""

from __future__ import annotations

import gzip
import struct

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
