"""Read and write optimizer hyper-parameters (lr, mom, sqr_mom, wd, eps) per param group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from ._check import is_number

__all__ = [
    "HYPER_NAMES",
    "hyper_names",
    "get_hyper",
    "set_hyper",
    "even_mults",
    "check_hyper_value",
]

HYPER_NAMES: tuple[str, ...] = ("lr", "mom", "sqr_mom", "wd", "eps")

# Names that map to one param-group key regardless of the optimizer.
_DIRECT_KEYS = {"lr": "lr", "wd": "weight_decay", "eps": "eps"}

HyperValue = float | Sequence[float] | slice


def _is_scalar(value: object) -> bool:
    # Some optimizers reuse a key for a non-scalar (Adafactor's eps is a tuple), which
    # must not be reported as a hyper-parameter we can read as one float.
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return is_number(value)


def _lookup(opt: Optimizer, name: str) -> tuple[str, int | None] | None:
    """The (group key, tuple index or None) holding ``name``, or None if ``opt`` lacks it."""
    group = opt.param_groups[0]
    if name in _DIRECT_KEYS:
        key = _DIRECT_KEYS[name]
        if key in group and _is_scalar(group[key]):
            return key, None
    elif name == "mom":
        if "momentum" in group and _is_scalar(group["momentum"]):
            return "momentum", None
        if "betas" in group:
            return "betas", 0
    elif name == "sqr_mom":
        if "betas" in group:
            return "betas", 1
        # Only RMSprop's alpha is a squared-gradient decay; ASGD's alpha means something else.
        if isinstance(opt, torch.optim.RMSprop) and "alpha" in group:
            return "alpha", None
    return None


def _resolve(opt: Optimizer, name: str) -> tuple[str, int | None]:
    found = _lookup(opt, name)
    if found is None:
        have = ", ".join(hyper_names(opt)) or "none of " + ", ".join(HYPER_NAMES)
        raise ValueError(f"{type(opt).__name__} has no hyper-parameter {name!r}; it has: {have}")
    return found


def hyper_names(opt: Optimizer) -> list[str]:
    """Which of ``lr, mom, sqr_mom, wd, eps`` ``opt`` has, in that order."""
    return [n for n in HYPER_NAMES if _lookup(opt, n) is not None]


def _to_float(value: object) -> float:
    # Fast path: this runs once per group per batch, and most values are already floats.
    if type(value) is float:
        return value
    return float(value)  # type: ignore[arg-type]


def get_hyper(opt: Optimizer, name: str) -> list[float]:
    """One value of hyper-parameter ``name`` per param group of ``opt``."""
    key, idx = _resolve(opt, name)
    if idx is None:
        return [_to_float(g[key]) for g in opt.param_groups]
    return [_to_float(g[key][idx]) for g in opt.param_groups]


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """``n`` values spread geometrically from ``start`` to ``stop`` (just ``[stop]`` if n == 1)."""
    if n < 1:
        raise ValueError(f"even_mults needs n >= 1, got n={n!r}")
    if n == 1:
        return [stop]
    if start <= 0:
        raise ValueError(f"even_mults needs start > 0, got start={start!r}")
    if stop <= 0:
        raise ValueError(f"even_mults needs stop > 0, got stop={stop!r}")
    step = (stop / start) ** (1 / (n - 1))
    values = [start * step**i for i in range(n)]
    # Pin the end point so float drift in step**(n-1) does not move the last group's value.
    values[-1] = stop
    return values


# Hyper-parameters that are never negative: a negative lr trains uphill, a negative wd grows
# the weights; both are bad input however they arrive (Learner, fit, a schedule).
_NON_NEGATIVE = ("lr", "wd")


def check_hyper_value(name: str, value: Any) -> None:
    """A ValueError naming `name` unless `value` is a number, a slice of numbers or a list of
    numbers (one per group); lr and wd must also be finite and >= 0."""
    if isinstance(value, slice):
        items = [v for v in (value.start, value.stop) if v is not None]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    for v in items:
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a number, a slice or one number per param group, got {value!r}"
            ) from None
        if name in _NON_NEGATIVE and not 0 <= number < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _per_group(name: str, value: HyperValue, n: int) -> list[float]:
    if isinstance(value, slice):
        if value.step is not None or value.stop is None:
            raise ValueError(
                f"set_hyper({name!r}) needs slice(stop) or slice(start, stop), got {value!r}"
            )
        if value.start is None:
            # fastai's convention: the last (head) group gets stop, earlier groups a tenth of it.
            return [value.stop / 10] * (n - 1) + [value.stop]
        return even_mults(value.start, value.stop, n)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"set_hyper({name!r}) got {len(value)} values for {n} param groups; "
                "pass one value per group"
            )
        return [float(v) for v in value]
    return [float(value)] * n  # type: ignore[arg-type]


def _filled(current: object, value: float) -> object:
    if isinstance(current, torch.Tensor):
        # Tensor lrs (fused/capturable optimizers, compiled steps) must keep their identity.
        current.fill_(value)
        return current
    return value


def set_hyper(opt: Optimizer, name: str, value: HyperValue) -> None:
    """Set hyper-parameter ``name`` on every param group of ``opt``.

    ``value`` is a number (same for all groups), a list/tuple with one value per group, or a
    slice: ``slice(a, b)`` spreads geometrically from ``a`` (first group) to ``b`` (last group)
    and ``slice(b)`` gives the last group ``b`` and earlier groups ``b / 10``, as in fastai.
    """
    key, idx = _resolve(opt, name)
    try:
        values = _per_group(name, value, len(opt.param_groups))
    except (TypeError, ValueError):
        check_hyper_value(name, value)  # names the argument when the value is not a number
        raise
    if name in _NON_NEGATIVE:
        for v in values:
            if not 0 <= v < math.inf:  # a schedule's value, checked before the step it sets
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    for group, v in zip(opt.param_groups, values):
        if idx is None:
            group[key] = _filled(group[key], v)
        else:
            items = list(group[key])
            items[idx] = _filled(items[idx], v)
            # Write back a new tuple so the other element (e.g. betas[1]) is kept as it was.
            group[key] = tuple(items)
