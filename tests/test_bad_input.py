"""Bad input to the callbacks and the data: a clear error naming the argument, what it got and
what it wants, before any optimizer step or file write (issue #20)."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch import nn

from conftest import tiny_learner
from hookloop import (
    Callback,
    CSVLogger,
    CutMix,
    DataLoaders,
    EarlyStopping,
    GradientAccumulation,
    GradientClip,
    Learner,
    LRFinder,
    Metric,
    MixedPrecision,
    MixUp,
    ModelCheckpoint,
    Recorder,
    SaveModel,
    TerminateOnNaN,
    accuracy,
)
from hookloop.callbacks.ema import EMA
from hookloop.callbacks.keras_lr import ReduceLROnPlateau
from hookloop.callbacks.remote_monitor import RemoteMonitor

INF, NAN = float("inf"), float("nan")


def _weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


def _unchanged(learn, before) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- every float argument of every callback constructor: finite and in range ----------------

# (constructor, argument, bad value, words the message must hold). The message names the
# argument, the value received and the range wanted.
FLOAT_ARGS = [
    (MixUp, "alpha", INF, "alpha must be a number > 0, got inf"),
    (MixUp, "alpha", NAN, "alpha must be a number > 0, got nan"),
    (MixUp, "alpha", 0.0, "alpha must be a number > 0, got 0.0"),
    (MixUp, "alpha", -0.4, "alpha must be a number > 0, got -0.4"),
    (CutMix, "alpha", INF, "alpha must be a number > 0, got inf"),
    (CutMix, "alpha", NAN, "alpha must be a number > 0, got nan"),
    (CutMix, "alpha", 0.0, "alpha must be a number > 0, got 0.0"),
    (MixedPrecision, "init_scale", INF, "init_scale must be > 0, got inf"),
    (MixedPrecision, "init_scale", NAN, "init_scale must be > 0, got nan"),
    (MixedPrecision, "init_scale", 0.0, "init_scale must be > 0, got 0.0"),
    (MixedPrecision, "growth_factor", INF, "growth_factor must be a finite number > 1, got inf"),
    (MixedPrecision, "growth_factor", NAN, "growth_factor must be a finite number > 1, got nan"),
    (MixedPrecision, "growth_factor", 1.0, "growth_factor must be a finite number > 1, got 1.0"),
    (MixedPrecision, "backoff_factor", NAN, "backoff_factor must be in (0, 1), got nan"),
    (MixedPrecision, "backoff_factor", 1.0, "backoff_factor must be in (0, 1), got 1.0"),
    (MixedPrecision, "backoff_factor", INF, "backoff_factor must be in (0, 1), got inf"),
    # An infinite max_norm / clip_value records the norm unclipped; inf norm_type is max-norm.
    (GradientClip, "max_norm", NAN, "max_norm must be a number > 0 (or inf), got nan"),
    (GradientClip, "max_norm", 0.0, "max_norm must be a number > 0 (or inf), got 0.0"),
    (GradientClip, "max_norm", "1", "max_norm must be a number > 0 (or inf), got '1'"),
    (GradientClip, "norm_type", NAN, "norm_type must be a number > 0 (or inf), got nan"),
    (GradientClip, "norm_type", -2.0, "norm_type must be a number > 0 (or inf), got -2.0"),
    (GradientClip, "clip_value", NAN, "clip_value must be a number > 0 (or inf), got nan"),
    (GradientClip, "clip_value", -1.0, "clip_value must be a number > 0 (or inf), got -1.0"),
    (Recorder, "beta", NAN, "Recorder: beta must be a number in [0, 1), got nan"),
    (Recorder, "beta", 1.0, "Recorder: beta must be a number in [0, 1), got 1.0"),
    (Recorder, "beta", -0.1, "Recorder: beta must be a number in [0, 1), got -0.1"),
    (Recorder, "beta", "0.9", "Recorder: beta must be a number in [0, 1), got '0.9'"),
    (LRFinder, "start_lr", INF, "start_lr must be a positive number (or one per group), got inf"),
    (LRFinder, "start_lr", NAN, "start_lr must be a positive number (or one per group), got nan"),
    (LRFinder, "end_lr", INF, "end_lr must be a positive number (or one per group), got inf"),
    (LRFinder, "end_lr", 0.0, "end_lr must be a positive number (or one per group), got 0.0"),
    (SaveModel, "min_delta", NAN, "min_delta must be >= 0, got nan"),
    (SaveModel, "min_delta", -1.0, "min_delta must be >= 0, got -1.0"),
    (EarlyStopping, "min_delta", NAN, "min_delta must be >= 0, got nan"),
    (EarlyStopping, "baseline", NAN, "baseline must be finite, got nan"),
    (EMA, "decay", NAN, "decay must be a number in [0, 1), got nan"),
    (EMA, "decay", INF, "decay must be a number in [0, 1), got inf"),
    (ReduceLROnPlateau, "factor", INF, "factor >= 1.0, got factor=inf"),
    (ReduceLROnPlateau, "min_delta", NAN, "min_delta must be >= 0, got nan"),
    (ReduceLROnPlateau, "min_lr", INF, "min_lr must be >= 0, got inf"),
    (RemoteMonitor, "timeout", NAN, "timeout must be"),
    (RemoteMonitor, "timeout", 0.0, "timeout must be"),
]


@pytest.mark.parametrize(
    "cls, arg, value, words",
    FLOAT_ARGS,
    ids=[f"{c.__name__}-{a}={v!r}" for c, a, v, _ in FLOAT_ARGS],
)
def test_a_non_finite_or_out_of_range_float_argument_is_named(cls, arg, value, words):
    with pytest.raises((ValueError, TypeError), match=re.escape(words)):
        cls(**{arg: value})


def test_model_checkpoint_float_arguments_are_checked():
    with pytest.raises(ValueError, match=re.escape("min_delta must be >= 0, got nan")):
        ModelCheckpoint("w.pth", min_delta=NAN)
    with pytest.raises(ValueError, match="initial_value_threshold must be finite, got nan"):
        ModelCheckpoint("w.pth", initial_value_threshold=NAN)


@pytest.mark.parametrize("cls", [EarlyStopping, SaveModel])
def test_an_infinite_min_delta_is_an_error(cls):
    with pytest.raises(ValueError, match="min_delta"):
        cls(min_delta=INF)


def test_a_nan_reduce_lr_factor_is_an_error():
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=NAN)


def test_mixup_with_an_infinite_alpha_fails_at_construction_instead_of_sampling_forever():
    learn = tiny_learner()
    before = _weights(learn)
    with pytest.raises(ValueError, match=re.escape("alpha must be a number > 0, got inf")):
        learn.fit(1, cbs=MixUp(float("inf")))
    assert _unchanged(learn, before)


# ---- GradientAccumulation that can never step -----------------------------------------------


def test_gradient_accumulation_that_no_fit_can_reach_is_an_error_in_before_fit(tmp_path):
    learn = tiny_learner(n_train=8, path=tmp_path)  # 2 batches of 4 a epoch
    before = _weights(learn)
    with pytest.raises(ValueError) as info:
        learn.fit(2, cbs=[GradientAccumulation(n_acc=10**6), CSVLogger()])
    message = str(info.value)
    assert "n_acc=1000000" in message
    assert "at most 16 training samples (4 batches of at most 4)" in message
    assert "no step would ever be taken" in message
    assert _unchanged(learn, before)
    assert _files(tmp_path) == []


def test_gradient_accumulation_steps_beyond_the_fit_is_an_error():
    learn = tiny_learner(n_train=8)
    before = _weights(learn)
    with pytest.raises(ValueError, match=re.escape("steps=5 micro-batches per optimizer step")):
        learn.fit(2, cbs=GradientAccumulation(steps=5))  # 4 training batches in the fit
    assert _unchanged(learn, before)


def test_gradient_accumulation_reached_only_in_the_last_epoch_still_trains():
    learn = tiny_learner(n_train=8)
    before = _weights(learn)
    learn.fit(2, cbs=GradientAccumulation(n_acc=16))  # 16 samples in the fit: one step
    assert not _unchanged(learn, before)


# ---- DataLoaders.from_tensors --------------------------------------------------------------

X, Y = torch.randn(20, 4), torch.randint(0, 2, (20,))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"bs": True}, ValueError, "bs must be a positive int, got True"),
        ({"bs": 0}, ValueError, "bs must be a positive int, got 0"),
        ({"valid_bs": 0}, ValueError, "valid_bs must be a positive int or None (2 * bs), got 0"),
        ({"valid_bs": -5}, ValueError, "valid_bs must be a positive int or None (2 * bs), got -5"),
        ({"valid_bs": True}, ValueError, "valid_bs must be a positive int or None"),
        ({"valid": (X,)}, ValueError, "valid must be a pair (x_valid, y_valid), got tuple of 1"),
        ({"valid": X}, ValueError, "valid must be a pair (x_valid, y_valid), got tensor("),
        ({"valid": (None, Y)}, TypeError, "valid[0] (x_valid) must be a tensor"),
        ({"valid": (X, Y[:5])}, ValueError, "valid's x and y must have the same length, got 20"),
        ({"x": None}, TypeError, "x must be a tensor (or an array or a nested list of numbers)"),
        ({"x": (r for r in X)}, TypeError, "x must be a tensor (or an array or a nested list of"),
        ({"x": "abc"}, TypeError, "x must be a tensor (or an array or a nested list of numbers)"),
        ({"y": None}, TypeError, "y must be a tensor (or an array or a nested list of numbers)"),
        ({"x": [[1, 2], [3]]}, TypeError, "x must be a tensor"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else "",
)
def test_from_tensors_names_a_bad_argument(kwargs, error, words):
    args = {"x": X, "y": Y, **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        DataLoaders.from_tensors(**args)


def test_from_tensors_says_why_a_generator_cannot_be_used():
    with pytest.raises(TypeError, match="got generator: an iterator is read once"):
        DataLoaders.from_tensors((r for r in X), Y)


def test_from_datasets_checks_its_batch_sizes():
    ds = torch.utils.data.TensorDataset(X, Y)
    with pytest.raises(ValueError, match=re.escape("valid_bs must be a positive int or None")):
        DataLoaders.from_datasets(ds, ds, valid_bs=0)
    with pytest.raises(ValueError, match=re.escape("bs must be a positive int or None, got True")):
        DataLoaders.from_datasets(ds, ds, bs=True)


def test_an_explicit_valid_bs_is_kept_and_none_means_twice_bs():
    assert DataLoaders.from_tensors(X, Y, bs=4, valid_bs=3).valid.bs == 3
    assert DataLoaders.from_tensors(X, Y, bs=4).valid.bs == 8


# ---- a non-finite training loss without TerminateOnNaN --------------------------------------


def _nan_learner(**kwargs):
    learn = tiny_learner(n_train=8, **kwargs)
    learn.dls.train.tensors[0][1, 2] = float("nan")  # one NaN feature in the first batch
    return learn


def test_a_nan_in_the_inputs_warns_once_per_fit_naming_terminate_on_nan():
    learn = _nan_learner()
    with pytest.warns(RuntimeWarning) as record:
        learn.fit(3)
    ours = [w for w in record if "training loss is" in str(w.message)]
    assert len(ours) == 1  # three bad epochs, one warning
    message = str(ours[0].message)
    assert "epoch 0: the training loss is nan" in message
    assert "Add TerminateOnNaN()" in message


def test_no_warning_when_terminate_on_nan_watches():
    learn = _nan_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2, cbs=TerminateOnNaN())


def test_a_finite_loss_gives_no_warning():
    learn = tiny_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2)
    assert len(learn.recorder.rows) == 2


# ---- savers pointed at a file or an unwritable place fail in before_fit ---------------------


def _savers(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return a_file


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda f: ModelCheckpoint(f / "w.{epoch}.pth"), "ModelCheckpoint filepath: cannot write"),
        (lambda f: ModelCheckpoint(f / "sub" / "w.pth"), "ModelCheckpoint filepath: cannot write"),
        (lambda f: CSVLogger(f / "log.csv"), "CSVLogger: cannot write"),
    ],
    ids=["ModelCheckpoint-file-as-folder", "ModelCheckpoint-below-a-file", "CSVLogger"],
)
def test_a_saver_below_a_file_fails_before_the_first_step(tmp_path, make, words):
    a_file = _savers(tmp_path)
    learn = tiny_learner(path=tmp_path)
    before = _weights(learn)
    with pytest.raises(NotADirectoryError) as info:
        learn.fit(1, cbs=make(a_file))
    assert words in str(info.value)
    assert f"{str(a_file)!r} is a file, not a folder" in str(info.value)
    assert _unchanged(learn, before)
    assert _files(tmp_path) == ["a_file"]
    assert a_file.read_text() == "not a folder"


def test_save_model_with_a_file_where_its_folder_should_be_fails_before_the_first_step(tmp_path):
    _savers(tmp_path)
    learn = tiny_learner(path=tmp_path, model_dir="a_file")
    before = _weights(learn)
    with pytest.raises(NotADirectoryError, match=re.escape("SaveModel (learn.path/model_dir)")):
        learn.fit(1, cbs=SaveModel())
    assert _unchanged(learn, before)
    assert _files(tmp_path) == ["a_file"]


def test_save_model_every_epoch_checks_its_folder_too(tmp_path):
    _savers(tmp_path)
    learn = tiny_learner(path=tmp_path / "a_file" / "sub")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        learn.fit(1, cbs=SaveModel(every_epoch=True))
    assert _files(tmp_path) == ["a_file"]


def test_model_checkpoint_pointed_at_a_folder_is_an_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    learn = tiny_learner(path=tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder, a file name is needed"):
        learn.fit(1, cbs=ModelCheckpoint(tmp_path / "ckpt"))


def test_a_saver_in_a_missing_folder_still_creates_it_at_the_first_save(tmp_path):
    learn = tiny_learner(path=tmp_path)
    learn.fit(1, cbs=[ModelCheckpoint(tmp_path / "new" / "w.{epoch}.pth"), SaveModel()])
    assert (tmp_path / "new" / "w.1.pth").exists()
    assert (tmp_path / "models" / "model.pth").exists()


# ---- unclear errors: the argument is now named ---------------------------------------------


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("w.{epoch[0]}.pth", "'int' object is not subscriptable"),
        ("w.{}.pth", "positional"),
        ("w.{val_loss:d}.pth", "Unknown format code 'd'"),
        ("w.{epoch.pth", "expected '}'"),
    ],
)
def test_a_bad_model_checkpoint_pattern_is_an_error_at_construction(pattern, words):
    with pytest.raises(ValueError) as info:
        ModelCheckpoint(pattern)
    message = str(info.value)
    assert f"ModelCheckpoint: filepath {pattern!r} is not a valid pattern" in message
    assert words in message
    assert "'weights.{epoch:02d}-{val_loss:.2f}.pth'" in message  # what it wants


def test_a_pattern_naming_an_unknown_value_is_still_an_error_at_the_start_of_fit(tmp_path):
    learn = tiny_learner(path=tmp_path)
    with pytest.raises(ValueError, match="names 'val_acc', which is not a recorded value"):
        learn.fit(1, cbs=ModelCheckpoint(tmp_path / "w.{val_acc}.pth"))
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: CSVLogger(""), "file must be a non-empty str or path, got str: ''"),
        (lambda: CSVLogger(fname=""), "fname must be a non-empty str or path, got str: ''"),
        (lambda: CSVLogger(filename=""), "filename must be a non-empty str or path, got str: ''"),
        (lambda: CSVLogger(3), "file must be a str or path, got int: 3"),
    ],
)
def test_csv_logger_names_an_empty_file_name(make, words):
    with pytest.raises(TypeError, match=re.escape(words)):
        make()


def test_gradient_clip_with_a_string_max_norm_says_it_wants_a_number():
    with pytest.raises(
        ValueError, match=re.escape("max_norm must be a number > 0 (or inf), got '1'")
    ):
        GradientClip(max_norm="1")


# ---- lr_find: suggestion functions are checked before the sweep -----------------------------


@pytest.mark.parametrize(
    "funcs, error, words",
    [
        (5, TypeError, "suggest_funcs must be a suggestion function"),
        (["valley"], TypeError, "got the item 'valley'"),
        ((lambda lrs, losses, n: (1e-3, (1e-3, 0.0)),), ValueError, "'<lambda>' is not a usable"),
    ],
)
def test_lr_find_checks_suggest_funcs_before_the_sweep(funcs, error, words):
    learn = tiny_learner()
    before = _weights(learn)
    with pytest.raises(error, match=re.escape(words)):
        learn.lr_find(suggest_funcs=funcs, show_plot=False)
    assert learn.recorder.n_losses == 0  # no sweep ran
    assert _unchanged(learn, before)


def test_lr_find_with_a_function_twice_is_an_error_before_the_sweep():
    from hookloop.callbacks.lr_finder import valley

    learn = tiny_learner()
    with pytest.raises(ValueError, match="two functions named 'valley'"):
        learn.lr_find(suggest_funcs=(valley, valley), show_plot=False)
    assert learn.recorder.n_losses == 0


def test_lr_find_still_takes_one_function_or_none():
    from hookloop.callbacks.lr_finder import minimum

    learn = tiny_learner(n_train=64, bs=4)
    result = learn.lr_find(num_it=10, suggest_funcs=minimum, show_plot=False)
    assert math.isfinite(result.minimum)
    assert learn.lr_find(num_it=10, suggest_funcs=None, show_plot=False) is None


# ---- one batch through the model, the loss and the metrics before training -------------------


def _wrong_width_valid(tmp_path=None, **kwargs):
    # Training data has 4 features, the validation data 5: the model is Linear(4, 2).
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
    xv, yv = torch.randn(4, 5, generator=g), torch.randint(0, 2, (4,), generator=g)
    dls = DataLoaders.from_tensors(x, y, valid=(xv, yv), bs=4, shuffle=False)
    learn = Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(), device="cpu", **kwargs)
    learn.logger = lambda line: None
    return learn


def test_a_validation_set_with_the_wrong_feature_count_fails_before_the_first_step(tmp_path):
    learn = _wrong_width_valid(path=tmp_path)
    before = _weights(learn)
    with pytest.raises(RuntimeError) as info:
        learn.fit(1, cbs=CSVLogger())
    note = "\n".join(info.value.__notes__)
    assert "in the check before training: the first batch of the validation set" in note
    assert "through the model (inputs float32 [4, 5]; targets int64 [4])" in note
    assert _unchanged(learn, before)
    assert _files(tmp_path) == []  # CSVLogger's before_fit did not run


def test_the_check_leaves_modes_random_state_and_loop_state_as_they_were():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 2))
    learn = tiny_learner()
    learn.model = model
    stats = model[2].running_mean.clone()
    state = torch.get_rng_state()
    learn._check_first_batch()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model[2].running_mean, stats)  # eval mode: no statistics updated
    assert all(m.training for m in model.modules())
    assert learn.xb == () and learn.yb == () and learn.pred is None


def test_a_seeded_fit_is_bit_identical_with_the_check(tmp_path):
    # A DataLoader's iterator would draw its base seed from the global generator; the check
    # collates the first samples itself, so a shuffled torch DataLoader sees the same order.
    def run():
        torch.manual_seed(0)
        ds = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        dls = DataLoaders.from_datasets(ds, ds, bs=8)
        learn = Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(), device="cpu")
        learn.logger = lambda line: None
        learn.fit(2)
        return _weights(learn), torch.get_rng_state()

    (w1, s1), (w2, s2) = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(w1, w2)) and torch.equal(s1, s2)
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    learn = Learner(nn.Linear(4, 2), DataLoaders.from_datasets(ds, ds, bs=8), device="cpu")
    state = torch.get_rng_state()
    learn._check_first_batch()
    assert torch.equal(torch.get_rng_state(), state)


def test_the_check_is_skipped_when_a_callback_transforms_the_validation_batches():
    class Narrow(Callback):
        def before_batch(self):
            self.learn.xb = (self.learn.xb[0][:, :4],)  # makes the 5-wide set fit

    learn = _wrong_width_valid()
    learn.fit(1, cbs=Narrow())  # no false alarm
    assert len(learn.recorder.rows) == 1  # the epoch, validation included, ran through


def test_the_check_is_skipped_for_a_loader_it_cannot_peek_without_iterating():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from zip(torch.randn(4, 5), torch.randint(0, 2, (4,)))

    learn = tiny_learner()
    learn.dls.loaders[1] = torch.utils.data.DataLoader(Stream(), batch_size=2)
    before = _weights(learn)
    with pytest.raises(RuntimeError) as info:
        learn.fit(1)  # fails at the first validation batch, after the epoch's training
    assert "in validation batch 0 of epoch 0" in "\n".join(info.value.__notes__)
    assert not _unchanged(learn, before)


def test_a_metric_that_raises_is_named_before_the_first_step(tmp_path):
    def broken(pred, targ):
        raise ValueError("boom")

    learn = tiny_learner(metrics=broken, path=tmp_path)
    before = _weights(learn)
    with pytest.raises(ValueError, match="boom") as info:
        learn.fit(1, cbs=CSVLogger())
    assert "in metric 'broken' (AvgMetric), run on one batch before training" in (
        info.value.__notes__
    )
    assert not any("Recorder" in n for n in info.value.__notes__)
    assert _unchanged(learn, before)
    assert _files(tmp_path) == []


def test_a_metric_that_returns_a_string_is_a_type_error_naming_it():
    def wordy(pred, targ):
        return "good"

    learn = tiny_learner(metrics=wordy)
    before = _weights(learn)
    with pytest.raises(TypeError, match=re.escape("metric 'wordy' returned str 'good'")):
        learn.fit(1)
    assert _unchanged(learn, before)


def test_a_metric_object_with_a_string_value_is_a_type_error_naming_it():
    class Label(Metric):
        def reset(self):
            pass

        def accumulate(self, learn):
            pass

        @property
        def value(self):
            return "n/a"

    learn = tiny_learner(metrics=Label())
    with pytest.raises(TypeError, match=re.escape("metric 'label' (Label) has the value str")):
        learn.fit(1)


def test_metrics_are_checked_on_the_training_set_when_there_is_no_validation_set():
    def wordy(pred, targ):
        return "good"

    learn = tiny_learner(metrics=wordy)
    learn.dls.loaders[1] = None
    before = _weights(learn)
    with pytest.raises(TypeError, match="metric 'wordy'"):
        learn.fit(1)
    assert _unchanged(learn, before)


def test_the_checked_metrics_start_the_fit_empty():
    learn = tiny_learner(metrics=accuracy)
    learn.fit(1)
    assert learn.metrics[0].n_samples == 4  # the validation set, not 4 more from the check


def test_a_metric_whose_value_fails_on_one_batch_is_left_to_the_epoch():
    # An AUC-like value of one batch may fail where the epoch's would not: only accumulate and
    # the type of a value that computes are checked.
    class NeedsTwoBatches(Metric):
        def reset(self):
            self.n = 0

        def accumulate(self, learn):
            self.n += 1

        @property
        def value(self):
            if self.n < 2:
                raise ValueError("needs two batches")
            return float(self.n)

    learn = tiny_learner(n_valid=8, bs=2, metrics=NeedsTwoBatches())  # 2 valid batches of 4
    learn.fit(1)
    assert learn.recorder.rows[-1]["needstwobatches"] == 2.0


def test_float_targets_with_no_loss_function_name_the_inferred_loss_at_the_first_batch():
    # Float targets infer MSELoss; a model with 2 outputs against (N,) targets cannot use it.
    x, y = torch.randn(8, 4), torch.randn(8)
    learn = Learner(nn.Linear(4, 2), DataLoaders.from_tensors(x, y, bs=4), device="cpu")
    learn.logger = lambda line: None
    before = _weights(learn)
    with pytest.raises(RuntimeError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own broadcasting warning
        learn.fit(1)
    note = "\n".join(info.value.__notes__)
    assert "targets float32 [4]; loss_func MSELoss (inferred from the targets' dtype" in note
    assert "pass loss_func=" in note
    assert _unchanged(learn, before)
