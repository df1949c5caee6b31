"""Seconds per GraphSSM training step against a reference checkout of dgm-pyro, measured in the same run.

For each sequence length T, a dynamic SBM with N nodes is generated and one SVI step (Trace_ELBO, Adam)
of the default GraphSSM is timed in a fresh one-thread process for this checkout and for the reference
(a git worktree, for example of main before a change), alternately, ``--repeats`` times; the table
gives the median seconds per step of each and their ratio.

    git worktree add /tmp/dgm-reference <commit>
    python benchmarks/graph_step.py --reference /tmp/dgm-reference --lengths 30 90 270 --nodes 200 \\
        --json docs/graph_step.json
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


def _time(root: Path, num_t: int, n: int, edge: str, steps: int) -> float:
    out = subprocess.run([sys.executable, "-c", _TIMER, str(root), str(num_t), str(n), edge, str(steps)],
                         capture_output=True, text=True, check=True, cwd=root,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="a checkout of the reference code (git worktree)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 90, 270])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--edge-likelihood", default="dense", choices=["dense", "sparse"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    here, ref = Path(__file__).resolve().parents[1], Path(args.reference).resolve()
    rows = []
    print("| T | N | this checkout (s/step) | reference (s/step) | speed-up |")
    print("|---|---|---|---|---|")
    for num_t in args.lengths:
        mine, theirs = [], []
        for _ in range(args.repeats):
            mine.append(_time(here, num_t, args.nodes, args.edge_likelihood, args.steps))
            theirs.append(_time(ref, num_t, args.nodes, args.edge_likelihood, args.steps))
        a, b = statistics.median(mine), statistics.median(theirs)
        rows.append({"T": num_t, "N": args.nodes, "seconds_per_step": a, "reference_seconds_per_step": b,
                     "speedup": b / a, "runs": {"this": mine, "reference": theirs}})
        print(f"| {num_t} | {args.nodes} | {a:.3f} | {b:.3f} | {b / a:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "reference": str(ref),
                                               "edge_likelihood": args.edge_likelihood, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
