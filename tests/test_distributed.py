"""Data-parallel training under torchrun (gloo, 2 CPU processes): the first step equals one process's on the
same global minibatch, checkpoints hold both ranks' random states, and a killed 2-process run resumes to the
same parameters."""

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ARGS = ["--epochs", "6", "--hidden", "64", "--latent-dim", "4", "--particles", "10", "--seed", "3", "--json"]


def _torchrun(out, *extra, wait=True):
    """``torchrun --nproc-per-node 2 -m cli.main train ...``; each rank's stdout and stderr go to files under a
    log folder (``--redirects 3``), and a failure shows all of them, whole."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = Path(tempfile.mkdtemp(prefix="ddp-logs-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "cli.main", "train", *extra]
    p = subprocess.Popen(cmd + (["--out", str(out)] if "--resume" not in extra else []), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         cwd=Path(__file__).parents[1])
    p.logs = logs
    if wait:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, _all_output(p.returncode, stderr, logs)
    return p


def _all_output(code, stderr, logs):
    """torchrun's own stderr and every rank's full stdout and stderr, for the failure message."""
    parts = [f"torchrun exit code {code}", "== torchrun stderr ==", stderr]
    for f in sorted(Path(logs).rglob("*.log")):
        parts += [f"== {f.relative_to(logs)} ==", f.read_text(errors="replace")]
    return "\n".join(parts)


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _only_run(root):
    runs = list(Path(root).glob("cvae-*"))
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _torchrun(root, *ARGS)
    return _only_run(root)


def test_two_processes_take_the_same_first_step_as_one(tmp_path):
    """The NN baseline of quadrant completion has no latent variable, so its loss is deterministic: 2 processes
    on shards of one global minibatch must take the step of 1 process on the whole of it (to float
    tolerance: only the order of the gradient sums differs). A gradient-scaling bug (dividing by the shard's
    size, or averaging instead of summing over ranks) changes the gradient by a factor of 2 and fails."""
    from click.testing import CliRunner

    from cli.main import cli

    args = ["--dataset", "digits-q2", "--epochs", "1", "--batch-size", "1000", "--hidden", "32", "--latent-dim", "2",
            "--particles", "5", "--seed", "3", "--json"]
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "one"), *args])
    assert r.exit_code == 0, r.output
    _torchrun(tmp_path / "two", *args)
    one = torch.load(_only_run(tmp_path / "one") / "baseline" / "checkpoint.pt", weights_only=True)
    two = torch.load(_only_run(tmp_path / "two") / "baseline" / "checkpoint.pt", weights_only=True)
    # one step (1000 training rows, one minibatch): Adam's first moment is 0.1 x the gradient
    g1 = [s["exp_avg"] for s in one["optim_state"][0]["state"].values()]
    g2 = [s["exp_avg"] for s in two["optim_state"][0]["state"].values()]
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9), (a - b).abs().max()
    assert max(float(a.abs().max()) for a in g1) > 1e-4  # the comparison is not of zeros
    for k, a in one["model_state"].items():
        assert torch.allclose(a, two["model_state"][k], rtol=0, atol=1e-6), k
    ckpt = torch.load(_only_run(tmp_path / "two") / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def test_killed_two_process_run_resumes_exactly(two_process_run, tmp_path):
    p = _torchrun(tmp_path, *ARGS, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = list(tmp_path.glob("cvae-*"))
        if runs and (runs[0] / "checkpoint.pt").is_file() and len(_rows(runs[0])) >= 2:
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    run = _only_run(tmp_path)
    killed_at = len(_rows(run))
    _torchrun(tmp_path, "--resume", str(run))
    a = torch.load(two_process_run / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(run / "checkpoint.pt", weights_only=True)["model_state"]
    assert killed_at < 6
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("args, code, text", [(["datasets"], 0, "digits-q2"), (["train", "--epochs", "0"], 2, "--epochs")])
def test_a_rank_leaves_with_its_exit_code_and_its_output(args, code, text):
    """Under torchrun (WORLD_SIZE > 1) the command ends through dgm_pyro.distributed.exit_process, skipping
    Python's finalisation (where gloo's worker threads could abort the process): the exit code and everything
    printed still come out."""
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                       cwd=Path(__file__).parents[1], timeout=300)
    assert p.returncode == code, p.stderr
    assert text in p.stdout + p.stderr
