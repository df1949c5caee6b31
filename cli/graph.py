"""The graph commands: ``dgm-pyro forecast RUN`` (sample paths of a graph-ssm run, scored against the held-out
snapshots) and ``dgm-pyro backtest`` (rolling origins with refits), over :mod:`dgm_pyro.runs.graph_forecast` and
:mod:`dgm_pyro.runs.graph_backtest`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import click

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.metrics import FORECAST_MAX_NODES
from dgm_pyro.runs.graph_forecast import EDGE_OUTPUTS

from .common import device_option, emit_json, fmt, load_for, progress_enabled, report_files, seed_option
from .options import config_options, resolve_config

__all__ = ["forecast", "backtest_command"]


def _echo_comparisons(comparisons: Optional[dict[str, dict[str, Any]]]) -> None:
    """Per scored step, GraphSSM against the strongest other forecaster by AUC and by AP (all are in the JSON)."""
    if not comparisons:
        return
    click.echo("GraphSSM minus the strongest other forecaster (95 % paired bootstrap interval over the pairs):")
    for step, others in comparisons.items():
        parts = []
        for metric in ("auc", "ap"):
            scored = [(n, d) for n, d in others.items() if math.isfinite(d[metric]["difference"])]
            if not scored:
                continue
            name, d = min(scored, key=lambda kv: kv[1][metric]["difference"])
            parts.append(f"{metric.upper()} {fmt(d[metric]['difference'])} [{fmt(d[metric]['low'])}, "
                         f"{fmt(d[metric]['high'])}] vs {name}")
        positives = next(iter(others.values()))["positives"]
        click.echo(f"  {step} ({positives} edges): " + "; ".join(parts))


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--horizon", type=int, required=True, help="Snapshots to forecast after the history (H >= 1).")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Draws per chain.")
@click.option("--chains", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent chains (the NetCDF's chain dimension).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="NetCDF file for the arviz InferenceData; default RUN/forecast.nc.")
@click.option("--stationarity", type=click.IntRange(min=0), default=0, show_default=True, metavar="STEPS",
              help="Also roll out max(chains, 4) chains for STEPS steps and report R-hat/ESS of summary statistics "
                   "(P4.4); 0 skips it.")
@click.option("--edges", "edge_output", type=click.Choice(EDGE_OUTPUTS), default="auto", show_default=True,
              help="dense: every draw's N x N edge probabilities and draws, all pairs scored; sparse: each draw's "
                   "edges as a COO list plus the --top-k most probable new edges per node, scored on all true "
                   f"edges and --negatives sampled non-edges; auto: dense up to {FORECAST_MAX_NODES} nodes.")
@click.option("--top-k", type=click.IntRange(min=0), default=10, show_default=True,
              help="With sparse edges: the most probable new edges kept per node and step.")
@click.option("--negatives", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="With sparse edges: non-edges drawn uniformly per step to score against every true edge.")
@click.option("--intervals", type=click.IntRange(min=0), default=0, show_default=True, metavar="RESAMPLES",
              help="With dense edges: GraphSSM's AUC and AP minus each other forecaster's per scored step, with 95 %% "
                   "paired bootstrap intervals over the pairs from RESAMPLES resamples (1000 is usual); 0 skips them.")
@click.option("--no-plots", is_flag=True, help="Do not write the plots (plots/NAME_*.png beside the forecast file).")
@seed_option
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@device_option
def forecast(run_dir: str, horizon: int, samples: int, chains: int, out: Optional[str], stationarity: int,
             edge_output: str, top_k: int, negatives: int, intervals: int, no_plots: bool, seed: int, json_out: bool,
             device: str) -> None:
    """Forecast the next H snapshots of a graph-ssm run as sample paths (seed P4.4), scored against the
    held-out snapshots and the baselines."""
    if horizon < 1:
        raise DgmPyroError(f"--horizon must be >= 1, got {horizon}")
    if stationarity and stationarity < 20:
        raise DgmPyroError(f"--stationarity needs at least 20 steps, got {stationarity}")
    run = load_for(run_dir, "forecast", device)
    res = run.kind.forecast(run, horizon=horizon, num_samples=samples, chains=chains, seed=seed, out=out,
                            plots=not no_plots, stationarity_steps=stationarity, edges=edge_output, top_k=top_k,
                            negatives=negatives, intervals=intervals)
    if json_out:
        emit_json(res)
        return
    click.echo(f"forecast: {chains} chain(s) x {samples} draws, horizon {horizon}, {res['edges']} edges")
    if res["edges"] == "sparse" and res["scored_steps"]:
        pairs = ", ".join(str(p) for p in res["edge_pairs"]["pairs_per_step"])
        click.echo(f"  edge scores on every true edge and up to {negatives} sampled non-edges per step ({pairs} pairs; "
                   "the estimator is in the JSON)")
    if res["scored_steps"]:
        cols = [("auc", "AUC"), ("auc_new", "AUC new"), ("ap", "AP"), ("ap_1to1", "AP 1:1"), ("brier", "Brier"),
                ("ece", "ECE"),
                ("crps", "CRPS"), ("energy", "energy"), ("coverage_50", "cov50"), ("coverage_90", "cov90"),
                ("pit_coverage_50", "PIT50"), ("pit_coverage_90", "PIT90")]
        click.echo(f"held-out scores per horizon step (truth for h <= {res['scored_steps']}):")
        width = max(len(n) for n in res["metrics"])
        click.echo(f"  {'forecaster':<{width}}  h  " + "  ".join(f"{c[1]:>7}" for c in cols))
        for name, rows in res["metrics"].items():
            for r in rows:
                click.echo(f"  {name:<{width}}  {r['h']}  " + "  ".join(f"{fmt(r[c[0]]):>7}" for c in cols))
        for name, why in res["not_scored"].items():
            click.echo(f"  {name}: no row; {why}")
        _echo_comparisons(res.get("comparisons"))
        for note in res["notes"]:
            click.echo(f"  note: {note}")
    else:
        click.echo("no held-out snapshots to score (train with --test-steps K to hold some out)")
    st = res.get("stationarity")
    if st:
        verdict = "stationary" if st["stationary"] else "NOT stationary (R-hat >= 1.05)"
        click.echo(f"long-run rollout, {st['chains']} chains x {st['steps']} steps: {verdict}; R-hat edge density "
                   f"{fmt(st['edge_density']['rhat'])}, mean feature {fmt(st['mean_feature']['rhat'])}")
    report_files(res["files"])


#: graph-ssm options that a backtest does not take: its origins split the sequence, and it does not stop early
_NOT_IN_BACKTEST = {"test_steps", "valid_steps", "patience"}


def backtest_command() -> click.Command:
    """``dgm-pyro backtest``: the graph-ssm training options plus the backtest's own."""
    from dgm_pyro.runs.graph_ssm import GraphConfig

    @click.pass_context
    def callback(ctx: click.Context, origins: str, horizon: int, refit: bool, refit_steps: int, samples: int, out: str,
                 config_file: Optional[str], json_out: bool, device: str, **_: Any) -> None:
        from dgm_pyro.device import resolve_device
        from dgm_pyro.registry import get_model
        from dgm_pyro.runs import new_run_dir
        from dgm_pyro.runs.graph_backtest import backtest_graph, summary_table

        try:
            points = [int(v) for v in origins.split(",") if v.strip()]
        except ValueError:
            raise DgmPyroError(f"--origins must be comma-separated snapshot indices like 30,35,40; got '{origins}'") \
                from None
        config = resolve_config(get_model("graph-ssm"), ctx, config_file)
        if Path(out).is_file():
            raise DgmPyroError(f"{out}: is a file; --out takes a folder")
        folder = new_run_dir(out, "backtest")
        res = backtest_graph(config, points, horizon, folder, refit=refit, refit_steps=refit_steps,
                             num_samples=samples, progress=progress_enabled(json_out), device=resolve_device(device))
        if json_out:
            emit_json(res)
            return
        click.echo(f"backtest of graph-ssm on {config.dataset}: origins {', '.join(map(str, res['origins']))}, horizon "
                   f"{horizon}, {'refitted (warm start, ' + str(refit_steps) + ' steps)' if refit else 'fitted once'}")
        click.echo("mean over origins:")
        click.echo(summary_table(res))
        report_files(res["files"])

    own = [
        click.Option(["--origins"], required=True, metavar="T1,T2,...",
                     help="Snapshot indices where forecasts start; the model trains on the snapshots before each."),
        click.Option(["--horizon"], type=click.IntRange(min=1), default=5, show_default=True,
                     help="Snapshots forecast and scored per origin."),
        click.Option(["--refit/--no-refit"], default=True, show_default=True,
                     help="Refit at every origin after the first, warm-started from the previous weights."),
        click.Option(["--refit-steps"], type=click.IntRange(min=1), default=100, show_default=True,
                     help="SVI steps of each refit (the first fit runs --steps)."),
        click.Option(["--samples"], type=click.IntRange(min=1), default=100, show_default=True,
                     help="Forecast paths per origin."),
        click.Option(["--out"], type=click.Path(), default="runs", show_default=True,
                     help="Folder in which the backtest folder backtest-<timestamp> is made."),
        click.Option(["--config", "config_file"], type=click.Path(dir_okay=False), default=None,
                     help="TOML file of graph-ssm options (flags given on the command line win)."),
        click.Option(["--json", "json_out"], is_flag=True, help="Print only JSON."),
    ]
    params = [o for o in config_options(GraphConfig) if o.name not in _NOT_IN_BACKTEST] + own
    cmd = click.Command("backtest", callback=callback, params=params,
                        help="Rolling-origin backtest of graph-ssm with warm-started refits: one row of metrics per "
                             "origin, forecaster and horizon step (the shape of pyro.contrib.forecast.backtest).",
                        short_help="Rolling-origin backtest of graph-ssm with refits.")
    return device_option(cmd)
