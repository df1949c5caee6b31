"""AIS on the test digits where adaptive importance sampling is still unreliable (PSIS k-hat > 0.7).

    python benchmarks/evidence_ais_where_unreliable.py RUN [RUN ...] --particles 1000 --rounds 3 \
        --ais-particles 256 --ais-steps 400 --json out.json

For each ``dgm-pyro train cvae`` RUN: adaptive importance sampling (``method="adaptive"``) of every test
digit's log-likelihood; on the digits whose last-round k-hat exceeds 0.7, annealed importance sampling with
many chains. Both are lower bounds in expectation; where the adaptive estimate is unreliable the AIS
estimate should be the higher (tighter) one. Prints, per run, the digits, both estimates and their
standard errors.
"""

from __future__ import annotations

import argparse
import json

import pyro
import torch

from dgm_pyro.infer import log_evidence
from dgm_pyro.runs import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ais-particles", type=int, default=256)
    p.add_argument("--ais-steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for r in args.runs:
        run = load_run(r)
        x, y = run.dataset.splits["test"]
        pyro.set_rng_seed(args.seed)
        ada = log_evidence(run.module.model, run.module.guide, x, y, num_particles=args.particles, method="adaptive",
                           num_rounds=args.rounds, warn=False)
        idx = torch.nonzero(ada.khat > 0.7).flatten()
        if not len(idx):
            rows.append({"run": r, "digits": []})
            continue
        pyro.set_rng_seed(args.seed)
        ais = log_evidence(run.module.model, run.module.guide, x[idx], y[idx], num_particles=args.ais_particles,
                           method="ais", num_steps=args.ais_steps, warn=False, diagnostics=False)
        rows.append({"run": r, "digits": idx.tolist(), "adaptive": ada.log_evidence[idx].tolist(),
                     "adaptive_stderr": ada.stderr[idx].tolist(), "adaptive_khat": ada.khat[idx].tolist(),
                     "ais": ais.log_evidence.tolist(), "ais_stderr": ais.stderr.tolist()})
        print(json.dumps(rows[-1]), flush=True)
    diffs = [a - b for row in rows if row["digits"] for a, b in zip(row["ais"], row["adaptive"])]
    summary = {"digits": len(diffs), "ais_higher": sum(d > 0 for d in diffs),
               "mean_ais_minus_adaptive": sum(diffs) / len(diffs) if diffs else None}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/evidence_ais_where_unreliable.py " + " ".join(args.runs)
                       + f" --particles {args.particles} --rounds {args.rounds} --ais-particles {args.ais_particles}"
                       f" --ais-steps {args.ais_steps} --seed {args.seed}", "summary": summary, "runs": rows},
                      f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
