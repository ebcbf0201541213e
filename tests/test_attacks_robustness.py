"""The one batched robust-accuracy routine: ``attacks.robustness.per_sample_robust``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustsuite.attacks import FGSM, PGD, Attack, PerSampleRecord, per_sample_robust, robust_accuracy
from robustsuite.attacks.base import Perturbation
from robustsuite.errors import InputError, InputTypeError
from robustsuite.threats import Box, LinfBall

try:
    from test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401


def test_records_match_a_hand_loop_over_batches():
    x, y = held_out(40)
    model = trained_cnn()
    atk = PGD(model, LinfBall(0.08), steps=3)
    rec = per_sample_robust(model, x, y, atk, batch_size=16)
    succ, dist, queries, adv, clean = [], [], [], [], []
    for i in range(0, 40, 16):
        res = atk.run(x[i:i + 16], y[i:i + 16])
        succ.append(res.success)
        dist.append(res.distance)
        queries.append(res.queries)
        adv.append(res.pred)
        with torch.no_grad():
            clean.append(model(x[i:i + 16]).argmax(1))
    assert isinstance(rec, PerSampleRecord) and rec.n == 40
    assert torch.equal(rec.success, torch.cat(succ)) and torch.equal(rec.adv_pred, torch.cat(adv))
    assert torch.equal(rec.clean_pred, torch.cat(clean)) and torch.equal(rec.queries, torch.cat(queries))
    assert torch.equal(rec.distance, torch.cat(dist).double())
    assert torch.equal(rec.robust, (torch.cat(clean) == y) & ~torch.cat(succ))
    for t in (rec.success, rec.distance, rec.queries, rec.clean_pred, rec.label):
        assert t.device.type == "cpu" and t.shape == (40,)
    assert (rec.success.dtype, rec.distance.dtype, rec.queries.dtype) == (torch.bool, torch.float64, torch.long)
    s = rec.summary()
    assert s == robust_accuracy(model, x, y, atk, batch_size=16)
    assert s["robust_accuracy"] == pytest.approx(float(rec.robust.float().mean()))
    assert s["asr"] == pytest.approx(float((rec.clean_correct & rec.success).sum() / rec.clean_correct.sum()))


def test_batch_size_does_not_change_a_deterministic_attack():
    x, y = held_out(30)
    model = trained_cnn()
    for atk in (PGD(model, LinfBall(0.08), steps=3, random_start=False), FGSM(model, LinfBall(0.05))):
        recs = [per_sample_robust(model, x, y, atk, batch_size=b) for b in (1, 7, 30, 64)]
        for r in recs[1:]:
            assert torch.equal(r.success, recs[0].success) and torch.equal(r.clean_pred, recs[0].clean_pred)
            assert torch.allclose(r.distance, recs[0].distance, atol=1e-6)


class _LabelInPixel(nn.Module):
    """Reads the label from the first pixel (label / 10); the first call of each batch answers the
    next class instead (a wrong clean prediction), later calls answer the label."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        label = (x[:, 0, 0, 0] * 10).round().long()
        shift = 1 if self.calls % 2 == 1 else 0   # clean pass (odd), attack's decision pass (even)
        return nn.functional.one_hot((label + shift) % 3, 3).float()


class _Identity(Attack):
    """Returns the input itself (an attack that never moves)."""

    threats = ("linf",)

    def _perturb(self, x, y, generator):
        return Perturbation(x_adv=x, queries=1, steps=0)


def test_misclassified_clean_samples_are_never_robust():
    y = torch.tensor([0, 1, 2, 1])
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = y.float() / 10
    model = _LabelInPixel()
    rec = per_sample_robust(model, x, y, _Identity(model, LinfBall(0.1)), batch_size=4, clean="before")
    assert not rec.success.any()               # the attack failed everywhere ...
    assert not rec.clean_correct.any()         # ... but the clean prediction was wrong
    assert not rec.robust.any()                # so no sample is robust
    assert rec.summary() == {"clean_accuracy": 0.0, "robust_accuracy": 0.0, "asr": 0.0, "n": 4}


def test_an_empty_input_gives_an_empty_record_without_calling_the_model():
    model = _LabelInPixel()
    x, y = torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)
    rec = per_sample_robust(model, x, y, PGD(model, LinfBall(0.1)), batch_size=4)
    assert model.calls == 0 and rec.n == 0
    for t in (rec.success, rec.distance, rec.queries, rec.clean_pred, rec.robust):
        assert t.shape == (0,)
    assert rec.records() == []
    with pytest.raises(InputError, match="no samples"):
        rec.summary()
    with pytest.raises(InputError, match="no samples"):
        robust_accuracy(model, x, y, PGD(model, LinfBall(0.1)))


def test_a_factory_builds_one_attack_per_batch_in_order():
    x, y = held_out(20)
    model = trained_cnn()
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    seen = []

    def factory(xb, yb, rows):
        seen.append((rows.start, rows.stop, xb.shape[0]))
        return PGD(model, Box(lo[rows], hi[rows]), steps=2, random_start=False)

    rec = per_sample_robust(model, x, y, factory, batch_size=8)
    assert seen == [(0, 8, 8), (8, 16, 8), (16, 20, 4)]
    # the same as the per-sample Box sliced by the routine itself
    whole = per_sample_robust(model, x, y, PGD(model, Box(lo, hi), steps=2, random_start=False), batch_size=8)
    assert torch.equal(rec.success, whole.success)
    with pytest.raises(InputTypeError, match="robustsuite attack"):
        per_sample_robust(model, x, y, lambda xb, yb, rows: "pgd")


def test_bad_arguments_and_a_run_without_clean_pass():
    x, y = held_out(8)
    model = trained_cnn()
    atk = PGD(model, LinfBall(0.05), steps=1)
    rec = per_sample_robust(model, x, y, atk, clean="none")
    assert rec.clean_pred is None
    with pytest.raises(InputError, match="clean='none'"):
        rec.robust
    with pytest.raises(InputError, match="targets"):
        per_sample_robust(model, x, y, PGD(model, LinfBall(0.05), targeted=True))
    with pytest.raises(InputError, match="batch_size"):
        per_sample_robust(model, x, y, atk, batch_size=0)
    with pytest.raises(InputError, match="clean"):
        per_sample_robust(model, x, y, atk, clean="later")
    with pytest.raises(InputError, match="y: expected"):
        per_sample_robust(model, x, y[:3], atk)
    with pytest.raises(InputTypeError, match="factory"):
        per_sample_robust(model, x, y, 42)
