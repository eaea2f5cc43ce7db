"""Profiler: the time each callback spends in each event, printed as a table after fit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._util import listify
from ..callback import Callback
from ..learner import Learner


class _Timed:
    """A handler that adds its call count and seconds to `stat`; `__self__` names the callback."""

    __slots__ = ("handler", "stat", "__self__")

    def __init__(self, handler: Callable[[], Any], stat: list) -> None:
        self.handler = handler
        self.stat = stat
        # The loop names the callback in error notes (and show_loop lists it) through __self__.
        self.__self__ = getattr(handler, "__self__", None)

    def __call__(self) -> None:
        t0 = time.perf_counter()
        try:
            self.handler()
        finally:
            self.stat[0] += 1
            self.stat[1] += time.perf_counter() - t0


class Profiler(Callback):
    """Times every callback handler, per callback and event, and prints a table after fit.

    While attached it wraps the handlers in the learner's dispatch table with a timer; removed,
    the table is rebuilt without them, so a learner without a Profiler pays nothing. Times are
    host times (on CUDA, a handler that only queues work looks cheap). Rows are per callback
    class and event, sorted by total time; the last rows give the rest of the fit (model, data,
    optimizer, the loop itself) and the whole fit.

    Example:
        profiler = Profiler()
        learn.fit(1, cbs=profiler)     # or: profiler = learn.profile(1)
        profiler.stats[("Recorder", "after_batch")]   # (calls, seconds)

    Args:
        show: print the table through `learn.logger` at the end of fit.
    """

    def __init__(self, show: bool = True) -> None:
        if not isinstance(show, bool):
            raise TypeError(f"show must be a bool, got {show!r}")
        self.show = show
        self._stats: dict[tuple[str, str], list] = {}
        self._t0: float | None = None
        self.fit_seconds = 0.0

    @property
    def stats(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(callback class, event) -> (calls, seconds) for the last fit."""
        return {key: (calls, secs) for key, (calls, secs) in self._stats.items() if calls}

    def wrap_dispatch(self, tables: dict[str, dict[str, tuple]]) -> dict[str, dict[str, tuple]]:
        """Called by the learner on each rebuild: time every handler but our own.

        Our start runs before every other before_fit handler and our report after every other
        after_fit handler, so the fit time covers all of them.
        """
        wrapped = {}
        for phase, table in tables.items():
            new = {}
            for event, handlers in table.items():
                new[event] = tuple(
                    h if getattr(h, "__self__", None) is self else _Timed(h, self._stat(h, event))
                    for h in handlers
                )
            new["before_fit"] = (self._start, *new["before_fit"])
            new["after_fit"] = (*new["after_fit"], self._finish)
            wrapped[phase] = new
        return wrapped

    def _stat(self, handler: Callable, event: str) -> list:
        owner = getattr(handler, "__self__", None)
        who = type(owner).__name__ if owner is not None else getattr(handler, "__name__", "?")
        return self._stats.setdefault((who, event), [0, 0.0])

    def _start(self) -> None:
        for stat in self._stats.values():
            stat[0], stat[1] = 0, 0.0
        self._t0 = time.perf_counter()

    def _finish(self) -> None:
        if self._t0 is None:
            return
        self.fit_seconds = time.perf_counter() - self._t0
        self._t0 = None
        if self.show:
            self.learn.logger(self.table())

    def table(self) -> str:
        """The last fit's handler times, sorted by total, with the rest of the fit below."""
        rows = sorted(self.stats.items(), key=lambda kv: kv[1][1], reverse=True)
        fit = self.fit_seconds
        in_handlers = sum(secs for _, secs in self.stats.values())

        def pct(secs: float) -> str:
            return f"{100 * secs / fit:6.1f}%" if fit > 0 else "      -"

        lines = [
            f"{'callback':<24} {'event':<22} {'calls':>7} {'total ms':>10} {'mean us':>9} "
            f"{'of fit':>7}",
        ]
        for (cb, event), (calls, secs) in rows:
            lines.append(
                f"{cb:<24} {event:<22} {calls:>7} {secs * 1e3:>10.2f} {secs / calls * 1e6:>9.1f} "
                f"{pct(secs)}"
            )
        rest = max(fit - in_handlers, 0.0)
        lines.append(
            f"{'(model, data, optimizer, loop)':<54} {rest * 1e3:>10.2f} {'':>9} {pct(rest)}"
        )
        lines.append(f"{'(whole fit)':<54} {fit * 1e3:>10.2f}")
        return "\n".join(lines)


# ---- Learner shortcuts: fit with a Profiler ----


def profile(self: Learner, n_epoch: int = 1, **fit_kwargs: Any) -> Any:
    """`fit` with a `Profiler` for this fit only: prints the time per callback and event,
    returns the Profiler (its `stats` and `table()`)."""
    profiler = Profiler()
    cbs = listify(fit_kwargs.pop("cbs", None)) + [profiler]
    self.fit(n_epoch, cbs=cbs, **fit_kwargs)
    return profiler


Learner.profile = profile

__all__ = ["Profiler"]
