"""Tests for the Profiler: call counts per callback and event, the table, zero cost when gone."""

from __future__ import annotations

import types

import pytest

from conftest import tiny_learner
from hookloop import Callback, Profiler
from hookloop.callbacks.profiler import _Timed


class Boom(Callback):
    def after_batch(self) -> None:
        raise ValueError("boom")


def profiled_fit(n_epoch: int = 2, **kwargs) -> tuple[Profiler, list[str]]:
    # 12 training samples in batches of 4 and 8 validation samples in one batch of 8 (validation
    # batches are twice as large): 3 + 1 batches per epoch.
    lines: list[str] = []
    learn = tiny_learner(n_train=12, n_valid=8, bs=4, **kwargs)
    learn.logger = lines.append
    profiler = Profiler()
    learn.fit(n_epoch, cbs=profiler)
    return profiler, lines


def test_profiler_counts_each_handler_call_per_callback_and_event():
    profiler, _ = profiled_fit(n_epoch=2)
    calls = {key: n for key, (n, _) in profiler.stats.items()}
    assert calls[("Recorder", "after_batch")] == 2 * (3 + 1)
    assert calls[("ProgressBar", "after_batch")] == 2 * (3 + 1)
    assert calls[("TrainEval", "before_train")] == 2
    assert calls[("Recorder", "after_validate")] == 2
    assert calls[("Recorder", "before_fit")] == 1
    assert ("Profiler", "before_fit") not in calls  # its own bookkeeping is not timed


def test_handler_times_add_up_to_less_than_the_whole_fit():
    profiler, _ = profiled_fit(n_epoch=1)
    in_handlers = sum(secs for _, secs in profiler.stats.values())
    assert all(secs >= 0 for _, secs in profiler.stats.values())
    assert 0 < in_handlers < profiler.fit_seconds


def test_profiler_prints_a_table_sorted_by_total_time_through_the_logger():
    profiler, lines = profiled_fit(n_epoch=2)
    table = lines[-1].splitlines()
    assert table[0].split() == [
        "callback",
        "event",
        "calls",
        "total",
        "ms",
        "mean",
        "us",
        "of",
        "fit",
    ]
    rows = table[1:-2]
    assert len(rows) == len(profiler.stats)
    totals = [float(row.split()[3]) for row in rows]
    assert totals == sorted(totals, reverse=True)
    recorder_row = next(r.split() for r in rows if r.split()[:2] == ["Recorder", "after_batch"])
    assert recorder_row[2] == "8"  # 2 epochs x (3 + 1) batches
    assert table[-1].startswith("(whole fit)")
    assert table == profiler.table().splitlines()


def test_show_false_keeps_the_table_to_itself():
    lines: list[str] = []
    learn = tiny_learner()
    learn.logger = lines.append
    learn.fit(1, cbs=Profiler(show=False))
    assert not any("callback" in line and "event" in line for line in lines)


def test_the_handlers_are_plain_methods_again_once_the_profiler_is_gone():
    learn = tiny_learner()
    profiler = Profiler(show=False)
    with learn.added_cbs(profiler):
        assert isinstance(learn._tables["train"]["after_batch"][0], _Timed)
    for table in learn._tables.values():
        for handlers in table.values():
            assert all(isinstance(h, types.MethodType) for h in handlers)


def test_profile_fits_with_a_profiler_for_that_fit_only():
    learn = tiny_learner(n_train=12, n_valid=8, bs=4)
    learn.logger = lambda line: None
    profiler = learn.profile(1)
    assert isinstance(profiler, Profiler)
    assert profiler not in learn.cbs
    assert profiler.stats[("Recorder", "after_batch")][0] == 3 + 1
    assert len(learn.recorder.values) == 1  # it was a real fit of one epoch


def test_an_error_in_a_timed_handler_still_names_the_callback():
    learn = tiny_learner(cbs=Boom())
    with pytest.raises(ValueError, match="boom") as info:
        learn.fit(1, cbs=Profiler(show=False))
    assert "raised in callback Boom during event after_batch" in info.value.__notes__


def test_show_loop_lists_timed_handlers_under_their_callbacks():
    learn = tiny_learner()
    with learn.added_cbs(Profiler(show=False)):
        text = learn.show_loop()
    assert "after_batch            Recorder, ProgressBar" in text


def test_show_must_be_a_bool():
    with pytest.raises(TypeError, match="show must be a bool, got 'yes'"):
        Profiler(show="yes")
