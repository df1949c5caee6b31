"""The autoregressive (MADE) decoder: the autoregressive property, a normalised likelihood, exact
ancestral sampling, and its use inside the CVAE with Pyro inference."""

import itertools

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_pyro.infer import log_evidence
from dgm_pyro.models import CVAE
from dgm_pyro.models.autoregressive import MADE, AutoregressiveLikelihood, MaskedLinear


def test_outputs_of_pixel_i_see_only_earlier_pixels_and_all_of_the_context():
    made = MADE(6, 3, [32, 32], out_per_dim=4)
    masks = [layer.mask for layer in made.net if isinstance(layer, MaskedLinear)]
    reach = masks[0]
    for m in masks[1:]:
        reach = (m @ reach).clamp(max=1)  # which inputs can reach which outputs
    per_pixel = reach.reshape(6, 4, 9).amax(1)
    expected_x = torch.tril(torch.ones(6, 6), diagonal=-1)
    assert torch.equal(per_pixel[:, :6], expected_x)
    assert torch.all(per_pixel[:, 6:] == 1)


def _likelihood(kind, levels=None, x_dim=3, seed=0):
    torch.manual_seed(seed)
    per = levels if kind == "categorical" else 1
    made = MADE(x_dim, 2, [16], out_per_dim=per)
    context = torch.randn(1, 2)
    return AutoregressiveLikelihood(lambda x: made(x, context), kind, x_dim, levels, torch.Size([1]),
                                    torch.zeros(x_dim), torch.ones(x_dim))


@pytest.mark.parametrize("kind,levels", [("bernoulli", None), ("categorical", 3)])
def test_likelihood_is_normalised_and_sampling_is_exact(kind, levels):
    d = _likelihood(kind, levels)
    values = range(2) if kind == "bernoulli" else range(levels)
    configs = torch.tensor(list(itertools.product(values, repeat=3)), dtype=torch.float32)
    probs = d.log_prob(configs[:, None, :]).exp().squeeze(-1).detach()  # (C,)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    n = 40_000
    torch.manual_seed(1)
    draws = d.sample((n,)).squeeze(1)  # (n, 3)
    counts = torch.stack([(draws == c).all(-1).sum() for c in configs]).float() / n
    # each frequency within 4 binomial standard deviations of its probability
    assert torch.all((counts - probs).abs() <= 4 * (probs * (1 - probs) / n).sqrt() + 1e-4)


def _digits_like(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (n, 64), generator=g).float()
    y = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
    return x, y


def test_cvae_with_autoregressive_decoder_trains_and_is_evaluated():
    x, y = _digits_like()
    cvae = CVAE(64, 10, latent_dim=3, hidden_dims=[64], likelihood="categorical", levels=17, x_scale=16.0,
                decoder="autoregressive")
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-2}),
              Trace_ELBO(num_particles=2, vectorize_particles=True))
    first = svi.step(x, y)
    for _ in range(30):
        last = svi.step(x, y)
    assert last < first
    cvae.eval()
    res = log_evidence(cvae.model, cvae.guide, x, y, num_particles=50, warn=False)
    assert res.log_evidence.shape == (40,) and torch.all(res.log_evidence >= res.elbo - 1e-4)
    samples = cvae.sample(y[:5], mean=False)
    assert samples.shape == (5, 64) and set(samples.unique().tolist()) <= set(range(17))


def test_decoder_dropout_acts_in_training_only():
    x, y = _digits_like(8)
    cvae = CVAE(64, 10, latent_dim=2, hidden_dims=[32], likelihood="categorical", levels=17, x_scale=16.0,
                decoder="autoregressive", decoder_dropout=0.5)
    z = torch.zeros(8, 2)
    cvae.eval()
    a, b = cvae.decode(z, y).log_prob(x), cvae.decode(z, y).log_prob(x)
    assert torch.equal(a, b)
    cvae.train()
    c = cvae.decode(z, y).log_prob(x)
    assert not torch.equal(a, c)


def test_bad_decoder_options():
    with pytest.raises(ValueError, match="decoder must be"):
        CVAE(4, 0, decoder="wavenet")
    with pytest.raises(ValueError, match="decoder_dropout"):
        CVAE(4, 0, decoder_dropout=0.2)
    with pytest.raises(ValueError, match="categorical or bernoulli"):
        CVAE(4, 0, likelihood="gaussian", decoder="autoregressive")


@pytest.mark.parametrize("dataset, lr", [
    ("digits", 3e-3),
    pytest.param("digits-unconditional", 5e-3, marks=pytest.mark.slow),  # the plain VAE
])
def test_autoregressive_decoder_collapses_and_the_mlp_decoder_does_not(tmp_path, dataset, lr):
    """Seed P3.2/P3.4 on digits with the settings of benchmarks/posterior_collapse.py (seed 0, about 40 s
    each): with the vanilla ELBO the MADE decoder ignores z (MI, KL near 0, at most one active unit) while
    the MLP decoder, whose pixels are independent given z, keeps information in z. The class-conditional
    CVAE (standard prior) runs by default; the plain VAE with DGM_PYRO_FULL_TESTS=1."""
    from dgm_pyro.runs import TrainConfig, load_run, train_run

    reports = {}
    for decoder in ("autoregressive", "mlp"):
        config = TrainConfig(dataset=dataset, prior="standard", hidden_dims=[512, 512], lr=lr, epochs=100,
                             patience=30, latent_dim=8, decoder=decoder, seed=0, objective="elbo")
        train_run(config, tmp_path / decoder)
        run = load_run(tmp_path / decoder)
        reports[decoder] = run.kind.diagnose(run, particles=100, seed=0)
    ar, mlp = reports["autoregressive"], reports["mlp"]
    assert ar.mutual_information < 0.05 and ar.kl < 0.1 and ar.active_units <= 1
    assert mlp.mutual_information > 0.5 and mlp.kl > 0.5 and mlp.active_units >= 1
