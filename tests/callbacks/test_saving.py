"""Checkpoint savers: SaveModel (fastai v2 and v1 calls) and ModelCheckpoint (Keras)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from tracker_helpers import CountBatches, Scripted, Weights, _same, _weights, make_learner

from hookloop import (
    EarlyStopping,
    ModelCheckpoint,
    SaveModel,
    SaveModelCallback,
    accuracy,
)

# ---- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SaveModel(every_epoch=True, at_end=True), "every_epoch and at_end"),
        (lambda: SaveModel(every="sometimes"), "every must be 'epoch' or 'improvement'"),
        (lambda: SaveModel(every_epoch=-2), "every_epoch must be >= 0, got -2"),
        (lambda: ModelCheckpoint("x.pth", save_freq=0), "save_freq must be 'epoch' or"),
        (lambda: ModelCheckpoint("x.pth", save_freq="batch"), "got 'batch'"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# ---- SaveModel (fastai v2 and v1) ----------------------------------------------------------


def test_save_model_saves_improvements_and_loads_the_best_at_the_end(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    learn.fit(3, cbs=[SaveModel(monitor="scripted_loss"), weights])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pth"]
    assert _same(_weights(learn.model), weights.per_epoch[1])
    assert "Better model found at epoch 1 with scripted_loss value: 4.0." in learn.lines
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert set(saved) == {"model"}  # with_opt=False by default
    assert _same(saved["model"], weights.per_epoch[1])


def test_save_model_with_opt_saves_the_optimizer_state(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(1, cbs=SaveModel(with_opt=True))
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert set(saved) == {"model", "opt"}


def test_save_model_every_epoch_writes_0_based_names_and_keeps_the_last_weights(tmp_path):
    weights = Weights()
    learn = make_learner(path=tmp_path)
    learn.fit(3, cbs=[SaveModel(every_epoch=True), weights])
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["model_0.pth", "model_1.pth", "model_2.pth"]
    saved = torch.load(tmp_path / "models" / "model_1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[1])
    assert _same(_weights(learn.model), weights.per_epoch[2])


def test_save_model_every_epoch_2_writes_every_other_epoch(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(5, cbs=SaveModel(every_epoch=2, fname="ckpt"))
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["ckpt_0.pth", "ckpt_2.pth", "ckpt_4.pth"]


def test_save_model_at_end_writes_the_final_weights_and_does_not_load_the_best(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    learn.fit(3, cbs=[SaveModel(monitor="scripted_loss", at_end=True), weights])
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[2])
    assert _same(_weights(learn.model), weights.per_epoch[2])


def test_fastai_v1_every_epoch_call_writes_1_based_bestmodel_files(tmp_path):
    # The fastai v1 wiki snippet, with fit in place of fit_one_cycle.
    weights = Weights()
    learn = make_learner(metrics=accuracy, path=tmp_path)
    learn.fit(3, callbacks=[SaveModelCallback(learn, every="epoch", monitor="accuracy"), weights])
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["bestmodel_1.pth", "bestmodel_2.pth", "bestmodel_3.pth"]
    saved = torch.load(tmp_path / "models" / "bestmodel_1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[0])  # bestmodel_1 is the first epoch


def test_fastai_v1_improvement_call_writes_bestmodel_and_loads_it(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    cb = SaveModelCallback(learn, "scripted_loss", "auto", "improvement", "best")
    learn.fit(3, callbacks=[cb, weights])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pth"]
    assert _same(_weights(learn.model), weights.per_epoch[1])


def test_fastai_v1_callback_fns_builds_the_callback_with_the_learner(tmp_path):
    learn = make_learner(
        metrics=accuracy,
        path=tmp_path,
        callback_fns=[functools.partial(SaveModelCallback, every="epoch", monitor="accuracy")],
    )
    learn.fit(2)
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["bestmodel_1.pth", "bestmodel_2.pth"]


def test_save_model_callback_is_the_fastai_alias_with_the_v2_call(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(2, cbs=SaveModelCallback("valid_loss", every_epoch=True))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_0.pth", "model_1.pth"]


def test_save_model_reloads_on_every_rank_so_it_is_not_rank_zero_only():
    assert SaveModel.rank_zero_only is False
    assert EarlyStopping.rank_zero_only is False
    assert ModelCheckpoint.rank_zero_only is True


# ---- ModelCheckpoint (Keras) -----------------------------------------------------------------


def test_model_checkpoint_pattern_uses_1_based_epochs_and_recorded_values(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_scripted_loss:.1f}.pth")
    learn.fit(3, cbs=ModelCheckpoint(pattern))
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["m-01-5.0.pth", "m-02-4.0.pth", "m-03-4.5.pth"]


def test_model_checkpoint_pattern_accepts_fastai_names_and_val_loss(tmp_path):
    learn = make_learner(metrics=Scripted([5]))
    learn.fit(1, cbs=ModelCheckpoint(str(tmp_path / "{scripted_loss:.0f}-{val_loss:.3f}.pth")))
    expected = f"5-{learn.recorder.rows[0]['valid_loss']:.3f}.pth"
    assert [p.name for p in tmp_path.iterdir()] == [expected]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("w-{val_acc:.2f}.pth", "names 'val_acc'.*epoch, train_loss, valid_loss"),
        ("w-{batch}.pth", "names 'batch'"),  # batch exists only with an int save_freq
        ("w-{val_loss:d}.pth", "not a valid pattern"),
        ("w-{}.pth", "not a valid pattern"),
    ],
)
def test_model_checkpoint_bad_pattern_raises_before_the_first_batch(tmp_path, pattern, message):
    learn = make_learner()
    count = CountBatches()
    with pytest.raises(ValueError, match=message):
        learn.fit(1, cbs=[ModelCheckpoint(str(tmp_path / pattern)), count])
    assert count.n == 0
    assert list(tmp_path.iterdir()) == []


def test_model_checkpoint_save_best_only_writes_only_improvements(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3]))
    cb = ModelCheckpoint(
        str(tmp_path / "best-{epoch:02d}.pth"), monitor="val_scripted_loss", save_best_only=True
    )
    learn.fit(4, cbs=cb)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best-01.pth", "best-02.pth", "best-04.pth"]


def test_model_checkpoint_save_best_only_one_file_holds_the_best_epoch(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    path = tmp_path / "best.pth"
    learn.fit(3, cbs=[ModelCheckpoint(path, "scripted_loss", save_best_only=True), weights])
    assert _same(torch.load(path, weights_only=True)["model"], weights.per_epoch[1])


def test_model_checkpoint_initial_value_threshold_must_be_beaten_first(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3]))
    cb = ModelCheckpoint(
        str(tmp_path / "best-{epoch}.pth"),
        monitor="scripted_loss",
        save_best_only=True,
        initial_value_threshold=4.2,
    )
    learn.fit(4, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-2.pth", "best-4.pth"]


def test_model_checkpoint_save_freq_counts_training_batches_across_epochs(tmp_path):
    # 2 training batches per epoch, save_freq 3: after global batches 3 and 6, i.e.
    # epoch 2 batch 1 and epoch 3 batch 2 (Keras numbering, 1-based).
    weights = Weights(per_step=True)
    learn = make_learner(n_train=8, bs=4)
    cb = ModelCheckpoint(str(tmp_path / "b-{epoch}-{batch}.pth"), save_freq=3)
    learn.fit(3, cbs=[cb, weights])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-2-1.pth", "b-3-2.pth"]
    saved = torch.load(tmp_path / "b-2-1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_step[2])  # the weights after the 3rd step


def test_model_checkpoint_batch_files_carry_the_last_completed_epoch_values(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4]), n_train=8, bs=4)
    cb = ModelCheckpoint(str(tmp_path / "{epoch}-{batch}-{scripted_loss}.pth"), save_freq=2)
    learn.fit(2, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-2-nan.pth", "2-2-5.0.pth"]


def test_model_checkpoint_save_best_only_with_save_freq_checks_at_the_end_of_each_epoch(tmp_path):
    # The monitored value exists only once an epoch ends; 2 batches per epoch, so batch 2.
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), n_train=8, bs=4)
    cb = ModelCheckpoint(
        str(tmp_path / "{epoch}-{batch}.pth"), "scripted_loss", save_best_only=True, save_freq=1
    )
    learn.fit(3, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-2.pth", "2-2.pth"]


def test_model_checkpoint_verbose_prints_keras_style_lines(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    path = tmp_path / "best.pth"
    learn.fit(3, cbs=ModelCheckpoint(path, "val_scripted_loss", verbose=1, save_best_only=True))
    assert [line for line in learn.lines if line.startswith("Epoch")] == [
        f"Epoch 1: val_scripted_loss improved from inf to 5.00000, saving model to {path}",
        f"Epoch 2: val_scripted_loss improved from 5.00000 to 4.00000, saving model to {path}",
        "Epoch 3: val_scripted_loss did not improve from 4.00000",
    ]


def test_model_checkpoint_weights_only_file_is_a_plain_state_dict(tmp_path):
    learn = make_learner()
    path = tmp_path / "w.weights.pth"
    learn.fit(1, cbs=ModelCheckpoint(path, save_weights_only=True))
    state = torch.load(path, weights_only=True)
    fresh = nn.Linear(4, 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight, learn.model.weight)


def test_model_checkpoint_whole_model_file_is_state_dicts_that_learn_load_reads(tmp_path):
    learn = make_learner()
    path = tmp_path / "full.pth"
    learn.fit(1, cbs=ModelCheckpoint(path))
    state = torch.load(path, weights_only=True)
    assert set(state) == {"model", "opt"}
    other = make_learner()
    other.load(path)
    assert torch.equal(other.model.weight, learn.model.weight)
    assert set(other.opt.state_dict()["state"]) == {0, 1}  # Adam moments for weight and bias


def test_model_checkpoint_leaves_no_temporary_files(tmp_path):
    learn = make_learner()
    learn.fit(2, cbs=ModelCheckpoint(tmp_path / "m{epoch}.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1.pth", "m2.pth"]
