"""Issue 31's link bar read over many forecast windows: rolling-origin backtests (``dgm-pyro backtest``, refitted
at every origin) of GraphSSM variants beside every baseline on CollegeMsg or the high school contacts.

One held-out window has few edges (CollegeMsg: 25-56 per snapshot), so one window's AP ranks forecasters by luck
as much as by skill (docs/graphs.md, "How much a held-out snapshot can tell apart"). Here every origin is a
window; the model's AUC and AP are averaged over origins and seeds, each baseline's over origins (they are
deterministic; GCN+GRU over seeds too), and the model's gap to the best baseline at each h is given with its
standard error over origins.

    python benchmarks/graph_rolling.py collegemsg --origins 13-21 --seeds 0 1 2 --variants default recency \
        --steps 400 --samples 200 --jobs 2 --json docs/results/graph_rolling_collegemsg.json
    python benchmarks/graph_rolling.py highschool --origins 73-81 --seeds 0 1 2 --variants default recency \
        --steps 300 --samples 200 --jobs 2 --json docs/results/graph_rolling_highschool.json

Variants run separately (``--baseline-steps 0`` leaves out the GCN+GRU refits there) are put in one table with
``merge``; the baselines come from the first file's runs:

    python benchmarks/graph_rolling.py merge docs/results/graph_rolling_collegemsg.json more.json --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dgm_pyro.runs import GraphConfig
from dgm_pyro.runs.graph_backtest import backtest_graph

#: variant name -> the GraphConfig options it sets
VARIANTS = {"default": {}, "recency": {"edge_recency": True}, "proximity": {"edge_proximity": True},
            "recency-proximity": {"edge_recency": True, "edge_proximity": True},
            "recency-guide-final": {"edge_recency": True, "final_state": "guide"},
            "memory-activity": {"memory_activity": True},
            "recency-memory-activity": {"edge_recency": True, "memory_activity": True},
            "recency-memory-activity-guide-final": {"edge_recency": True, "memory_activity": True,
                                                    "final_state": "guide"}}
KEPT = ("auc", "ap", "ap_1to1", "ece", "pit_coverage_50", "pit_coverage_90")


def _origins(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def _job(job: tuple) -> dict:
    import torch

    config, origins, samples, refit_steps, threads = job
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dgm-rolling-") as root:
        res = backtest_graph(config, origins, 5, Path(root) / "bt", refit_steps=refit_steps, num_samples=samples)
    rows = [{k: r[k] for k in ("t1", "forecaster", "h", *KEPT) if k in r} for r in res["rows"]]
    return {"rows": rows, "seconds": time.perf_counter() - start}


def summarise(runs: dict[str, dict[int, list[dict]]], horizon: int = 5) -> tuple[str, dict]:
    """Markdown and JSON: per variant, h and metric, the model's mean over seeds and origins, the best baseline
    (mean over origins, and seeds for GCN+GRU), and the model minus it with its standard error over origins."""
    first = next(iter(runs.values()))
    base_rows = [r for rows in first.values() for r in rows if r["forecaster"] != "GraphSSM"]
    origins = sorted({r["t1"] for r in base_rows})
    lines = ["| variant | metric | " + " | ".join(f"h={h}" for h in range(1, horizon + 1)) + " |",
             "|---|---|" + "---|" * horizon]
    out: dict = {}
    for metric in ("auc", "ap", "ap_1to1"):
        # per baseline, h and origin: the mean over seeds (deterministic baselines give the same value each)
        base: dict[str, dict[int, dict[int, list[float]]]] = {}
        for r in base_rows:
            if isinstance(r.get(metric), float) and math.isfinite(r[metric]):
                base.setdefault(r["forecaster"], {}).setdefault(r["h"], {}).setdefault(r["t1"], []).append(r[metric])
        base_mean = {name: {h: {t: statistics.fmean(v) for t, v in per_t.items()} for h, per_t in per_h.items()}
                     for name, per_h in base.items()}
        best = {h: max((n for n in base_mean if len(base_mean[n].get(h, {})) == len(origins)),
                       key=lambda n: statistics.fmean(base_mean[n][h].values())) for h in range(1, horizon + 1)}
        lines.append(f"| best baseline | {metric} | " + " | ".join(
            f"{statistics.fmean(base_mean[best[h]][h].values()):.3f} ({best[h]})" for h in range(1, horizon + 1))
            + " |")
        for variant, per_seed in runs.items():
            cells, rows = [], []
            for h in range(1, horizon + 1):
                model = {t: statistics.fmean(r[metric] for rows_ in per_seed.values() for r in rows_
                                             if r["forecaster"] == "GraphSSM" and r["h"] == h and r["t1"] == t)
                         for t in origins}
                diff = [model[t] - base_mean[best[h]][h][t] for t in origins]
                se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
                mean = statistics.fmean(model.values())
                cells.append(f"{mean:.3f} ({statistics.fmean(diff):+.3f} ± {se:.3f})")
                rows.append({"h": h, "model": mean, "best_baseline": best[h],
                             "baseline": statistics.fmean(base_mean[best[h]][h].values()),
                             "difference": statistics.fmean(diff), "standard_error": se})
            lines.append(f"| {variant} | {metric} | " + " | ".join(cells) + " |")
            out.setdefault(variant, {})[metric] = rows
    for variant, per_seed in runs.items():
        for key in ("pit_coverage_50", "pit_coverage_90", "ece"):
            vals = [statistics.fmean(r[key] for rows_ in per_seed.values() for r in rows_
                                     if r["forecaster"] == "GraphSSM" and r["h"] == h and math.isfinite(r[key]))
                    for h in range(1, horizon + 1)]
            out[variant][key] = vals
            scale, unit = (1000, " (10^-3)") if key == "ece" else (1, "")
            lines.append(f"| {variant} | {key}{unit} | " + " | ".join(f"{scale * v:.3f}" for v in vals) + " |")
    return "\n".join(lines), out


def _write(path: str, result: dict) -> None:
    """The result as JSON: the summary indented, then the rows one per line (floats to 6 decimals; the baselines'
    rows only in the first variant's runs, from which :func:`summarise` reads them)."""
    def rounded(x):
        return round(x, 6) if isinstance(x, float) else x

    runs = result.pop("runs")
    first = next(iter(runs))  # the baselines are read from the first variant's runs only
    runs = {variant: {seed: [r for r in rows if variant == first or r["forecaster"] == "GraphSSM"]
                      for seed, rows in per_seed.items()} for variant, per_seed in runs.items()}
    text = json.dumps(result, indent=1)[:-2] + ',\n "runs": {'
    text += ",".join(f'\n  "{variant}": {{' + ",".join(
        f'\n   "{seed}": [' + ",".join("\n    " + json.dumps({k: rounded(v) for k, v in r.items()}) for r in rows)
        + "]" for seed, rows in per_seed.items()) + "}" for variant, per_seed in runs.items())
    Path(path).write_text(text + "}\n}\n")


def merge(paths: list[str], out: str | None) -> None:
    """One table of the variants of several result files of the same dataset, origins and seeds."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    if any(r["origins"] != results[0]["origins"] or r["seeds"] != results[0]["seeds"] for r in results):
        sys.exit("merge: the files differ in origins or seeds")
    runs = {variant: {int(seed): rows for seed, rows in per_seed.items()}
            for r in results for variant, per_seed in r["runs"].items()}
    text, summary = summarise(runs)
    print(text)
    if out:
        _write(out, {"commands": [c for r in results for c in r.get("commands", [r.get("command")])],
                     "origins": results[0]["origins"], "seeds": results[0]["seeds"], "summary": summary, "runs": runs})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        p = argparse.ArgumentParser(prog="graph_rolling.py merge")
        p.add_argument("files", nargs="+")
        p.add_argument("--json", default=None)
        args = p.parse_args(sys.argv[2:])
        merge(args.files, args.json)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["collegemsg", "highschool"])
    p.add_argument("--origins", required=True, help="LO-HI or a comma-separated list of snapshot indices")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["default", "recency"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300, help="SVI steps of the first fit")
    p.add_argument("--refit-steps", type=int, default=100)
    p.add_argument("--baseline-steps", type=int, default=300, help="GCN+GRU, first fit (the first variant only)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--jobs", type=int, default=1, help="backtests in parallel (one thread each when > 1)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    import torch
    from concurrent.futures import ProcessPoolExecutor

    origins = _origins(args.origins)
    threads = 1 if args.jobs > 1 else torch.get_num_threads()
    jobs, labels = [], []
    for i, variant in enumerate(args.variants):
        options = dict(VARIANTS[variant])
        for seed in args.seeds:
            config = GraphConfig(dataset=args.dataset, steps=args.steps, seed=seed,
                                 baseline_steps=args.baseline_steps if i == 0 else 0, **options).validate()
            jobs.append((config, origins, args.samples, args.refit_steps, threads))
            labels.append((variant, seed))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        outs = list(pool.map(_job, jobs))
    runs: dict[str, dict[int, list[dict]]] = {}
    for (variant, seed), out in zip(labels, outs):
        print(f"{variant} seed {seed}: {out['seconds']:.0f} s", flush=True)
        runs.setdefault(variant, {})[seed] = out["rows"]
    text, summary = summarise(runs)
    print(f"{args.dataset}, origins {origins}, seeds {args.seeds}: mean over seeds and origins "
          "(model minus the best baseline ± its standard error over origins)")
    print(text)
    if args.json:
        _write(args.json, {"command": " ".join(sys.argv), "origins": origins, "seeds": args.seeds, "summary": summary,
                           "runs": runs})


if __name__ == "__main__":
    main()
