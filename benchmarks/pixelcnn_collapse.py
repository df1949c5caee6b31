"""Posterior collapse with a gated PixelCNN decoder on dynamically binarised MNIST (issue 30, seed P3.4-P3.5): the
plain ELBO, the remedies and the PixelCNN without z, at a stated budget of passes, resumable from its run folders.

    python benchmarks/pixelcnn_collapse.py run --out /work/pc --rows elbo free-bits --seeds 0 --epochs 12
    python benchmarks/pixelcnn_collapse.py table --out /work/pc --rows elbo free-bits --seeds 0 \\
        --json docs/results/pixelcnn_collapse.json --plot docs/pixelcnn_collapse.png
    python benchmarks/pixelcnn_collapse.py samples --out /work/pc --seeds 0 --png docs/pixelcnn_samples.png

Every row is ``dgm-pyro train cvae --dataset mnist-unconditional --decoder pixelcnn`` (16 feature maps, 5 gated
layers, latent 8: the defaults, sized for CPUs) with ``--track-collapse`` (validation KL, mutual information and
active units after every epoch), a validation ELBO of one particle and no evaluation at the end (``--particles 0``:
the default one, K = 1000 on all 10,000 test images, is hours for this decoder), plus the row's options
(``ROWS``).

``run`` trains each (row, seed) into ``OUT/ROW-sS`` (an interrupted folder is resumed, a finished one with fewer
epochs than ``--epochs`` is extended), then scores its best epoch on the first ``--test-images`` test images: the
NLL by importance sampling from the encoder with ``--particles`` draws (chunked as ``dgm-pyro evaluate`` does for
this decoder), its share of PSIS k-hat above 0.7, and the KL, mutual information and active units
(``dgm_pyro.diagnostics.collapse_report``). The whole test set at K = 1000 is 100 times the default subset's
cost (7 to 10 CPU hours a row here: 500 images at K = 1000 took 19 to 29 minutes of one core, two runs at a
time), which is why the subset and K are options and are printed with the table.
``table`` prints, per row, the means over the seeds done, and plots the validation KL and ELBO per epoch. With
``--baseline ROW`` it also prints each row's lead over that row on the same seed, paired image by image (its NLL
minus the row's, with the standard error over the images), from the per-image evidence each score keeps.
``samples`` draws a row of samples from each row's run on the first seed, into one figure. ``widths`` splits the
scored test images of each run by the width of their posterior (wider than ``--ratio`` prior standard deviations
in some dimension, or not): the CS-ELBO's tail of wide posteriors and how much of its -ELBO it carries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, resumable_command  # noqa: E402

from dgm_pyro.diagnostics import WIDE_RATIO  # noqa: E402
from dgm_pyro.training import read_metrics  # noqa: E402

#: the remedies of seed P3.5 and the reference, as options of ``dgm-pyro train cvae``
ROWS = {
    "elbo": ["--objective", "elbo"],
    "free-bits": ["--objective", "free-bits", "--free-bits", "1.0"],
    "anneal": ["--objective", "elbo", "--anneal", "linear:0:5000"],
    "beta": ["--objective", "elbo", "--anneal", "constant:0.2"],
    "aggressive": ["--objective", "elbo", "--aggressive"],
    "cs": ["--objective", "cs", "--lam", "1.0"],
    "restricted": ["--objective", "elbo", "--pixelcnn-layers", "1"],
    "no-z": ["--objective", "elbo", "--no-decoder-z"],
    # z as a map over the image (PixelVAE's decoder), which a restricted receptive field needs to use z
    "spatial": ["--objective", "elbo", "--pixelcnn-conditioning", "spatial"],
    "restricted-spatial": ["--objective", "elbo", "--pixelcnn-layers", "1", "--pixelcnn-conditioning", "spatial"],
    # their references without z keep a learned map: what the position alone is worth
    "no-z-spatial": ["--objective", "elbo", "--no-decoder-z", "--pixelcnn-conditioning", "spatial"],
    "no-z-restricted-spatial": ["--objective", "elbo", "--no-decoder-z", "--pixelcnn-layers", "1",
                                "--pixelcnn-conditioning", "spatial"],
    # the remedies with z as a map, for a budget of 4 passes (2,000 steps: the annealing ends at 80 % of it, as
    # linear:0:5000 does in 12 passes)
    "free-bits-spatial": ["--objective", "free-bits", "--free-bits", "1.0", "--pixelcnn-conditioning", "spatial"],
    "anneal-spatial": ["--objective", "elbo", "--anneal", "linear:0:1600", "--pixelcnn-conditioning", "spatial"],
    "beta-spatial": ["--objective", "elbo", "--anneal", "constant:0.2", "--pixelcnn-conditioning", "spatial"],
    "cs-spatial": ["--objective", "cs", "--lam", "1.0", "--pixelcnn-conditioning", "spatial"],
}


def train_command(out: Path, row: str, seed: int, epochs: int) -> list[str]:
    return ["dgm-pyro", "train", "cvae", "--dataset", "mnist-unconditional", "--decoder", "pixelcnn",
            "--track-collapse", "--valid-particles", "1", "--particles", "0", *ROWS[row], "--epochs", str(epochs),
            "--seed", str(seed),
            "--threads", "1", "--quiet", "--out", str(out), "--name", f"{row}-s{seed}"]


def score_path(folder: Path, images: int, particles: int) -> Path:
    return folder / f"collapse-test-N{images}-K{particles}.json"


def evidence_on_test_images(folder: Path, images: int, particles: int):
    """(run, x, y, the importance-sampled evidence of each of the first ``images`` test images): the draws every
    score of the run shares (seed 0)."""
    import torch

    from dgm_pyro.infer.evidence import log_evidence_blocks
    from dgm_pyro.runs import load_run

    torch.set_num_threads(1)
    torch.manual_seed(0)
    run = load_run(folder)
    x, y = (t[:images] for t in run.dataset.splits["test"])
    res = log_evidence_blocks(run.module.model, run.module.guide, x, y, num_particles=particles,
                              max_elements=run.kind.chunk_elements(run.config), warn=False)
    return run, x, y, res


def score(folder: Path, images: int, particles: int) -> dict[str, Any]:
    """The best epoch's test NLL (IS, ``particles`` draws) and collapse measures on the first ``images`` test images."""
    from dgm_pyro.diagnostics import collapse_report
    from dgm_pyro.infer.evidence import KHAT_WARN

    run, x, y, res = evidence_on_test_images(folder, images, particles)
    report = collapse_report(run.module.model, run.module.guide, x, y, num_samples=10)
    return {"nll": -float(res.log_evidence.mean()), "nll_se_over_images": float(res.log_evidence.std() / images ** 0.5),
            "negative_elbo": -float(res.elbo.mean()), "khat_above_0.7": float((res.khat > KHAT_WARN).float().mean()),
            "kl": report.kl, "mutual_information": report.mutual_information, "active_units": report.active_units,
            "test_images": images, "particles": particles, "log_evidence": res.log_evidence.tolist()}


def run(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for row in args.rows:
            folder = args.out / f"{row}-s{seed}"
            cmd = resumable_command(folder, train_command(args.out, row, seed, args.epochs), args.epochs)
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            path = score_path(folder, args.test_images, args.particles)
            trained = len(read_metrics(folder / "metrics.csv"))
            if path.exists() and json.loads(path.read_text()).get("epochs_trained") == trained:
                continue
            print(f"scoring {folder.name} ({trained} epochs)", flush=True)
            result = score(folder, args.test_images, args.particles)
            result["epochs_trained"] = trained
            path.write_text(json.dumps(result))


def summarise(folder: Path, images: int, particles: int) -> dict[str, Any] | None:
    """One run: its score, the best epoch's validation measures and the training budget (None if not scored)."""
    path = score_path(folder, images, particles)
    metrics = read_metrics(folder / "metrics.csv")
    if not path.exists() or not metrics:
        return None
    best = max(metrics, key=lambda r: r["valid_elbo"])
    return {**json.loads(path.read_text()), "best_epoch": int(best["epoch"]), "valid_kl": best["valid_kl"],
            "valid_elbo": best["valid_elbo"], "valid_au": best["valid_au"],
            "train_minutes": sum(r["train_seconds"] for r in metrics) / 60,
            "curve": [(int(r["epoch"]), r["valid_kl"], r["valid_elbo"]) for r in metrics]}


def at_passes(out: Path, rows: list[str], seeds: list[int], passes: list[int]) -> dict[str, dict[str, Any]]:
    """Per row, the validation (ELBO, KL) after each number of ``passes`` (``cells``), averaged over the seeds whose
    run has trained that far (None where none has), and the ``seeds`` that have trained at least one pass: budgets
    compared at equal passes, whatever each row's total."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        curves = {s: c for s in seeds if (f := out / f"{row}-s{s}").is_dir() and (c := read_metrics(f / "metrics.csv"))}
        cells = []
        for n in passes:
            at = [c[n - 1] for c in curves.values() if len(c) >= n]
            cells.append((statistics.mean(r["valid_elbo"] for r in at), statistics.mean(r["valid_kl"] for r in at))
                         if at else None)
        if any(cells):
            found[row] = {"cells": cells, "seeds": list(curves)}
    return found


def paired_leads(raw: dict[str, dict[int, Any]], baseline: str) -> dict[str, dict[int, tuple[float, float]]]:
    """Per row and seed, its lead over the ``baseline`` row of the same seed: the mean over the test images of the
    baseline's NLL minus the row's, and the standard error of that mean. Both are scored on the same images, so the
    spread between easy and hard images cancels (scores without per-image values are left out)."""
    base = raw.get(baseline, {})
    leads: dict[str, dict[int, tuple[float, float]]] = {}
    for row, done in raw.items():
        if row == baseline:
            continue
        cells = {}
        for seed, r in done.items():
            b = base.get(seed)
            if b is None or "log_evidence" not in r or "log_evidence" not in b:
                continue
            diff = [a - c for a, c in zip(r["log_evidence"], b["log_evidence"], strict=True)]
            cells[seed] = (statistics.fmean(diff), statistics.stdev(diff) / len(diff) ** 0.5)
        if cells:
            leads[row] = cells
    return leads


def seed_cell(values: list[float]) -> str:
    """One seed's value, or the mean ± the standard deviation over several seeds."""
    return mean_sd(values) if len(values) > 1 else f"{values[0]:.2f}"


def table(args: argparse.Namespace) -> None:
    raw: dict[str, dict[int, Any]] = {}
    print(f"Test: the first {args.test_images} test images, importance sampling with K = {args.particles}; "
          "validation: all 10,000, at the best epoch (validation ELBO). Means over the seeds done, "
          "± the standard deviation over them where there are several.")
    print("| row | options | test NLL | test -ELBO | test KL | test MI | active units | valid KL | epochs | "
          "training minutes | k-hat > 0.7 | seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        done = {s: r for s in args.seeds if (r := summarise(args.out / f"{row}-s{s}", args.test_images,
                                                               args.particles)) is not None}
        for seed, r in done.items():
            r["command"] = " ".join(train_command(Path("RUNS"), row, seed, r["epochs_trained"]))
        raw[row] = done
        if not done:
            continue
        m = {k: statistics.mean(r[k] for r in done.values()) for k in (
            "nll", "negative_elbo", "kl", "mutual_information", "active_units", "valid_kl", "epochs_trained",
            "train_minutes", "khat_above_0.7")}
        mi = f"{m['mutual_information']:.2f}".replace("-0.00", "0.00")  # an estimate a hair below 0
        nll, kl = (seed_cell([r[k] for r in done.values()]) for k in ("nll", "kl"))
        print(f"| {row} | `{' '.join(ROWS[row])}` | {nll} | {m['negative_elbo']:.2f} | {kl} | "
              f"{mi} | {m['active_units']:.1f} | {m['valid_kl']:.2f} | "
              f"{m['epochs_trained']:.0f} | {m['train_minutes']:.0f} | {100 * m['khat_above_0.7']:.1f} % | "
              f"{', '.join(map(str, done))} |")
    passes = at_passes(args.out, args.rows, args.seeds, args.at_passes)
    if passes:
        print(f"\nEqual budgets: validation ELBO / KL after {', '.join(map(str, args.at_passes))} passes (means over "
              "the seeds trained that far, unfinished runs included)")
        print("| row | " + " | ".join(f"after {n}" for n in args.at_passes) + " | seeds |")
        print("|---|" + "---|" * (len(args.at_passes) + 1))
        for row, found in passes.items():
            print(f"| {row} | " + " | ".join("" if c is None else f"{c[0]:.2f} / {c[1]:.2f}" for c in found["cells"])
                  + f" | {', '.join(map(str, found['seeds']))} |")
    leads = paired_leads(raw, args.baseline) if args.baseline else {}
    if leads:
        print(f"\nLead over {args.baseline} of the same seed, paired image by image: its NLL minus the row's, "
              "± the standard error over the test images")
        print("| row | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
        print("|---|" + "---|" * len(args.seeds))
        for row, cells in leads.items():
            print(f"| {row} | " + " | ".join(f"{cells[s][0]:.2f} ± {cells[s][1]:.2f}" if s in cells else ""
                                             for s in args.seeds) + " |")
    if args.json:
        summary = {row: {s: {k: v for k, v in r.items() if k != "log_evidence"} for s, r in done.items()}
                   for row, done in raw.items()}
        Path(args.json).write_text(json.dumps({"test_images": args.test_images, "particles": args.particles,
                                               "rows": summary, "at_passes": {"passes": args.at_passes, "rows": passes},
                                               "baseline": args.baseline, "leads": leads}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(raw, Path(args.plot))
        print(f"wrote {args.plot}")


def plot(raw: dict[str, dict[int, Any]], path: Path) -> None:
    """Validation KL and ELBO per epoch, one line per (row, seed): a colour per row, a line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_elbo) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours, styles = plt.get_cmap("tab20").colors, ("-", "--", ":")
    for i, (row, seeds) in enumerate(raw.items()):
        for j, (seed, r) in enumerate(seeds.items()):
            epochs, kl, elbo = zip(*r["curve"])
            style = {"marker": ".", "color": colours[i % len(colours)], "ls": styles[j % len(styles)]}
            ax_kl.plot(epochs, kl, label=f"{row} (seed {seed})", **style)
            ax_elbo.plot(epochs, elbo, **style)
    ax_kl.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_kl.set(xlabel="epoch (pass over 50,000 images)", ylabel="validation KL (nats)", yscale="log")
    ax_elbo.set(xlabel="epoch (pass over 50,000 images)", ylabel="validation ELBO (nats)")
    fig.suptitle("PixelCNN decoder on binarised MNIST: collapse over training")
    fig.tight_layout()
    fig.legend(*ax_kl.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def split_by_width(folder: Path, images: int, particles: int, ratio: float) -> dict[str, Any]:
    """The score's test images split by the width of their posterior: those wider than ``ratio`` prior standard
    deviations in some dimension (``dgm_pyro.diagnostics.posterior_width_ratio``) and the others, each with its
    share, mean NLL, mean -ELBO - NLL (the slack of the ELBO), mean KL and share of k-hat above 0.7, at the draws of
    :func:`score`; and the share of the whole slack that the wide images carry."""
    import torch

    from dgm_pyro.diagnostics import encoder_posteriors, kl_per_datapoint, posterior_width_ratio
    from dgm_pyro.infer.evidence import KHAT_WARN

    run, x, y, res = evidence_on_test_images(folder, images, particles)
    with torch.no_grad():
        q, p = encoder_posteriors(run.module.model, run.module.guide, x, y)
        wide = posterior_width_ratio(q, p) > ratio
        kl, slack = kl_per_datapoint(q, p), res.log_evidence - res.elbo
    out: dict[str, Any] = {"test_images": images, "particles": particles, "ratio": ratio,
                           "slack_share_wide": float(slack[wide].sum() / slack.sum())}
    for name, part in (("wide", wide), ("other", ~wide)):
        out[name] = None if not part.any() else {
            "share": float(part.double().mean()), "nll": -float(res.log_evidence[part].mean()),
            "slack": float(slack[part].mean()), "kl": float(kl[part].mean()),
            "khat_above_0.7": float((res.khat[part] > KHAT_WARN).double().mean())}
    return out


def widths(args: argparse.Namespace) -> None:
    """Per run, :func:`split_by_width` as a table row (the CS-ELBO's tail of wide posteriors, docs/collapse.md)."""
    found: dict[str, Any] = {}
    print(f"The first {args.test_images} test images, K = {args.particles}; wide: a posterior wider than "
          f"{args.ratio:g} prior sd in some dimension. Cells: wide / other images.")
    print("| run | wide images | NLL | -ELBO - NLL | share of the whole -ELBO - NLL | KL | k-hat > 0.7 |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for row in args.rows:
            folder = args.out / f"{row}-s{seed}"
            if not (folder / "best.pt").is_file():
                continue
            r = found[folder.name] = split_by_width(folder, args.test_images, args.particles, args.ratio)

            def cell(key: str, percent: bool = False) -> str:
                return " / ".join("-" if r[n] is None else (f"{100 * r[n][key]:.0f} %" if percent else
                                                            f"{r[n][key]:.2f}") for n in ("wide", "other"))

            share = 0.0 if r["wide"] is None else r["wide"]["share"]
            print(f"| {folder.name} | {100 * share:.1f} % | {cell('nll')} | {cell('slack')} | "
                  f"{100 * r['slack_share_wide']:.0f} % | {cell('kl')} | {cell('khat_above_0.7', True)} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))
        print(f"wrote {args.json}")


def samples(args: argparse.Namespace) -> None:
    """One figure: a row of ``--num`` samples x ~ p(x|z), z ~ p(z) from the best epoch of each row's run on the
    first of ``--seeds`` (the draws of ``dgm-pyro sample RUN --mode sample --seed 0``)."""
    import torch

    from dgm_pyro.plotting import save_sample_grid
    from dgm_pyro.runs import load_run

    torch.set_num_threads(1)
    seed, drawn, titles, run = args.seeds[0], [], [], None
    for row in args.rows:
        folder = args.out / f"{row}-s{seed}"
        if not (folder / "best.pt").is_file():
            continue
        run = load_run(folder)
        x, y = run.kind.sample(run, num=args.num, mean=False, seed=0)
        drawn.append(x[0])
        titles.append(f"{row} (seed {seed}, {len(read_metrics(folder / 'metrics.csv'))} passes)")
        print(f"sampled {folder.name}", flush=True)
    if run is None:
        raise SystemExit(f"no trained run of {args.rows} with seed {seed} under {args.out}")
    save_sample_grid(torch.stack(drawn), y.expand(len(drawn), -1), run.dataset, args.png, titles=titles)
    print(f"wrote {args.png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table", "samples", "widths"])
    ap.add_argument("--out", type=Path, required=True, help="the folder of the run folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--epochs", type=int, default=12, help="passes over the 50,000 training images (the budget)")
    ap.add_argument("--test-images", type=int, default=500, help="the first N test images are scored")
    ap.add_argument("--particles", type=int, default=200, help="importance samples per test image")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--at-passes", type=int, nargs="*", default=[4, 6, 12],
                    help="validation ELBO and KL after these passes, every row (table)")
    ap.add_argument("--baseline", choices=list(ROWS), default=None,
                    help="also print each row's lead over this row, paired image by image (table)")
    ap.add_argument("--num", type=int, default=12, help="samples a row (samples)")
    ap.add_argument("--png", type=Path, default=Path("pixelcnn_samples.png"), help="the sample figure (samples)")
    ap.add_argument("--ratio", type=float, default=WIDE_RATIO,
                    help="a posterior this many prior sd wide in some dimension counts as wide (widths)")
    args = ap.parse_args()
    {"run": run, "table": table, "samples": samples, "widths": widths}[args.what](args)


if __name__ == "__main__":
    main()
