"""The CLI reference documents every option of every command."""

from pathlib import Path

from cli.main import cli

DOC = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


def test_every_cli_option_is_documented():
    missing = []
    for name, cmd in cli.commands.items():
        assert f"`dgm-pyro {name}" in DOC, name
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("--") and f"`{opt}`" not in DOC:
                    missing.append(f"{name} {opt}")
    assert not missing, missing
