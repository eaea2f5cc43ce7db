"""ParamScheduler and fastai's fit variants (fit_one_cycle, fit_flat_cos, fit_sgdr)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._check import check_int, check_number
from .._util import listify
from ..callback import Callback
from ..hyper import HYPER_NAMES, get_hyper, hyper_names, set_hyper
from ..learner import Learner
from ..schedules import SchedCos, combine_scheds, combined_cos

# fastai's Learner.moms default, used by fit_one_cycle when moms=None.
DEFAULT_MOMS = (0.95, 0.85, 0.95)


class PerGroup:
    """A schedule per parameter group; returns one value per group (for `set_hyper`)."""

    def __init__(self, scheds: Sequence[Callable[[float], float]]) -> None:
        self.scheds = list(scheds)

    def __call__(self, pos: float) -> list[float]:
        return [s(pos) for s in self.scheds]

    def __repr__(self) -> str:
        return f"PerGroup({self.scheds!r})"


class ParamScheduler(Callback):
    """Sets optimizer hyper-parameters before every training batch from the fit's progress.

    Each schedule maps `pct_train` (0 at the first batch of the fit, 1 at its end) to a value
    written to every parameter group. For discriminative rates (fastai's `slice(lo, hi)`) a
    schedule may return one value per group (a list, tuple, numpy array or tensor, as
    `combined_cos(0.5, np.array([1e-4, 1e-3]), ...)` does), or the dict may hold a list of
    schedules, one per group. The Recorder records `lr` and `mom` itself (the last group's
    value, as fastai); other scheduled names (`wd`, `sqr_mom`, `eps`) are appended to
    `learn.recorder.hps[name]` after every training batch.

    Example:
        learn.fit(3, cbs=ParamScheduler({'lr': SchedCos(1e-2, 1e-4), 'wd': SchedLin(0, 0.1)}))

    Args:
        scheds: hyper-parameter name (`lr`, `mom`, `sqr_mom`, `wd`, `eps`) -> a callable of
            pos in [0, 1] (see `hookloop.schedules`) returning one value or one per parameter
            group, or a list of such callables, one per parameter group.
    """

    order = 55  # after the Recorder (50): its before_fit resets recorder.hps, which we extend
    run_valid = False

    def __init__(self, scheds: dict[str, Callable[[float], Any]]) -> None:
        if not isinstance(scheds, dict):
            raise TypeError(
                f"ParamScheduler: scheds must be a dict of name -> schedule, got "
                f"{type(scheds).__name__}"
            )
        if not scheds:
            raise ValueError("ParamScheduler: scheds is empty; give at least one schedule")
        self.scheds: dict[str, Callable[[float], Any]] = {}
        for name, sched in scheds.items():
            if name not in HYPER_NAMES:
                raise ValueError(
                    f"ParamScheduler: unknown hyper-parameter {name!r}; names are "
                    f"{', '.join(HYPER_NAMES)}"
                )
            if isinstance(sched, (list, tuple)) and sched and all(map(callable, sched)):
                sched = PerGroup(sched)  # fastai: a list of schedules, one per group
            elif not callable(sched):
                raise TypeError(f"ParamScheduler: schedule for {name!r} is not callable: {sched!r}")
            self.scheds[name] = sched
        self._items: list[tuple[str, Callable]] = list(self.scheds.items())
        self._record: list[str] = []

    def before_fit(self) -> None:
        opt = self.learn.opt
        have = hyper_names(opt)
        for name in self.scheds:
            if name not in have:
                raise ValueError(
                    f"ParamScheduler: {type(opt).__name__} has no hyper-parameter {name!r}; "
                    f"it has: {', '.join(have)}"
                )
        n_groups = len(opt.param_groups)
        for name, sched in self._items:
            # Checked here, at pos 0, so a wrong length fails before the first batch.
            value = _per_group(sched(0.0))
            if isinstance(value, (list, tuple)) and len(value) != n_groups:
                raise ValueError(
                    f"ParamScheduler: the schedule for {name!r} returns {len(value)} values and "
                    f"the optimizer has {n_groups} parameter groups; return one value, or one "
                    "per group"
                )
        if self.learn.total_iters is None:
            raise ValueError(
                "ParamScheduler needs the number of training batches, and dls.train has no "
                "length (a stream): give fit(..., steps_per_epoch=k)"
            )
        recorder = self.learn.find_cb("recorder")
        self._recorder = recorder
        # Only what the Recorder does not record already, so no value is recorded twice.
        self._record = [n for n in self.scheds if recorder is not None and n not in recorder.hps]
        for name in self._record:
            recorder.hps[name] = []

    def before_batch(self) -> None:
        self._update(self.learn.pct_train)

    def _update(self, pos: float) -> None:
        opt = self.learn.opt
        for name, sched in self._items:
            value = sched(pos)
            if type(value) is not float:  # the common case costs one type check
                value = _per_group(value)
            set_hyper(opt, name, value)

    def after_batch(self) -> None:
        if self._record:
            opt, hps = self.learn.opt, self._recorder.hps
            for name in self._record:
                hps[name].append(get_hyper(opt, name)[-1])

    def __repr__(self) -> str:
        return f"ParamScheduler({list(self.scheds)})"


def _per_group(value: Any) -> Any:
    """A schedule's value as `set_hyper` takes it: a number, or a list with one per group.

    numpy arrays and tensors (fastai's discriminative schedules compute on arrays) become
    lists; a single-element sequence stands for every group, as fastai's `set_hyper` reads it.
    """
    to_list = getattr(value, "tolist", None)  # numpy arrays and scalars, tensors
    if to_list is not None:
        value = to_list()
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


# ---- fastai's fit variants: the schedules they run ---------------------------------------


def _base_lrs(learn: Learner, lr: float | slice | Sequence[float] | None) -> list[float]:
    # As fastai: write lr (or learn.lr) to the optimizer, then read back one value per group,
    # so slices spread over the groups before the schedules are built.
    if learn.opt is None:
        learn.create_opt()
    set_hyper(learn.opt, "lr", learn.lr if lr is None else lr)
    return get_hyper(learn.opt, "lr")


def _check_pct(owner: str, pct_start: float) -> None:
    what = "a number in [0, 1]"
    check_number("pct_start", pct_start, 0, maximum=1, what=what, owner=owner, typed=True)


def one_cycle_scheds(
    learn: Learner,
    lr_max: float | slice | None = None,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: Sequence[float] | None = DEFAULT_MOMS,
) -> dict[str, Callable]:
    """fastai's one-cycle schedules: lr cosine lr_max/div -> lr_max -> lr_max/div_final,
    mom cosine moms[0] -> moms[1] -> moms[2], both turning at pct_start."""
    # An infinite divisor is a schedule that starts or ends at 0.
    check_number("div", div, positive=True, owner="fit_one_cycle", finite=False)
    check_number("div_final", div_final, positive=True, owner="fit_one_cycle", finite=False)
    _check_pct("fit_one_cycle", pct_start)
    if moms is None:
        moms = getattr(learn, "moms", DEFAULT_MOMS)
    moms = tuple(moms)
    if len(moms) == 2:  # fastai v1: (max, min) goes max -> min -> max
        moms = (moms[0], moms[1], moms[0])
    if len(moms) != 3:
        raise ValueError(
            f"fit_one_cycle: moms must be 3 values (start, middle, end), or fastai v1's 2, "
            f"got {moms!r}"
        )
    lrs = _base_lrs(learn, lr_max)
    scheds: dict[str, Callable] = {
        "lr": PerGroup([combined_cos(pct_start, lr / div, lr, lr / div_final) for lr in lrs])
    }
    # Optimizers without momentum (Adagrad, ...) just get the lr schedule.
    if "mom" in hyper_names(learn.opt):
        scheds["mom"] = combined_cos(pct_start, *moms)
    return scheds


class Window:
    """Positions [start, start + length] of `sched` stretched over a whole fit (0 to 1)."""

    def __init__(self, sched: Callable[[float], Any], start: float, length: float) -> None:
        self.sched, self.start, self.length = sched, start, length

    def __call__(self, pos: float) -> Any:
        return self.sched(self.start + pos * self.length)

    def __repr__(self) -> str:
        return f"Window({self.sched!r}, start={self.start}, length={self.length})"


def window_scheds(
    scheds: dict[str, Callable],
    n_epoch: int,
    tot_epochs: int | None = None,
    start_epoch: int | None = None,
) -> dict[str, Callable]:
    """fastai v1's `tot_epochs`/`start_epoch`: a fit of n_epoch runs epochs start_epoch ..
    start_epoch + n_epoch of schedules that span tot_epochs (default n_epoch)."""
    total = n_epoch if tot_epochs is None else tot_epochs
    start = 0 if start_epoch is None else start_epoch
    check_int("tot_epochs", total, 0, owner="fit_one_cycle")
    check_int("start_epoch", start, 0, owner="fit_one_cycle")
    if start + n_epoch > total:
        raise ValueError(
            f"fit_one_cycle: start_epoch + n_epoch ({start} + {n_epoch}) exceeds "
            f"tot_epochs ({total})"
        )
    return {k: Window(s, start / total, n_epoch / total) for k, s in scheds.items()}


def flat_cos_scheds(
    learn: Learner,
    lr: float | slice | None = None,
    div_final: float = 1e5,
    pct_start: float = 0.75,
) -> dict[str, Callable]:
    """fastai's flat-cos schedule: lr flat for pct_start, then cosine down to lr/div_final."""
    check_number("div_final", div_final, positive=True, owner="fit_flat_cos", finite=False)
    _check_pct("fit_flat_cos", pct_start)
    lrs = _base_lrs(learn, lr)
    return {"lr": PerGroup([combined_cos(pct_start, v, v, v / div_final) for v in lrs])}


def sgdr_n_epoch(n_cycles: int, cycle_len: int, cycle_mult: int = 2) -> int:
    """Epochs of `fit_sgdr`: cycle_len * (1 + cycle_mult + ... + cycle_mult**(n_cycles-1))."""
    for name, v in (("n_cycles", n_cycles), ("cycle_len", cycle_len), ("cycle_mult", cycle_mult)):
        check_int(name, v, 1, owner="fit_sgdr")
    if cycle_mult == 1:  # fastai's closed form divides by cycle_mult - 1
        return cycle_len * n_cycles
    return cycle_len * (cycle_mult**n_cycles - 1) // (cycle_mult - 1)


def sgdr_scheds(
    learn: Learner,
    n_cycles: int,
    cycle_len: int,
    lr_max: float | slice | None = None,
    cycle_mult: int = 2,
) -> dict[str, Callable]:
    """fastai's SGDR: n_cycles cosine cycles lr_max -> 0, each cycle_mult times the last."""
    n_epoch = sgdr_n_epoch(n_cycles, cycle_len, cycle_mult)
    pcts = [cycle_len * cycle_mult**i / n_epoch for i in range(n_cycles)]
    lrs = _base_lrs(learn, lr_max)
    return {"lr": PerGroup([combine_scheds(pcts, [SchedCos(v, 0)] * n_cycles) for v in lrs])}


# ---- Learner shortcuts: fastai's fit variants ----


def _fit_scheduled(learn: Learner, n_epoch: int, scheds: dict, cbs: Any, **fit_kwargs: Any) -> Any:
    # The fit variants: their schedules run as a ParamScheduler ahead of the user's callbacks.
    return learn.fit(n_epoch, cbs=[ParamScheduler(scheds), *listify(cbs)], **fit_kwargs)


def fit_one_cycle(
    self: Learner,
    n_epoch: int,
    lr_max: float | slice | None = None,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    wd: float | None = None,
    moms: tuple[float, ...] | None = (0.95, 0.85, 0.95),
    cbs: Any = None,
    callbacks: Any = None,
    resume: str | Path | None = None,
    max_lr: float | slice | None = None,
    div_factor: float | None = None,
    final_div: float | None = None,
    tot_epochs: int | None = None,
    start_epoch: int | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
    """fastai's 1cycle: lr rises (cosine) from lr_max/div to lr_max over pct_start, then
    falls to lr_max/div_final; momentum moves the other way. lr_max=None uses learn.lr.
    fastai v1 spellings: `max_lr=` for lr_max, `div_factor=` for div, `final_div=` for
    div_final, `moms=(0.95, 0.85)` for (0.95, 0.85, 0.95); `tot_epochs=T, start_epoch=s`
    runs epochs s .. s+n_epoch of a cycle T epochs long."""
    self.check_fit_args(n_epoch, steps_per_epoch)
    lr_max = _one_of("lr_max", lr_max, "max_lr", max_lr, None)
    div = _one_of("div", div, "div_factor", div_factor, 25.0)
    div_final = _one_of("div_final", div_final, "final_div", final_div, 1e5)
    scheds = one_cycle_scheds(self, lr_max, div, div_final, pct_start, moms)
    if tot_epochs is not None or start_epoch is not None:
        scheds = window_scheds(scheds, n_epoch, tot_epochs, start_epoch)
    return _fit_scheduled(
        self, n_epoch, scheds, cbs, wd=wd, callbacks=callbacks, resume=resume,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip


def fit_flat_cos(
    self: Learner,
    n_epoch: int,
    lr: float | slice | None = None,
    div_final: float = 1e5,
    pct_start: float = 0.75,
    wd: float | None = None,
    cbs: Any = None,
    callbacks: Any = None,
    resume: str | Path | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
    """fastai: lr flat for pct_start of training, then cosine down to lr/div_final."""
    self.check_fit_args(n_epoch, steps_per_epoch)
    scheds = flat_cos_scheds(self, lr, div_final, pct_start)
    return _fit_scheduled(
        self, n_epoch, scheds, cbs, wd=wd, callbacks=callbacks, resume=resume,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip


def fit_sgdr(
    self: Learner,
    n_cycles: int,
    cycle_len: int,
    lr_max: float | slice | None = None,
    cycle_mult: int = 2,
    cbs: Any = None,
    wd: float | None = None,
    callbacks: Any = None,
    resume: str | Path | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
    """fastai's SGDR: n_cycles cosine cycles from lr_max to 0, the first cycle_len epochs
    long and each next one cycle_mult times longer."""
    n_epoch = sgdr_n_epoch(n_cycles, cycle_len, cycle_mult)
    self.check_fit_args(n_epoch, steps_per_epoch)
    scheds = sgdr_scheds(self, n_cycles, cycle_len, lr_max, cycle_mult)
    return _fit_scheduled(
        self, n_epoch, scheds, cbs, wd=wd, callbacks=callbacks, resume=resume,
        steps_per_epoch=steps_per_epoch,
    )  # fmt: skip


def _one_of(name: str, value: Any, v1_name: str, v1_value: Any, default: Any) -> Any:
    # fastai v1 keyword beside the v2 one: the v1 value wins when the v2 one is left at default.
    if v1_value is None:
        return value
    if value != default:
        raise ValueError(f"give {name} or {v1_name} (fastai v1), not both")
    return v1_value


Learner.fit_one_cycle = fit_one_cycle
Learner.fit_flat_cos = fit_flat_cos
Learner.fit_sgdr = fit_sgdr

__all__ = [
    "ParamScheduler",
    "PerGroup",
    "one_cycle_scheds",
    "flat_cos_scheds",
    "window_scheds",
    "Window",
    "sgdr_scheds",
    "sgdr_n_epoch",
]
