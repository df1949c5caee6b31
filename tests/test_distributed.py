"""Data-parallel training under torchrun (gloo, 2 CPU processes): the loss curve agrees with one process,
checkpoints hold both ranks' random states, and a killed 2-process run resumes to the same parameters."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["--epochs", "6", "--hidden", "64", "--latent-dim", "4", "--particles", "10", "--seed", "3", "--json"]


def _torchrun(out, *extra, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cli.main",
           "train", *extra]
    p = subprocess.Popen(cmd + (["--out", str(out)] if "--resume" not in extra else []), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         cwd=Path(__file__).parents[1])
    if wait:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
    return p


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


def test_two_processes_match_one_statistically(two_process_run, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), *ARGS])
    assert r.exit_code == 0, r.output
    one = _rows(_only_run(tmp_path))
    two = _rows(two_process_run)
    assert len(one) == len(two) == 6
    # the same minibatches and the same initial weights; only the latent draws differ (one stream per rank)
    for a, b in zip(one, two):
        assert abs(float(a["valid_elbo"]) - float(b["valid_elbo"])) < 0.03 * abs(float(a["valid_elbo"]))
    assert float(two[-1]["valid_elbo"]) > float(two[0]["valid_elbo"]) + 15
    ckpt = torch.load(two_process_run / "checkpoint.pt", weights_only=True)
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
