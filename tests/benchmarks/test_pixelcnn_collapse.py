"""benchmarks/pixelcnn_collapse.py: the score of a run (its best epoch's importance-sampled NLL and collapse measures
on the first test images) and the table's summary of run folders, checked on a tiny PixelCNN run and hand-made
metrics."""

import argparse
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("pixelcnn_collapse")


def test_every_row_trains_the_pixelcnn_with_its_own_options(bench):
    for row, options in bench.ROWS.items():
        cmd = bench.train_command(Path("/r"), row, 2, 7)
        assert cmd[:9] == ["dgm-pyro", "train", "cvae", "--dataset", "mnist-unconditional", "--decoder", "pixelcnn",
                           "--track-collapse", "--valid-particles"]
        assert cmd[12:12 + len(options)] == options and cmd[-2:] == ["--name", f"{row}-s2"]
        assert cmd[cmd.index("--particles") + 1] == "0"  # no K = 1000 evaluation of all test images
        assert cmd[cmd.index("--epochs") + 1] == "7" and cmd[cmd.index("--seed") + 1] == "2"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The folder of a one-epoch PixelCNN run named as the benchmark names its plain-ELBO row on seed 0."""
    from dgm_pyro.runs import TrainConfig, train_run

    out = tmp_path_factory.mktemp("pc")
    config = TrainConfig(dataset="digits-unconditional", decoder="pixelcnn", pixelcnn_channels=4, pixelcnn_layers=2,
                         hidden_dims=[16], latent_dim=2, epochs=1, eval_particles=0, track_collapse=True)
    train_run(config, out / "elbo-s0")
    return out


def test_score_of_a_tiny_run_is_an_is_estimate_with_collapse_measures(bench, tiny_runs):
    out = bench.score(tiny_runs / "elbo-s0", images=12, particles=50)
    assert out["test_images"] == 12 and out["particles"] == 50 and 0 <= out["active_units"] <= 2
    # importance sampling is above the ELBO (its NLL below the negative ELBO), the KL and MI non-negative
    assert out["nll"] <= out["negative_elbo"] + 0.05 and out["kl"] >= 0 and out["mutual_information"] >= -1e-6
    # the per-image evidence the paired leads are taken from: the NLL is minus its mean
    assert len(out["log_evidence"]) == 12 and -sum(out["log_evidence"]) / 12 == pytest.approx(out["nll"], rel=1e-6)


def _fake_run(folder: Path, elbos, kls, seconds=60.0, nll=90.0, log_evidence=None):
    folder.mkdir(parents=True)
    lines = ["epoch,train_loss,valid_elbo,valid_log_likelihood,best,valid_kl,valid_mi,valid_au,aggressive,seconds,"
             "train_seconds"]
    for e, (elbo, kl) in enumerate(zip(elbos, kls), 1):
        lines.append(f"{e},100,{elbo},{elbo},0,{kl},0.1,{e},0.0,70,{seconds}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "collapse-test-N10-K5.json").write_text(json.dumps(
        {"nll": nll, "negative_elbo": nll + 2, "kl": kls[-1], "mutual_information": 0.1, "active_units": 1,
         "khat_above_0.7": 0.5, "test_images": 10, "particles": 5, "epochs_trained": len(elbos),
         **({} if log_evidence is None else {"log_evidence": log_evidence})}))


def test_the_table_takes_the_best_epoch_and_means_over_seeds(bench, tmp_path, capsys):
    _fake_run(tmp_path / "elbo-s0", [-100.0, -95.0, -97.0], [2.0, 0.4, 0.3], nll=90.0)
    _fake_run(tmp_path / "elbo-s1", [-99.0, -98.0], [1.0, 0.6], nll=92.0)
    (tmp_path / "elbo-s2").mkdir()  # started, no pass trained yet: in no table
    one = bench.summarise(tmp_path / "elbo-s0", 10, 5)
    assert one["best_epoch"] == 2 and one["valid_kl"] == 0.4 and one["train_minutes"] == pytest.approx(3.0)
    assert bench.summarise(tmp_path / "elbo-s0", 10, 6) is None  # another K: not scored
    args = argparse.Namespace(out=tmp_path, rows=["elbo", "free-bits"], seeds=[0, 1, 2], test_images=10,
                              particles=5, json=tmp_path / "t.json", plot=tmp_path / "t.png", at_passes=[2, 3],
                              baseline=None)
    bench.table(args)
    first, equal = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| elbo |")]
    line = first.split(" | ")
    # NLL: the mean and the standard deviation over the seeds (90, 92); valid KL (0.4 + 0.6) / 2
    assert line[2] == "91.00 ± 1.41" and line[7] == "0.50" and line[-1] == "0, 1 |"
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["rows"]["free-bits"] == {} and saved["leads"] == {}
    assert saved["rows"]["elbo"]["0"]["command"].endswith("--name elbo-s0")
    assert (tmp_path / "t.png").stat().st_size > 0
    # equal budgets: after 2 passes both seeds (-95 and -98), after 3 only seed 0 trained that far
    assert saved["at_passes"]["rows"]["elbo"] == {"cells": [[-96.5, 0.5], [-97.0, 0.3]], "seeds": [0, 1]}
    assert equal == "| elbo | -96.50 / 0.50 | -97.00 / 0.30 | 0, 1 |"
    assert "free-bits" not in saved["at_passes"]["rows"]


def test_samples_draw_a_titled_row_from_each_trained_row(bench, tiny_runs, tmp_path, monkeypatch):
    import torch

    from dgm_pyro import plotting
    from dgm_pyro.runs import load_run

    drawn = {}
    monkeypatch.setattr(plotting, "save_sample_grid", lambda x, y, ds, path, titles: drawn.update(x=x, titles=titles))
    args = argparse.Namespace(out=tiny_runs, rows=["elbo", "free-bits"], seeds=[0, 1], num=3, png=tmp_path / "s.png")
    bench.samples(args)  # free-bits-s0 is not trained: left out
    assert drawn["titles"] == ["elbo (seed 0, 1 passes)"] and drawn["x"].shape == (1, 3, 64)
    run = load_run(tiny_runs / "elbo-s0")  # the draws of `dgm-pyro sample RUN --mode sample --seed 0 --num 3`
    assert torch.equal(drawn["x"][0], run.kind.sample(run, num=3, mean=False, seed=0)[0][0])
    with pytest.raises(SystemExit, match="no trained run"):
        bench.samples(argparse.Namespace(**{**vars(args), "rows": ["cs"]}))


def test_the_split_by_width_partitions_the_score_at_its_own_draws(bench, tiny_runs, capsys):
    """Every image counted wide (ratio 0) or none (an infinite ratio): the one part is the score's own NLL, -ELBO
    minus NLL and share of k-hat above 0.7, at the same draws; in between, the two parts average back to it."""
    whole = bench.score(tiny_runs / "elbo-s0", images=12, particles=50)
    every = bench.split_by_width(tiny_runs / "elbo-s0", 12, 50, ratio=0.0)
    none = bench.split_by_width(tiny_runs / "elbo-s0", 12, 50, ratio=float("inf"))
    assert every["other"] is None and none["wide"] is None
    assert every["slack_share_wide"] == pytest.approx(1.0) and none["slack_share_wide"] == 0.0
    for part in (every["wide"], none["other"]):
        assert part["share"] == 1.0 and part["nll"] == pytest.approx(whole["nll"], rel=1e-9)
        assert part["slack"] == pytest.approx(whole["negative_elbo"] - whole["nll"], rel=1e-6)
        assert part["khat_above_0.7"] == whole["khat_above_0.7"] and part["kl"] >= 0
    import torch

    from dgm_pyro.diagnostics import encoder_posteriors, posterior_width_ratio
    from dgm_pyro.runs import load_run

    run = load_run(tiny_runs / "elbo-s0")
    x, y = (t[:12] for t in run.dataset.splits["test"])
    median = float(torch.median(posterior_width_ratio(*encoder_posteriors(run.module.model, run.module.guide, x, y))))
    half = bench.split_by_width(tiny_runs / "elbo-s0", 12, 50, ratio=median)
    assert half["wide"]["share"] + half["other"]["share"] == 1.0 and 0 < half["wide"]["share"] < 1
    assert half["wide"]["share"] * half["wide"]["nll"] + half["other"]["share"] * half["other"]["nll"] == \
        pytest.approx(whole["nll"], rel=1e-9)
    args = argparse.Namespace(out=tiny_runs, rows=["elbo", "cs"], seeds=[0], test_images=12, particles=50,
                              ratio=median, json=None)
    bench.widths(args)  # cs-s0 is not trained: left out
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| elbo-s0 |")]
    assert len(rows) == 1 and rows[0].split(" | ")[1] == f"{100 * half['wide']['share']:.1f} %"


def test_the_leads_are_paired_image_by_image(bench, tmp_path, capsys):
    """Seed 0: the row's log-evidence is the baseline's plus 2, 1, 3, 2 nats: a lead of 2 nats with a standard error
    of sd(0, -1, 1, 0) / 2, though the images themselves differ by 50 nats. Seed 1 has no per-image values (an older
    score), and seed 2 no baseline: both left out."""
    base = [-60.0, -110.0, -85.0, -95.0]
    _fake_run(tmp_path / "elbo-s0", [-90.0], [1.0], log_evidence=base)
    _fake_run(tmp_path / "cs-s0", [-90.0], [1.0], log_evidence=[b + d for b, d in zip(base, [2.0, 1.0, 3.0, 2.0])])
    _fake_run(tmp_path / "elbo-s1", [-90.0], [1.0])
    _fake_run(tmp_path / "cs-s1", [-90.0], [1.0])
    _fake_run(tmp_path / "cs-s2", [-90.0], [1.0], log_evidence=base)
    args = argparse.Namespace(out=tmp_path, rows=["elbo", "cs"], seeds=[0, 1, 2], test_images=10, particles=5,
                              json=tmp_path / "t.json", plot=None, at_passes=[], baseline="elbo")
    bench.table(args)
    se = (2 / 3) ** 0.5 / 2
    assert [r for r in capsys.readouterr().out.splitlines() if r.startswith("| cs |")][-1] == \
        f"| cs | 2.00 ± {se:.2f} |  |  |"
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["baseline"] == "elbo" and list(saved["leads"]) == ["cs"]
    assert saved["leads"]["cs"]["0"] == pytest.approx([2.0, se])
    assert "log_evidence" not in saved["rows"]["cs"]["0"]  # the per-image values stay in the run folders
