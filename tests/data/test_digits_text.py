"""digits-text: measured attributes against hand-computed values, captions against the labels and
attributes they describe, held-out phrasings kept out of training, and captioned .npz files."""

import numpy as np
import pytest
import torch

from dgm_pyro.data import load_dataset, load_digits
from dgm_pyro.data.digits_text import HELDOUT_TEMPLATES, SLANT_PHRASES, THICKNESS_WORDS, TRAIN_TEMPLATES, digit_attributes
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.faithfulness import prompt_digit
from dgm_pyro.models.text import tokenize


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits-text")


def test_attributes_of_hand_made_strokes():
    vertical = torch.zeros(8, 8)
    vertical[1:7, 3] = 2.0
    right = torch.zeros(8, 8)  # a stroke from bottom-left to top-right: its top lies right of its bottom
    for k in range(6):
        right[6 - k, 1 + k] = 1.0
    left = right.flip(1)
    a = digit_attributes(torch.stack([vertical, right, left]).reshape(3, 64))
    assert a["thickness"].tolist() == [12.0, 6.0, 6.0]
    assert a["slant"][0] == 0
    # a straight line of slope one: column = const - row, so -cov(column, row) / var(row) = 1
    assert a["slant"][1] == pytest.approx(1.0) and a["slant"][2] == pytest.approx(-1.0)


def test_splits_are_the_digits_images(ds):
    base = load_digits()
    assert ds.sizes() == {"train": 4000, "valid": 350, "test": 447}
    assert torch.equal(ds.splits["test"][0], base.splits["test"][0])
    assert torch.equal(ds.splits["valid"][0], base.splits["valid"][0])
    assert torch.equal(ds.splits["train"][0][:1000], base.splits["train"][0])


def test_every_caption_names_its_digit_and_measured_attributes(ds):
    cuts = ds.extra["cuts"]
    for split in ds.splits:
        labels = ds.extra["labels"][split]
        attrs = ds.extra["attributes"][split]
        for i, (text, described) in enumerate(zip(ds.extra["texts"][split], ds.extra["described"][split])):
            assert prompt_digit(text) == int(labels[i]), text
            words = set(tokenize(text))
            t, s = described["thickness"], described["slant"]
            if t is not None:  # said only of a digit beyond its class tertile, in the right direction
                value, (lo, hi) = attrs["thickness"][i], cuts["thickness"][labels[i]]
                assert (value > hi) if t == "thick" else (value < lo)
                assert words & set(THICKNESS_WORDS[t])
            else:
                assert not words & {w for ws in THICKNESS_WORDS.values() for w in ws}, text
            if s is not None:
                value, (lo, hi) = attrs["slant"][i], cuts["slant"][labels[i]]
                assert (value > hi) if s == "right" else (value < lo)
                assert s in words and ("left" if s == "right" else "right") not in words
            else:
                assert not words & {"left", "right"}, text


def test_heldout_phrasings_never_occur_in_training(ds):
    train = set(ds.extra["texts"]["train"]) | set(ds.extra["texts"]["valid"])
    test = ds.extra["texts"]["test"]
    assert not train & set(test)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    # the attribute words of the held-out phrasings are all known from training (their fillers are not)
    known = {w for t in train for w in tokenize(t)}
    phrases = {w for forms in SLANT_PHRASES.values() for group in forms for p in group for w in tokenize(p)}
    assert phrases | {w for ws in THICKNESS_WORDS.values() for w in ws} <= known
    assert {"please", "image", "handwritten"} - known == {"please", "image", "handwritten"}


def test_captioned_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, size=(30, 4, 4))
    text = np.array([f"pattern number {i % 3}" for i in range(30)])
    np.savez(tmp_path / "c.npz", x=x, text=text)
    ds = load_dataset(f"npz:{tmp_path / 'c.npz'}")
    assert ds.condition == "text" and ds.likelihood == "bernoulli"
    assert sum(len(v) for v in ds.extra["texts"].values()) == 30
    for split, (xs, _) in ds.splits.items():  # each caption stays with its image
        for row, t in zip(xs, ds.extra["texts"][split]):
            i = next(j for j in range(30) if np.array_equal(x[j].reshape(-1), row.numpy()))
            assert t == text[i]


@pytest.mark.parametrize("arrays, message", [
    (dict(text=np.array(["a"] * 30, dtype=object)), "object"),
    (dict(text=np.array(["a"] * 29)), "29 captions"),
    (dict(text=np.array(["a"] * 29 + ["  ..."])), "no word or number"),
    (dict(text=np.array(["a"] * 30), y=np.zeros(30)), "both 'y' and 'text'"),
    (dict(text=np.array(["a"] * 30).reshape(15, 2)), "1-D array of strings"),
])
def test_bad_captioned_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((30, 4)), **arrays)
    with pytest.raises(DgmPyroError, match=message):
        load_dataset(f"npz:{path}")
