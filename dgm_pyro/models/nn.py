"""Building blocks shared by the models: MLPs and the observation likelihoods p(x | ...)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["param_registration", "register_module", "MLP", "ConvEncoder", "ConvDecoder", "ACTIVATIONS",
           "likelihood_out_features", "make_likelihood", "likelihood_mean", "cat_broadcast", "UnnormalizedCategorical"]


_REGISTRATION = [True]


@contextlib.contextmanager
def param_registration(enabled: bool) -> Iterator[None]:
    """Whether the models' programs register their networks with ``pyro.module`` (on by default).

    Registration puts every network parameter into the trace as a ``param`` site, which ``pyro.optim`` (``SVI``)
    needs to find them; it costs one pass through Pyro's effect stack per parameter tensor, about 0.5 ms of an 8 ms
    step of the default MNIST CVAE (one thread; ``benchmarks/svi_step.py --registration``). A loop that optimises
    ``module.parameters()`` itself, as :class:`~dgm_pyro.training.Trainer` does, turns it off inside its loss::

        with param_registration(False):
            loss = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    """
    _REGISTRATION.append(bool(enabled))
    try:
        yield
    finally:
        _REGISTRATION.pop()


def register_module(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)`` unless :func:`param_registration` turned registration off."""
    if _REGISTRATION[-1]:
        pyro.module(name, module)


#: the nonlinearities an MLP takes between its layers
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden_dims... -> out_features`` with ``activation`` (ReLU, or tanh
    as in Burda et al. 2016) between layers."""

    def __init__(self, in_features: int, hidden_dims: Sequence[int], out_features: int, activation: str = "relu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got '{activation}'")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_dims:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int]:
    if len(image_shape) != 2 or any(int(s) < 4 or int(s) % 4 for s in image_shape):
        raise ValueError(f"the convolutional networks need images (H, W) with H and W multiples of 4, got "
                         f"{tuple(image_shape)}")
    return int(image_shape[0]), int(image_shape[1])


class ConvEncoder(nn.Module):
    """Convolutional network of ``[x, c]`` (..., H*W + cond_dim) -> (..., out_features): two stride-2 4x4
    convolutions of the image (``channels`` feature maps, H x W -> H/4 x W/4), flattened, joined with the
    condition features c, then one hidden layer of ``hidden`` units. A drop-in for an :class:`MLP` of the same
    input, so the CVAE's encoder q(z|x,y) reads the image as an image (``--arch conv``)."""

    def __init__(self, image_shape: Sequence[int], cond_dim: int, hidden: int, out_features: int,
                 channels: Sequence[int] = (32, 64), activation: str = "relu"):
        super().__init__()
        self.h, self.w = _check_image_shape(image_shape)
        self.cond_dim = cond_dim
        act = ACTIVATIONS[activation]
        self.conv = nn.Sequential(nn.Conv2d(1, channels[0], 4, stride=2, padding=1), act(),
                                  nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1), act(), nn.Flatten())
        flat = channels[1] * (self.h // 4) * (self.w // 4)
        self.head = MLP(flat + cond_dim, [hidden], out_features, activation)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        lead = inputs.shape[:-1]
        flat = inputs.reshape(-1, inputs.shape[-1])
        image, cond = flat[:, :self.h * self.w], flat[:, self.h * self.w:]
        features = self.conv(image.reshape(-1, 1, self.h, self.w))
        return self.head(torch.cat([features, cond], -1)).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Transposed-convolutional network (..., in_features) -> (..., H*W*per_pixel): one hidden layer of
    ``hidden`` units, a (channels[1], H/4, W/4) map, two stride-2 4x4 transposed convolutions up to
    ``per_pixel`` outputs per pixel. The outputs are laid out as :func:`make_likelihood` reads them: channel
    by channel (the Bernoulli's logits; the Gaussian's locations, then scales) or, with ``pixel_major``, pixel
    by pixel (the categorical likelihood's ``levels`` logits of each pixel)."""

    def __init__(self, in_features: int, image_shape: Sequence[int], hidden: int, per_pixel: int,
                 channels: Sequence[int] = (32, 64), activation: str = "relu", pixel_major: bool = False):
        super().__init__()
        self.h, self.w = _check_image_shape(image_shape)
        self.channels, self.pixel_major = int(channels[1]), pixel_major
        act = ACTIVATIONS[activation]
        self.fc = nn.Sequential(MLP(in_features, [hidden], self.channels * (self.h // 4) * (self.w // 4), activation),
                                act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1), act(),
                                    nn.ConvTranspose2d(channels[0], per_pixel, 4, stride=2, padding=1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        lead = inputs.shape[:-1]
        maps = self.fc(inputs.reshape(-1, inputs.shape[-1])).reshape(-1, self.channels, self.h // 4, self.w // 4)
        out = self.deconv(maps).flatten(2)  # (B, per_pixel, H*W)
        if self.pixel_major:
            out = out.transpose(1, 2)
        return out.reshape(*lead, -1)


class UnnormalizedCategorical(dist.Categorical):
    """``Categorical(logits=logits)`` that normalises only where it must.

    torch's ``Categorical`` stores ``logits - logsumexp(logits)``, a full copy of the (..., K) logits, at
    construction. ``log_prob(x)`` needs only ``logits[x] - logsumexp(logits)``, the same float subtraction
    on the gathered entries, so its values (and gradients) are those of ``Categorical``; the normalised
    tensor is made only when ``logits`` or ``probs`` is read (sampling, the mean). With 17 grey levels this
    is most of the cost of the importance-sampled evidence of the digits CVAE.
    """

    #: the unnormalised logits are checked (any real vector), so validation makes no normalised copy either
    arg_constraints = {"unnormalized_logits": dist.constraints.real_vector}

    def __init__(self, logits: torch.Tensor, validate_args=None, _lse: Optional[torch.Tensor] = None):
        if logits.dim() < 1:
            raise ValueError("logits needs at least one dimension")
        self.unnormalized_logits = logits
        self._lse = logits.logsumexp(dim=-1, keepdim=True) if _lse is None else _lse
        self._num_events = logits.shape[-1]
        dist.TorchDistribution.__init__(self, logits.shape[:-1], validate_args=validate_args)

    @property
    def _param(self) -> torch.Tensor:
        return self.unnormalized_logits

    @property
    def logits(self) -> torch.Tensor:
        return self.unnormalized_logits - self._lse

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)  # as torch's Categorical does, from the normalised logits

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        shape = batch_shape + (self._num_events,)
        return UnnormalizedCategorical(self.unnormalized_logits.expand(shape), validate_args=False,
                                       _lse=self._lse.expand(batch_shape + (1,)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = value.long().unsqueeze(-1)
        value, logits = torch.broadcast_tensors(value, self.unnormalized_logits)
        lse = self._lse.expand(*logits.shape[:-1], 1)
        return (logits.gather(-1, value[..., :1]) - lse).squeeze(-1)


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dimension after broadcasting the leading (batch, particle) dimensions."""
    lead = tensors[0].shape[:-1]
    if all(t.shape[:-1] == lead for t in tensors[1:]):  # nothing to broadcast (a training step): skip the shape work
        return torch.cat(tensors, dim=-1)
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], dim=-1)


def likelihood_out_features(likelihood: str, x_dim: int, levels: int | None) -> int:
    """Number of network outputs that parameterise the likelihood of an ``x_dim``-vector."""
    if likelihood in ("bernoulli", "bernoulli-grey"):
        return x_dim
    if likelihood == "gaussian":
        return 2 * x_dim
    if likelihood == "categorical":
        if not levels or levels < 2:
            raise ValueError("the categorical likelihood needs levels >= 2")
        return x_dim * levels
    raise ValueError(f"unknown likelihood '{likelihood}'")


def make_likelihood(likelihood: str, out: torch.Tensor, x_dim: int, levels: int | None,
                    x_shift: torch.Tensor, x_scale: torch.Tensor, min_scale: float = 1e-3) -> dist.Distribution:
    """The distribution of x given network outputs ``out`` of shape ``(..., likelihood_out_features)``.

    Bernoulli (logits), the same Bernoulli scored on grey targets in [0, 1] (``"bernoulli-grey"``: the
    cross-entropy x log sigma(l) + (1 - x) log(1 - sigma(l)), a pseudo-likelihood; its support check is
    off because the targets are not binary), Gaussian with a learned per-pixel variance (loc and scale predicted in
    standardised units, then mapped back by ``x_shift`` and ``x_scale``), or categorical over
    ``levels`` grey levels (seed P1.8: the decoder outputs the parameters of the distribution for x).
    Returns a distribution with batch shape ``out.shape[:-1]`` and event shape ``(x_dim,)``.
    """
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=out).to_event(1)
    if likelihood == "bernoulli-grey":
        return dist.Independent(dist.Bernoulli(logits=out, validate_args=False), 1, validate_args=False)
    if likelihood == "gaussian":
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = (nn.functional.softplus(raw_scale) + min_scale) * x_scale
        return dist.Normal(loc * x_scale + x_shift, scale).to_event(1)
    logits = out.reshape(*out.shape[:-1], x_dim, levels)
    return UnnormalizedCategorical(logits).to_event(1)


def likelihood_mean(d: dist.Distribution, likelihood: str) -> torch.Tensor:
    """E[x] under a likelihood made by :func:`make_likelihood`; for categorical, the mean grey level."""
    base = d.base_dist
    if likelihood == "categorical":
        levels = torch.arange(base.probs.shape[-1], dtype=base.probs.dtype, device=base.probs.device)
        return (base.probs * levels).sum(-1)
    return base.mean
