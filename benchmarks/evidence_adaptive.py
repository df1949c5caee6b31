"""Importance sampling with the encoder against adaptive importance sampling, per trained CVAE run.

    python benchmarks/evidence_adaptive.py RUN [RUN ...] --particles 1000 --rounds 3 --json out.json

Each RUN is a ``dgm-pyro train cvae`` run folder. For its test digits: the log-likelihood, its standard
error, the mean ESS and the share of digits with PSIS k-hat > 0.7, by importance sampling with the encoder
as proposal (``method="is"``) and by adaptive importance sampling (``method="adaptive"``), and the seconds
of each, measured one after the other in the same process (one thread).
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from dgm_pyro.infer import log_evidence
from dgm_pyro.runs import load_run


def measure(run_dir: str, particles: int, rounds: int, seed: int) -> dict:
    run = load_run(run_dir)
    x, y = run.dataset.splits["test"]
    out = {"run": run_dir, "objective": run.config.objective, "particles_train": run.config.num_particles,
           "seed": run.config.seed}
    for method in ("is", "adaptive"):
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        res = log_evidence(run.module.model, run.module.guide, x, y, num_particles=particles, method=method,
                           num_rounds=rounds, warn=False)
        out[method] = {"seconds": time.perf_counter() - start, "log_likelihood": float(res.log_evidence.mean()),
                       "stderr": float(res.stderr.pow(2).sum().sqrt() / res.stderr.numel()),
                       "elbo": float(res.elbo.mean()), "ess_mean": float(res.ess.mean()),
                       "khat_above_0.7": float((res.khat > 0.7).double().mean()),
                       "khat_above_0.5": float((res.khat > 0.5).double().mean())}
    out["cost_ratio"] = out["adaptive"]["seconds"] / out["is"]["seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = [measure(r, args.particles, args.rounds, args.seed) for r in args.runs]
    print("| run | objective | K train | IS log-lik. | IS k-hat > 0.7 | adaptive log-lik. | adaptive k-hat > 0.7 "
          "| adaptive ESS | cost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        i, a = r["is"], r["adaptive"]
        print(f"| {r['run']} | {r['objective']} | {r['particles_train']} | {i['log_likelihood']:.3f} | "
              f"{100 * i['khat_above_0.7']:.1f} % | {a['log_likelihood']:.3f} | {100 * a['khat_above_0.7']:.1f} % | "
              f"{a['ess_mean']:.0f} | {r['cost_ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/evidence_adaptive.py " + " ".join(args.runs)
                       + f" --particles {args.particles} --rounds {args.rounds} --seed {args.seed}", "runs": rows},
                      f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
