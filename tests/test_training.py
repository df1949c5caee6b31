"""The SVI loop: exact resume, checkpoints, early stopping."""

import pathlib

import pytest
import torch

from dgm_pyro.checkpoint import load_checkpoint, save_checkpoint
from dgm_pyro.config import TrainConfig
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.runs import load_run, train_run
from dgm_pyro.training import read_metrics

SMALL = dict(dataset="digits", epochs=4, hidden_dims=[32], latent_dim=4, batch_size=200, valid_particles=3, seed=3)


class Stop(Exception):
    pass


def _stop_after(k):
    def cb(row):
        if row["epoch"] == k:
            raise Stop

    return cb


def _state(path):
    return load_checkpoint(path)["model_state"]


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_run(TrainConfig(**SMALL), full)
    with pytest.raises(Stop):
        train_run(TrainConfig(**SMALL), cut, on_epoch=_stop_after(2))
    assert len(read_metrics(cut / "metrics.csv")) == 2
    train_run(None, cut, resume=True)
    for name in ("checkpoint.pt", "best.pt"):
        a, b = _state(full / name), _state(cut / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert _strip_time(read_metrics(full / "metrics.csv")) == _strip_time(read_metrics(cut / "metrics.csv"))
    assert (cut / "plots" / "training.png").is_file()


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    train_run(TrainConfig(**{**SMALL, "epochs": 1}), tmp_path / "a")
    train_run(TrainConfig(**{**SMALL, "epochs": 1}), tmp_path / "b")
    train_run(TrainConfig(**{**SMALL, "epochs": 1, "seed": 4}), tmp_path / "c")
    a, b, c = (_strip_time(read_metrics(tmp_path / n / "metrics.csv")) for n in "abc")
    assert a == b and a != c


def test_early_stopping_and_best_checkpoint(tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 40, "patience": 2, "lr": 0.05})
    summary = train_run(cfg, tmp_path / "r")
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert summary["stopped"] == "early" and len(rows) < 40
    best = max(rows, key=lambda r: r["valid_elbo"])
    assert summary["best_epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["trainer_state"]["best_epoch"] == best["epoch"]
    # the last `patience` epochs did not improve
    assert all(r["best"] == 0.0 for r in rows[-2:])


def test_resume_refuses_changed_config_and_missing_checkpoint(tmp_path):
    run = tmp_path / "r"
    train_run(TrainConfig(**{**SMALL, "epochs": 1}), run)
    text = (run / "config.json").read_text().replace('"lr": 0.001', '"lr": 0.002')
    (run / "config.json").write_text(text)
    with pytest.raises(DgmPyroError, match="different configuration"):
        train_run(None, run, resume=True)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(DgmPyroError, match="no checkpoint.pt"):
        train_run(None, run, resume=True)
    with pytest.raises(DgmPyroError, match="not empty"):
        train_run(TrainConfig(**SMALL), run)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state": _Evil(str(marker))}, evil)
    with pytest.raises(DgmPyroError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"model_state": {"w": torch.ones(2)}}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint({"model_state": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_quadrant_run_trains_baseline_too(tmp_path):
    train_run(TrainConfig(**{**SMALL, "dataset": "digits-q2", "epochs": 1}), tmp_path / "q")
    run = load_run(tmp_path / "q")
    assert run.baseline is not None and (tmp_path / "q" / "baseline" / "best.pt").is_file()
