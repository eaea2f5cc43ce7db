"""ProgressBar: a tqdm bar per phase and the per-epoch table (Keras name: ProgbarLogger)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from .._check import check_number
from .._util import in_notebook, length_or_none, no_log
from ..callback import Callback
from ..learner import DEFAULT_CBS, Learner


class _LazyLossPostfix:
    """Mixed into a tqdm class: asks for the smoothed loss only when the bar redraws."""

    def __init__(self, *args: Any, loss_fn: Any = None, **kwargs: Any) -> None:
        self._loss_fn = loss_fn
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict:
        d = super().format_dict
        fn = getattr(self, "_loss_fn", None)
        if fn is not None:
            d["postfix"] = fn()
        return d


class _LossBar(_LazyLossPostfix, tqdm):
    """Terminal tqdm bar whose loss is read at redraw time (no per-batch device sync)."""


def _notebook_bar_class() -> type | None:
    try:
        import ipywidgets  # noqa: F401
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:
        return None

    class _NotebookLossBar(_LazyLossPostfix, notebook_tqdm):
        """Notebook widget bar whose loss is read at redraw time."""

    return _NotebookLossBar


class ProgressBar(Callback):
    """Shows a tqdm bar over the batches of each phase and prints the per-epoch table.

    On a terminal or in a notebook the bar is drawn; elsewhere (logs, CI) only the table lines
    are printed. The smoothed loss shown on the bar is read only when the bar redraws.

    Keras code that passes `ProgbarLogger()` to `fit` gets one bar, not two: of several
    attached bars only the one added last draws and prints.

    Args:
        mininterval: minimum seconds between redraws (tqdm's `mininterval`).
        leave: keep each finished bar on screen.
        show_bar: force the bar on (True) or off (False); None decides from the output.
        count_mode, stateful_metrics: Keras 2's ProgbarLogger arguments; the bar counts
            batches ('steps'), and 'samples' is accepted as well.
    """

    order = 60
    rank_zero_only = True

    def __init__(
        self,
        mininterval: float = 0.1,
        leave: bool = False,
        show_bar: bool | None = None,
        count_mode: str = "steps",
        stateful_metrics: Any = None,
    ) -> None:
        if isinstance(mininterval, str):  # Keras 2: ProgbarLogger('steps')
            mininterval, count_mode = 0.1, mininterval
        if count_mode not in ("steps", "samples"):
            raise ValueError(f"count_mode must be 'steps' or 'samples', got {count_mode!r}")
        # An infinite interval is meaningful: the bar redraws only when the phase ends.
        what = "a number of seconds >= 0"
        check_number("mininterval", mininterval, 0, what=what, finite=False)
        self.count_mode = count_mode
        self.stateful_metrics = stateful_metrics
        self.mininterval = mininterval
        self.leave = leave
        self.show_bar = show_bar
        self.bar: Any = None
        self._old_logger: Any = None
        self._aside: Any = None  # the training bar, during an evaluation run inside it

    def before_fit(self) -> None:
        cbs = self.learn.cbs
        if any(isinstance(c, ProgressBar) for c in cbs[cbs.index(self) + 1 :]):
            self._draw = False  # a bar added later (Keras' ProgbarLogger in fit) takes over
            return
        notebook = in_notebook()
        self._bar_cls = _notebook_bar_class() if notebook else _LossBar
        if self.show_bar is not None:
            self._draw = self.show_bar
        else:
            self._draw = notebook or sys.stderr.isatty()
        if self._bar_cls is None:
            self._bar_cls = _LossBar
        self._old_logger = self.learn.logger
        if self._draw and self._bar_cls is _LossBar:
            # Lines printed under a terminal bar would tear it: clear the bar around each line.
            self.learn.logger = self._write

    def _write(self, line: str) -> None:
        with tqdm.external_write_mode():
            self._old_logger(line)

    def _open(self, desc: str, loss_fn: Any) -> None:
        if not self._draw:
            return
        self._close()
        learn = self.learn
        # Set before the loop sets n_iter: the phase's batches, None for a stream (no total).
        steps = learn.steps_per_epoch if learn.training else None
        self.bar = self._bar_cls(
            total=steps if steps is not None else length_or_none(learn.dl),
            desc=f"epoch {self.learn.epoch} {desc}",
            leave=self.leave,
            mininterval=self.mininterval,
            loss_fn=loss_fn,
            dynamic_ncols=True,
        )

    def _close(self) -> None:
        bar = self.bar
        if bar is not None:
            # Batches done but not handed to the bar yet. `iter` may be the last phase's when
            # this one had no batch: the bar never goes past its total.
            done = self.learn.iter + 1
            left = (done if bar.total is None else min(done, bar.total)) - bar.n
            if left > 0:
                bar.update(left)
            bar.close()
            self.bar = None

    def _loss_postfix(self) -> str:
        recorder = getattr(self.learn, "recorder", None)
        if recorder is None or not recorder.n_losses:
            return ""  # no batch yet this fit: show no loss rather than nan
        return f"loss={recorder.smooth_loss:.4f}"

    def before_train(self) -> None:
        self._open("train", self._loss_postfix)

    def before_validate(self) -> None:
        if self.bar is not None:
            # An evaluation run inside the training phase (validate() from a callback): keep
            # the training bar aside, untouched, and draw none for the evaluation.
            self._aside, self.bar = self.bar, None
            return
        if getattr(self, "_draw", False):
            self._open("valid", None)

    def after_batch(self) -> None:
        bar = self.bar
        if bar is not None:
            # tqdm redraws at most once per `miniters` updates (it adapts them to its redraw
            # interval), so hand it the count only then: a call per batch would cost more. The
            # count is the loop's `iter`, so nothing is written here per batch, and the bar of
            # an epoch resumed mid-way jumps to where the epoch resumed.
            left = self.learn.iter + 1 - bar.n
            if left >= bar.miniters:
                bar.update(left)

    def after_train(self) -> None:
        self._close()

    def after_validate(self) -> None:
        if self._aside is not None:
            self.bar, self._aside = self._aside, None
            return
        self._close()

    def after_fit(self) -> None:
        self._close()
        if self._old_logger is not None:
            self.learn.logger = self._old_logger
            self._old_logger = None

    def after_exception(self) -> None:
        self.after_fit()


ProgbarLogger = ProgressBar


# ---- Learner shortcuts: fit without the bar ----


@contextlib.contextmanager
def no_bar(self: Learner) -> Iterator[Learner]:
    """Run without the progress bar (the per-epoch table is still logged)."""
    with self.removed_cbs([c for c in self.cbs if isinstance(c, ProgressBar)]):
        yield self


Learner.no_bar = no_bar
DEFAULT_CBS.append(ProgressBar)

__all__ = ["ProgressBar", "ProgbarLogger", "in_notebook", "no_log"]
