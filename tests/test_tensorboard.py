"""TensorBoard logging of training runs (``--log tensorboard``): what the event files hold is what the run
measured, and logging does not change the run."""

import builtins
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("tensorboard")  # the [tensorboard] extra; the README's test command installs it

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from cli.main import cli  # noqa: E402
from dgm_pyro.diagnostics import active_units, encoder_posteriors, kl_per_dimension  # noqa: E402
from dgm_pyro.runs import load_run  # noqa: E402
from dgm_pyro.tensorboard import sample_grid_image  # noqa: E402
from dgm_pyro.training import read_metrics  # noqa: E402

TINY = ["--epochs", "6", "--hidden", "32", "--latent-dim", "4", "--particles", "5", "--batch-size", "200",
        "--seed", "3"]


def _train(root: Path, name: str, *extra: str):
    r = CliRunner().invoke(cli, ["train", "cvae", "--out", str(root), "--name", name, "--json", *TINY, *extra])
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    return _train(root, "logged", "--log", "tensorboard"), _train(root, "plain")


def _events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def test_logging_does_not_change_the_run(runs):
    logged, plain = runs
    drop = ("seconds", "train_seconds")
    rows = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(logged / "metrics.csv")]
    assert rows == [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(plain / "metrics.csv")]
    assert torch.equal(torch.load(logged / "checkpoint.pt", weights_only=True)["model_state"]["encoder.0.weight"],
                       torch.load(plain / "checkpoint.pt", weights_only=True)["model_state"]["encoder.0.weight"])
    assert not (plain / "tensorboard").exists()


def test_scalars_are_the_metrics_file(runs):
    logged, _ = runs
    ea = _events(logged)
    rows = read_metrics(logged / "metrics.csv")
    for column, tag in (("train_loss", "train/loss"), ("valid_elbo", "valid/elbo"),
                        ("valid_log_likelihood", "valid/log_likelihood"), ("beta_mean", "progress/beta_mean")):
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [int(r["epoch"]) for r in rows], tag
        assert [e.value for e in events] == pytest.approx([r[column] for r in rows], rel=1e-6), tag


def test_kl_per_dimension_and_active_units_are_the_diagnostics_of_the_last_model(runs):
    """The last epoch's events equal the collapse measures recomputed from checkpoint.pt (the last epoch's weights)
    on the first 1,000 validation rows; the ELBO's terms add up to about the validation ELBO."""
    logged, _ = runs
    ea = _events(logged)
    run = load_run(logged)
    run.module.load_state_dict(torch.load(logged / "checkpoint.pt", weights_only=True)["model_state"])
    x, y = (t[:1000] for t in run.dataset.splits["valid"])
    q, p = encoder_posteriors(run.module.model, run.module.guide, x, y)
    kl = kl_per_dimension(q, p)
    logged_kl = [ea.Scalars(f"kl_per_dimension/z{u:03d}")[-1].value for u in range(4)]
    assert logged_kl == pytest.approx(kl.tolist(), rel=1e-5, abs=1e-6)
    assert ea.Scalars("terms/kl")[-1].value == pytest.approx(float(kl.sum()), rel=1e-5, abs=1e-6)
    assert ea.Scalars("diagnostics/active_units")[-1].value == active_units(q, prior=p)[0]
    # one draw of z per row: reconstruction - KL is a one-sample ELBO of the same rows (the validation ELBO is
    # over the whole split, 10 particles); on 350 rows they agree within a nat
    elbo = ea.Scalars("terms/reconstruction")[-1].value - ea.Scalars("terms/kl")[-1].value
    assert elbo == pytest.approx(ea.Scalars("valid/elbo")[-1].value, abs=1.0)


def test_sample_grids_every_five_epochs_and_at_the_end(runs):
    logged, _ = runs
    images = _events(logged).Images("samples/decoder_mean")
    assert [e.step for e in images] == [5, 6]
    assert (images[-1].width, images[-1].height) == (8 * 8, 10 * 8)  # 8 samples of 8x8 per class row


def test_sample_grid_image_tiles_rows_and_columns():
    from dgm_pyro.data import load_dataset

    ds = load_dataset("digits-q2")
    x = torch.arange(2 * 3 * ds.x_dim, dtype=torch.float32).reshape(2, 3, ds.x_dim) % 17
    y = torch.rand(2, ds.y_dim)
    grid = sample_grid_image(x, y, ds)
    assert grid.shape == (2 * 8, 3 * 8)
    # the block of row 1, column 2 is that sample's image with the given half filled in from y
    block = grid[8:16, 16:24].reshape(-1)
    assert torch.allclose(block[ds.x_index], x[1, 2] / 16)
    assert torch.allclose(block[ds.y_index], y[1])


def test_without_tensorboard_one_line_exit_2(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_tensorboard(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    r = CliRunner().invoke(cli, ["train", "cvae", "--out", str(tmp_path / "out"), *TINY, "--log", "tensorboard"])
    assert r.exit_code == 2, r.output
    assert "tensorboard package" in r.output and "[tensorboard]" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_diagnostics_trace_the_guide_once_and_score_the_reconstruction_of_that_draw(runs):
    """One guide run per checkpoint: the KL, the active units and the reconstruction term all read the same draw
    of z (the reconstruction is log p(x|z) at the guide's z in the traced model)."""
    from dgm_pyro.tensorboard import TensorBoardLogger

    logged, _ = runs
    run = load_run(logged)
    x, y = (t[:50] for t in run.dataset.splits["valid"])
    calls, draws = [], []
    module = run.module

    class Counted:
        model = staticmethod(module.model)

        @staticmethod
        def guide(*args):
            calls.append(1)
            draws.append(module.guide(*args))
            return draws[-1]

    class Writer:
        scalars: dict = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = value

    logger = TensorBoardLogger(None, (x, y))
    logger.writer = Writer()
    with torch.no_grad():
        logger._diagnostics(Counted, 1)
        recon = float(module.decode(draws[0], module.features(y)).log_prob(x).sum()) / 50
    assert len(calls) == 1
    assert logger.writer.scalars["terms/reconstruction"] == pytest.approx(recon, rel=1e-6)
