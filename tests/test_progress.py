"""Progress without a terminal: log lines with an ETA from training and from long evidence estimates."""

import logging

import pyro
import torch

from dgm_pyro import progress
from dgm_pyro.infer import log_evidence


def test_duration_format():
    assert [progress.duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_heartbeat_eta_extrapolates_the_rate(monkeypatch):
    clock = iter([0.0, 10.0, 10.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    beat = progress.Heartbeat(logging.getLogger("t"), total=100, start=20)
    assert beat.eta(40) == "10s elapsed, ETA 30s"  # 20 units in 10 s, 60 to go


def test_log_evidence_logs_a_line_per_beat_without_a_bar(monkeypatch, caplog):
    from dgm_pyro.data.synthetic import LinearGaussianCVAE

    lg = LinearGaussianCVAE()
    y = torch.eye(3)[[0, 1, 2, 0]]
    monkeypatch.setattr(progress.Heartbeat, "due", lambda self: True)  # every chunk is a beat
    with caplog.at_level(logging.INFO, logger="dgm_pyro"):  # the guide is empty: z is proposed from its prior
        log_evidence(lg.model, lambda x, y: None, torch.zeros(4, 8), y, num_particles=30, chunk_size=10, warn=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgm_pyro.infer.evidence"]
    assert [ln.split(";")[0] for ln in lines] == ["importance sampling: 10 of 30 particles for 4 datapoint(s)",
                                                  "importance sampling: 20 of 30 particles for 4 datapoint(s)"]
    assert all("ETA" in ln for ln in lines)


def test_training_heartbeat_inside_a_long_interval(monkeypatch, caplog, tmp_path):
    from dgm_pyro.runs import GraphConfig, GraphSSMKind, build_graph_model, load_graph_sequence

    cfg = GraphConfig(steps=4, checkpoint_every=4, baseline_steps=0, hidden=8, latent_dim=2).validate()
    history, _ = load_graph_sequence(cfg)
    pyro.set_rng_seed(0)
    module = build_graph_model(cfg, history)
    monkeypatch.setattr(progress.Heartbeat, "due", lambda self: True)
    with caplog.at_level(logging.INFO, logger="dgm_pyro"):
        GraphSSMKind().fit(cfg, (history.x[:4], history.edges[:4]), module, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgm_pyro.training"]
    assert lines[0].startswith("train: step 1 of 4;")
    assert lines[-1].startswith("train: step 4/4, loss ") and "ETA 0s" in lines[-1]
    assert len(lines) == 5  # a heartbeat after every step of the one interval (each is due here), then its line
