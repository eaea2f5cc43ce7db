"""The Callback base class, callback ordering, and the precomputed per-event dispatch table."""

from __future__ import annotations

import heapq
import re
import types
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._util import camel_to_snake
from .events import EVENTS, LEGACY_ALIASES

if TYPE_CHECKING:
    from .learner import Learner


def class_to_name(cls: type) -> str:
    """snake_case of the class name without a trailing `Callback`."""
    base = re.sub("Callback$", "", cls.__name__) or "callback"
    return camel_to_snake(base)


class Callback:
    """Base class of every callback: override the event methods you need (`after_batch`, ...).

    Attribute reads that the callback does not have fall through to the learner, so
    `self.loss` is `self.learn.loss`. Write learner state through `self.learn.<name>`.

    Class attributes:
        order: tie-breaker for ordering; lower runs first (default 0).
        run_before / run_after: classes or names this callback must run before / after.
        run_train / run_valid: set False to skip the training / validation phase.
        rank_zero_only: under torch.distributed, attach only on rank 0 (files, network, printing).
        trial_run: True for a callback whose fit is undone afterwards (the LR finder's sweep);
            savers, loggers and plots read `learn.trial_run` to leave such a fit alone.
        state_version: version of the `state_dict()` layout stored in checkpoints; a callback
            that changes its layout bumps it and converts old states in `migrate_state_dict`.
    """

    order: int = 0
    run_before: tuple = ()
    run_after: tuple = ()
    run_train: bool = True
    run_valid: bool = True
    rank_zero_only: bool = False
    # A fit run with this callback is undone afterwards (the LR finder): see learn.trial_run.
    trial_run: bool = False
    # Saved with state_dict() in checkpoints; bump it when the layout of state_dict() changes.
    state_version: int = 1
    learn: Learner | None = None

    def __init__(self, **handlers: Callable) -> None:
        # fastai's `Callback(before_fit=f, after_batch=g)`: each function becomes a method of
        # this callback (it receives the callback, as fastai's funcs_kwargs(as_method=True)).
        for event, fn in handlers.items():
            if event not in EVENTS and event not in LEGACY_ALIASES:
                raise TypeError(
                    f"Callback: {event!r} is not an event; the events are {', '.join(EVENTS)}"
                )
            if not callable(fn):
                raise TypeError(f"Callback: {event} must be a function, got {fn!r}")
            object.__setattr__(self, event, types.MethodType(fn, self))

    def __call__(self, event: str) -> Any:
        """Run this callback's handler of `event`, if it has one (fastai's `cb('after_batch')`).

        Batch-level events respect run_train / run_valid for the learner's current phase."""
        if event in BATCH_EVENTS:
            training = getattr(self.learn, "training", True)
            if not (self.run_train if training else self.run_valid):
                return None
        handler = handler_of(self, event)
        return handler() if handler is not None else None

    @property
    def name(self) -> str:
        """The attribute name under which the learner exposes this callback."""
        return self.__dict__.get("_name") or class_to_name(type(self))

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails: fall through to the learner, fastai style.
        if key.startswith("__") or key in ("learn", "_name"):
            raise AttributeError(key)
        learn = self.__dict__.get("learn") or type(self).learn
        if learn is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
        return getattr(learn, key)

    def __setattr__(self, key: str, value: Any) -> None:
        learn = self.__dict__.get("learn")
        if (
            learn is not None
            and key not in self.__dict__
            and not hasattr(type(self), key)
            and key in learn.__dict__
        ):
            warnings.warn(
                f"{type(self).__name__} sets {key!r}, which shadows the learner's attribute; "
                f"use `self.learn.{key}` to change the learner's state",
                stacklevel=2,
            )
        object.__setattr__(self, key, value)

    def state_dict(self) -> dict:
        """Everything this callback needs to resume; empty by default.

        Tensors and plain Python values only: checkpoints load with weights_only=True.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned."""

    def migrate_state_dict(self, state: dict, version: int) -> dict:
        """Convert a state saved at an older `state_version` to the current layout."""
        raise ValueError(
            f"{type(self).__name__} is at state version {self.state_version}; it cannot "
            f"convert a saved state of version {version}"
        )

    def __repr__(self) -> str:
        return type(self).__name__


def _matches(ref: Any, cb: Callback) -> bool:
    if isinstance(ref, type):
        return isinstance(cb, ref)
    return ref in (type(cb).__name__, cb.name)


def _refs(refs: Any) -> tuple:
    # fastai writes `run_before = Recorder` as often as `run_before = (Recorder,)`.
    return (refs,) if isinstance(refs, (type, str)) else tuple(refs)


def sort_callbacks(cbs: Iterable[Callback]) -> list[Callback]:
    """Stable topological sort on run_before/run_after; ties go by `order`, then insertion."""
    cbs = list(cbs)
    n = len(cbs)
    succ: list[set[int]] = [set() for _ in range(n)]
    for i, cb in enumerate(cbs):
        before, after = _refs(cb.run_before), _refs(cb.run_after)
        for j, other in enumerate(cbs):
            if i == j:
                continue
            if any(_matches(r, other) for r in before):
                succ[i].add(j)
            if any(_matches(r, other) for r in after):
                succ[j].add(i)
    indeg = [0] * n
    for i in range(n):
        for j in succ[i]:
            indeg[j] += 1
    ready = [(cbs[i].order, i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, (cbs[j].order, j))
    if len(out) < n:
        cycle = _find_cycle(succ, [i for i in range(n) if indeg[i] > 0])
        names = " -> ".join(type(cbs[i]).__name__ for i in cycle + cycle[:1])
        raise ValueError(f"callback ordering has a cycle (run_before/run_after): {names}")
    return [cbs[i] for i in out]


def _find_cycle(succ: list[set[int]], left: list[int]) -> list[int]:
    # Every node left after Kahn's algorithm lies on or behind a cycle: walk until a repeat.
    left_set = set(left)
    path: list[int] = []
    seen: dict[int, int] = {}
    node = left[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(j for j in succ[node] if j in left_set)
    return path[seen[node] :]


def handler_of(cb: Callback, event: str) -> Callable | None:
    """`cb`'s method (or instance function) for `event`, or None."""
    # Look on the instance and class only, never through the learner fall-through.
    if event in cb.__dict__ or hasattr(type(cb), event):
        return getattr(cb, event)
    return None


# The batch-level events: the only ones run_train / run_valid gate (fastai's `_inner_loop`), so
# a callback with run_valid=False still sees before_validate / after_validate.
BATCH_EVENTS = frozenset(EVENTS[EVENTS.index("before_batch") : EVENTS.index("after_batch") + 1])


def runs_in(cb: Callback, event: str, phase: str) -> bool:
    """Whether `cb`'s handler of `event` belongs in the `phase` ('train' or 'valid') table."""
    if event not in BATCH_EVENTS:
        return True
    return cb.run_train if phase == "train" else cb.run_valid


class DispatchExtension:
    """Adds handlers beyond the event methods to the dispatch tables when they are rebuilt.

    callbacks/keras.py registers one for the Keras hooks (`on_epoch_end(epoch, logs)`, ...), so
    this core module knows no Keras. Append an instance to `DISPATCH_EXTENSIONS`.
    """

    def handlers(self, cb: Callback, cbs: list[Callback], phase: str) -> list[tuple[str, Callable]]:
        """(event, handler) pairs of `cb`, placed right after its own event methods."""
        return []

    def finish(self, table: dict[str, list[Callable]], cbs: list[Callback], phase: str) -> None:
        """Change the whole table once every callback's handlers are in."""


DISPATCH_EXTENSIONS: list[DispatchExtension] = []


def build_dispatch(cbs: list[Callback], phase: str) -> dict[str, tuple[Callable, ...]]:
    """For each event, the tuple of bound methods to call; `phase` is 'train' or 'valid'."""
    table: dict[str, list[Callable]] = {e: [] for e in EVENTS}
    for cb in cbs:
        for event in EVENTS:
            h = handler_of(cb, event)
            if h is not None and runs_in(cb, event, phase):
                table[event].append(h)
        for legacy, event in LEGACY_ALIASES.items():
            h = handler_of(cb, legacy)
            if h is not None and handler_of(cb, event) is None and runs_in(cb, event, phase):
                table[event].append(h)
        for ext in DISPATCH_EXTENSIONS:
            for event, h in ext.handlers(cb, cbs, phase):
                if runs_in(cb, event, phase):
                    table[event].append(h)
    for ext in DISPATCH_EXTENSIONS:
        ext.finish(table, cbs, phase)
    return {e: tuple(hs) for e, hs in table.items()}


def warn_legacy_names(cb: Callback) -> None:
    """Warn once per attach for each fastai-book `begin_*` method the callback defines."""
    for legacy, event in LEGACY_ALIASES.items():
        if handler_of(cb, legacy) is not None:
            warnings.warn(
                f"{type(cb).__name__}.{legacy} is the fastai-book name; it runs as {event}. "
                f"Rename it to {event}.",
                DeprecationWarning,
                stacklevel=3,
            )


__all__ = [
    "Callback",
    "sort_callbacks",
    "class_to_name",
    "camel_to_snake",
    "build_dispatch",
    "runs_in",
    "handler_of",
    "DispatchExtension",
    "DISPATCH_EXTENSIONS",
]
