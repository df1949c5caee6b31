"""MNIST from the shell, on a small folder of IDX files (the code path of the full data set): quadrant completion
trains with dynamic binarisation beside its NN baseline, evaluates, samples a 28x28 grid and resumes exactly; bad
MNIST input is one line and exit code 2, with nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from dgm_pyro.checkpoint import load_checkpoint

ARGS = ["--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--particles", "5", "--batch-size", "10"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _images(n, seed):
    """Bright vertical bars on a dark background, with labels."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, 20, 2)
        img[i, r:r + 8, c:c + 3] = rng.integers(128, 256)
    return img, rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, write_idx):
    """60 training images (the first 50 train, the last 10 validate) and 20 test images."""
    path = tmp_path_factory.mktemp("mnist") / "raw"
    write_idx(path, *_images(60, 0), *_images(20, 1))
    return path


@pytest.fixture(scope="module")
def q2_run(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = run("train", "cvae", "--dataset", f"mnist-q2:{folder}", "--out", root, "--name", "q2", "--json", *ARGS)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"]), json.loads(r.stdout)


def test_quadrant_run_trains_both_models_on_binarised_pixels(q2_run):
    path, info = q2_run
    data = info["train"]["data"]
    assert data["name"].startswith("mnist-q2:") and data["likelihood"] == "bernoulli"
    assert (data["condition"], data["train"], data["valid"], data["test"]) == ("quadrant", 50, 10, 20)
    assert info["train"]["epochs_run"] == 2 and info["train"]["baseline"]["epochs_run"] == 2
    test = info["test"]
    # negative CLLs of binary pixels: positive, at most 392 log 2 (the predicted half, uniform pixels) far below
    assert 0 < test["cvae_ncll"] < 392 * np.log(2) and 0 < test["baseline_ncll"] < 392 * np.log(2)
    assert test["num_datapoints"] == 20


def test_sample_grid_and_evaluate_at_28x28(q2_run, tmp_path):
    path, _ = q2_run
    r = run("sample", path, "--num", "3", "--out", tmp_path / "q2.npz", "--json")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "q2.npz") as f:
        assert f["x"].shape == (8, 3, 392)
    r = run("sample", path, "--num", "3", "--out", tmp_path / "q2.png")
    assert r.exit_code == 0 and (tmp_path / "q2.png").read_bytes()[:4] == b"\x89PNG"
    r = run("evaluate", path, "--particles", "20", "--split", "valid", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["num_datapoints"] == 10


def test_resume_redraws_the_same_binarisation(folder, tmp_path):
    """Dynamic binarisation draws with the trainer's generator, which checkpoints hold: a run stopped after
    epoch 1 and resumed ends with the uninterrupted run's weights."""
    full = run("train", "cvae", "--dataset", f"mnist:{folder}", "--out", tmp_path, "--name", "full", "--json", *ARGS,
               "--no-baseline")
    assert full.exit_code == 0, full.output
    cut = run("train", "cvae", "--dataset", f"mnist:{folder}", "--out", tmp_path, "--name", "cut", "--json",
              *ARGS, "--epochs", "1", "--no-baseline")
    assert cut.exit_code == 0, cut.output
    r = run("train", "--resume", tmp_path / "cut", "--epochs", "2", "--json")
    assert r.exit_code == 0, r.output
    a, b = (load_checkpoint(tmp_path / n / "checkpoint.pt")["model_state"] for n in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist:/nonexistent/mnist"], "/nonexistent/mnist: no such directory"),
    (["--dataset", "mnist-q4"], "unknown dataset 'mnist-q4'"),
    (["--likelihood", "gaussian"], "MNIST takes the bernoulli likelihood"),
])
def test_bad_mnist_input_is_one_line_and_exit_2(folder, tmp_path, args, message):
    args = ["--dataset", f"mnist:{folder}", *args] if "--dataset" not in args else args
    r = run("train", "cvae", "--out", tmp_path, *args, *ARGS)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
