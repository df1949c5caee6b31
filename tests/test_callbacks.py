"""The training callbacks' state across an interrupted and resumed run."""

import pytest

from dgm_pyro.callbacks import OnInterval, Validation
from dgm_pyro.checkpoint import load_checkpoint
from dgm_pyro.runs import TrainConfig, train_run
from dgm_pyro.training import read_metrics

SMALL = dict(dataset="digits", hidden_dims=[16], latent_dim=2, batch_size=400, valid_particles=2, seed=3)
# validation scores by epoch: the best is epoch 1, and every later epoch is worse
SCORES = {1: 5.0, 2: 1.0, 3: 0.0, 4: -1.0, 5: -2.0, 6: -3.0}


class Stop(Exception):
    pass


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation measures SCORES[epoch] instead of the model; the early-stopping logic under it is the real one."""
    measure = Validation.on_interval_end

    def on_interval_end(self, trainer, row):
        self._epoch = int(row["epoch"])
        measure(self, trainer, row)

    monkeypatch.setattr(Validation, "on_interval_end", on_interval_end)
    monkeypatch.setattr(Validation, "_measure", lambda self, module: (SCORES[self._epoch], SCORES[self._epoch], {}))


def _stop_at(epoch):
    def cb(row):
        if row["epoch"] == epoch:
            raise Stop

    return cb


def test_resume_after_a_worse_epoch_keeps_the_best_score_and_the_patience_used(tmp_path, scripted_validation):
    """Scores 5, 1, 0, -1, ... with patience 3: the run stops early at epoch 4 with best epoch 1. Interrupted
    after epoch 2 (one bad epoch used, best score 5) and resumed, it must do the same: a resume that forgot the
    best score would take epoch 3 as the best (best.pt with epoch 3's weights) and train on to epoch 6."""
    cfg = dict(SMALL, epochs=6, patience=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    summary = train_run(TrainConfig(**cfg), full)
    assert summary["stopped"] == "early" and summary["best_epoch"] == 1
    with pytest.raises(Stop):
        train_run(TrainConfig(**cfg), cut, callbacks=[OnInterval(_stop_at(2))])
    state = load_checkpoint(cut / "checkpoint.pt")["callbacks"]["Validation"]
    assert state == {"best_score": 5.0, "best_epoch": 1, "bad_epochs": 1}
    resumed = train_run(None, cut, resume=True)
    assert resumed["stopped"] == "early" and resumed["best_epoch"] == 1
    assert [r["best"] for r in read_metrics(cut / "metrics.csv")] == [1.0, 0.0, 0.0, 0.0]
    a, b = load_checkpoint(full / "best.pt"), load_checkpoint(cut / "best.pt")
    assert a["callbacks"]["Validation"]["best_epoch"] == b["callbacks"]["Validation"]["best_epoch"] == 1
    for k in a["model_state"]:
        assert (a["model_state"][k] == b["model_state"][k]).all(), k
