"""Conditional variational autoencoder with a learned conditional prior (seed P1).

Generative model (seed P1.2):   p(x|y) = INT p(x|y,z) p(z|y) dz,
    z | y    ~ N(mu_p(y), diag sigma_p(y)^2)            prior network (or N(0, I) with ``prior="standard"``)
    x | y, z ~ Bernoulli / Gaussian / Categorical        decoder network on [z, y]
Recognition model (seed P1.6):  q(z|x,y) = N(mu_q(x,y), diag sigma_q(x,y)^2), the amortised encoder.
Objective (seed P1.4):          ELBO = E_q[log p(x|y,z)] - KL(q(z|x,y) || p(z|y)) <= log p(x|y);
use :func:`dgm_pyro.infer.log_evidence` for the importance-sampled log p(x|y) (seed P1.7).

``model`` and ``guide`` are plain Pyro programs with latent site ``z`` and observed site ``x`` inside
the plate ``data``; they work with ``SVI``, ``Predictive`` and ``poutine``. The networks are plain
``torch.nn`` modules registered with ``pyro.module(name, self)`` at each call (as in Pyro's VAE
examples), which costs one parameter-store lookup per tensor instead of the per-layer wrapping of a
recursively converted ``PyroModule`` (a third of an SVI step on these small networks). As with any
Pyro module, parameters live in the global parameter store under ``<name>.<network>$$$<layer>``: give two
live models different ``name`` values, or clear the store between them, when training with
``pyro.optim``; ``dgm_pyro.training.Trainer`` optimises ``module.parameters()`` directly.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .autoregressive import MADE, AutoregressiveLikelihood
from .nn import (MLP, ConvDecoder, ConvEncoder, cat_broadcast, likelihood_mean, likelihood_out_features,
                 make_likelihood, register_module)
from .pixelcnn import GatedPixelCNN

__all__ = ["CVAE"]

PRIORS = ("learned", "standard")
DECODERS = ("mlp", "autoregressive", "pixelcnn")
ARCHITECTURES = ("mlp", "conv")


class _LearnedConstant(nn.Module):
    """The prior "network" of an unconditional model (y has no columns): learned parameters, ignoring y."""

    def __init__(self, out_features: int):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(out_features))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.value.expand(*y.shape[:-1], self.value.shape[0])


class CVAE(PyroModule):
    """Conditional VAE ``p(x|y,z) p(z|y)`` with amortised encoder ``q(z|x,y)``.

    Args:
        x_dim: dimension of x (flattened).
        y_dim: dimension of the condition y (0 for an unconditional VAE).
        latent_dim: dimension of z.
        hidden_dims: hidden widths of each of the three networks.
        likelihood: ``"bernoulli"``, ``"gaussian"`` (learned per-dimension variance) or ``"categorical"``.
        levels: number of levels for the categorical likelihood (17 for digits).
        prior: ``"learned"`` (prior network p(z|y), default) or ``"standard"`` (N(0, I), seed P1.8).
        x_shift, x_scale: affine standardisation of x for the encoder input and the Gaussian decoder
            (defaults 0 and 1; for categorical data pass ``x_scale = levels - 1``).
        name: prefix of the parameters in Pyro's parameter store.
        decoder: ``"mlp"`` (pixels independent given z and y, default), ``"autoregressive"`` (a MADE over
            the pixels in raster order, conditioned on [z, y]: strong enough to ignore z, seed P3.4) or
            ``"pixelcnn"`` (a gated PixelCNN over the image, :class:`~dgm_pyro.models.pixelcnn.GatedPixelCNN`,
            conditioned on [z, y]; needs ``image_shape``).
        decoder_dropout: for the autoregressive decoders, the probability of zeroing each pixel of their
            autoregressive input during training (weakens the decoder, seed P3.5); 0 by default.
        pixelcnn_layers, pixelcnn_channels: depth (receptive field: ``pixelcnn_layers`` + 1 rows above each
            pixel; fewer restrict it, a remedy of P3.5) and width of the PixelCNN decoder.
        pixelcnn_conditioning: how [z, y] enters the PixelCNN's layers: ``"global"`` (a per-channel bias,
            default) or ``"spatial"`` (a map over the image, PixelVAE's way; what a restricted receptive field
            needs to use z). See :class:`~dgm_pyro.models.pixelcnn.GatedPixelCNN`.
        decoder_reads_z: ``False`` gives an autoregressive decoder without z, p(x|y) alone: the reference a
            collapsed model is compared with (the ELBO then drives the KL to 0).
        condition_net: a module that turns the raw condition y (N, ...) into the features c (N, y_dim) that
            the three networks read, trained with them (for text, a
            :class:`~dgm_pyro.models.text.HashedNgramEncoder` on feature ids); ``None``: c = y.
        activation: ``"relu"`` (default) or ``"tanh"`` (Burda et al. 2016) between the MLPs' layers.
        arch: ``"mlp"`` (default) or ``"conv"``: the encoder and the decoder are convolutional
            (:class:`~dgm_pyro.models.nn.ConvEncoder`, :class:`~dgm_pyro.models.nn.ConvDecoder`, with
            ``hidden_dims[-1]`` units in their fully connected layer) over x as an image of ``image_shape``
            (H*W = x_dim, H and W multiples of 4); the prior network stays an MLP of y.
        image_shape: (H, W) of x for ``arch="conv"`` and ``decoder="pixelcnn"``.
    """

    def __init__(self, x_dim: int, y_dim: int, latent_dim: int = 8, hidden_dims: Sequence[int] = (256, 256),
                 likelihood: str = "bernoulli", levels: Optional[int] = None, prior: str = "learned",
                 x_shift: torch.Tensor | float = 0.0, x_scale: torch.Tensor | float = 1.0, name: str = "cvae",
                 decoder: str = "mlp", decoder_dropout: float = 0.0, condition_net: Optional[nn.Module] = None,
                 activation: str = "relu", arch: str = "mlp", image_shape: Optional[Sequence[int]] = None,
                 pixelcnn_layers: int = 5, pixelcnn_channels: int = 16, decoder_reads_z: bool = True,
                 pixelcnn_conditioning: str = "global"):
        super().__init__(name)
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got '{arch}'")
        is_image = image_shape is not None and math.prod(image_shape) == x_dim
        if arch == "conv" and (decoder != "mlp" or not is_image):
            raise ValueError("arch 'conv' needs image_shape (H, W) with H * W = x_dim and the pixel-independent "
                             "decoder ('mlp')")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got '{prior}'")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got '{decoder}'")
        autoregressive = decoder in ("autoregressive", "pixelcnn")
        if not 0 <= decoder_dropout < 1 or (decoder_dropout and not autoregressive):
            raise ValueError("decoder_dropout must be in [0, 1) and needs an autoregressive decoder")
        if not decoder_reads_z and not autoregressive:
            raise ValueError("decoder_reads_z=False needs an autoregressive decoder (an MLP without z models nothing)")
        if decoder == "pixelcnn" and not is_image:
            raise ValueError("the pixelcnn decoder needs image_shape (H, W) with H * W = x_dim")
        self.decoder_kind, self.decoder_dropout = decoder, float(decoder_dropout)
        self.decoder_reads_z = decoder_reads_z
        context_dim = (latent_dim if decoder_reads_z else 0) + y_dim
        self.x_dim, self.y_dim, self.latent_dim = x_dim, y_dim, latent_dim
        self.likelihood, self.levels, self.prior_kind = likelihood, levels, prior
        self.register_buffer("x_shift", torch.as_tensor(x_shift, dtype=torch.float32).expand(x_dim).clone())
        self.register_buffer("x_scale", torch.as_tensor(x_scale, dtype=torch.float32).expand(x_dim).clone())
        self.condition_net = condition_net
        self.prior_net: Optional[nn.Module] = None
        if prior == "learned":
            self.prior_net = (MLP(y_dim, hidden_dims, 2 * latent_dim, activation) if y_dim
                              else _LearnedConstant(2 * latent_dim))
        if arch == "conv":
            self.encoder = ConvEncoder(image_shape, y_dim, hidden_dims[-1], 2 * latent_dim, activation=activation)
        else:
            self.encoder = MLP(x_dim + y_dim, hidden_dims, 2 * latent_dim, activation)
        if arch == "conv":
            per_pixel = likelihood_out_features(likelihood, x_dim, levels) // x_dim
            self.decoder = ConvDecoder(latent_dim + y_dim, image_shape, hidden_dims[-1], per_pixel,
                                       activation=activation, pixel_major=likelihood == "categorical")
        elif autoregressive:
            if likelihood not in ("categorical", "bernoulli"):
                raise ValueError(f"the {decoder} decoder needs a categorical or bernoulli likelihood, not "
                                 f"'{likelihood}'")
            per_dim = likelihood_out_features(likelihood, x_dim, levels) // x_dim
            self.decoder = (MADE(x_dim, context_dim, hidden_dims, per_dim) if decoder == "autoregressive" else
                            GatedPixelCNN(image_shape, context_dim, pixelcnn_channels, pixelcnn_layers, 3, per_dim,
                                          conditioning=pixelcnn_conditioning))
        else:
            self.decoder = MLP(latent_dim + y_dim, hidden_dims, likelihood_out_features(likelihood, x_dim, levels),
                               activation)

    def guide_parameters(self):
        """The inference network's parameters (the encoder), for aggressive training."""
        return self.encoder.parameters()

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """The condition features c (N, y_dim) the networks read: ``condition_net(y)``, or y itself."""
        return y if self.condition_net is None else self.condition_net(y)

    def _register(self, *names: str) -> None:
        """Register the networks a program uses in Pyro's parameter store (for ``pyro.optim``)."""
        for n in names:
            net = getattr(self, n)
            if net is not None:
                register_module(f"{self._pyro_name}.{n}", net)

    @staticmethod
    def _gaussian(params: torch.Tensor) -> dist.Distribution:
        loc, raw_scale = params.chunk(2, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-4).to_event(1)

    def prior(self, y: torch.Tensor) -> dist.Distribution:
        """p(z|y): batch shape ``y.shape[:-1]``, event shape ``(latent_dim,)``. Here and in :meth:`posterior`
        and :meth:`decode`, ``y`` is the features :meth:`features` makes of the condition."""
        if self.prior_net is None:
            zeros = y.new_zeros(*y.shape[:-1], self.latent_dim)
            return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        return self._gaussian(self.prior_net(y))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z|x,y): the encoder's diagonal Gaussian, batch shape ``(N,)``."""
        x_std = (x - self.x_shift) / self.x_scale
        return self._gaussian(self.encoder(cat_broadcast(x_std, y)))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """p(x|y,z) for z of shape ``(..., N, latent_dim)``; event shape ``(x_dim,)``."""
        context = cat_broadcast(z, y) if self.decoder_reads_z else y.expand(*z.shape[:-1], y.shape[-1])
        if self.decoder_kind == "mlp":
            return make_likelihood(self.likelihood, self.decoder(context), self.x_dim, self.levels, self.x_shift,
                                   self.x_scale)

        def logits(x: torch.Tensor) -> torch.Tensor:
            x_in = (x.to(context.dtype) - self.x_shift) / self.x_scale
            if self.training and self.decoder_dropout > 0:
                keep = torch.rand(x_in.shape[-1:] if x_in.dim() == 1 else x_in.shape, device=x_in.device) >= self.decoder_dropout
                x_in = x_in * keep
            return self.decoder(x_in, context)

        return AutoregressiveLikelihood(logits, self.likelihood, self.x_dim, self.levels, context.shape[:-1],
                                        self.x_shift, self.x_scale)

    def model(self, x: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """p(x, z | y) = p(x|y,z) p(z|y) (seed P1.2) for a batch: x (N, x_dim) or None, y (N, y_dim)."""
        self._register("condition_net", "prior_net", "decoder")
        if self.likelihood == "categorical" and x is not None:
            x = x.long()
        with pyro.plate("data", y.shape[0]):
            y = self.features(y)
            z = pyro.sample("z", self.prior(y))
            return pyro.sample("x", self.decode(z, y), obs=x)

    def guide(self, x: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """q(z|x,y) (seed P1.6); with ``x=None`` it falls back to the prior p(z|y) for generation (P1.8)."""
        with pyro.plate("data", y.shape[0]):
            y = self.features(y)
            if x is None:
                self._register("condition_net", "prior_net")
                return pyro.sample("z", self.prior(y))
            self._register("condition_net", "encoder")
            return pyro.sample("z", self.posterior(x, y))

    @torch.no_grad()
    def sample(self, y: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Generate x for each condition row of y (seed P1.8): z ~ p(z|y), then the decoder's mean or a draw.

        Args:
            y: conditions, shape (N, y_dim) (for a ``condition_net``, what it takes).
            mean: return E[x|y,z] (default) instead of a sample x ~ p(x|y,z).
        Returns:
            (N, x_dim) tensor.
        """
        y = self.features(y)
        z = self.prior(y).sample()
        d = self.decode(z, y)
        if isinstance(d, AutoregressiveLikelihood):
            return d.sample(mean=mean)
        return likelihood_mean(d, self.likelihood) if mean else d.sample().to(torch.float32)
