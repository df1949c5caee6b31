"""What every ``dgm-pyro`` command shares: its runtime options (``--threads``, ``--quiet``, ``--device``,
``--seed``) and its output (JSON on stdout, the evaluation table, the list of files written)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import click

from dgm_pyro.checkpoint import jsonable

__all__ = ["without_per_datapoint", "emit_json", "fmt", "print_evaluation", "progress_enabled", "size", "size_of",
           "report_files", "EchoHandler", "runtime_options", "seed_option", "device_option", "load_for"]


def without_per_datapoint(ev: dict[str, Any]) -> dict[str, Any]:
    """An evaluation as printed: its per-datapoint values stay in the file that ``ev["file"]`` names."""
    return {k: v for k, v in ev.items() if k != "per_datapoint"}


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(jsonable(obj), indent=2, sort_keys=True))


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.3f}"
    return str(v)


def print_evaluation(ev: dict[str, Any]) -> None:
    from dgm_pyro.runs.dataset_models import ESTIMATORS

    rows = [
        ("datapoints", ev["num_datapoints"]),
        ("particles K", ev["num_particles"]),
        ("ELBO (nats/datapoint)", ev["elbo"]),
        ("log-likelihood, " + ESTIMATORS[ev.get("method", "is")], ev["log_evidence"]),
        ("  standard error", ev["log_evidence_stderr"]),
        ("ESS mean / min", f"{fmt(ev['ess_mean'])} / {fmt(ev['ess_min'])}"),
        ("PSIS k-hat max", ev["khat_max"]),
        ("  share with k-hat > 0.7", ev["khat_frac_above_0.7"]),
    ]
    if ev.get("refined", {}).get("datapoints"):
        rows.insert(5, ("  estimated again (k-hat > 0.7)", f"{ev['refined']['datapoints']} datapoints, "
                                                            f"{ev['refined']['rounds']} adapted rounds"))
    if "true_log_likelihood" in ev:
        rows.append(("true log-likelihood (generator)", ev["true_log_likelihood"]))
    if "baseline_ncll" in ev:
        rows += [("CVAE negative CLL (importance-sampled)", ev["cvae_ncll"]),
                 ("CVAE negative ELBO", ev["cvae_neg_elbo"]),
                 ("NN baseline negative CLL", ev["baseline_ncll"])]
    width = max(len(r[0]) for r in rows)
    click.echo(f"{ev['split']} metrics on {ev['dataset']}:")
    for name, v in rows:
        click.echo(f"  {name:<{width}}  {fmt(v)}")
    frac = ev.get("khat_frac_above_0.7")
    if frac:
        why = ("(overconfident encoder): 'dgm-pyro evaluate RUN --method adaptive' adapts the proposal per datapoint"
               if ev.get("method", "is") == "is" else "even with the adapted proposal: raise --particles, or compare "
               "with --method ais")
        click.echo(f"  note: k-hat > 0.7 for {frac:.1%} of datapoints; their importance-sampled values are unreliable "
                   f"{why}; treat the log-likelihood as a lower estimate.")


def progress_enabled(json_out: bool) -> bool:
    """A tqdm bar where stderr is a terminal (and not --quiet/--json); otherwise progress comes as log lines."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return not json_out and not quiet and sys.stderr.isatty()


def size(path: Path) -> str:
    return size_of(path.stat().st_size)


def size_of(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def report_files(paths: list[Any]) -> None:
    """``wrote PATH (SIZE)`` for each file written, ``wrote DIR/ (N files, SIZE)`` for each folder."""
    for p in map(Path, paths):
        if p.is_file():
            click.echo(f"wrote {p} ({size(p)})")
        elif p.is_dir():
            files = [f for f in p.rglob("*") if f.is_file()]
            total = sum(f.stat().st_size for f in files)
            click.echo(f"wrote {p}/ ({len(files)} files, {size_of(total)})")


class EchoHandler(logging.Handler):
    """Library log records (``dgm_pyro.*``) as lines on stderr: progress and phases at INFO, warnings prefixed."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        click.echo(("warning: " + msg) if record.levelno >= logging.WARNING else msg, err=True)


def _set_threads(ctx: click.Context, param: click.Parameter, value: Optional[int]) -> Optional[int]:
    from dgm_pyro.device import set_threads

    set_threads(value)
    return value


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        root = ctx.find_root()
        root.obj["quiet"] = True
        root.obj["handler"].setLevel(logging.WARNING)
    return value


def runtime_options(f: Any) -> Any:
    """``--threads`` and ``--quiet``, on every command."""
    f = click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_set_quiet,
                     help="No progress or phase lines on stderr (warnings, errors and results still print).")(f)
    return click.option("--threads", type=click.IntRange(min=0), default=None, metavar="N", expose_value=False,
                        callback=_set_threads,
                        help="CPU threads for torch in this process; 0: torch's default (one per core). Default: "
                             "$OMP_NUM_THREADS if set, else 1, the fast choice when the cores are shared "
                             "(docs/cli.md#threads).")(f)


#: ``--seed`` of every command that draws random numbers
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                            help="Seed of every random draw of the command: the same seed gives the same numbers.")


def device_option(f: Any) -> Any:
    f = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                     help="Where to run: auto picks CUDA when a GPU is present.")(f)
    return runtime_options(f)


def load_for(run_dir: str, command: str, device: str) -> Any:
    """Load a run folder for ``command``, refusing runs whose model does not support it."""
    from dgm_pyro.device import resolve_device
    from dgm_pyro.runs import load_run

    return load_run(run_dir, device=resolve_device(device), command=command)
