"""The dgm-pyro CLI: behaviour through click's CliRunner, bad inputs, and the installed entry point."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--particles", "20", "--batch-size", "200"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = run("train", "--out", root, "--json", *TINY)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    return Path(info["run"]), info


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_json_and_run_folder(trained):
    path, info = trained
    assert path.name.startswith("cvae-")
    for name in ("config.json", "environment.json", "metrics.csv", "checkpoint.pt", "best.pt", "plots/training.png",
                 "evaluation.json"):
        assert (path / name).is_file(), name
    test = info["test"]
    assert test["num_datapoints"] == 447 and test["num_particles"] == 20
    # the reported evaluation is the one written, and the one the library computes for the same run and seed
    assert json.loads((path / "evaluation.json").read_text())["log_evidence"] == test["log_evidence"]
    import pyro

    from dgm_pyro.infer import log_evidence
    from dgm_pyro.runs import load_run

    run = load_run(path)
    pyro.set_rng_seed(0)
    again = log_evidence(run.module.model, run.module.guide, *run.dataset.splits["test"], num_particles=20, warn=False,
                         method="auto")
    assert float(again.log_evidence.mean()) == pytest.approx(test["log_evidence"], abs=1e-9)
    assert test["method"] == again.method == "adaptive" and test["rounds"] == 3  # the default: the adapted proposal
    assert json.loads((path / "config.json").read_text())["epochs"] == 2
    # --device auto (the default) picks the CPU on a machine without a GPU
    env = json.loads((path / "environment.json").read_text())
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_each_model_help_shows_its_own_defaults_only():
    cvae = run("train", "cvae", "--help").output
    graph = run("train", "graph-ssm", "--help").output
    assert "--epochs" in cvae and "--steps" not in cvae and "--objective" in cvae
    assert "--steps" in graph and "--epochs" not in graph and "--objective" not in graph
    lr = {name: text.split("--lr", 1)[1].split("]", 1)[0] for name, text in (("cvae", cvae), ("graph", graph))}
    assert "default: 0.001" in lr["cvae"] and "default: 0.01" in lr["graph"]
    assert "default: meanfield" in " ".join(cvae.split())  # the measured default objective (docs/benchmarks.md)
    # `dgm-pyro train` alone is `dgm-pyro train cvae`
    assert "cvae" in run("train", "--help").output and "graph-ssm" in run("train", "--help").output


def test_evaluate_json_and_text(trained):
    path, _ = trained
    r = run("evaluate", path, "--particles", "150", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["num_particles"] == 150 and ev["khat_max"] is not None
    r = run("evaluate", path, "--particles", "5", "--split", "valid")
    assert r.exit_code == 0 and "log-likelihood, adaptive importance sampling" in r.stdout and "valid metrics" in r.stdout
    r = run("evaluate", path, "--particles", "5", "--split", "valid", "--method", "is")
    assert r.exit_code == 0 and "log-likelihood, importance-sampled" in r.stdout


def test_sample_png_and_npz(trained, tmp_path):
    path, _ = trained
    r = run("sample", path, "--label", "3", "--num", "4", "--out", tmp_path / "g.png", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["conditions"] == 1
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    r = run("sample", path, "--num", "2", "--mode", "sample", "--out", tmp_path / "s.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "s.npz") as f:
        assert f["x"].shape == (10, 2, 64) and set(np.unique(f["x"])) <= set(range(17))
        assert np.array_equal(f["y"].argmax(1), np.arange(10))


def test_sample_is_reproducible(trained, tmp_path):
    path, _ = trained
    for name in ("a", "b"):
        assert run("sample", path, "--mode", "sample", "--seed", "5", "--out", tmp_path / f"{name}.npz").exit_code == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["x"], b["x"])


def test_datasets_lists_everything():
    r = run("datasets", "--json")
    assert r.exit_code == 0
    assert {"digits", "digits-q1", "digits-q2", "digits-q3", "linear-gaussian", "npz:PATH", "idx:DIR", "mnist", "mnist-q1",
            "mnist-q2", "mnist-q3", "mnist-unconditional"} <= set(json.loads(r.stdout))


def test_config_file_and_flag_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nepochs = 1\nhidden_dims = [16]\nlatent_dim = 3\nlr = 0.01\n')
    r = run("train", "--config", cfg, "--lr", "0.002", "--particles", "5", "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    conf = json.loads((Path(json.loads(r.stdout)["run"]) / "config.json").read_text())
    assert conf["epochs"] == 1 and conf["hidden_dims"] == [16] and conf["latent_dim"] == 3 and conf["lr"] == 0.002


def _bad_inputs(tmp: Path, run_dir: Path):
    (tmp / "nan.npz").write_bytes(b"")
    np.savez(tmp / "nan.npz", x=np.full((20, 3), np.nan))
    np.savez(tmp / "shape.npz", x=np.zeros(20))
    np.savez(tmp / "rows.npz", x=np.zeros((20, 3)), y=np.zeros(7))
    np.savez(tmp / "cond.npz", y=np.zeros((2, 3)))
    np.savez(tmp / "img65.npz", x=np.random.default_rng(0).random((20, 6, 5)))
    (tmp / "bad.toml").write_text("epochs = = 3")
    (tmp / "unknown.toml").write_text("epochz = 3")
    (tmp / "typed.toml").write_text('epochs = "many"')
    (tmp / "notrun").mkdir(exist_ok=True)
    return [
        (["train", "--dataset", "imagenet"], "unknown dataset"),
        (["train", "--dataset", f"npz:{tmp}/missing.npz"], "no such file"),
        (["train", "--dataset", f"npz:{tmp}/nan.npz"], "NaN"),
        (["train", "--dataset", f"npz:{tmp}/shape.npz"], "must have shape"),
        (["train", "--dataset", f"npz:{tmp}/rows.npz"], "rows"),
        (["train", "--dataset", f"idx:{tmp}/nodir"], "no such directory"),
        (["train", "--dataset", "digits", "--likelihood", "gaussian"], "fixed likelihood"),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "--lr", "-1"], "lr"),
        (["train", "--hidden", "a,b"], "--hidden"),
        (["train", "--batch-size", "5000"], "batch size"),
        (["train", "--config", f"{tmp}/bad.toml"], "not valid TOML"),
        (["train", "--config", f"{tmp}/unknown.toml"], "unknown option"),
        (["train", "--config", f"{tmp}/typed.toml"], "must be of type"),
        (["train", "--config", f"{tmp}/none.toml"], "no such config"),
        (["train", "--resume", f"{tmp}/notrun"], "not a dgm-pyro run folder"),
        (["train", "--resume", str(run_dir), "--lr", "0.1"], "drop --lr"),
        (["train", "--resume", str(run_dir), "--epochs", "1"], "has trained 2 epochs already"),
        (["train", "--dataset", "dsbm"], "train the graph model with 'dgm-pyro train graph-ssm --dataset dsbm'"),
        (["train", "graph-ssm", "--dataset", "digits"], "'dgm-pyro train cvae --dataset digits'"),
        (["train", "--threads", "-1"], "--threads"),
        (["train", "--name", "a/b"], "--name takes a plain folder name"),
        (["train", "--resume", str(run_dir), "--name", "x"], "--name names a new run"),
        (["train", "--out", str(run_dir.parent), "--name", run_dir.name], "exists and is not empty"),
        (["evaluate", str(run_dir), "--threads", "x"], "--threads"),
        (["train", "--out", str(run_dir / "config.json")], "is a file"),
        (["evaluate", f"{tmp}/none"], "no such run folder"),
        (["evaluate", f"{tmp}/notrun"], "not a dgm-pyro run folder"),
        (["evaluate", str(run_dir), "--particles", "0"], "--particles"),
        (["sample", str(run_dir), "--label", "12"], "label must be between"),
        (["sample", str(run_dir), "--condition", f"{tmp}/none.npz"], "no such file"),
        (["sample", str(run_dir), "--condition", f"{tmp}/cond.npz"], "shape"),
        (["sample", str(run_dir), "--out", f"{tmp}/x.jpg"], ".png or .npz"),
        (["sample", str(run_dir), "--out", f"{tmp}/nodir/x.png"], "no such directory"),
        (["sample", str(run_dir), "--num", "0"], "--num"),
        (["train", "--anneal", "bogus"], "unknown annealing schedule"),
        (["train", "--anneal", "linear:0"], "expected linear:START:STEPS"),
        (["train", "--anneal", "cyclical:5000:0.5"], "cycles"),
        (["train", "--objective", "free-bits"], "needs free_bits"),
        (["train", "--free-bits", "0.5"], "needs objective 'free-bits'"),
        (["train", "--lam", "2"], "needs objective 'cs'"),
        (["train", "--objective", "kl"], "--objective"),
        (["train", "--lam", "-1", "--objective", "cs"], "--lam"),
        (["diagnose", f"{tmp}/none"], "no such run folder"),
        (["diagnose", f"{tmp}/notrun"], "not a dgm-pyro run folder"),
        (["diagnose", str(run_dir), "--samples", "0"], "--samples"),
        (["diagnose", str(run_dir), "--particles", "-1"], "--particles"),
        (["train", "--decoder-dropout", "0.3"], "needs decoder 'autoregressive'"),
        (["train", "--dataset", "digits-q2", "--arch", "conv"], "--arch conv needs images whose x is the whole image"),
        (["train", "--dataset", "linear-gaussian", "--arch", "conv"], "image shape None"),
        (["train", "--arch", "conv", "--decoder", "autoregressive"], "--arch conv has its own decoder"),
        (["train", "--arch", "resnet"], "--arch"),
        (["train", "--dataset", "digits-q2", "--decoder", "pixelcnn"], "--decoder pixelcnn needs images"),
        (["train", "--pixelcnn-layers", "3"], "need decoder 'pixelcnn'"),
        (["train", "--pixelcnn-conditioning", "spatial"], "need decoder 'pixelcnn'"),
        (["train", "--pixelcnn-conditioning", "local", "--decoder", "pixelcnn"], "--pixelcnn-conditioning"),
        (["train", "--dataset", f"npz:{tmp}/img65.npz", "--batch-size", "4", "--decoder", "pixelcnn",
          "--pixelcnn-conditioning", "spatial"],
         "--pixelcnn-conditioning spatial needs images whose x is the whole image, with sides multiples of 4"),
        (["train", "--no-decoder-z"], "--no-decoder-z needs decoder"),
        (["train", "--arch", "conv", "--decoder", "pixelcnn"], "--decoder pixelcnn does not combine"),
        (["train", "--lr-schedule", "warmup"], "unknown learning-rate schedule 'warmup'"),
        (["train", "--lr-schedule", "exponential:2"], "0 < GAMMA <= 1"),
        (["train", "--dataset", "linear-gaussian", "--decoder", "autoregressive"], "categorical or binary"),
        (["train", "--decoder-dropout", "1"], "--decoder-dropout"),
        (["nonsense"], "No such command"),
        (["train", "nope"], "unknown model 'nope'; registered models: cvae, graph-ssm"),
        (["train", "cvae", "--steps", "3"], "--steps is an option of 'dgm-pyro train graph-ssm'"),
        (["train", "--device", "tpu"], "unknown device 'tpu'"),
        (["evaluate", str(run_dir), "--device", "cuda:x"], "unknown device 'cuda:x'"),
    ] + ([] if torch.cuda.is_available() else [
        (["train", "--device", "cuda"], "device 'cuda' asked for, but"),
        (["evaluate", str(run_dir), "--device", "cuda"], "device 'cuda' asked for, but"),
        (["sample", str(run_dir), "--device", "cuda:0"], "device 'cuda:0' asked for, but"),
        (["diagnose", str(run_dir), "--device", "cuda"], "device 'cuda' asked for, but"),
    ])


def test_bad_inputs_exit_2_one_line_nothing_modified(trained, tmp_path):
    run_dir, _ = trained
    before = _digest(run_dir)
    out = tmp_path / "out"
    for args, needle in _bad_inputs(tmp_path, run_dir):
        if args[0] == "train" and "--out" not in args and "--resume" not in args:
            args = args + ["--out", str(out)]
        r = run(*args)
        assert r.exit_code == 2, (args, r.exit_code, r.output)
        assert "Traceback" not in r.output, args
        assert needle in r.output, (args, r.output)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "Error:"))]
        assert len(errors) == 1, (args, r.stderr)
    assert _digest(run_dir) == before
    assert not out.exists() or not any(out.iterdir())  # no half-made run folder from a refused train


def test_corrupt_run_folder(trained, tmp_path):
    run_dir, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "best.pt").write_bytes(b"garbage")
    r = run("evaluate", bad)
    assert r.exit_code == 2 and "unreadable checkpoint" in r.stderr
    (bad / "config.json").write_text("{")
    r = run("sample", bad)
    assert r.exit_code == 2 and "not valid JSON" in r.stderr


def test_installed_entry_point_subprocess(tmp_path):
    exe = shutil.which("dgm-pyro") or str(Path(sys.executable).parent / "dgm-pyro")
    ok = subprocess.run([exe, "datasets", "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "digits" in json.loads(ok.stdout)
    bad = subprocess.run([exe, "evaluate", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


def test_cli_resume_after_interruption_matches_uninterrupted(tmp_path):
    import torch

    from dgm_pyro.callbacks import OnInterval
    from dgm_pyro.runs import TrainConfig, train_run

    cfg = dict(epochs=3, hidden_dims=[32], latent_dim=4, batch_size=200, eval_particles=20)

    class Stop(Exception):
        pass

    def stop(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_run(TrainConfig(**cfg), tmp_path / "cut", callbacks=[OnInterval(stop)])
    r = run("train", "--resume", tmp_path / "cut", "--json")
    assert r.exit_code == 0, r.output
    full = run("train", "--epochs", "3", "--hidden", "32", "--latent-dim", "4", "--batch-size", "200",
               "--particles", "20", "--out", tmp_path / "full", "--json")
    full_cfg = json.loads((Path(json.loads(full.stdout)["run"]) / "config.json").read_text())
    assert full_cfg == json.loads((tmp_path / "cut" / "config.json").read_text())
    a = torch.load(Path(json.loads(full.stdout)["run"]) / "best.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(r.stdout)["test"] == {**json.loads(full.stdout)["test"], "run": str(tmp_path / "cut"),
                                            "file": str(tmp_path / "cut" / "evaluation.json")}


def test_train_with_particles_0_skips_the_final_evaluation(tmp_path):
    r = run("train", "--out", tmp_path, "--json", *TINY[:-4], "--particles", "0", "--batch-size", "200")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert "test" not in info and not (Path(info["run"]) / "evaluation.json").exists()
    r = run("evaluate", info["run"], "--particles", "20", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["num_particles"] == 20 and (Path(info["run"]) / "evaluation.json").exists()


@pytest.mark.parametrize("options", [["--objective", "meanfield"], ["--objective", "cs", "--lam", "0.5"],
                                     ["--objective", "free-bits", "--free-bits", "0.3", "--anneal", "linear:0:5"],
                                     ["--anneal", "cyclical:2:0.5"], ["--anneal", "constant:0.5"],
                                     ["--objective", "dreg", "--particles-train", "3"]])
def test_train_with_each_objective_then_evaluate(tmp_path, options):
    r = run("train", "--out", tmp_path, "--json", *TINY, *options)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    config = json.loads((Path(info["run"]) / "config.json").read_text())
    flags = dict(zip(options[::2], options[1::2]))
    assert config["objective"] == flags.get("--objective", "meanfield")
    assert config["anneal"] == flags.get("--anneal", "none")
    assert info["train"]["objective"].startswith({"meanfield": "TraceMeanField_ELBO", "cs": "CSELBO(lam=0.5",
                                                   "free-bits": "FreeBitsELBO(lam=0.3",
                                                   "dreg": "IWELBO(num_particles=3, estimator='dreg')"}.get(
        config["objective"], "Trace_ELBO"))
    # importance-weighted runs select best.pt by the validation log-likelihood, the others by the ELBO
    assert ("best_valid_log_likelihood" if config["objective"] == "dreg" else "best_valid_elbo") in info["train"]
    header = (Path(info["run"]) / "metrics.csv").read_text().splitlines()[0]
    assert "beta_mean" in header and "beta_last" in header
    r = run("evaluate", info["run"], "--particles", "30", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["num_particles"] == 30 and ev["num_datapoints"] == 447
    saved = json.loads((Path(info["run"]) / "evaluation.json").read_text())
    per = saved.pop("per_datapoint")  # the file keeps one value per test image; the printed JSON the summary
    assert saved == ev and "per_datapoint" not in ev
    assert len(per["log_evidence"]) == len(per["khat"]) == 447
    assert sum(per["log_evidence"]) / 447 == pytest.approx(ev["log_evidence"], rel=1e-12)
    assert per["khat"] == [None] * 447 and ev["khat_max"] is None  # k-hat needs K >= 100: none, not NaN


def test_diagnose_json_text_and_files(trained, tmp_path):
    src, _ = trained
    path = tmp_path / "copy"
    shutil.copytree(src, path)  # diagnose writes into the run folder; keep the shared fixture untouched
    r = run("diagnose", path, "--particles", "50", "--samples", "3", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["num_datapoints"] == 447 and rep["latent_dim"] == 4 and rep["conditional"] is True
    assert rep["kl"] == pytest.approx(sum(rep["kl_per_dimension"]))
    assert rep["mutual_information_minibatch"] <= np.log(100) + 1e-9
    assert rep["nll"] > 0 and 0 <= rep["active_units"] <= 4
    assert 0 <= rep["wide_posteriors"] <= 1 and 0 <= rep["kl_median"] <= max(rep["kl"] * 447, 1e-9)
    assert rep["extra"]["files"] == [str(path / "diagnostics.json"), str(path / "plots" / "kl_per_dimension.png")]
    assert json.loads((path / "diagnostics.json").read_text()) == rep
    assert (path / "plots" / "kl_per_dimension.png").read_bytes()[:4] == b"\x89PNG"
    r = run("diagnose", path, "--particles", "0", "--samples", "2", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "active units" in r.stdout and "conditional on the label" in r.stdout
    assert "KL  median over the datapoints" in r.stdout and "% of the datapoints" in r.stdout
    assert not (path / "plots" / "collapse_over_training.png").exists()  # not tracked in training
    assert "kl_per_dimension.png" in r.stdout and "collapse_over_training" not in r.stdout


def test_track_collapse_and_aggressive_from_the_cli(tmp_path):
    r = run("train", "--out", tmp_path, "--json", *TINY, "--aggressive", "--decoder", "autoregressive",
            "--dataset", "digits-unconditional")
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    header = (path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"valid_kl", "valid_mi", "valid_au", "aggressive"} <= set(header)
    r = run("diagnose", path, "--particles", "10", "--samples", "2")
    assert r.exit_code == 0, r.output
    assert "unconditional" in r.stdout and "collapse_over_training.png" in r.stdout
    assert (path / "plots" / "collapse_over_training.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_any_run_folder_quadrant_and_linear_gaussian(tmp_path):
    for dataset in ("digits-q2", "linear-gaussian"):
        r = run("train", "--out", tmp_path / dataset, "--json", *TINY, "--dataset", dataset)
        assert r.exit_code == 0, r.output
        path = json.loads(r.stdout)["run"]
        r = run("diagnose", path, "--particles", "10", "--samples", "2", "--json")
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["conditional"] is False and rep["mutual_information"] <= np.log(rep["num_datapoints"]) + 1e-9


def test_evaluate_with_annealed_importance_sampling(trained, tmp_path):
    """`evaluate --method ais` reports the AIS estimate, labelled as AIS in text and JSON; with 4 chains x 20
    temperatures on a 2-epoch model its mean over the validation split is above the encoder's ELBO there (AIS
    from the encoder is a tighter bound; measured: -178.09 against -178.65, importance sampling -178.34)."""
    path = tmp_path / "copy"
    shutil.copytree(trained[0], path)  # evaluate writes evaluation.json; keep the shared fixture untouched
    r = run("evaluate", path, "--method", "ais", "--ais-steps", "20", "--particles", "4", "--split", "valid",
            "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["method"] == "ais" and ev["ais_steps"] == 20 and ev["num_particles"] == 4
    # AIS from the encoder is a tighter bound than the encoder's ELBO, measured here on the same split
    r = run("evaluate", path, "--particles", "4", "--split", "valid", "--json")
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)
    assert plain["elbo"] < ev["log_evidence"] < 0, (plain["elbo"], ev["log_evidence"])
    r = run("evaluate", path, "--method", "ais", "--ais-steps", "2", "--particles", "2", "--split", "valid")
    assert r.exit_code == 0 and "annealed (AIS)" in r.stdout


def test_evaluate_with_adaptive_importance_sampling(trained, tmp_path):
    """`evaluate --method adaptive` labels its estimate, records the rounds and reports the encoder's own ELBO
    (round 0 draws what `--method is` draws with the same seed); one particle is refused with one line, exit 2,
    and the evaluation file is left as it was."""
    path = tmp_path / "copy"
    shutil.copytree(trained[0], path)
    r = run("evaluate", path, "--particles", "200", "--split", "valid", "--json")
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)
    r = run("evaluate", path, "--method", "adaptive", "--rounds", "2", "--particles", "200", "--split", "valid",
            "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["method"] == "adaptive" and ev["rounds"] == 2 and ev["num_particles"] == 200
    assert ev["elbo"] == pytest.approx(plain["elbo"], abs=1e-9)
    assert abs(ev["log_evidence"] - plain["log_evidence"]) < 2.0
    before = (path / "evaluation.json").read_bytes()
    r = run("evaluate", path, "--method", "adaptive", "--particles", "1", "--split", "valid")
    assert r.exit_code == 2 and "num_particles >= 2" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) <= 2  # the progress line and the error
    assert (path / "evaluation.json").read_bytes() == before
    r = run("evaluate", path, "--method", "adaptive", "--rounds", "1", "--particles", "50", "--split", "valid")
    assert r.exit_code == 0 and "adaptive importance sampling" in r.stdout


def test_resume_of_a_finished_run_changes_nothing_and_more_epochs_extend_it(trained, tmp_path):
    """A finished run says so and is left as it is; ``--epochs`` raises its length, and the extended run is the
    run trained for that many epochs from the start (bit for bit on CPU)."""
    import torch

    run_dir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = _digest(copy)
    r = run("train", "--resume", copy)
    assert r.exit_code == 0 and "training is complete (2 epochs); nothing was changed" in r.stdout
    assert "--epochs N" in r.stdout and _digest(copy) == before
    # killed during the final evaluation (no evaluation.json): resume trains nothing and evaluates
    (copy / "evaluation.json").unlink()
    r = run("train", "--resume", copy, "--json")
    assert r.exit_code == 0 and (copy / "evaluation.json").is_file()
    assert {k: v for k, v in _digest(copy).items() if k != "evaluation.json"} == \
        {k: v for k, v in before.items() if k != "evaluation.json"}
    old_eval = (copy / "evaluation.json").read_text()
    r = run("train", "--resume", copy, "--epochs", "3", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads((copy / "config.json").read_text())["epochs"] == 3
    # the evaluation of the 2-epoch weights is kept under its own name; evaluation.json is the new one
    assert (copy / "evaluation-epochs2.json").read_text() == old_eval
    saved = json.loads((copy / "evaluation.json").read_text())
    assert {k: v for k, v in saved.items() if k != "per_datapoint"} == json.loads(r.stdout)["test"]
    full = run("train", *TINY[:1], "3", *TINY[2:], "--out", tmp_path / "full", "--json")
    full_dir = Path(json.loads(full.stdout)["run"])
    a = torch.load(full_dir / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(copy / "checkpoint.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (copy / "metrics.csv").read_text().splitlines()[-1].split(",")[:2] == \
        (full_dir / "metrics.csv").read_text().splitlines()[-1].split(",")[:2]


def test_extending_a_cyclically_annealed_run_is_refused(tmp_path):
    r = run("train", "--out", tmp_path, "--json", *TINY, "--anneal", "cyclical:2:0.5")
    run_dir = Path(json.loads(r.stdout)["run"])
    before = _digest(run_dir)
    r = run("train", "--resume", run_dir, "--epochs", "4")
    assert r.exit_code == 2 and "spans the run's whole length" in r.stderr and _digest(run_dir) == before


def test_an_evaluation_with_more_particles_is_kept(trained, tmp_path):
    run_dir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "evaluation.json").unlink()  # the shared run has been evaluated by other tests
    assert run("evaluate", copy, "--particles", "40").exit_code == 0
    kept = (copy / "evaluation.json").read_text()
    r = run("evaluate", copy, "--particles", "10")
    assert r.exit_code == 0
    assert (f"warning: {copy / 'evaluation.json'} holds an evaluation with 40 particles; kept it, and wrote this one "
            "(10 particles) to evaluation-test-adaptive-K10.json") in r.stderr
    assert (copy / "evaluation.json").read_text() == kept
    assert json.loads((copy / "evaluation-test-adaptive-K10.json").read_text())["num_particles"] == 10
    assert f"wrote {copy / 'evaluation-test-adaptive-K10.json'} (" in r.stdout
    # another split is another evaluation: kept beside it too
    assert run("evaluate", copy, "--particles", "10", "--split", "valid").exit_code == 0
    assert (copy / "evaluation.json").read_text() == kept
    assert json.loads((copy / "evaluation-valid-adaptive-K10.json").read_text())["split"] == "valid"


def test_progress_lines_without_a_terminal_and_quiet(tmp_path):
    """Not a terminal (CliRunner): the data summary, the phases and one line per epoch with an ETA on stderr,
    in that order; ``--quiet`` silences them; stdout keeps the results and lists the files with sizes."""
    r = run("train", "--out", tmp_path / "a", *TINY)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0].startswith("data: digits, categorical likelihood, condition label; 1000 train")
    assert lines[1] == "training cvae: up to 2 epochs on cpu"
    assert lines[2].startswith("train: epoch 1/2, loss ") and "valid elbo" in lines[2] and "ETA" in lines[2]
    assert lines[3].startswith("train: epoch 2/2, loss ")
    assert lines[4] == "evaluating: adaptive importance sampling log-likelihood of the test split, 20 particles"
    assert "wrote " in r.stdout and "/best.pt (" in r.stdout and "kB)" in r.stdout
    r = run("train", "--out", tmp_path / "b", *TINY, "--quiet")
    assert r.exit_code == 0 and r.stderr == ""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_threads_option_sets_and_records_torch_threads(tmp_path, threads):
    import torch

    before = torch.get_num_threads()
    try:
        r = run("train", "--out", tmp_path, "--json", *TINY, "--threads", threads)
        assert r.exit_code == 0, r.output
        env = json.loads((Path(json.loads(r.stdout)["run"]) / "environment.json").read_text())
        assert env["torch_threads"] == int(threads) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_default_threads_is_one_unless_omp_num_threads_is_set(monkeypatch):
    import torch

    from dgm_pyro.device import TORCH_DEFAULT_THREADS, set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(None) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_threads(None) == 3 == torch.get_num_threads()
        assert set_threads(0) == TORCH_DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)


def test_the_command_keeps_freed_memory_and_no_number_changes(monkeypatch):
    """``dgm-pyro`` (cli.main.main) asks glibc's malloc to keep freed memory for reuse; the setting applies
    on glibc Linux, is refused elsewhere, and changes no result (the same seeded computation before and
    after gives the same bits)."""
    import platform

    import dgm_pyro.device
    from cli.main import main

    def compute() -> torch.Tensor:
        torch.manual_seed(0)
        x = torch.randn(600, 600)
        return (x @ x).tanh().sum()

    before = compute()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert dgm_pyro.device.keep_freed_memory() == glibc
    assert torch.equal(before, compute())
    calls = []
    monkeypatch.setattr(dgm_pyro.device, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and calls == [1]


def test_file_sizes_are_printed_in_decimal_units(tmp_path):
    from cli.common import size

    sizes = {"a": 999, "b": 1500, "c": 74_000_000, "d": 2_500_000_000_000}
    for name, n in sizes.items():
        with open(tmp_path / name, "wb") as f:
            f.truncate(n)
    assert [size(tmp_path / n) for n in sizes] == ["999 B", "1.5 kB", "74.0 MB", "2500.0 GB"]


def test_the_cvae_can_read_the_trained_baselines_guess(tmp_path):
    """--baseline-guess (Sohn et al.; Pyro's tutorial): the NN baseline trains first into baseline/, its weights are
    copied into the CVAE's condition network and stay frozen through the CVAE's training, and the CVAE reads
    [y, E[x|y]]; it needs quadrant data and the baseline."""
    from dgm_pyro.runs import load_run

    r = run("train", "--dataset", "digits-q2", "--baseline-guess", "--out", tmp_path, "--name", "g", *TINY, "--json")
    assert r.exit_code == 0, r.output
    path = tmp_path / "g"
    base = torch.load(path / "baseline" / "best.pt", weights_only=True)["model_state"]
    for name in ("checkpoint.pt", "best.pt"):
        cvae = torch.load(path / name, weights_only=True)["model_state"]
        for k, v in base.items():
            assert torch.equal(cvae[f"condition_net.baseline.{k}"], v), (name, k)
    run_ = load_run(path)
    y = run_.dataset.splits["test"][1][:5]
    with torch.no_grad():
        feats = run_.module.features(y)
        guess = run_.baseline.sample(y, mean=True)
    assert feats.shape == (5, 64) and torch.equal(feats[:, :32], y) and torch.allclose(feats[:, 32:], guess)
    assert json.loads(r.stdout)["test"]["baseline_ncll"] > 0
    r = run("train", "--dataset", "digits", "--baseline-guess", "--out", tmp_path / "no", *TINY)
    assert r.exit_code == 2 and "needs quadrant" not in r.stderr and "quadrant completion" in r.stderr
    assert not (tmp_path / "no").exists()
    r = run("train", "--dataset", "digits-q2", "--baseline-guess", "--no-baseline", "--out", tmp_path / "nb", *TINY)
    assert r.exit_code == 2 and "baseline_guess needs the NN baseline" in r.stderr


def test_evaluate_estimates_the_unreliable_datapoints_again(trained):
    """With the adaptive method, the datapoints whose k-hat exceeds 0.7 are estimated again with more rounds: the
    others keep their values, the refined ones are those datapoints exactly, and fewer stay above 0.7."""
    from dgm_pyro.runs import load_run

    run_dir, _ = trained
    loaded = load_run(run_dir)
    once = loaded.kind.evaluate(loaded, particles=100, seed=1, write=False, refine_rounds=0)
    twice = loaded.kind.evaluate(loaded, particles=100, seed=1, write=False, refine_rounds=8)
    k0 = torch.tensor([float("nan") if k is None else k for k in once["per_datapoint"]["khat"]])
    bad = (k0 > 0.7).nonzero().squeeze(1).tolist()
    assert 0 < len(bad) < k0.numel() and twice["per_datapoint"]["refined"] == bad
    assert twice["refined"] == {"rounds": 8, "datapoints": len(bad)} and once["refined"]["datapoints"] == 0
    same = [i for i in range(k0.numel()) if i not in set(bad)]
    a, b = (torch.tensor(e["per_datapoint"]["log_evidence"]) for e in (once, twice))
    assert torch.equal(a[same], b[same]) and not torch.equal(a[bad], b[bad])
    assert twice["khat_frac_above_0.7"] < once["khat_frac_above_0.7"]
    r = run("evaluate", run_dir, "--refine-rounds", "-1")
    assert r.exit_code == 2 and "--refine-rounds" in r.output
