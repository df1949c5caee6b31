"""Run folders: every registered model trains into ``runs/<model>-<timestamp>/`` through one lifecycle,
and later commands load a folder by the model name in its ``config.json``.

The built-in models register here: ``cvae`` (:mod:`.cvae`) and ``graph-ssm`` (:mod:`.graph_ssm`). The
command line is a thin layer over these functions.
"""

from .base import ModelKind, Run, extend_run, load_run, load_weights, new_run_dir, read_run_config, \
    require_run_dir, restart_in_place, run_data, train_run, training_state, unfinished_training
from .cvae import CVAEConfig, CVAEKind, TrainConfig, build_baseline, build_model, generate
from .dataset_models import DatasetConfig, DatasetModelKind, DatasetRun
from .graph_forecast import GraphRun, forecast_run, to_inference_data
from .graph_ssm import GraphConfig, GraphSSMKind, build_graph_model, load_graph_sequence, training_history

__all__ = ["ModelKind", "Run", "train_run", "load_run", "load_weights", "new_run_dir", "read_run_config",
           "require_run_dir", "restart_in_place", "extend_run", "run_data", "training_state", "unfinished_training", "DatasetConfig", "DatasetModelKind", "DatasetRun", "CVAEConfig",
           "TrainConfig", "CVAEKind", "build_model", "build_baseline", "generate", "GraphConfig", "GraphRun",
           "GraphSSMKind", "build_graph_model", "load_graph_sequence", "training_history", "forecast_run",
           "to_inference_data"]
