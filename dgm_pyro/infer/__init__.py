"""Inference tools: evidence estimation (and, later, objectives)."""

from .evidence import KHAT_WARN, EvidenceResult, log_evidence

__all__ = ["log_evidence", "EvidenceResult", "KHAT_WARN"]
