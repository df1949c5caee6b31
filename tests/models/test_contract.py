"""The plain-Pyro contract, for every registered model and every Pyro program it trains: ``SVI`` with
``pyro.optim`` trains every learnable tensor, ``Predictive`` works, ``poutine.trace`` shows the documented
site names, and ``log_evidence`` runs (or, for a subsampled likelihood, refuses in one line). Nothing here goes through dgm-pyro's own trainer."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.poutine.util import site_is_subsample

from dgm_pyro.data import load_dataset
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.registry import model_names
from dgm_pyro.runs import CVAEConfig, GraphConfig, build_baseline, build_model, build_graph_model, \
    load_graph_sequence
from dgm_pyro.runs.graph_ssm import build_graph_baseline


def _cvae(dataset="digits", **options):
    ds = load_dataset(dataset)
    cfg = CVAEConfig(dataset=dataset, hidden_dims=[16], latent_dim=3, **options).validate()
    x, y = ds.splits["train"]
    return build_model(cfg, ds), (x[:40], y[:40]), {"z"}, {"x"}


def _quadrant_baseline():
    ds = load_dataset("digits-q2")
    x, y = ds.splits["train"]
    return build_baseline(CVAEConfig(dataset="digits-q2", hidden_dims=[16]), ds), (x[:40], y[:40]), set(), {"x"}


def _graph(edge_likelihood="dense"):
    cfg = GraphConfig(hidden=8, latent_dim=2, edge_likelihood=edge_likelihood).validate()
    history, _ = load_graph_sequence(cfg)
    args = (history.x[:4], history.edges[:4])
    edges = {"a"} if edge_likelihood == "dense" else {"a_edges", "a_nonedges"}
    return build_graph_model(cfg, history), args, {"z"}, {"x"} | edges


def _graph_static():
    """GraphSSM with a static covariate (feature 0 held constant over time): x_t observes the other 3."""
    from dgm_pyro.models import GraphSSM

    cfg = GraphConfig().validate()
    history, _ = load_graph_sequence(cfg)
    x = history.x[:4].clone()
    x[:, :, 0] = x[0, :, 0]
    module = GraphSSM(history.num_nodes, 4, latent_dim=2, hidden=8, static=[True, False, False, False])
    return module, (x, history.edges[:4]), {"z"}, {"x", "a"}


def _graph_baseline():
    cfg = GraphConfig(hidden=8).validate()
    history, _ = load_graph_sequence(cfg)
    args = (history.x[:4], history.edges[:4])
    return build_graph_baseline(cfg, history), args, set(), {"x", "a"}


PROGRAMS = {
    "cvae mlp, learned prior": lambda: _cvae(),
    "cvae mlp, standard prior": lambda: _cvae(prior="standard"),
    "cvae autoregressive decoder": lambda: _cvae(decoder="autoregressive"),
    "plain vae (unconditional)": lambda: _cvae("digits-unconditional"),
    "cvae gaussian likelihood": lambda: _cvae("linear-gaussian"),
    "cvae NN baseline (quadrants)": _quadrant_baseline,
    "graph-ssm dense": lambda: _graph("dense"),
    "graph-ssm sparse": lambda: _graph("sparse"),
    "graph-ssm static covariates": _graph_static,
    "graph-ssm GCN+GRU baseline": _graph_baseline,
}
#: which registered model each program belongs to (a newly registered model must add its programs here)
COVERS = {"cvae": "cvae mlp, learned prior", "graph-ssm": "graph-ssm dense"}


def test_every_registered_model_is_covered():
    assert set(model_names()) <= set(COVERS), "add the new model's Pyro programs to PROGRAMS and COVERS"


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_trains_with_pyro_optim_and_works_with_predictive_trace_and_evidence(name):
    module, args, latents, observed = PROGRAMS[name]()
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    svi = SVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(*args) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    store = dict(pyro.get_param_store().named_parameters())
    assert len(store) == len(before)  # every learnable tensor is in Pyro's parameter store
    unchanged = [k for k, v in module.named_parameters() if torch.equal(v.detach(), before[k])]
    assert not unchanged, f"not trained by pyro.optim: {unchanged}"

    trace = poutine.trace(module.model).get_trace(*args)
    sample = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    sites = {n for n, s in sample.items() if not s["is_observed"]}
    obs = {n for n, s in sample.items() if s["is_observed"]}
    assert sites == latents and obs == observed
    guide_sites = {n for n, s in poutine.trace(module.guide).get_trace(*args).nodes.items()
                   if s["type"] == "sample" and not site_is_subsample(s)}
    assert guide_sites == latents

    pred = Predictive(module.model, guide=module.guide, num_samples=2, return_sites=sorted(latents) or None)(*args)
    for site in latents:
        assert pred[site].shape[0] == 2 and torch.isfinite(pred[site]).all()

    if name == "graph-ssm sparse":  # a subsampled likelihood has no unbiased evidence: refused in one line
        with pytest.raises(DgmPyroError, match="subsampled"):
            log_evidence(module.model, module.guide, *args, num_particles=3, vectorize=False)
        return
    res = log_evidence(module.model, module.guide, *args, num_particles=3, diagnostics=False, warn=False,
                       vectorize=False)
    assert torch.isfinite(res.log_evidence).all() and torch.isfinite(res.elbo).all()


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_param_registration_off_hides_param_sites_and_changes_no_number(name):
    """``param_registration(False)`` (what the Trainer runs under) drops the ``param`` sites from both traces and
    leaves the loss and its gradients bit-identical; registration is back on after the block, nested or not."""
    from dgm_pyro.models import param_registration

    module, args, _, _ = PROGRAMS[name]()

    def params_in(program):
        return {n for n, s in poutine.trace(program).get_trace(*args).nodes.items() if s["type"] == "param"}

    def loss_and_grads():
        pyro.set_rng_seed(3)
        module.zero_grad()
        loss = Trace_ELBO().differentiable_loss(module.model, module.guide, *args)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    registered = params_in(module.model) | params_in(module.guide)
    assert len(registered) == len(list(module.parameters()))
    loss_on, grads_on = loss_and_grads()
    with param_registration(False):
        assert params_in(module.model) == set() and params_in(module.guide) == set()
        with param_registration(True):
            assert params_in(module.model) | params_in(module.guide) == registered
        assert params_in(module.model) == set()
        loss_off, grads_off = loss_and_grads()
    assert params_in(module.model) | params_in(module.guide) == registered
    assert torch.equal(loss_on, loss_off)
    assert len(grads_on) == len(grads_off) and all(torch.equal(a, b) for a, b in zip(grads_on, grads_off))


def test_cvae_predictive_generates_from_the_prior_without_x():
    """The guide falls back to p(z|y) when x is None (P1.8): Predictive then samples new x for a condition."""
    module, (x, y), _, _ = _cvae()
    pred = Predictive(module.model, guide=module.guide, num_samples=4)(None, y[:5])
    assert pred["x"].shape == (4, 5, 64) and pred["z"].shape == (4, 5, 3)
    assert ((pred["x"] >= 0) & (pred["x"] <= 16)).all()
