"""The extension contract (docs/extending.md), driven the way an outsider's package is: the example package in
docs/examples/mixture-vae-plugin, registered through its own entry point, goes through every command."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner

from cli import options
from cli.main import cli
from dgm_pyro import registry
from dgm_pyro.infer import log_evidence
from dgm_pyro.runs import load_run

ROOT = Path(__file__).parents[1]
PLUGIN = ROOT / "docs" / "examples" / "mixture-vae-plugin"
TRAIN = ["--dataset", "digits", "--epochs", "3", "--batch-size", "250", "--particles", "20", "--seed", "1"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example installed as pip would: its module importable, and a dist-info folder with the entry points
    of its pyproject.toml, so that importlib.metadata (and so dgm-pyro's registry) finds it."""
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    (info / "top_level.txt").write_text("mixture_vae\n")
    groups = meta["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()))
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(PLUGIN))
    mp.syspath_prepend(str(site))
    mp.setattr(registry, "_loaded", False)
    mp.setattr(options.SampleCommand, "_extra", None)
    yield meta
    registry._REGISTRY.pop("mixture-vae", None)
    mp.undo()
    options.SampleCommand._extra = None


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(plugin, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = _cli("train", "mixture-vae", *TRAIN, "--out", root, "--name", "whole", "--json")
    assert r.exit_code == 0, r.output
    return root / "whole", json.loads(r.stdout)


def test_the_entry_point_registers_the_model_and_its_options(plugin):
    assert "mixture-vae" in registry.model_names()
    r = _cli("train", "mixture-vae", "--help")
    assert r.exit_code == 0
    assert "--components" in r.stdout and "--kl-samples" in r.stdout and "[site]" in r.stdout  # narrowed choice
    r = _cli("sample", "--help")
    assert r.exit_code == 0 and re.search(r"--component K\s+Draw z from this component", r.stdout)
    assert "(for mixture-vae runs)" in " ".join(r.stdout.split())


def test_an_objective_that_cannot_apply_is_refused_before_any_folder(plugin, tmp_path):
    """The KL of a Gaussian against a mixture prior has no closed form (its D_CS has, P2): free bits are refused in
    one line that says what to give, and no folder is made; with --kl-samples the same command trains."""
    r = _cli("train", "mixture-vae", *TRAIN, "--objective", "free-bits", "--free-bits", "0.5", "--out",
             tmp_path / "refused")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert r.stderr.startswith("error: objective 'free-bits' cannot train this mixture-vae model: FreeBitsELBO: no "
                               "closed-form KL for site 'code' (Independent vs MixtureSameFamily)")
    assert "--kl-samples N" in r.stderr and not (tmp_path / "refused").exists()
    r = _cli("train", "mixture-vae", *TRAIN, "--epochs", "1", "--objective", "free-bits", "--free-bits", "0.5",
             "--kl-samples", "4", "--out", tmp_path / "fb", "--json")
    assert r.exit_code == 0, r.output
    assert "FreeBitsELBO(lam=0.5, per='site'" in json.loads(r.stdout)["train"]["objective"]
    r = _cli("train", "mixture-vae", *TRAIN, "--free-bits-per", "dim", "--out", tmp_path / "dim")
    assert r.exit_code == 2 and "'dim' is not 'site'" in r.stderr and not (tmp_path / "dim").exists()
    r = _cli("train", "mixture-vae", *TRAIN, "--kl-samples", "4", "--out", tmp_path / "ks")
    assert r.exit_code == 2 and "kl_samples is for objectives" in r.stderr and not (tmp_path / "ks").exists()


def test_the_run_records_the_package_and_resumes_exactly(plugin, trained, tmp_path, interrupt_training):
    whole, info = trained
    env = json.loads((whole / "environment.json").read_text())
    assert env["model"] == {"name": "mixture-vae", "module": "mixture_vae", "package": plugin["name"],
                            "version": plugin["version"]}
    assert info["train"]["epochs_run"] == 3

    restore = interrupt_training(2)
    r = _cli("train", "mixture-vae", *TRAIN, "--out", tmp_path, "--name", "cut")
    assert r.exit_code == 130 and "dgm-pyro train --resume" in r.stderr
    restore()
    r = _cli("train", "--resume", tmp_path / "cut", "--json")
    assert r.exit_code == 0, r.output
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(r.stdout)["test"]["log_evidence"] == info["test"]["log_evidence"]


def test_evaluate_by_three_methods_matches_the_library(plugin, trained, tmp_path):
    """Each method through the CLI is the library's estimate with the same seed, each file kept beside the others,
    and each estimate of log p(x|y) lies above the ELBO (importance sampling and AIS tighten it)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    run = load_run(run_dir)
    x, y = run.dataset.splits["test"]
    settings = {"is": [], "adaptive": ["--rounds", "2"], "ais": ["--ais-steps", "10"]}
    for method, extra in settings.items():
        r = _cli("evaluate", run_dir, "--method", method, "--particles", "16", "--seed", "3", *extra, "--json")
        assert r.exit_code == 0, r.output
        ev = json.loads(r.stdout)
        pyro.set_rng_seed(3)
        direct = log_evidence(run.module.model, run.module.guide, x, y, num_particles=16, warn=False, method=method,
                              num_steps=10, num_rounds=2)
        assert ev["log_evidence"] == pytest.approx(float(direct.log_evidence.mean()), abs=1e-6), method
        assert ev["log_evidence"] > ev["elbo"], method
        assert Path(ev["file"]).is_file()
    assert len(list(run_dir.glob("evaluation*.json"))) == 4  # train's own (K=20) and these three


def test_diagnose_measures_the_declared_site_with_a_monte_carlo_kl(plugin, trained, tmp_path):
    """The site is ``code`` (declared by the model kind); the mixture prior has no closed-form KL, so the report
    says its KL is a Monte Carlo estimate: E_x[log q(z|x) - log p(z)] at the draws of the same seed."""
    import shutil

    from dgm_pyro.diagnostics import encoder_posteriors

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    r = _cli("diagnose", run_dir, "--particles", "0", "--samples", "200", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["latent_dim"] == 4 and rep["kl_per_dimension"] == []
    assert "the KL is a Monte Carlo estimate" in rep["extra"]["note"]
    run = load_run(run_dir)
    x, y = run.dataset.splits["test"]
    q, p = encoder_posteriors(run.module.model, run.module.guide, x, y, site="code")
    torch.manual_seed(0)
    z = q.sample((2000,))
    kl = float((q.log_prob(z) - p.log_prob(z)).mean().detach())
    assert rep["kl"] == pytest.approx(kl, abs=0.1)  # two Monte Carlo estimates of the same expectation


def test_sample_takes_the_models_own_option(plugin, trained, tmp_path):
    """``--component K`` draws z from the K-th Gaussian of the prior: the decoder means equal those of z drawn
    by hand from that Gaussian with the same seed, and differ between components."""
    out = tmp_path / "k3.npz"
    r = _cli("sample", trained[0], "--component", "3", "--num", "5", "--seed", "2", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    got = np.load(out)["x"]
    assert got.shape == (10, 5, 64)
    run = load_run(trained[0])
    y = torch.eye(10).repeat_interleave(5, 0)
    pyro.set_rng_seed(2)
    m = run.module
    z = torch.distributions.Normal(m.locs[3], m.log_scales[3].exp()).sample((50,))
    with torch.no_grad():
        probs = m.decoder(torch.cat([z, y], -1)).reshape(50, 64, 17).softmax(-1)
    expected = (probs * torch.arange(17.0)).sum(-1).reshape(10, 5, 64)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    r = _cli("sample", trained[0], "--component", "0", "--num", "5", "--seed", "2", "--out", tmp_path / "k0.npz")
    assert r.exit_code == 0 and not np.allclose(np.load(tmp_path / "k0.npz")["x"], got, atol=1e-2)
    r = _cli("sample", trained[0], "--component", "10")
    assert r.exit_code == 2 and r.stderr.strip() == ("error: --component must be below the prior's 10 components, "
                                                     "got 10")
    r = _cli("sample", trained[0], "--num", "2", "--out", tmp_path / "all.png")  # the whole mixture, as an image
    assert r.exit_code == 0 and (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"


def test_forecast_is_refused_in_one_line(plugin, trained):
    r = _cli("forecast", trained[0], "--horizon", "2")
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {trained[0]}: a mixture-vae run has no 'forecast'; use 'dgm-pyro evaluate RUN'"


def test_the_model_is_a_plain_pyro_program(plugin):
    """SVI with pyro.optim raises the ELBO of the example's model on digits; Predictive draws both sites."""
    import mixture_vae
    from pyro.infer import SVI, Predictive, Trace_ELBO

    from dgm_pyro.data import load_dataset

    data = load_dataset("digits")
    x, y = data.splits["train"]
    kind = mixture_vae.MixtureVAEKind()
    pyro.set_rng_seed(0)
    vae = kind.build(mixture_vae.MixtureVAEConfig(), data)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    losses = [svi.step(x[:500], y[:500]) / 500 for _ in range(150)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 20  # nats per image
    draws = Predictive(vae.model, guide=vae.guide, num_samples=3)(x[:7], y[:7])
    assert draws["code"].shape == (3, 7, 4) and draws["x"].shape == (3, 7, 64)


def test_the_page_quotes_the_example_as_it_is():
    """Every Python block of docs/extending.md is an excerpt of the example package, word for word."""
    page = (ROOT / "docs" / "extending.md").read_text()
    source = (PLUGIN / "mixture_vae.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert blocks
    for block in blocks:
        assert block in source, block[:80]


def test_a_sample_option_of_another_model_is_refused(plugin, tmp_path):
    r = _cli("train", "cvae", "--epochs", "1", "--hidden", "16", "--particles", "5", "--out", tmp_path, "--name", "c")
    assert r.exit_code == 0, r.output
    r = _cli("sample", tmp_path / "c", "--component", "2")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --component: not an option of a cvae run's sample (see 'dgm-pyro sample --help')"
    assert not (tmp_path / "c" / "samples.png").exists()
