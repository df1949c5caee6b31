"""Teacher-forcing schedules of scheduled sampling (P4.5; Bengio et al. 2015) against their formulas."""

import math

import pytest

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import Exponential, InverseSigmoid, parse_teacher_forcing


def test_schedules_follow_their_formulas():
    lin = parse_teacher_forcing("linear:100")
    assert [lin(i) for i in (0, 25, 100, 500)] == [1.0, 0.75, 0.0, 0.0]
    assert [parse_teacher_forcing("linear:100:0.4")(i) for i in (0, 50, 200)] == [1.0, 0.7, 0.4]
    assert parse_teacher_forcing("exponential:0.9:0.25")(100) == 0.25
    exp = parse_teacher_forcing("exponential:0.99")
    assert isinstance(exp, Exponential) and exp(10) == pytest.approx(0.99**10)
    inv = parse_teacher_forcing("inverse-sigmoid:20")
    assert isinstance(inv, InverseSigmoid)
    assert inv(0) == pytest.approx(20 / 21) and inv(60) == pytest.approx(20 / (20 + math.exp(3)))
    assert inv(inv.settled_step) < 1e-3 <= inv(inv.settled_step - 5)
    assert parse_teacher_forcing("none")(10**6) == 1.0


@pytest.mark.parametrize("spec", ["linear", "linear:1.5", "linear:10:2", "exponential:1", "exponential:x", "inverse-sigmoid:0.5",
                                  "cosine:3", "none:1"])
def test_bad_schedules_are_refused(spec):
    with pytest.raises(DgmPyroError):
        parse_teacher_forcing(spec)


def test_schedule_refusals_and_their_boundaries():
    import re

    from dgm_pyro.infer.scheduled_sampling import Exponential, InverseSigmoid

    assert Exponential(0.5, floor=1.0)(10) == 1.0 and Exponential(0.5).floor == 0.0 and InverseSigmoid(1.0)(0) == 0.5
    for make, message in [(lambda: Exponential(0.0), "Exponential: need 0 < rate < 1 and 0 <= floor <= 1, got 0.0, 0.0"),
                          (lambda: Exponential(1.0), "Exponential: need 0 < rate < 1 and 0 <= floor <= 1, got 1.0, 0.0"),
                          (lambda: Exponential(0.5, floor=1.5),
                           "Exponential: need 0 < rate < 1 and 0 <= floor <= 1, got 0.5, 1.5"),
                          (lambda: InverseSigmoid(0.5), "InverseSigmoid: k must be >= 1, got 0.5")]:
        with pytest.raises(DgmPyroError, match="^" + re.escape(message) + "$"):
            make()


@pytest.mark.parametrize("spec, message", [
    ("cosine:3", "unknown scheduled-sampling schedule 'cosine:3'; use none, linear:STEPS[:END], "
                 "exponential:RATE[:FLOOR] or inverse-sigmoid:K"),
    ("linear:2.5", "bad scheduled-sampling schedule 'linear:2.5'; use none, linear:STEPS[:END], "
                   "exponential:RATE[:FLOOR] or inverse-sigmoid:K"),
    ("linear:10:1.5", "bad scheduled-sampling schedule 'linear:10:1.5'; use none, linear:STEPS[:END], "
                      "exponential:RATE[:FLOOR] or inverse-sigmoid:K"),
    ("exponential:x", "bad scheduled-sampling schedule 'exponential:x'; use none, linear:STEPS[:END], "
                      "exponential:RATE[:FLOOR] or inverse-sigmoid:K"),
])
def test_teacher_forcing_refusals_name_the_forms(spec, message):
    import re

    from dgm_pyro.infer.scheduled_sampling import parse_teacher_forcing

    with pytest.raises(DgmPyroError, match="^" + re.escape(message) + "$"):
        parse_teacher_forcing(spec)


def test_teacher_forcing_forms_and_their_ends():
    from dgm_pyro.infer.scheduled_sampling import parse_teacher_forcing

    assert repr(parse_teacher_forcing("linear:10:1")) == "Linear(start=1, end=1, steps=10)"  # END = 1 is allowed
    assert repr(parse_teacher_forcing("linear:10")) == "Linear(start=1, end=0, steps=10)"
    assert parse_teacher_forcing("none")(50) == 1.0


def test_ais_schedule_default_steepness_and_refusal():
    import re

    import torch

    from dgm_pyro.infer.ais import sigmoid_schedule

    b = sigmoid_schedule(4)
    s = torch.sigmoid(4.0 * (2 * torch.linspace(0, 1, 5, dtype=torch.float64) - 1))
    assert torch.allclose(b, (s - s[0]) / (s[-1] - s[0]))
    with pytest.raises(DgmPyroError, match="^" + re.escape("num_steps must be >= 1, got 0") + "$"):
        sigmoid_schedule(0)


def test_latent_scale_refusal_names_the_value():
    import re

    from dgm_pyro.infer.annealing import LatentScaleMessenger

    with pytest.raises(ValueError, match="^" + re.escape("latent scale must be finite and >= 0, got -1.0") + "$"):
        LatentScaleMessenger(-1.0)
