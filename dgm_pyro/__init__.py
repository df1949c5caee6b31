"""dgm-pyro: deep generative models written the Pyro way."""

__version__ = "0.1.0"

from . import data, divergences, infer, metrics, models  # noqa: E402
from .config import GraphConfig, TrainConfig  # noqa: E402
from .errors import DgmPyroError  # noqa: E402
from .infer import EvidenceResult, log_evidence  # noqa: E402
from .models import CVAE, GraphSSM, LinearGaussianCVAE, NNBaseline  # noqa: E402
from .training import fit  # noqa: E402

__all__ = ["__version__", "data", "divergences", "infer", "models", "CVAE", "NNBaseline", "LinearGaussianCVAE", "log_evidence",
           "EvidenceResult", "TrainConfig", "fit", "DgmPyroError", "metrics", "GraphSSM", "GraphConfig"]
