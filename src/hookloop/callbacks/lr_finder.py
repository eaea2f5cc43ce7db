"""The learning-rate finder: LRFinder, `lr_find`, and fastai's four suggestion functions."""

from __future__ import annotations

import copy
import enum
import functools
import math
import warnings
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._check import check_int, check_number
from .._util import in_notebook, unwrap_model, world_size
from ..collectives import any_rank, broadcast_object
from ..events import CancelFitException, CancelValidException
from ..learner import Learner
from ..schedules import SchedExp
from .plots import plot_lr_find, show_in_notebook
from .schedule import ParamScheduler, PerGroup

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..learner import Learner

# ---- suggestions: (lrs, smoothed losses, num_it) -> (suggested lr, (lr, loss) to mark) ----


def valley(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> tuple[float, tuple]:
    """fastai: a point in the longest valley (longest run of decreasing losses)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def slide(
    lrs: Sequence[float],
    losses: Sequence[float],
    num_it: int,
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> tuple[float, tuple]:
    """fastai: slide a window of `lr_diff` points left until the loss slopes at its ends agree."""
    lrs_a, losses_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    loss_grad = np.gradient(losses_a)
    r_idx = -1
    l_idx = max(r_idx - lr_diff, -len(losses_a))
    local_min_lr = lrs_a[l_idx]
    while l_idx >= -len(losses_a) and abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh:
        local_min_lr = lrs_a[l_idx]
        r_idx -= 1
        l_idx -= 1
    suggestion = float(local_min_lr) * adjust_value
    loss = float(np.interp(np.log10(suggestion), np.log10(lrs_a), losses_a))
    return suggestion, (suggestion, loss)


def minimum(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> tuple[float, tuple]:
    """fastai: a tenth of the learning rate with the lowest loss."""
    i = int(np.argmin(np.asarray(losses, dtype=float)))
    return float(lrs[i]) / 10, (float(lrs[i]), float(losses[i]))


def steep(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> tuple[float, tuple]:
    """fastai: the learning rate where the loss falls fastest against log(lr)."""
    lrs_a, losses_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    grads = np.diff(losses_a) / np.diff(np.log(lrs_a))
    i = int(np.argmin(grads))
    return float(lrs_a[i]), (float(lrs_a[i]), float(losses_a[i]))


class SuggestionMethod(enum.Enum):
    """fastai's names for the suggestion functions: `suggest_funcs=(SuggestionMethod.Valley,)`."""

    Valley = enum.member(valley)
    Slide = enum.member(slide)
    Minimum = enum.member(minimum)
    Steep = enum.member(steep)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[float, tuple]:
        return self.value(*args, **kwargs)


def _func_name(func: Callable) -> str:
    if isinstance(func, SuggestionMethod):
        return func.value.__name__
    if isinstance(func, functools.partial):
        return _func_name(func.func)
    return getattr(func, "__name__", type(func).__name__)


@dataclass
class LRFindResult:
    """What the last `lr_find` left on the Recorder: suggestions, points to mark, the figure."""

    suggestions: Any = None
    points: list[tuple[float, float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    fig: Figure | None = None


# ---- the callback ------------------------------------------------------------------------


def _positive_lrs(name: str, value: Any) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    what = "a positive number (or one per group)"
    for v in values:
        check_number(name, v, positive=True, what=what, owner="LRFinder", shown=value)
    return [float(v) for v in values]


class LRFinder(ParamScheduler):
    """Trains with an exponentially growing learning rate, then restores the model and optimizer.

    Batch i of `num_it` uses `start_lr * (end_lr / start_lr) ** (i / num_it)`. Training stops
    after `num_it` batches, or (with `stop_div`) once the smoothed loss exceeds 4 times its
    minimum; validation is skipped. At the end the weights, buffers, train/eval modes and the
    optimizer state are put back exactly as they were (copies kept in memory; no files).
    `learn.lr_find()` runs it and returns the suggestions.

    Example:
        learn.fit(3, cbs=LRFinder(1e-6, 1, num_it=50)); learn.recorder.plot()

    Args:
        start_lr: first learning rate (or one per parameter group).
        end_lr: the rate that batch `num_it` would use (or one per group).
        num_it: number of batches (at least 6: suggestions skip the last 5).
        stop_div: stop once the smoothed loss exceeds 4 times its minimum (or is not finite).
    """

    run_valid = True  # to cancel validation in before_validate
    trial_run = True  # its training is undone: savers, loggers and plots leave the fit alone

    def __init__(
        self,
        start_lr: float | Sequence[float] = 1e-7,
        end_lr: float | Sequence[float] = 10,
        num_it: int = 100,
        stop_div: bool = True,
    ) -> None:
        starts, ends = _positive_lrs("start_lr", start_lr), _positive_lrs("end_lr", end_lr)
        if len(starts) != len(ends) and 1 not in (len(starts), len(ends)):
            raise ValueError(
                f"LRFinder: start_lr has {len(starts)} values and end_lr {len(ends)}; give one "
                f"each or one per group"
            )
        n = max(len(starts), len(ends))
        starts, ends = starts * (n // len(starts)), ends * (n // len(ends))
        for s, e in zip(starts, ends):
            if not s < e:
                raise ValueError(f"LRFinder: start_lr must be below end_lr, got {s!r} >= {e!r}")
        check_int("num_it", num_it, 6, owner="LRFinder")
        scheds = [SchedExp(s, e) for s, e in zip(starts, ends)]
        super().__init__({"lr": PerGroup(scheds) if n > 1 else scheds[0]})
        self.start_lr, self.end_lr, self.num_it, self.stop_div = start_lr, end_lr, num_it, stop_div
        self._saved: tuple | None = None

    def before_fit(self) -> None:
        super().before_fit()
        learn = self.learn
        model = unwrap_model(learn.model)
        # Copies in memory, not a temporary file: nothing to clean up if the process dies.
        self._saved = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(learn.opt.state_dict()),
            [m.training for m in model.modules()],
        )
        self.best_loss = math.inf
        recorder = learn.find_cb("recorder")
        if recorder is not None:
            recorder.lr_find_result = LRFindResult()

    def before_batch(self) -> None:
        self._update(self.learn.train_iter / self.num_it)

    def after_batch(self) -> None:
        super().after_batch()
        learn = self.learn
        # One host read per batch: the sweep must stop as soon as the loss diverges.
        loss = learn.smooth_loss
        if loss < self.best_loss:
            self.best_loss = loss
        diverged = self.stop_div and (loss > 4 * self.best_loss or not math.isfinite(loss))
        # Under DDP each rank sees its own loss: all stop when one diverges (one all_reduce).
        if any_rank(diverged):
            raise CancelFitException()
        if learn.train_iter >= self.num_it:
            raise CancelFitException()

    def before_validate(self) -> None:
        raise CancelValidException()

    def after_fit(self) -> None:
        self._restore()

    def after_exception(self) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is None:
            return
        model_state, opt_state, modes = self._saved
        self._saved = None
        learn = self.learn
        learn.opt.zero_grad(set_to_none=True)
        model = unwrap_model(learn.model)
        model.load_state_dict(model_state)
        learn.opt.load_state_dict(opt_state)
        for m, training in zip(model.modules(), modes):
            m.training = training

    def __repr__(self) -> str:
        return f"LRFinder(start_lr={self.start_lr!r}, end_lr={self.end_lr!r}, num_it={self.num_it})"


def suggest(
    lrs: Sequence[float], losses: Sequence[float], num_it: int, suggest_funcs: Sequence[Callable]
) -> tuple[Any, list[tuple[float, float]], list[str]]:
    """Run the suggestion functions as fastai does: skip the first num_it//10 and the last 5
    points and stop at the first NaN loss. Returns (SuggestedLRs, points, names)."""
    lrs, losses = list(lrs[num_it // 10 : -5]), list(losses[num_it // 10 : -5])
    for i, v in enumerate(losses):
        if math.isnan(v):
            lrs, losses = lrs[:i], losses[:i]
            break
    names = [_func_name(f) for f in suggest_funcs]
    SuggestedLRs = namedtuple("SuggestedLRs", names)  # noqa: PYI024 - fastai's return type
    if len(losses) < 2:
        warnings.warn(
            f"lr_find: only {len(losses)} usable points (the sweep stopped early); "
            f"no learning rate can be suggested. Try a smaller start_lr or stop_div=False.",
            stacklevel=3,
        )
        nan = float("nan")
        return SuggestedLRs(*[nan] * len(names)), [(nan, nan)] * len(names), names
    values, points = [], []
    for func in suggest_funcs:
        value, point = func(lrs, losses, num_it)
        values.append(value)
        points.append(point)
    return SuggestedLRs(*values), points, names


def _check_suggest_funcs(suggest_funcs: Any) -> tuple[Callable, ...]:
    # Checked before the sweep: a bad suggestion function would otherwise fail after it.
    wanted = "a suggestion function (valley, slide, minimum, steep), a sequence of them, or None"
    if callable(suggest_funcs):
        suggest_funcs = (suggest_funcs,)
    if not isinstance(suggest_funcs, (list, tuple)):
        raise TypeError(f"lr_find: suggest_funcs must be {wanted}, got {suggest_funcs!r}")
    for f in suggest_funcs:
        if not callable(f) or isinstance(f, type):
            raise TypeError(f"lr_find: suggest_funcs must be {wanted}, got the item {f!r}")
    names = [_func_name(f) for f in suggest_funcs]
    for name in names:
        # The names are the fields of the returned namedtuple (fastai's SuggestedLRs).
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"lr_find: suggest_funcs names fields of the result by function name, and "
                f"{name!r} is not a usable name; give a def (or a partial of one)"
            )
        if names.count(name) > 1:
            raise ValueError(f"lr_find: suggest_funcs holds two functions named {name!r}")
    return tuple(suggest_funcs)


def lr_find(
    learn: Learner,
    start_lr: float | Sequence[float] = 1e-7,
    end_lr: float | Sequence[float] = 10,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = True,
    suggest_funcs: Sequence[Callable] | Callable | None = (valley,),
) -> Any:
    """Run an LRFinder sweep on `learn`; returns the suggestions (a namedtuple, fastai's
    SuggestedLRs) or None when `suggest_funcs` is None."""
    if suggest_funcs is not None:
        suggest_funcs = _check_suggest_funcs(suggest_funcs)
    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    # Under DDP each rank runs about 1/world_size of the batches per epoch.
    n_epoch = num_it // max(len(learn.dls.train) // world_size(), 1) + 1
    with learn.no_logging():
        learn.fit(n_epoch, cbs=finder)
    recorder = learn.recorder
    result = recorder.lr_find_result
    recorder.all_losses()  # reads the losses still on the device
    suggestions = None
    if suggest_funcs is not None:
        # Rank 0's losses on every rank, so that all ranks get the same suggestions.
        losses = broadcast_object(recorder.smooth_losses)
        suggestions, result.points, result.names = suggest(
            recorder.lrs, losses, num_it, suggest_funcs
        )
        result.suggestions = suggestions
    if show_plot:
        result.fig = plot_lr_find(recorder)
        if in_notebook():
            show_in_notebook(result.fig)
    return suggestions


# fastai's learn.lr_find()
Learner.lr_find = lr_find

__all__ = [
    "LRFinder",
    "LRFindResult",
    "SuggestionMethod",
    "lr_find",
    "suggest",
    "valley",
    "slide",
    "minimum",
    "steep",
]
