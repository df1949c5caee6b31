"""How faithful generation from a text description is (seed P1.8), measured on ``digits-text`` and ``mnist-text``.

- **Digit**: for every digit 0-9, every held-out phrasing (:data:`~dgm_pyro.data.digits_text.HELDOUT_TEMPLATES`),
  the digit written as a numeral ("7") and as a word ("seven") and every combination of the captioned
  attributes (none, thick, thin x none, left, right), ``num`` images are generated from the prompt; an
  independent classifier (trained on the dataset's *training* split only, :func:`digit_classifier`) reads
  each image, and the share read as the digit the prompt names is
  reported per phrasing and form. Chance is 10%.
- **Attributes**: for each digit, phrasing, form and value of the other attribute, two prompts differ in
  one attribute only ("thick seven" vs "thin seven", "... leaning right" vs "... leaning left"); both are
  generated with the same seed and the pair counts as moving the right way when the mean measured
  attribute (:func:`~dgm_pyro.data.digits_text.digit_attributes`) of the first prompt's images is above
  the second's.

``generate`` is any function ``prompts -> images (P, num, S*S)`` on the scale of the classifier's data (0-16 for
the 8x8 digits, [0, 1] for MNIST), so a label-conditioned model (prompts mapped to their digit) gives the
reference row.
"""

from __future__ import annotations

import itertools
import random
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

from .data.digits import load_digits
from .data.digits_text import DIGIT_WORDS, HELDOUT_TEMPLATES, Template, caption, digit_attributes
from .models.text import tokenize

__all__ = ["digit_classifier", "digit_prompts", "digit_faithfulness", "attribute_pairs", "prompt_digit"]

Generate = Callable[[list[str]], torch.Tensor]
_THICKNESS = (None, "thick", "thin")
_SLANT = (None, "right", "left")


def digit_classifier(seed: int = 0, dataset: str = "digits") -> Any:
    """An independent digit classifier, trained on the *training* split of ``dataset`` only.

    - ``"digits"``: scikit-learn logistic regression (``max_iter=2000``) on the 64 pixels / 16 of the 8x8 digits;
    - ``"mnist"`` (or ``"mnist:DIR"``, IDX files): a scikit-learn multilayer perceptron (one hidden layer of 256
      ReLU units, Adam, 12 passes) on the 784 grey levels in [0, 1] of MNIST's 50,000 training images (a linear
      model reads only about 92% of MNIST's test digits: too few to measure 95% faithfulness).

    ``predict`` takes images (N, pixels) divided by ``classifier.scale_`` (16 for digits, 1 for MNIST: the scale
    of the images the models generate). Its accuracy on the test split (grey levels) is
    ``classifier.test_accuracy_``.
    """
    from sklearn.exceptions import ConvergenceWarning

    name, _, source = dataset.partition(":")
    if name == "digits":
        from sklearn.linear_model import LogisticRegression

        ds = load_digits()
        x, y = ds.splits["train"]
        xt, yt = ds.splits["test"]
        x, y, xt, yt = x.numpy() / 16.0, y.argmax(1).numpy(), xt.numpy() / 16.0, yt.argmax(1).numpy()
        clf = LogisticRegression(max_iter=2000, random_state=seed)
        scale = 16.0
    elif name == "mnist":
        from sklearn.neural_network import MLPClassifier

        from .data.mnist import mnist_arrays

        arrays = mnist_arrays(source or None)
        (x, y), (xt, yt) = ((a.numpy(), b.numpy()) for a, b in (arrays["train"], arrays["test"]))
        clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=12, batch_size=128, random_state=seed)
        scale = 1.0
    else:
        raise ValueError(f"digit_classifier: dataset must be 'digits' or 'mnist[:DIR]', got {dataset!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the perceptron's 12 passes are by design
        clf.fit(x, y)
    clf.scale_ = scale
    clf.test_accuracy_ = float((clf.predict(xt) == yt).mean())
    return clf


def digit_prompts(templates: Optional[dict[str, Template]] = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every prompt of the digit measurement: dicts with ``text``, ``digit``, ``template``, ``form``
    (``"numeral"``/``"word"``), ``thickness`` and ``slant`` (synonyms drawn with ``seed``)."""
    rng = random.Random(seed)
    templates = HELDOUT_TEMPLATES if templates is None else templates
    out = []
    for name, digit, word, t, s in itertools.product(sorted(templates), range(10), (False, True), _THICKNESS, _SLANT):
        out.append({"text": caption(templates[name], digit, t, s, rng, word=word), "digit": digit, "template": name,
                    "form": "word" if word else "numeral", "thickness": t, "slant": s})
    return out


def digit_faithfulness(generate: Generate, classifier: Any, num: int = 16, seed: int = 0,
                       templates: Optional[dict[str, Template]] = None) -> dict[str, Any]:
    """Share of generated images the classifier reads as the named digit: ``{"overall", "by_template":
    {name: share}, "by_form": {form: share}, "by_digit": [share] * 10, "images"}``."""
    prompts = digit_prompts(templates, seed)
    images = generate([p["text"] for p in prompts])  # (P, num, pixels)
    pred = classifier.predict(images.reshape(-1, images.shape[-1]).numpy() / classifier.scale_)
    hit = pred.reshape(len(prompts), -1) == np.array([p["digit"] for p in prompts])[:, None]

    def share(key: str, value: Any) -> float:
        rows = [i for i, p in enumerate(prompts) if p[key] == value]
        return float(hit[rows].mean())

    return {"overall": float(hit.mean()), "images": int(hit.size),
            "by_template": {t: share("template", t) for t in sorted({p["template"] for p in prompts})},
            "by_form": {f: share("form", f) for f in ("numeral", "word")},
            "by_digit": [share("digit", d) for d in range(10)]}


def attribute_pairs(generate: Generate, num: int = 16, seed: int = 0,
                    templates: Optional[dict[str, Template]] = None) -> dict[str, Any]:
    """Paired prompts that differ in one attribute; per attribute the share of pairs whose generated images
    move the right way (``{"thickness": {"right_way", "pairs", "mean_difference"}, "slant": {...}}``)."""
    rng = random.Random(seed)
    templates = HELDOUT_TEMPLATES if templates is None else templates
    out = {}
    for attr, (high, low), others, other_key in (("thickness", ("thick", "thin"), _SLANT, "slant"),
                                                 ("slant", ("right", "left"), _THICKNESS, "thickness")):
        pairs = []
        for name, digit, word, other in itertools.product(sorted(templates), range(10), (False, True), others):
            draw = rng.random()  # the same synonyms in both prompts of a pair
            texts = []
            for value in (high, low):
                kw = {attr: value, other_key: other}
                texts.append(caption(templates[name], digit, kw["thickness"], kw["slant"], random.Random(draw),
                                     word=word))
            pairs.append(texts)
        images = generate([t for pair in pairs for t in pair])  # (2 * pairs, num, pixels)
        measured = digit_attributes(images.reshape(-1, images.shape[-1]))[attr].reshape(len(pairs), 2, -1).mean(-1)
        diff = measured[:, 0] - measured[:, 1]
        out[attr] = {"right_way": float((diff > 0).double().mean()), "pairs": len(pairs),
                     "mean_difference": float(diff.mean())}
    return out


def prompt_digit(text: str) -> int:
    """The digit a prompt of :func:`digit_prompts` names (numeral or word)."""
    for w in tokenize(text):
        if w.isdigit() and len(w) == 1:
            return int(w)
        if w in DIGIT_WORDS:
            return DIGIT_WORDS.index(w)
    raise ValueError(f"no digit named in {text!r}")
