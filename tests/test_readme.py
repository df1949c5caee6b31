"""The README's "What it does" sequence, run top to bottom in a fresh folder.

By default each training and sampling command gets flags appended that make it small (click takes the last
value of an option), so the sequence is checked in seconds; ``DGM_PYRO_FULL_TESTS=1`` runs it exactly as
written (about 8 minutes on 2 cores).
"""

import os
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

README = (Path(__file__).parents[1] / "README.md").read_text()
FULL = os.environ.get("DGM_PYRO_FULL_TESTS") == "1"
SMALL = {"train": ["--epochs", "2", "--particles", "20", "--hidden", "32"],
         "train graph-ssm": ["--steps", "4", "--checkpoint-every", "2", "--baseline-steps", "2"],
         "evaluate": ["--particles", "50"], "diagnose": ["--particles", "20"], "forecast": ["--samples", "10"],
         "backtest": ["--steps", "4", "--refit-steps", "2", "--checkpoint-every", "2", "--baseline-steps", "2",
                      "--samples", "10"]}


def _sequence() -> list[list[str]]:
    block = re.search(r"## What it does\n\n```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == "dgm-pyro", line
        commands.append(words[1:])
    return commands


def _small(args: list[str]) -> list[str]:
    if FULL or "--resume" in args:
        return args
    key = "train graph-ssm" if args[:2] == ["train", "graph-ssm"] else args[0]
    return args + SMALL.get(key, [])


def test_what_it_does_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for args in _sequence():
        r = CliRunner().invoke(cli, _small(args))
        assert r.exit_code == 0, (args, r.output)
        outputs[" ".join(args)] = r.stdout
    assert "training is complete" in outputs["train --resume runs/digits"]
    runs = tmp_path / "runs"
    assert (runs / "digits" / "sevens.png").read_bytes()[:4] == b"\x89PNG" and (runs / "q2" / "q2.png").is_file()
    assert (runs / "text" / "seven.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # everything the README makes is under runs/
    assert (tmp_path / "runs" / "dsbm" / "forecast.nc").is_file()
    assert "sparse edges" in outputs["forecast runs/dsbm --horizon 5 --edges sparse --out runs/dsbm/sparse.nc"]
    assert "oracle" in outputs["forecast runs/dsbm --horizon 5"]
    assert "adaptive importance sampling" in outputs["evaluate runs/digits --particles 5000"]  # the default, auto
    assert "importance-sampled" in outputs["evaluate runs/digits --method is"]
    assert len(list((tmp_path / "runs").glob("backtest-*/backtest.csv"))) == 1
