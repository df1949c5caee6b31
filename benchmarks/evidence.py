"""``log_evidence`` (K particles, 447 test digits) against a hand-vectorised PyTorch importance sampler
for the same networks. Interleaved paired runs; prints median ratios. Goal: at most 1.10x.

    python benchmarks/evidence.py --particles 1000 --pairs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _reference import TorchCVAE  # noqa: E402

from dgm_pyro.runs import TrainConfig  # noqa: E402
from dgm_pyro.data import load_digits  # noqa: E402
from dgm_pyro.infer import log_evidence  # noqa: E402
from dgm_pyro.runs import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    pyro.set_rng_seed(0)
    ds = load_digits()
    x, y = ds.splits["test"]
    cfg = TrainConfig(objective="elbo")
    cvae = build_model(cfg, ds).eval()
    ref = TorchCVAE(cvae)
    chunk = max(1, 100_000 // x.shape[0])  # log_evidence's default chunk size

    def ours(diag):
        return log_evidence(cvae.model, cvae.guide, x, y, num_particles=args.particles, diagnostics=diag, warn=False)

    def hand():
        return ref.log_evidence(x, y, args.particles, chunk)

    a, b = ours(False).log_evidence, hand()
    print(f"agreement: mean log-lik dgm-pyro {float(a.mean()):.3f} vs hand {float(b.mean()):.3f} (independent draws)")
    times = {"plain": [], "diag": [], "hand": []}
    for _ in range(args.pairs):
        for name, fn in (("plain", lambda: ours(False)), ("diag", lambda: ours(True)), ("hand", hand)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    r_plain = statistics.median(p / h for p, h in zip(times["plain"], times["hand"]))
    r_diag = statistics.median(p / h for p, h in zip(times["diag"], times["hand"]))
    print(f"K={args.particles} N={x.shape[0]} threads={torch.get_num_threads()} pairs={args.pairs}")
    print(f"median seconds: log_evidence {med['plain']:.2f}, with PSIS k-hat {med['diag']:.2f}, hand-vectorised {med['hand']:.2f}")
    print(f"ratio log_evidence / hand: {r_plain:.3f} (with PSIS diagnostics {r_diag:.3f}); goal <= 1.10")


if __name__ == "__main__":
    main()
