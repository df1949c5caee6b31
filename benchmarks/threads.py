"""Wall time of dgm-pyro commands with 1 and 2 torch threads, alone and beside another training job.

Each timed command runs in its own process (``dgm-pyro ... --threads N --quiet``); the load is a second
``dgm-pyro train graph-ssm`` started before and killed after, with its own thread count. Prints seconds and
the ratio 2 threads / 1 thread measured in the same condition. This decides the CLI's default thread count
(docs/cli.md, "Threads").

    python benchmarks/threads.py --json docs/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

EXE = shutil.which("dgm-pyro") or "dgm-pyro"
WORK = {
    "cvae, 5 epochs": ["train", "cvae", "--epochs", "5", "--particles", "100"],
    "graph-ssm, 10 steps": ["train", "graph-ssm", "--steps", "10", "--baseline-steps", "0"],
}


def _time(args: list[str], threads: int, root: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run([EXE, *args, "--threads", str(threads), "--quiet", "--out", str(root)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _load(threads: int, root: Path) -> subprocess.Popen:
    args = [EXE, "train", "graph-ssm", "--steps", "100000", "--baseline-steps", "0", "--threads", str(threads),
            "--quiet", "--out", str(root)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(8)  # past start-up, into training
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    root = Path(tempfile.mkdtemp(prefix="dgm-threads-"))
    for load in (None, 1, 2):
        for name, work in WORK.items():
            p = _load(load, root / "load") if load else None
            try:
                secs = {t: _time(work, t, root / "runs") for t in (1, 2)}
            finally:
                if p is not None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            row = {"work": name, "load": f"graph-ssm job, {load} thread(s)" if load else "none",
                   "seconds_1_thread": round(secs[1], 1), "seconds_2_threads": round(secs[2], 1),
                   "ratio_2_over_1": round(secs[2] / secs[1], 2)}
            results.append(row)
            print(f"{row['work']:<22} load: {row['load']:<26} 1 thread {secs[1]:7.1f} s   2 threads {secs[2]:7.1f} s   "
                  f"ratio {row['ratio_2_over_1']:.2f}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/threads.py --json " + str(args.json),
                                         "cores": os.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
