"""A VAE with a learned Gaussian-mixture prior, p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), as a dgm-pyro
model written outside dgm-pyro (docs/extending.md). The decoder sees the condition y; the prior does not.

The model and the guide are plain Pyro: train them with ``pyro.infer.SVI`` or through ``dgm-pyro train
mixture-vae``, which gives the run ``evaluate``, ``diagnose`` and ``sample`` (with its own ``--component``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from dgm_pyro.config import option
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.models.nn import MLP, cat_broadcast, likelihood_out_features, make_likelihood
from dgm_pyro.runs import DatasetConfig, DatasetModelKind

__all__ = ["MixtureVAE", "MixtureVAEConfig", "MixtureVAEKind"]


class MixtureVAE(PyroModule):
    """z ~ sum_k pi_k N(mu_k, diag sigma_k^2) at the site ``code``; x ~ p(x | decoder(z, y)) at the site ``x``;
    guide q(z | x, y) = N(encoder(x, y)). Shapes: x (N, x_dim), y (N, y_dim), z (N, latent_dim)."""

    def __init__(self, x_dim: int, y_dim: int, latent_dim: int, components: int, hidden: list[int],
                 likelihood: str, levels: Optional[int], x_shift: torch.Tensor, x_scale: torch.Tensor):
        super().__init__("mixture_vae")
        self.x_dim, self.likelihood, self.levels = x_dim, likelihood, levels
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))
        self.encoder = MLP(x_dim + y_dim, hidden, 2 * latent_dim)
        self.decoder = MLP(latent_dim + y_dim, hidden, likelihood_out_features(likelihood, x_dim, levels))
        self.register_buffer("x_shift", x_shift)
        self.register_buffer("x_scale", x_scale)

    def component(self, k: int) -> dist.Distribution:
        """The k-th Gaussian of the prior."""
        return dist.Normal(self.locs[k], self.log_scales[k].exp()).to_event(1)

    def prior(self) -> dist.Distribution:
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits),
                                      dist.Normal(self.locs, self.log_scales.exp()).to_event(1))

    def model(self, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        pyro.module("mixture_vae", self)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("code", self.prior().expand([y.shape[0]]))
            out = self.decoder(cat_broadcast(z, y))
            pyro.sample("x", make_likelihood(self.likelihood, out, self.x_dim, self.levels, self.x_shift,
                                             self.x_scale), obs=x)

    def guide(self, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        pyro.module("mixture_vae", self)
        loc, raw = self.encoder(torch.cat([x, y], -1)).chunk(2, -1)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("code", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


@dataclass
class MixtureVAEConfig(DatasetConfig):
    """Every option of DatasetConfig (objective, annealing, epochs, ...) plus the model's own. A field
    declared again narrows an inherited option: the mixture prior is not factorised over z's dimensions, so
    free bits are per latent site only."""

    model: str = option("mixture-vae", "registered model name", cli=False)
    latent_dim: int = option(4, "Dimension of z.", min=1)
    components: int = option(10, "Components of the Gaussian-mixture prior.", min=1)
    hidden_dims: list[int] = option([128], "Hidden widths of the encoder and decoder, comma-separated.",
                                    flag="--hidden", min=1)
    free_bits_per: str = option("site", "Free-bits groups: each latent site (the mixture prior is not factorised "
                                "over dimensions).", choices=("site",))


@dataclass
class SampleOptions:
    """Options that ``dgm-pyro sample`` takes for mixture-vae runs."""

    component: Optional[int] = option(None, "Draw z from this component of the mixture prior (0..K-1); default: "
                                      "the whole mixture.", min=0, metavar="K")


class MixtureVAEKind(DatasetModelKind):
    """How a mixture-vae run is configured, built and sampled; the rest comes from DatasetModelKind."""

    name: ClassVar[str] = "mixture-vae"
    config_class: ClassVar[type] = MixtureVAEConfig
    description: ClassVar[str] = "a VAE with a learned Gaussian-mixture prior (an outside example)"
    latent_site: ClassVar[str] = "code"
    sample_options: ClassVar[type] = SampleOptions

    def build(self, config: MixtureVAEConfig, data: Any) -> MixtureVAE:
        x = data.splits["train"][0]
        shift, scale = (x.mean(0), x.std(0).clamp_min(1e-3)) if data.likelihood == "gaussian" else (
            torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
        return MixtureVAE(data.x_dim, data.y_dim, config.latent_dim, config.components, config.hidden_dims,
                          data.likelihood, data.levels, shift, scale)

    def draw(self, run: Any, y: torch.Tensor, mean: bool, component: Optional[int] = None) -> torch.Tensor:
        if component is None:
            return super().draw(run, y, mean)
        module = run.module
        if component >= module.logits.shape[0]:
            raise DgmPyroError(f"--component must be below the prior's {module.logits.shape[0]} components, "
                               f"got {component}")
        z = module.component(component).sample((y.shape[0],))
        return self.draw_from(poutine.condition(module.model, data={"code": z}), run, y, mean)
