"""Annealed importance sampling against importance sampling on a trained CVAE's test digits (per digit).

    python benchmarks/evidence_ais.py RUN --is-particles 1000 --ais-particles 16 --ais-steps 100 --digits 447

RUN is a ``dgm-pyro train cvae`` run folder. For every test digit: the importance-sampled log-likelihood
with the encoder as proposal (K particles) and its PSIS k-hat, the adaptive importance-sampling estimate
(``method="adaptive"``, K particles per round), and the AIS estimate (from the encoder to the posterior,
HMC transitions). Prints the agreement where k-hat < 0.5, which estimate is higher where k-hat > 0.7 (all
are lower bounds in expectation, so the higher one is the tighter), the agreement of AIS with adaptive
importance sampling on every digit (two independent estimators), and the cost of each per digit, measured
in the same run. ``--json`` also keeps the per-digit values.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from dgm_pyro.infer import log_evidence
from dgm_pyro.runs import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--is-particles", type=int, default=1000)
    p.add_argument("--ais-particles", type=int, default=16)
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--digits", type=int, default=447)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the adaptive estimator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    run = load_run(args.run)
    x, y = (t[:args.digits] for t in run.dataset.splits["test"])
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    is_ = log_evidence(run.module.model, run.module.guide, x, y, num_particles=args.is_particles, warn=False)
    t_is = time.perf_counter() - start
    start = time.perf_counter()
    ais = log_evidence(run.module.model, run.module.guide, x, y, num_particles=args.ais_particles, method="ais",
                       num_steps=args.ais_steps, warn=False, diagnostics=False)
    t_ais = time.perf_counter() - start
    start = time.perf_counter()
    ada = log_evidence(run.module.model, run.module.guide, x, y, num_particles=args.is_particles, method="adaptive",
                       num_rounds=args.rounds, warn=False)
    t_ada = time.perf_counter() - start
    diff = ais.log_evidence - is_.log_evidence
    diff_ada = ais.log_evidence - ada.log_evidence
    good, bad = is_.khat < 0.5, is_.khat > 0.7
    out = {
        "command": "python benchmarks/evidence_ais.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "digits": int(x.shape[0]), "is_log_likelihood": float(is_.log_evidence.mean()),
        "ais_log_likelihood": float(ais.log_evidence.mean()), "ais_stderr_mean": float(ais.stderr.mean()),
        "khat_below_0.5": int(good.sum()), "khat_above_0.7": int(bad.sum()),
        "abs_diff_where_khat_below_0.5": float(diff[good].abs().mean()) if good.any() else None,
        "share_within_0.1_where_khat_below_0.5": float((diff[good].abs() < 0.1).double().mean()) if good.any() else None,
        "share_ais_higher_where_khat_above_0.7": float((diff[bad] > 0).double().mean()) if bad.any() else None,
        "mean_ais_minus_is_where_khat_above_0.7": float(diff[bad].mean()) if bad.any() else None,
        "adaptive_log_likelihood": float(ada.log_evidence.mean()),
        "adaptive_khat_above_0.7": int((ada.khat > 0.7).sum()),
        "abs_diff_ais_adaptive_mean": float(diff_ada.abs().mean()),
        "share_ais_adaptive_within_0.1": float((diff_ada.abs() < 0.1).double().mean()),
        "share_ais_adaptive_within_3_joint_stderr": float(
            (diff_ada.abs() < 3 * (ais.stderr ** 2 + ada.stderr ** 2).sqrt()).double().mean()),
        "seconds_is": t_is, "seconds_ais": t_ais, "seconds_adaptive": t_ada,
        "seconds_per_digit_adaptive": t_ada / x.shape[0],
        "per_digit": {"is": is_.log_evidence.tolist(), "is_stderr": is_.stderr.tolist(), "is_khat": is_.khat.tolist(),
                      "adaptive": ada.log_evidence.tolist(), "adaptive_stderr": ada.stderr.tolist(),
                      "adaptive_khat": ada.khat.tolist(), "ais": ais.log_evidence.tolist(),
                      "ais_stderr": ais.stderr.tolist()},
        "seconds_per_digit_is": t_is / x.shape[0], "seconds_per_digit_ais": t_ais / x.shape[0],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "per_digit"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
