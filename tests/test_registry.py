"""A model registered from outside the package trains, resumes exactly and evaluates through the CLI, and
the registry's errors are one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from click.testing import CliRunner
from pyro.nn import PyroModule
from torch import nn

from cli.main import cli
from dgm_pyro import registry
from dgm_pyro.config import option
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.registry import get_model, model_names, register_model
from dgm_pyro.runs import DatasetConfig, DatasetModelKind, load_run


class LinearVAE(PyroModule):
    """A third party's model: z ~ N(A y, I), x ~ N(W z + V y + c, diag s^2), guide N(linear(x, y), diag)."""

    def __init__(self, x_dim: int, y_dim: int, latent_dim: int):
        super().__init__("linear_vae")
        self.latent_dim = latent_dim
        self.prior_map = nn.Linear(y_dim, latent_dim)
        self.decoder = nn.Linear(latent_dim + y_dim, x_dim)
        self.log_scale = nn.Parameter(torch.zeros(x_dim))
        self.encoder = nn.Linear(x_dim + y_dim, 2 * latent_dim)

    def model(self, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        pyro.module("linear_vae", self)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_map(y), 1.0).to_event(1))
            loc = self.decoder(torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1))
            pyro.sample("x", dist.Normal(loc, self.log_scale.exp()).to_event(1), obs=x)

    def guide(self, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        pyro.module("linear_vae", self)
        loc, raw = self.encoder(torch.cat([x, y], -1)).chunk(2, -1)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


@dataclass
class LinearVAEConfig(DatasetConfig):
    model: str = option("linear-vae", "registered model name", cli=False)
    dataset: str = option("linear-gaussian", "an (x, y) dataset with Gaussian x.")
    latent_dim: int = option(2, "Dimension of z.", min=1)


class LinearVAEKind(DatasetModelKind):
    name: ClassVar[str] = "linear-vae"
    config_class: ClassVar[type] = LinearVAEConfig
    description: ClassVar[str] = "a linear Gaussian VAE registered by a test"

    def build(self, config: LinearVAEConfig, data) -> LinearVAE:
        return LinearVAE(data.x_dim, data.y_dim, config.latent_dim)


@pytest.fixture()
def registered():
    register_model(LinearVAEKind)
    yield LinearVAEKind
    registry._REGISTRY.pop("linear-vae", None)


ARGS = ["--epochs", "4", "--batch-size", "250", "--particles", "30", "--seed", "5", "--json"]


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_outside_model_trains_resumes_and_evaluates_through_the_cli(registered, tmp_path, interrupt_training):
    r = _cli("train", "linear-vae", "--help")
    assert r.exit_code == 0 and "--latent-dim" in r.output and "--decoder" not in r.output
    r = _cli("train", "linear-vae", "--out", tmp_path / "whole", *ARGS)
    assert r.exit_code == 0, r.output
    whole = json.loads(r.stdout)
    assert whole["train"]["epochs_run"] == 4 and json.loads(
        (tmp_path / "whole").glob("linear-vae-*").__next__().joinpath("config.json").read_text())["model"] == "linear-vae"

    # the same run, crashed after its second epoch, then resumed from the checkpoint
    restore = interrupt_training(2)
    r = _cli("train", "linear-vae", "--out", tmp_path / "crashed", *ARGS)
    assert r.exit_code != 0
    restore()
    (crashed,) = (tmp_path / "crashed").glob("linear-vae-*")
    assert len((crashed / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs
    r = _cli("train", "--resume", crashed, "--json")
    assert r.exit_code == 0, r.output
    (done,) = (tmp_path / "whole").glob("linear-vae-*")
    a = torch.load(done / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(crashed / "checkpoint.pt", weights_only=True)["model_state"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads(r.stdout)["test"]["log_evidence"] == whole["test"]["log_evidence"]

    r = _cli("evaluate", crashed, "--particles", "40", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    run = load_run(crashed)
    pyro.set_rng_seed(0)
    direct = log_evidence(run.module.model, run.module.guide, *run.dataset.splits["test"], num_particles=40,
                          warn=False, method="adaptive")
    assert ev["method"] == "adaptive"  # the default, auto, where every latent is continuous and guided
    assert ev["log_evidence"] == pytest.approx(float(direct.log_evidence.mean()), abs=1e-9)
    assert ev["true_log_likelihood"] == pytest.approx(float(run.dataset.true_log_likelihood(
        *run.dataset.splits["test"]).mean()))
    assert ev["log_evidence"] < ev["true_log_likelihood"] + 0.5  # a model fit cannot beat the generator by much
    r = _cli("diagnose", crashed, "--particles", "0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["latent_dim"] == 2
    # sample: the generic draw runs model(None, y) forward and takes the mean at site x, W z + V y + c with
    # z ~ N(A y, I), for the first 8 test conditions (the model has no sample method of its own)
    r = _cli("sample", crashed, "--num", "3", "--seed", "4", "--json")
    assert r.exit_code == 0, r.output
    got = np.load(crashed / "samples.npz")
    y = run.dataset.splits["test"][1][:8]
    np.testing.assert_array_equal(got["y"], y.numpy())
    pyro.set_rng_seed(4)
    with torch.no_grad():
        z = torch.distributions.Normal(run.module.prior_map(y.repeat_interleave(3, 0)), 1.0).sample()
        mean = run.module.decoder(torch.cat([z, y.repeat_interleave(3, 0)], -1))
    np.testing.assert_allclose(got["x"], mean.reshape(8, 3, -1).numpy(), atol=1e-6)
    r = _cli("forecast", crashed, "--horizon", "2")
    assert r.exit_code == 2 and "a linear-vae run has no 'forecast'" in r.stderr


def test_entry_point_group_registers_a_model(monkeypatch):
    class EntryPoint:
        name = "linear-vae"

        @staticmethod
        def load():
            return LinearVAEKind

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert "linear-vae" in model_names() and isinstance(get_model("linear-vae"), LinearVAEKind)
    finally:
        registry._REGISTRY.pop("linear-vae", None)


def test_a_broken_entry_point_is_skipped_with_a_warning_naming_it(monkeypatch):
    """A plugin whose entry point names a module that is not there: one warning that names the model, its package
    and the entry point; the built-in models (registered through the same group) and the CLI work."""
    import importlib.metadata

    real = importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)
    assert {ep.name for ep in real} >= {"cvae", "graph-ssm"}  # the built-ins come from dgm-pyro's own metadata

    class Broken:
        name, value = "ghost", "ghost_package.models:Ghost"

        class dist:  # noqa: N801  (the attribute of importlib.metadata.EntryPoint)
            name = "ghost-package"

        def load(self):
            import ghost_package  # noqa: F401

    monkeypatch.setattr(registry, "_loaded", False)
    for name in ("cvae", "graph-ssm"):
        monkeypatch.delitem(registry._REGISTRY, name)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [Broken(), *real] if group == registry.ENTRY_POINT_GROUP else [])
    with pytest.warns(RuntimeWarning, match=r"skipped the model 'ghost' of ghost-package: its entry point "
                                            r"'ghost_package.models:Ghost' \(group dgm_pyro.models\) failed to load: "
                                            r"ModuleNotFoundError"):
        assert model_names()[:2] == ["cvae", "graph-ssm"] and "ghost" not in model_names()
    r = _cli("train", "cvae", "--help")
    assert r.exit_code == 0 and "--latent-dim" in r.stdout


def test_registry_errors():
    with pytest.raises(DgmPyroError, match="unknown model 'nope'; registered models: cvae, graph-ssm"):
        get_model("nope")

    class Clash(DatasetModelKind):
        name = "cvae"

    with pytest.raises(DgmPyroError, match="already registered"):
        register_model(Clash)

    class Nameless(DatasetModelKind):
        pass

    with pytest.raises(DgmPyroError, match="needs a non-empty string 'name'"):
        register_model(Nameless)


def test_options_added_later_leave_older_runs_resumable():
    """Fields marked ``added`` (the text options) stay out of the config digest at their default, so a run
    made before they existed still resumes: these are the digests the code before them computed (95046f2)."""
    from dgm_pyro.runs import CVAEConfig

    assert CVAEConfig().digest() == "bd72e9f94a4d9141"
    assert CVAEConfig(objective="elbo", dataset="digits-q2").digest() == "ed6d778ad71dbaa9"
    assert CVAEConfig(dataset="digits-text", text_dim=32).digest() != CVAEConfig(dataset="digits-text").digest()


def test_a_changed_default_leaves_older_graph_runs_as_they_were():
    """graph-ssm's feature_emission was added with the default ``auto`` while runs before it were Gaussian:
    a configuration saved before it (written by the code of f6db84c) reads ``gaussian`` and keeps the digest
    that code computed, while a new configuration gets ``auto``."""
    import json
    from pathlib import Path

    from dgm_pyro.runs import GraphConfig

    saved = json.loads((Path(__file__).parent / "data" / "graph_config_f6db84c.json").read_text())
    assert "feature_emission" not in saved
    old = GraphConfig.from_saved(saved).validate()
    assert old.feature_emission == "gaussian" and old.digest() == "0987282206d5fbd1"
    assert GraphConfig.from_saved({"model": "graph-ssm"}).digest() == "0b49d1fd14086333"
    assert GraphConfig().feature_emission == "auto" and GraphConfig().digest() != "0b49d1fd14086333"
    assert GraphConfig.from_dict({"model": "graph-ssm"}).feature_emission == "auto"
    # auto chose one emission for all features until auto_emission came with its per-feature default
    assert GraphConfig.from_saved({"model": "graph-ssm", "feature_emission": "auto"}).auto_emission == "joint"
    assert GraphConfig().auto_emission == "per-feature"
    # the node-activity edge term came later still, on by default; saved runs had none
    assert GraphConfig.from_saved(saved).node_activity is False and GraphConfig().node_activity is True
    # forecasts drew the last latent from the guide until final_state came, with the transition as its default
    assert GraphConfig.from_saved(saved).final_state == "guide" and GraphConfig().final_state == "transition"


def test_evaluation_estimates_blocks_of_datapoints_and_joins_them(registered, tmp_path, monkeypatch):
    """``evaluate`` hands ``log_evidence`` at most EVALUATION_BLOCK datapoints at a time (adaptive importance
    sampling holds a covariance per datapoint) and joins the blocks in order: with blocks of 7 and a recorder in
    place of the estimator whose value is known per datapoint, every datapoint's value comes back in its row."""
    from dgm_pyro.infer import evidence
    from dgm_pyro.infer.evidence import EvidenceResult
    from dgm_pyro.runs import dataset_models
    from dgm_pyro.runs.base import load_run

    r = _cli("train", "linear-vae", "--out", tmp_path, "--epochs", "1", "--particles", "2", "--json")
    assert r.exit_code == 0, r.output
    run = load_run(next(tmp_path.glob("linear-vae-*")))
    sizes = []

    def recorder(model, guide, x, y, num_particles, **kwargs):
        sizes.append(x.shape[0])
        value = -x.double().sum(-1)
        nan = torch.full_like(value, float("nan"))
        return EvidenceResult(value, value.abs(), value - 1, value.abs(), value.abs(), nan, num_particles, ("data",),
                              method="is")

    monkeypatch.setattr(dataset_models, "EVALUATION_BLOCK", 7)
    monkeypatch.setattr(evidence, "log_evidence", recorder)
    out = run.kind.evaluate(run, particles=3, method="is", write=False)
    x = run.dataset.splits["test"][0]
    assert sizes == [7] * (x.shape[0] // 7) + ([x.shape[0] % 7] if x.shape[0] % 7 else [])
    assert out["per_datapoint"]["log_evidence"] == (-x.double().sum(-1)).tolist()
    assert out["per_datapoint"]["elbo"] == (-x.double().sum(-1) - 1).tolist()


def test_evidence_results_of_blocks_join_field_by_field():
    from dgm_pyro.infer.evidence import EvidenceResult

    def part(values, k=5, method="is", weights=True):
        t = torch.tensor(values, dtype=torch.float64)
        lw = torch.stack([t] * k) if weights else None
        return EvidenceResult(t, t + 1, t + 2, t + 3, t + 4, t + 5, k, ("data",), lw, method)

    joined = EvidenceResult.cat([part([1.0, 2.0]), part([3.0])])
    for i, name in enumerate(("log_evidence", "stderr", "elbo", "elbo_stderr", "ess", "khat")):
        assert getattr(joined, name).tolist() == [1.0 + i, 2.0 + i, 3.0 + i]
    assert joined.log_weights.shape == (5, 3) and joined.log_weights[0].tolist() == [1.0, 2.0, 3.0]
    assert (joined.num_particles, joined.plates, joined.method) == (5, ("data",), "is")
    assert EvidenceResult.cat([part([1.0], weights=False), part([2.0], weights=False)]).log_weights is None
    for other in (part([3.0], k=6), part([3.0], method="adaptive")):
        with pytest.raises(ValueError, match="^EvidenceResult.cat: the parts differ in particles, plates or method$"):
            EvidenceResult.cat([part([1.0]), other])


def test_a_pixelcnn_decoder_gets_smaller_chunks_in_evaluation_and_validation():
    """A gated PixelCNN holds 4 x channels values per pixel in a layer: evaluation and validation bound x's elements
    in a chunk by MAX_CHUNK_ELEMENTS / (4 channels) (one validation of 10,000 MNIST images went past 24 GB)."""
    from dgm_pyro.callbacks import Validation
    from dgm_pyro.data import load_dataset
    from dgm_pyro.infer.evidence import MAX_CHUNK_ELEMENTS
    from dgm_pyro.runs import TrainConfig
    from dgm_pyro.runs.cvae import CVAEKind

    kind = CVAEKind()
    mlp = TrainConfig(dataset="digits-unconditional").validate()
    pixelcnn = TrainConfig(dataset="digits-unconditional", decoder="pixelcnn", pixelcnn_channels=8).validate()
    assert kind.chunk_elements(mlp) == MAX_CHUNK_ELEMENTS
    assert kind.chunk_elements(pixelcnn) == MAX_CHUNK_ELEMENTS // 32
    data = load_dataset(pixelcnn.dataset)
    validation, = [cb for cb in kind.callbacks(pixelcnn, data, torch.device("cpu")) if isinstance(cb, Validation)]
    assert validation.max_elements == MAX_CHUNK_ELEMENTS // 32
