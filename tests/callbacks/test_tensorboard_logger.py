"""TensorBoard: event files read back with tensorboard's own reader."""

from __future__ import annotations

import pytest
from logging_helpers import scripted_learner, two_epochs

from hookloop import TensorBoard


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_writes_epoch_values_read_back_by_tensorboard(tmp_path):
    learn = two_epochs(path=tmp_path)
    learn.fit(2, lr=0.5, cbs=TensorBoard("runs"))
    events = read_events(tmp_path / "runs")
    assert scalars(events, "epoch/train_loss") == [(0, 2.0), (1, 3.0)]
    assert scalars(events, "epoch/valid_loss") == [(0, 5.0), (1, 7.0)]
    assert scalars(events, "epoch/lr") == [(0, 0.5), (1, 0.5)]
    assert "batch/train_loss" not in events.Tags()["scalars"]


def test_tensorboard_update_freq_n_writes_every_nth_training_batch(tmp_path):
    # 4 training batches per epoch with losses 1..4 then 5..8; every 2nd optimizer step.
    losses = [1.0, 2.0, 3.0, 4.0, 9.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    learn = scripted_learner(losses, n_train=4, n_valid=1, path=tmp_path)
    learn.fit(2, cbs=TensorBoard("runs", update_freq=2))
    events = read_events(tmp_path / "runs")
    assert scalars(events, "batch/train_loss") == [(2, 2.0), (4, 4.0), (6, 6.0), (8, 8.0)]
    assert [step for step, _ in scalars(events, "batch/lr")] == [2, 4, 6, 8]


def test_tensorboard_histograms_every_histogram_freq_epochs(tmp_path):
    learn = scripted_learner([1.0] * 6, n_train=1, n_valid=1, path=tmp_path)
    learn.fit(3, cbs=TensorBoard("runs", histogram_freq=2))
    events = read_events(tmp_path / "runs")
    assert sorted(events.Tags()["histograms"]) == ["bias", "weight"]
    assert [h.step for h in events.Histograms("weight")] == [0, 2]
    assert events.Histograms("weight")[0].histogram_value.num == 8  # Linear(4, 2): 8 weights


@pytest.mark.parametrize("freq", ["step", 0, -1, 1.5])
def test_tensorboard_rejects_a_bad_update_freq(freq):
    with pytest.raises(ValueError, match="update_freq must be 'epoch', 'batch' or a positive int"):
        TensorBoard(update_freq=freq)
