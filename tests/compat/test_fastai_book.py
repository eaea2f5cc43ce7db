"""The fastai book's callbacks chapter, run with `from hookloop import *`: the `begin_*` event
names, the cancel exceptions, and callbacks that change xb, yb, the loss and the gradients."""

# The point of this module is that the star import supplies every name the snippets use.
# ruff: noqa: F403, F405

from __future__ import annotations

import pytest
import torch
from torch import nn

from hookloop import *


def small_dls(seq: bool = False) -> DataLoaders:
    """48 training rows (3 batches of 16, in order) and 16 validation rows (1 batch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, generator=g) if seq else torch.randn(64, 4, generator=g)
    y = (x.reshape(64, -1)[:, 0] > 0).long()
    return DataLoaders.from_tensors(x[:48], y[:48], valid=(x[48:], y[48:]), bs=16, shuffle=False)


def learner(model: nn.Module, cbs=None, seq: bool = False, **kwargs) -> Learner:
    learn = Learner(model, small_dls(seq), nn.CrossEntropyLoss(), cbs=cbs, **kwargs)
    learn.logger = lambda line: None
    return learn


class TinyRNN(nn.Module):
    """An RNN with the AWD-LSTM interface the book's callbacks expect: `reset()`, and
    `forward -> (output, raw_outputs, outputs)`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.hidden = None
        self.resets = 0

    def reset(self) -> None:
        self.hidden = None
        self.resets += 1

    def forward(self, x):
        raw, h = self.rnn(x, self.hidden)
        self.hidden = h.detach()
        return self.head(raw[:, -1]), [raw], [raw]


# ---- the book's callbacks, verbatim -----------------------------------------------------------


class ModelResetter(Callback):
    def begin_train(self):
        self.model.reset()

    def begin_validate(self):
        self.model.reset()


class RNNRegularizer(Callback):
    def __init__(self, alpha=0.0, beta=0.0):
        self.alpha, self.beta = alpha, beta

    def after_pred(self):
        self.raw_out, self.out = self.pred[1], self.pred[2]
        self.learn.pred = self.pred[0]

    def after_loss(self):
        if not self.training:
            return
        if self.alpha != 0.0:
            self.learn.loss += self.alpha * self.out[-1].float().pow(2).mean()
        if self.beta != 0.0:
            h = self.raw_out[-1]
            if len(h) > 1:
                self.learn.loss += self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()


class TerminateOnNaNCallback(Callback):
    run_before = Recorder

    def after_batch(self):
        if torch.isinf(self.loss) or torch.isnan(self.loss):
            raise CancelFitException


# ---- tests ------------------------------------------------------------------------------------


def test_begin_names_run_as_the_before_events_with_a_deprecation_warning():
    model = TinyRNN()
    with pytest.warns(DeprecationWarning, match="begin_train"):
        learn = learner(model, cbs=[ModelResetter(), RNNRegularizer()], seq=True)
    learn.fit(2)
    assert model.resets == 4  # before_train and before_validate, 2 epochs


def test_every_begin_name_fires_at_its_before_event():
    seen = []

    class Begin(Callback):
        def begin_fit(self):
            seen.append("begin_fit")

        def begin_epoch(self):
            seen.append("begin_epoch")

        def begin_train(self):
            seen.append("begin_train")

        def begin_batch(self):
            seen.append("begin_batch")

        def begin_validate(self):
            seen.append("begin_validate")

        def after_fit(self):
            seen.append("after_fit")

    with pytest.warns(DeprecationWarning):
        learn = learner(nn.Linear(4, 2), cbs=Begin())
    learn.fit(1)
    assert seen == [
        "begin_fit",
        "begin_epoch",
        "begin_train",
        *["begin_batch"] * 3,
        "begin_validate",
        "begin_batch",
        "after_fit",
    ]


def test_rnn_regularizer_adding_to_learn_loss_changes_the_gradients():
    alpha = 2.0
    grads = []

    class Grads(Callback):
        def after_backward(self):
            grads.append([p.grad.clone() for p in self.model.parameters()])
            raise CancelFitException  # one batch is enough

    model = TinyRNN()
    reference = TinyRNN()  # same seed, same weights
    learn = learner(model, cbs=[RNNRegularizer(alpha=alpha), Grads()], seq=True)
    learn.fit(1)
    xb, yb = next(iter(small_dls(seq=True).train))
    out, _, outs = reference(xb)
    loss = nn.functional.cross_entropy(out, yb) + alpha * outs[-1].pow(2).mean()
    loss.backward()
    assert learn.loss == pytest.approx(loss.item())
    for got, p in zip(grads[0], reference.parameters()):
        torch.testing.assert_close(got, p.grad)


def test_rnn_regularizer_beta_penalises_changes_between_time_steps():
    model = TinyRNN()
    learn = learner(model, cbs=RNNRegularizer(beta=1.0), seq=True)
    losses = []

    class Loss(Callback):
        order = RNNRegularizer.order + 1
        run_valid = False

        def after_loss(self):
            losses.append(float(self.learn.loss))
            raise CancelFitException

    learn.fit(1, cbs=Loss())
    xb, yb = next(iter(small_dls(seq=True).train))
    out, raws, _ = TinyRNN()(xb)
    h = raws[-1]
    expected = nn.functional.cross_entropy(out, yb) + (h[:, 1:] - h[:, :-1]).pow(2).mean()
    assert losses == [pytest.approx(expected.item())]


def test_terminate_on_nan_callback_with_run_before_a_class():
    x = torch.randn(48, 4)
    x[20] = float("inf")  # second training batch
    dls = DataLoaders.from_tensors(x, (x[:, 0] > 0).long(), valid_pct=None, bs=16, shuffle=False)
    learn = Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(), cbs=TerminateOnNaNCallback())
    learn.logger = lambda line: None
    learn.fit(3)
    names = [type(c).__name__ for c in learn.cbs]
    assert names.index("TerminateOnNaNCallback") < names.index("Recorder")
    assert learn.epoch == 0 and learn.iter == 1  # stopped after the first bad batch
    assert learn.recorder.rows == []


def test_after_cancel_batch_runs_after_a_cancel_batch_exception_then_after_batch():
    events = []

    class SkipStep(Callback):
        run_valid = False

        def after_loss(self):
            events.append(("after_loss", self.iter))
            raise CancelBatchException

        def after_step(self):
            events.append(("after_step", self.iter))

        def after_cancel_batch(self):
            events.append(("after_cancel_batch", self.iter))

        def after_batch(self):
            events.append(("after_batch", self.iter))

    torch.manual_seed(0)
    learn = learner(nn.Linear(4, 2), cbs=SkipStep())
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1)
    assert events == [
        (event, i)
        for i in range(3)
        for event in ("after_loss", "after_cancel_batch", "after_batch")
    ]
    # Every batch was cancelled before backward and step: the weights never moved.
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_changing_xb_and_yb_in_begin_batch_changes_what_the_model_and_loss_see():
    seen = []

    class Swap(Callback):
        def begin_batch(self):
            self.learn.xb = (torch.zeros_like(self.xb[0]),)
            self.learn.yb = (torch.ones_like(self.yb[0]),)

        def after_loss(self):
            seen.append((self.pred.detach().clone(), self.loss.item()))

    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning):
        learn = learner(nn.Linear(4, 2), cbs=Swap(), opt_func=torch.optim.SGD, lr=0.0)
    learn.fit(1)
    bias = learn.model.bias.detach()
    for pred, loss in seen:
        # Zero inputs: every prediction is the bias; all-ones targets: the loss is CE(bias, 1).
        assert torch.equal(pred, bias.expand(16, 2))
        expected = nn.functional.cross_entropy(bias[None], torch.ones(1).long())
        assert loss == pytest.approx(expected.item())


def test_changing_the_gradients_in_after_backward_changes_the_step():
    class FreezeWeight(Callback):
        def after_backward(self):
            self.model.weight.grad.zero_()

    torch.manual_seed(0)
    learn = learner(nn.Linear(4, 2), cbs=FreezeWeight(), opt_func=torch.optim.SGD, lr=0.1)
    weight = learn.model.weight.detach().clone()
    bias = learn.model.bias.detach().clone()
    learn.fit(1)
    assert torch.equal(learn.model.weight, weight)  # zero gradient: SGD leaves it alone
    assert not torch.equal(learn.model.bias, bias)


def test_changing_learn_loss_to_a_larger_multiple_of_a_penalty_scales_its_gradient():
    # learn.loss = learn.loss + k * w.sum(): the step moves w by -lr * (dCE/dw + k).
    k = 3.0
    steps = []

    class Penalty(Callback):
        run_valid = False

        def after_loss(self):
            self.learn.loss = self.learn.loss + k * self.model.weight.sum()

        def after_backward(self):
            steps.append(self.model.weight.grad.clone())
            raise CancelFitException

    torch.manual_seed(0)
    learn = learner(nn.Linear(4, 2), cbs=Penalty())
    reference = nn.Linear(4, 2)
    reference.load_state_dict(learn.model.state_dict())
    learn.fit(1)
    xb, yb = next(iter(small_dls().train))
    nn.functional.cross_entropy(reference(xb), yb).backward()
    torch.testing.assert_close(steps[0], reference.weight.grad + k)
