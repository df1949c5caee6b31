"""The first minutes of a new user (issue 28): the command alone, a misspelt model, Ctrl-C and the resume it
points to, a finished run asked for more epochs, a run with no checkpoint."""

import json

from click.testing import CliRunner

from cli.main import cli

TINY = ["--hidden", "16", "--latent-dim", "2", "--particles", "5", "--batch-size", "200"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_command_alone_prints_its_help():
    r = run()
    assert r.exit_code == 0 and r.stdout.startswith("Usage: ") and "train" in r.stdout and not r.stderr


def test_a_misspelt_model_gets_the_nearest_name():
    r = run("train", "cvea")
    assert r.exit_code == 2 and "unknown model 'cvea' (did you mean 'cvae'?)" in r.stderr
    r = run("train", "zzz")
    assert r.exit_code == 2 and "did you mean" not in r.stderr and "registered models: cvae, graph-ssm" in r.stderr


def test_ctrl_c_says_how_to_resume_and_the_resume_says_where_it_continues(tmp_path, monkeypatch):
    """Ctrl-C after epoch 2 (a KeyboardInterrupt from the training loop): exit code 130 and one line naming the kept
    checkpoint and the command; that command continues after epoch 2 and says so."""
    import dgm_pyro.runs as runs
    from dgm_pyro.callbacks import OnInterval

    real = runs.train_run

    def interrupted(*args, **kwargs):
        def stop(row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

        return real(*args, **kwargs, callbacks=[OnInterval(stop)])

    monkeypatch.setattr(runs, "train_run", interrupted)
    r = run("train", "--out", tmp_path, "--name", "r", "--epochs", "4", *TINY)
    assert r.exit_code == 130, r.output
    assert f"interrupted: the checkpoint after epoch 2 is kept; continue with 'dgm-pyro train --resume {tmp_path / 'r'}'" \
        in r.stderr
    monkeypatch.setattr(runs, "train_run", real)
    r = run("train", "--resume", tmp_path / "r", "--json")
    assert r.exit_code == 0, r.output
    assert f"resuming {tmp_path / 'r'} after epoch 2" in r.stderr
    assert json.loads(r.stdout)["train"]["epochs_run"] == 4


def test_more_epochs_for_a_run_that_stopped_early_names_its_patience(tmp_path):
    from dgm_pyro.checkpoint import load_checkpoint, save_checkpoint

    r = run("train", "--out", tmp_path, "--name", "r", "--epochs", "2", "--patience", "3", *TINY, "--json")
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ckpt["trainer_state"]["stopped"] = "early"  # as if the validation score had stopped improving
    save_checkpoint(ckpt, tmp_path / "r" / "checkpoint.pt")
    r = run("train", "--resume", tmp_path / "r", "--epochs", "80")
    assert r.exit_code == 2
    assert "stopped early at epoch 2 (no better validation score for 3 epochs); more epochs would not train" in r.stderr


def test_a_run_without_a_checkpoint_says_how_to_go_on(tmp_path):
    r = run("train", "--out", tmp_path, "--name", "r", "--epochs", "1", *TINY, "--json")
    assert r.exit_code == 0, r.output
    (tmp_path / "r" / "checkpoint.pt").unlink()
    (tmp_path / "r" / "best.pt").unlink()
    r = run("sample", tmp_path / "r", "--out", tmp_path / "s.png")
    assert r.exit_code == 2 and "no such checkpoint (its run stopped before writing the first one; train it with " \
                                  f"'dgm-pyro train --resume {tmp_path / 'r'}')" in r.stderr


def test_the_top_level_help_gives_each_command_its_whole_first_sentence():
    r = run("--help")
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "..." not in r.stdout.split("Commands:")[1]
    assert "Forecast the next H snapshots of a graph-ssm run as sample paths (seed P4.4), scored against the held-out " \
           "snapshots and the baselines" in text


def test_evaluations_of_other_methods_are_kept_beside_the_first(tmp_path):
    """train writes evaluation.json (adaptive importance sampling, the default, K particles on test); an evaluation
    with the encoder alone as proposal goes beside it under its own name, with a line saying so, and the first is
    unchanged; a larger K of the same method and split replaces evaluation.json."""
    r = run("train", "--out", tmp_path, "--name", "r", "--epochs", "1", *TINY, "--json")
    assert r.exit_code == 0, r.output
    path = tmp_path / "r"
    first = (path / "evaluation.json").read_text()
    assert json.loads(first)["method"] == "adaptive" and json.loads(first)["num_particles"] == 5
    r = run("evaluate", path, "--method", "is", "--particles", "20", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["file"] == str(path / "evaluation-test-is-K20.json")
    assert "holds the adaptive importance sampling evaluation of the test split (K=5); kept it" in r.stderr
    assert (path / "evaluation.json").read_text() == first
    assert json.loads((path / "evaluation-test-is-K20.json").read_text())["method"] == "is"
    r = run("evaluate", path, "--particles", "30", "--json")
    assert r.exit_code == 0 and json.loads((path / "evaluation.json").read_text())["num_particles"] == 30


def test_environment_records_the_models_package_and_version(tmp_path):
    """environment.json says which package (and version) the run's model kind came from: dgm-pyro's own for cvae,
    none for a kind defined outside any installed package."""
    import importlib.metadata

    from dgm_pyro.runs.base import model_origin

    r = run("train", "--out", tmp_path, "--name", "r", "--epochs", "1", *TINY, "--json")
    assert r.exit_code == 0, r.output
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert env["model"] == {"name": "cvae", "module": "dgm_pyro.runs.cvae", "package": "dgm-pyro",
                            "version": importlib.metadata.version("dgm-pyro")}

    class Local:
        name = "local"

    assert model_origin(Local()) == {"name": "local", "module": __name__, "package": None, "version": None}


def test_the_train_help_says_where_the_options_are():
    """No raw reStructuredText in the help; the options every model takes are named, with where to see them."""
    r = run("train", "--help")
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "``" not in r.stdout
    assert text.startswith("Usage: cli train [MODEL] [OPTIONS]...")  # the program name is "cli" under CliRunner
    assert "shown by 'dgm-pyro train MODEL --help'" in text and "--resume" in text
    sub = run("train", "cvae", "--help").stdout
    for flag in ("--out", "--name", "--config", "--resume", "--json", "--device", "--threads", "--quiet"):
        assert flag in sub, flag
