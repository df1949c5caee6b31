"""Quadrant completion on digits (Sohn et al. 2015, Table 1 protocol on sklearn's 8x8 digits).

For 1, 2 and 3 given quadrants and several seeds: the NN baseline's negative conditional
log-likelihood (exact), the CVAE's negative ELBO, and its importance-sampled negative CLL (K particles).
Nats per image, summed over the missing pixels (17 grey levels each). Prints a markdown table.

    python benchmarks/quadrant_completion.py --seeds 0 1 2 --particles 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, train_and_evaluate  # noqa: E402

from dgm_pyro.runs import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--json", type=Path, default=None, help="Also write the raw results here.")
    args = ap.parse_args()
    raw = {}
    for q in args.quadrants:
        for seed in args.seeds:
            ev = train_and_evaluate(TrainConfig(dataset=f"digits-q{q}", seed=seed, objective="elbo"), args.particles)
            raw[f"q{q}-seed{seed}"] = ev
            print(f"q={q} seed={seed}: baseline {ev['baseline_ncll']:.2f}  CVAE -ELBO {ev['cvae_neg_elbo']:.2f}  "
                  f"CVAE NCLL {ev['cvae_ncll']:.2f}  k-hat>0.7 {ev['khat_frac_above_0.7']:.1%}", flush=True)
    print()
    print(f"| quadrants given | NN baseline NCLL | CVAE negative ELBO | CVAE NCLL (IS, K={args.particles}) | CVAE / baseline | share k-hat > 0.7 |")
    print("|---|---|---|---|---|---|")
    for q in args.quadrants:
        rs = [raw[f"q{q}-seed{s}"] for s in args.seeds]
        ratio = [r["cvae_ncll"] / r["baseline_ncll"] for r in rs]
        print(f"| {q} | {mean_sd([r['baseline_ncll'] for r in rs])} | {mean_sd([r['cvae_neg_elbo'] for r in rs])} | "
              f"{mean_sd([r['cvae_ncll'] for r in rs])} | {mean_sd(ratio)} | "
              f"{mean_sd([100 * r['khat_frac_above_0.7'] for r in rs])} % |")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
