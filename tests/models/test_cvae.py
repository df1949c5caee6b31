import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO

from dgm_pyro.data import load_linear_gaussian
from dgm_pyro.infer import log_evidence
from dgm_pyro.models import CVAE, NNBaseline
from dgm_pyro.models.nn import make_likelihood
from dgm_pyro.runs import CVAEKind, TrainConfig, build_model


@pytest.mark.parametrize("likelihood,levels", [("bernoulli", None), ("gaussian", None), ("categorical", 5)])
def test_sites_shapes_and_plate(likelihood, levels):
    m = CVAE(x_dim=6, y_dim=3, latent_dim=2, hidden_dims=[16], likelihood=likelihood, levels=levels)
    y = torch.randn(4, 3)
    x = torch.randint(0, 2 if levels is None else levels, (4, 6)).float()
    guide_tr = poutine.trace(m.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x, y)
    assert guide_tr.nodes["z"]["value"].shape == (4, 2)
    assert model_tr.nodes["x"]["is_observed"]
    assert [f.name for f in model_tr.nodes["z"]["cond_indep_stack"]] == ["data"]
    assert model_tr.nodes["x"]["fn"].event_shape == (6,)
    assert m.sample(y).shape == (4, 6) and m.sample(y, mean=False).shape == (4, 6)


def test_guide_without_x_is_the_conditional_prior():
    m = CVAE(x_dim=5, y_dim=2, latent_dim=3, hidden_dims=[8])
    y = torch.randn(7, 2)
    d = poutine.trace(m.guide).get_trace(None, y).nodes["z"]["fn"]
    p = m.prior(y)
    assert torch.allclose(d.mean, p.mean) and torch.allclose(d.stddev, p.stddev)
    pred = Predictive(m.model, guide=m.guide, num_samples=3)(None, y)
    assert pred["x"].shape == (3, 7, 5)


def test_standard_prior_is_standard_normal():
    m = CVAE(x_dim=5, y_dim=2, latent_dim=3, hidden_dims=[8], prior="standard")
    p = m.prior(torch.randn(4, 2))
    assert torch.equal(p.mean, torch.zeros(4, 3)) and torch.equal(p.stddev, torch.ones(4, 3))
    assert m.prior_net is None


def test_gaussian_likelihood_destandardises():
    out = torch.tensor([[0.5, -1.0, 0.0, 0.0]])
    d = make_likelihood("gaussian", out, 2, None, torch.tensor([10.0, 20.0]), torch.tensor([2.0, 3.0]))
    assert torch.allclose(d.mean, torch.tensor([[11.0, 17.0]]))
    assert torch.allclose(d.base_dist.scale, (torch.nn.functional.softplus(torch.zeros(2)) + 1e-3) * torch.tensor([2.0, 3.0]))


def test_works_with_pyro_svi():
    m = CVAE(x_dim=4, y_dim=2, latent_dim=2, hidden_dims=[16], likelihood="gaussian")
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert {k.split("$$$")[0] for k in pyro.get_param_store().keys()} == {"cvae.prior_net", "cvae.decoder", "cvae.encoder"}


def test_trained_cvae_approaches_true_evidence_on_linear_gaussian(tmp_path):
    """Trained on 1000 draws from a linear-Gaussian CVAE, the importance-sampled test log-likelihood of
    the best checkpoint comes within 0.25 nats of the generator's exact log p(x|y) (the best any model
    can do in expectation; measured gap 0.14 with seed 0) and lies above the ELBO."""
    ds = load_linear_gaussian()
    cfg = TrainConfig(dataset="linear-gaussian", latent_dim=2, hidden_dims=[16], epochs=100, lr=3e-3, patience=15)
    pyro.set_rng_seed(0)
    m = build_model(cfg, ds)
    CVAEKind().fit(cfg, ds, m, tmp_path)
    m.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model_state"])
    x, y = ds.splits["test"]
    res = log_evidence(m.model, m.guide, x, y, num_particles=500, warn=False)
    true_ll = float(ds.true_log_likelihood(x, y).mean())
    assert float(res.log_evidence.mean()) > float(res.elbo.mean())
    assert abs(float(res.log_evidence.mean()) - true_ll) < 0.25, (float(res.log_evidence.mean()), true_ll)


def test_baseline_evidence_is_its_exact_likelihood():
    b = NNBaseline(x_dim=3, y_dim=2, hidden_dims=[8], likelihood="bernoulli")
    x, y = torch.randint(0, 2, (5, 3)).float(), torch.randn(5, 2)
    exact = dist.Bernoulli(logits=b.net(y)).log_prob(x).sum(-1)
    res = log_evidence(b.model, b.guide, x, y, num_particles=3)
    assert torch.allclose(res.log_evidence.float(), exact, atol=1e-5)


def test_unnormalized_categorical_is_torchs_categorical_bit_for_bit():
    """The categorical likelihood's log_prob, gradients, probs, samples and expand match torch's Categorical
    exactly (it only skips making the normalised copy of the logits that log_prob does not read)."""
    from dgm_pyro.models.nn import UnnormalizedCategorical

    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 5, 64, 17)).requires_grad_()
    x = torch.randint(0, 17, (5, 64))
    ours, torchs = UnnormalizedCategorical(logits), dist.Categorical(logits=logits)
    a, b = ours.to_event(1).log_prob(x), torchs.to_event(1).log_prob(x)
    assert torch.equal(a, b)
    assert torch.equal(*(torch.autograd.grad(v.sum(), logits)[0] for v in (a, b)))
    assert torch.equal(ours.probs, torchs.probs) and torch.equal(ours.logits, torchs.logits)
    torch.manual_seed(1)
    s1 = ours.sample((3,))
    torch.manual_seed(1)
    assert torch.equal(s1, torchs.sample((3,)))
    wide = ours.expand((2, 4, 5, 64))
    assert torch.equal(wide.log_prob(x), torchs.expand((2, 4, 5, 64)).log_prob(x))
    assert ours.expand((4, 5, 64)) is ours
    with pytest.raises(ValueError):
        UnnormalizedCategorical(torch.tensor([[float("nan"), 0.0]]), validate_args=True)


def test_burda_networks_tanh_between_the_layers():
    """--activation tanh (Burda et al.'s IWAE networks): every MLP of the CVAE computes tanh between its layers, and
    the decoder's output is exactly the affine-tanh-affine-tanh-affine chain of its weights."""
    from dgm_pyro.models.nn import MLP

    model = CVAE(784, 0, latent_dim=50, hidden_dims=[200, 200], likelihood="bernoulli", activation="tanh")
    for net in (model.encoder, model.decoder):
        assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    z = torch.randn(3, 50)
    l1, _, l2, _, l3 = model.decoder
    assert torch.allclose(model.decoder(z), l3(torch.tanh(l2(torch.tanh(l1(z))))))
    assert [type(m).__name__ for m in CVAE(4, 2, hidden_dims=[8]).encoder] == ["Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="activation must be one of relu, tanh, got 'gelu'"):
        MLP(3, [4], 2, activation="gelu")


@pytest.mark.parametrize("likelihood,levels", [("bernoulli", None), ("gaussian", None), ("categorical", 5)])
def test_conv_networks_read_and_write_images(likelihood, levels):
    """--arch conv: the encoder reads x as an image (its first layer is a convolution of the H x W grid: moving one
    pixel changes only the features of the positions whose 4x4 window holds it), and the decoder's outputs are laid
    out as make_likelihood reads them (pixel p's parameters are the transposed convolution's outputs at p)."""
    m = CVAE(x_dim=64, y_dim=3, latent_dim=2, hidden_dims=[16], likelihood=likelihood, levels=levels, arch="conv",
             image_shape=(8, 8))
    conv = m.encoder.conv[0]
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 0, 0] = 1.0
    changed = (conv(img) - conv(torch.zeros_like(img))).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[0, 0]]  # stride 2, padding 1: pixel (0, 0) is in window (0, 0) only
    x = torch.randint(0, 2 if levels is None else levels, (2, 5, 64)).float()
    y = torch.randn(5, 3)
    assert m.encoder(torch.cat([x, y.expand(2, 5, 3)], -1)).shape == (2, 5, 4)
    z = torch.randn(2, 5, 2)
    out = m.decoder(torch.cat([z, y.expand(2, 5, 3)], -1))
    per_pixel = {"bernoulli": 1, "gaussian": 2, "categorical": 5}[likelihood]
    maps = m.decoder.deconv(m.decoder.fc(torch.cat([z, y.expand(2, 5, 3)], -1).reshape(10, 5)).reshape(10, 64, 2, 2))
    maps = maps.reshape(2, 5, per_pixel, 64)  # (..., channel, pixel)
    d = m.decode(z, y)
    if likelihood == "bernoulli":
        assert torch.allclose(d.base_dist.logits, maps[:, :, 0], atol=1e-6)
    elif likelihood == "gaussian":
        assert torch.allclose(d.base_dist.loc, maps[:, :, 0], atol=1e-6)  # x_shift 0, x_scale 1
    else:
        assert torch.allclose(out.reshape(2, 5, 64, 5), maps.transpose(-1, -2), atol=1e-6)
    assert d.batch_shape == (2, 5) and d.event_shape == (64,)


def test_conv_cvae_is_a_pyro_program():
    """The convolutional CVAE trains with SVI and pyro.optim on its own, generates with Predictive, and its
    importance-sampled evidence is above its ELBO."""
    ds = torch.rand(64, 3) > 0.5
    x = torch.zeros(64, 8, 8)
    x[:, 2:6, 2:6] = ds[:, :1].float().view(64, 1, 1)  # a square in half of the images
    x = x.reshape(64, 64)
    y = ds.float()
    m = CVAE(x_dim=64, y_dim=3, latent_dim=2, hidden_dims=[32], likelihood="bernoulli", arch="conv",
             image_shape=(8, 8))
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(80)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert any(k.startswith("cvae.encoder$$$conv") for k in pyro.get_param_store().keys())
    pred = Predictive(m.model, guide=m.guide, num_samples=4)(None, y[:5])
    assert pred["x"].shape == (4, 5, 64)
    res = log_evidence(m.model, m.guide, x, y, num_particles=50, warn=False)
    assert float(res.log_evidence.mean()) >= float(res.elbo.mean()) - 0.05
    with pytest.raises(ValueError, match="image_shape"):
        CVAE(x_dim=60, y_dim=3, arch="conv", image_shape=(8, 8))
    with pytest.raises(ValueError, match="multiples of 4"):
        CVAE(x_dim=36, y_dim=3, arch="conv", image_shape=(6, 6))


def test_cat_broadcast_broadcasts_leading_dimensions_and_concatenates():
    """The networks' inputs: equal leading shapes are concatenated as they are; particles (K, N, d) meet a
    condition (N, e) by broadcasting it."""
    from dgm_pyro.models.nn import cat_broadcast

    a, b = torch.randn(4, 2), torch.randn(4, 3)
    assert torch.equal(cat_broadcast(a, b), torch.cat([a, b], -1))
    z = torch.randn(5, 4, 2)
    out = cat_broadcast(z, b)
    assert out.shape == (5, 4, 5) and torch.equal(out[3], torch.cat([z[3], b], -1))
    assert torch.equal(cat_broadcast(b, z)[:, :, 3:], z)
    with pytest.raises(RuntimeError):
        cat_broadcast(torch.randn(3, 2), b)
