"""The training callbacks' state across an interrupted and resumed run."""

import pytest

from dgm_pyro.callbacks import Callback, OnInterval, Validation
from dgm_pyro.checkpoint import load_checkpoint
from dgm_pyro.runs import TrainConfig, train_run
from dgm_pyro.training import read_metrics

SMALL = dict(dataset="digits", hidden_dims=[16], latent_dim=2, batch_size=400, valid_particles=2, seed=3)
# validation scores by epoch: the best is epoch 1, and every later epoch is worse
SCORES = {1: 5.0, 2: 1.0, 3: 0.0, 4: -1.0, 5: -2.0, 6: -3.0}


class Stop(Exception):
    pass


def _score_validation_by_epoch(monkeypatch, scores):
    """Validation measures scores[epoch] instead of the model; the early-stopping logic under it is the real one."""
    measure = Validation.on_interval_end

    def on_interval_end(self, trainer, row):
        self._epoch = int(row["epoch"])
        measure(self, trainer, row)

    monkeypatch.setattr(Validation, "on_interval_end", on_interval_end)
    monkeypatch.setattr(Validation, "_measure", lambda self, module: (scores[self._epoch], scores[self._epoch], {}))


@pytest.fixture
def scripted_validation(monkeypatch):
    _score_validation_by_epoch(monkeypatch, SCORES)


def _stop_at(epoch):
    def cb(row):
        if row["epoch"] == epoch:
            raise Stop

    return cb


def test_resume_after_a_worse_epoch_keeps_the_best_score_and_the_patience_used(tmp_path, scripted_validation):
    """Scores 5, 1, 0, -1, ... with patience 3: the run stops early at epoch 4 with best epoch 1. Interrupted
    after epoch 2 (one bad epoch used, best score 5) and resumed, it must do the same: a resume that forgot the
    best score would take epoch 3 as the best (best.pt with epoch 3's weights) and train on to epoch 6."""
    cfg = dict(SMALL, epochs=6, patience=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    summary = train_run(TrainConfig(**cfg), full)
    assert summary["stopped"] == "early" and summary["best_epoch"] == 1
    with pytest.raises(Stop):
        train_run(TrainConfig(**cfg), cut, callbacks=[OnInterval(_stop_at(2))])
    state = load_checkpoint(cut / "checkpoint.pt")["callbacks"]["Validation"]
    assert state == {"best_score": 5.0, "best_epoch": 1, "bad_epochs": 1}
    resumed = train_run(None, cut, resume=True)
    assert resumed["stopped"] == "early" and resumed["best_epoch"] == 1
    assert [r["best"] for r in read_metrics(cut / "metrics.csv")] == [1.0, 0.0, 0.0, 0.0]
    a, b = load_checkpoint(full / "best.pt"), load_checkpoint(cut / "best.pt")
    assert a["callbacks"]["Validation"]["best_epoch"] == b["callbacks"]["Validation"]["best_epoch"] == 1
    for k in a["model_state"]:
        assert (a["model_state"][k] == b["model_state"][k]).all(), k


# ---------------------------------------------------------------- callbacks against a scripted trainer

from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

from dgm_pyro import callbacks as C  # noqa: E402
from dgm_pyro.errors import DgmPyroError  # noqa: E402


class ScriptedTrainer:
    """The part of the Trainer that AggressiveTraining uses: ``step`` returns the scripted encoder losses in turn
    (and 7.0 for the decoder step), and every call is recorded."""

    def __init__(self, encoder_losses):
        self.losses = list(encoder_losses)
        self.calls, self.batches = [], 0
        self.guide_params, self.model_params = ["q"], ["p"]
        self.guide_optimizer, self.model_optimizer = "opt_q", "opt_p"
        self.generator = "gen"
        self.data = SimpleNamespace(random_batch=self._batch)

    def _batch(self, generator):
        assert generator == "gen"
        self.batches += 1
        return (f"inner{self.batches}",), 0.5

    def step(self, args, weight, params, optimizers, check, where, kwargs):
        self.calls.append((args, weight, params, optimizers, check, where, kwargs))
        return self.losses.pop(0) if params == ["q"] else 7.0


def test_aggressive_training_steps_the_encoder_until_a_window_of_its_loss_is_no_better():
    """Windows of AGGRESSIVE_WINDOW encoder steps, compared by their sums: 46, 40, 40 (the first window ends on a low
    step, so comparing last steps instead of sums would stop after two); the third is no better than the second, so
    the encoder takes 3 windows of steps on fresh minibatches, then the decoder one step on the given batch."""
    w = C.AGGRESSIVE_WINDOW
    trainer = ScriptedTrainer([5.0] * (w - 1) + [1.0] + [4.0] * w + [4.0] * w + [0.0] * 100)
    cb = C.AggressiveTraining()
    got = cb.train_batch(trainer, ("batch",), 2.0, True, "here", {"k": 1})
    encoder = [c for c in trainer.calls if c[2] == ["q"]]
    decoder = [c for c in trainer.calls if c[2] == ["p"]]
    assert len(encoder) == 3 * w and trainer.batches == 3 * w and got == 7.0
    assert [c[0] for c in encoder] == [(f"inner{i}",) for i in range(1, 3 * w + 1)]
    assert all(c[1] == 0.5 and c[3] == ["opt_q"] and c[5] == "here" and c[6] == {"k": 1} for c in encoder)
    assert [c[4] for c in encoder] == [True] + [False] * (3 * w - 1)  # the finite check on the first step only
    assert decoder == [(("batch",), 2.0, ["p"], ["opt_p"], False, "here", {"k": 1})] and trainer.calls[-1] == decoder[0]
    # a loss that keeps falling: at most AGGRESSIVE_MAX_INNER encoder steps
    trainer = ScriptedTrainer([100.0 - i * 0.5 for i in range(200)])
    C.AggressiveTraining().train_batch(trainer, ("batch",), 1.0, False, "", {})
    assert sum(c[2] == ["q"] for c in trainer.calls) == C.AGGRESSIVE_MAX_INNER
    assert not any(c[4] for c in trainer.calls)


def test_aggressive_training_leaves_for_joint_updates_once_the_mutual_information_stops_rising():
    cb = C.AggressiveTraining()
    assert cb.state == {"aggressive": True, "best_valid_mi": -float("inf")} and cb.now
    trainer = ScriptedTrainer([1.0] * 1000)
    rows = []
    for mi in (0.5, 0.8, 0.8, 2.0):  # the third equals the best so far: no rise, aggressive mode ends
        cb.train_batch(trainer, ("b",), 1.0, False, "", {})
        row = {"valid_mi": mi}
        cb.on_interval_end(trainer, row)
        rows.append(row["aggressive"])
    assert rows == [1.0, 1.0, 1.0, 0.0] and cb.state == {"aggressive": False, "best_valid_mi": 0.8}
    before = len(trainer.calls)
    assert cb.train_batch(trainer, ("b",), 1.0, False, "", {}) is None and len(trainer.calls) == before
    # the state survives a checkpoint: a resumed callback is in joint mode at once
    again = C.AggressiveTraining()
    again.load_state_dict(cb.state_dict())
    assert again.state == cb.state and again.now is False
    off = C.AggressiveTraining(enabled=False)
    row = {"valid_mi": 1.0}
    off.on_interval_end(trainer, row)
    assert row["aggressive"] == 0.0 and off.state == {"aggressive": False, "best_valid_mi": -float("inf")}


def test_aggressive_training_refuses_what_it_cannot_run(monkeypatch):
    import re

    no_encoder = SimpleNamespace(guide_optimizer=None)
    with pytest.raises(DgmPyroError, match="^" + re.escape("aggressive training needs a module with guide_parameters() "
                                                           "(the encoder's parameters)") + "$"):
        C.AggressiveTraining().on_train_start(no_encoder)
    C.AggressiveTraining(enabled=False).on_train_start(no_encoder)  # off: nothing to check
    monkeypatch.setattr(C.D, "world_size", lambda: 2)
    with pytest.raises(DgmPyroError, match="^" + re.escape("aggressive training is not supported with several "
                                                           "processes (its inner loop is sequential)") + "$"):
        C.AggressiveTraining().on_train_start(SimpleNamespace(guide_optimizer="opt"))


class ForecastingModule:
    """``forecast`` records its arguments and returns log-likelihoods drawn from torch's global generator, so that
    the seeding of each validation is visible in the score."""

    def __init__(self):
        self.calls = []

    def forecast(self, x, edges, horizon, num_samples, future):
        self.calls.append((x, edges, horizon, num_samples, future))
        return {"log_lik": torch.randn(num_samples, horizon) - 10.0}


def test_forecast_validation_scores_the_held_out_snapshots_on_fixed_random_numbers():
    history = (torch.zeros(5, 3, 1), ["e"] * 5)
    held_out = (torch.zeros(2, 3, 1), ["f", "g"])
    module = ForecastingModule()
    trainer = SimpleNamespace(module=module, data=SimpleNamespace(unit="step"), state={}, improved=None)
    cb = C.ForecastValidation(history, held_out, patience=2, num_samples=7, seed=11)
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    row = {"step": 10}
    cb.on_interval_end(trainer, row)
    assert torch.equal(torch.get_rng_state(), outside)  # the training random state is left as it was
    (x, edges, horizon, samples, future), = module.calls
    assert x is history[0] and edges is history[1] and horizon == 2 and samples == 7 and future is held_out
    torch.manual_seed(11)
    expected = float((torch.randn(7, 2) - 10.0).mean())
    assert row == {"step": 10, "valid_log_likelihood": pytest.approx(expected, abs=1e-6), "best": 1.0}
    assert trainer.improved is True and cb.summary() == {"best_step": 10, "best_valid_log_likelihood": row[
        "valid_log_likelihood"]}
    # the same draws every interval: an unchanged model scores the same, which is no improvement and uses patience
    for step in (20, 30):
        row = {"step": step}
        cb.on_interval_end(trainer, row)
        assert row["valid_log_likelihood"] == pytest.approx(expected, abs=1e-6) and row["best"] == 0.0
    assert trainer.state == {"stopped": "early"} and cb.state["bad_epochs"] == 2 and cb.state["best_epoch"] == 10
    default = C.ForecastValidation(history, held_out, patience=2)
    assert (default.num_samples, default.seed) == (20, 0)  # the defaults


def test_divergence_is_a_score_far_below_the_best_or_not_finite():
    assert C.diverged(float("nan"), -90.0) and C.diverged(-float("inf"), -float("inf"))
    assert not C.diverged(-1e12, -float("inf"))  # the first score has nothing to fall from
    assert C.diverged(-1091.0, -90.0) and not C.diverged(-1089.0, -90.0)  # 1000 nats below the best
    assert C.diverged(-38_500.1, -3500.0) and not C.diverged(-38_000.0, -3500.0)  # ten times the best's size


def test_a_diverging_validation_score_stops_training_and_says_what_to_change(tmp_path, monkeypatch, caplog):
    """A Gaussian whose variance collapses onto repeated values: validation ELBO -100, -90, then -1e12. Training
    stops at that epoch (not after its patience), best.pt keeps epoch 2, and one warning names the likelihood."""
    import logging

    _score_validation_by_epoch(monkeypatch, {1: -100.0, 2: -90.0, 3: -1e12, 4: -1e13})
    with caplog.at_level(logging.WARNING, logger="dgm_pyro.training"):
        summary = train_run(TrainConfig(**dict(SMALL, epochs=6, patience=5)), tmp_path / "run")
    assert summary["stopped"] == "diverged" and summary["epochs_run"] == 3 and summary["best_epoch"] == 2
    assert load_checkpoint(tmp_path / "run" / "best.pt")["callbacks"]["Validation"]["best_epoch"] == 2
    (message,) = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert message == ("the validation elbo fell from -90 (epoch 2) to -1e+12: training diverged and stopped; best.pt "
                       "keeps epoch 2. The likelihood is likely degenerate: a Gaussian's variance collapses onto "
                       "repeated values, such as the exact zeros of images (grey levels in [0, 1] want --likelihood "
                       "bernoulli); otherwise lower --lr or --clip-norm")


def _scripted_validation(scores, criterion="elbo", patience=2):
    """A Validation whose measure returns the scripted (elbo, log-likelihood) pairs in turn, and a trainer stub."""
    cb = C.Validation((torch.zeros(1, 1), torch.zeros(1, 0)), particles=2, patience=patience, criterion=criterion)
    pairs = iter(scores)
    cb._measure = lambda module: (*next(pairs), {})
    trainer = SimpleNamespace(module=None, data=SimpleNamespace(unit="epoch"), state={}, improved=None)
    return cb, trainer


def test_validation_selects_on_its_criterion_and_resets_patience_on_improvement():
    """The ELBO rises while the log-likelihood falls: with criterion log_likelihood (iwae, dreg) the best epoch is
    the first; with the ELBO, the last. Patience counts bad epochs since the last improvement."""
    scores = [(-10.0, -5.0), (-9.0, -6.0), (-8.0, -7.0)]
    for criterion, best in (("log_likelihood", 1), ("elbo", 3)):
        cb, trainer = _scripted_validation(scores, criterion, patience=5)
        for epoch in (1, 2, 3):
            cb.on_interval_end(trainer, {"epoch": epoch})
        assert cb.state["best_epoch"] == best and cb.summary() == {
            "best_epoch": best, f"best_valid_{criterion}": dict(elbo=-8.0, log_likelihood=-5.0)[criterion]}
    # scores 1, 0, 2, 1, 1 with patience 2: bad, improved (the count starts again), bad, bad -> stops at epoch 5
    cb, trainer = _scripted_validation([(s, s) for s in (1.0, 0.0, 2.0, 1.0, 1.0)], patience=2)
    stopped_at = None
    for epoch in range(1, 6):
        cb.on_interval_end(trainer, {"epoch": epoch})
        if trainer.state.get("stopped") and stopped_at is None:
            stopped_at = epoch
    assert stopped_at == 5 and cb.state == {"best_score": 2.0, "best_epoch": 3, "bad_epochs": 2}


def test_validation_defaults_and_refusal():
    import re

    cb = C.Validation((torch.zeros(1, 1), torch.zeros(1, 0)), particles=2, patience=1)
    assert cb.criterion == "elbo" and cb.track is False and cb.fields == ("valid_elbo", "valid_log_likelihood", "best")
    assert cb.state == {"best_score": -float("inf"), "best_epoch": 0, "bad_epochs": 0}
    with pytest.raises(ValueError, match="^" + re.escape("criterion must be 'elbo' or 'log_likelihood', got 'nll'")
                       + "$"):
        C.Validation((torch.zeros(1, 1), torch.zeros(1, 0)), particles=2, patience=1, criterion="nll")
    assert C.Validation((torch.zeros(1, 1), torch.zeros(1, 0)), 2, 1, criterion="log_likelihood").criterion == \
        "log_likelihood"


def test_validation_measures_are_the_librarys_on_the_same_draws():
    """valid_elbo and valid_log_likelihood are log_evidence's with the given particles; the collapse columns are
    collapse_report's with the label groups, 10 draws and no NLL, and they leave the random state as it was."""
    import pyro

    from dgm_pyro.diagnostics import collapse_report
    from dgm_pyro.infer import log_evidence
    from dgm_pyro.models import LinearGaussianCVAE

    pyro.set_rng_seed(0)
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(40, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    groups = torch.arange(40) % 3
    module = SimpleNamespace(model=truth.model, guide=truth.exact_guide)
    cb = C.Validation((x, y), particles=7, patience=1, track_collapse=True, groups=groups)
    pyro.set_rng_seed(5)
    elbo, ll, collapse = cb._measure(module)
    after = torch.get_rng_state()
    pyro.set_rng_seed(5)
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=7, diagnostics=False, warn=False)
    assert torch.equal(torch.get_rng_state(), after)  # the collapse measures drew from a forked generator
    report = collapse_report(truth.model, truth.exact_guide, x, y, groups=groups, num_samples=10, particles=0)
    assert elbo == pytest.approx(float(res.elbo.mean())) and ll == pytest.approx(float(res.log_evidence.mean()))
    assert collapse == {"valid_kl": pytest.approx(report.kl), "valid_mi": pytest.approx(report.mutual_information),
                        "valid_au": float(report.active_units)}


def test_kl_annealing_callback_scales_latents_and_says_which_schedule():
    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    from dgm_pyro.infer.annealing import Constant

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    off, on = C.KLAnnealing(None), C.KLAnnealing(Constant(0.25))
    assert off.summary() == {"annealing": "none"} and on.summary() == {"annealing": "Constant(0.25)"}
    for cb, beta in ((off, 1.0), (on, 0.25)):
        with cb.step_context(None):
            assert poutine.trace(model).get_trace().nodes["z"]["scale"] == beta
    sched = C.ScheduledSampling(Constant(0.5))
    row = {}
    sched.on_interval_end(None, row)
    assert row == {"teacher_forcing": 1.0} and sched.summary() == {"teacher_forcing": "Constant(0.5)"}


def test_a_diverging_log_likelihood_is_named_as_such(caplog):
    import logging

    cb, trainer = _scripted_validation([(-5.0, -5.0), (-9e9, -9e9)], criterion="log_likelihood", patience=5)
    with caplog.at_level(logging.WARNING, logger="dgm_pyro.training"):
        for epoch in (1, 2):
            cb.on_interval_end(trainer, {"epoch": epoch})
    assert trainer.state == {"stopped": "diverged"}
    assert caplog.records[-1].getMessage().startswith("the validation log-likelihood fell from -5 (epoch 1) to -9e+09")


def test_learning_rate_schedules_are_their_formulas():
    """Burda et al.'s schedule: 3^i passes at 10^(-i/7), i = 0..7, 3,280 passes; the others as written."""
    from dgm_pyro.callbacks import lr_factor

    expected = [10 ** (-i / 7) for i in range(8) for _ in range(3 ** i)]
    assert len(expected) == 3280
    assert [lr_factor("burda", e, 3280) for e in range(3280)] == pytest.approx(expected, rel=1e-12)
    assert lr_factor("burda", 5000, 3280) == pytest.approx(0.1)
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("exponential:0.9", 3, 10) == pytest.approx(0.729)
    assert [lr_factor("cosine", e, 4) for e in range(5)] == pytest.approx([1, (1 + 2 ** -0.5) / 2, 0.5,
                                                                           (1 - 2 ** -0.5) / 2, 0])
    for bad in ("exponential:0", "exponential:1.5", "exponential:x", "step", "burda:3", "cosine:2"):
        with pytest.raises(DgmPyroError):
            lr_factor(bad, 0, 10)


def test_the_learning_rate_schedule_sets_the_optimiser_and_records_it(tmp_path):
    """Each epoch trains at lr * factor(epoch): the metrics column and the rate in the optimiser (aggressive
    training's second optimiser too) are the schedule's."""
    from dgm_pyro.runs import TrainConfig, train_run
    from dgm_pyro.training import read_metrics

    seen = []

    class Spy(Callback):
        def on_batch_start(self, trainer):
            if not seen or seen[-1][0] != trainer.state["epoch"]:
                seen.append((trainer.state["epoch"], [g["lr"] for o in trainer.optimizers for g in o.param_groups]))

    cfg = TrainConfig(epochs=4, hidden_dims=[16], latent_dim=2, eval_particles=2, valid_particles=2, batch_size=500,
                      lr=0.01, lr_schedule="exponential:0.5", aggressive=True)
    train_run(cfg, tmp_path / "r", callbacks=[Spy()])
    assert [r["lr"] for r in read_metrics(tmp_path / "r" / "metrics.csv")] == pytest.approx([0.01, 0.005, 0.0025,
                                                                                          0.00125])
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    for epoch, rates in seen:
        assert len(rates) == 2 and rates == pytest.approx([0.01 * 0.5 ** epoch] * 2)


def test_validation_estimates_blocks_of_datapoints(monkeypatch):
    """The validation log-likelihood goes through ``log_evidence_blocks``: at most BLOCK_SIZE rows and a bounded
    chunk of particles at a time (all 10,000 MNIST validation images at once took a PixelCNN decoder past 24 GB);
    the score is the mean over every row."""
    from dgm_pyro.infer import evidence
    from dgm_pyro.models import LinearGaussianCVAE

    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(25, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    calls = []
    real = evidence.log_evidence

    def spy(*args, chunk_size, **kwargs):
        calls.append(args[2].shape[0])
        return real(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(evidence, "log_evidence", spy)
    monkeypatch.setattr(evidence, "BLOCK_SIZE", 10)
    module = SimpleNamespace(model=truth.model, guide=truth.exact_guide)  # every weight is p(x|y) exactly
    elbo, ll, _ = C.Validation((x, y), particles=3, patience=1)._measure(module)
    assert calls == [10, 10, 5]
    assert ll == pytest.approx(float(truth.log_marginal(x, y).mean()), abs=1e-6) and elbo == pytest.approx(ll, abs=1e-6)
