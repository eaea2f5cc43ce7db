"""Callback names, ordering, attribute fall-through and the precomputed dispatch table."""

from __future__ import annotations

import warnings

import pytest

from conftest import tiny_learner
from hookloop import Callback, class_to_name
from hookloop.callback import sort_callbacks


class CSVLogger(Callback):
    pass


class EarlyStoppingCallback(Callback):
    pass


def test_name_is_snake_case_without_trailing_callback():
    assert class_to_name(CSVLogger) == "csv_logger"
    assert class_to_name(EarlyStoppingCallback) == "early_stopping"
    assert CSVLogger().name == "csv_logger"


class A(Callback):
    pass


class B(Callback):
    pass


class C(Callback):
    pass


def test_order_sorts_lower_first_and_keeps_insertion_order_on_ties():
    a, b, c = A(), B(), C()
    b.order = -1
    assert [type(x).__name__ for x in sort_callbacks([a, b, c])] == ["B", "A", "C"]


def test_run_before_and_run_after_override_order():
    class Late(Callback):
        order = 10
        run_before = (A,)

    class Early(Callback):
        order = -10
        run_after = ("C",)  # names work as well as classes

    # Ready first: Late (10) and C (0); C goes first, which frees Early (-10), then Late, then A.
    out = sort_callbacks([A(), Late(), C(), Early()])
    assert [type(x).__name__ for x in out] == ["C", "Early", "Late", "A"]


def test_ordering_cycle_is_an_error_naming_every_class_in_it():
    class X(Callback):
        run_before = ("Y",)

    class Y(Callback):
        run_before = ("Z",)

    class Z(Callback):
        run_before = ("X",)

    with pytest.raises(ValueError, match="cycle") as info:
        sort_callbacks([X(), Y(), Z()])
    assert all(n in str(info.value) for n in ("X", "Y", "Z"))


def test_attribute_reads_fall_through_to_the_learner():
    cb = A()
    learn = tiny_learner(cbs=cb)
    assert cb.model is learn.model
    assert cb.n_epoch == learn.n_epoch


def test_assigning_a_learner_owned_name_warns_and_points_to_learn():
    class Shadow(Callback):
        def before_fit(self):
            self.lr = 0.5

    learn = tiny_learner(cbs=Shadow())
    with pytest.warns(UserWarning, match=r"self\.learn\.lr"):
        learn.fit(1)


def test_attached_callbacks_are_learner_attributes_and_classes_are_instantiated():
    learn = tiny_learner(cbs=[CSVLogger])
    assert isinstance(learn.csv_logger, CSVLogger)
    assert learn.csv_logger.learn is learn
    learn.remove_cb(learn.csv_logger)
    assert not hasattr(learn, "csv_logger")


def test_dispatch_table_holds_only_handlers_of_callbacks_that_define_the_event():
    class OnlyAfterEpoch(Callback):
        def after_epoch(self):
            pass

    learn = tiny_learner()
    baseline = {e: len(h) for e, h in learn._tables["train"].items()}
    learn.add_cb(OnlyAfterEpoch())
    grown = {e: len(h) - baseline[e] for e, h in learn._tables["train"].items()}
    assert grown["after_epoch"] == 1
    assert sum(grown.values()) == 1
    assert learn._tables["train"]["after_pred"] == ()


def test_run_valid_false_keeps_a_callback_out_of_the_validation_table():
    seen = []

    class TrainOnly(Callback):
        run_valid = False

        def after_batch(self):
            seen.append(self.training)

    learn = tiny_learner(cbs=TrainOnly(), n_train=8, n_valid=8)
    learn.fit(1)
    assert seen == [True, True]  # 2 training batches, no validation batch


def test_added_cbs_and_removed_cbs_restore_the_callback_list():
    learn = tiny_learner()
    before = list(learn.cbs)
    a = A()
    with learn.added_cbs(a):
        assert a in learn.cbs
    assert learn.cbs == before
    with learn.removed_cbs(learn.progress_bar):
        assert not hasattr(learn, "progress_bar")
    assert learn.cbs == before


def test_fit_cbs_are_attached_for_that_fit_only():
    seen = []

    class Count(Callback):
        def before_fit(self):
            seen.append(1)

    learn = tiny_learner()
    learn.fit(1, cbs=Count())
    learn.fit(1)
    assert seen == [1]


def test_no_bar_removes_the_progress_bar_for_the_block():
    learn = tiny_learner()
    with learn.no_bar():
        assert "ProgressBar" not in [type(c).__name__ for c in learn.cbs]
    assert "ProgressBar" in [type(c).__name__ for c in learn.cbs]


def test_show_loop_lists_callbacks_per_event_in_order(capsys):
    class Late(Callback):
        order = 99

        def after_epoch(self):
            pass

    learn = tiny_learner(cbs=Late())
    text = learn.show_loop()
    assert "after_epoch            Recorder, Late" in text
    assert capsys.readouterr().out.strip() == text


def test_state_dict_defaults_to_empty():
    assert A().state_dict() == {}


def test_callback_without_learner_has_no_fallthrough():
    with pytest.raises(AttributeError, match="model"):
        _ = A().model


def test_unknown_learner_attribute_is_an_attribute_error():
    cb = A()
    tiny_learner(cbs=cb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            _ = cb.no_such_thing


def test_run_valid_false_still_gets_fit_and_epoch_events():
    seen = []

    class TrainOnly(Callback):
        run_valid = False

        def before_fit(self):
            seen.append("before_fit")

        def before_batch(self):
            seen.append("before_batch")

        def after_epoch(self):
            seen.append("after_epoch")

        def after_fit(self):
            seen.append("after_fit")

    tiny_learner(cbs=TrainOnly(), n_train=4, n_valid=4).fit(1)
    # before_fit fires while training is still False, after_epoch after validation.
    assert seen == ["before_fit", "before_batch", "after_epoch", "after_fit"]


def test_a_callback_is_callable_by_event_name():
    seen = []

    class Probe(Callback):
        def after_batch(self):
            seen.append("after_batch")

    cb = Probe()
    cb("after_batch")
    cb("before_fit")  # no such handler: nothing happens
    assert seen == ["after_batch"]


def test_keyword_functions_become_methods_that_receive_the_callback():
    calls = []
    cb = Callback(
        before_fit=lambda self: calls.append(("fit", self)),
        after_batch=lambda self: calls.append("b"),
    )
    tiny_learner(cbs=cb, n_train=8, n_valid=4).fit(1)  # 2 training + 1 validation batch
    assert calls == [("fit", cb), "b", "b", "b"]


def test_an_unknown_keyword_event_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="'befor_fit' is not an event"):
        Callback(befor_fit=lambda self: None)


def test_run_valid_false_keeps_the_phase_events_and_drops_only_its_batch_events():
    seen = []

    class TrainBatchesOnly(Callback):
        run_valid = False

        def before_validate(self):
            seen.append("before_validate")

        def after_batch(self):
            seen.append("batch" if self.training else "valid batch")

        def after_validate(self):
            seen.append("after_validate")

    tiny_learner(cbs=TrainBatchesOnly(), n_train=8, n_valid=4).fit(1)
    assert seen == ["batch", "batch", "before_validate", "after_validate"]


def test_calling_a_run_valid_false_callback_during_validation_skips_batch_events():
    seen = []

    class TrainBatchesOnly(Callback):
        run_valid = False

        def after_batch(self):
            seen.append(self.training)

    cb = TrainBatchesOnly()
    learn = tiny_learner(cbs=cb)
    learn.training = False
    cb("after_batch")
    learn.training = True
    cb("after_batch")
    assert seen == [True]
