"""The README, run as a new user would, from a fresh clone: its two set-up commands (install and train;
install the test extras and run the tests) and its "What it does" sequence, top to bottom, each timed,
optionally while a second ``dgm-pyro train graph-ssm`` runs on the same machine (issue "Works under real
conditions"). Exits non-zero if any command fails.

    python benchmarks/readme_under_load.py --runs 3 --load --json docs/results/readme_under_load.json
    python benchmarks/readme_under_load.py --runs 1 --json docs/results/readme_alone.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(readme: str) -> list[tuple[str, str]]:
    setup = re.search(r"## Set up.*?(?=\n## )", readme, flags=re.S).group(0)
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    out = [("install and train", blocks[0].strip()), ("install tests and run them", blocks[1].strip())]
    seq = re.search(r"## What it does\n\n```bash\n(.*?)```", readme, flags=re.S).group(1)
    for line in seq.strip().splitlines():
        cmd = line.split("  #")[0].strip()
        out.append((cmd, ". .venv/bin/activate && " + cmd))
    return out


def _run_once(index: int, load: bool, source: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"readme-{index}-"))
    subprocess.run(["git", "clone", "--quiet", source, str(work / "repo")], check=True)
    repo = work / "repo"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VIRTUAL_ENV")}
    env["MPLBACKEND"] = "Agg"
    loader = None
    if load:  # the second job: the README's graph training, long enough to outlast everything
        loader = subprocess.Popen(f". {ROOT}/.venv/bin/activate && dgm-pyro train graph-ssm --dataset dsbm --steps "
                                  f"1000000 --baseline-steps 0 --quiet --out {work}/load", shell=True,
                                  executable="/bin/bash", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, env=env)
        time.sleep(10)
    rows = []
    try:
        for name, cmd in _commands((repo / "README.md").read_text()):
            start = last = time.perf_counter()
            gap, lines = 0.0, []
            p = subprocess.Popen(cmd, shell=True, executable="/bin/bash", cwd=repo, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            for line in p.stdout:  # stdout and stderr, not a terminal: the longest silence between lines
                now = time.perf_counter()
                gap, last = max(gap, now - last), now
                lines.append(line.rstrip())
            code = p.wait()
            secs = time.perf_counter() - start
            gap = max(gap, time.perf_counter() - last)
            tail = lines[-1:] or [""]
            rows.append({"command": name, "seconds": round(secs, 1), "exit": code, "longest_silence_s": round(gap, 1),
                         "last_line": tail[0]})
            print(f"run {index} {'loaded' if load else 'alone '} {secs:7.1f} s  silence {gap:5.1f} s  exit {code}  "
                  f"{name}  | {tail[0][:90]}", flush=True)
            if code != 0:
                print("\n".join(lines[-200:]), file=sys.stderr)
                break
    finally:
        if loader is not None:
            os.killpg(loader.pid, signal.SIGKILL)
            loader.wait()
    return {"run": index, "load": load, "commands": rows, "total_seconds": round(sum(r["seconds"] for r in rows), 1),
            "ok": all(r["exit"] == 0 for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load", action="store_true", help="run a second dgm-pyro train graph-ssm beside it")
    ap.add_argument("--source", default=str(ROOT), help="what to clone (default: this checkout's repository)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = [_run_once(i + 1, args.load, args.source) for i in range(args.runs)]
    if args.json:
        cmd = "python benchmarks/readme_under_load.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"command": cmd, "cores": os.cpu_count(), "results": results}, indent=2) + "\n")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
