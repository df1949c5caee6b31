"""The CLI reference documents every option of every command."""

from pathlib import Path

import pytest

from cli.main import cli

DOC = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


def _commands():
    """Every command, the train group's model subcommands included, as (name, click command)."""
    import click

    ctx = click.Context(cli)
    for name, cmd in cli.commands.items():
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield f"{name} {sub}", cmd.get_command(ctx, sub)
        else:
            yield name, cmd


def test_every_cli_option_is_documented():
    missing = []
    for name, cmd in _commands():
        assert f"`dgm-pyro {name}" in DOC, name
        for p in cmd.params:
            for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", []):
                if opt.startswith("--") and f"`{opt}`" not in DOC:
                    missing.append(f"{name} {opt}")
    assert not missing, missing


def _documented_commands():
    """Every ``dgm-pyro ...`` command in a shell block of README.md and docs/*.md, as (file, argument list); the
    plugin model of docs/extending.md is left to tests/test_extending.py, which registers it."""
    import re
    import shlex

    root = Path(__file__).parents[1]
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path.name == "extending.md":
            continue
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line.strip().removeprefix("$ ").split(" #")[0]):
                    if part.startswith("dgm-pyro "):
                        yield path.name, shlex.split(part)[1:]


def test_documented_commands_parse():
    """Each documented command names a real command and options it takes, with valid values (choices, ranges): a
    renamed or removed option cannot stay in the docs. Parsed as the CLI parses them, not run."""
    import warnings

    import click

    def unparsed(ctx):  # the subcommand and its arguments (Click 9 keeps them all in ctx.args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return [*getattr(ctx, "protected_args", []), *ctx.args]

    commands = list(_documented_commands())
    assert len(commands) >= 40
    wrong = []
    for name, args in commands:
        try:
            ctx = cli.make_context("dgm-pyro", list(args))
            cmd, rest = cli, unparsed(ctx)
            while isinstance(cmd, click.Group) and rest:
                sub, cmd, rest = cmd.resolve_command(ctx, rest)
                ctx = cmd.make_context(sub, list(rest), parent=ctx)
                rest = unparsed(ctx) if isinstance(cmd, click.Group) else []
        except click.exceptions.Exit:  # --help
            continue
        except Exception as e:  # click's usage errors and our DgmPyroError (an unknown model)
            wrong.append((name, " ".join(args), str(e)))
    assert not wrong, wrong


def test_option_tables_are_the_generated_ones():
    """The per-model option tables in docs/cli.md are exactly what the configuration dataclasses say (so a
    changed default cannot leave the docs behind): regenerate with cli.options.options_markdown."""
    import re

    from cli.options import options_markdown
    from dgm_pyro.registry import get_model

    tables = dict(re.findall(r"<!-- options:(\S+) -->\n(.*?)\n<!-- /options:\1 -->", DOC, flags=re.S))
    assert set(tables) == {"cvae", "graph-ssm"}
    for name, table in tables.items():
        assert table == options_markdown(get_model(name).config_class), name


def test_tutorial_runs_and_its_numbers_hold(capsys):
    """The CS-ELBO tutorial's code, run as written: the importance-sampled evidence of the user's model
    matches its exact marginal likelihood, and the CS-ELBO is above it (not a lower bound, P2.2)."""
    import re
    import warnings

    text = (Path(__file__).parents[1] / "docs" / "tutorial_cselbo.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the k-hat warning the tutorial discusses
        exec(compile(code, "tutorial_cselbo.md", "exec"), namespace)
    result, exact, loss = namespace["result"], namespace["exact"], namespace["loss"]
    ll, truth = float(result.log_evidence.mean()), float(exact.mean())
    assert abs(ll - truth) < 0.05
    cs = -loss.loss(namespace["ppca"].model, namespace["ppca"].guide, namespace["data"]) / 500
    assert cs > truth + 1.0
    printed = capsys.readouterr().out
    # the numbers quoted in the tutorial are the ones it prints
    quoted = re.search(r"What it prints.*?```\n(.*?)```", text, flags=re.S).group(1)
    assert printed.strip() == quoted.strip()


ROOT = Path(__file__).parents[1]


def _python_blocks(name: str) -> str:
    import re

    return "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S))


def test_readme_example_runs_as_written():
    """The README's Python example: one SVI step of the CVAE with pyro.optim, then per-digit evidence."""
    import math

    import pyro

    ns: dict = {}
    exec(compile(_python_blocks("README.md"), "README.md", "exec"), ns)
    assert len(pyro.get_param_store()) == len(list(ns["cvae"].parameters()))  # trained through pyro.optim
    res = ns["res"]
    assert res.log_evidence.shape == (447,) and all(math.isfinite(v) for v in res.log_evidence.tolist())
    # one step from random weights: about 64 pixels x log 17 levels = 181 nats per digit
    assert abs(float(res.log_evidence.mean()) + 64 * math.log(17)) < 15


def test_quickstart_example_matches_the_exact_evidence():
    import torch

    ns: dict = {}
    exec(compile(_python_blocks("docs/quickstart.md"), "quickstart.md", "exec"), ns)
    # the comment in the example: exact value Normal(0, sqrt 2).log_prob(x); 2000 particles of a guide
    # close to the posterior N(x/2, 1/2) give a standard error well under 0.02
    exact = torch.distributions.Normal(0.0, 2 ** 0.5).log_prob(ns["x"])
    assert ns["res"].log_evidence.shape == (5,)
    assert torch.allclose(ns["res"].log_evidence.float(), exact, atol=0.05)


def test_quickstart_shows_the_lines_train_prints(tmp_path):
    """The output quoted in docs/quickstart.md is what `dgm-pyro train` prints: each quoted line, with its numbers
    and the run folder's path written generically, is a line of a short run's output (stop reason aside)."""
    import re

    from click.testing import CliRunner

    text = (ROOT / "docs" / "quickstart.md").read_text()
    quoted = re.search(r"```\n(run folder:.*?)```", text, flags=re.S).group(1).splitlines()
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), "--epochs", "2", "--hidden", "16", "--particles",
                                 "20"])
    assert r.exit_code == 0, r.output

    def shape(line: str) -> str:
        line = re.sub(r"\S*cvae-\d{8}-\d{6}", "RUN", line)
        return re.sub(r"\(# [kMG]?B\)", "(SIZE)", re.sub(r"-?\d+(\.\d+)?", "#", line)).rstrip()

    printed = {shape(line) for line in r.stdout.splitlines()}
    lines = [q for q in quoted if q.strip() not in ("...", "")]
    assert len(lines) >= 10
    for line in lines:
        assert shape(line) in printed, line


def _graphs_example(steps: int) -> dict:
    code = _python_blocks("docs/graphs.md")
    assert "range(400)" in code
    ns: dict = {}
    exec(compile(code.replace("range(400)", f"range({steps})"), "graphs.md", "exec"), ns)
    return ns


def test_graphs_example_trains_with_pyro_optim():
    """docs/graphs.md's example, with 3 of its 400 steps: pyro.optim trains every tensor of the GraphSSM, and
    the forecast has the shapes the example states."""
    import pyro
    import torch

    from dgm_pyro.models import GraphSSM

    ns = _graphs_example(3)
    model = ns["model"]
    pyro.set_rng_seed(0)
    fresh = GraphSSM(ns["seq"].num_nodes, ns["seq"].num_features, feature_shift=ns["history"].x.mean((0, 1)),
                     feature_scale=ns["history"].x.std((0, 1)))
    assert len(pyro.get_param_store()) == len(list(model.parameters())) > 0
    trained = dict(model.named_parameters())
    unchanged = [k for k, v in fresh.named_parameters() if torch.equal(v, trained[k])]
    assert not unchanged
    assert ns["paths"]["X"].shape == (200, 5, 200, 4) and ns["paths"]["edge_prob"].shape == (200, 5, 200, 200)


@pytest.mark.slow
def test_graphs_example_as_written_forecasts_well():
    """The whole example (400 steps): the one-step link AUC on the held-out snapshot is far above chance."""
    from dgm_pyro.metrics import forecast_scores

    ns = _graphs_example(400)
    rows = forecast_scores(ns["paths"], ns["future"], ns["history"], 1)
    assert rows[0]["auc"] > 0.7


def test_text_tutorial_runs_and_generates_the_named_digit():
    """docs/text.md's tutorial as written: a text CVAE on the user's own captions, trained with pyro.optim;
    an independent classifier reads the images generated for "a big number: seven" as sevens."""
    import math
    import warnings

    from dgm_pyro.faithfulness import digit_classifier

    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PSIS k-hat warning of the 200-particle estimate
        exec(compile(_python_blocks("docs/text.md"), "text.md", "exec"), ns)
    assert ns["sevens"].shape == (16, 64)
    read = digit_classifier().predict(ns["sevens"].numpy() / 16.0)
    assert (read == 7).mean() >= 0.9
    ll = float(ns["res"].log_evidence.mean())
    assert ll > -64 * math.log(17) + 50  # at least 50 nats above 64 uniform 17-level pixels (181.3 nats)
