"""The `logs` Keras hooks receive: lazy per-batch logs, the running mean loss, epoch values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


class Deferred:
    """A value computed on first use: `BatchLogs` calls it when a hook reads the logs."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class BatchLogs(dict):
    """Keras per-batch `logs` whose values become Python floats only when a hook reads them.

    `logs['loss']` is the running mean of the phase's batch losses so far, weighted by batch
    size, as in Keras 3 (after the last training batch it equals the epoch's `loss`).

    Values are held as tensors or `Deferred` computations, so a hook that never looks at
    `logs` costs no host-device sync; the first read (`logs['loss']`, `logs.get`, `.items()`,
    `json.dumps(logs)`, `dict(logs)`, ...) converts every value at once, in one transfer.
    """

    __slots__ = ("_lazy",)

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self._lazy = True

    def _load(self) -> None:
        if self._lazy:
            self._lazy = False
            for k, v in list(dict.items(self)):
                if isinstance(v, Deferred):
                    v = v.fn()
                if isinstance(v, torch.Tensor):
                    v = float(v.detach().float())
                dict.__setitem__(self, k, v)

    def __getitem__(self, key: str) -> Any:
        self._load()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return dict.get(self, key, default)

    def items(self) -> Any:
        self._load()
        return dict.items(self)

    def values(self) -> Any:
        self._load()
        return dict.values(self)

    def __iter__(self) -> Iterator[str]:
        # Overriding __iter__ makes dict(logs) and {**logs} go through keys()/__getitem__.
        return dict.__iter__(self)

    def pop(self, key: str, *default: Any) -> Any:
        self._load()
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._load()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._load()
        return dict.setdefault(self, key, default)

    def copy(self) -> dict[str, Any]:
        self._load()
        return dict(dict.items(self))

    def __or__(self, other: Any) -> dict[str, Any]:
        return self.copy() | other

    def __eq__(self, other: object) -> bool:
        self._load()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def __reduce__(self) -> Any:
        return (dict, (self.copy(),))


class RunningMean:
    """Batch-size-weighted running mean of one phase's batch losses, read from the device lazily.

    `add` only appends (no device work); `mean(n)` converts the losses not yet read in one
    transfer and returns the mean of the first `n` batches.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Any, int]] = []  # (loss, bs) not read from the device yet
        self._totals: list[float] = []  # prefix sums of loss * bs over the batches read
        self._seen: list[int] = []  # prefix sums of bs

    def add(self, loss: Any, bs: int) -> int:
        """Record one batch; returns how many batches the phase has had."""
        self._pending.append((loss, bs))
        return len(self._totals) + len(self._pending)

    def mean(self, n: int) -> float:
        """The weighted mean loss of the phase's first `n` batches."""
        if len(self._totals) < n:
            pending, self._pending = self._pending, []
            values = torch.stack([loss.detach().float().reshape(()) for loss, _ in pending])
            total = self._totals[-1] if self._totals else 0.0
            seen = self._seen[-1] if self._seen else 0
            for v, (_, bs) in zip(values.tolist(), pending):
                total, seen = total + v * bs, seen + bs
                self._totals.append(total)
                self._seen.append(seen)
        return self._totals[n - 1] / self._seen[n - 1]


def fit_params(learn: Any) -> dict[str, Any]:
    """Keras `self.params`: epochs, steps (training batches per epoch), verbose."""
    return {"epochs": learn.n_epoch, "steps": learn.batches_per_epoch, "verbose": 1}


def epoch_logs(learn: Any) -> dict[str, float]:
    """The current epoch's values under Keras keys ({} when it is not recorded)."""
    rec = learn.find_cb("recorder")
    return {} if rec is None else rec.keras_logs()


def last_logs(learn: Any) -> dict[str, float]:
    """Keras `on_train_end` logs: the last recorded epoch's values under Keras keys."""
    rec = learn.find_cb("recorder")
    return {} if rec is None else rec.keras_logs(current=False)


def validation_logs(learn: Any) -> dict[str, float]:
    """Keras `on_test_end` logs: the validation values without the `val_` prefix."""
    rec = learn.find_cb("recorder")
    if rec is None:
        return {}
    vals = rec.validation_values()
    return {("loss" if k == "valid_loss" else k): float(v) for k, v in vals.items()}


__all__ = [
    "BatchLogs",
    "Deferred",
    "RunningMean",
    "fit_params",
    "epoch_logs",
    "validation_logs",
    "last_logs",
]
