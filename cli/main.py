"""``dgm-pyro``: train, evaluate and sample deep generative models from the shell.

Every user error ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
``--json`` prints only machine-readable JSON on stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import click

from dgm_pyro.errors import DgmPyroError


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(_jsonable(obj), indent=2, sort_keys=True))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.3f}"
    return str(v)


def _print_evaluation(ev: dict[str, Any]) -> None:
    rows = [
        ("datapoints", ev["num_datapoints"]),
        ("particles K", ev["num_particles"]),
        ("ELBO (nats/datapoint)", ev["elbo"]),
        ("log-likelihood, importance-sampled", ev["log_evidence"]),
        ("  standard error", ev["log_evidence_stderr"]),
        ("ESS mean / min", f"{_fmt(ev['ess_mean'])} / {_fmt(ev['ess_min'])}"),
        ("PSIS k-hat max", ev["khat_max"]),
        ("  share with k-hat > 0.7", ev["khat_frac_above_0.7"]),
    ]
    if "true_log_likelihood" in ev:
        rows.append(("true log-likelihood (generator)", ev["true_log_likelihood"]))
    if "baseline_ncll" in ev:
        rows += [("CVAE negative CLL (importance-sampled)", ev["cvae_ncll"]),
                 ("CVAE negative ELBO", ev["cvae_neg_elbo"]),
                 ("NN baseline negative CLL", ev["baseline_ncll"])]
    width = max(len(r[0]) for r in rows)
    click.echo(f"{ev['split']} metrics on {ev['dataset']}:")
    for name, v in rows:
        click.echo(f"  {name:<{width}}  {_fmt(v)}")
    frac = ev.get("khat_frac_above_0.7")
    if frac:
        click.echo(f"  note: k-hat > 0.7 for {frac:.1%} of datapoints; their importance-sampled values are unreliable "
                   "(overconfident encoder); treat the log-likelihood as a lower estimate.")


def _progress(json_out: bool) -> bool:
    return not json_out and sys.stderr.isatty()


class _Group(click.Group):
    """Turns :class:`DgmPyroError` into one line on stderr and exit code 2 (a traceback with ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DgmPyroError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dgm-pyro")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Deep generative models written the Pyro way."""
    ctx.ensure_object(dict)["debug"] = debug


TRAIN_FLAGS = {"dataset": "dataset", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
               "latent_dim": "latent_dim", "hidden": "hidden_dims", "prior": "prior", "likelihood": "likelihood",
               "patience": "patience", "particles": "eval_particles", "seed": "seed", "model": "model",
               "objective": "objective", "lam": "lam", "anneal": "anneal", "free_bits": "free_bits",
               "free_bits_per": "free_bits_per", "decoder": "decoder", "decoder_dropout": "decoder_dropout",
               "aggressive": "aggressive", "track_collapse": "track_collapse", "skip_bad_steps": "skip_bad_steps"}


@cli.command()
@click.argument("model", required=False, default="cvae", type=click.Choice(["cvae", "graph-ssm"]))
@click.option("--dataset", default="digits", show_default=True, help="digits, digits-q1..3, linear-gaussian, npz:PATH, idx:DIR.")
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--hidden", default="256,256", show_default=True, help="Hidden widths, comma-separated.")
@click.option("--prior", type=click.Choice(["learned", "standard"]), default="learned", show_default=True,
              help="Conditional prior network p(z|y) or N(0, I).")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian", "categorical"]), default=None,
              help="Override for user files (default: inferred from the values).")
@click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True, help="Early-stopping patience (epochs).")
@click.option("--particles", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Importance samples for the final test log-likelihood.")
@click.option("--objective", type=click.Choice(["elbo", "meanfield", "cs", "free-bits"]), default="elbo",
              show_default=True, help="Trace_ELBO, TraceMeanField_ELBO, CSELBO or FreeBitsELBO.")
@click.option("--lam", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of D_CS for --objective cs.")
@click.option("--anneal", default="none", show_default=True, metavar="SCHEDULE",
              help="KL annealing of the latent terms per optimisation step: none, constant:BETA, linear:START:STEPS, "
                   "cyclical:CYCLES:RATIO, sigmoid:STEPS[:STEEPNESS].")
@click.option("--free-bits", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="NATS",
              help="Free nats per group for --objective free-bits.")
@click.option("--free-bits-per", type=click.Choice(["dim", "site"]), default="dim", show_default=True,
              help="Free-bits groups: each latent dimension or each latent site.")
@click.option("--decoder", type=click.Choice(["mlp", "autoregressive"]), default="mlp", show_default=True,
              help="Pixels independent given z (mlp) or a masked autoregressive network (strong enough to ignore z).")
@click.option("--decoder-dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0,
              show_default=True, metavar="RATE", help="Zero each autoregressive input pixel with this probability "
                                                      "in training (weakens the decoder).")
@click.option("--aggressive", is_flag=True, help="Aggressive inference-network training (He et al. 2019).")
@click.option("--track-collapse", is_flag=True,
              help="Record validation KL, mutual information and active units per epoch in metrics.csv.")
@click.option("--skip-bad-steps", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Skip up to N optimisation steps whose loss or gradient is NaN/inf before stopping.")
@click.option("--test-steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="graph-ssm: hold out the last K snapshots for forecasting.")
@click.option("--snapshot-width", type=click.FloatRange(min=0, min_open=True), default=None,
              help="graph-ssm: bin event times into snapshots of this width (csv: default 1; collegemsg: days, default 7).")
@click.option("--directed", is_flag=True, help="graph-ssm: edges are ordered pairs (csv:/pt: data).")
@click.option("--gnn", type=click.Choice(["gcn", "gat", "sage"]), default="gcn", show_default=True,
              help="graph-ssm: torch-geometric layer of the guide's snapshot encoder.")
@click.option("--edge-likelihood", type=click.Choice(["auto", "dense", "sparse"]), default="auto", show_default=True,
              help="graph-ssm: exact over all pairs, or edges plus reweighted sampled non-edges (auto: dense up to "
                   "1000 nodes).")
@click.option("--negatives-per-edge", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="graph-ssm: sampled non-edges per edge in sparse mode.")
@click.option("--scheduled-sampling", default="none", show_default=True, metavar="SCHEDULE",
              help="graph-ssm: teacher-forcing probability per step: none, linear:STEPS[:END], exponential:RATE[:FLOOR], "
                   "inverse-sigmoid:K (seed P4.5).")
@click.option("--deterministic-decoder", is_flag=True,
              help="graph-ssm: fix the feature covariance at 0.01^2 I (P4.3; shows what it breaks).")
@click.option("--edge-memory/--no-edge-memory", default=True, show_default=True,
              help="graph-ssm: edge logits also use the pair's last edge and decayed past edge count.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="graph-ssm: full-sequence SVI steps.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=25, show_default=True,
              help="graph-ssm: steps between checkpoints and metrics rows.")
@click.option("--baseline-steps", type=click.IntRange(min=0), default=300, show_default=True,
              help="graph-ssm: training steps of the GCN+GRU baseline (0 skips it).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Folder in which the run folder <model>-<timestamp> is made.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file of options (flags given on the command line win).")
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="Continue the run in this folder.")
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@click.pass_context
def train(ctx: click.Context, model: str, dataset: str, epochs: int, batch_size: int, lr: float, latent_dim: int,
          hidden: str, prior: str, likelihood: Optional[str], patience: int, particles: int, objective: str, lam: float,
          anneal: str, free_bits: float, free_bits_per: str, decoder: str, decoder_dropout: float, aggressive: bool,
          track_collapse: bool, skip_bad_steps: int, test_steps: int, snapshot_width: Optional[float],
          directed: bool, gnn: str, edge_likelihood: str, negatives_per_edge: float, scheduled_sampling: str,
          deterministic_decoder: bool, edge_memory: bool, steps: int, checkpoint_every: int, baseline_steps: int, seed: int, out: str,
          config_file: Optional[str],
          resume: Optional[str], json_out: bool) -> None:
    """Train a model (MODEL: cvae or graph-ssm) and report its test metrics; writes a run folder."""
    from dgm_pyro.config import TrainConfig
    from dgm_pyro.runs import evaluate_run, load_run, new_run_dir, train_run

    if resume is not None and Path(resume, "config.json").is_file():
        from dgm_pyro.checkpoint import read_json

        raw = read_json(Path(resume, "config.json"))
        model = raw.get("model", model) if isinstance(raw, dict) else model
    if model == "graph-ssm":
        local = dict(locals())
        return _train_graph(ctx, {k: local[k] for k in GRAPH_FLAGS}, out, config_file, resume, json_out)
    given = {p: ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE for p in TRAIN_FLAGS}
    graph_only = [f"--{p.replace('_', '-')}" for p in GRAPH_FLAGS
                  if p not in TRAIN_FLAGS and ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if graph_only:
        raise DgmPyroError(f"{', '.join(graph_only)} only apply to 'dgm-pyro train graph-ssm'")
    if resume is not None:
        extra = [f"--{p.replace('_', '-')}" for p, g in given.items() if g and p != "model"]
        if extra or config_file:
            raise DgmPyroError(f"with --resume the configuration comes from {resume}/config.json; drop "
                               f"{', '.join(extra + (['--config'] if config_file else []))}")
        run_dir = Path(resume)
        config = None
    else:
        try:
            hidden_dims = [int(h) for h in hidden.split(",")]
        except ValueError:
            raise DgmPyroError(f"--hidden must be comma-separated integers like 256,256; got '{hidden}'") from None
        values = {"model": model, "dataset": dataset, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "latent_dim": latent_dim, "hidden_dims": hidden_dims, "prior": prior, "likelihood": likelihood,
                  "patience": patience, "eval_particles": particles, "seed": seed, "objective": objective, "lam": lam,
                  "anneal": anneal, "free_bits": free_bits, "free_bits_per": free_bits_per, "decoder": decoder,
                  "decoder_dropout": decoder_dropout, "aggressive": aggressive, "track_collapse": track_collapse,
                  "skip_bad_steps": skip_bad_steps}
        settings = TrainConfig.from_toml(config_file) if config_file else {}
        for flag, key in TRAIN_FLAGS.items():
            if given[flag] or key not in settings:
                settings[key] = values[key]
        config = TrainConfig.from_dict(settings, source=config_file or "options").validate()
        run_dir = new_run_dir(out, config.model)
    from dgm_pyro import distributed as D

    if D.init_from_env():  # launched by torchrun: one run folder for all ranks, rank 0's
        run_dir = D.broadcast_object(run_dir)
    announce = None if json_out else (lambda path: click.echo(f"run folder: {path}"))
    rank = D.rank()
    try:
        summary = train_run(config, run_dir, resume=resume is not None, progress=_progress(json_out),
                            on_start=announce)
    finally:
        D.shutdown()
    if rank != 0:
        return  # rank 0 evaluates and reports
    run = load_run(run_dir)
    ev = evaluate_run(run, particles=run.config.eval_particles, seed=run.config.seed, progress=_progress(json_out))
    if json_out:
        _emit_json({"run": str(run_dir), "train": summary, "test": ev})
        return
    click.echo(f"objective: {summary['objective']}; annealing: {summary['annealing']}")
    click.echo(f"trained {summary['epochs_run']} epochs ({summary['stopped']}); best valid ELBO "
               f"{summary['best_valid_elbo']:.3f} at epoch {summary['best_epoch']}")
    _print_evaluation(ev)
    click.echo(f"next: dgm-pyro sample {run_dir}   |   dgm-pyro evaluate {run_dir} --particles 5000")


#: train options of graph-ssm runs (CLI name -> GraphConfig field)
GRAPH_FLAGS = {"dataset": "dataset", "test_steps": "test_steps", "snapshot_width": "snapshot_width",
               "directed": "directed", "latent_dim": "latent_dim", "hidden": "hidden", "gnn": "gnn",
               "edge_likelihood": "edge_likelihood", "negatives_per_edge": "negatives_per_edge",
               "scheduled_sampling": "scheduled_sampling", "deterministic_decoder": "deterministic_decoder",
               "edge_memory": "edge_memory", "steps": "steps", "lr": "lr", "checkpoint_every": "checkpoint_every", "baseline_steps": "baseline_steps",
               "seed": "seed", "skip_bad_steps": "skip_bad_steps"}


def _train_graph(ctx: click.Context, values: dict[str, Any], out: str, config_file: Optional[str],
                 resume: Optional[str], json_out: bool) -> None:
    """``dgm-pyro train graph-ssm``: options not in :data:`GRAPH_FLAGS` are refused, defaults from GraphConfig."""
    from dgm_pyro.config import GraphConfig
    from dgm_pyro.graph_runs import train_graph_run
    from dgm_pyro.runs import new_run_dir

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DgmPyroError("graph-ssm trains on one process (its sequence is one batch); run it without torchrun")
    given = {p for p in ctx.params if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE}
    cvae_only = sorted(given - set(GRAPH_FLAGS) - {"model", "out", "config_file", "resume", "json_out"})
    if cvae_only:
        raise DgmPyroError(f"{', '.join('--' + p.replace('_', '-') for p in cvae_only)} do not apply to graph-ssm "
                           "(see 'dgm-pyro train --help')")
    if resume is not None:
        extra = sorted(given & set(GRAPH_FLAGS))
        if extra or config_file:
            names = [f"--{p.replace('_', '-')}" for p in extra] + (["--config"] if config_file else [])
            raise DgmPyroError(f"with --resume the configuration comes from {resume}/config.json; drop {', '.join(names)}")
        config, run_dir = None, Path(resume)
    else:
        settings = GraphConfig.from_toml(config_file) if config_file else {}
        # options not given keep the TOML value or GraphConfig's default (the CVAE's defaults do not apply)
        for flag in given & set(GRAPH_FLAGS):
            settings[GRAPH_FLAGS[flag]] = values[flag]
        if isinstance(settings.get("hidden"), str):
            try:
                settings["hidden"] = int(settings["hidden"])
            except ValueError:
                raise DgmPyroError(f"--hidden for graph-ssm is one width like 64; got '{settings['hidden']}'") from None
        settings["model"] = "graph-ssm"
        config = GraphConfig.from_dict(settings, source=config_file or "options").validate()
        run_dir = new_run_dir(out, "graph-ssm")
    announce = None if json_out else (lambda path: click.echo(f"run folder: {path}"))
    summary = train_graph_run(config, run_dir, resume=resume is not None, progress=_progress(json_out),
                              on_start=announce)
    if json_out:
        _emit_json({"run": str(run_dir), "train": summary})
        return
    d = summary["data"]
    click.echo(f"data: {d['name']}, {d['snapshots']} history snapshots of {d['nodes']} nodes, {d['features']} "
               f"feature(s), {d['edges_mean']:.0f} edges on average; edge likelihood {summary['edge_likelihood']}")
    click.echo(f"trained {summary['steps_run']} steps; final negative ELBO per snapshot {summary['final_loss']:.2f}; "
               f"teacher forcing {summary['teacher_forcing']}")
    click.echo(f"next: dgm-pyro forecast {run_dir} --horizon 5")


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--particles", type=click.IntRange(min=1), default=1000, show_default=True, help="Importance samples K.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
def evaluate(run_dir: str, particles: int, split: str, seed: int, json_out: bool) -> None:
    """Test ELBO, importance-sampled log-likelihood and PSIS k-hat of a trained run."""
    from dgm_pyro.runs import evaluate_run, load_run

    ev = evaluate_run(load_run(run_dir), particles=particles, split=split, seed=seed, progress=_progress(json_out))
    _emit_json(ev) if json_out else _print_evaluation(ev)


def _read_condition(path: str, ds) -> "Any":
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise DgmPyroError(f"{p}: no such file (expected an .npz with an array 'y', or 'images' for quadrant data)")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DgmPyroError(f"{p}: not a readable .npz archive ({type(e).__name__})") from None
    if "y" in arrays:
        y = np.asarray(arrays["y"], dtype=np.float64)
        y = y.reshape(1, -1) if y.ndim == 1 else y.reshape(y.shape[0], -1)
    elif "images" in arrays and ds.y_index is not None:
        imgs = np.asarray(arrays["images"], dtype=np.float64)
        imgs = imgs.reshape(imgs.shape[0], -1) if imgs.ndim > 1 else imgs.reshape(1, -1)
        if imgs.shape[1] != 64:
            raise DgmPyroError(f"{p}: 'images' must be 8x8 digits (64 pixels each); got {imgs.shape[1]} pixels")
        y = imgs[:, ds.y_index.numpy()] / (ds.levels - 1)
    else:
        raise DgmPyroError(f"{p}: needs an array 'y' of conditions" + (" or 'images'" if ds.y_index is not None else ""))
    if not np.isfinite(y).all():
        raise DgmPyroError(f"{p}: the condition contains NaN or infinite values")
    return torch.as_tensor(y, dtype=torch.float32)


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--label", type=int, default=None, help="Class to generate (label-conditioned data); default: all.")
@click.option("--condition", type=click.Path(dir_okay=False), default=None,
              help=".npz with 'y' (N, y_dim) conditions, or 'images' whose given quadrants are kept.")
@click.option("--num", type=click.IntRange(min=1, max=1000), default=8, show_default=True, help="Samples per condition.")
@click.option("--mode", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="Decoder mean E[x|y,z] or a draw x ~ p(x|y,z).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output .png grid (image data) or .npz; default RUN/samples.png or RUN/samples.npz.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
def sample(run_dir: str, label: Optional[int], condition: Optional[str], num: int, mode: str, out: Optional[str],
           seed: int, json_out: bool) -> None:
    """Generate from the conditional prior for a new condition (seed P1.8)."""
    from dgm_pyro.runs import generate, load_run
    from dgm_pyro.plotting import save_sample_grid

    run = load_run(run_dir)
    ds = run.dataset
    out_path = Path(out) if out else run.path / ("samples.png" if ds.image_shape else "samples.npz")
    if out_path.suffix not in (".png", ".npz"):
        raise DgmPyroError(f"--out must end in .png or .npz; got '{out_path.name}'")
    if out_path.suffix == ".png" and not ds.image_shape:
        raise DgmPyroError(f"dataset '{ds.name}' is not images; use --out FILE.npz")
    if not out_path.parent.is_dir():
        raise DgmPyroError(f"{out_path.parent}: no such directory for --out")
    cond = _read_condition(condition, ds) if condition else None
    x, y = generate(run, label=label, condition=cond, num=num, mean=mode == "mean", seed=seed)
    if out_path.suffix == ".png":
        save_sample_grid(x, y, ds, out_path)
    else:
        import numpy as np

        from dgm_pyro.checkpoint import _atomic_replace

        _atomic_replace(out_path, lambda f: np.savez(f, x=x.numpy(), y=y.numpy()))
    info = {"out": str(out_path), "conditions": int(x.shape[0]), "per_condition": num, "mode": mode, "seed": seed}
    _emit_json(info) if json_out else click.echo(f"wrote {x.shape[0]} x {num} samples ({mode}) to {out_path}")


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--particles", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Importance samples K for the NLL (0 skips it).")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Draws per datapoint for the mutual information and the aggregate KL.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="B of the minibatch MI estimator (ceiling log B).")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
def diagnose(run_dir: str, particles: int, samples: int, batch_size: int, split: str, seed: int,
             json_out: bool) -> None:
    """Posterior-collapse report of a trained run: NLL, KL, mutual information, aggregate KL, active units."""
    from dgm_pyro.runs import diagnose_run, load_run

    run = load_run(run_dir)
    report = diagnose_run(run, particles=particles, split=split, seed=seed, num_samples=samples,
                          minibatch_size=batch_size)
    if json_out:
        _emit_json(report.to_dict())
        return
    given = "conditional on the label" if report.conditional else "unconditional"
    click.echo(f"posterior-collapse report, {split} split ({given}), nats per datapoint:")
    click.echo(str(report))
    click.echo("wrote " + ", ".join(report.extra["files"]))


@cli.command()
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
@click.option("--no-plots", is_flag=True, help="Do not write plots/forecast_*.png.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
def forecast(run_dir: str, horizon: int, samples: int, chains: int, out: Optional[str], stationarity: int,
             no_plots: bool, seed: int, json_out: bool) -> None:
    """Forecast the next H snapshots of a graph-ssm run as sample paths (seed P4.4), scored against the
    held-out snapshots and the baselines."""
    from dgm_pyro.graph_runs import forecast_run, load_graph_run

    if horizon < 1:
        raise DgmPyroError(f"--horizon must be >= 1, got {horizon}")
    if stationarity and stationarity < 20:
        raise DgmPyroError(f"--stationarity needs at least 20 steps, got {stationarity}")
    res = forecast_run(load_graph_run(run_dir), horizon=horizon, num_samples=samples, chains=chains, seed=seed,
                       out=out, plots=not no_plots, stationarity_steps=stationarity)
    if json_out:
        _emit_json(res)
        return
    click.echo(f"wrote {res['out']} ({chains} chain(s) x {samples} draws, horizon {horizon})")
    if res["scored_steps"]:
        cols = [("auc", "AUC"), ("auc_new", "AUC new"), ("ap", "AP"), ("brier", "Brier"), ("ece", "ECE"),
                ("crps", "CRPS"), ("energy", "energy"), ("coverage_50", "cov50"), ("coverage_90", "cov90")]
        click.echo(f"held-out scores per horizon step (truth for h <= {res['scored_steps']}):")
        width = max(len(n) for n in res["metrics"])
        click.echo(f"  {'forecaster':<{width}}  h  " + "  ".join(f"{c[1]:>7}" for c in cols))
        for name, rows in res["metrics"].items():
            for r in rows:
                click.echo(f"  {name:<{width}}  {r['h']}  " + "  ".join(f"{_fmt(r[c[0]]):>7}" for c in cols))
    else:
        click.echo("no held-out snapshots to score (train with --test-steps K to hold some out)")
    st = res.get("stationarity")
    if st:
        verdict = "stationary" if st["stationary"] else "NOT stationary (R-hat >= 1.05)"
        click.echo(f"long-run rollout, {st['chains']} chains x {st['steps']} steps: {verdict}; R-hat edge density "
                   f"{_fmt(st['edge_density']['rhat'])}, mean feature {_fmt(st['mean_feature']['rhat'])}")
    for p in res.get("plots", []):
        click.echo(f"plot: {p}")


@cli.command()
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
def datasets(json_out: bool) -> None:
    """List the built-in datasets and the file formats accepted by --dataset."""
    from dgm_pyro.data import BUILTIN_DATASETS

    info = dict(BUILTIN_DATASETS)
    info["npz:PATH"] = "your .npz: array x (N, D) or (N, H, W), optional y (N,) labels or (N, K) covariates"
    info["idx:DIR"] = "MNIST-style IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, optional t10k-*"
    from dgm_pyro.data.graphs import GRAPH_DATASETS

    info.update({f"{k} (graph-ssm)": v for k, v in GRAPH_DATASETS.items()})
    if json_out:
        _emit_json(info)
        return
    width = max(map(len, info))
    for name, desc in info.items():
        click.echo(f"{name:<{width}}  {desc}")


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="dgm-pyro")


if __name__ == "__main__":
    main()
