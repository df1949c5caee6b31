"""Data-parallel scaling of `dgm-pyro train` on this machine: 1 process against `torchrun --nproc-per-node 2`,
one thread per process, the same configuration. Throughput is training rows per second from the per-epoch
times in `metrics.csv` (median over epochs 2..): of the optimisation steps alone (`train_seconds`) and of
whole epochs (`seconds`, including rank 0's validation, which the other rank waits for; valid_particles = 1).

    python benchmarks/ddp_scaling.py --batch-sizes 100 500 1000 --epochs 8
    python benchmarks/ddp_scaling.py --dataset mnist --batch-sizes 100 --epochs 4 --repeats 2   # issue 29
    python benchmarks/ddp_scaling.py --profile      # where a step's time goes, 1 process against 2

"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def throughput(procs: int, batch: int, epochs: int, hidden: str, dataset: str = "digits") -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(prefix="dgm-ddp-"))
    toml = out / "cfg.toml"
    toml.write_text("valid_particles = 1\nbaseline = false\n")
    args = ["train", "--dataset", dataset, "--epochs", str(epochs), "--batch-size", str(batch), "--hidden", hidden, "--particles", "1",
            "--patience", str(epochs), "--config", str(toml), "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "cli.main", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               "-m", "cli.main", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    run = next(out.glob("cvae-*"))
    num_train = json.loads((run / "environment.json").read_text())["data"]["train"]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))[1:]
    shutil.rmtree(out)
    return (num_train / statistics.median(float(r["train_seconds"]) for r in rows),
            num_train / statistics.median(float(r["seconds"]) for r in rows))


def profile_worker(batch: int) -> None:
    """Inside torchrun (or alone): time 50 steps' forward+backward on this rank's shard and the all-reduce."""
    import time

    import pyro

    from dgm_pyro import distributed as D
    from dgm_pyro.runs import TrainConfig
    from dgm_pyro.data import load_dataset
    from dgm_pyro.runs import build_model

    D.init_from_env()
    ds = load_dataset("digits")
    x, y = ds.splits["train"]
    pyro.set_rng_seed(0)
    model = build_model(TrainConfig(), ds)
    params = list(model.parameters())
    loss = pyro.infer.Trace_ELBO()
    w, r = D.world_size(), D.rank()
    xb, yb = x[:batch][r::w], y[:batch][r::w]
    compute = reduce = 0.0
    for i in range(60):
        t0 = time.perf_counter()
        for p in params:
            p.grad = None
        value = loss.differentiable_loss(model.model, model.guide, xb, yb) / batch
        value.backward()
        t1 = time.perf_counter()
        D.all_reduce_gradients(params, value)
        if i >= 10:
            compute += t1 - t0
            reduce += time.perf_counter() - t1
    if r == 0:
        print(f"| {w} | {batch} | {xb.shape[0]} | {compute / 50 * 1e3:.2f} | {reduce / 50 * 1e3:.2f} |", flush=True)
    D.shutdown()


def profile(batch: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("one step = forward + backward on the rank's shard, then one all-reduce of the gradients")
    print("| processes | global batch | rows per rank | forward+backward (ms) | all-reduce (ms) |")
    print("|---|---|---|---|---|")
    for procs in (1, 2):
        launcher = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        out = subprocess.run([sys.executable, *launcher, __file__, "profile-worker", str(batch)], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True)
        print([ln for ln in out.stdout.splitlines() if ln.startswith("|")][-1], flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "profile-worker":
        profile_worker(int(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="any dataset of train cvae (mnist: issue 29's check)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--repeats", type=int, default=2, help="alternate 1- and 2-process runs this many times")
    p.add_argument("--profile", action="store_true", help="time the parts of one step instead (batch 100)")
    args = p.parse_args()
    if args.profile:
        profile(100)
        return
    print(f"dataset {args.dataset}, hidden {args.hidden}, {args.epochs} epochs (median of epochs 2..), one thread per process")
    print("| global batch | steps only: 1 process (rows/s) | 2 processes | ratio | whole epochs: 1 process | 2 processes "
          "| ratio |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        one, two = [], []
        for _ in range(args.repeats):
            one.append(throughput(1, batch, args.epochs, args.hidden, args.dataset))
            two.append(throughput(2, batch, args.epochs, args.hidden, args.dataset))
        cells = []
        for k in (0, 1):
            a, b = statistics.median(r[k] for r in one), statistics.median(r[k] for r in two)
            cells.append(f"{a:.0f} | {b:.0f} | {b / a:.2f}")
        print(f"| {batch} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
