"""`dgm-pyro train graph-ssm` and `dgm-pyro forecast`: the run folder, the NetCDF layout, the scores, resume,
and bad input (one line, exit code 2, nothing modified)."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.callbacks import OnInterval
from dgm_pyro.runs import GraphConfig, GraphSSMKind, build_graph_model, load_graph_sequence

TINY = ["--steps", "4", "--checkpoint-every", "2", "--baseline-steps", "2", "--test-steps", "3", "--hidden", "16"]


#: the link-prediction heuristics every forecast and backtest table has beside the baselines
HEURISTICS = ["EWMA", "EdgeBank", "common neighbours", "Adamic-Adar", "preferential attachment", "Katz"]

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
    assert pp["edge_prob"].shape == (2, 5, 3, 200, 200) and pp["edge_prob"].dtype == np.float16  # half the file
    assert pp["A"].dtype == np.int8 and 0 <= float(pp["edge_prob"].min()) and float(pp["edge_prob"].max()) <= 1
    assert set(pp["A"].values.flatten().tolist()) <= {0, 1}
    obs = idata.observed_data
    assert obs["X"].shape == (3, 200, 4) and obs["A"].shape == (3, 200, 200) and obs["X_history"].shape == (27, 200, 4)
    assert set(res["metrics"]) == {"GraphSSM", "persistence", "historical mean", "GCN+GRU", *HEURISTICS, "oracle"}
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
    assert res["not_scored"] == {} and res["unfinished"] == []
    # point forecasts have no interval: their coverage columns are NaN, and a note says why
    assert res["notes"] == ["coverage (cov50, cov90, PIT50, PIT90) is NaN for persistence, GCN+GRU: "
                            "point forecasts have no predictive interval",
                            "the link heuristics (EWMA, EdgeBank, common neighbours, Adamic-Adar, preferential "
                            "attachment, Katz) forecast edges only: their feature columns are NaN; common neighbours, "
                            "Adamic-Adar, preferential attachment, Katz give ranking scores, not probabilities: only "
                            "AUC and AP apply"]
    assert all(row["crps"] is None and row["brier"] is None and 0 <= row["auc"] <= 1
               for row in res["metrics"]["Katz"]) and res["metrics"]["EWMA"][0]["brier"] > 0
    assert all(row["coverage_50"] is None for row in res["metrics"]["persistence"])
    # the same seed gives the same numbers
    again = json.loads(run("forecast", graph_run, "--horizon", 3, "--chains", 2, "--samples", 5, "--out", out,
                           "--json", "--no-plots").stdout)
    assert again["metrics"] == res["metrics"]


def test_forecast_intervals_compare_the_model_with_every_forecaster(graph_run, tmp_path):
    r = run("forecast", graph_run, "--horizon", 3, "--samples", 5, "--out", tmp_path / "f.nc", "--no-plots",
            "--json", "--intervals", 50)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    comparisons = res["comparisons"]
    assert list(comparisons) == ["h1", "h2", "h3"]
    metrics = res["metrics"]
    for h, step in enumerate(comparisons.values()):
        assert set(step) == set(metrics) - {"GraphSSM"}
        for name, c in step.items():
            # the point difference is the difference of the two rows of the score table
            for m in ("auc", "ap"):
                assert c[m]["difference"] == pytest.approx(metrics["GraphSSM"][h][m] - metrics[name][h][m], abs=1e-9)
                assert c[m]["low"] <= c[m]["high"]
            assert c["pairs"] == 200 * 199 // 2
    text = run("forecast", graph_run, "--horizon", 3, "--samples", 5, "--out", tmp_path / "g.nc", "--no-plots",
               "--intervals", 50)
    assert text.exit_code == 0 and "GraphSSM minus the strongest other forecaster" in text.output
    assert re.search(r"h1 \(\d+ edges\): AUC -?[0-9.]+ \[-?[0-9.]+, -?[0-9.]+\] vs ", text.output)
    bad = run("forecast", graph_run, "--horizon", 3, "--samples", 5, "--out", tmp_path / "h.nc", "--edges", "sparse",
              "--intervals", 50)
    assert bad.exit_code == 2 and "--edges sparse" in bad.output and not (tmp_path / "h.nc").exists()


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
        (["forecast", graph_run, "--horizon", 2, "--edges", "sparse", "--stationarity", 30], "rolls out dense graphs"),
        (["forecast", graph_run, "--horizon", 2, "--edges", "sparse", "--negatives", 0], "--negatives"),
        (["forecast", graph_run, "--horizon", 2, "--edges", "coo"], "--edges"),
        (["forecast", tmp_path / "nothing", "--horizon", 2], "no such run folder"),
        (["forecast", cvae_dir, "--horizon", 2], "a cvae run has no 'forecast'"),
        (["evaluate", graph_run], "a graph-ssm run"),
        (["sample", graph_run], "a graph-ssm run"),
        (["diagnose", graph_run], "a graph-ssm run"),
        (["train", "graph-ssm", "--epochs", 3, "--out", tmp_path], "--epochs is an option of 'dgm-pyro train cvae'"),
        (["train", "--steps", 3, "--out", tmp_path], "--steps is an option of 'dgm-pyro train graph-ssm'"),
        (["train", "graph-ssm", "--dataset", "csv:" + str(tmp_path / "none"), "--out", tmp_path], "no such folder"),
        (["train", "graph-ssm", "--dataset", "digits", "--out", tmp_path], "'dgm-pyro train cvae --dataset digits'"),
        (["train", "graph-ssm", "--dataset", "imagenet", "--out", tmp_path], "unknown graph dataset"),
        (["train", "graph-ssm", "--dataset", "mnist", "--out", tmp_path], "not a graph dataset"),
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


def test_sparse_forecast_scores_match_the_dense_ones(graph_run, tmp_path):
    """On the 200-node dsbm: with every non-edge scored (--negatives above their number) the first step's edge
    scores equal the dense forecast's (the same latent draws), and the baselines' at every step; with 4000
    sampled non-edges the estimates stay close. The NetCDF holds the COO draws and the top-k."""
    import arviz as az
    import numpy as np

    args = ["forecast", graph_run, "--horizon", 3, "--samples", 40, "--json", "--no-plots"]
    dense = json.loads(run(*args, "--out", tmp_path / "d.nc").stdout)
    sparse = json.loads(run(*args, "--edges", "sparse", "--top-k", 3, "--out", tmp_path / "s.nc").stdout)
    sampled = json.loads(run(*args, "--edges", "sparse", "--negatives", 4000, "--out", tmp_path / "n.nc").stdout)
    assert dense["edges"] == "dense" and sparse["edges"] == "sparse"
    assert sparse["edge_pairs"]["pairs_per_step"] == [19900] * 3
    keys = ("auc", "ap", "auc_new", "ap_new", "brier", "ece", "density_error", "edge_log_lik", "crps")
    for name, rows in dense["metrics"].items():
        for h, row in enumerate(rows):
            if name == "GraphSSM" and h > 0:  # later steps depend on each path's own drawn edges
                assert abs(sparse["metrics"][name][h]["auc"] - row["auc"]) < 0.02
                continue
            for k in keys:  # the same probabilities up to float rounding (sum(g * h) against g @ h^T), which
                # can swap two near-equal scores in the ranking metrics
                assert sparse["metrics"][name][h][k] == pytest.approx(row[k], abs=1e-5), (name, h, k)
    exact, est = dense["metrics"]["GraphSSM"][0], sampled["metrics"]["GraphSSM"][0]
    assert sampled["edge_pairs"]["pairs_per_step"][0] < 6000
    assert abs(est["auc"] - exact["auc"]) < 0.02 and abs(est["brier"] - exact["brier"]) < 0.1 * exact["brier"]
    assert "log_lik" not in sparse["metrics"]["GraphSSM"][0] and any("log_lik" in n for n in sparse["notes"])
    idata = az.from_netcdf(tmp_path / "s.nc")
    draws, top = idata.edge_draws, idata.edge_top_k
    assert "A" not in idata.posterior_predictive and idata.posterior_predictive["X"].shape == (1, 40, 3, 200, 4)
    assert int(draws["num_edges"].sum()) == draws.sizes["edge"] and draws["num_edges"].shape == (1, 40, 3)
    src, dst = draws["src"].values, draws["dst"].values
    assert (src < dst).all() and set(draws["edge_horizon"].values.tolist()) == {1, 2, 3}
    for d, step in ((0, 1), (7, 3)):
        rows = (draws["edge_draw"].values == d) & (draws["edge_horizon"].values == step)
        assert rows.sum() == int(draws["num_edges"][0, d, step - 1]) and np.diff(np.flatnonzero(rows)).max() == 1
    assert top["dst"].shape == (3, 200, 3) and (top["prob"].values[:, :, :-1] >= top["prob"].values[:, :, 1:]).all()
    assert idata.observed_edges.sizes["edge"] == sum(e.shape[1] for e in load_graph_sequence(
        GraphConfig.from_saved(json.loads((graph_run / "config.json").read_text())))[1].edges[:3])


def test_large_graphs_forecast_sparse_by_default(graph_run, tmp_path, monkeypatch):
    import dgm_pyro.runs.graph_forecast as graph_runs

    monkeypatch.setattr(graph_runs, "FORECAST_MAX_NODES", 100)
    r = run("forecast", graph_run, "--horizon", 1, "--edges", "dense", "--out", tmp_path / "d.nc")
    assert r.exit_code == 2 and "use --edges sparse" in r.output and not (tmp_path / "d.nc").exists()
    r = run("forecast", graph_run, "--horizon", 1, "--samples", 5, "--out", tmp_path / "a.nc", "--json", "--no-plots")
    assert r.exit_code == 0 and json.loads(r.stdout)["edges"] == "sparse"
    res = json.loads(r.stdout)  # above the dense limit the N x N heuristics have no row, and say why
    assert not set(HEURISTICS) & set(res["metrics"])
    assert res["not_scored"]["Katz"] == "the link heuristics score all N x N pairs, up to 100 nodes"
    monkeypatch.setattr(graph_runs, "SPARSE_MAX_EDGES", 1000)
    r = run("forecast", graph_run, "--horizon", 2, "--samples", 5, "--out", tmp_path / "b.nc")
    assert r.exit_code == 2 and "train it longer" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.nc").exists()


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


def test_early_stopping_on_held_out_snapshots(tmp_path, monkeypatch):
    """--valid-steps V trains on the history before its last V snapshots, scores their predictive
    log-likelihood after every interval (the value a fresh forecast of the best weights gives from the same
    seed), keeps the best interval in best.pt (what load_run restores) and stops after --patience intervals
    without improvement; the training random state is left as it was."""
    from dgm_pyro.callbacks import ForecastValidation
    from dgm_pyro.checkpoint import load_checkpoint
    from dgm_pyro.runs import load_run, training_history

    r = run("train", "graph-ssm", "--out", tmp_path / "v", "--json", "--steps", "6", "--checkpoint-every", "2",
            "--baseline-steps", "0", "--test-steps", "3", "--hidden", "16", "--valid-steps", "2")
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    rows = [row.split(",") for row in (path / "metrics.csv").read_text().splitlines()]
    assert rows[0][:5] == ["step", "train_loss", "teacher_forcing", "valid_log_likelihood", "best"]
    scores = [float(row[3]) for row in rows[1:]]
    best = max(range(len(scores)), key=scores.__getitem__)
    ckpt = load_checkpoint(path / "best.pt")
    assert ckpt["trainer_state"]["steps"] == 2 * (best + 1)
    loaded = load_run(path)
    for k, v in loaded.module.state_dict().items():
        assert torch.equal(v, ckpt["model_state"][k]), k
    train_part, held = training_history(loaded.config, loaded.history)
    assert (train_part.num_steps, held.num_steps) == (loaded.history.num_steps - 2, 2)
    torch.manual_seed(loaded.config.seed)
    fc = loaded.module.forecast(train_part.x, train_part.edges, horizon=2, num_samples=20,
                                future=(held.x, held.edges))
    assert float(fc["log_lik"].mean()) == pytest.approx(scores[best], rel=1e-5)

    # patience: scores 3, 5, 4, 4.5 with patience 2 stop after the fourth interval, best the second
    class Trainer:
        data = type("D", (), {"unit": "step"})()
        state = {"stopped": ""}
        improved = False
        module = loaded.module

    cb = ForecastValidation((train_part.x, train_part.edges), (held.x, held.edges), patience=2)
    values = iter([3.0, 5.0, 4.0, 4.5])
    monkeypatch.setattr(type(loaded.module), "forecast",
                        lambda self, *a, **k: {"log_lik": torch.tensor([next(values)])})
    t = Trainer()
    before = torch.random.get_rng_state()
    for step in (2, 4, 6, 8):
        assert not t.state["stopped"]
        cb.on_interval_end(t, {"step": step})
    assert t.state["stopped"] == "early" and cb.state["best_epoch"] == 4 and cb.summary()["best_step"] == 4
    assert torch.equal(torch.random.get_rng_state(), before)


def test_valid_steps_that_leave_too_little_history_are_refused(tmp_path):
    r = run("train", "graph-ssm", "--out", tmp_path / "v", *TINY, "--valid-steps", "500")
    assert r.exit_code == 2 and "leaves fewer than 2" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())


BACKTEST = ["--steps", "4", "--refit-steps", "2", "--checkpoint-every", "2", "--baseline-steps", "2", "--hidden", "16",
            "--samples", "10", "--horizon", "2"]


def test_backtest_rows_refits_and_files(tmp_path):
    """One row per origin, forecaster and h with t0/t1/t2 (pyro.contrib.forecast.backtest's shape); the GraphSSM
    rows are the scores of the model fitted on the snapshots before each origin, reproduced here by hand: the
    first fit from scratch, the refit warm-started from it; the CSV holds the JSON's rows."""
    import csv

    import pyro

    from dgm_pyro.checkpoint import load_checkpoint
    from dgm_pyro.data.graph_files import load_graph_dataset
    from dgm_pyro.metrics import forecast_scores
    from dgm_pyro.runs import GraphConfig, GraphSSMKind, build_graph_model
    from dgm_pyro.runs.graph_ssm import sequence_on

    r = run("backtest", "--origins", "25,20", *BACKTEST, "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    folder = Path(res["files"][0]).parent
    assert res["origins"] == [20, 25] and res["refit"] is True
    rows = res["rows"]
    names = ["GraphSSM", "persistence", "historical mean", "GCN+GRU", *HEURISTICS, "oracle"]
    assert [(x["t1"], x["forecaster"], x["h"]) for x in rows] == [(t, n, h) for t in (20, 25) for n in names
                                                                   for h in (1, 2)]
    assert all(x["t0"] == 0 and x["t2"] == x["t1"] + 2 for x in rows)
    ssm = [x for x in rows if x["forecaster"] == "GraphSSM"]
    assert [x["train_steps"] for x in ssm] == [4, 4, 2, 2] and all(x["refit"] for x in ssm)
    # each forecaster's own training time: the model's and the baseline's apart, none for the others
    assert all(x["train_walltime"] > 0 for x in rows if x["forecaster"] in ("GraphSSM", "GCN+GRU"))
    assert all(x["train_walltime"] is None for x in rows if x["forecaster"] not in ("GraphSSM", "GCN+GRU"))
    with open(folder / "backtest.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert set(res["mean"]) == set(names) and res["mean"]["GraphSSM"][0]["origins"] == 2

    # by hand: fit 4 steps on 0..19, then 2 warm-started steps on 0..24, forecast 25, 26
    config = GraphConfig(steps=4, checkpoint_every=2, baseline_steps=2, hidden=16)
    seq = load_graph_dataset("dsbm", seed=0)
    kind = GraphSSMKind()
    pyro.set_rng_seed(0)
    first = build_graph_model(config, seq.slice(0, 20))
    kind.fit(config, sequence_on(torch.device("cpu"), seq.slice(0, 20)), first, tmp_path / "a")
    pyro.set_rng_seed(0)
    second = build_graph_model(config, seq.slice(0, 25))
    second.load_state_dict(first.state_dict())
    kind.fit(GraphConfig(steps=2, checkpoint_every=2, baseline_steps=2, hidden=16),
             sequence_on(torch.device("cpu"), seq.slice(0, 25)), second, tmp_path / "b")
    saved = load_checkpoint(folder / "origin-25" / "checkpoint.pt")["model_state"]
    for k, v in second.state_dict().items():
        assert torch.equal(v, saved[k]), k
    second.eval()
    pyro.set_rng_seed(0)
    hist, fut = seq.slice(0, 25), seq.slice(25, 27)
    fc = second.forecast(hist.x, hist.edges, horizon=2, num_samples=10, future=(fut.x, fut.edges))
    mine = forecast_scores(fc, fut, hist, 2)
    for got, want in zip(ssm[2:], mine):
        assert got["auc"] == pytest.approx(want["auc"], abs=1e-12) and got["crps"] == pytest.approx(want["crps"],
                                                                                                      abs=1e-9)


def test_backtest_without_refit_reuses_the_first_fit(tmp_path):
    r = run("backtest", "--origins", "20,25", *BACKTEST, "--no-refit", "--baseline-steps", "0", "--out", tmp_path,
            "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    folder = Path(res["files"][0]).parent
    ssm = [x for x in res["rows"] if x["forecaster"] == "GraphSSM"]
    assert [x["train_steps"] for x in ssm] == [4, 4, 0, 0] and [x["refit"] for x in ssm] == [True, True, False, False]
    assert not (folder / "origin-25").exists() and "GCN+GRU" not in res["mean"]
    assert res["files"][3:] == [str(folder / "origin-20")]  # the one fitted origin's run folder is listed
    r = run("backtest", "--origins", "20,25", *BACKTEST, "--baseline-steps", "0", "--no-refit", "--out", tmp_path)
    assert r.exit_code == 0 and "fitted once" in r.output and "| GraphSSM | 1 |" in r.output
    assert re.search(r"wrote \S+/origin-20/ \(\d+ files, [\d.]+ [kM]?B\)", r.output)


@pytest.mark.parametrize("origins, message", [("1", "out of range"), ("20,59", "out of range"),
                                               ("a,b", "comma-separated snapshot indices")])
def test_backtest_bad_origins_are_refused_with_nothing_written(tmp_path, origins, message):
    r = run("backtest", "--origins", origins, *BACKTEST, "--out", tmp_path / "o")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.json"))


def test_hurdle_emission_from_the_command_line_and_its_refusals(tmp_path):
    """--feature-emission hurdle trains on the count-like high school features and forecasts with atoms at
    zero; on features with negative values (the dynamic SBM's), or with --deterministic-decoder, it is refused
    with one line and exit code 2, before any folder is made."""
    r = run("train", "graph-ssm", "--dataset", "highschool", "--feature-emission", "hurdle", "--out", tmp_path / "h",
            "--json", *TINY)
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    r = run("forecast", path, "--horizon", 2, "--samples", 20, "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    import arviz as az

    draws = az.from_netcdf(path / "forecast.nc").posterior_predictive["X"].values[..., 0]
    assert (draws >= 0).all() and (draws == 0).any() and (draws > 0).any()
    for extra, message in ((["--dataset", "dsbm"], "needs features >= 0"),
                           (["--dataset", "highschool", "--deterministic-decoder"], "does not apply")):
        r = run("train", "graph-ssm", "--feature-emission", "hurdle", *extra, "--out", tmp_path / "bad", *TINY)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def _csv_graph(folder: Path, columns: str, features, rng) -> Path:
    """A CSV graph of 12 nodes and 10 snapshots with random edges and node features ``columns`` (comma-separated
    names) drawn by ``features()`` (one CSV row's values) per node and snapshot."""
    folder.mkdir()
    rows = ["src,dst,time"] + [f"{u},{v},{t}" for t in range(10) for u, v in rng.integers(0, 12, (15, 2)) if u != v]
    (folder / "edges.csv").write_text("\n".join(rows) + "\n")
    nodes = [f"node,time,{columns}"] + [f"{v},{t},{features()}" for v in range(12) for t in range(10)]
    (folder / "nodes.csv").write_text("\n".join(nodes) + "\n")
    return folder


def _forecast_feature_draws(folder: Path, emission: str, out: Path):
    """Train a tiny run on the CSV graph with ``--feature-emission emission``, forecast 2 steps of 20 paths and
    return the feature draws X from the NetCDF."""
    import arviz as az

    r = run("train", "graph-ssm", "--dataset", f"csv:{folder}", "--feature-emission", emission, "--out", out,
            "--json", *TINY)
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    r = run("forecast", path, "--horizon", 2, "--samples", 20, "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    return az.from_netcdf(path / "forecast.nc").posterior_predictive["X"].values


def test_negbin_emission_forecasts_integer_counts_and_refuses_other_features(tmp_path):
    """--feature-emission negbin on a CSV graph whose node feature is a message count: trains, and every
    forecast draw is a non-negative integer; log(1 + degree) (not integers) is refused with one line."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = _csv_graph(tmp_path / "counts", "messages", lambda: f"{rng.poisson(2.0)}", rng)
    draws = _forecast_feature_draws(folder, "negbin", tmp_path / "nb")[..., 0]
    assert (draws >= 0).all() and (draws == np.round(draws)).all() and draws.max() > 0
    r = run("train", "graph-ssm", "--dataset", "highschool", "--feature-emission", "negbin", "--out", tmp_path / "bad",
            *TINY)
    assert r.exit_code == 2 and "needs integer counts" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_feature_emission_auto_is_inferred_from_the_data():
    """auto takes the hurdle for count-like features (the high school's log(1 + degree): >= 0, 66 % zeros)
    and the Gaussian for the dynamic SBM's (negative values) or with --deterministic-decoder."""
    from dgm_pyro.runs import GraphConfig, build_graph_model, load_graph_sequence
    from dgm_pyro.runs.graph_ssm import resolved_feature_emission

    for dataset, want in (("highschool", "hurdle"), ("dsbm", "gaussian")):
        config = GraphConfig(dataset=dataset, feature_emission="auto", hidden=16).validate()
        history = load_graph_sequence(config)[0]
        assert resolved_feature_emission(config, history) == want
        assert build_graph_model(config, history).feature_emission == want
    config = GraphConfig(dataset="highschool", feature_emission="auto", deterministic_decoder=True).validate()
    assert resolved_feature_emission(config, load_graph_sequence(config)[0]) == "gaussian"


def test_sparse_likelihood_starts_the_edge_bias_at_the_observed_density():
    """With the sparse likelihood the edge bias starts at logit(edges per snapshot / pairs) of the training
    history; with the dense one at the fixed -3 (so dense runs are unchanged)."""
    import math

    for likelihood in ("dense", "sparse"):
        config = GraphConfig(dataset="dsbm", edge_likelihood=likelihood, hidden=16).validate()
        history = load_graph_sequence(config)[0]
        model = build_graph_model(config, history)
        density = sum(e.shape[1] for e in history.edges) / (history.num_steps * 200 * 199 / 2)
        want = math.log(density / (1 - density)) if likelihood == "sparse" else -3.0
        assert model.edge_bias.item() == pytest.approx(want, abs=1e-5)


def test_a_feature_emission_per_feature(tmp_path):
    """A CSV graph with a message count (integers, many zeros) and a signed score per node: auto (per feature)
    takes the hurdle for the count and the Gaussian for the score; an explicit list negbin,gaussian trains and
    forecasts integer counts beside real scores; a list of the wrong length or with an unknown name is refused
    with one line, and the joint rule of runs made before the option takes the Gaussian for both."""
    import numpy as np

    from dgm_pyro.runs import GraphConfig, build_graph_model, load_graph_sequence
    from dgm_pyro.runs.graph_ssm import resolved_feature_emission

    rng = np.random.default_rng(0)
    folder = _csv_graph(tmp_path / "mixed", "messages,score", lambda: f"{rng.poisson(0.5)},{rng.normal():.4f}", rng)
    config = GraphConfig(dataset=f"csv:{folder}", hidden=8).validate()
    history = load_graph_sequence(config)[0]
    assert resolved_feature_emission(config, history) == ("hurdle", "gaussian")
    assert build_graph_model(config, history).feature_emission == "mixed"
    config = GraphConfig(dataset=f"csv:{folder}", auto_emission="joint").validate()
    assert resolved_feature_emission(config, history) == "gaussian"

    draws = _forecast_feature_draws(folder, "negbin,gaussian", tmp_path / "runs")
    counts, scores = draws[..., 0], draws[..., 1]
    assert (counts >= 0).all() and (counts == np.round(counts)).all()
    assert (scores < 0).any() and (scores != np.round(scores)).any()
    for spec, message in (("hurdle,gaussian,gaussian", "lists 3 emissions for 2"),
                          ("hurdle,poisson", "bad --feature-emission"), ("gaussian,hurdle", "needs features >= 0")):
        r = run("train", "graph-ssm", "--dataset", f"csv:{folder}", "--feature-emission", spec, "--out",
                tmp_path / "bad", *TINY)
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_node_activity_is_on_by_default_and_off_with_its_flag(graph_run, tmp_path):
    """New runs carry the node-activity term (its weight and decay are trained and saved); --no-node-activity
    builds the model without it, and both forecast from the command line."""
    assert json.loads((graph_run / "config.json").read_text())["node_activity"] is True
    saved = torch.load(graph_run / "checkpoint.pt", weights_only=True)["model_state"]
    assert any(k.endswith("activity_weight") for k in saved) and any(k.endswith("activity_decay_logit") for k in saved)
    r = run("train", "graph-ssm", "--out", tmp_path, "--json", "--no-node-activity", *TINY)
    assert r.exit_code == 0, r.output
    off = Path(json.loads(r.stdout)["run"])
    assert json.loads((off / "config.json").read_text())["node_activity"] is False
    assert not any("activity" in k for k in torch.load(off / "checkpoint.pt", weights_only=True)["model_state"])
    r = run("forecast", off, "--horizon", "2", "--samples", "5", "--no-plots", "--out", tmp_path / "off.nc")
    assert r.exit_code == 0, r.output


def test_final_state_guide_keeps_the_weights_and_changes_only_the_forecast(graph_run, tmp_path):
    """--final-state guide trains the same weights (it is a forecasting choice) and forecasts from the guide's
    last latent: with the same seed its first forecast step differs from the default run's, which draws Z_T from
    the transition. A bad choice is refused with one line and exit code 2."""
    import arviz as az
    import numpy as np

    assert json.loads((graph_run / "config.json").read_text())["final_state"] == "transition"
    r = run("train", "graph-ssm", "--out", tmp_path, "--json", "--final-state", "guide", *TINY)
    assert r.exit_code == 0, r.output
    guide = Path(json.loads(r.stdout)["run"])
    assert json.loads((guide / "config.json").read_text())["final_state"] == "guide"
    weights = [torch.load(d / "checkpoint.pt", weights_only=True)["model_state"] for d in (graph_run, guide)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    draws = []
    for d, name in ((graph_run, "t.nc"), (guide, "g.nc")):
        r = run("forecast", d, "--horizon", 1, "--samples", 5, "--no-plots", "--seed", 3, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        draws.append(az.from_netcdf(tmp_path / name).posterior_predictive["X"].values)
    assert draws[0].shape == draws[1].shape and not np.allclose(draws[0], draws[1])
    r = run("train", "graph-ssm", "--out", tmp_path / "bad", "--final-state", "smoother", *TINY)
    assert r.exit_code == 2 and "smoother" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "bad").exists()


def test_edge_proximity_trains_forecasts_and_refuses_what_it_cannot_do(tmp_path):
    """--edge-proximity adds the Katz term (its weight trained and saved) and forecasts densely from the command
    line; with the sparse likelihood, or asked for sparse forecasts, it is refused with one line and exit code 2,
    leaving nothing behind."""
    r = run("train", "graph-ssm", "--out", tmp_path, "--json", "--edge-proximity", *TINY)
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    assert json.loads((path / "config.json").read_text())["edge_proximity"] is True
    assert "proximity_weight" in torch.load(path / "checkpoint.pt", weights_only=True)["model_state"]
    r = run("forecast", path, "--horizon", "2", "--samples", "5", "--no-plots", "--out", tmp_path / "p.nc")
    assert r.exit_code == 0, r.output
    r = run("forecast", path, "--horizon", "2", "--samples", "5", "--no-plots", "--edges", "sparse",
            "--out", tmp_path / "s.nc")
    assert r.exit_code == 2 and "forecast it with --edges dense" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.nc").exists()
    r = run("train", "graph-ssm", "--out", tmp_path, "--name", "sp", "--edge-proximity", "--edge-likelihood",
            "sparse", *TINY)
    assert r.exit_code == 2 and "needs the dense edge likelihood" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "sp").exists()


@pytest.mark.parametrize("flag, field, parameters", [
    ("--edge-recency", "edge_recency", {"memory_recent", "recent_decay_logit"}),
    ("--memory-activity", "memory_activity", {"memory_activity_weight"})])
def test_memory_options_train_and_forecast_with_both_likelihoods_and_samplers(tmp_path, flag, field, parameters):
    """--edge-recency adds the fast pair count, --memory-activity the activity weights of pairs with a past edge
    (their parameters trained and saved); the run forecasts with dense and sparse edges, and trains with the sparse
    likelihood too (its edge logits look the pair's history up)."""
    r = run("train", "graph-ssm", "--out", tmp_path, "--json", flag, *TINY)
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    assert json.loads((path / "config.json").read_text())[field] is True
    state = torch.load(path / "checkpoint.pt", weights_only=True)["model_state"]
    assert parameters <= {k.rsplit(".", 1)[-1] for k in state}
    for edges in ("dense", "sparse"):
        r = run("forecast", path, "--horizon", "2", "--samples", "5", "--no-plots", "--edges", edges,
                "--out", tmp_path / f"{edges}.nc")
        assert r.exit_code == 0, r.output
    r = run("train", "graph-ssm", "--out", tmp_path, "--name", "sp", flag, "--edge-likelihood", "sparse", *TINY)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("off", ["--no-node-activity", "--no-edge-memory"])
def test_memory_activity_without_its_terms_is_refused(tmp_path, off):
    r = run("train", "graph-ssm", "--out", tmp_path, "--name", "m", "--memory-activity", off, *TINY)
    assert r.exit_code == 2 and "--memory-activity" in r.output and "needs --edge-memory and --node-activity" \
        in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


@pytest.mark.parametrize("flags, named", [(["--edge-recency"], "--edge-recency extends"),
                                           (["--edge-frequency", "--edge-recency"],
                                            "--edge-frequency and --edge-recency extend")])
def test_pair_memory_extensions_without_the_memory_are_refused(tmp_path, flags, named):
    """--edge-frequency and --edge-recency add counts to the pair memory term: with --no-edge-memory they did
    nothing, silently; now one line says so and nothing is written."""
    r = run("train", "graph-ssm", "--out", tmp_path, "--name", "m", "--no-edge-memory", *flags, *TINY)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip() == f"error: {named} the pair memory of --edge-memory: leave out --no-edge-memory"
    assert not (tmp_path / "m").exists()


def test_guide_lookahead_trains_and_forecasts(tmp_path):
    """--guide-lookahead is saved with the run, and the run trains and forecasts from the command line."""
    r = run("train", "graph-ssm", "--out", tmp_path, "--json", "--guide-lookahead", *TINY)
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["run"])
    assert json.loads((path / "config.json").read_text())["guide_lookahead"] is True
    r = run("forecast", path, "--horizon", "2", "--samples", "5", "--no-plots", "--out", tmp_path / "f.nc")
    assert r.exit_code == 0, r.output
