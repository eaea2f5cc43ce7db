"""The Learner: one step by hand, History, validate/get_preds, save/load, and bad input."""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
from torch import nn

from conftest import tiny_dls, tiny_learner
from hookloop import Callback, DataLoaders, Learner, TensorLoader, accuracy


def test_one_sgd_step_equals_the_hand_computation():
    # y = w*x with w=1, x=2, target 6: loss (wx-t)^2 = 16, dloss/dw = 2(wx-t)x = -16,
    # so SGD with lr 0.1 gives w = 1 - 0.1 * -16 = 2.6.
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    dls = DataLoaders.from_tensors(torch.tensor([[2.0]]), torch.tensor([[6.0]]), valid_pct=None)
    learn = Learner(model, dls, nn.MSELoss(), opt_func=torch.optim.SGD, lr=0.1, device="cpu")
    learn.logger = lambda line: None
    learn.fit(1)
    assert model.weight.item() == pytest.approx(2.6)
    assert learn.recorder.raw_losses == [16.0]


def test_fit_returns_a_keras_history_with_keras_keys_and_one_value_per_epoch():
    learn = tiny_learner(metrics=accuracy, n_train=8, bs=4)
    history = learn.fit(3)
    assert set(history.history) == {"loss", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert history.params == {"epochs": 3, "steps": 2, "verbose": 1}


def test_train_metrics_adds_keras_accuracy_key():
    learn = tiny_learner(metrics=accuracy, train_metrics=True)
    history = learn.fit(1)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_loss_grad_is_what_backward_uses_and_loss_is_detached():
    seen = {}

    class Probe(Callback):
        def after_loss(self):
            seen["grad"] = self.learn.loss_grad.requires_grad
            seen["loss"] = self.learn.loss.requires_grad
            seen["equal"] = torch.equal(self.learn.loss, self.learn.loss_grad.detach())

    tiny_learner(cbs=Probe()).fit(1)
    assert seen == {"grad": False, "loss": False, "equal": True}  # last event: validation batch


def test_loss_grad_requires_grad_during_training():
    seen = []

    class Probe(Callback):
        run_valid = False

        def after_loss(self):
            seen.append((self.learn.loss_grad.requires_grad, self.learn.loss.requires_grad))

    tiny_learner(cbs=Probe()).fit(1)
    assert seen == [(True, False)]


def test_a_callback_changing_loss_grad_changes_the_update():
    class ZeroLoss(Callback):
        def after_loss(self):
            self.learn.loss_grad = self.learn.loss_grad * 0

    learn = tiny_learner(cbs=ZeroLoss(), opt_func=torch.optim.SGD)
    before = learn.model.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(learn.model.weight, before)


def test_counters_over_a_fit():
    seen = []

    class Probe(Callback):
        run_valid = False

        def after_batch(self):
            learn = self.learn
            seen.append((learn.epoch, learn.iter, learn.n_iter, learn.train_iter, learn.pct_train))

    tiny_learner(cbs=Probe(), n_train=8, bs=4).fit(2)
    assert seen == [(0, 0, 2, 1, 0.25), (0, 1, 2, 2, 0.5), (1, 0, 2, 3, 0.75), (1, 1, 2, 4, 1.0)]


def test_the_loop_counts_training_batches_without_train_eval():
    # train_iter and pct_train are loop state: removing TrainEval (train/eval modes) keeps them.
    from hookloop import TrainEval

    learn = tiny_learner(n_train=8, bs=4)
    learn.remove_cb(TrainEval)
    learn.fit(2)
    assert (learn.train_iter, learn.pct_train) == (4, 1.0)


def test_a_backward_handler_attached_during_a_fit_runs_from_the_next_batch():
    # With no backward/step handlers the loop calls backward and step directly; a callback
    # attached in epoch 1's before_epoch must still see epoch 1's two after_backward events.
    calls = []

    class Count(Callback):
        def after_backward(self):
            calls.append(self.learn.train_iter)

    class AttachLater(Callback):
        def before_epoch(self):
            if self.learn.epoch == 1:
                self.learn.add_cb(Count())

    tiny_learner(cbs=AttachLater(), n_train=8, bs=4).fit(2)
    assert calls == [2, 3]  # train_iter before batches 0 and 1 of epoch 1


def test_gradients_are_none_after_each_training_batch():
    seen = []

    class Grads(Callback):
        run_valid = False

        def after_step(self):
            seen.append(all(p.grad is not None for p in self.learn.model.parameters()))

        def after_batch(self):
            seen.append(all(p.grad is None for p in self.learn.model.parameters()))

    tiny_learner(cbs=Grads(), n_train=8, bs=4).fit(1)
    assert seen == [True, True, True, True]  # 2 batches: grads at the step, None after


def test_an_optimizer_with_its_own_zero_grad_gets_it_called_once_per_batch():
    calls = []

    class CountingSGD(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none)

    tiny_learner(opt_func=CountingSGD, n_train=12, bs=4).fit(2)
    assert calls == [True] * 6  # 3 batches x 2 epochs


def test_under_torch_profiler_the_zero_grad_annotation_is_recorded():
    learn = tiny_learner(opt_func=torch.optim.SGD, n_train=8, bs=4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        learn.fit(1)
    names = [e.name for e in prof.events()]
    assert names.count("Optimizer.zero_grad#SGD.zero_grad") == 2


class ValidateAtFirstBatch(Callback):
    """Calls learn.validate() after the first training batch of each epoch."""

    run_valid = False

    def __init__(self) -> None:
        self.results: list[dict] = []

    def after_batch(self) -> None:
        if self.learn.iter == 0:
            self.results.append(self.learn.validate())


def test_validate_called_by_a_callback_mid_epoch_leaves_training_going():
    steps = []

    class CountSteps(Callback):
        def after_step(self):
            steps.append((self.learn.epoch, self.learn.iter))

    probe = ValidateAtFirstBatch()
    history = tiny_learner(cbs=[probe, CountSteps()], n_train=12, bs=4).fit(2)
    # Every one of the 3 training batches of both epochs still steps, and each epoch gets
    # one row with a train loss averaged over its 3 batches.
    assert steps == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert history.epoch == [0, 1]
    assert all(loss == loss for loss in history.history["loss"])  # not nan
    assert [set(r.keys()) for r in probe.results] == [{"valid_loss"}, {"valid_loss"}]


def test_validate_mid_epoch_returns_the_loss_of_the_weights_at_that_point():
    expected = []

    class HandLoss(Callback):
        run_valid = False

        def after_batch(self):
            if self.learn.iter == 0:
                xv, yv = next(iter(self.learn.dls.valid))  # one batch of 4
                with torch.no_grad():
                    loss = nn.functional.cross_entropy(self.learn.model(xv), yv)
                expected.append(float(loss))

    probe = ValidateAtFirstBatch()
    tiny_learner(cbs=[HandLoss(), probe], n_train=12, bs=4).fit(1)
    assert probe.results[0]["valid_loss"] == pytest.approx(expected[0])


def test_validate_returns_loss_and_metrics_and_leaves_history_alone():
    learn = tiny_learner(metrics=accuracy)
    learn.fit(1)
    rows = list(learn.recorder.rows)
    result = learn.validate()
    assert set(result.keys()) == {"valid_loss", "accuracy"}
    assert result["valid_loss"] == pytest.approx(learn.recorder.rows[-1]["valid_loss"])
    assert learn.recorder.rows == rows
    assert learn.recorder.history.epoch == [0]


def test_validate_on_an_explicit_loader_equals_a_hand_computed_loss():
    learn = tiny_learner()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        expected = nn.functional.cross_entropy(learn.model(x), y).item()
    dl = DataLoaders.from_tensors(x, y, valid_pct=None, bs=4, shuffle=False).train
    assert learn.validate(dl)["valid_loss"] == pytest.approx(expected, rel=1e-6)


def test_get_preds_returns_predictions_targets_inputs_and_per_item_losses():
    learn = tiny_learner(n_valid=6, bs=4)
    inputs, preds, targs, losses = learn.get_preds(with_input=True, with_loss=True)
    xv, yv = learn.dls.valid.tensors
    assert preds.shape == (6, 2) and torch.equal(targs, yv) and torch.equal(inputs, xv)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(learn.model(xv), yv, reduction="none")
    assert torch.allclose(losses, expected)
    assert torch.allclose(preds, learn.model(xv).detach())


def test_get_preds_applies_act():
    learn = tiny_learner()
    probs, _ = learn.get_preds(act=lambda p: p.softmax(-1))
    assert torch.allclose(probs.sum(-1), torch.ones(4))


def test_save_then_load_round_trips_model_and_optimizer(tmp_path):
    learn = tiny_learner(path=tmp_path)
    learn.fit(1)
    path = learn.save("m")
    assert path == tmp_path / "models" / "m.pth"
    weights = learn.model.weight.detach().clone()
    opt_step = learn.opt.state_dict()["state"][0]["step"].item()
    other = tiny_learner(path=tmp_path)
    with torch.no_grad():
        other.model.weight.zero_()
    other.load("m")
    assert torch.equal(other.model.weight, weights)
    assert other.opt.state_dict()["state"][0]["step"].item() == opt_step == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pth"]  # no temp files left


def test_saved_file_loads_with_weights_only(tmp_path):
    learn = tiny_learner(path=tmp_path)
    state = torch.load(learn.save("m", with_opt=False), weights_only=True)
    assert set(state) == {"model"}


def test_load_refuses_a_file_that_needs_unpickling(tmp_path):
    (tmp_path / "models").mkdir()
    with open(tmp_path / "models" / "evil.pth", "wb") as f:
        pickle.dump({"model": object()}, f)
    learn = tiny_learner(path=tmp_path)
    with pytest.raises(ValueError, match="refusing to load"):
        learn.load("evil")


def test_fastai_argument_order_is_accepted():
    dls = tiny_dls()
    model = nn.Linear(4, 2)
    learn = Learner(dls, model, device="cpu")
    assert learn.model is model and learn.dls is dls


def test_loss_is_inferred_from_integer_targets_as_cross_entropy():
    learn = Learner(nn.Linear(4, 2), tiny_dls(), device="cpu")
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)


def test_a_train_valid_pair_and_a_single_loader_are_accepted():
    dls = tiny_dls()
    pair = Learner(nn.Linear(4, 2), (dls.train, dls.valid), device="cpu")
    single = Learner(nn.Linear(4, 2), dls.train, device="cpu")
    assert pair.dls.valid is dls.valid
    assert single.dls.valid is None
    single.logger = lambda line: None
    assert set(single.fit(1).history) == {"loss"}


def test_opt_func_may_be_a_callable_of_params():
    learn = tiny_learner(opt_func=lambda params: torch.optim.SGD(params, lr=0.5))
    learn.fit(1)
    assert isinstance(learn.opt, torch.optim.SGD)


def test_fit_lr_sets_the_learning_rate():
    learn = tiny_learner(opt_func=torch.optim.SGD)
    learn.fit(1, lr=0.25)
    assert learn.opt.param_groups[0]["lr"] == 0.25


# ---- bad input: a clear error naming the argument and the value, before any work ----------


def test_fit_zero_or_negative_epochs_is_an_error():
    learn = tiny_learner()
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=rf"n_epoch.*{bad}"):
            learn.fit(bad)


def test_empty_train_loader_is_an_error():
    empty = DataLoaders.from_tensors(torch.zeros(0, 4), torch.zeros(0).long(), valid_pct=None)
    learn = Learner(nn.Linear(4, 2), empty, nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(ValueError, match="empty"):
        learn.fit(1)


def test_non_scalar_loss_is_an_error_before_any_step():
    learn = tiny_learner()
    learn.loss_func = nn.CrossEntropyLoss(reduction="none")
    before = learn.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"scalar.*\(4,\)"):
        learn.fit(1)
    assert torch.equal(learn.model.weight, before)


def test_model_without_parameters_is_an_error():
    learn = Learner(nn.ReLU(), tiny_dls(), nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(ValueError, match="ReLU has no trainable parameters"):
        learn.fit(1)


def test_metric_that_is_not_callable_is_an_error():
    with pytest.raises(TypeError, match=r"metrics.*42"):
        Learner(nn.Linear(4, 2), tiny_dls(), metrics=[42])


def test_dls_of_a_wrong_type_is_an_error():
    with pytest.raises(TypeError, match="dls.*str"):
        Learner(nn.Linear(4, 2), "data")


def test_model_of_a_wrong_type_is_an_error():
    with pytest.raises(TypeError, match="model.*int"):
        Learner(3, tiny_dls())


def test_cbs_entry_that_is_not_a_callback_is_an_error():
    with pytest.raises(TypeError, match="cbs.*'x'"):
        tiny_learner(cbs=["x"])


def test_fastai_v1_callbacks_keyword_on_the_learner_keeps_them():
    class A(Callback):
        pass

    class B(Callback):
        pass

    learn = Learner(nn.Linear(4, 2), tiny_dls(), cbs=A(), callbacks=[B()], device="cpu")
    assert isinstance(learn.a, A) and isinstance(learn.b, B)


def test_learn_x_and_y_are_the_first_input_and_target_and_reads_fall_through_to_the_model():
    seen = {}

    class Probe(Callback):
        def after_pred(self):
            seen["x"], seen["y"] = self.learn.x.shape, self.learn.y.shape

    learn = tiny_learner(cbs=Probe(), n_train=4, bs=4)
    learn.fit(1)
    assert seen == {"x": (4, 4), "y": (4,)}
    assert learn.in_features == 4  # nn.Linear(4, 2).in_features, read through the learner
    with pytest.raises(AttributeError, match="nor has its model"):
        _ = learn.no_such_thing


def test_loss_is_a_zero_tensor_at_before_fit():
    seen = []

    class Probe(Callback):
        def before_fit(self):
            seen.append(self.learn.loss)

    tiny_learner(cbs=Probe()).fit(1)
    assert torch.equal(seen[0], torch.tensor(0.0))


def test_the_lr_of_a_partial_opt_func_is_used_when_the_learner_has_no_lr():
    sgd = functools.partial(torch.optim.SGD, lr=0.5)
    assert tiny_learner(opt_func=sgd).create_opt().param_groups[0]["lr"] == 0.5
    assert tiny_learner(opt_func=sgd, lr=0.1).create_opt().param_groups[0]["lr"] == 0.1


def test_ordered_cbs_lists_the_callbacks_of_an_event_in_order(capsys):
    learn = tiny_learner()
    assert [type(c).__name__ for c in learn.ordered_cbs("after_batch")] == [
        "Recorder",
        "ProgressBar",
    ]
    assert learn.show_training_loop() == learn.show_loop()


def test_fit_start_epoch_skips_the_first_epochs_with_their_counters():
    learn = tiny_learner(n_train=8, bs=4)  # 2 batches per epoch
    history = learn.fit(3, start_epoch=2)
    assert history.epoch == [2]
    assert learn.train_iter == 6 and learn.pct_train == 1.0


def test_get_preds_ds_idx_0_predicts_the_training_loader():
    learn = tiny_learner(n_train=8, n_valid=4)
    assert learn.get_preds(ds_idx=0)[0].shape == (8, 2)
    assert learn.get_preds()[0].shape == (4, 2)
    with pytest.raises(ValueError, match="ds_idx must be 0"):
        learn.get_preds(ds_idx=2)


def test_load_without_the_optimizer_leaves_a_usable_one(tmp_path):
    learn = tiny_learner(path=tmp_path)
    learn.fit(1)
    learn.save("m")
    fresh = tiny_learner(path=tmp_path)
    fresh.load("m", with_opt=False)
    assert fresh.opt is not None and fresh.opt.state_dict()["state"] == {}
    fresh.fit(1)


def test_validate_unpacks_as_fastai_and_still_answers_by_name():
    learn = tiny_learner(metrics=accuracy)
    learn.fit(1)
    loss, acc = learn.validate()
    result = learn.validate()
    assert result["valid_loss"] == loss and result["accuracy"] == acc
    assert result == [loss, acc] and result.keys() == ["valid_loss", "accuracy"]


def test_get_preds_with_input_keeps_every_input_and_target_in_fastais_order():
    class TwoInTwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, a, b):
            return self.lin(a) + b

    a, b = torch.randn(6, 3), torch.randn(6, 1)
    t1, t2 = torch.randn(6, 1), torch.randn(6, 1)
    loader = TensorLoader(a, b, t1, t2, bs=4)  # batches of 4 and 2 rows, in order
    dls = DataLoaders(loader, loader)
    loss = lambda pred, y1, y2: ((pred - y1) ** 2).mean() + ((pred - y2) ** 2).mean()  # noqa: E731
    learn = Learner(TwoInTwoOut(), dls, loss, n_inp=2, device="cpu")
    inputs, preds, targets = learn.get_preds(with_input=True)
    assert [t.shape for t in inputs] == [(6, 3), (6, 1)]
    assert preds.shape == (6, 1) and [t.shape for t in targets] == [(6, 1), (6, 1)]
    assert torch.equal(inputs[0], a) and torch.equal(targets[1], t2)
