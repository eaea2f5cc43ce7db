"""Metrics: the fastai metric protocol, batch-size-weighted averages, and common functions."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from typing import Any

import torch

from ._check import check_number
from ._util import camel_to_snake, find_bs, output_logits


class Metric:
    """fastai's protocol: `reset()`, `accumulate(learn)`, `value`, `name`.

    `higher_is_better` tells trackers which direction improves (None: guess from the name).
    """

    higher_is_better: bool | None = None

    def reset(self) -> None:
        raise NotImplementedError

    def accumulate(self, learn: Any) -> None:
        raise NotImplementedError

    @property
    def value(self) -> Any:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


def stack_scalars(vals: list) -> torch.Tensor:
    """Per-batch scalars (tensors or numbers) as one 1-d tensor on the first value's device."""
    # The usual case, 0-d tensors on one device, is one op; checking each value first would
    # cost more than the stack itself, so let torch.stack refuse the unusual cases.
    try:
        stacked = torch.stack(vals)
    except (TypeError, RuntimeError):
        stacked = None
    if stacked is not None and stacked.ndim == 1:
        return stacked.detach()
    first = vals[0]
    dev = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
    return torch.stack([torch.as_tensor(v).detach().reshape(()).to(dev) for v in vals])


# AvgMetric keeps at most this many per-batch values; then they are folded into a running sum
# on the device (one stack, multiply and sum per 256 batches, no host read), so an epoch of any
# length holds a bounded number of tensors while a batch still costs only a list append.
COLLAPSE_EVERY = 256


def _weighted_sum(vals: list, counts: list[int]) -> torch.Tensor:
    stacked = stack_scalars(vals).double()
    w = torch.tensor(counts, dtype=torch.float64, device=stacked.device)
    return (stacked * w).sum()


def _weighted_mean(vals: list, counts: list[int]) -> torch.Tensor | float:
    # Stack once per read: per-batch values stay on the device until read.
    if not vals:
        return float("nan")
    return _weighted_sum(vals, counts) / float(sum(counts))


class AvgMetric(Metric):
    """Averages `func(pred, *yb)` over an epoch, weighted by batch size.

    Per batch it appends the value (a device tensor) and the batch size; every COLLAPSE_EVERY
    batches those are folded into `total` (a float64 tensor on the device: sum of value * bs)
    and `total_count`, so the memory an epoch takes stays bounded and nothing is read from the
    device before `value` is.
    """

    def __init__(self, func: Callable, name: str | None = None) -> None:
        if not callable(func):
            raise TypeError(f"AvgMetric needs a callable func, got {func!r}")
        self.func = func
        self._name = name or getattr(func, "__name__", type(func).__name__)
        self.reset()

    def reset(self) -> None:
        # The values and batch sizes not folded into `total` yet (at most COLLAPSE_EVERY).
        self.vals: list = []
        self.counts: list[int] = []
        self.total: torch.Tensor | None = None
        self.total_count = 0

    def accumulate(self, learn: Any) -> None:
        pred = learn.pred
        if type(pred) is not torch.Tensor:  # a structured output: its logits (pred_key)
            pred = output_logits(pred, getattr(learn, "pred_key", None))
        self.vals.append(self.func(pred, *learn.yb))
        self.counts.append(find_bs(learn.yb if learn.yb else learn.xb))
        if len(self.vals) >= COLLAPSE_EVERY:
            self._collapse()

    def _collapse(self) -> None:
        part = _weighted_sum(self.vals, self.counts)
        self.total = part if self.total is None else self.total + part
        self.total_count += sum(self.counts)
        self.vals, self.counts = [], []

    @property
    def n_samples(self) -> int:
        """Samples (the batch sizes' sum) accumulated since the last reset."""
        return self.total_count + sum(self.counts)

    def state_dict(self) -> dict:
        """The running values, so a mid-epoch resume continues the average exactly."""
        return {
            "vals": list(self.vals),
            "counts": list(self.counts),
            "total": self.total,
            "total_count": self.total_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.vals, self.counts = list(state["vals"]), list(state["counts"])
        # States saved before the running sum existed hold every value in `vals`.
        self.total, self.total_count = state.get("total"), state.get("total_count", 0)

    @property
    def value(self) -> torch.Tensor | float:
        if self.total is None:
            return _weighted_mean(self.vals, self.counts)
        total = self.total + _weighted_sum(self.vals, self.counts) if self.vals else self.total
        return total / float(self.n_samples)

    @property
    def name(self) -> str:
        return self._name


class AvgLoss(AvgMetric):
    """Average of `learn.loss` over an epoch, weighted by batch size."""

    higher_is_better = False

    def __init__(self) -> None:
        super().__init__(func=lambda pred, *yb: None, name="loss")

    def accumulate(self, learn: Any) -> None:
        # The loss is already computed: record it instead of calling a metric function.
        self.vals.append(learn.loss)
        self.counts.append(find_bs(learn.yb if learn.yb else learn.xb))
        if len(self.vals) >= COLLAPSE_EVERY:
            self._collapse()


class AvgSmoothLoss(Metric):
    """Exponential moving average of `learn.loss` with bias correction (fastai, beta=0.98)."""

    higher_is_better = False

    def __init__(self, beta: float = 0.98) -> None:
        check_number("beta", beta, 0, below=1, what="in [0, 1)")
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.val: torch.Tensor | float = 0.0

    def accumulate(self, learn: Any) -> None:
        self.count += 1
        self.val = torch.lerp(
            torch.as_tensor(learn.loss).float(), torch.as_tensor(self.val), self.beta
        )

    def state_dict(self) -> dict:
        """The running average, so a mid-epoch resume continues it."""
        return {"count": self.count, "val": self.val}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.val = state["count"], state["val"]

    @property
    def value(self) -> torch.Tensor | float:
        return self.val / (1 - self.beta**self.count) if self.count else float("nan")

    @property
    def name(self) -> str:
        return "smooth_loss"


class TorchMetric(Metric):
    """Drives a torchmetrics `Metric` through update/compute/reset."""

    def __init__(self, metric: Any, name: str | None = None) -> None:
        self.metric = metric
        self._name = name or _snake(type(metric).__name__)
        self.higher_is_better = getattr(metric, "higher_is_better", None)

    def reset(self) -> None:
        self.metric.reset()

    def accumulate(self, learn: Any) -> None:
        pred = learn.pred
        device = pred.device if isinstance(pred, torch.Tensor) else None
        if device is not None and getattr(self.metric, "device", device) != device:
            self.metric.to(device)
        self.metric.update(pred, *learn.yb)

    @property
    def value(self) -> Any:
        return self.metric.compute()

    @property
    def name(self) -> str:
        return self._name


def _snake(name: str) -> str:

    return camel_to_snake(name)


def _is_torchmetric(m: Any) -> bool:
    return any(c.__module__.startswith("torchmetrics") for c in type(m).__mro__)


def as_metric(m: Any) -> Metric:
    """Turn what a user passes in `metrics=` into an object of the fastai protocol."""
    if _is_torchmetric(m):
        return TorchMetric(m)
    # Look on the class too: `value` is often a property that fails before the first reset().
    if all(hasattr(type(m), a) or hasattr(m, a) for a in ("reset", "accumulate", "value", "name")):
        return m
    if callable(m) and not isinstance(m, type):
        return AvgMetric(m)
    raise TypeError(
        f"metrics: each metric must be a function f(pred, target), an object with "
        f"reset/accumulate/value/name, or a torchmetrics Metric; got {m!r}"
    )


def copy_metric(m: Metric) -> Metric:
    """An independent copy with empty state (for train-set metrics)."""
    c = copy.deepcopy(m)
    c.reset()
    return c


def check_metrics(metrics: list, learn: Any) -> None:
    """Run each metric on the learner's current batch (`learn.pred`, `learn.yb`), read its
    value, then reset it: a metric whose accumulate raises gets a note naming it, one that gives
    something other than a number or a tensor is a TypeError naming it. The value is not
    converted, so a device value is not read on the host."""
    for m in metrics:
        try:
            m.reset()
            m.accumulate(learn)
            # AvgMetric folds its function's results later; look at this batch's one now.
            got = m.vals[-1] if isinstance(m, AvgMetric) and m.vals else None
        except Exception as e:
            e.add_note(
                f"in metric {m.name!r} ({type(m).__name__}), run on one batch before training"
            )
            m.reset()
            raise
        try:
            # A value over one batch may legitimately fail where the epoch's would not (an AUC
            # of a batch holding one class): only its type is checked, when it computes.
            value = m.value if got is None or _numeric(got) else None
        except Exception:
            value = 0.0
        finally:
            m.reset()
        if got is not None and not _numeric(got):
            raise TypeError(
                f"metric {m.name!r} returned {type(got).__name__} {got!r:.60} for a batch; a "
                f"metric function f(pred, *targets) must return a number or a tensor"
            )
        if not _numeric(value):
            raise TypeError(
                f"metric {m.name!r} ({type(m).__name__}) has the value {type(value).__name__} "
                f"{value!r:.60}; a metric's value must be a number or a tensor"
            )


def _numeric(value: Any) -> bool:
    # Tensors, Python and numpy numbers, 0-d arrays: what the Recorder turns into a float.
    return isinstance(value, (torch.Tensor, numbers.Number)) or (
        hasattr(type(value), "__float__") and not isinstance(value, (str, bytes))
    )


def accuracy(inp: torch.Tensor, targ: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Fraction of rows whose argmax equals the target (targets may also be one-hot)."""
    if targ.ndim == inp.ndim:
        targ = targ.argmax(dim=axis)
    return (inp.argmax(dim=axis) == targ).float().mean()


def error_rate(inp: torch.Tensor, targ: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """1 - accuracy."""
    return 1 - accuracy(inp, targ, axis=axis)


def mse(inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return torch.nn.functional.mse_loss(inp, targ.view_as(inp))


def mae(inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return torch.nn.functional.l1_loss(inp, targ.view_as(inp))


def higher_is_better(name: str, metric: Any = None) -> bool:
    """Direction of improvement: a metric's own flag wins; losses and errors go down."""
    flag = getattr(metric, "higher_is_better", None)
    if flag is not None:
        return bool(flag)
    low = ("loss", "error", "mse", "mae", "rmse", "perplexity")
    return not any(k in name for k in low)


__all__ = [
    "Metric",
    "AvgMetric",
    "AvgLoss",
    "AvgSmoothLoss",
    "TorchMetric",
    "accuracy",
    "error_rate",
    "mse",
    "mae",
    "as_metric",
]
