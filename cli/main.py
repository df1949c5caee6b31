"""``dgm-pyro``: train, evaluate and sample deep generative models from the shell.

Every user error ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
``--json`` prints only machine-readable JSON on stdout. ``dgm-pyro train MODEL`` has one subcommand per
registered model, generated from its configuration (:mod:`cli.options`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import click

from dgm_pyro.errors import DgmPyroError

from .common import (EchoHandler, device_option, emit_json, load_for, print_evaluation, progress_enabled, report_files,
                     runtime_options, seed_option, without_per_datapoint)
from .graph import backtest_command, forecast
from .options import (ModelCommand, SampleCommand, TrainGroup, config_options, given_settings, model_sample_settings,
                      resolve_config)


class _Group(click.Group):
    """Turns :class:`DgmPyroError` and click's usage errors into one line on stderr and exit code 2 (a
    traceback with ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DgmPyroError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands with the first sentence of each one's help, whole (click cuts it at the width)."""
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.short_help and cmd.help:
                first = " ".join(cmd.help.strip().split("\n\n")[0].split())
                cmd.short_help = re.split(r"(?<=[.;])\s", first)[0].rstrip(".;")
        super().format_commands(ctx, formatter)

    def main(self, args: Any = None, prog_name: Optional[str] = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        if not (sys.argv[1:] if args is None else list(args)):  # the command alone: its help, not an error
            with self.make_context(prog_name or "dgm-pyro", [], resilient_parsing=True) as ctx:
                click.echo(ctx.get_help())
            sys.exit(0)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as e:  # usage errors: one line instead of usage + hint + error
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except DgmPyroError as e:  # raised while parsing (an unknown model name)
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dgm-pyro")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Deep generative models written the Pyro way."""
    obj = ctx.ensure_object(dict)
    obj["debug"] = debug
    handler = EchoHandler()
    # rank 0 speaks for a torchrun job
    handler.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger = logging.getLogger("dgm_pyro")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    obj["handler"] = handler
    ctx.call_on_close(lambda: logger.removeHandler(handler))


def _run_train(kind: Any, ctx: click.Context, out: str, config_file: Optional[str], resume: Optional[str],
               json_out: bool, device: str, name: Optional[str] = None) -> None:
    """``dgm-pyro train MODEL``: resolve the configuration, train, report (rank 0 under torchrun)."""
    from dgm_pyro import distributed as D
    from dgm_pyro.device import resolve_device
    from dgm_pyro.runs import load_run, new_run_dir, train_run

    dev = resolve_device(device)
    distributed = D.init_from_env()  # launched by torchrun: one run folder for all ranks, rank 0's
    if distributed and dev.type != "cpu":
        if device != "auto":
            raise DgmPyroError("data-parallel training under torchrun runs on CPU (gloo); use --device cpu")
        dev = resolve_device("cpu")
    if name is not None and (resume is not None or not name.strip() or Path(name).name != name or name in (".", "..")):
        raise DgmPyroError("--name takes a plain folder name (no '/'), and not with --resume" if resume is None
                           else "--name names a new run; with --resume the run folder is given already")
    if resume is not None:
        config, run_dir = None, Path(resume)
        if not _prepare_resume(kind, ctx, config_file, run_dir, json_out):
            D.shutdown()
            return
    else:
        config = resolve_config(kind, ctx, config_file)
        if Path(out).is_file():
            raise DgmPyroError(f"{out}: is a file; --out takes a folder")
        run_dir = Path(out) / name if name else new_run_dir(out, kind.name)
    if distributed:
        run_dir = D.broadcast_object(run_dir)
    announce = None if json_out else (lambda path: click.echo(f"run folder: {path}"))
    rank = D.rank()
    if resume is not None and rank == 0:
        _say_where_it_resumes(run_dir)
    try:
        summary = train_run(config, run_dir, resume=resume is not None, progress=progress_enabled(json_out), on_start=announce,
                            device=dev)
    except KeyboardInterrupt:
        if rank == 0:
            _say_how_to_resume(run_dir)
        raise click.exceptions.Exit(130) from None
    finally:
        D.shutdown()
    if rank != 0:
        return  # rank 0 evaluates and reports
    run = load_run(run_dir, device=dev)
    ev = run.kind.final_evaluation(run, progress=progress_enabled(json_out))
    if json_out:
        emit_json({"run": str(run_dir), "train": summary,
                    **({"test": without_per_datapoint(ev)} if ev is not None else {})})
        return
    _print_training(run, summary)
    if ev is not None:
        print_evaluation(ev)
    report_files(sorted(p for p in run_dir.rglob("*") if p.is_file() and p.parent.name != "__pycache__"))
    click.echo("next: " + "   |   ".join(f"dgm-pyro {c} {run_dir}" + (" --horizon 5" if c == "forecast" else "")
                                        for c in run.kind.commands))


def _progress_of(run_dir: Path) -> tuple[str, Optional[dict[str, Any]]]:
    """The unit a run trains in (``epoch`` or ``step``) and its checkpoint's loop state (``None``: none yet)."""
    from dgm_pyro.runs import read_run_config, training_state

    _, config = read_run_config(run_dir)
    return (config.LENGTH or "epochs")[:-1], training_state(run_dir / "checkpoint.pt")


def _say_where_it_resumes(run_dir: Path) -> None:
    """One line on stderr: the epoch or step a resumed run continues after."""
    unit, state = _progress_of(run_dir)
    logging.getLogger("dgm_pyro.cli").info("resuming %s after %s %d%s", run_dir, unit, 0 if state is None else
                                           state.get(unit, 0),
                                           " (no checkpoint yet: from the start)" if state is None else "")


def _say_how_to_resume(run_dir: Path) -> None:
    """After Ctrl-C: what was kept and the command that continues."""
    try:
        unit, state = _progress_of(run_dir)
    except DgmPyroError:
        click.echo("interrupted before the run folder was made; nothing to resume", err=True)
        return
    kept = f"the checkpoint after {unit} {state[unit]} is kept" if state else "no checkpoint was written yet"
    click.echo(f"interrupted: {kept}; continue with 'dgm-pyro train --resume {run_dir}'", err=True)


def _prepare_resume(kind: Any, ctx: click.Context, config_file: Optional[str], run_dir: Path, json_out: bool) -> bool:
    """Check a ``--resume``: only the run's length (``--epochs``/``--steps``) may be given, which extends
    it. Returns ``False`` (after saying so) when the run is complete and nothing asks for more."""
    from dgm_pyro import distributed as D
    from dgm_pyro.runs import extend_run, read_run_config, training_state

    given = given_settings(ctx, kind.config_class)
    length_field = kind.config_class.LENGTH
    length = given.pop(length_field, None)
    extra = ["--" + k.replace("_", "-") for k in given]
    if extra or config_file:
        raise DgmPyroError(f"with --resume the configuration comes from {run_dir}/config.json (only --{length_field} "
                           f"may be raised); drop {', '.join(extra + (['--config'] if config_file else []))}")
    run_kind, config = read_run_config(run_dir)
    if run_kind.name != kind.name:
        raise DgmPyroError(f"{run_dir}: a {run_kind.name} run; resume it with 'dgm-pyro train --resume {run_dir}'")
    if length is not None:
        if D.rank() == 0:
            extend_run(run_dir, length)
        D.barrier()
        return True
    if run_kind.unfinished(config, run_dir):
        return True
    state = training_state(run_dir / "checkpoint.pt") or {}
    unit = length_field[:-1]
    if state.get("stopped"):
        msg = (f"{run_dir}: training is complete (stopped early at {unit} {state.get(unit)}: no better validation "
               "score within its patience); nothing was changed")
    else:
        msg = (f"{run_dir}: training is complete ({state.get(unit)} {length_field}); nothing was changed. To train "
               f"further: dgm-pyro train --resume {run_dir} --{length_field} N")
    if D.rank() == 0:
        emit_json({"run": str(run_dir), "complete": True}) if json_out else click.echo(msg)
    return False


def _print_training(run: Any, summary: dict[str, Any]) -> None:
    if "edge_likelihood" in summary:
        click.echo(f"edge likelihood: {summary['edge_likelihood']}")
    click.echo(f"objective: {summary['objective']}" + (f"; annealing: {summary['annealing']}" if "annealing" in summary
                                                       else ""))
    if "epochs_run" in summary:
        best = next(k for k in summary if k.startswith("best_valid_"))
        click.echo(f"trained {summary['epochs_run']} epochs ({summary['stopped']}); best valid "
                   f"{best[len('best_valid_'):].replace('_', '-')} {summary[best]:.3f} at epoch {summary['best_epoch']}")
    else:
        click.echo(f"trained {summary['steps_run']} steps; final negative ELBO per snapshot {summary['final_loss']:.2f}"
                   + (f"; teacher forcing {summary['teacher_forcing']}" if "teacher_forcing" in summary else ""))


def _model_command(kind: Any) -> click.Command:
    """``dgm-pyro train NAME`` for a registered model kind: its configuration's options plus the common ones."""
    @click.pass_context
    def callback(ctx: click.Context, out: str, name: Optional[str], config_file: Optional[str], resume: Optional[str],
                 json_out: bool, device: str, **_: Any) -> None:
        _run_train(kind, ctx, out, config_file, resume, json_out, device, name=name)

    common = [
        click.Option(["--out"], type=click.Path(), default="runs", show_default=True,
                     help="Folder in which the run folder <model>-<timestamp> is made."),
        click.Option(["--name"], default=None, metavar="NAME",
                     help="Call the run folder OUT/NAME instead (it must not exist or must be empty)."),
        click.Option(["--config", "config_file"], type=click.Path(dir_okay=False), default=None,
                     help="TOML file of options (flags given on the command line win)."),
        click.Option(["--resume"], type=click.Path(file_okay=False), default=None,
                     help="Continue the run in this folder (its config.json decides everything)."),
        click.Option(["--json", "json_out"], is_flag=True, help="Print only JSON."),
    ]
    cmd = ModelCommand(kind.name, callback=callback, params=config_options(kind.config_class) + common,
                       help=f"Train {kind.name}: {kind.description}. Writes a run folder.",
                       short_help=kind.description)
    return device_option(cmd)


@cli.group(cls=TrainGroup, make_command=_model_command, invoke_without_command=False,
           subcommand_metavar="[MODEL] [OPTIONS]...", options_metavar="")
def train() -> None:
    """Train a model and report its test metrics; writes a run folder (MODEL defaults to cvae).

    Each model has its own options, shown by 'dgm-pyro train MODEL --help': its settings, and --out, --name,
    --config, --resume, --json, --device, --threads and --quiet. 'dgm-pyro train --resume RUN' continues any
    run; with --epochs N (or --steps N) it trains a finished one further.
    """


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--particles", type=click.IntRange(min=1), default=1000, show_default=True, help="Importance samples K.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@seed_option
@click.option("--method", type=click.Choice(["auto", "is", "adaptive", "ais"]), default="auto", show_default=True,
              help="Importance sampling with the encoder as proposal (is); adaptive importance sampling from the encoder "
                   "mixed with Gaussians fitted per datapoint (adaptive); annealed importance sampling (HMC) from the "
                   "encoder (ais); auto: adaptive where the model allows it (continuous latents), else is.")
@click.option("--ais-steps", type=click.IntRange(min=1), default=100, show_default=True, metavar="T",
              help="Temperatures of --method ais (cost: about 6 T times importance sampling's).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, metavar="R",
              help="Adapted rounds of --method adaptive after the encoder's (cost: about 1 + 2.5 R times "
                   "importance sampling's).")
@click.option("--refine-rounds", type=click.IntRange(min=0), default=8, show_default=True, metavar="R",
              help="With --method adaptive (or auto), estimate the datapoints whose k-hat is still above 0.7 again, "
                   "with fresh draws and R adapted rounds; 0: do not.")
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@device_option
def evaluate(run_dir: str, particles: int, split: str, seed: int, method: str, ais_steps: int, rounds: int,
             refine_rounds: int, json_out: bool, device: str) -> None:
    """Test ELBO, importance-sampled (or adaptive, or annealed) log-likelihood and PSIS k-hat of a trained run."""
    run = load_for(run_dir, "evaluate", device)
    ev = run.kind.evaluate(run, particles=particles, split=split, seed=seed, progress=progress_enabled(json_out),
                           method=method, ais_steps=ais_steps, rounds=rounds, refine_rounds=refine_rounds)
    if json_out:
        emit_json(without_per_datapoint(ev))
        return
    print_evaluation(ev)
    report_files([ev["file"]])


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


def _read_prompts(texts: tuple[str, ...], text_file: Optional[str]) -> Optional[list[str]]:
    """The prompts of ``--text`` and ``--text-file`` (one per non-blank line, UTF-8), or ``None`` for neither."""
    prompts = list(texts)
    if text_file is not None:
        p = Path(text_file)
        if not p.is_file():
            raise DgmPyroError(f"{p}: no such caption file")
        try:
            lines = p.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DgmPyroError(f"{p}: not UTF-8 text (byte {e.start}); save the caption file as UTF-8") from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise DgmPyroError(f"{p}: the caption file is empty; write one prompt per line")
        prompts += from_file
    return prompts if texts or text_file is not None else None


@cli.command(cls=SampleCommand)
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--label", type=int, default=None, help="Class to generate (label-conditioned data); default: all.")
@click.option("--text", "texts", multiple=True, metavar="PROMPT",
              help="A text description to generate from (text-conditioned runs; repeat for several); default: the "
                   "first 8 test captions.")
@click.option("--text-file", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 file of prompts, one per line (text-conditioned runs).")
@click.option("--condition", type=click.Path(dir_okay=False), default=None,
              help=".npz with 'y' (N, y_dim) conditions, or 'images' whose given quadrants are kept.")
@click.option("--num", type=click.IntRange(min=1, max=1000), default=8, show_default=True, help="Samples per condition.")
@click.option("--mode", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="Decoder mean E[x|y,z] or a draw x ~ p(x|y,z).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output .png grid (image data) or .npz; default RUN/samples.png or RUN/samples.npz.")
@seed_option
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@device_option
def sample(run_dir: str, label: Optional[int], texts: tuple[str, ...], text_file: Optional[str],
           condition: Optional[str], num: int, mode: str, out: Optional[str], seed: int, json_out: bool,
           device: str, **model_options: Any) -> None:
    """Generate from the conditional prior for a new condition or text description (seed P1.8).

    Models may add options of their own (listed last, each with the model whose runs take it)."""
    from dgm_pyro.checkpoint import atomic_replace
    from dgm_pyro.plotting import save_sample_grid

    prompts = _read_prompts(texts, text_file)
    run = load_for(run_dir, "sample", device)
    options = model_sample_settings(click.get_current_context(), run.kind)
    ds = run.dataset
    out_path = Path(out) if out else run.path / ("samples.png" if ds.image_shape else "samples.npz")
    if out_path.suffix not in (".png", ".npz"):
        raise DgmPyroError(f"--out must end in .png or .npz; got '{out_path.name}'")
    if out_path.suffix == ".png" and not ds.image_shape:
        raise DgmPyroError(f"dataset '{ds.name}' is not images; use --out FILE.npz")
    if not out_path.parent.is_dir():
        raise DgmPyroError(f"{out_path.parent}: no such directory for --out")
    if ds.condition == "text" and prompts is None:
        from dgm_pyro.runs.cvae import default_prompts

        prompts = default_prompts(ds)
    cond = _read_condition(condition, ds) if condition else None
    x, y = run.kind.sample(run, label=label, condition=cond, num=num, mean=mode == "mean", seed=seed, texts=prompts,
                           **options)
    if out_path.suffix == ".png":
        # the default conditions of quadrant completion are the first test images: show their truth
        truth = ds.splits["test"][0][:x.shape[0]] if ds.condition == "quadrant" and cond is None else None
        save_sample_grid(x, y, ds, out_path, truth=truth,
                         titles=None if prompts is None else [f"\u201c{p}\u201d" for p in prompts])
    else:
        import numpy as np

        arrays = {"x": x.numpy(), **({"text": np.array(prompts)} if prompts else {"y": y.numpy()})}
        atomic_replace(out_path, lambda f: np.savez(f, **arrays))
    info = {"out": str(out_path), "conditions": int(x.shape[0]), "per_condition": num, "mode": mode, "seed": seed,
            **({"prompts": prompts} if prompts else {})}
    if json_out:
        emit_json(info)
        return
    click.echo(f"{x.shape[0]} condition(s) x {num} samples ({mode})")
    report_files([out_path])


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--particles", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Importance samples K for the NLL (0 skips it).")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Draws per datapoint for the mutual information and the aggregate KL.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="B of the minibatch MI estimator (ceiling log B).")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@seed_option
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@device_option
def diagnose(run_dir: str, particles: int, samples: int, batch_size: int, split: str, seed: int,
             json_out: bool, device: str) -> None:
    """Posterior-collapse report of a trained run: NLL, KL, mutual information, aggregate KL, active units."""
    run = load_for(run_dir, "diagnose", device)
    report = run.kind.diagnose(run, particles=particles, split=split, seed=seed, num_samples=samples,
                               minibatch_size=batch_size)
    if json_out:
        emit_json(report.to_dict())
        return
    given = "conditional on the label" if report.conditional else "unconditional"
    click.echo(f"posterior-collapse report, {split} split ({given}), nats per datapoint:")
    click.echo(str(report))
    report_files(report.extra["files"])


cli.add_command(forecast)
cli.add_command(backtest_command())


@cli.command()
@click.option("--json", "json_out", is_flag=True, help="Print only JSON.")
@runtime_options
def datasets(json_out: bool) -> None:
    """List the built-in datasets and the file formats accepted by --dataset."""
    from dgm_pyro.data import BUILTIN_DATASETS
    from dgm_pyro.data.graph_files import GRAPH_DATASETS

    info = dict(BUILTIN_DATASETS)
    info["npz:PATH"] = ("your .npz: array x (N, D) or (N, H, W), optional y (N,) labels or (N, K) covariates, or "
                        "text (N,) captions")
    info["idx:DIR"] = "MNIST-style IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, optional t10k-*"
    info.update({f"{k} (graph-ssm)": v for k, v in GRAPH_DATASETS.items()})
    if json_out:
        emit_json(info)
        return
    width = max(map(len, info))
    for name, desc in info.items():
        click.echo(f"{name:<{width}}  {desc}")


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point. A rank of a torchrun job leaves without Python's finalisation
    (:func:`dgm_pyro.distributed.exit_process`: gloo's threads can otherwise abort it at exit)."""
    from dgm_pyro import distributed as D
    from dgm_pyro.device import keep_freed_memory

    keep_freed_memory()  # training re-allocates the same large tensors every step
    if not D.launched():
        cli.main(args=argv, prog_name="dgm-pyro")
        return
    try:
        cli.main(args=argv, prog_name="dgm-pyro")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    D.exit_process(code)


if __name__ == "__main__":
    main()
