"""Posterior collapse on class-conditional digits: the autoregressive decoder against the MLP decoder,
and the remedies of seed P3.5 and beyond. For each decoder and remedy, several seeds; the test NLL
(importance-sampled), E[KL(q(z|x,y) || p(z))], the mutual information I(x; z | y) over the test set and
the active units, from ``CVAEKind.diagnose``. Writes a Markdown table and a plot.
``--dataset digits-unconditional`` runs the plain VAE instead (MI is then I(x; z)).

    python benchmarks/posterior_collapse.py --seeds 0 1 2 --particles 1000 --jobs 2 \\
        --plot docs/posterior_collapse.png --json docs/results/posterior_collapse.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd  # noqa: E402

# A CVAE with a standard-normal prior (so that collapse means q(z|x,y) = N(0, I)) and wide networks; the
# same settings for both decoders: at most 100 epochs of 10 steps, early stopping with patience 30 (the MLP
# decoder's collapse is transient at this learning rate and patience 10 stops it before it recovers).
BASE = dict(objective="elbo", dataset="digits", prior="standard", hidden_dims=[512, 512], lr=3e-3, epochs=100, patience=30,
            latent_dim=8)
REMEDIES = {
    "vanilla ELBO": {},
    "linear annealing (0 to 1 over 300 steps)": {"anneal": "linear:0:300"},
    "cyclical annealing (4 cycles, R=0.5)": {"anneal": "cyclical:4:0.5"},
    "beta = 0.2": {"anneal": "constant:0.2"},
    "beta = 0.5": {"anneal": "constant:0.5"},
    "free bits (0.5 nats/dim)": {"objective": "free-bits", "free_bits": 0.5},
    "decoder input dropout 0.5": {"decoder_dropout": 0.5},
    "aggressive": {"aggressive": True},
    "aggressive + linear annealing": {"aggressive": True, "anneal": "linear:0:300"},
    "CS-ELBO lam=0.5": {"objective": "cs", "lam": 0.5},
    "CS-ELBO lam=1": {"objective": "cs", "lam": 1.0},
    "CS-ELBO lam=2": {"objective": "cs", "lam": 2.0},
}
DECODERS = ("autoregressive", "mlp")


def _one(job: tuple[str, str, int, int, str, dict]) -> dict:
    decoder, remedy, seed, particles, root, base = job
    import torch

    torch.set_num_threads(1)
    from dgm_pyro.runs import TrainConfig
    from dgm_pyro.runs import load_run, train_run

    options = dict(REMEDIES[remedy])
    if decoder == "mlp" and "decoder_dropout" in options:
        return {"decoder": decoder, "remedy": remedy, "seed": seed, "skipped": "no autoregressive input to drop"}
    config = TrainConfig(**base, **options, decoder=decoder, seed=seed)
    run_dir = Path(root) / f"{decoder}-{remedy.replace(' ', '_').replace('/', '_')}-{seed}"
    start = time.perf_counter()
    summary = train_run(config, run_dir)
    run = load_run(run_dir)
    report = run.kind.diagnose(run, particles=particles, seed=seed)
    return {"decoder": decoder, "remedy": remedy, "seed": seed, "nll": report.nll, "elbo": report.elbo,
            "kl": report.kl, "mi": report.mutual_information, "au": report.active_units,
            "epochs": summary["epochs_run"], "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    ap.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    ap.add_argument("--remedies", nargs="+", default=list(REMEDIES), choices=list(REMEDIES))
    ap.add_argument("--lr", type=float, default=BASE["lr"], help="learning rate (an ablation of BASE)")
    ap.add_argument("--dataset", default=BASE["dataset"], help="digits (class-conditional) or digits-unconditional")
    ap.add_argument("--epochs", type=int, default=BASE["epochs"])
    ap.add_argument("--patience", type=int, default=BASE["patience"], help="early-stopping patience (epochs)")
    ap.add_argument("--hidden", type=int, nargs="+", default=BASE["hidden_dims"])
    ap.add_argument("--latent-dim", type=int, default=BASE["latent_dim"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--replot", type=Path, default=None, help="only redraw --plot from a JSON written by --json")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(args.replot.read_text())
        _plot(saved["results"], args.plot, args.decoders, args.remedies, saved["base"]["dataset"])
        return
    root = tempfile.mkdtemp(prefix="dgm-collapse-")
    base = {**BASE, "lr": args.lr, "dataset": args.dataset, "epochs": args.epochs, "patience": args.patience,
            "latent_dim": args.latent_dim, "hidden_dims": args.hidden}
    jobs = [(d, r, s, args.particles, root, base) for d in args.decoders for r in args.remedies for s in args.seeds]
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(_one, jobs):
            results.append(res)
            if "skipped" not in res:
                print(f"{res['decoder']:>14} | {res['remedy']:<42} seed {res['seed']}: NLL {res['nll']:.2f} "
                      f"KL {res['kl']:.2f} MI {res['mi']:.2f} AU {res['au']} ({res['seconds']:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"base": base, "particles": args.particles, "results": results}, indent=1))
    for decoder in args.decoders:
        print(f"\n{decoder} decoder (test split, {len(args.seeds)} seeds, K={args.particles})\n")
        mi_column = _mi_name(args.dataset).replace("|", "\\|")  # a pipe inside a Markdown table cell
        print(f"| remedy | NLL (IS) | KL | MI {mi_column} | AU (of {args.latent_dim}) | epochs |")
        print("|---|---|---|---|---|---|")
        for remedy in args.remedies:
            rs = [r for r in results if r["decoder"] == decoder and r["remedy"] == remedy and "skipped" not in r]
            if not rs:
                print(f"| {remedy} | n/a | n/a | n/a | n/a | n/a |")
                continue
            print(f"| {remedy} | {mean_sd([r['nll'] for r in rs])} | {mean_sd([r['kl'] for r in rs])} | "
                  f"{mean_sd([r['mi'] for r in rs])} | {mean_sd([float(r['au']) for r in rs])} | "
                  f"{statistics.fmean(r['epochs'] for r in rs):.0f} |")
    if args.plot:
        _plot(results, args.plot, args.decoders, args.remedies, args.dataset)


def _mi_name(dataset: str) -> str:
    """The information the benchmark measures: conditional on the label unless the data has none."""
    return "I(x;z)" if dataset == "digits-unconditional" else "I(x;z|y)"


def _plot(results: list[dict], path: Path, decoders, remedies, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(decoders), figsize=(6.5 * len(decoders), 6), sharey=True)
    axes = axes if len(decoders) > 1 else [axes]
    for ax, decoder in zip(axes, decoders):
        for i, remedy in enumerate(remedies):
            rs = [r for r in results if r["decoder"] == decoder and r["remedy"] == remedy and "skipped" not in r]
            if rs:
                ax.scatter([r["mi"] for r in rs], [r["nll"] for r in rs], color=f"C{i % 10}",
                           marker="o" if i < 10 else "s", label=remedy)
        ax.set_title(f"{decoder} decoder")
        ax.set_xlabel(f"{_mi_name(dataset)}, test (nats)")
    axes[0].set_ylabel("test NLL, importance-sampled (nats)")
    handles, labels = axes[0].get_legend_handles_labels()  # the first decoder has every remedy
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)  # below the panels, over no point
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
