"""The gated PixelCNN decoder: autoregressive in raster order without a blind spot, a normalised distribution whose
samples follow it, and, inside the CVAE, a plain Pyro program (SVI with pyro.optim, Predictive, log_evidence)."""

import itertools

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

from dgm_pyro.infer import log_evidence
from dgm_pyro.models import CVAE
from dgm_pyro.models.autoregressive import AutoregressiveLikelihood
from dgm_pyro.models.pixelcnn import GatedPixelCNN


def _dependence(net: GatedPixelCNN, context: torch.Tensor) -> torch.Tensor:
    """(outputs, inputs) boolean: output pixel o's logits depend on input pixel i."""
    x = torch.rand(net.x_dim)
    jac = torch.autograd.functional.jacobian(lambda v: net(v, context), x)
    return jac.abs() > 0


@pytest.mark.parametrize("shape,conditioning", [((6, 5), "global"), ((8, 4), "spatial")])
def test_each_pixel_sees_every_earlier_pixel_and_nothing_else(shape, conditioning):
    """Raster order: pixel o depends on pixels i < o only (mask A in the first layer), and with enough layers on every
    one of them: the vertical and horizontal stacks leave no blind spot (a masked PixelCNN misses the pixels
    above-right). A context map over the image (spatial conditioning) depends on the context alone."""
    torch.manual_seed(0)
    net = GatedPixelCNN(shape, context_dim=2, channels=8, layers=shape[0], conditioning=conditioning)
    dep = _dependence(net, torch.randn(2))
    n = shape[0] * shape[1]
    earlier = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)
    assert not (dep & ~earlier).any()
    assert torch.equal(dep, earlier)


def test_fewer_layers_restrict_the_receptive_field():
    """One layer with a 3-wide kernel sees two rows above (three columns around the pixel) and two pixels to its
    left; L layers see L + 1 rows above."""
    torch.manual_seed(0)
    net = GatedPixelCNN((5, 5), context_dim=0, channels=4, layers=1)
    dep = _dependence(net, torch.zeros(0))
    seen = {divmod(int(i), 5) for i in dep[2 * 5 + 2].nonzero()}
    assert seen == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)}
    for layers in (2, 3):
        net = GatedPixelCNN((9, 9), context_dim=0, channels=4, layers=layers)
        rows = {divmod(int(i), 9)[0] for i in _dependence(net, torch.zeros(0))[8 * 9 + 4].nonzero()}
        assert rows == set(range(8 - layers - 1, 9))


@pytest.mark.parametrize("conditioning", ["global", "spatial"])
def test_the_context_reaches_every_pixel(conditioning):
    torch.manual_seed(0)
    net = GatedPixelCNN((4, 4), context_dim=3, channels=4, layers=2, conditioning=conditioning)
    x = torch.rand(16)
    jac = torch.autograd.functional.jacobian(lambda c: net(x, c), torch.randn(3))
    assert (jac.abs().sum(1) > 0).all()


def test_only_spatial_conditioning_tells_the_pixels_apart():
    """On a blank image one layer computes the same logit at every pixel below the first row (the convolutions see
    zeros everywhere; the first row differs by the vertical stack's zero padding), whatever the context, when the
    context is a per-channel bias; a context map over the image makes the logits differ from pixel to pixel: what
    a decoder that sees little of the image needs to draw from z where the strokes are."""
    torch.manual_seed(0)
    blank, c = torch.zeros(3, 64), torch.randn(3, 2)
    for conditioning in ("global", "spatial"):
        net = GatedPixelCNN((8, 8), context_dim=2, channels=4, layers=1, conditioning=conditioning)
        with torch.no_grad():
            below = net(blank, c)[:, 8:]
        spread = float((below - below[:, :1]).abs().max())
        assert spread < 1e-6 if conditioning == "global" else spread > 1e-3
    # without a context (the reference without z) the spatial map is a learned parameter: the position alone
    net = GatedPixelCNN((8, 8), context_dim=0, channels=4, layers=1, conditioning="spatial")
    assert net.position.shape == (1, 4, 8, 8) and not net.position.any()  # starts as the global model
    torch.nn.init.normal_(net.position)
    with torch.no_grad():
        below = net(blank, torch.zeros(3, 0))[:, 8:]
    assert float((below - below[:, :1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="conditioning"):
        GatedPixelCNN((8, 8), context_dim=2, conditioning="local")
    with pytest.raises(ValueError, match="multiples of 4"):
        GatedPixelCNN((6, 5), context_dim=2, conditioning="spatial")


@pytest.mark.parametrize("likelihood,levels", [("bernoulli", None), ("categorical", 3)])
def test_the_likelihood_is_normalised_and_its_samples_follow_it(likelihood, levels):
    """On a 2 x 2 image every configuration can be listed: the probabilities sum to 1, and 40,000 ancestral samples
    match them (each frequency within 5 binomial standard errors)."""
    torch.manual_seed(1)
    per = 1 if levels is None else levels
    net = GatedPixelCNN((2, 2), context_dim=1, channels=6, layers=2, out_per_pixel=per)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    c = torch.tensor([0.3])
    d = AutoregressiveLikelihood(lambda x: net(x, c), likelihood, 4, levels, torch.Size(), torch.zeros(4), torch.ones(4))
    values = range(2 if levels is None else levels)
    configs = torch.tensor(list(itertools.product(values, repeat=4)), dtype=torch.float32)
    with torch.no_grad():
        probs = d.log_prob(configs).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    n = 40_000
    draws = d.sample((n,))
    index = {tuple(row.tolist()): i for i, row in enumerate(configs)}
    counts = torch.bincount(torch.tensor([index[tuple(row.tolist())] for row in draws]), minlength=len(configs))
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 5 * se + 1e-4).all()


def test_the_spatially_conditioned_likelihood_is_normalised():
    """Every one of the 2^16 binary 4 x 4 images listed: the probabilities sum to 1 with a context map."""
    torch.manual_seed(1)
    net = GatedPixelCNN((4, 4), context_dim=2, channels=4, layers=2, conditioning="spatial")
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    c = torch.tensor([0.3, -1.0])
    d = AutoregressiveLikelihood(lambda x: net(x, c), "bernoulli", 16, None, torch.Size(), torch.zeros(16),
                                 torch.ones(16))
    configs = torch.tensor(list(itertools.product(range(2), repeat=16)), dtype=torch.float32)
    with torch.no_grad():
        assert float(d.log_prob(configs).logsumexp(0).exp()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("conditioning", ["global", "spatial"])
def test_pixelcnn_cvae_is_a_pyro_program(conditioning):
    """SVI with pyro.optim trains it, Predictive generates images, and the importance-sampled evidence is above the
    ELBO; without z (decoder_reads_z=False) the decoder's distribution does not change with z."""
    torch.manual_seed(0)
    y = torch.eye(2)[torch.randint(0, 2, (48,))]
    x = torch.zeros(48, 4, 4)
    x[:, 1:3, 1:3] = y[:, :1].view(48, 1, 1)
    x = torch.bernoulli(0.05 + 0.9 * x.reshape(48, 16))
    m = CVAE(16, 2, latent_dim=2, hidden_dims=[16], likelihood="bernoulli", decoder="pixelcnn", image_shape=(4, 4),
             pixelcnn_layers=2, pixelcnn_channels=8, pixelcnn_conditioning=conditioning)
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(60)]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert any(k.startswith("cvae.decoder$$$layers") for k in pyro.get_param_store().keys())
    pred = Predictive(m.model, guide=m.guide, num_samples=3)(None, y[:5])
    assert pred["x"].shape == (3, 5, 16) and set(pred["x"].unique().tolist()) <= {0.0, 1.0}
    res = log_evidence(m.model, m.guide, x, y, num_particles=50, warn=False)
    assert float(res.log_evidence.mean()) >= float(res.elbo.mean()) - 0.05
    no_z = CVAE(16, 2, latent_dim=2, hidden_dims=[16], likelihood="bernoulli", decoder="pixelcnn", image_shape=(4, 4),
                pixelcnn_layers=2, pixelcnn_channels=8, decoder_reads_z=False, pixelcnn_conditioning=conditioning)
    a, b = no_z.decode(torch.zeros(5, 2), y[:5]), no_z.decode(torch.randn(5, 2), y[:5])
    assert torch.equal(a.log_prob(x[:5]), b.log_prob(x[:5]))
    with pytest.raises(ValueError, match="image_shape"):
        CVAE(16, 2, decoder="pixelcnn")
    with pytest.raises(ValueError, match="autoregressive decoder"):
        CVAE(16, 2, decoder_reads_z=False)
