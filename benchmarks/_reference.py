"""The CVAE's networks and loss written by hand in plain PyTorch: the reference for timing ratios."""

from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from dgm_pyro.models import CVAE


class TorchCVAE(torch.nn.Module):
    """The three networks of a categorical or Bernoulli :class:`CVAE` with a learned prior and the
    pixel-independent decoder (copies of its own modules: MLP or ``arch="conv"``), the loss by hand, no Pyro."""

    def __init__(self, cvae: CVAE):
        super().__init__()
        if cvae.prior_net is None or cvae.decoder_kind != "mlp" or cvae.condition_net is not None:
            raise ValueError("the reference covers the learned prior, the pixel-independent decoder, no condition net")
        self.levels, self.x_dim, self.likelihood = cvae.levels, cvae.x_dim, cvae.likelihood
        self.x_shift, self.x_scale = cvae.x_shift.clone(), cvae.x_scale.clone()
        for name in ("prior_net", "encoder", "decoder"):
            setattr(self, name, copy.deepcopy(getattr(cvae, name)))

    @staticmethod
    def _gauss(params):
        loc, raw = params.chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    @staticmethod
    def _normal_log_prob(z, loc, scale):
        return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def log_weights(self, x, y, num_particles: int = 1):
        """(K, N) log p(x, z|y) - log q(z|x,y) with z ~ q, reparameterised."""
        q_loc, q_scale = self._gauss(self.encoder(torch.cat([(x - self.x_shift) / self.x_scale, y], -1)))
        p_loc, p_scale = self._gauss(self.prior_net(y))
        z = q_loc + q_scale * torch.randn(num_particles, *q_loc.shape)
        yk = y.expand(num_particles, *y.shape)
        log_px = self._log_px(self.decoder(torch.cat([z, yk], -1)), x, num_particles)
        return log_px + self._normal_log_prob(z, p_loc, p_scale) - self._normal_log_prob(z, q_loc, q_scale)

    def loss(self, x, y):
        """Negative single-sample ELBO summed over the batch (what Trace_ELBO estimates)."""
        return -self.log_weights(x, y).sum()

    def meanfield_loss(self, x, y):
        """-E_q[log p(x|z)] (one draw) + KL(q(z|x,y) || p(z|y)) in closed form, summed over the batch (what
        TraceMeanField_ELBO computes for these Gaussians)."""
        q_loc, q_scale = self._gauss(self.encoder(torch.cat([(x - self.x_shift) / self.x_scale, y], -1)))
        p_loc, p_scale = self._gauss(self.prior_net(y))
        z = q_loc + q_scale * torch.randn_like(q_loc)
        kl = (p_scale.log() - q_scale.log() + (q_scale ** 2 + (q_loc - p_loc) ** 2) / (2 * p_scale ** 2) - 0.5).sum(-1)
        return (self._log_px(self.decoder(torch.cat([z, y], -1)).unsqueeze(0), x, 1).squeeze(0) - kl).sum().neg()

    def _log_px(self, out, x, num_particles: int):
        """log p(x|z) (K, N) from the decoder's output (K, N, x_dim * levels)."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        logits = out.reshape(num_particles, x.shape[0], self.x_dim, self.levels)
        log_px = torch.log_softmax(logits, -1).gather(-1, x.long().expand(num_particles, *x.shape).unsqueeze(-1))
        return log_px.squeeze(-1).sum(-1)

    @torch.no_grad()
    def log_evidence(self, x, y, num_particles: int, chunk_size: int):
        chunks, done = [], 0
        while done < num_particles:
            k = min(chunk_size, num_particles - done)
            chunks.append(self.log_weights(x, y, k))
            done += k
        lw = torch.cat(chunks).double()
        return torch.logsumexp(lw, 0) - math.log(num_particles)
