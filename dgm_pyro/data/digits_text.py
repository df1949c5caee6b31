"""``digits-text``: scikit-learn's 8x8 digits with captions (seed P1.8, generation from a text description).

Each caption names the digit (as a numeral "7" or a word "seven") and, where the image is unusual for its
class, two attributes measured on the image:

- **thickness**: the ink (sum of the 17-level pixels). Below the class's lower tertile on the training
  split the digit is *thin* (synonyms: thin, fine, light), above the upper tertile *thick* (thick, bold,
  heavy); between them nothing is said.
- **slant**: ``-cov(column, row) / var(row)`` of the ink (:func:`digit_attributes`): positive when the top
  of the digit lies to the right of its bottom. Below the lower tertile *leaning left*, above the upper
  *leaning right* ("leaning right", "slanted to the right", "tilted right", "right-leaning", ...).

A caption mentions each extreme attribute with probability 0.7, so captions without attributes
("seven") are learned too. Captions are written with :data:`TRAIN_TEMPLATES` for the train and valid
splits (four captions per training image, one per validation image) and with the held-out
:data:`HELDOUT_TEMPLATES` for the test split (one per image): the held-out phrasings use sentence forms,
filler words and word orders no training caption has, and the test split scores the model only on them.
The images and the split are those of :func:`dgm_pyro.data.load_digits`, so a label-conditioned model is
evaluated on the same test images.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Optional

import torch

from .dataset import ConditionalDataset
from .digits import load_digits

__all__ = ["load_digits_text", "captioned", "digit_attributes", "caption", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES",
           "DIGIT_WORDS", "THICKNESS_WORDS", "SLANT_PHRASES", "CAPTIONS_PER_TRAIN_IMAGE"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS_WORDS = {"thick": ("thick", "bold", "heavy"), "thin": ("thin", "fine", "light")}
#: slant in two forms: phrases after the noun, and adjectives before it
SLANT_PHRASES = {
    "right": (("leaning right", "slanted to the right", "tilted right", "leaning to the right"),
              ("right-leaning", "right-slanted")),
    "left": (("leaning left", "slanted to the left", "tilted left", "leaning to the left"),
             ("left-leaning", "left-slanted")),
}
CAPTIONS_PER_TRAIN_IMAGE = 4
_MENTION = 0.7
_SEED = 0

Template = Callable[[str, str, str, str], str]


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p).replace(" ,", ",")


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou8" else "a"


#: caption templates of the training and validation captions: ``f(digit, thickness, slant phrase, slant
#: adjective)``, each of the last three possibly empty
TRAIN_TEMPLATES: dict[str, Template] = {
    "bare": lambda d, t, sp, sa: _join(t, d, sp),
    "article": lambda d, t, sp, sa: _join(_a((sa or t or d)), sa + ("," if sa and t else ""), t, d),
    "number": lambda d, t, sp, sa: _join("the number", d) + (f", drawn {t}" if t else "") + (f", {sp}" if sp else ""),
    "digit": lambda d, t, sp, sa: _join(_a(t or "digit"), t, "digit", d, sp),
}
#: the held-out phrasings: used only for the test split and the faithfulness measurements
HELDOUT_TEMPLATES: dict[str, Template] = {
    "image-of": lambda d, t, sp, sa: _join("an image of", _a(t or d), t, d, sp),
    "please-draw": lambda d, t, sp, sa: _join("please draw", d) + (f" with {t} strokes" if t else "")
    + (f", {sp}" if sp else ""),
    "parenthesis": lambda d, t, sp, sa: f"{d} ({', '.join(p for p in (t, sa) if p) or 'as written'})",
    "handwritten": lambda d, t, sp, sa: _join(_a(sa or t or "handwritten"), sa, t, "handwritten", d),
}


def caption(template: Template, digit: int, thickness: Optional[str] = None, slant: Optional[str] = None,
            rng: Optional[random.Random] = None, word: Optional[bool] = None) -> str:
    """One caption of ``digit`` with the given attributes (``"thick"``/``"thin"``, ``"left"``/``"right"`` or
    ``None``); synonyms and (unless ``word`` is given) numeral or word are drawn with ``rng``."""
    rng = rng or random.Random(0)
    word = rng.random() < 0.5 if word is None else word
    d = DIGIT_WORDS[digit] if word else str(digit)
    t = rng.choice(THICKNESS_WORDS[thickness]) if thickness else ""
    sp = rng.choice(SLANT_PHRASES[slant][0]) if slant else ""
    sa = rng.choice(SLANT_PHRASES[slant][1]) if slant else ""
    return template(d, t, sp, sa)


def digit_attributes(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Measured attributes of square digit images ``x`` (N, S*S) (8x8 digits, 28x28 MNIST) on any intensity scale.

    Returns ``{"thickness": ink (N,), "slant": (N,)}``: the ink is the sum of the pixels; the slant is
    ``-cov(column, row) / var(row)`` under the ink distribution (rows grow downwards), positive for a digit
    whose top lies right of its bottom.
    """
    side = math.isqrt(x.shape[-1])
    if side * side != x.shape[-1]:
        raise ValueError(f"digit_attributes needs square images; got {x.shape[-1]} pixels")
    img = x.reshape(-1, side, side).to(torch.float64).clamp_min(0)
    ink = img.sum((1, 2))
    w = img / ink.clamp_min(1e-12).view(-1, 1, 1)
    r = torch.arange(side, dtype=torch.float64).view(1, side, 1)
    c = torch.arange(side, dtype=torch.float64).view(1, 1, side)
    mr, mc = (w * r).sum((1, 2), keepdim=True), (w * c).sum((1, 2), keepdim=True)
    cov = (w * (r - mr) * (c - mc)).sum((1, 2))
    var = (w * (r - mr) ** 2).sum((1, 2)).clamp_min(1e-12)
    return {"thickness": ink, "slant": -cov / var}


def _tertiles(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(10, 2) lower and upper tertile of ``values`` per class."""
    return torch.stack([values[labels == k].quantile(torch.tensor([1 / 3, 2 / 3], dtype=values.dtype))
                        for k in range(10)])


def _levels(values: torch.Tensor, labels: torch.Tensor, cuts: torch.Tensor, low: str, high: str) -> list[Optional[str]]:
    lo, hi = cuts[labels, 0], cuts[labels, 1]
    return [low if v < a else high if v > b else None for v, a, b in zip(values.tolist(), lo.tolist(), hi.tolist())]


def load_digits_text() -> ConditionalDataset:
    """The digits with captions (see the module docstring): x the 64 pixels (17 levels); the captions in
    ``extra["texts"][split]`` (y has no columns until a text encoder turns captions into conditions), the
    labels in ``extra["labels"][split]``, the measured attributes in ``extra["attributes"][split]``, the
    attribute words of each row in ``extra["described"][split]`` and the class tertiles of the training
    split in ``extra["cuts"]``. The train split repeats each image :data:`CAPTIONS_PER_TRAIN_IMAGE` times,
    each with its own caption.
    """
    return captioned(load_digits(), "digits-text", CAPTIONS_PER_TRAIN_IMAGE,
                     "digits with captions (digit as numeral or word, thickness and slant); held-out phrasings for test")


def captioned(base: ConditionalDataset, name: str, repeat: int, description: str) -> ConditionalDataset:
    """A label-conditioned dataset of square digit images with its labels replaced by captions (the module
    docstring; :func:`load_digits_text` for the layout), ``repeat`` captions per training image. The images,
    the split, the likelihood and any dynamic binarisation are the base's."""
    rng = random.Random(_SEED)
    x_train, y_train = base.splits["train"]
    attrs_train = digit_attributes(x_train)
    labels_train = y_train.argmax(1)
    cuts = {"thickness": _tertiles(attrs_train["thickness"], labels_train),
            "slant": _tertiles(attrs_train["slant"], labels_train)}
    splits, texts, labels, attributes, described = {}, {}, {}, {}, {}
    for split, templates, repeat in (("train", TRAIN_TEMPLATES, repeat), ("valid", TRAIN_TEMPLATES, 1),
                                     ("test", HELDOUT_TEMPLATES, 1)):
        x, y = base.splits[split]
        lab = y.argmax(1)
        attrs = digit_attributes(x)
        thick = _levels(attrs["thickness"], lab, cuts["thickness"], "thin", "thick")
        slant = _levels(attrs["slant"], lab, cuts["slant"], "left", "right")
        rows, caps, desc = [], [], []
        for _ in range(repeat):
            for i in range(x.shape[0]):
                t = thick[i] if thick[i] and rng.random() < _MENTION else None
                s = slant[i] if slant[i] and rng.random() < _MENTION else None
                template = templates[rng.choice(sorted(templates))]
                caps.append(caption(template, int(lab[i]), t, s, rng))
                desc.append({"thickness": t, "slant": s})
                rows.append(i)
        idx = torch.tensor(rows)
        splits[split] = (x[idx], torch.zeros(len(rows), 0))
        texts[split], labels[split], described[split] = caps, lab[idx], desc
        attributes[split] = {k: v[idx] for k, v in attrs.items()}
    return ConditionalDataset(
        name=name, splits=splits, likelihood=base.likelihood, levels=base.levels, condition="text",
        image_shape=base.image_shape, description=description, binarize=base.binarize,
        extra={"texts": texts, "labels": labels, "attributes": attributes, "described": described, "cuts": cuts})
