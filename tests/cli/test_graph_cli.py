"""`dgm-pyro train graph-ssm` and `dgm-pyro forecast`: the run folder, the NetCDF layout, the scores, resume,
and bad input (one line, exit code 2, nothing modified)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.callbacks import OnInterval
from dgm_pyro.runs import GraphConfig, GraphSSMKind, build_graph_model, load_graph_sequence

TINY = ["--steps", "4", "--checkpoint-every", "2", "--baseline-steps", "2", "--test-steps", "3", "--hidden", "16"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    r = run("train", "graph-ssm", "--out", root, "--json", *TINY)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"])


def test_train_writes_a_graph_run(graph_run):
    cfg = json.loads((graph_run / "config.json").read_text())
    assert cfg["model"] == "graph-ssm" and cfg["steps"] == 4 and cfg["hidden"] == 16 and cfg["lr"] == 0.01
    rows = (graph_run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,teacher_forcing,seconds,train_seconds" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    for name in ("checkpoint.pt", "baseline/checkpoint.pt", "baseline/metrics.csv", "plots/training.png"):
        assert (graph_run / name).is_file()


def test_forecast_netcdf_and_scores(graph_run, tmp_path):
    import arviz as az

    out = tmp_path / "f.nc"
    r = run("forecast", graph_run, "--horizon", 3, "--chains", 2, "--samples", 5, "--out", out, "--json",
            "--stationarity", 30)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    idata = az.from_netcdf(out)
    pp = idata.posterior_predictive
    assert pp["X"].dims == ("chain", "draw", "horizon", "node", "feature") and pp["X"].shape == (2, 5, 3, 200, 4)
    assert pp["A"].dims == ("chain", "draw", "horizon", "node", "node_to") and pp["A"].shape == (2, 5, 3, 200, 200)
    assert pp["edge_prob"].shape == (2, 5, 3, 200, 200)
    assert set(pp["A"].values.flatten().tolist()) <= {0, 1}
    obs = idata.observed_data
    assert obs["X"].shape == (3, 200, 4) and obs["A"].shape == (3, 200, 200) and obs["X_history"].shape == (27, 200, 4)
    assert set(res["metrics"]) == {"GraphSSM", "persistence", "historical mean", "GCN+GRU", "oracle"}
    rows = res["metrics"]["GraphSSM"]
    assert [row["h"] for row in rows] == [1, 2, 3]
    assert all(0 <= row["auc"] <= 1 and row["crps"] > 0 and row["log_lik"] < 0 for row in rows)
    # persistence scores its own last snapshot: every pair new to it is predicted 0, so its new-link AUC is 0.5
    assert all(row["auc_new"] == 0.5 for row in res["metrics"]["persistence"])
    st = res["stationarity"]
    assert st["chains"] == 4 and st["kept_steps"] == 15 and st["edge_density"]["rhat"] > 0
    # every output goes where --out says: the scores beside the NetCDF, the plots in its folder's plots/
    assert json.loads((tmp_path / "f.json").read_text())["metrics"] == res["metrics"]
    assert (tmp_path / "plots" / "f_edges.png").is_file() and not (graph_run / "forecast.json").exists()
    assert res["files"][0] == str(out) and res["files"][-1] == str(tmp_path / "f.json")
    assert res["not_scored"] == {} and res["notes"] == [] and res["unfinished"] == []
    # the same seed gives the same numbers
    again = json.loads(run("forecast", graph_run, "--horizon", 3, "--chains", 2, "--samples", 5, "--out", out,
                           "--json", "--no-plots").stdout)
    assert again["metrics"] == res["metrics"]


def test_forecast_past_the_held_out_steps(graph_run, tmp_path):
    r = run("forecast", graph_run, "--horizon", 5, "--samples", 4, "--out", tmp_path / "g.nc", "--no-plots")
    assert r.exit_code == 0, r.output
    assert "truth for h <= 3" in r.output
    # 4 draws: the coverage columns are NaN, and the output says why; every file written is listed with its size
    assert "note: coverage is NaN: intervals need at least 10 draws, this forecast has 4" in r.stdout
    assert f"wrote {tmp_path / 'g.nc'} (" in r.stdout and f"wrote {tmp_path / 'g.json'} (" in r.stdout
    import arviz as az

    idata = az.from_netcdf(tmp_path / "g.nc")
    assert "X" not in idata.observed_data and idata.posterior_predictive["X"].shape[2] == 5


def test_forecast_of_an_unfinished_run_warns_and_says_why_a_row_is_missing(tmp_path):
    from dgm_pyro.runs import train_run

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    cfg = GraphConfig(steps=4, checkpoint_every=2, baseline_steps=2, test_steps=3, hidden=8).validate()
    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "cut", callbacks=[OnInterval(stop)])
    r = run("forecast", tmp_path / "cut", "--horizon", 1, "--samples", 10, "--no-plots")
    assert r.exit_code == 0, r.output
    assert (f"warning: {tmp_path / 'cut'}: training is not finished (training is at step 2 of 4; the GCN+GRU "
            "baseline has no checkpoint yet); forecasting from its last checkpoint") in r.stderr
    assert f"GCN+GRU: no row; its training has not written {tmp_path / 'cut' / 'baseline' / 'checkpoint.pt'} yet" \
        in r.stdout
    assert (tmp_path / "cut" / "forecast.nc").is_file() and (tmp_path / "cut" / "forecast.json").is_file()
    # resuming finishes it (model and baseline); a second resume says it is complete and changes nothing
    assert run("train", "--resume", tmp_path / "cut", "--json").exit_code == 0
    before = _digest(tmp_path / "cut")
    r = run("train", "--resume", tmp_path / "cut")
    assert r.exit_code == 0 and "training is complete (4 steps); nothing was changed" in r.stdout
    assert _digest(tmp_path / "cut") == before


def test_resume_reproduces_uninterrupted_graph_run(tmp_path):
    cfg = GraphConfig(steps=6, checkpoint_every=2, baseline_steps=0, hidden=8, latent_dim=3,
                      scheduled_sampling="linear:4").validate()
    history, _ = load_graph_sequence(cfg)
    args = (history.x[:6], history.edges[:6])
    import pyro

    pyro.set_rng_seed(cfg.seed)
    whole = build_graph_model(cfg, history)
    GraphSSMKind().fit(cfg, args, whole, tmp_path / "a")

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 4:
            raise Crash

    pyro.set_rng_seed(cfg.seed)
    first = build_graph_model(cfg, history)
    with pytest.raises(Crash):
        GraphSSMKind().fit(cfg, args, first, tmp_path / "b", callbacks=[OnInterval(crash)])
    torch.manual_seed(123)  # a different state in between must not matter
    resumed = build_graph_model(cfg, history)
    GraphSSMKind().fit(cfg, args, resumed, tmp_path / "b", resume=True)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:] != []


def test_non_finite_loss_stops_with_one_line(tmp_path):
    cfg = GraphConfig(steps=2, checkpoint_every=1, baseline_steps=0, hidden=8).validate()
    history, _ = load_graph_sequence(cfg)
    m = build_graph_model(cfg, history)
    m.edge_bias.data.fill_(float("nan"))
    with pytest.raises(DgmPyroError, match="non-finite at step 1.*no checkpoint was written yet"):
        GraphSSMKind().fit(cfg, (history.x[:4], history.edges[:4]), m, tmp_path / "nan")


def _bad_cases(graph_run, tmp_path):
    cvae_dir = tmp_path / "cvae-run"
    cvae_dir.mkdir()
    (cvae_dir / "config.json").write_text(json.dumps({"model": "cvae"}))
    return [
        (["forecast", graph_run, "--horizon", 0], "--horizon must be >= 1"),
        (["forecast", graph_run, "--horizon", -3], "--horizon must be >= 1"),
        (["forecast", graph_run, "--horizon", 2, "--out", tmp_path / "f.txt"], "must end in .nc"),
        (["forecast", graph_run, "--horizon", 2, "--out", tmp_path / "nodir" / "f.nc"], "no such directory"),
        (["forecast", graph_run, "--horizon", 2, "--stationarity", 5], "at least 20 steps"),
        (["forecast", tmp_path / "nothing", "--horizon", 2], "no such run folder"),
        (["forecast", cvae_dir, "--horizon", 2], "a cvae run has no 'forecast'"),
        (["evaluate", graph_run], "a graph-ssm run"),
        (["sample", graph_run], "a graph-ssm run"),
        (["diagnose", graph_run], "a graph-ssm run"),
        (["train", "graph-ssm", "--epochs", 3, "--out", tmp_path], "--epochs is an option of 'dgm-pyro train cvae'"),
        (["train", "--steps", 3, "--out", tmp_path], "--steps is an option of 'dgm-pyro train graph-ssm'"),
        (["train", "graph-ssm", "--dataset", "csv:" + str(tmp_path / "none"), "--out", tmp_path], "no such folder"),
        (["train", "graph-ssm", "--dataset", "digits", "--out", tmp_path], "'dgm-pyro train cvae --dataset digits'"),
        (["train", "graph-ssm", "--dataset", "mnist", "--out", tmp_path], "unknown graph dataset"),
        (["train", "graph-ssm", "--scheduled-sampling", "cosine:3", "--out", tmp_path], "scheduled-sampling"),
        (["train", "graph-ssm", "--test-steps", 40, "--out", tmp_path], "test_steps must be between"),
        (["train", "graph-ssm", "--hidden", "64,64", "--out", tmp_path], "--hidden"),
        (["train", "graph-ssm", "--resume", graph_run, "--lr", 0.1], "drop --lr"),
        (["forecast", graph_run, "--horizon", 1, "--out", graph_run / "environment.nc"],
         "would overwrite the run's environment.json"),
        (["train", "graph-ssm", "--resume", graph_run, "--steps", 3], "has trained 4 steps already"),
    ]


def test_bad_input_one_line_exit_2_nothing_modified(graph_run, tmp_path):
    before = _digest(graph_run)
    for args, message in _bad_cases(graph_run, tmp_path):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
        assert "Traceback" not in r.output
        err = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(err) == 1, (args, r.output)
    assert _digest(graph_run) == before
    assert not any(p.name.startswith("graph-ssm-") for p in tmp_path.iterdir())


def test_installed_entry_point_refuses_horizon_zero(graph_run):
    exe = Path(sys.executable).parent / "dgm-pyro"
    p = subprocess.run([str(exe), "forecast", str(graph_run), "--horizon", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "error: --horizon must be >= 1, got 0" and p.stdout == ""


def _contacts(folder: Path, time_column: bool) -> Path:
    """12 nodes over 10 snapshots: random contacts, a constant 'age' per node and an 'activity' that changes."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir()
    rows = ["src,dst,time"] + [f"{u},{v},{t}" for t in range(10) for u, v in rng.integers(0, 12, (15, 2)) if u != v]
    (folder / "edges.csv").write_text("\n".join(rows) + "\n")
    ages = rng.integers(20, 60, 12)
    if time_column:
        nodes = ["node,time,age,activity"] + [f"{v},{t},{ages[v]},{rng.normal():.3f}" for v in range(12)
                                              for t in range(10)]
    else:
        nodes = ["node,age"] + [f"{v},{ages[v]}" for v in range(12)]
    (folder / "nodes.csv").write_text("\n".join(nodes) + "\n")
    return folder


def test_static_features_are_conditioned_on_not_forecast(tmp_path):
    """'age' is constant: declared static it is repeated exactly in every forecast draw (CRPS 0, as persistence)
    while 'activity' is forecast; left dynamic (--static-features none) it is forecast and drifts."""
    import arviz as az

    data = f"csv:{_contacts(tmp_path / 'g', time_column=True)}"
    common = ["--dataset", data, "--test-steps", 2, "--steps", 4, "--checkpoint-every", 2, "--baseline-steps", 0,
              "--hidden", 8, "--json"]
    for static in ("age", "none"):
        r = run("train", "graph-ssm", "--out", tmp_path / static, "--static-features", static, *common)
        assert r.exit_code == 0, r.output
        run_dir = Path(json.loads(r.stdout)["run"])
        f = run("forecast", run_dir, "--horizon", 2, "--samples", 20, "--json", "--no-plots")
        assert f.exit_code == 0, f.output
        idata = az.from_netcdf(run_dir / "forecast.nc")
        assert list(idata.posterior_predictive["X"].coords["feature"].values) == ["age", "activity"]
        age = idata.posterior_predictive["X"].sel(feature="age").values
        truth = idata.observed_data["X"].sel(feature="age").values
        exact = bool((age == truth[None, None]).all())
        assert exact == (static == "age")
        assert idata.attrs["static_features"] == ("age" if static == "age" else "")
    # without a time column nodes.csv's features are static by default ("auto")
    r = run("train", "graph-ssm", "--out", tmp_path / "auto", *common[:1],
            f"csv:{_contacts(tmp_path / 'h', time_column=False)}", *common[2:])
    assert r.exit_code == 0, r.output
    from dgm_pyro.runs import load_run

    assert load_run(json.loads(r.stdout)["run"]).module.static_mask.tolist() == [True]
    bad = run("train", "graph-ssm", "--out", tmp_path / "bad", "--static-features", "activity", *common)
    assert bad.exit_code == 2 and "feature 'activity' changes over time for 12 node(s)" in bad.stderr
    bad = run("train", "graph-ssm", "--out", tmp_path / "bad", "--static-features", "height", *common)
    assert bad.exit_code == 2 and "no feature named 'height'; the features are age, activity" in bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
