"""Models: plain Pyro ``model``/``guide`` pairs on ``PyroModule``s."""

from .baseline import BaselineGuess, NNBaseline
from .cvae import CVAE
from .emissions import FeatureBlocks, HurdleLogNormal
from .graph_baselines import DSBMOracle, GCNGRUForecaster, HistoricalMean, Persistence
from .graph_likelihood import DenseGraphBernoulli
from .graph_sparse import sparse_forecast
from .graph_ssm import GraphSSM
from .linear_gaussian import LinearGaussianCVAE
from .link_heuristics import EWMA, AdamicAdar, CommonNeighbours, EdgeBank, Katz, PreferentialAttachment, katz_index, link_heuristics
from .markov import MarkovNormal
from .nn import MLP, param_registration

__all__ = ["BaselineGuess", "CVAE", "FeatureBlocks", "HurdleLogNormal", "NNBaseline", "LinearGaussianCVAE", "MLP", "MarkovNormal",
           "GraphSSM", "Persistence", "HistoricalMean", "GCNGRUForecaster", "DSBMOracle", "sparse_forecast", "EWMA",
           "EdgeBank", "CommonNeighbours", "AdamicAdar", "PreferentialAttachment", "Katz", "katz_index", "link_heuristics",
           "DenseGraphBernoulli", "param_registration"]
