"""Learned conditional prior p(z|y) against a standard-normal prior, class-conditional digits.

Same CVAE, same training, several seeds; test log-likelihood by importance sampling (K particles).

    python benchmarks/prior_comparison.py --seeds 0 1 2 --particles 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, train_and_evaluate  # noqa: E402

from dgm_pyro.runs import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--dataset", default="digits")
    args = ap.parse_args()
    res: dict[str, list[dict]] = {"learned": [], "standard": []}
    for seed in args.seeds:
        for prior in res:
            ev = train_and_evaluate(TrainConfig(dataset=args.dataset, prior=prior, seed=seed, objective="elbo"), args.particles)
            res[prior].append(ev)
            print(f"{prior} seed={seed}: log-lik {ev['log_evidence']:.3f} ELBO {ev['elbo']:.3f}", flush=True)
    print()
    print(f"| prior | test ELBO | test log-likelihood (IS, K={args.particles}) | share k-hat > 0.7 |")
    print("|---|---|---|---|")
    for prior, evs in res.items():
        print(f"| {prior} | {mean_sd([e['elbo'] for e in evs])} | {mean_sd([e['log_evidence'] for e in evs])} | "
              f"{mean_sd([100 * e['khat_frac_above_0.7'] for e in evs])} % |")
    diffs = [a["log_evidence"] - b["log_evidence"] for a, b in zip(res["learned"], res["standard"])]
    print(f"\npaired difference learned - standard (log-likelihood): {mean_sd(diffs)} nats; "
          f"learned better in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")


if __name__ == "__main__":
    main()
