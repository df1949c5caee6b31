"""The SVI loop: exact resume, checkpoints, early stopping."""

import math
import pathlib

import pytest
import torch

from dgm_pyro.checkpoint import load_checkpoint, save_checkpoint
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.callbacks import OnInterval
from dgm_pyro.runs import TrainConfig, load_run, train_run
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
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]


OBJECTIVES = [{}, {"objective": "cs", "lam": 2.0, "anneal": "cyclical:3:0.5"},
              {"objective": "free-bits", "free_bits": 0.25, "anneal": "linear:0.1:7"},
              {"objective": "meanfield", "anneal": "sigmoid:12"}, {"aggressive": True, "anneal": "linear:0:10"},
              {"lr_schedule": "cosine"}]


@pytest.mark.parametrize("options", OBJECTIVES, ids=["elbo", "cs-cyclical", "free-bits-linear", "meanfield-sigmoid",
                                                     "aggressive", "cosine-lr"])
def test_resume_reproduces_uninterrupted_run(tmp_path, options):
    """Also for every objective and annealing schedule: the schedule position comes back on resume."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_run(TrainConfig(**SMALL, **options), full)
    with pytest.raises(Stop):
        train_run(TrainConfig(**SMALL, **options), cut, callbacks=[OnInterval(_stop_after(2))])
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
    assert load_checkpoint(tmp_path / "r" / "best.pt")["callbacks"]["Validation"]["best_epoch"] == best["epoch"]
    # the last `patience` epochs did not improve
    assert all(r["best"] == 0.0 for r in rows[-2:])


def test_resume_refuses_changed_config_and_missing_checkpoint(tmp_path):
    run = tmp_path / "r"
    train_run(TrainConfig(**{**SMALL, "epochs": 1}), run)
    text = (run / "config.json").read_text().replace('"lr": 0.001', '"lr": 0.002')
    (run / "config.json").write_text(text)
    with pytest.raises(DgmPyroError, match="different configuration"):
        train_run(None, run, resume=True)
    # a checkpoint of an older format (before the digest left out the length) is named as such
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "format": 4}, run / "checkpoint.pt")
    with pytest.raises(DgmPyroError, match="checkpoint format 4 is not this version's .* its weights still load"):
        train_run(None, run, resume=True)
    with pytest.raises(DgmPyroError, match="not empty"):
        train_run(TrainConfig(**SMALL), run)
    run2 = tmp_path / "r2"
    train_run(TrainConfig(**{**SMALL, "epochs": 2}), run2)
    (run2 / "checkpoint.pt").unlink()
    with pytest.raises(DgmPyroError, match="no checkpoint.pt"):
        train_run(None, run2, resume=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_in_place(tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 2})
    train_run(cfg, tmp_path / "full")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    train_run(None, killed, resume=True)
    a, b = _state(tmp_path / "full" / "checkpoint.pt"), _state(killed / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def test_beta_per_epoch_in_metrics_follows_the_schedule(tmp_path):
    # 1000 training digits in batches of 200: 5 steps per epoch, 20 steps in 4 epochs
    train_run(TrainConfig(**SMALL, objective="cs", lam=0.5, anneal="cyclical:2:0.5"), tmp_path / "r")
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    from dgm_pyro.infer import Cyclical

    c = Cyclical(total_steps=20, cycles=2, ratio=0.5)
    for r in rows:
        steps = range(5 * (int(r["epoch"]) - 1), 5 * int(r["epoch"]))
        assert r["beta_mean"] == pytest.approx(sum(c(t) for t in steps) / 5)
        assert r["beta_last"] == pytest.approx(c(steps[-1]))
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["callbacks"]["KLAnnealing"] == {"step": 20, "schedule": "Cyclical(total_steps=20, cycles=2, ratio=0.5)"}
    plain = TrainConfig(**SMALL)
    train_run(plain, tmp_path / "p")
    assert all(r["beta_mean"] == 1.0 for r in read_metrics(tmp_path / "p" / "metrics.csv"))


def test_early_stopping_waits_for_the_schedule_to_settle(tmp_path, monkeypatch):
    """With validation getting worse every epoch and patience 1, a plain run stops after epoch 2; with a
    warm-up of 15 steps (3 epochs of 5 steps) the epochs before it ends do not count, so it stops after 3."""
    from dgm_pyro.callbacks import Validation

    scores = iter(range(0, -100, -1))
    monkeypatch.setattr(Validation, "_measure", lambda self, module: (float(next(scores)), 0.0, {}))
    cfg = dict(SMALL, epochs=8, patience=1)
    assert train_run(TrainConfig(**cfg), tmp_path / "plain")["epochs_run"] == 2
    scores = iter(range(0, -100, -1))
    assert train_run(TrainConfig(**cfg, anneal="linear:0:15"), tmp_path / "warm")["epochs_run"] == 3


def test_tracking_collapse_does_not_change_the_run(tmp_path):
    train_run(TrainConfig(**{**SMALL, "epochs": 2}), tmp_path / "a")
    train_run(TrainConfig(**{**SMALL, "epochs": 2}, track_collapse=True), tmp_path / "b")
    a, b = (_strip_time(read_metrics(tmp_path / n / "metrics.csv")) for n in "ab")
    assert [{k: r[k] for k in ra} for ra, r in zip(a, b)] == a
    assert all({"valid_kl", "valid_mi", "valid_au"} <= set(r) for r in b)
    assert all(0 <= r["valid_au"] <= 4 and r["valid_mi"] <= math.log(35) + 1e-9 for r in b)  # 350 / 10 per class


def test_aggressive_updates_the_encoder_more_and_stops_when_mi_stops_rising(tmp_path, monkeypatch):
    from dgm_pyro import callbacks

    mis = iter([1.0, 0.5, 0.7, 0.9])  # rises once, then falls: aggressive in epochs 1 and 2 only
    real = callbacks.Validation._measure

    def fake(self, module):
        elbo, ll, collapse = real(self, module)
        return elbo, ll, {**collapse, "valid_mi": next(mis)}

    monkeypatch.setattr(callbacks.Validation, "_measure", fake)
    train_run(TrainConfig(**{**SMALL, "epochs": 4}, aggressive=True), tmp_path / "r")
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert [r["aggressive"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    gen_state, enc_state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["optim_state"]
    gen_steps = {int(v["step"]) for v in gen_state["state"].values()}
    enc_steps = {int(v["step"]) for v in enc_state["state"].values()}
    # 5 steps per epoch: the decoder took 20; the encoder at least 10 per decoder step while aggressive
    assert gen_steps == {20} and min(enc_steps) >= 2 * 5 * callbacks.AGGRESSIVE_WINDOW + 2 * 5
