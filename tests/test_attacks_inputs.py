"""Bad input gives clear errors (RobustSuiteError subclasses naming the field and the allowed values)."""
from __future__ import annotations

import pytest
import torch

from robustsuite.attacks import (APGD, CW, EOT, FGSM, PGD, BoundaryAttack, PixelAttack, TransferAttack,
                                 make_attack, robust_accuracy)
from robustsuite.errors import InputError, InputTypeError, RobustSuiteError, UnknownNameError
from robustsuite.threats import Box, L1Ball, L2Ball, LinfBall, threat_from_name

try:
    from test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401


@pytest.fixture
def data():
    return held_out(8)


@pytest.mark.parametrize("ball", [LinfBall, L2Ball, L1Ball])
def test_negative_eps_is_rejected(ball):
    with pytest.raises(InputError, match="eps"):
        ball(-0.1)


def test_unknown_norm_is_rejected_with_the_known_ones():
    with pytest.raises(UnknownNameError, match="norm.*l3.*l1, l2, linf"):
        threat_from_name("l3", 0.1)


def test_nan_input_is_rejected(data):
    x, y = data
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        PGD(trained_cnn(), LinfBall(0.1))(x, y)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_input_outside_unit_box_is_rejected(data, value):
    x, y = data
    x[1, 0, 2, 2] = value
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        FGSM(trained_cnn(), LinfBall(0.1)).run(x, y)


def test_mismatched_label_batch_is_rejected(data):
    x, y = data
    with pytest.raises(InputError, match="y: expected shape"):
        PGD(trained_cnn(), LinfBall(0.1)).run(x, y[:-1])


def test_non_image_shapes_are_rejected(data):
    x, y = data
    with pytest.raises(InputError, match="4 dimensions"):
        PGD(trained_cnn(), LinfBall(0.1)).run(x[:, 0], y)


def test_box_that_does_not_fit_the_batch_is_rejected(data):
    x, y = data
    box = Box(torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8))
    with pytest.raises(InputError, match="Box"):
        PGD(trained_cnn(), box).run(x, y)


def test_float_or_out_of_range_labels_are_rejected(data):
    x, y = data
    atk = PGD(trained_cnn(), LinfBall(0.1))
    with pytest.raises(InputError, match="integer"):
        atk.run(x, y.float())
    with pytest.raises(InputError, match=">= 0"):
        atk.run(x, y - 20)
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        atk.run(x, y + 10)


def test_wrong_types_are_rejected(data):
    x, y = data
    with pytest.raises(InputTypeError, match="threat"):
        PGD(trained_cnn(), "linf")
    with pytest.raises(InputTypeError, match="x"):
        PGD(trained_cnn(), LinfBall(0.1)).run(x.numpy(), y)
    with pytest.raises(InputTypeError, match="steps"):
        PGD(trained_cnn(), LinfBall(0.1), steps=2.5)
    with pytest.raises(InputTypeError, match="random_start"):
        PGD(trained_cnn(), LinfBall(0.1), random_start="yes")


@pytest.mark.parametrize("make,match", [
    (lambda m: CW(m, LinfBall(0.1)), "L2Ball"),
    (lambda m: BoundaryAttack(m, L1Ball(1.0)), "L2Ball"),
    (lambda m: APGD(m, L1Ball(1.0)), "LinfBall"),
    (lambda m: PixelAttack(m, L2Ball(1.0)), "LinfBall"),
    (lambda m: PGD(m, None), "threat set is required"),
])
def test_unsupported_threat_sets_are_rejected(make, match):
    with pytest.raises(InputError, match=match):
        make(trained_cnn())


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": -1}, "steps"), ({"step_size": -0.1}, "step_size"), ({"restarts": 0}, "restarts"),
    ({"eot": 0}, "eot"), ({"l1_fraction": 0.0}, "l1_fraction"), ({"step_size": float("nan")}, "step_size"),
    ({"start_sigma": 0.0}, "start_sigma"), ({"start_sigma": float("inf")}, "start_sigma"),
])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(InputError, match=match):
        PGD(trained_cnn(), LinfBall(0.1), **kwargs)


def test_unknown_loss_is_rejected_with_the_known_ones():
    with pytest.raises(UnknownNameError, match="loss.*ce, kl, margin"):
        PGD(trained_cnn(), LinfBall(0.1), loss="hinge")
    # the KL loss (TRADES' adversary) moves away from the clean prediction: untargeted only
    with pytest.raises(InputError, match="'kl' is untargeted only"):
        PGD(trained_cnn(), LinfBall(0.1), loss="kl", targeted=True)
    with pytest.raises(UnknownNameError, match="loss.*ce, dlr, margin"):
        APGD(trained_cnn(), LinfBall(0.1), loss="kl")
    # its gradient vanishes at x: only PGD, and only from a random start
    with pytest.raises(InputError, match="'kl' needs random_start=True"):
        PGD(trained_cnn(), LinfBall(0.1), loss="kl", random_start=False)
    with pytest.raises(UnknownNameError, match="loss.*ce, margin"):
        FGSM(trained_cnn(), LinfBall(0.1), loss="kl")
    # targeted DLR (APGD-T) needs 4 classes: a 3-class model gets a clear error, not a crash
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(InputError, match="targeted 'dlr' needs at least 4 classes"):
        APGD(three, LinfBall(0.1), loss="dlr", targeted=True, steps=2).run(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="n_target_classes"):
        APGD(trained_cnn(), LinfBall(0.1), loss="dlr", targeted=True, n_target_classes=0)


def test_registry_rejects_unknown_attacks_and_settings():
    with pytest.raises(UnknownNameError, match="attack.*'deepfool'.*apgd, autoattack, bim, boundary"):
        make_attack("deepfool", trained_cnn(), LinfBall(0.1))
    with pytest.raises(InputError, match="unknown setting.*'stepz'.*steps"):
        make_attack("pgd", trained_cnn(), LinfBall(0.1), stepz=3)


def test_wrappers_reject_non_attacks():
    with pytest.raises(InputTypeError):
        EOT(trained_cnn(), n=2)
    with pytest.raises(InputTypeError):
        TransferAttack(trained_cnn(), target_model=trained_cnn())
    with pytest.raises(InputError, match="n"):
        EOT(PGD(trained_cnn(), LinfBall(0.1)), n=0)


def test_robust_accuracy_rejects_targeted_attacks_and_bad_batches(data):
    x, y = data
    with pytest.raises(InputError, match="untargeted"):
        robust_accuracy(trained_cnn(), x, y, PGD(trained_cnn(), LinfBall(0.1), targeted=True))
    with pytest.raises(InputError, match="batch_size"):
        robust_accuracy(trained_cnn(), x, y, PGD(trained_cnn(), LinfBall(0.1)), batch_size=0)


def test_boundary_starting_points_of_the_wrong_shape_are_rejected(data):
    x, y = data
    with pytest.raises(InputError, match="starting_points"):
        BoundaryAttack(trained_cnn(), starting_points=torch.rand(3, 1, 8, 8)).run(x, y)


def test_every_input_error_is_a_robustsuite_error_and_a_builtin():
    assert issubclass(InputError, RobustSuiteError) and issubclass(InputError, ValueError)
    assert issubclass(InputTypeError, RobustSuiteError) and issubclass(InputTypeError, TypeError)
    assert issubclass(UnknownNameError, RobustSuiteError) and issubclass(UnknownNameError, ValueError)
