"""The Learner: the fixed training loop (fit, validate, get_preds), callbacks, save/load."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._check import check_int
from ._util import (
    atomic_save,
    find_bs,
    length_or_none,
    listify,
    local_rank,
    no_log,
    output_logits,
    output_loss,
    rank,
    rank_zero_print,
    safe_load,
    unwrap_model,
)
from .callback import Callback, build_dispatch, sort_callbacks, warn_legacy_names
from .data import DataLoaders, on_device, peek_batch, to_device
from .events import (
    EVENTS,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
)
from .hyper import check_hyper_value, set_hyper
from .metrics import as_metric, check_metrics
from .results import GatherPreds, ValidationResult

# (before, after_cancel, after, exception) for each level of the loop.
_LEVELS: dict[str, tuple[str, str, str, type[CancelException]]] = {
    "fit": ("before_fit", "after_cancel_fit", "after_fit", CancelFitException),
    "epoch": ("before_epoch", "after_cancel_epoch", "after_epoch", CancelEpochException),
    "train": ("before_train", "after_cancel_train", "after_train", CancelTrainException),
    "validate": (
        "before_validate",
        "after_cancel_validate",
        "after_validate",
        CancelValidException,
    ),
    "batch": ("before_batch", "after_cancel_batch", "after_batch", CancelBatchException),
    "backward": (
        "before_backward",
        "after_cancel_backward",
        "after_backward",
        CancelBackwardException,
    ),
    "step": ("before_step", "after_cancel_step", "after_step", CancelStepException),
}


_UPDATE_EVENTS = _LEVELS["backward"][:3] + _LEVELS["step"][:3]
# What an evaluation run inside a fit changes and puts back (see Learner._eval_run).
_LOOP_STATE = (
    "dl",
    "n_iter",
    "iter",
    "xb",
    "yb",
    "pred",
    "loss",
    "loss_grad",
    "_training",
)

_MISSING = object()

# The callbacks every Learner starts with (fastai's `defaults.callbacks`): each feature module
# appends its own (TrainEval and Recorder from callbacks/recorder.py, ProgressBar from
# callbacks/progress.py), so this module names no feature.
DEFAULT_CBS: list[type[Callback]] = []

# Functions `(learn, fit_cbs, resume) -> list[Callback]` that add callbacks to every fit:
# resuming (callbacks/resume.py) and torchrun's DDP (distributed.py) register here.
FIT_EXTENSIONS: list[Callable[[Any, list, Any], list[Callback]]] = []


def default_device() -> torch.device:
    """cuda (GPU `LOCAL_RANK` under torchrun), then mps, then cpu."""
    if torch.cuda.is_available():
        return (
            torch.device("cuda", local_rank())
            if "LOCAL_RANK" in os.environ
            else torch.device("cuda")
        )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_dataloaders(dls: Any) -> DataLoaders:
    if isinstance(dls, DataLoaders):
        return dls
    if isinstance(dls, (str, bytes, dict, torch.Tensor, nn.Module)) or dls is None:
        raise TypeError(
            f"dls must be a DataLoaders, a (train, valid) pair or one train loader; "
            f"got {type(dls).__name__}"
        )
    if isinstance(dls, (tuple, list)):
        if len(dls) != 2:
            raise TypeError(f"dls as a tuple must be (train, valid), got {len(dls)} items")
        return DataLoaders(dls[0], dls[1])
    if hasattr(dls, "__iter__"):
        return DataLoaders(dls, None)
    raise TypeError(
        f"dls must be a DataLoaders, a (train, valid) pair or one train loader; "
        f"got {type(dls).__name__}"
    )


def _infer_loss_func(dls: DataLoaders) -> Callable | None:
    # Like fastai: pick the loss from the targets' type, looked up without drawing a batch
    # (drawing one would advance the sampler's random state).
    try:
        y = dls.train.dataset[0][-1]
    except Exception:
        return None
    if isinstance(y, bool):
        return None
    if isinstance(y, int) or (isinstance(y, torch.Tensor) and not y.is_floating_point()):
        return nn.CrossEntropyLoss()
    if isinstance(y, float) or (isinstance(y, torch.Tensor) and y.is_floating_point()):
        return nn.MSELoss()
    return None


def _accepts_kwarg(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _owner_name(handler: Callable) -> str:
    owner = getattr(handler, "__self__", None)
    return type(owner).__name__ if owner is not None else getattr(handler, "__name__", "handler")


def _note(exc: BaseException, handler: Callable, event: str) -> None:
    note = f"raised in callback {_owner_name(handler)} during event {event}"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)


def _note_failed_cleanup(error: BaseException, handler: Callable, failure: Exception) -> None:
    # The failure's own traceback is lost with it: its innermost frame says where to look.
    frames = traceback.extract_tb(failure.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    error.add_note(
        f"after_exception of callback {_owner_name(handler)} failed too: "
        f"{type(failure).__name__}: {failure}{where}; the other callbacks' after_exception ran"
    )


def _describe(items: Any) -> str:
    # "float32 [4, 3], int64 [4]": what a torch error about shapes or dtypes needs next to it.
    if isinstance(items, Mapping):
        return ", ".join(f"{k}: {_describe((v,))}" for k, v in items.items())
    out = []
    for t in items:
        if isinstance(t, Tensor):
            out.append(f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}")
        else:
            out.append(type(t).__name__)
    return ", ".join(out) or "none"


def _note_batch(exc: BaseException, learn: Learner, training: bool) -> None:
    # An error of the model, the loss or the optimizer (not of a callback, which has its own
    # note) gains what was fed in: the usual cause is a shape or dtype the loss did not expect.
    if any(n.startswith("raised in callback") for n in getattr(exc, "__notes__", ())):
        return
    loss = learn.loss_func
    exc.add_note(
        f"in {'training' if training else 'validation'} batch {learn.iter} of epoch "
        f"{learn.epoch}: inputs {_describe(learn.xb)}; targets {_describe(learn.yb)}; "
        f"loss_func {getattr(loss, '__name__', type(loss).__name__)}"
        + (
            " (inferred from the targets' dtype, as no loss_func was given: pass loss_func=)"
            if loss is not None and loss is learn.__dict__.get("_inferred_loss")
            else ""
        )
    )


def _check_scalar(loss: Any) -> None:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise ValueError(
            f"loss_func must return a scalar tensor, got "
            f"{type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}"
        )


# torch's Optimizer.zero_grad costs ~9 us on a CPU, most of it its profiler annotation (a
# record_function entered on every call): as much as a tiny model's forward pass.
_TORCH_ZERO_GRAD = torch.optim.Optimizer.zero_grad
_profiler_enabled = getattr(torch._C._autograd, "_profiler_enabled", None)


def _zero_grad(opt: Any) -> None:
    """`opt.zero_grad()`; for an optimizer that keeps torch's own zero_grad, while no profiler
    records, what that does (set_to_none=True, its default) without the annotation."""
    if type(opt).zero_grad is _TORCH_ZERO_GRAD and not (
        _profiler_enabled is None or _profiler_enabled()
    ):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = None
    else:
        opt.zero_grad()


def _mark(exc: CancelException, level: str, training: bool) -> None:
    # An outer level may catch it; remember where it came from in case none does.
    if not hasattr(exc, "hookloop_level"):
        exc.hookloop_level = level
        exc.hookloop_training = training


class Learner:
    """Trains `model` on `dls` with `loss_func`; every feature beyond the bare loop is a callback.

    Example:
        learn = Learner(model, DataLoaders.from_tensors(x, y), nn.CrossEntropyLoss(),
                        metrics=accuracy)
        history = learn.fit(5, lr=1e-2)

    Args:
        model: the nn.Module to train. fastai's order `Learner(dls, model)` works too.
        dls: a DataLoaders, a `(train, valid)` pair (valid may be None), or one train loader.
        loss_func: `loss_func(pred, *yb) -> scalar`. None: inferred from the targets'
            dtype (integer: CrossEntropyLoss, float: MSELoss).
        opt_func: a torch optimizer class or a callable `params -> optimizer`.
        lr: default learning rate (a float, or a slice for discriminative rates); None: the
            `lr` of an `opt_func=partial(Adam, lr=...)` (fastai), else 1e-3.
        metrics: a function `f(pred, target)`, a metric object, or a list of them.
        cbs: callbacks (instances or classes) kept on the learner.
        wd: weight decay; None keeps the optimizer's default.
        path, model_dir: `save`/`load` use `path/model_dir/<name>.pth`.
        device: None picks cuda, then mps, then cpu.
        train_metrics: also compute the metrics on the training set (`train_<name>`).
        splitter: `model -> list of parameter lists`, one optimizer group per list.
        callback_fns: fastai v1: callables taking the learner and returning a callback.
        callbacks: fastai v1's name for `cbs`; both may be given.
        n_inp: how many leading items of a tuple batch are inputs (default: all but the last).
        target_keys: for mapping batches (`{"input_ids", "attention_mask", "labels"}`), the
            keys that are targets (`learn.yb`). They stay in the model's inputs when the model
            computes its own loss (loss_func None: Hugging Face models need their labels).
        pred_key: the entry of a structured model output that metrics and `get_preds` see
            (default `logits` when the output has one).
        compile: train with `torch.compile` (`learn.compile()`); a dict gives its arguments.
    """

    def __init__(
        self,
        model: nn.Module,
        dls: Any,
        loss_func: Callable | None = None,
        opt_func: Callable = torch.optim.AdamW,
        lr: float | slice | None = None,
        metrics: Any = None,
        cbs: Any = None,
        wd: float | None = None,
        path: str | Path = ".",
        model_dir: str | Path = "models",
        device: torch.device | str | None = None,
        train_metrics: bool = False,
        splitter: Callable | None = None,
        callback_fns: Iterable[Callable] | None = None,
        callbacks: Any = None,
        n_inp: int | None = None,
        target_keys: Sequence[str] = ("labels",),
        pred_key: str | None = None,
        compile: bool | dict = False,
    ) -> None:
        if isinstance(model, nn.Module) is False and isinstance(dls, nn.Module):
            model, dls = dls, model  # fastai's argument order
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.dls = _as_dataloaders(dls)
        if loss_func is not None and not callable(loss_func):
            raise TypeError(f"loss_func must be callable, got {loss_func!r}")
        if isinstance(loss_func, type):
            raise TypeError(
                f"loss_func must be a loss function or module, got the class "
                f"{loss_func.__name__}: pass an instance, {loss_func.__name__}()"
            )
        if not callable(opt_func):
            raise TypeError(f"opt_func must be an optimizer class or callable, got {opt_func!r}")
        if metrics is None:
            metrics = []
        elif not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        for m in metrics:
            if isinstance(m, type):
                raise TypeError(
                    f"metrics: got the class {m.__name__}; pass an instance or a function "
                    f"f(pred, target)"
                )
        self.metrics = [as_metric(m) for m in metrics]
        names = [m.name for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"metrics: two metrics named {', '.join(map(repr, twice))} would share one "
                f"column; give one a name (AvgMetric(func, name=...)) or pass it once"
            )
        for arg, value in (("path", path), ("model_dir", model_dir)):
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{arg} must be a str or a path, got {value!r}")
        if wd is not None:
            check_hyper_value("wd", wd)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.loss_func = loss_func if loss_func is not None else _infer_loss_func(self.dls)
        # Named in the first-batch error note: the user never chose this loss.
        self._inferred_loss = None if loss_func is not None else self.loss_func
        if lr is None:
            keywords = getattr(opt_func, "keywords", None) or {}  # functools.partial
            lr = keywords.get("lr", 1e-3)
        check_hyper_value("lr", lr)
        self.opt_func, self.lr, self.wd = opt_func, lr, wd
        self.splitter = splitter
        self.opt: torch.optim.Optimizer | None = None
        self.path, self.model_dir = Path(path), Path(model_dir)
        self.train_metrics = train_metrics
        self.n_inp = n_inp
        if isinstance(target_keys, str):
            target_keys = (target_keys,)
        self.target_keys, self.pred_key = tuple(target_keys), pred_key
        self.steps_per_epoch: int | None = None
        self._stream: Iterator | None = None  # the training batches carried across epochs
        # Prints on rank 0 only: the other ranks of a torchrun job would repeat every line.
        self.logger: Callable[[str], Any] = rank_zero_print
        # Loop state that callbacks read and may write.
        self.epoch, self.n_epoch, self.iter, self.n_iter = 0, 1, 0, 0
        self.train_iter, self.pct_train, self._total_iters = 0, 0.0, 1
        self.xb: tuple = ()
        self.yb: tuple = ()
        self.pred: Any = None
        self.loss: Any = torch.tensor(0.0)  # fastai's value before the first batch
        self.loss_grad: Any = None
        self.dl: Any = None
        # None, or `(xb, yb) -> (pred, loss)` that `_forward_loss` calls instead of the model and
        # then the loss when no callback handles after_pred (a callback sets and restores it).
        self.forward_loss_fn: Callable | None = None
        self.exception: BaseException | None = None
        self.cbs: list[Callback] = []
        self._tables: dict[str, dict[str, tuple]] = {}
        self._training = False
        self._in_fit = False  # inside fit(): between before_fit and after_fit
        self._evaluating = False  # inside validate() or get_preds()
        # Batches the next training pass starts at (set by a mid-epoch resume, then cleared).
        self._skip = 0
        self.add_cbs([cls() for cls in DEFAULT_CBS])
        self.add_cbs(listify(cbs) + listify(callbacks))
        for fn in callback_fns or ():
            self.add_cb(self._from_callback_fn(fn))
        if not isinstance(compile, (bool, dict)):
            raise TypeError(
                f"compile must be True, False or a dict of torch.compile arguments, got {compile!r}"
            )
        if compile:  # Learner.compile comes from callbacks/compile.py
            self.compile(**(compile if isinstance(compile, dict) else {}))

    # ---- callbacks -------------------------------------------------------------------------

    def _from_callback_fn(self, fn: Callable) -> Callback:
        target = fn.func if isinstance(fn, functools.partial) else fn
        if isinstance(target, type) and issubclass(target, Callback):
            try:
                return fn(self)
            except TypeError:
                return fn()
        return fn(self)

    def add_cb(self, cb: Callback | type) -> Learner:
        """Attach a callback (an instance, or a class to instantiate) as `learn.<name>`."""
        if isinstance(cb, type):
            cb = cb()
        if not isinstance(cb, Callback):
            raise TypeError(f"cbs: expected a Callback instance or class, got {cb!r}")
        if any(c is cb for c in self.cbs):
            raise ValueError(
                f"cbs: {cb!r} is attached already; the same callback instance twice would run "
                f"every event twice (pass it once, or make a second instance)"
            )
        name = cb.name
        existing = self.__dict__.get(name, _MISSING)
        # A callback named like the loop's state (a `Loss` callback, fastai's book) is attached
        # but not exposed as `learn.loss`: the loop rewrites that name on every batch. Any
        # other learner state (`opt`, `model`, ...) must not be shadowed.
        expose = existing is _MISSING or isinstance(existing, Callback)
        if not expose and name not in _LOOP_STATE:
            raise ValueError(
                f"callback name {name!r} clashes with the learner attribute of that name: "
                f"rename the class or give the instance another name"
            )
        warn_legacy_names(cb)
        cb.learn = self
        if expose:
            self.__dict__[name] = cb
        self.cbs.append(cb)
        self._rebuild()
        if hasattr(type(cb), "after_create"):
            cb.after_create()
        return self

    def add_cbs(self, cbs: Any) -> Learner:
        """Attach several callbacks (None, one, or an iterable)."""
        for cb in listify(cbs):
            self.add_cb(cb)
        return self

    def remove_cb(self, cb: Callback | type) -> Learner:
        """Detach a callback instance, or every attached callback of a class."""
        if isinstance(cb, type):
            for c in [c for c in self.cbs if isinstance(c, cb)]:
                self.remove_cb(c)
            return self
        if cb in self.cbs:
            self.cbs.remove(cb)
            if self.__dict__.get(cb.name) is cb:
                del self.__dict__[cb.name]
            cb.learn = None
            self._rebuild()
        return self

    def remove_cbs(self, cbs: Any) -> Learner:
        """Detach several callbacks."""
        for cb in listify(cbs):
            self.remove_cb(cb)
        return self

    @contextlib.contextmanager
    def added_cbs(self, cbs: Any) -> Iterator[Learner]:
        """Attach `cbs` for the duration of the block."""
        before = list(self.cbs)
        self.add_cbs(cbs)
        added = [c for c in self.cbs if c not in before]
        try:
            yield self
        finally:
            self.remove_cbs(added)

    @contextlib.contextmanager
    def removed_cbs(self, cbs: Any) -> Iterator[Learner]:
        """Detach `cbs` for the duration of the block, then put them back."""
        removed = [c for c in listify(cbs) if c in self.cbs]
        self.remove_cbs(removed)
        try:
            yield self
        finally:
            self.add_cbs(removed)

    @contextlib.contextmanager
    def no_logging(self) -> Iterator[Learner]:
        """Silence `learn.logger` (the epoch table) for the block, as fastai's no_logging."""
        old, self.logger = self.logger, no_log
        try:
            yield self
        finally:
            self.logger = old

    def find_cb(self, ref: str | type) -> Callback | None:
        """The first attached callback of that class or `name` (`"recorder"`), or None."""
        for cb in self.cbs:
            if isinstance(cb, ref) if isinstance(ref, type) else cb.name == ref:
                return cb
        return None

    def refresh_callbacks(self) -> None:
        """Rebuild the dispatch tables: call after a change that decides which callbacks run
        (a process group created, so rank-0-only callbacks leave the other ranks)."""
        self._rebuild()

    @property
    def trial_run(self) -> bool:
        """True while a callback with `trial_run = True` is attached (the LR finder's sweep,
        whose training is undone afterwards): savers and plots leave such a fit alone."""
        return any(cb.trial_run for cb in self.cbs)

    @property
    def evaluating(self) -> bool:
        """True inside `validate()` or `get_preds()`, also when called by a callback mid-fit."""
        return self._evaluating

    def start_at(self, batch: int) -> None:
        """Begin the next training pass at `batch` (a mid-epoch resume; the loader was told
        to skip as many batches)."""
        self._skip = batch

    def _rebuild(self) -> None:
        # Precompute, per phase and event, the handlers to call; rebuilt only when cbs change.
        self.cbs = sort_callbacks(self.cbs)
        on_this_rank = [c for c in self.cbs if not (c.rank_zero_only and rank() != 0)]
        tables = {
            "train": build_dispatch(on_this_rank, "train"),
            "valid": build_dispatch(on_this_rank, "valid"),
        }
        # A callback may rewrite the tables (Profiler wraps every handler in a timer); the
        # wrapping lives only as long as that callback is attached.
        for cb in on_this_rank:
            if hasattr(type(cb), "wrap_dispatch"):
                tables = cb.wrap_dispatch(tables)
        self._tables = tables
        self._use_table(self._training)

    def show_loop(self) -> str:
        """Print (and return), per event, the callbacks that run, in order."""
        lines = []
        train, valid = self._tables["train"], self._tables["valid"]
        for event, hs in train.items():
            names = [type(h.__self__).__name__ for h in hs]
            vnames = [type(h.__self__).__name__ for h in valid[event]]
            if not names and not vnames:
                continue
            line = f"{event:<22} {', '.join(names) or '-'}"
            if vnames != names:
                line += f"   (validation: {', '.join(vnames) or '-'})"
            lines.append(line)
        text = "\n".join(lines)
        print(text)
        return text

    def ordered_cbs(self, event: str) -> list[Callback]:
        """The callbacks that run at `event` in the current phase, in order (fastai)."""
        if event not in self._handlers:
            raise ValueError(f"ordered_cbs: unknown event {event!r}; events are {EVENTS}")
        out: list[Callback] = []
        for h in self._handlers[event]:
            cb = getattr(h, "__self__", None)
            if cb is not None and cb not in out:
                out.append(cb)
        return out

    def show_training_loop(self) -> str:
        """fastai's name for `show_loop`."""
        return self.show_loop()

    @property
    def x(self) -> Any:
        """The first input of the current batch (fastai); a mapping batch's whole inputs."""
        xb = self.xb
        return xb[0] if type(xb) is tuple else xb

    @property
    def y(self) -> Any:
        """The first target of the current batch (fastai)."""
        return self.yb[0]

    def __getattr__(self, key: str) -> Any:
        # Only reached for names the learner does not have: fastai's `_default='model'` lets
        # `learn.a` read `learn.model.a`.
        model = self.__dict__.get("model")
        if key.startswith("__") or model is None:
            raise AttributeError(f"'Learner' object has no attribute {key!r}")
        try:
            return getattr(model, key)
        except AttributeError:
            raise AttributeError(
                f"'Learner' object has no attribute {key!r} (nor has its model)"
            ) from None

    @property
    def training(self) -> bool:
        return self._training

    @training.setter
    def training(self, value: bool) -> None:
        self._training = value
        self._use_table(value)

    def _use_table(self, training: bool) -> None:
        self._handlers = handlers = self._tables["train" if training else "valid"]
        # With no backward- or step-level handlers the loop calls backward and step directly.
        self._plain_update = not any(handlers[e] for e in _UPDATE_EVENTS)

    @property
    def batches_per_epoch(self) -> int | None:
        """Training batches in one epoch: `steps_per_epoch` when given, else the training
        loader's length, or None for a loader with no length."""
        return self._epoch_length(self.dls.train, training=True)

    @property
    def total_iters(self) -> int | None:
        """Training batches in the whole fit (n_epoch x batches per epoch), or None when the
        training loader has no length and no `steps_per_epoch` was given."""
        n = self.batches_per_epoch
        return None if n is None else max(self.n_epoch * n, 1)

    @property
    def smooth_loss(self) -> float:
        """The bias-corrected moving average of the training loss (read from the Recorder)."""
        return self.recorder.smooth_loss

    # ---- the loop --------------------------------------------------------------------------

    def __call__(self, event: str) -> None:
        """Fire `event`: call its handlers in order."""
        for handler in self._handlers[event]:
            try:
                handler()
            except CancelException:
                raise
            except BaseException as e:
                _note(e, handler, event)
                raise

    def _with_events(self, body: Callable[[], None], level: str) -> None:
        before, after_cancel, after, cancel = _LEVELS[level]
        # An event nobody handles costs one lookup: its tuple is empty, so no call is made.
        try:
            if self._handlers[before]:
                self(before)
            body()
        except cancel:
            self(after_cancel)
        except CancelException as e:
            _mark(e, level, self._training)
            raise
        if self._handlers[after]:  # read again: the body may have switched phase tables
            self(after)

    def _do_fit(self) -> None:
        # Sized here, after before_fit: a distributed fit shards dls.train in before_fit.
        # An unknown total (a stream with no length) keeps pct_train at 0: schedules need it
        # and say so in before_fit.
        self._total_iters = self.total_iters or math.inf
        for epoch in range(self.epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch")

    def _do_epoch(self) -> None:
        self._do_epoch_train()
        self._do_epoch_validate()

    def _do_epoch_train(self) -> None:
        self.training = True
        self.dl = self.dls.train
        _set_epoch(self.dl, self.epoch)
        self._with_events(self._all_batches, "train")

    def _do_epoch_validate(self, dl: Any = None) -> None:
        if dl is None:
            dl = self.dls.valid
        if dl is None:
            return
        self.training = False
        self.dl = dl
        with torch.no_grad():
            self._with_events(self._all_batches, "validate")

    def _all_batches(self) -> None:
        # One pass over self.dl. This body runs once per batch: each Python call or attribute
        # access in it is paid on every step (benchmarks/overhead.py). An event nobody handles
        # costs one lookup.
        self.n_iter = self._epoch_length(self.dl, self._training)
        # A mid-epoch resume starts at batch `_skip`; the loader was told to skip as many.
        start, self._skip = self._skip, 0
        # A loader that makes its batches on our device (TensorLoader.device) needs no move;
        # nor does one whose first batch is already there: a loader yields all on one device.
        move = getattr(self.dl, "device", None) != self.device
        batches = self.dl
        if self._training and self.steps_per_epoch is not None:
            batches = self._next_batches(self.steps_per_epoch - start)
        for i, b in enumerate(batches, start):
            self.iter = i
            if move:
                if i == start:
                    move = not on_device(b, self.device)
                if move:
                    b = to_device(b, self.device)
            self._split_batch(b)
            handlers, training = self._handlers, self._training
            try:
                if handlers["before_batch"]:
                    self("before_batch")
                if self._forward_loss(handlers) and training:
                    self._update()
            except CancelBatchException:
                self("after_cancel_batch")
            except CancelException as e:
                _mark(e, "batch", training)
                raise
            except Exception as e:
                _note_batch(e, self, training)
                raise
            if training:
                # Loop state, like `iter`: counted here so that no callback runs for it per batch.
                n = self.train_iter + 1
                self.train_iter, self.pct_train = n, n / self._total_iters
            # Read again: a handler may have switched the phase's table (validate() in a callback).
            if self._handlers["after_batch"]:
                self("after_batch")

    def _epoch_length(self, dl: Any, training: bool) -> int | None:
        # Batches in one epoch of `dl`: steps_per_epoch for training when given, else its
        # length, or None for a loader with no length (a stream).
        if training and self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return length_or_none(dl)

    def _next_batches(self, steps: int) -> Iterator:
        # Keras' steps_per_epoch: an epoch takes the next `steps` batches; the loader's iterator
        # carries over to the next epoch and starts again when it runs out.
        for _ in range(steps):
            if self._stream is None:
                self._stream = iter(self.dl)
            try:
                yield next(self._stream)
            except StopIteration:
                self._stream = iter(self.dl)
                try:
                    yield next(self._stream)
                except StopIteration:
                    return  # an empty pass: end the epoch rather than loop forever

    def _split_batch(self, b: Any) -> None:
        """`xb` (the model's inputs) and `yb` (the targets) from one batch."""
        if type(b) is tuple and len(b) == 2 and self.n_inp is None:
            self.xb, self.yb = (b[0],), (b[1],)  # the common (x, y) batch
        elif isinstance(b, (tuple, list)):
            n_inp = self.n_inp
            if n_inp is None:
                n_inp = max(len(b) - 1, 1)
            elif n_inp > len(b):
                raise ValueError(f"n_inp={n_inp} but the batch has {len(b)} items")
            self.xb, self.yb = tuple(b[:n_inp]), tuple(b[n_inp:])
        elif isinstance(b, Mapping):
            # Keyword inputs: `model(**xb)`. A model that computes its own loss keeps its
            # targets among its inputs (Hugging Face models take `labels`).
            keys = self.target_keys
            self.yb = tuple(b[k] for k in keys if k in b)
            keep = self.loss_func is None
            self.xb = {k: v for k, v in b.items() if keep or k not in keys}
        else:
            self.xb, self.yb = (b,), ()

    def _forward_loss(self, handlers: dict[str, tuple]) -> bool:
        """`pred = model(*xb)` (or `model(**xb)`) → after_pred → `loss = loss_func(pred, *yb)`
        (or the model's own `loss`) → after_loss. True when a loss was computed."""
        xb = self.xb
        fused = self.forward_loss_fn
        if fused is not None and not handlers["after_pred"]:
            # A callback's `(xb, yb) -> (pred, loss)` computing both in one call (Compile's
            # compiled forward+loss); nothing may run between them when after_pred is unhandled.
            self.pred, loss = fused(xb, self.yb)
        else:
            self.pred = pred = self.model(*xb) if type(xb) is tuple else self.model(**xb)
            if handlers["after_pred"]:
                self("after_pred")
                pred = self.pred
            yb, loss_func = self.yb, self.loss_func
            if loss_func is None:
                loss = output_loss(pred)
                if loss is None and self._training:
                    raise ValueError(
                        f"loss_func is None and the model's output ({type(pred).__name__}) has no "
                        f"`loss`: pass loss_func=, or give a model that computes its own loss its "
                        f"targets (target_keys={self.target_keys!r})"
                    )
            elif yb:
                if type(pred) is not Tensor:
                    pred = output_logits(pred, self.pred_key)
                loss = loss_func(pred, *yb)
            else:
                loss = None
        if loss is not None:
            if type(loss) is not Tensor or loss.ndim:
                _check_scalar(loss)
            # loss_grad is what backward uses; loss is the detached value for logging.
            self.loss_grad, self.loss = loss, loss.detach()
        if handlers["after_loss"]:
            self("after_loss")
            if getattr(self.loss, "requires_grad", False):
                # The fastai book's callbacks add a penalty to learn.loss (`self.learn.loss
                # += ...`); learn.loss is detached, so carry the change and its gradient
                # into loss_grad.
                self.loss_grad = self.loss + (self.loss_grad - self.loss_grad.detach())
                self.loss = self.loss.detach()
        return loss is not None

    def _update(self) -> None:
        """backward → optimizer step → zero_grad, each level with its events when handled."""
        if self._plain_update:
            # No callback handles a backward- or step-level event in this phase.
            self.loss_grad.backward()
            self.opt.step()
        else:
            self._with_events(self._do_backward, "backward")
            self._with_events(self._do_step, "step")
        _zero_grad(self.opt)

    def _do_backward(self) -> None:
        self.loss_grad.backward()

    def _do_step(self) -> None:
        self.opt.step()

    def _run(self, body: Callable[[], None], level: str) -> None:
        # Outermost guard: a non-cancel exception fires after_exception once and propagates.
        try:
            try:
                self._with_events(body, level)
            except CancelException as e:
                where = getattr(e, "hookloop_level", level)
                phase = (
                    "training" if getattr(e, "hookloop_training", self._training) else "validation"
                )
                raise RuntimeError(
                    f"{type(e).__name__} was raised during {phase} (in the {where} level), where "
                    f"no enclosing level catches it"
                ) from e
        except BaseException as e:
            self.exception = e
            try:
                self._after_exception(e)
            finally:
                self.exception = None
            raise

    def _after_exception(self, error: BaseException) -> None:
        """Fire after_exception for `error`: every handler runs, even after one of them fails.

        after_exception is where callbacks give back what they hold (BackupAndRestore's folder
        lock, Compile's original model and optimizer, the loggers' open files): one broken
        clean-up must not leave the others' resources held. The training error is what
        propagates, and each clean-up failure becomes a note on it (what Python's `add_note` is
        for) naming the callback and the failure: the training error is the cause the user has
        to see and the type their `except` clauses expect, and a clean-up error that replaced
        it (as an exception raised in a `finally` block does) would hide it behind a secondary
        one."""
        stop: BaseException | None = None
        for handler in self._handlers["after_exception"]:
            try:
                handler()
            except Exception as failure:
                if failure is not error:  # a handler re-raising learn.exception adds nothing
                    _note_failed_cleanup(error, handler, failure)
            except BaseException as interrupt:
                # Ctrl-C (or sys.exit) in a clean-up: the user asked to stop, so it propagates
                # in place of the training error (its __context__), but only after the other
                # clean-ups: in a notebook the process lives on, and would keep the lock.
                _note(interrupt, handler, "after_exception")
                stop = stop or interrupt
        if stop is not None:
            raise stop

    # ---- public API ------------------------------------------------------------------------

    def create_opt(self) -> torch.optim.Optimizer:
        """Build the optimizer from `opt_func`, the splitter's groups, `lr` and `wd`."""
        if self.splitter is not None:
            groups = [{"params": list(g)} for g in self.splitter(self.model)]
        else:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if not any(g["params"] for g in groups):
            raise ValueError(
                f"model {type(unwrap_model(self.model)).__name__} has no trainable parameters; "
                f"the optimizer needs at least one"
            )
        lr0 = self.lr if isinstance(self.lr, (int, float)) else 1e-3
        if _accepts_kwarg(self.opt_func, "lr"):
            self.opt = self.opt_func(groups, lr=lr0)
        else:
            self.opt = self.opt_func(groups)
        set_hyper(self.opt, "lr", self.lr)
        if self.wd is not None:
            set_hyper(self.opt, "wd", self.wd)
        return self.opt

    def check_fit_args(self, n_epoch: Any, steps_per_epoch: Any = None) -> None:
        """The checks `fit` makes before any work; the fit variants call it first too."""
        check_int("n_epoch", n_epoch, 1)
        if steps_per_epoch is not None:
            check_int("steps_per_epoch", steps_per_epoch, 1)
        train = self.dls.train
        if train is None:
            raise ValueError("dls.train is None: fit needs a training loader")
        if self._epoch_length(train, training=False) == 0:
            raise ValueError("dls.train is empty: it yields 0 batches")
        # loss_func None with a model that has no loss of its own is an error at the first
        # training forward pass, before any step: only the model's output can tell.

    def fit(
        self,
        n_epoch: int,
        lr: float | slice | None = None,
        wd: float | None = None,
        cbs: Any = None,
        callbacks: Any = None,
        resume: str | Path | None = None,
        steps_per_epoch: int | None = None,
        start_epoch: int = 0,
    ) -> Any:
        """Train for `n_epoch` epochs; returns the Keras-style `History` of this fit.

        `cbs` (or fastai v1's `callbacks`) are attached for this fit only. `resume='auto'`
        continues from the newest complete backup (see `BackupAndRestore`) and keeps backing up;
        `resume=<path>` continues from that checkpoint (or the newest one in that folder).
        `steps_per_epoch` (Keras) makes an epoch that many training batches, carrying the
        loader's iterator over epochs: it bounds the epochs of an endless stream and gives
        schedules their total. `start_epoch=k` (fastai) skips the first k epochs: training
        starts at epoch k with the counters (`train_iter`, `pct_train`) of that point.
        """
        self.check_fit_args(n_epoch, steps_per_epoch)
        check_int("start_epoch", start_epoch, 0, below=n_epoch)
        if lr is not None:
            check_hyper_value("lr", lr)
        if wd is not None:
            check_hyper_value("wd", wd)
        extra = listify(cbs) + listify(callbacks)
        for add_fit_cbs in FIT_EXTENSIONS:
            extra += add_fit_cbs(self, extra, resume)
        if self.opt is None:
            self.create_opt()
        if lr is not None:
            set_hyper(self.opt, "lr", lr)
        if wd is not None:
            set_hyper(self.opt, "wd", wd)
        self.n_epoch, self.steps_per_epoch, self._stream = n_epoch, steps_per_epoch, None
        self.epoch, self._skip = 0, 0
        # Before before_fit: a resuming callback restores the counters there.
        self.epoch = start_epoch
        self.train_iter = start_epoch * (self.batches_per_epoch or 0)
        self.pct_train = self.train_iter / (self.total_iters or math.inf)
        self.loss = torch.tensor(0.0)
        was_in_fit, self._in_fit = self._in_fit, True
        try:
            with self.added_cbs(extra):
                self._check_first_batch()
                self._run(self._do_fit, "fit")
        finally:
            self._in_fit = was_in_fit
        return self.recorder.history

    def _check_first_batch(self) -> None:
        """Before before_fit: the first batch of the validation set (of the training set when
        there is none and metrics are set) through the model, in eval mode under no_grad, and
        through the metrics, so a set that does not fit the model or a broken metric fails now, not
        after an epoch of training. The loss is not computed (a loss function may keep state).
        Skipped when the batch cannot be had without iterating the loader (see `peek_batch`),
        in a trial run, and when a callback transforms the phase's batches or predictions
        (before_batch, after_pred): the raw batch would not be what the model sees. Loop state,
        modes and random states are put back; nothing is written."""
        valid = self.dls.valid
        dl = valid if valid is not None else (self.dls.train if self.metrics else None)
        if dl is None or self.trial_run:
            return
        handlers = self._tables["valid" if valid is not None else "train"]
        if handlers["before_batch"] or handlers["after_pred"]:
            return
        b = peek_batch(dl)
        if b is None:
            return
        model = unwrap_model(self.model)
        modes = [m.training for m in model.modules()]
        saved = self.xb, self.yb, self.pred, self.loss
        try:
            self._split_batch(b if on_device(b, self.device) else to_device(b, self.device))
            xb, yb = self.xb, self.yb
            model.eval()
            with torch.no_grad():
                try:
                    self.pred = model(*xb) if type(xb) is tuple else model(**xb)
                except Exception as e:
                    which = "validation" if valid is not None else "training"
                    e.add_note(
                        f"in the check before training: the first batch of the {which} set "
                        f"through the model (inputs {_describe(xb)}; targets {_describe(yb)})"
                    )
                    raise
                check_metrics(self.metrics, self)
        finally:
            for m, mode in zip(model.modules(), modes):
                m.training = mode
            self.xb, self.yb, self.pred, self.loss = saved

    def _eval_run(self, dl: Any) -> None:
        if dl is None:
            dl = self.dls.valid
        if dl is None:
            raise ValueError("no loader to evaluate: dls.valid is None and dl was not given")
        # validate() and get_preds() may run inside a fit (a Keras callback calling evaluate()
        # in on_batch_end): the loop's state is put back afterwards, so training goes on.
        saved = {k: self.__dict__[k] for k in _LOOP_STATE}
        nested, self._evaluating = self._evaluating, True
        self.training = False
        self.dl = dl
        try:
            with torch.no_grad():
                if self._in_fit:
                    # The fit's own guard reports an error (after_exception fires once).
                    self._with_events(self._all_batches, "validate")
                else:
                    self._run(self._all_batches, "validate")
        finally:
            self._evaluating = nested
            self.__dict__.update(saved)
            self.training = saved["_training"]  # and the phase's dispatch table with it

    def validate(
        self, dl: Any = None, cbs: Any = None, callbacks: Any = None, ds_idx: int = 1
    ) -> ValidationResult:
        """Run the validation phase on `dl` (default: the loader `ds_idx`, 1 = dls.valid);
        returns `[valid_loss, *metrics]` (fastai), which also answers `res["accuracy"]`.

        `cbs` (or Keras' `callbacks`, as in `model.evaluate`) run for this call only."""
        dl = self._loader(dl, ds_idx)
        with self.added_cbs(listify(cbs) + listify(callbacks)):
            self._eval_run(dl)
        return ValidationResult(self.recorder.last_validation)

    def get_preds(
        self,
        dl: Any = None,
        with_input: bool = False,
        with_loss: bool = False,
        act: Callable | None = None,
        cbs: Any = None,
        callbacks: Any = None,
        ds_idx: int = 1,
    ) -> tuple:
        """Predictions on `dl` (default: the loader `ds_idx`, 0 = dls.train, 1 = dls.valid):
        `(preds, targs[, losses])`, or `(inputs, preds, targs[, losses])` with `with_input`
        (fastai's order). Batches with several inputs or targets give tuples of them.

        `cbs` (or Keras' `callbacks`, as in `model.predict`) run for this call only."""
        dl = self._loader(dl, ds_idx)
        gather = GatherPreds(with_input=with_input, with_loss=with_loss)
        with self.added_cbs([gather, *listify(cbs), *listify(callbacks)]):
            self._eval_run(dl)
        preds = gather.preds()
        if act is not None:
            preds = act(preds)
        out: list = [preds, gather.targets()]
        if with_input:
            out.insert(0, gather.inputs())
        if with_loss:
            out.append(gather.losses())
        return tuple(out)

    def _loader(self, dl: Any, ds_idx: int) -> Any:
        # fastai's ds_idx: 0 is the training loader, 1 the validation loader.
        if dl is not None:
            if isinstance(dl, (str, bytes, torch.Tensor)) or not hasattr(dl, "__iter__"):
                raise TypeError(f"dl must be a data loader, got {type(dl).__name__}: {dl!r:.60}")
            return dl
        check_int("ds_idx", ds_idx, 0, below=2, what="0 (dls.train) or 1 (dls.valid)")
        return self.dls.train if ds_idx == 0 else self.dls.valid

    def model_file(self, name: str | Path) -> Path:
        """Where `save(name)` writes: `path/model_dir/name.pth` (an absolute name as given)."""
        name = Path(name)
        if name.suffix != ".pth":
            name = name.with_name(name.name + ".pth")
        return name if name.is_absolute() else self.path / self.model_dir / name

    def save(self, name: str | Path, with_opt: bool = True) -> Path:
        """Write the model (and optimizer) state to `path/model_dir/name.pth`, atomically.

        Under torch.distributed only rank 0 writes (the ranks hold the same weights); it is not
        a collective, so it may be called on rank 0 alone. Other ranks that read the file next
        wait for it with `hookloop.distributed.barrier()`.
        """
        path = self.model_file(name)
        if rank() != 0:
            return path
        state: dict[str, Any] = {"model": unwrap_model(self.model).state_dict()}
        if with_opt and self.opt is not None:
            state["opt"] = self.opt.state_dict()
        return atomic_save(state, path)

    def load(self, name: str | Path, with_opt: bool = True, strict: bool = True) -> Learner:
        """Load what `save` wrote (or a bare state dict), with `torch.load(weights_only=True)`.

        `name` is looked up as `save` writes it (`path/model_dir/name.pth`); failing that, an
        existing file named as given (a Keras `ModelCheckpoint` path) is loaded."""
        file = self.model_file(name)
        if not file.exists() and Path(name).is_file():
            file = Path(name)
        state = safe_load(file, map_location=self.device)
        if not isinstance(state, dict):
            raise ValueError(
                f"load: {str(file)!r} holds a {type(state).__name__}, not a state dict (save "
                f"with learn.save, or torch.save(model.state_dict(), ...))"
            )
        model_state = (
            state["model"] if "model" in state and isinstance(state["model"], dict) else state
        )
        unwrap_model(self.model).load_state_dict(model_state, strict=strict)
        if self.opt is None:
            self.create_opt()  # with_opt=False too: fit and opt.state_dict() need one (fastai)
        if with_opt and "opt" in state:
            self.opt.load_state_dict(state["opt"])
        return self

    # ---- training-technique shortcuts (fastai names; each adds a callback) ------------------

    # ---- fastai's fit variants and lr_find (schedules in callbacks/schedule.py) -------------

    def __repr__(self) -> str:
        return f"Learner({type(unwrap_model(self.model)).__name__}, cbs={self.cbs})"


def _set_epoch(dl: Any, epoch: int) -> None:
    # Reseed per-epoch shuffling (hookloop loaders, DistributedSampler) so epochs are reproducible.
    if hasattr(dl, "set_epoch"):
        dl.set_epoch(epoch)
    sampler = getattr(dl, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


__all__ = ["Learner", "default_device", "unwrap_model", "find_bs"]
