"""Inference tools: importance-sampled evidence and objectives usable as Pyro losses."""

from .annealing import (
    Annealing,
    Constant,
    Cyclical,
    LatentScaleMessenger,
    Linear,
    Schedule,
    Sigmoid,
    parse_schedule,
    scale_latents,
)
from .cs_elbo import CSELBO
from .evidence import KHAT_WARN, EvidenceResult, log_evidence, log_evidence_blocks
from .free_bits import FreeBitsELBO
from .iwelbo import IWELBO
from .meanfield import MeanFieldELBO
from .regularised_elbo import RegularisedELBO
from .scheduled_sampling import Exponential, InverseSigmoid, parse_teacher_forcing

__all__ = ["log_evidence", "log_evidence_blocks", "EvidenceResult", "KHAT_WARN",
           "CSELBO", "FreeBitsELBO", "IWELBO", "MeanFieldELBO", "RegularisedELBO",
           "Schedule", "Constant", "Linear", "Cyclical", "Sigmoid", "Annealing", "LatentScaleMessenger",
           "scale_latents", "parse_schedule", "Exponential", "InverseSigmoid", "parse_teacher_forcing"]
