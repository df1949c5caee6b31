"""The linear-Gaussian conditional VAE with known evidence (the generator of the ``linear-gaussian`` dataset).

It lives with the synthetic data (:mod:`dgm_pyro.data.synthetic`), which samples from it; it is exported
here too because it is also a model: a Pyro ``model`` with an exact posterior ``exact_guide``.
"""

from ..data.synthetic import LinearGaussianCVAE

__all__ = ["LinearGaussianCVAE"]
