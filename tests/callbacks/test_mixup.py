"""MixUp and CutMix: the mixing-loss formula with fixed draws, targets, restore, random state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tensor_learner
from hookloop import Callback, CutMix, DataLoaders, Learner, MixUp, accuracy
from hookloop.callbacks.mixup import MixedLoss, sample_beta
from hookloop.checkpoint import atomic_save, safe_load


class FixedMixUp(MixUp):
    """lam = 0.7 and the two samples swapped: the numbers below can be checked by hand."""

    def sample_lam(self):
        return 0.7

    def sample_perm(self, n):
        return torch.arange(n).flip(0)


class FixedCutMix(CutMix):
    """The top-left 2x2 box of a 4x4 image, and the two samples swapped."""

    def sample_box(self, spatial, lam):
        return (slice(0, 2), slice(0, 2))

    def sample_perm(self, n):
        return torch.arange(n).flip(0)


class Capture(Callback):
    """Records inputs, targets, predictions and losses of each training batch (after the loss)."""

    run_valid = False
    run_after = (MixUp, CutMix)

    def __init__(self):
        self.xb, self.yb, self.pred, self.loss = [], [], [], []

    def after_loss(self):
        learn = self.learn
        self.xb.append(learn.xb[0].clone())
        self.yb.append(learn.yb[0].clone())
        self.pred.append(learn.pred.detach().clone())
        self.loss.append(learn.loss.item())


def identity_learner(x, y, cbs, loss_func=None, valid=None, lr=0.0):
    """y = x (Linear with w = 1, b = 0); SGD with lr 0 keeps it so."""
    model = nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    return tensor_learner(model, x, y, len(x), cbs=cbs, lr=lr, loss_func=loss_func, valid=valid)


def classifier_learner(y, cbs, n=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    x = torch.randn(n, 4)
    dls = DataLoaders.from_tensors(x, y, valid_pct=None, valid=(x, y), bs=n, shuffle=False)
    learn = Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), cbs=cbs, device="cpu", **kwargs)
    learn.logger = lambda line: None
    return learn


# ---- MixUp ---------------------------------------------------------------------------------


def test_mixup_loss_is_lam_times_the_loss_on_y_plus_the_rest_on_shuffled_y():
    # x = y = [0, 10], lam 0.7, swapped partners: mixed x = [3, 7] = pred.
    # L(pred, y) = ((3-0)^2 + (7-10)^2) / 2 = 9
    # L(pred, y_shuffled) = ((3-10)^2 + (7-0)^2) / 2 = 49
    # loss = 0.7 * 9 + 0.3 * 49 = 21
    x = y = torch.tensor([[0.0], [10.0]])
    capture = Capture()
    learn = identity_learner(x, y, [FixedMixUp(), capture], valid=(x, y))
    learn.fit(1)
    assert torch.allclose(capture.xb[0], torch.tensor([[3.0], [7.0]]))
    assert capture.loss == [pytest.approx(21.0)]
    assert learn.recorder.raw_losses == [pytest.approx(21.0)]
    # Validation uses the plain loss on unmixed inputs: the identity model is exact.
    assert learn.recorder.rows[0]["valid_loss"] == 0.0


def test_mixup_cross_entropy_loss_equals_the_formula_with_the_users_loss():
    capture = Capture()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    learn = classifier_learner(y, [MixUp(0.4, seed=0), capture])
    learn.fit(1)
    lam, perm, pred = learn.mix_up.lam, learn.mix_up.perm, capture.pred[0]
    ce = nn.functional.cross_entropy
    expected = lam * ce(pred, y) + (1 - lam) * ce(pred, y[perm])
    assert 0.5 <= lam <= 1.0
    assert capture.loss[0] == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_one_hot_targets_give_the_same_loss_as_integer_targets():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    runs = []
    for targets in (y, nn.functional.one_hot(y, 3).float()):
        capture = Capture()
        classifier_learner(targets, [MixUp(0.4, seed=5), capture]).fit(2)
        runs.append(capture.loss)
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)


def test_training_targets_stay_the_original_ones_for_metrics():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    capture = Capture()
    learn = classifier_learner(y, [FixedMixUp(), capture], metrics=accuracy, train_metrics=True)
    learn.fit(1)
    assert torch.equal(capture.yb[0], y)  # not y flipped, not a blend


def test_mixup_puts_the_plain_loss_back_for_validation_and_after_fit():
    seen = []

    class LossInValidation(Callback):
        def before_validate(self):
            seen.append(self.learn.loss_func)

        def after_loss(self):
            if self.learn.training:
                seen.append(self.learn.loss_func)

    loss_func = nn.CrossEntropyLoss()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    learn = classifier_learner(y, [MixUp(seed=0), LossInValidation()])
    learn.loss_func = loss_func
    learn.fit(1)
    assert isinstance(seen[0], MixedLoss)  # training
    assert seen[1] is loss_func  # validation
    assert learn.loss_func is loss_func


def test_mixup_puts_the_loss_back_after_an_exception():
    class Fail(Callback):
        def after_loss(self):
            raise RuntimeError("boom")

    loss_func = nn.CrossEntropyLoss()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    learn = classifier_learner(y, [MixUp(seed=0), Fail()])
    learn.loss_func = loss_func
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1)
    assert learn.loss_func is loss_func


def test_mixup_lam_is_the_larger_of_the_beta_draw_and_its_complement():
    mixup = MixUp(0.4, seed=0)
    draws = [mixup.sample_lam() for _ in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 1.0


def test_learn_mixup_adds_mixup_and_returns_the_learner():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    learn = classifier_learner(y, None)
    assert learn.mixup(alpha=0.2) is learn
    assert isinstance(learn.mix_up, MixUp) and learn.mix_up.alpha == 0.2
    learn.mixup()
    assert [type(c) for c in learn.cbs].count(MixUp) == 1


# ---- random state --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_draws_and_the_state_continues_them(tmp_path):
    reference = MixUp(0.4, seed=3)
    draws = [(reference.sample_lam(), reference.sample_perm(6).tolist()) for _ in range(4)]
    first = MixUp(0.4, seed=3)
    assert [(first.sample_lam(), first.sample_perm(6).tolist()) for _ in range(2)] == draws[:2]
    state = safe_load(atomic_save(first.state_dict(), tmp_path / "mixup.pth"))
    resumed = MixUp(0.4, seed=99)
    resumed.load_state_dict(state)
    assert [(resumed.sample_lam(), resumed.sample_perm(6).tolist()) for _ in range(2)] == draws[2:]


def test_sample_beta_has_the_mean_and_variance_of_beta():
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); for a = 0.4 that is 1/7.2 = 0.1389.
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_beta(0.4, g) for _ in range(4000)])
    assert draws.min() >= 0 and draws.max() <= 1
    assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
    assert draws.var().item() == pytest.approx(1 / 7.2, abs=0.01)


# ---- CutMix --------------------------------------------------------------------------------


def test_cutmix_pastes_the_box_and_weights_the_loss_by_the_kept_area():
    # Image 0 is all 0, image 1 all 1; the 2x2 box of 16 pixels is swapped, so lam = 12/16.
    # The model averages the pixels: pred = [4/16, 12/16] = [0.25, 0.75]; targets [0, 1].
    # L(y) = (0.25^2 + 0.25^2) / 2 = 0.0625; L(y_shuffled) = (0.75^2 + 0.75^2) / 2 = 0.5625
    # loss = 0.75 * 0.0625 + 0.25 * 0.5625 = 0.1875
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    y = torch.tensor([[0.0], [1.0]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        model[1].weight.fill_(1 / 16)
    dls = DataLoaders.from_tensors(x, y, valid_pct=None, bs=2, shuffle=False)
    capture, cutmix = Capture(), FixedCutMix()
    learn = Learner(
        model,
        dls,
        nn.MSELoss(),
        opt_func=torch.optim.SGD,
        lr=0.0,
        cbs=[cutmix, capture],
        device="cpu",
    )
    learn.logger = lambda line: None
    learn.fit(1)
    assert cutmix.lam == 0.75
    assert capture.xb[0].sum(dim=(1, 2, 3)).tolist() == [4.0, 12.0]
    assert torch.allclose(capture.pred[0], torch.tensor([[0.25], [0.75]]))
    assert capture.loss == [pytest.approx(0.1875)]
    assert torch.equal(x[0], torch.zeros(1, 4, 4))  # the data set itself is untouched


def test_cutmix_lam_is_the_share_of_pixels_each_image_keeps():
    # Image i is filled with the value i, so a pixel not equal to i came from the partner.
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 8, 8).contiguous()
    cutmix = CutMix(1.0, seed=0)
    for _ in range(20):
        perm = cutmix.sample_perm(8)
        (mixed,), lam = cutmix.mix_inputs((x,), cutmix.sample_lam(), perm)
        for i in range(8):
            if perm[i] != i:
                foreign = (mixed[i] != i).float().mean().item()
                assert foreign == pytest.approx(1 - lam)


def test_cutmix_rejects_inputs_without_spatial_dimensions():
    cutmix = CutMix(seed=0)
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        cutmix.mix_inputs((torch.randn(4, 16),), 0.5, torch.arange(4))


def test_mixing_rejects_integer_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        MixUp(seed=0).mix_inputs((torch.arange(4).view(4, 1),), 0.5, torch.arange(4))


# ---- both together -------------------------------------------------------------------------


def test_mixup_then_cutmix_loss_weights_each_label_as_mixing_the_labels_twice():
    # Label sample i with the one-hot row i. After a mix with (lam, perm), sample i carries
    # lam * its labels + (1 - lam) * the labels of sample perm[i]. For a loss linear in the
    # target, the four-term mixed loss must equal the loss on those mixed labels.
    torch.manual_seed(0)
    n = 6
    x, labels = torch.rand(n, 1, 4, 4), torch.eye(n)
    mixed_loss = MixedLoss(lambda pred, y: (pred * y).sum())
    xb, mixed_labels = (x,), labels
    for cb in (MixUp(0.4, seed=1), CutMix(1.0, seed=2)):
        perm = cb.sample_perm(n)
        xb, lam = cb.mix_inputs(xb, cb.sample_lam(), perm)
        mixed_loss.mix(lam, perm)
        mixed_labels = lam * mixed_labels + (1 - lam) * mixed_labels[perm]
    pred = torch.randn(n, n)
    assert len(mixed_loss.parts) == 4
    assert sum(w for w, _ in mixed_loss.parts) == pytest.approx(1.0)
    expected = (pred * mixed_labels).sum()
    assert mixed_loss(pred, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_two_mixups_in_a_row_give_the_loss_of_the_twice_mixed_inputs():
    # MixUp mixes inputs linearly, so with y = x and a loss linear in y, the composed loss
    # equals the loss on the actual twice-mixed inputs.
    torch.manual_seed(0)
    x = torch.rand(5, 3)
    mixed_loss = MixedLoss(lambda pred, y: (pred * y).sum())
    xb = (x,)
    for seed in (1, 2):
        cb = MixUp(0.4, seed=seed)
        perm = cb.sample_perm(5)
        xb, lam = cb.mix_inputs(xb, cb.sample_lam(), perm)
        mixed_loss.mix(lam, perm)
    pred = torch.randn(5, 3)
    assert mixed_loss(pred, x).item() == pytest.approx((pred * xb[0]).sum().item(), rel=1e-5)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: MixUp(alpha=0), ValueError, "alpha"),
        (lambda: CutMix(alpha=-1.0), ValueError, "alpha"),
        (lambda: MixUp(seed="a"), TypeError, "seed"),
    ],
)
def test_constructors_reject_bad_arguments_naming_them(make, error, message):
    with pytest.raises(error, match=message):
        make()
