"""Training configuration: defaults, TOML files, validation, and the hash stored in checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import DgmPyroError

__all__ = ["ConfigBase", "TrainConfig", "GraphConfig", "MODELS", "OBJECTIVES"]

MODELS = ("cvae", "graph-ssm")
OBJECTIVES = ("elbo", "meanfield", "cs", "free-bits")


class ConfigBase:
    """Dict/TOML round trips, type checks and the hash stored in checkpoints, shared by the run configurations."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "configuration") -> "ConfigBase":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DgmPyroError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        d = {k.replace("-", "_"): v for k, v in d.items()}
        try:
            cfg = cls(**d)
        except TypeError as e:
            raise DgmPyroError(f"{source}: {e}") from None
        for f in dataclasses.fields(cls):
            v = getattr(cfg, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
            if want is not None and (not isinstance(v, want) or (want is int and isinstance(v, bool))):
                raise DgmPyroError(f"{source}: option '{f.name}' must be of type {f.type}, got {v!r}")
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> dict[str, Any]:
        """Read a TOML file's options (flat keys, or under a ``[train]`` table) as a dict."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DgmPyroError(f"{path}: no such config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DgmPyroError(f"{path}: not valid TOML ({e})") from None
        data = data.get("train", data)
        return {k.replace("-", "_"): v for k, v in data.items()}

    def digest(self) -> str:
        """SHA-256 of the configuration, stored in checkpoints to detect a mismatch on resume."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainConfig(ConfigBase):
    """Everything that determines a training run; written resolved to ``config.json`` in the run folder.

    The defaults train the CVAE on class-conditional digits in about a minute on 2 CPU cores.
    """

    model: str = "cvae"
    dataset: str = "digits"
    likelihood: Optional[str] = None
    prior: str = "learned"
    latent_dim: int = 8
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    epochs: int = 60
    batch_size: int = 100
    lr: float = 1e-3
    patience: int = 10
    clip_norm: float = 10.0
    num_particles: int = 1
    valid_particles: int = 10
    eval_particles: int = 1000
    seed: int = 0
    baseline: bool = True
    objective: str = "elbo"
    lam: float = 1.0
    free_bits: float = 0.0
    free_bits_per: str = "dim"
    anneal: str = "none"
    decoder: str = "mlp"
    decoder_dropout: float = 0.0
    aggressive: bool = False
    track_collapse: bool = False
    skip_bad_steps: int = 0

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; raise :class:`DgmPyroError` naming the first bad option."""
        checks = [
            (self.model == "cvae", "model must be 'cvae' (graph-ssm runs use GraphConfig)"),
            (self.prior in ("learned", "standard"), "prior must be 'learned' or 'standard'"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (len(self.hidden_dims) >= 1 and all(h >= 1 for h in self.hidden_dims), "hidden_dims must be positive widths"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.clip_norm > 0, "clip_norm must be > 0"),
            (self.num_particles >= 1, "num_particles must be >= 1"),
            (self.valid_particles >= 1, "valid_particles must be >= 1"),
            (self.eval_particles >= 1, "eval_particles must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.skip_bad_steps >= 0, "skip_bad_steps must be >= 0"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (math.isfinite(self.lam) and self.lam >= 0, "lam must be finite and >= 0"),
            (self.lam == 1.0 or self.objective == "cs", "lam is the weight of D_CS: it needs objective 'cs'"),
            (math.isfinite(self.free_bits) and self.free_bits >= 0, "free_bits must be finite and >= 0"),
            (self.objective != "free-bits" or self.free_bits > 0, "objective 'free-bits' needs free_bits NATS > 0"),
            (self.free_bits == 0 or self.objective == "free-bits", "free_bits needs objective 'free-bits'"),
            (self.free_bits_per in ("dim", "site"), "free_bits_per must be 'dim' or 'site'"),
            (self.decoder in ("mlp", "autoregressive"), "decoder must be 'mlp' or 'autoregressive'"),
            (0 <= self.decoder_dropout < 1, "decoder_dropout must be in [0, 1)"),
            (self.decoder_dropout == 0 or self.decoder == "autoregressive",
             "decoder_dropout needs decoder 'autoregressive'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DgmPyroError(f"bad configuration: {msg}")
        from .infer.annealing import parse_schedule

        parse_schedule(self.anneal, total_steps=10**9)  # the syntax; the run's step count is checked later
        return self


@dataclass
class GraphConfig(ConfigBase):
    """Everything that determines a :class:`~dgm_pyro.models.GraphSSM` run (``dgm-pyro train graph-ssm``).

    The last ``test_steps`` snapshots are held out for ``dgm-pyro forecast``. ``edge_likelihood`` ``auto``
    is exact (dense) up to ``DENSE_MAX_NODES`` nodes and the sparse estimate above.
    """

    DENSE_MAX_NODES = 1000

    model: str = "graph-ssm"
    dataset: str = "dsbm"
    test_steps: int = 5
    snapshot_width: Optional[float] = None
    directed: bool = False
    latent_dim: int = 8
    hidden: int = 64
    gnn: str = "gcn"
    edge_likelihood: str = "auto"
    negatives_per_edge: float = 5.0
    scheduled_sampling: str = "none"
    deterministic_decoder: bool = False
    edge_memory: bool = True
    steps: int = 300
    lr: float = 1e-2
    clip_norm: float = 10.0
    checkpoint_every: int = 25
    baseline_steps: int = 300
    seed: int = 0
    skip_bad_steps: int = 0

    def validate(self) -> "GraphConfig":
        """Check ranges and choices; raise :class:`DgmPyroError` naming the first bad option."""
        from .models.gnn import GNN_LAYERS

        width = self.snapshot_width
        checks = [
            (self.model == "graph-ssm", "model must be 'graph-ssm'"),
            (self.test_steps >= 1, "test_steps must be >= 1"),
            (width is None or (isinstance(width, (int, float)) and math.isfinite(width) and width > 0),
             "snapshot_width must be a positive number"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (self.hidden >= 1, "hidden must be >= 1"),
            (self.gnn in GNN_LAYERS, f"gnn must be one of {', '.join(GNN_LAYERS)}"),
            (self.edge_likelihood in ("auto", "dense", "sparse"), "edge_likelihood must be auto, dense or sparse"),
            (math.isfinite(self.negatives_per_edge) and self.negatives_per_edge > 0, "negatives_per_edge must be > 0"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.clip_norm > 0, "clip_norm must be > 0"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.baseline_steps >= 0, "baseline_steps must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.skip_bad_steps >= 0, "skip_bad_steps must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DgmPyroError(f"bad configuration: {msg}")
        from .infer.scheduled_sampling import parse_teacher_forcing

        parse_teacher_forcing(self.scheduled_sampling)
        return self

    def resolved_edge_likelihood(self, num_nodes: int) -> str:
        if self.edge_likelihood != "auto":
            return self.edge_likelihood
        return "dense" if num_nodes <= self.DENSE_MAX_NODES else "sparse"
