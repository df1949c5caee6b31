import gzip

import numpy as np
import pytest
import torch

from dgm_pyro.data import DIGITS_SPLIT, load_dataset, load_digits, load_idx, load_npz
from dgm_pyro.errors import DgmPyroError


def test_digits_split_is_fixed_disjoint_and_complete():
    a, b = load_digits(), load_digits()
    assert a.sizes() == dict(zip(("train", "valid", "test"), DIGITS_SPLIT))
    for k in a.splits:
        assert torch.equal(a.splits[k][0], b.splits[k][0])
    rows = torch.cat([a.splits[k][0] for k in a.splits])
    assert rows.shape == (1797, 64)
    assert set(rows.unique().tolist()) <= set(range(17))
    assert torch.equal(a.splits["train"][1].sum(1), torch.ones(1000))
    from sklearn.datasets import load_digits as sk

    assert sorted(map(tuple, rows.int().tolist())) == sorted(map(tuple, sk().data.astype(int).tolist()))


@pytest.mark.parametrize("q", [1, 2, 3])
def test_quadrants_partition_the_image(q):
    ds = load_digits(q)
    full = load_digits(0)
    assert ds.y_dim == 16 * q and ds.x_dim == 64 - 16 * q
    assert sorted(torch.cat([ds.x_index, ds.y_index]).tolist()) == list(range(64))
    x, y = ds.splits["test"]
    img = full.splits["test"][0]
    assert torch.equal(x, img[:, ds.x_index]) and torch.allclose(y * 16, img[:, ds.y_index])
    # the given quadrants are the first q of (top-left, top-right, bottom-left)
    rows, cols = ds.y_index // 8, ds.y_index % 8
    assert bool((rows < 4).all()) if q <= 2 else bool(((rows < 4) | (cols < 4)).all())


def test_npz_roundtrip_and_likelihood_inference(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.integers(0, 2, (50, 3, 4)), y=rng.integers(0, 3, 50))
    ds = load_npz(p)
    assert ds.likelihood == "bernoulli" and ds.image_shape == (3, 4) and ds.condition == "label"
    assert sum(ds.sizes().values()) == 50 and ds.y_dim == 3 and ds.x_dim == 12
    np.savez(p, x=rng.normal(size=(40, 5)))
    ds = load_npz(p)
    assert ds.likelihood == "gaussian" and ds.y_dim == 0 and ds.condition == "none"
    x = rng.integers(0, 9, (40, 5))
    np.savez(p, x=x, y=rng.normal(size=(40, 2)))
    ds = load_dataset(f"npz:{p}")
    assert ds.likelihood == "categorical" and ds.levels == int(x.max()) + 1 and ds.condition == "vector"


BAD_NPZ = {
    "no x": dict(z=np.zeros((20, 2))),
    "1-D x": dict(x=np.zeros(20)),
    "too few": dict(x=np.zeros((5, 2))),
    "NaN": dict(x=np.full((20, 2), np.nan)),
    "y rows": dict(x=np.zeros((20, 2)), y=np.zeros(19)),
    "inf y": dict(x=np.zeros((20, 2)), y=np.full((20, 2), np.inf)),
    "strings": dict(x=np.array([["a", "b"]] * 20)),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_files_give_one_line(tmp_path, case):
    p = tmp_path / "bad.npz"
    np.savez(p, **BAD_NPZ[case])
    with pytest.raises(DgmPyroError) as e:
        load_npz(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}] * 20, dtype=object))
    with pytest.raises(DgmPyroError, match="unpickling"):
        load_npz(p)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(DgmPyroError, match="no such file"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DgmPyroError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DgmPyroError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DgmPyroError, match="fixed likelihood"):
        load_dataset("digits", likelihood="gaussian")


def _write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 4, 4)), gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 30))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 4, 4)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 12))
    ds = load_idx(tmp_path)
    assert ds.sizes() == {"train": 27, "valid": 3, "test": 12}
    assert ds.image_shape == (4, 4) and ds.likelihood == "categorical"


def test_bad_idx(tmp_path):
    with pytest.raises(DgmPyroError, match="no such directory"):
        load_idx(tmp_path / "none")
    with pytest.raises(DgmPyroError, match="needs train-images"):
        load_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(30))
    with pytest.raises(DgmPyroError, match="magic"):
        load_idx(tmp_path)
    raw = bytes([0, 0, 8, 3]) + (30).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + b"\x00" * 10
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
    with pytest.raises(DgmPyroError, match="header says"):
        load_idx(tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((29, 4, 4)))
    with pytest.raises(DgmPyroError, match="do not match"):
        load_idx(tmp_path)
