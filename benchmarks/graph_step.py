"""Seconds per GraphSSM training step against a reference checkout of dgm-pyro, measured in the same run.

For each sequence length T, a dynamic SBM with N nodes is generated and one SVI step (Trace_ELBO, Adam)
of the default GraphSSM is timed in a fresh one-thread process for this checkout (with the allocator setting
the ``dgm-pyro`` command makes, :func:`dgm_pyro.device.keep_freed_memory`, and without it) and for the
reference (a git worktree, for example of main before a change), alternately, ``--repeats`` times; the
table gives the median seconds per step of each and the ratios.

    git worktree add /tmp/dgm-reference <commit>
    python benchmarks/graph_step.py --reference /tmp/dgm-reference --lengths 30 90 270 --nodes 200 \\
        --json docs/results/graph_step.json

``--write-csv DIR`` instead writes the dynamic SBM of the first length and ``--nodes`` (seed 0) as a CSV folder
(``edges.csv``, ``nodes.csv``) for timing the default ``dgm-pyro train graph-ssm --dataset csv:DIR``:

    python benchmarks/graph_step.py --write-csv g90 --lengths 90 --nodes 180
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_TIMER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import pyro, torch
torch.set_num_threads(1)
from pyro.infer import SVI, Trace_ELBO
from dgm_pyro.data import dynamic_sbm
from dgm_pyro.models import GraphSSM
from dgm_pyro.training import deterministic_algorithms
num_t, n, edge, steps = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if sys.argv[6] == "keep":  # the allocator setting the dgm-pyro command makes at start
    from dgm_pyro.device import keep_freed_memory
    assert keep_freed_memory()
seq = dynamic_sbm(num_nodes=n, num_steps=num_t, seed=0)
pyro.set_rng_seed(0)
m = GraphSSM(n, seq.x.shape[-1], feature_shift=seq.x.mean((0, 1)), feature_scale=seq.x.std((0, 1)),
             edge_likelihood=edge)
svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
ctx = deterministic_algorithms(); ctx.__enter__()  # as dgm-pyro train graph-ssm runs
svi.step(seq.x, seq.edges)  # warm-up
t0 = time.perf_counter()
for _ in range(steps):
    svi.step(seq.x, seq.edges)
print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / steps}))
"""


def _time(root: Path, num_t: int, n: int, edge: str, steps: int, malloc: str = "default") -> float:
    out = subprocess.run([sys.executable, "-c", _TIMER, str(root), str(num_t), str(n), edge, str(steps), malloc],
                         capture_output=True, text=True, check=True, cwd=root,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]


def write_csv(folder: Path, n: int, num_t: int) -> None:
    """The seed-0 dynamic SBM with ``n`` nodes and ``num_t`` snapshots as ``edges.csv`` and ``nodes.csv``."""
    from dgm_pyro.data import dynamic_sbm

    seq = dynamic_sbm(num_nodes=n, num_steps=num_t, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    edges = ["src,dst,time"] + [f"{u},{v},{t}" for t, e in enumerate(seq.edges) for u, v in e.T.tolist()]
    (folder / "edges.csv").write_text("\n".join(edges) + "\n")
    names = ",".join(f"f{i}" for i in range(seq.x.shape[-1]))
    nodes = [f"node,{names},time"] + [f"{v}," + ",".join(f"{x:.5f}" for x in seq.x[t, v].tolist()) + f",{t}"
                                      for t in range(num_t) for v in range(n)]
    (folder / "nodes.csv").write_text("\n".join(nodes) + "\n")
    print(f"wrote {folder}: {n} nodes, {num_t} snapshots, "
          f"{sum(e.shape[1] for e in seq.edges) / num_t:.0f} edges per snapshot")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", help="a checkout of the reference code (git worktree)")
    ap.add_argument("--write-csv", metavar="DIR", help="write the first length's graph as a CSV folder and stop")
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 90, 270])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--edge-likelihood", default="dense", choices=["dense", "sparse"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.write_csv:
        write_csv(Path(args.write_csv), args.nodes, args.lengths[0])
        return
    if not args.reference:
        ap.error("--reference is required (or --write-csv)")
    here, ref = Path(__file__).resolve().parents[1], Path(args.reference).resolve()
    rows = []
    print("| T | N | this checkout, as the CLI runs (s/step) | this checkout, default malloc (s/step) | "
          "reference (s/step) | speed-up | speed-up, default malloc |")
    print("|---|---|---|---|---|---|---|")
    for num_t in args.lengths:
        cli, mine, theirs = [], [], []
        for _ in range(args.repeats):
            cli.append(_time(here, num_t, args.nodes, args.edge_likelihood, args.steps, "keep"))
            mine.append(_time(here, num_t, args.nodes, args.edge_likelihood, args.steps))
            theirs.append(_time(ref, num_t, args.nodes, args.edge_likelihood, args.steps))
        c, a, b = statistics.median(cli), statistics.median(mine), statistics.median(theirs)
        rows.append({"T": num_t, "N": args.nodes, "seconds_per_step": c, "seconds_per_step_default_malloc": a,
                     "reference_seconds_per_step": b, "speedup": b / c, "speedup_default_malloc": b / a,
                     "runs": {"this": cli, "this_default_malloc": mine, "reference": theirs}})
        print(f"| {num_t} | {args.nodes} | {c:.3f} | {a:.3f} | {b:.3f} | {b / c:.2f}x | {b / a:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "reference": str(ref),
                                               "edge_likelihood": args.edge_likelihood, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
