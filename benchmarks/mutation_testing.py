"""Mutation testing of the numerical core (opt-in; not part of CI): does each module's test suite fail when
the module is wrong?

mutmut 3 (``pip install "mutmut>=3.8,<4"``) makes small changes to one module at a time (an operator, a
constant, a call's argument, a returned value), runs the tests that cover the changed function, and counts
the mutants no test kills. Each group below mutates its modules against its own tests, in its own copy of
the working tree (``--work``, default ``mutation-runs/``, ignored by git), so a group can be run, stopped and
resumed (mutmut keeps its results there) without touching the checkout. After writing tests, delete the
group's folder and run it again: the folder's copy of the mutated module is the one it was made with.

    python benchmarks/mutation_testing.py run infer --jobs 1        # one group; `all` for every group
    python benchmarks/mutation_testing.py report --json mutation.json   # counts per group
    python benchmarks/mutation_testing.py known                     # the seven mutations of issue 27

``known`` applies the seven hand-made mutations that once survived the default suite (issue 27), each in a
fresh copy of the tree, and runs the tests named for it: each must fail. The triage of surviving mutants
(a missing test written, or why a mutant is equivalent) is in docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GROUPS: dict[str, tuple[list[str], list[str]]] = {
    # group: (modules to mutate, the tests that cover them)
    "infer": (["dgm_pyro/infer/*.py"], ["tests/infer"]),
    "divergences": (["dgm_pyro/divergences.py"], ["tests/test_divergences.py", "tests/infer/test_cs_elbo.py",
                                                  "tests/infer/test_free_bits.py", "tests/test_diagnostics.py"]),
    "diagnostics": (["dgm_pyro/diagnostics.py"], ["tests/test_diagnostics.py"]),
    "markov": (["dgm_pyro/models/markov.py"], ["tests/models/test_markov.py", "tests/infer/test_scheduled_sampling.py"]),
    "graph_sparse": (["dgm_pyro/models/graph_sparse.py"], ["tests/models/test_graph_sparse.py"]),
    "callbacks": (["dgm_pyro/callbacks.py"], ["tests/test_callbacks.py", "tests/test_training.py",
                                              "tests/infer/test_annealing.py", "tests/infer/test_scheduled_sampling.py",
                                              "tests/models/test_graph_ssm.py", "tests/cli/test_graph_cli.py"]),
}


def _copy_tree(dest: Path) -> None:
    """The tracked and untracked (not ignored) files of the checkout, as they are now."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _mutmut_table(modules: list[str], tests: list[str]) -> str:
    """The [tool.mutmut] table appended to the copy's pyproject.toml."""
    settings = {"source_paths": ["dgm_pyro"], "only_mutate": modules, "tests_dir": tests,
                "also_copy": ["cli", "tests", "docs", "README.md", "benchmarks"],
                "process_isolation": "forkserver", "pytest_add_cli_args": ["-p", "no:cacheprovider"],
                "use_git_change_detection": False}
    return "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


def run_group(name: str, work: Path, jobs: int) -> None:
    modules, tests = GROUPS[name]
    folder = work / name
    if not (folder / "pyproject.toml").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _copy_tree(folder)
        with open(folder / "pyproject.toml", "a") as f:
            f.write(_mutmut_table(modules, tests))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    start = time.time()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=folder, env=env)
    print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)


def results(folder: Path) -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, suspicious, no tests, ...) from ``mutmut results``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=folder,
                         capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    return status


def report(work: Path) -> dict:
    """Per group: the number of mutants and of each status. Which survivors are equivalent is judged by reading
    them (docs/testing.md), not here."""
    table = {}
    for name in GROUPS:
        folder = work / name
        if folder.is_dir():
            status = results(folder)
            counts: dict[str, int] = {}
            for s in status.values():
                counts[s] = counts.get(s, 0) + 1
            table[name] = {"mutants": len(status), "counts": counts,
                           "not_killed": sorted(k for k, s in status.items() if s != "killed")}
    return table


# the seven mutations of issue 27: (file, old text, new text, tests that must fail)
KNOWN = [
    ("AIS weight increment after the move", "dgm_pyro/infer/ais.py",
     "        log_w = log_w + (b - b_prev) * (log_p - log_q)\n"
     "        z, log_accept = hmc_transition(target, z, sd, eps, b, hmc_steps, event_dims, (log_p, log_q))\n"
     "        with torch.no_grad():\n            log_p, log_q = target.log_densities(z)\n",
     "        z, log_accept = hmc_transition(target, z, sd, eps, b, hmc_steps, event_dims, (log_p, log_q))\n"
     "        with torch.no_grad():\n            log_p, log_q = target.log_densities(z)\n"
     "        log_w = log_w + (b - b_prev) * (log_p - log_q)\n",
     ["tests/infer/test_ais.py"]),
    ("AIS without the Metropolis correction", "dgm_pyro/infer/ais.py",
     "    accept = torch.rand_like(log_accept).log() < log_accept\n",
     "    accept = torch.ones_like(log_accept, dtype=torch.bool)\n", ["tests/infer/test_ais.py"]),
    ("AIS move an uncorrected random walk", "dgm_pyro/infer/ais.py",
     "    z_new, r_new, potential1 = _leapfrog(target, z, r, sd, eps, beta, steps)\n",
     "    z_new = {n: z[n] + eps.unsqueeze(-1) * sd[n] * r[n] for n in z}\n    r_new, potential1 = r, potential0\n",
     ["tests/infer/test_ais.py"]),
    ("IWELBO normaliser log(K + 1)", "dgm_pyro/infer/iwelbo.py",
     "bound = torch.logsumexp(log_w, 0) - math.log(K)", "bound = torch.logsumexp(log_w, 0) - math.log(K + 1)",
     ["tests/infer/test_iwelbo.py"]),
    ("sparse path memory ignores the path's own draws", "dgm_pyro/models/graph_sparse.py",
     "            out |= _member(d, path * self.nn + key)\n", "            pass\n",
     ["tests/models/test_graph_sparse.py"]),
    ("early stopping state not restored on resume", "dgm_pyro/callbacks.py",
     "        self.state.update(state)\n\n\n#: a validation score", "        return\n\n\n#: a validation score",
     ["tests/test_callbacks.py", "tests/test_training.py"]),
    ("CVAE.sample ignores the condition", "dgm_pyro/models/cvae.py",
     "        y = self.features(y)\n        z = self.prior(y).sample()\n",
     "        y = self.features(y)\n        y = y[:1].expand_as(y)\n        z = self.prior(y).sample()\n",
     ["tests/models/test_text.py", "tests/cli/test_text_cli.py"]),
    ("every prompt read as the first", "dgm_pyro/runs/cvae.py",
     "    texts = check_captions(texts, \"prompt\")\n",
     "    texts = check_captions(texts, \"prompt\")\n    texts = [texts[0]] * len(texts)\n",
     ["tests/cli/test_text_cli.py"]),
]


def known(work: Path) -> list[dict]:
    rows = []
    for what, path, old, new, tests in KNOWN:
        folder = work / "known"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _copy_tree(folder)
        text = (folder / path).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{what}: the text to mutate is not found once in {path}")
        (folder / path).write_text(text.replace(old, new))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(folder)}
        start = time.time()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=folder,
                           env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", p.stdout, re.M)))
        rows.append({"mutation": what, "file": path, "failed_tests": failed, "caught": p.returncode != 0,
                     "seconds": round(time.time() - start, 1)})
        print(f"{'caught' if p.returncode else 'SURVIVED'}: {what}: {', '.join(failed) or p.stdout[-300:]}")
    shutil.rmtree(work / "known", ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "report", "known"])
    ap.add_argument("groups", nargs="*", default=["all"])
    ap.add_argument("--work", type=Path, default=ROOT / "mutation-runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.command == "run":
        for name in (list(GROUPS) if args.groups == ["all"] else args.groups):
            run_group(name, args.work, args.jobs)
        return
    if args.command == "known":
        out = known(args.work)
    else:
        out = report(args.work)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
