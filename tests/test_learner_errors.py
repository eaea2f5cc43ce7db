"""Bad input to the Learner: a clear error naming the argument, before any step or file write."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

from conftest import tiny_learner
from hookloop import (
    AvgMetric,
    Callback,
    CSVLogger,
    Learner,
    ParamScheduler,
    SchedLin,
    accuracy,
)


def _weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


def _unchanged(learn, before) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"lr": -0.1}, ValueError, "lr must be a finite number >= 0, got -0.1"),
        ({"lr": "abc"}, ValueError, "lr must be a number"),
        ({"wd": -1}, ValueError, "wd must be a finite number >= 0, got -1"),
        ({"wd": "abc"}, ValueError, "wd must be a number"),
        ({"path": 123}, TypeError, "path must be a str or a path, got 123"),
        ({"metrics": AvgMetric}, TypeError, "metrics: got the class AvgMetric"),
        ({"metrics": [accuracy, accuracy]}, ValueError, "two metrics named 'accuracy'"),
        ({"compile": "max-autotune"}, TypeError, "compile must be True, False or a dict"),
    ],
)
def test_a_bad_learner_argument_is_named_at_construction(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        tiny_learner(**kwargs)


def test_a_loss_class_instead_of_an_instance_is_named():
    dls = tiny_learner().dls
    with pytest.raises(TypeError, match=re.escape("pass an instance, CrossEntropyLoss()")):
        Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss)


@pytest.mark.parametrize(
    "fit, words",
    [
        (lambda learn: learn.fit(1, lr=-0.1), "lr must be a finite number >= 0, got -0.1"),
        (lambda learn: learn.fit(1, wd=-1.0), "wd must be a finite number >= 0, got -1.0"),
        (lambda learn: learn.fit_one_cycle(1, lr_max=-1e-2), "lr must be a finite number >= 0"),
        (
            lambda learn: learn.fit(1, cbs=ParamScheduler({"lr": SchedLin(-0.1, -0.2)})),
            "lr must be a finite number >= 0, got -0.1",
        ),
    ],
)
def test_a_negative_lr_or_wd_is_an_error_before_the_first_step(fit, words):
    learn = tiny_learner()
    before = _weights(learn)
    with pytest.raises(ValueError, match=words):
        fit(learn)
    assert _unchanged(learn, before)


def test_the_same_callback_instance_twice_is_an_error(tmp_path):
    csv = CSVLogger(tmp_path / "log.csv")
    with pytest.raises(ValueError, match="attached already"):
        tiny_learner(cbs=[csv, csv])
    learn = tiny_learner(cbs=[csv])
    with pytest.raises(ValueError, match="attached already"):
        learn.fit(1, cbs=csv)
    assert not (tmp_path / "log.csv").exists()


def test_two_instances_of_one_class_keep_working(tmp_path):
    learn = tiny_learner(cbs=[CSVLogger(tmp_path / "a.csv"), CSVLogger(tmp_path / "b.csv")])
    learn.fit(1)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_a_callback_named_like_learner_state_is_an_error():
    class Opt(Callback):
        pass

    with pytest.raises(ValueError, match="callback name 'opt' clashes"):
        tiny_learner(cbs=Opt())


def test_n_inp_larger_than_the_batch_is_named():
    learn = tiny_learner(n_inp=5)
    with pytest.raises(ValueError, match="n_inp=5 but the batch has 2 items"):
        learn.fit(1)


def test_get_preds_of_a_string_names_dl():
    with pytest.raises(TypeError, match="dl must be a data loader, got str"):
        tiny_learner().get_preds(dl="abc")


def test_a_first_batch_torch_error_gains_a_note_with_the_batch_shapes_and_the_loss():
    learn = tiny_learner()
    learn.loss_func = nn.MSELoss()  # (4, 2) predictions against (4,) int targets
    with pytest.raises(RuntimeError) as info:
        learn.fit(1)
    assert (
        "in training batch 0 of epoch 0: inputs float32 [4, 4]; targets int64 [4]; "
        "loss_func MSELoss" in info.value.__notes__
    )


@pytest.mark.parametrize(
    "content, words",
    [
        (b"hello world", "(11 bytes): it is not a complete file written by torch.save"),
        (b"", "(0 bytes): it is not a complete file written by torch.save (EOFError"),
    ],
)
def test_loading_a_file_torch_did_not_write_says_so(tmp_path, content, words):
    path = tmp_path / "models" / "bad.pth"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(words)):
        tiny_learner(path=tmp_path).load("bad")


def test_loading_a_truncated_file_says_so(tmp_path):
    learn = tiny_learner(path=tmp_path)
    file = learn.save("m")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="it is not a complete file written by torch.save"):
        learn.load("m")


def test_loading_a_bare_tensor_names_what_the_file_holds(tmp_path):
    (tmp_path / "models").mkdir()
    torch.save(torch.zeros(3), tmp_path / "models" / "t.pth")
    with pytest.raises(ValueError, match="holds a Tensor, not a state dict"):
        tiny_learner(path=tmp_path).load("t")


def test_a_partial_opt_func_with_a_negative_lr_is_named():
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        tiny_learner(opt_func=functools.partial(torch.optim.SGD, lr=-1.0))
