"""The version of dgm-pyro (one place, below every other module)."""

__version__ = "0.1.0"
