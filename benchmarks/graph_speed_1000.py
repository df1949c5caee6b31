"""Seconds per training step of the default ``train graph-ssm`` (GraphSSM and its GCN+GRU baseline) on a
1,000-node directed mention-like graph with 112 hourly snapshots and a count feature, against a reference checkout,
in the same run (issue 31's speed target: the default train of such a graph under 10 minutes on one thread).

    git worktree add /tmp/dgm-reference <commit>
    python benchmarks/graph_speed_1000.py --reference /tmp/dgm-reference --steps 3 --repeats 3 \\
        --json docs/results/graph_speed_1000.json

The graph (written under ``--data``, seed 0): heavy-tailed node activity (Pareto), a daily cycle in the number of
messages (about 800 an hour on average), 40 % of them from a pool of 3,000 recurring pairs, the feature the
messages a node sent that hour. Each checkout is timed in its own one-thread process (``--steps`` steps of each
network after one warm-up step, each step as ``dgm_pyro.training.Trainer`` takes it: ``Trace_ELBO``'s loss, backward,
gradient-norm clipping, torch's Adam; until 2026-12-06 (night) the timer took ``SVI`` steps with
``pyro.optim.ClippedAdam`` instead); a default train is 300 steps of each. With ``--repeats R`` the checkouts are
timed R times each, alternately, and the table gives the medians: timed one after the other, two checkouts were
seen 7-9 % apart where whole trains in both orders put them 2-10 % apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_TIMER = r"""
import contextlib, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import pyro, torch
from pyro.infer import Trace_ELBO
from dgm_pyro.device import keep_freed_memory
from dgm_pyro.runs.graph_ssm import GraphConfig, build_graph_baseline, build_graph_model, load_graph_sequence
try:  # the Trainer's programs run without pyro.module registration since 2026-12-06 (night)
    from dgm_pyro.models.nn import param_registration
except ImportError:
    param_registration = lambda enabled: contextlib.nullcontext()

keep_freed_memory()
torch.set_num_threads(1)
pyro.enable_validation(False)  # as the Trainer after its first step
cfg = GraphConfig(dataset="csv:" + sys.argv[2], directed=True).validate()
hist, _ = load_graph_sequence(cfg)
out = {}
for name, build in (("GraphSSM", build_graph_model), ("GCN+GRU", build_graph_baseline)):
    pyro.clear_param_store()
    m = build(cfg, hist)
    params = list(m.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)

    def step():  # the Trainer's step: the loss, backward, gradient-norm clipping, Adam
        opt.zero_grad()
        with param_registration(False):
            loss = Trace_ELBO().differentiable_loss(m.model, m.guide, hist.x, hist.edges)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(int(sys.argv[3])):
        step()
    out[name] = (time.perf_counter() - start) / int(sys.argv[3])
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(json.dumps(out))
"""


def write_graph(folder: Path, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    n, num_t, pool = 1000, 112, 3000
    activity = (torch.rand(n, generator=g) ** (-1 / 1.5)).clamp_max(50)  # Pareto(1, 1.5)
    pool_u = torch.multinomial(activity, pool, replacement=True, generator=g)
    pool_v = torch.multinomial(activity, pool, replacement=True, generator=g)
    rows, feats = ["src,dst,time"], ["node,mentions,time"]
    for t in range(num_t):
        m = int(800 * (1.0 + 0.8 * torch.sin(torch.tensor(2 * torch.pi * t / 24))))
        keep = torch.rand(m, generator=g) < 0.4
        pick = torch.randint(pool, (m,), generator=g)
        u = torch.where(keep, pool_u[pick], torch.multinomial(activity, m, replacement=True, generator=g))
        v = torch.where(keep, pool_v[pick], torch.multinomial(activity, m, replacement=True, generator=g))
        ok = u != v
        u, v = u[ok], v[ok]
        rows += [f"{a},{b},{t}" for a, b in zip(u.tolist(), v.tolist())]
        feats += [f"{i},{c},{t}" for i, c in enumerate(torch.bincount(u, minlength=n).tolist())]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edges.csv").write_text("\n".join(rows) + "\n")
    (folder / "nodes.csv").write_text("\n".join(feats) + "\n")


def time_checkout(path: Path, data: Path, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _TIMER, str(path), str(data), str(steps)], check=True,
                         capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", help="a checkout of the reference code (git worktree)")
    ap.add_argument("--data", default="mention1000", help="folder for the generated graph")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="timed processes per checkout, alternated; the table "
                    "gives their medians (one run after another drifts with the machine: use 3)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "edges.csv").exists():
        write_graph(data)
    checkouts = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.reference:
        checkouts["reference"] = Path(args.reference).resolve()
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.repeats):  # alternated, so that the machine's drift falls on both
        for name, path in checkouts.items():
            runs[name].append(time_checkout(path, data, args.steps))
    rows = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    print("| checkout | GraphSSM s/step | GCN+GRU s/step | default train (300 + 300 steps), min | peak RSS GB |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['GraphSSM']:.2f} | {r['GCN+GRU']:.2f} | {300 * (r['GraphSSM'] + r['GCN+GRU']) / 60:.1f} "
              f"| {r['peak_rss_gb']:.2f} |")
    if args.reference:
        ref, new = rows["reference"], rows["this checkout"]
        print(f"speed-up: GraphSSM {ref['GraphSSM'] / new['GraphSSM']:.2f}x, GCN+GRU {ref['GCN+GRU'] / new['GCN+GRU']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "runs": runs}, indent=1)
                                   + "\n")


if __name__ == "__main__":
    main()
