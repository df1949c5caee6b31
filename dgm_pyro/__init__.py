"""dgm-pyro: deep generative models written the Pyro way."""

from .version import __version__

from . import data, divergences, infer, metrics, models  # noqa: E402
from .errors import DgmPyroError  # noqa: E402
from .infer import EvidenceResult, log_evidence  # noqa: E402
from .models import CVAE, GraphSSM, LinearGaussianCVAE, NNBaseline  # noqa: E402
from .registry import get_model, model_names, register_model  # noqa: E402
from .runs import CVAEConfig, GraphConfig, ModelKind, TrainConfig, load_run, train_run  # noqa: E402
from .training import Trainer  # noqa: E402

__all__ = ["__version__", "data", "divergences", "infer", "models", "metrics", "CVAE", "NNBaseline",
           "LinearGaussianCVAE", "GraphSSM", "log_evidence", "EvidenceResult", "DgmPyroError", "CVAEConfig",
           "TrainConfig", "GraphConfig", "ModelKind", "register_model", "get_model", "model_names", "train_run",
           "load_run", "Trainer"]
