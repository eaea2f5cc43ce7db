"""MixedPrecision, GradientClip, GradientAccumulation and EMA: hand-checkable numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tensor_learner
from hookloop import (
    EMA,
    Callback,
    CancelBatchException,
    CancelFitException,
    CutMix,
    DataLoaders,
    GradientAccumulation,
    GradientClip,
    Learner,
    MixedPrecision,
    MixUp,
    accuracy,
)
from hookloop.checkpoint import atomic_save, safe_load


def unit_linear() -> nn.Linear:
    """y = w * x with w = 1: with x = 2 and target 6, MSE is 16 and dloss/dw is -16."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model


def one_sample():
    return torch.tensor([[2.0]]), torch.tensor([[6.0]])


def roundtrip(state, tmp_path):
    """Through a file, as a resumed run would read it (torch.load weights_only)."""
    return safe_load(atomic_save(state, tmp_path / "state.pth"))


class CountSteps(Callback):
    """Records `train_iter` (batches before this one) at each optimizer step."""

    def __init__(self):
        self.batches_stepped = []

    def after_step(self):
        self.batches_stepped.append(self.learn.train_iter)


# ---- GradientAccumulation ------------------------------------------------------------------


def test_two_accumulated_batches_of_16_give_the_weights_of_one_batch_of_32():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    init = nn.Linear(4, 1)
    small = tensor_learner(nn.Linear(4, 1), x, y, bs=16, cbs=GradientAccumulation(n_acc=32))
    big = tensor_learner(nn.Linear(4, 1), x, y, bs=32)
    for m in (small.model, big.model):
        m.load_state_dict(init.state_dict())
    small.fit(1)
    big.fit(1)
    assert not torch.allclose(big.model.weight, init.weight)  # one real step was taken
    for a, b in zip(small.model.parameters(), big.model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_steps_counts_micro_batches_instead_of_samples():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    init = nn.Linear(4, 1)
    small = tensor_learner(nn.Linear(4, 1), x, y, bs=8, cbs=GradientAccumulation(steps=4))
    big = tensor_learner(nn.Linear(4, 1), x, y, bs=32)
    for m in (small.model, big.model):
        m.load_state_dict(init.state_dict())
    small.fit(1)
    big.fit(1)
    for a, b in zip(small.model.parameters(), big.model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_accumulation_records_the_unscaled_loss_of_each_micro_batch():
    # x = 2, 2 and targets 6, 4 with w = 1: losses (2-6)^2 = 16 and (2-4)^2 = 4; no step
    # happens between them, so both use w = 1.
    x, y = torch.tensor([[2.0], [2.0]]), torch.tensor([[6.0], [4.0]])
    learn = tensor_learner(unit_linear(), x, y, bs=1, cbs=GradientAccumulation(n_acc=2))
    learn.fit(1)
    assert learn.recorder.raw_losses == [16.0, 4.0]
    # The step used the mean gradient: (-16 + -8) / 2 = -12, so w = 1 + 0.1 * 12 = 2.2.
    assert learn.model.weight.item() == pytest.approx(2.2)


def test_accumulation_count_carries_over_epoch_boundaries():
    # 3 batches of 16 per epoch, a step every 32 samples: steps after batches 2, 4 and 6.
    counter = CountSteps()
    x, y = torch.randn(48, 4), torch.randn(48, 1)
    learn = tensor_learner(nn.Linear(4, 1), x, y, bs=16, cbs=[GradientAccumulation(32), counter])
    learn.fit(2)
    assert counter.batches_stepped == [1, 3, 5]  # train_iter counts from 0 before after_batch


def test_a_partial_accumulation_is_discarded_at_the_end_of_fit():
    x, y = torch.randn(48, 4), torch.randn(48, 1)
    learn = tensor_learner(nn.Linear(4, 1), x, y, bs=16, cbs=GradientAccumulation(32))
    learn.fit(1)  # 48 samples: one step at 32, 16 samples left over
    assert learn.gradient_accumulation.count == 0
    assert all(p.grad is None for p in learn.model.parameters())


def test_accumulation_resumes_exactly_from_its_saved_count_and_the_saved_gradients(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    init = nn.Linear(4, 1)

    class CrashAndRestore(Callback):
        """After micro-batch 0 (16 of 32 samples) lose the count and the gradients, then read
        them back from a file, as a resumed run does (BackupAndRestore keeps the gradients)."""

        run_after = (GradientAccumulation,)

        def after_batch(self):
            learn, ga = self.learn, self.learn.gradient_accumulation
            if learn.train_iter != 1:
                return
            params = list(learn.model.parameters())
            saved = roundtrip({"ga": ga.state_dict(), "grads": [p.grad for p in params]}, tmp_path)
            assert saved["ga"] == {"count": 16}
            learn.opt.zero_grad(set_to_none=True)
            ga.count = 0
            ga.load_state_dict(saved["ga"])
            for p, g in zip(params, saved["grads"]):
                p.grad = g

    plain = tensor_learner(nn.Linear(4, 1), x, y, bs=16, cbs=GradientAccumulation(32))
    restored = tensor_learner(
        nn.Linear(4, 1), x, y, bs=16, cbs=[GradientAccumulation(32), CrashAndRestore()]
    )
    for m in (plain.model, restored.model):
        m.load_state_dict(init.state_dict())
    plain.fit(1)
    restored.fit(1)
    for a, b in zip(plain.model.parameters(), restored.model.parameters()):
        assert torch.equal(a, b)


# ---- GradientClip --------------------------------------------------------------------------


def test_clip_scales_a_gradient_of_norm_16_down_to_max_norm_1():
    # Unclipped, SGD with lr 0.1 moves w from 1 to 1 + 0.1 * 16 = 2.6; clipped to norm 1: 1.1.
    learn = tensor_learner(unit_linear(), *one_sample(), bs=1, cbs=GradientClip(max_norm=1.0))
    learn.fit(1)
    assert learn.gradient_clip.last_norm.item() == pytest.approx(16.0)
    assert learn.model.weight.item() == pytest.approx(1.1)


def test_clip_leaves_a_gradient_within_max_norm_unchanged():
    learn = tensor_learner(unit_linear(), *one_sample(), bs=1, cbs=GradientClip(max_norm=100.0))
    learn.fit(1)
    assert learn.model.weight.item() == pytest.approx(2.6)


def test_clip_value_clamps_each_gradient_element():
    learn = tensor_learner(
        unit_linear(), *one_sample(), bs=1, cbs=GradientClip(max_norm=None, clip_value=0.5)
    )
    learn.fit(1)
    assert learn.model.weight.item() == pytest.approx(1.05)  # gradient -16 clamped to -0.5


def test_total_norm_after_clipping_is_at_most_max_norm_and_equal_when_it_was_larger():
    seen = []

    class NormAfterClip(Callback):
        run_after = (GradientClip,)

        def before_step(self):
            grads = [p.grad for p in self.learn.model.parameters()]
            before = self.learn.gradient_clip.last_norm.item()
            seen.append((before, torch.nn.utils.get_total_norm(grads).item()))

    torch.manual_seed(0)
    x, y = torch.randn(64, 8) * 5, torch.randn(64, 1) * 5
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    learn = tensor_learner(model, x, y, bs=8, cbs=[NormAfterClip(), GradientClip(max_norm=0.5)])
    learn.fit(2)
    assert len(seen) == 16
    assert any(before > 0.5 for before, _ in seen)
    for before, after in seen:
        assert after <= 0.5 * (1 + 1e-5)
        if before > 0.5:
            assert after == pytest.approx(0.5, rel=1e-5)
        else:
            assert after == pytest.approx(before, rel=1e-6)


# ---- MixedPrecision ------------------------------------------------------------------------


class DtypeProbe(Callback):
    """Records the forward output's dtype and whether autocast is on at each stage."""

    def __init__(self):
        self.pred_dtypes, self.loss_dtypes, self.autocast_in_backward = [], [], []

    def after_pred(self):
        self.pred_dtypes.append(self.learn.pred.dtype)

    def after_loss(self):
        self.loss_dtypes.append(self.learn.loss.dtype)

    def before_backward(self):
        self.autocast_in_backward.append(torch.is_autocast_enabled("cpu"))


def test_bf16_autocast_makes_the_forward_output_bfloat16_on_cpu():
    probe = DtypeProbe()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = tensor_learner(
        nn.Linear(4, 2),
        x,
        y,
        bs=4,
        loss_func=nn.CrossEntropyLoss(),
        valid=(x, y),
        cbs=[MixedPrecision(torch.bfloat16), probe],
    )
    learn.fit(1)
    # 2 training batches and 1 validation batch; the loss itself runs in float32.
    assert probe.pred_dtypes == [torch.bfloat16] * 3
    assert probe.loss_dtypes == [torch.float32] * 3
    assert probe.autocast_in_backward == [False, False]
    assert learn.model.weight.dtype == torch.float32


def test_without_mixed_precision_the_forward_output_stays_float32():
    probe = DtypeProbe()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = tensor_learner(nn.Linear(4, 2), x, y, bs=4, loss_func=nn.CrossEntropyLoss(), cbs=probe)
    learn.fit(1)
    assert probe.pred_dtypes == [torch.float32] * 2


def test_autocast_is_left_when_a_batch_is_cancelled_or_fails_inside_it():
    class Interrupt(Callback):
        def __init__(self, exc):
            self.exc = exc

        def after_pred(self):
            if self.exc is not None:
                exc, self.exc = self.exc, None
                raise exc

    x, y = torch.randn(8, 4), torch.randn(8, 2)
    for exc in (CancelBatchException(), CancelFitException()):
        learn = tensor_learner(
            nn.Linear(4, 2), x, y, bs=4, cbs=[MixedPrecision("bf16"), Interrupt(exc)]
        )
        learn.fit(1)
        assert not torch.is_autocast_enabled("cpu")
    learn = tensor_learner(
        nn.Linear(4, 2), x, y, bs=4, cbs=[MixedPrecision("bf16"), Interrupt(RuntimeError("x"))]
    )
    with pytest.raises(RuntimeError):
        learn.fit(1)
    assert not torch.is_autocast_enabled("cpu")


def test_fp16_scales_loss_grad_by_the_scaler_and_records_the_unscaled_loss():
    seen = []

    class Probe(Callback):
        run_after = (MixedPrecision,)

        def before_backward(self):
            seen.append((self.learn.loss_grad.item(), self.learn.loss.item()))

    learn = tensor_learner(
        unit_linear(), *one_sample(), bs=1, cbs=[MixedPrecision(torch.float16, 1024.0), Probe()]
    )
    learn.fit(1)
    assert seen == [(16.0 * 1024, 16.0)]
    assert learn.recorder.raw_losses == [16.0]


def test_fp16_step_equals_the_fp32_step_because_gradients_are_unscaled_first():
    # With scale 1024 the float16 gradient of pred, 2 * (2 - 6) * 1024 = -8192, is finite (the
    # default 65536 overflows float16's 65504 here, and that step would be skipped).
    learn = tensor_learner(
        unit_linear(), *one_sample(), bs=1, cbs=MixedPrecision(torch.float16, 1024.0)
    )
    learn.fit(1)
    assert learn.model.weight.item() == pytest.approx(2.6)  # as in float32: 1 + 0.1 * 16


def test_fp16_clipping_sees_the_unscaled_gradient():
    # If GradientClip saw the scaled gradient (-16 * 1024) the step would be ~1e-4, not 0.1.
    learn = tensor_learner(
        unit_linear(),
        *one_sample(),
        bs=1,
        cbs=[GradientClip(max_norm=1.0), MixedPrecision(torch.float16, 1024.0)],
    )
    learn.fit(1)
    assert learn.gradient_clip.last_norm.item() == pytest.approx(16.0)
    assert learn.model.weight.item() == pytest.approx(1.1)


def test_fp16_skips_the_step_and_halves_the_scale_when_gradients_overflow():
    class Overflow(Callback):
        def after_backward(self):
            if self.learn.train_iter == 0:
                self.learn.model.weight.grad.fill_(float("inf"))

    x, y = torch.tensor([[2.0], [2.0]]), torch.tensor([[6.0], [6.0]])
    learn = tensor_learner(
        unit_linear(), x, y, bs=1, cbs=[MixedPrecision(torch.float16, 1024.0), Overflow()]
    )
    learn.fit(1)
    # Batch 0 overflowed: no step, scale 1024 -> 512. Batch 1: the usual step, 1 -> 2.6.
    assert learn.mixed_precision.scaler.get_scale() == 512.0
    assert learn.model.weight.item() == pytest.approx(2.6)


def test_fp16_scaler_updates_only_on_steps_taken_under_accumulation():
    # growth_interval=1 doubles the scale after every finite step: 4 micro-batches in pairs are
    # 2 steps, so 1024 -> 4096 (an update per micro-batch would give 16384).
    x, y = torch.randn(4, 1), torch.randn(4, 1)
    mp = MixedPrecision(torch.float16, init_scale=1024.0, growth_interval=1)
    learn = tensor_learner(nn.Linear(1, 1), x, y, bs=1, cbs=[mp, GradientAccumulation(steps=2)])
    learn.fit(1)
    assert mp.scaler.get_scale() == 4096.0


def test_fp16_accumulation_gives_the_same_weights_as_fp32_accumulation():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    init = nn.Linear(4, 1)
    fp16 = tensor_learner(
        nn.Linear(4, 1), x, y, bs=16, cbs=[MixedPrecision("fp16", 1024.0), GradientAccumulation(32)]
    )
    fp32 = tensor_learner(nn.Linear(4, 1), x, y, bs=32)
    for m in (fp16.model, fp32.model):
        m.load_state_dict(init.state_dict())
    fp16.fit(1)
    fp32.fit(1)
    for a, b in zip(fp16.model.parameters(), fp32.model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-3)  # float16 forward: ~3 digits


def test_mixed_precision_state_holds_the_scaler(tmp_path):
    mp = MixedPrecision(torch.float16, init_scale=1024.0, growth_interval=1)
    learn = tensor_learner(unit_linear(), *one_sample(), bs=1, cbs=mp)
    learn.fit(1)
    state = roundtrip(learn.mixed_precision.state_dict(), tmp_path)
    assert state["scaler"]["scale"] == 2048.0  # one finite step with growth_interval 1
    fresh = MixedPrecision(torch.float16)
    fresh.load_state_dict(state)
    tensor_learner(unit_linear(), *one_sample(), bs=1, cbs=fresh)
    assert fresh.state_dict()["scaler"]["scale"] == 2048.0


def test_to_fp16_to_bf16_and_to_fp32_add_replace_and_remove_mixed_precision():
    learn = tensor_learner(unit_linear(), *one_sample(), bs=1)
    assert learn.to_fp16() is learn
    assert learn.mixed_precision.dtype == torch.float16
    learn.to_bf16()
    assert [type(c) for c in learn.cbs].count(MixedPrecision) == 1
    assert learn.mixed_precision.dtype == torch.bfloat16
    assert learn.to_fp32() is learn
    assert not any(isinstance(c, MixedPrecision) for c in learn.cbs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_produces_half_outputs():
    probe = DtypeProbe()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    dls = DataLoaders.from_tensors(x, y, valid_pct=None, bs=4)
    learn = Learner(nn.Linear(4, 2), dls, cbs=[MixedPrecision(), probe], device="cuda")
    learn.fit(1)
    assert probe.pred_dtypes == [torch.float16] * 2


# ---- ordering ------------------------------------------------------------------------------


def test_show_loop_runs_accumulation_then_unscale_then_clip_before_the_step():
    cbs = [EMA(), GradientClip(), MixedPrecision(), MixUp(seed=0), GradientAccumulation()]
    learn = tensor_learner(unit_linear(), *one_sample(), bs=1, cbs=cbs)
    lines = learn.show_loop().splitlines()
    before_step = next(line for line in lines if line.startswith("before_step"))
    assert "GradientAccumulation, MixedPrecision, GradientClip" in before_step
    before_batch = next(line for line in lines if line.startswith("before_batch"))
    assert before_batch.index("MixUp") < before_batch.index("MixedPrecision")


# ---- EMA -----------------------------------------------------------------------------------


def rising_learner(n_steps, cbs, valid=None):
    """w starts at 1 and SGD (lr 1) on the loss -w adds 1 per step: w = 1, 2, 3, ..."""
    x = torch.ones(n_steps, 1)
    return tensor_learner(
        unit_linear(),
        x,
        torch.zeros(n_steps, 1),
        bs=1,
        lr=1.0,
        loss_func=lambda pred, y: -pred.mean(),
        cbs=cbs,
        valid=valid,
    )


def test_ema_after_three_steps_equals_the_closed_form():
    weights = []

    class RecordWeights(Callback):
        def after_step(self):
            weights.append(self.learn.model.weight.item())

    learn = rising_learner(3, [EMA(decay=0.5), RecordWeights()])
    learn.fit(1)
    assert weights == [2.0, 3.0, 4.0]
    # ema_k = d^k w_0 + (1 - d) * sum_i d^(k-i) w_i = 0.125*1 + 0.5*(0.25*2 + 0.5*3 + 4) = 3.125
    d, w0 = 0.5, 1.0
    closed = d**3 * w0 + (1 - d) * sum(d ** (3 - i) * w for i, w in enumerate(weights, 1))
    assert closed == 3.125
    assert learn.ema.model.weight.item() == pytest.approx(closed, abs=1e-6)
    assert learn.ema.n_steps == 3


def test_ema_does_not_count_a_step_the_fp16_scaler_skipped():
    class Overflow(Callback):
        def after_backward(self):
            if self.learn.train_iter == 0:
                self.learn.model.weight.grad.fill_(float("inf"))

    learn = rising_learner(3, [MixedPrecision("fp16", 1024.0), Overflow(), EMA(decay=0.5)])
    learn.fit(1)
    # Step 1 skipped (w stays 1), then w = 2, 3: 0.5*1 + 0.5*2 = 1.5, 0.5*1.5 + 0.5*3 = 2.25.
    assert learn.ema.n_steps == 2
    assert learn.ema.model.weight.item() == pytest.approx(2.25)


def test_ema_every_2_updates_after_steps_2_and_4_only():
    learn = rising_learner(4, EMA(decay=0.5, every=2))
    learn.fit(1)
    # w after steps 2 and 4 is 3 and 5: 0.5*1 + 0.5*3 = 2, then 0.5*2 + 0.5*5 = 3.5.
    assert learn.ema.model.weight.item() == pytest.approx(3.5)


def test_ema_averages_float_buffers_and_copies_integer_ones():
    # BatchNorm with momentum 1 stores each batch's mean: 2, 4, 6 (the weight is fixed, lr 0).
    model = nn.Sequential(unit_linear(), nn.BatchNorm1d(1, momentum=1.0, affine=False))
    x = torch.tensor([[1.0], [3.0], [3.0], [5.0], [5.0], [7.0]])
    learn = tensor_learner(model, x, torch.zeros(6, 1), bs=2, lr=0.0, cbs=EMA(decay=0.5))
    learn.fit(1)
    bn = learn.ema.model[1]
    # 0 -> 0.5*0 + 0.5*2 = 1 -> 0.5*1 + 0.5*4 = 2.5 -> 0.5*2.5 + 0.5*6 = 4.25
    assert bn.running_mean.item() == pytest.approx(4.25)
    assert bn.num_batches_tracked.item() == 3


def test_ema_weights_are_used_for_validation_and_the_training_weights_put_back():
    seen = []

    class ValidWeight(Callback):
        run_train = False

        def after_pred(self):
            seen.append(self.learn.model.weight.item())

    valid = (torch.ones(1, 1), torch.zeros(1, 1))
    learn = rising_learner(3, [EMA(decay=0.5), ValidWeight()], valid=valid)
    learn.fit(1)
    assert seen == [3.125]
    assert learn.recorder.rows[0]["valid_loss"] == pytest.approx(-3.125)
    assert learn.model.weight.item() == 4.0


def test_validate_after_fit_uses_the_ema_weights_like_keras_swap_ema_weights():
    valid = (torch.ones(1, 1), torch.zeros(1, 1))
    learn = rising_learner(3, EMA(decay=0.5), valid=valid)
    learn.fit(1)
    assert learn.validate()["valid_loss"] == pytest.approx(-3.125)
    assert learn.model.weight.item() == 4.0


def test_ema_without_swap_validates_the_training_weights():
    valid = (torch.ones(1, 1), torch.zeros(1, 1))
    learn = rising_learner(3, EMA(decay=0.5, swap_on_validate=False), valid=valid)
    learn.fit(1)
    assert learn.recorder.rows[0]["valid_loss"] == pytest.approx(-4.0)


def test_ema_puts_the_training_weights_back_when_validation_is_cancelled():
    class StopInValidation(Callback):
        run_train = False

        def after_pred(self):
            raise CancelFitException()

    valid = (torch.ones(1, 1), torch.zeros(1, 1))
    learn = rising_learner(3, [EMA(decay=0.5), StopInValidation()], valid=valid)
    learn.fit(1)
    assert learn.model.weight.item() == 4.0


def test_ema_model_predicts_with_the_averaged_weights():
    learn = rising_learner(3, EMA(decay=0.5))
    learn.fit(1)
    out = learn.ema.model(torch.tensor([[2.0]]))
    assert out.item() == pytest.approx(6.25)  # 3.125 * 2
    assert not out.requires_grad


def test_ema_state_resumes_the_average_exactly(tmp_path):
    # Uninterrupted: 6 steps, w = 2..7: 3.125 -> 4.0625 -> 5.03125 -> 6.015625.
    straight = rising_learner(3, EMA(decay=0.5))
    straight.fit(2)
    assert straight.ema.model.weight.item() == pytest.approx(6.015625)

    first = rising_learner(3, EMA(decay=0.5))
    first.fit(1)
    state = roundtrip(first.ema.state_dict(), tmp_path)
    second = rising_learner(3, EMA(decay=0.5))
    with torch.no_grad():
        second.model.weight.fill_(4.0)  # the training weights the first run ended with
    second.ema.load_state_dict(state)
    assert second.ema.model.weight.item() == 3.125  # usable right after loading
    second.fit(1)
    assert second.ema.model.weight.item() == pytest.approx(6.015625)
    assert second.ema.n_steps == 6


# ---- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MixedPrecision(torch.float32), "dtype"),
        (lambda: MixedPrecision("fp8"), "dtype"),
        (lambda: MixedPrecision(init_scale=0), "init_scale"),
        (lambda: GradientClip(max_norm=0), "max_norm"),
        (lambda: GradientClip(max_norm=None), "max_norm or clip_value"),
        (lambda: GradientClip(clip_value=-1), "clip_value"),
        (lambda: GradientAccumulation(n_acc=0), "n_acc"),
        (lambda: GradientAccumulation(n_acc=32, steps=2), "not both"),
        (lambda: GradientAccumulation(steps=1.5), "steps"),
        (lambda: EMA(decay=1.0), "decay"),
        (lambda: EMA(every=0), "every"),
    ],
)
def test_constructors_reject_bad_arguments_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- all together --------------------------------------------------------------------------


def test_all_six_techniques_together_still_learn_the_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).view(-1, 1, 8, 8)  # images, so CutMix can cut
    y = torch.tensor(y)
    torch.manual_seed(0)
    dls = DataLoaders.from_tensors(x, y, bs=64, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    cbs = [
        MixedPrecision(torch.bfloat16),
        GradientClip(max_norm=1.0),
        GradientAccumulation(n_acc=128),
        MixUp(0.4, seed=1),
        CutMix(1.0, seed=2),
        EMA(decay=0.9),
    ]
    learn = Learner(model, dls, metrics=accuracy, cbs=cbs, lr=1e-2, device="cpu")
    learn.logger = lambda line: None
    with learn.no_bar():
        learn.fit(4)
    assert learn.recorder.rows[-1]["accuracy"] >= 0.9  # 0.955 when written
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)  # the mixing wrapper is gone
