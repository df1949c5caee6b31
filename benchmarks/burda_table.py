"""Burda, Grosse and Salakhutdinov (2016), Table 1 with dgm-pyro's IWELBO (issue 30): VAE and IWAE on dynamically
binarised MNIST at a stated budget of passes, resumable from its run folders.

    python benchmarks/burda_table.py run --out /work/burda --seeds 0 1 --epochs 100      # hours on one thread
    python benchmarks/burda_table.py table --out /work/burda --seeds 0 1 --json docs/results/burda_table.json

Every row is Burda et al.'s architecture (one stochastic layer of 50 units, deterministic layers 200-200 tanh in the
encoder and the decoder, Bernoulli decoder, ``mnist-unconditional`` binarised dynamically, batch 20, Adam) trained
with ``--lr-schedule burda`` (3^i passes at 1e-3 * 10^(-i/7): the first ``--epochs`` passes of their 3,280) and no
early stopping:

- ``vae``: the ELBO (k = 1); ``iwae5``, ``iwae50``: IWELBO with k = 5, 50; ``dreg50``: IWELBO with k = 50 and
  doubly-reparameterised gradients (Tucker et al. 2019).

``run`` trains each (row, seed) into ``OUT/ROW-sS`` (``dgm-pyro train``; an interrupted folder is resumed with
``--resume``, a finished one with fewer epochs than ``--epochs`` is extended), then scores it as Burda et al. do:
the test log-likelihood by importance sampling with k = 5000 samples from the encoder (``dgm-pyro evaluate
--method is --particles 5000``) and the active units on the test split (Cov_x E_q[z_u] > 0.01, as ``dgm-pyro
diagnose`` counts them). ``table``
prints the test NLL, the active units, the passes and the training wall time of each row, mean over the seeds done, beside
Table 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import resumable_command  # noqa: E402

from dgm_pyro.training import read_metrics  # noqa: E402

#: Burda et al. (2016) Table 1, MNIST, one stochastic layer: test NLL (k = 5000); DReG is not in it
TABLE_1 = {"vae": 86.76, "iwae5": 85.54, "iwae50": 84.78, "dreg50": None}
ROWS = {"vae": ("elbo", 1), "iwae5": ("iwae", 5), "iwae50": ("iwae", 50), "dreg50": ("dreg", 50)}
EVAL_PARTICLES = 5000


def train_command(out: Path, row: str, seed: int, epochs: int) -> list[str]:
    objective, k = ROWS[row]
    return ["dgm-pyro", "train", "cvae", "--dataset", "mnist-unconditional", "--hidden", "200,200", "--latent-dim",
            "50", "--activation", "tanh", "--objective", objective, "--particles-train", str(k), "--batch-size", "20",
            "--lr-schedule", "burda", "--epochs", str(epochs), "--patience", str(epochs), "--particles", "1",
            "--seed", str(seed), "--threads", "1", "--quiet", "--out", str(out), "--name", f"{row}-s{seed}"]


def _evaluation(folder: Path, particles: int = EVAL_PARTICLES) -> Path:
    return folder / f"evaluation-test-is-K{particles}.json"


def run(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for row in args.rows:
            folder = args.out / f"{row}-s{seed}"
            cmd = resumable_command(folder, train_command(args.out, row, seed, args.epochs), args.epochs)
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            trained = len(read_metrics(folder / "metrics.csv"))
            ev = _evaluation(folder, args.eval_particles)
            previous = json.loads(ev.read_text()) if ev.exists() else {}
            if "active_units" in previous and previous.get("epochs_trained") == trained:
                continue
            print(f"evaluating {folder.name} ({trained} epochs)", flush=True)
            out = subprocess.run(["dgm-pyro", "evaluate", str(folder), "--method", "is", "--particles",
                                  str(args.eval_particles), "--seed", "0", "--threads", "1", "--json"], check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            result = json.loads(out)
            result["epochs_trained"] = trained
            result["active_units"] = active_units_of(folder)
            ev.write_text(json.dumps(result))  # under this benchmark's name, whichever file evaluate chose


def active_units_of(folder: Path) -> int:
    """Burda et al.'s active units on the test split: Cov_x E_q[z_u | x] > 0.01 (``dgm-pyro diagnose`` reports the
    same number, beside mutual-information estimates that cost minutes at 10,000 images)."""
    import torch

    from dgm_pyro.diagnostics import active_units, encoder_posteriors
    from dgm_pyro.runs import load_run

    torch.set_num_threads(1)
    run = load_run(folder)
    q, _ = encoder_posteriors(run.module.model, run.module.guide, *run.dataset.splits["test"])
    return active_units(q)[0]


def table(args: argparse.Namespace) -> None:
    raw = {}
    print(f"| row | Table 1 NLL | dgm-pyro NLL (k = {args.eval_particles}) | minus Table 1 | active units | "
          "passes | training minutes (wall) | k-hat > 0.7 | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        done = {}
        for seed in args.seeds:
            folder = args.out / f"{row}-s{seed}"
            ev_path = _evaluation(folder, args.eval_particles)
            if not ev_path.exists():
                continue
            ev = json.loads(ev_path.read_text())
            metrics = read_metrics(folder / "metrics.csv")
            khat = ev.get("khat_frac_above_0.7")  # None where K is too small for PSIS
            done[seed] = {"nll": ev["nll"], "stderr": ev["log_evidence_stderr"],
                          "khat": float("nan") if khat is None else khat,
                          "active_units": ev["active_units"], "epochs": len(metrics),
                          "train_minutes": sum(float(m["train_seconds"]) for m in metrics) / 60,
                          "command": " ".join(train_command(Path("RUNS"), row, seed, len(metrics)))}
        raw[row] = done
        if not done:
            continue
        mean = {k: statistics.mean(r[k] for r in done.values()) for k in ("nll", "active_units", "epochs",
                                                                        "train_minutes", "khat")}
        ref = TABLE_1[row]
        gap = f"{mean['nll'] - ref:+.2f}" if ref else "n/a"
        print(f"| {row} | {ref or 'n/a'} | {mean['nll']:.2f} | {gap} | {mean['active_units']:.1f} | "
              f"{mean['epochs']:.0f} | {mean['train_minutes']:.0f} | {100 * mean['khat']:.1f}% | "
              f"{', '.join(map(str, done))} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"table_1": TABLE_1, "eval_particles": args.eval_particles,
                                               "rows": raw}, indent=1))
        print(f"wrote {args.json}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--out", type=Path, required=True, help="the folder of the run folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--epochs", type=int, default=100, help="passes over the 50,000 training images (the budget)")
    ap.add_argument("--eval-particles", type=int, default=EVAL_PARTICLES, help="k of the test log-likelihood")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    (run if args.what == "run" else table)(args)


if __name__ == "__main__":
    main()
