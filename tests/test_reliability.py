"""Crash safety: SIGKILL a real `dgm-pyro train` at random moments, resume each time, and end with the
parameters of an uninterrupted run; no checkpoint is ever unreadable. Numerical faults stop training
cleanly with the last good checkpoint intact, or are skipped when asked.

The default suite kills 4 times; DGM_PYRO_FULL_TESTS=1 kills 20 times."""

import csv
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO

from dgm_pyro.checkpoint import load_checkpoint
from dgm_pyro.runs import TrainConfig
from dgm_pyro.errors import DgmPyroError

KILLS = 20 if os.environ.get("DGM_PYRO_FULL_TESTS") == "1" else 4
FLAGS = ["--epochs", "40", "--hidden", "64", "--latent-dim", "4", "--batch-size", "100", "--particles", "20",
         "--seed", "5", "--json"]


def _exe() -> str:
    return shutil.which("dgm-pyro") or str(Path(sys.executable).parent / "dgm-pyro")


def _metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")} for row in csv.DictReader(f)]


def test_random_sigkills_then_resume_give_the_uninterrupted_result(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    done = subprocess.run([_exe(), "train", "--out", str(ref_out), *FLAGS], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (ref,) = ref_out.glob("cvae-*")
    rng = random.Random(0)
    kills, launches = 0, 0
    while True:
        runs = list(out.glob("cvae-*"))
        args = ["train", "--resume", str(runs[0]), "--json"] if runs else ["train", "--out", str(out), *FLAGS]
        proc = subprocess.Popen([_exe(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        launches += 1
        assert launches < 6 * KILLS + 10, "the kills did not land"
        if kills < KILLS:
            try:
                proc.wait(timeout=rng.uniform(3.0, 8.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
                landed = [len(_metrics(r)) if (r / "metrics.csv").exists() else 0 for r in out.glob("cvae-*")]
                print(f"kill {kills}: epochs in metrics.csv at the kill: {landed or 'no run folder yet'}")
                for runs_dir in out.glob("cvae-*"):
                    for name in ("checkpoint.pt", "best.pt"):
                        if (runs_dir / name).exists():
                            load_checkpoint(runs_dir / name)  # never unreadable
                continue
        else:
            proc.wait(timeout=600)
        assert proc.returncode == 0, proc.stderr.read()
        if kills >= KILLS:
            break
        # finished before the kill came: start the experiment again until every kill has landed
        shutil.rmtree(out)
    (run,) = out.glob("cvae-*")
    a, b = load_checkpoint(ref / "checkpoint.pt")["model_state"], load_checkpoint(run / "checkpoint.pt")["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(ref) == _metrics(run)


class _NaNAt(Trace_ELBO):
    """Trace_ELBO whose loss is NaN at the given optimisation steps (0-based)."""

    def __init__(self, bad_steps):
        super().__init__()
        self.bad, self.calls = set(bad_steps), 0

    def differentiable_loss(self, model, guide, *args, **kwargs):
        value = super().differentiable_loss(model, guide, *args, **kwargs)
        self.calls += 1
        return value * math.nan if self.calls - 1 in self.bad else value


SMALL = dict(dataset="digits", epochs=3, hidden_dims=[32], latent_dim=4, batch_size=200, valid_particles=3, seed=3)


def _fit(tmp_path, loss, **options):
    from dgm_pyro.data import load_dataset
    from dgm_pyro.runs import CVAEKind, build_model

    cfg = TrainConfig(**{**SMALL, **options})
    ds = load_dataset("digits")
    return CVAEKind().fit(cfg, ds, build_model(cfg, ds), tmp_path, loss=loss)


def test_nan_loss_stops_cleanly_with_the_last_good_checkpoint(tmp_path):
    # 5 steps per epoch: step 7 is the third step of epoch 2
    with pytest.raises(DgmPyroError, match=r"epoch 2, step 3.*last good checkpoint.*epoch 1.*lower learning rate"):
        _fit(tmp_path, _NaNAt({7}))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["trainer_state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values())


def test_bad_steps_are_skipped_when_asked(tmp_path):
    summary = _fit(tmp_path, _NaNAt({2, 7}), skip_bad_steps=2)
    assert summary["epochs_run"] == 3 and summary["skipped_steps"] == 2
    with pytest.raises(DgmPyroError, match="more than 1"):
        _fit(tmp_path / "again", _NaNAt({2, 7}), skip_bad_steps=1)
