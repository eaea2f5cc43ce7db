"""Argument validators: one clear error naming the argument and the value, before any work."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

_SAME = object()


def is_int(value: Any) -> bool:
    """An int that is not a bool (`True` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_words(minimum: int | None, below: int | None) -> str:
    if below is not None:
        return f"an int in [{minimum if minimum is not None else '-inf'}, {below})"
    if minimum == 1:
        return "a positive int"
    if minimum is None:
        return "an int"
    return f"an int >= {minimum}"


def _fail(owner: str | None, name: str, what: str, value: Any, error: type = ValueError) -> None:
    prefix = f"{owner}: " if owner else ""
    raise error(f"{prefix}{name} must be {what}, got {value!r}")


def check_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    *,
    below: int | None = None,
    what: str | None = None,
    owner: str | None = None,
    typed: bool = False,
) -> int:
    """`value` if it is an int in [minimum, below), else an error naming `name` and `value`.

    One ValueError `"[owner: ]name must be <what>, got <value>"` by default (what: "a positive
    int" for minimum 1, "an int >= m" otherwise); with `typed=True` a TypeError
    `"name must be an int"` for a non-int and a ValueError `"name must be >= m"` for one out of
    range.
    """
    in_range = (minimum is None or value >= minimum) if is_int(value) else False
    if in_range and below is not None:
        in_range = value < below
    if in_range:
        return value
    if typed:
        if not is_int(value):
            _fail(owner, name, what or "an int", value, TypeError)
        limit = f">= {minimum}" if below is None or value < (minimum or 0) else f"< {below}"
        _fail(owner, name, limit, value)
    _fail(owner, name, what or _int_words(minimum, below), value)
    return value  # unreachable: _fail raises


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    *,
    positive: bool = False,
    below: float | None = None,
    maximum: float | None = None,
    what: str | None = None,
    owner: str | None = None,
    typed: bool = False,
    shown: Any = _SAME,
    finite: bool = True,
) -> float:
    """`value` if it is a finite real number in range, else an error naming `name` and `value`.

    Range: `>= minimum`, `> 0` with `positive`, `< below`, `<= maximum`. NaN and infinities
    are out of every range (`finite=False` lets infinities through, for a limit that may be
    unbounded). The message is `"[owner: ]name must be <what>, got <shown>"`
    (`shown` defaults to `value`; give the whole argument when `value` is one of its items).
    With `typed=True` a non-number is a TypeError (`"must be <what>"`, what defaulting to
    "a number") and an out-of-range number a ValueError `"must be >= minimum"`.
    """
    shown = value if shown is _SAME else shown
    ok = is_number(value) and not math.isnan(value) and (math.isfinite(value) or not finite)
    if ok:
        ok = (
            (minimum is None or value >= minimum)
            and (not positive or value > 0)
            and (below is None or value < below)
            and (maximum is None or value <= maximum)
        )
    if ok:
        return value
    if typed:
        if not is_number(value):
            _fail(owner, name, what or "a number", shown, TypeError)
        _fail(owner, name, _number_words(minimum, positive, below, maximum, bare=True), shown)
    _fail(owner, name, what or _number_words(minimum, positive, below, maximum), shown)
    return value  # unreachable: _fail raises


def _number_words(
    minimum: float | None,
    positive: bool,
    below: float | None,
    maximum: float | None,
    bare: bool = False,
) -> str:
    if positive and below is None and maximum is None:
        return "> 0" if bare else "a positive number"
    lo = "0" if positive else (None if minimum is None else f"{minimum:g}")
    if below is not None or maximum is not None:
        left = "(" if positive else "["
        right = f"{below:g})" if below is not None else f"{maximum:g}]"
        span = f"in {left}{lo if lo is not None else '-inf'}, {right}"
        return span if bare else f"a number {span}"
    if lo is None:
        return "finite" if bare else "a finite number"
    return f">= {lo}" if bare else f"a number >= {lo}"


def check_choice(
    name: str, value: Any, choices: tuple, owner: str | None = None, *, what: str | None = None
) -> Any:
    """`value` if it is one of `choices`, else a ValueError listing them.

    The message is `"[owner: ]name must be <what>, got <value>"`, what defaulting to
    "one of 'a', 'b'" (give it to word the choices otherwise, e.g. "'epoch' or 'improvement'").
    """
    if value in choices:
        return value
    listed = ", ".join(repr(c) for c in choices)
    _fail(owner, name, what or f"one of {listed}", value)
    return value  # unreachable: _fail raises


def check_path(
    name: str,
    value: Any,
    *,
    empty: bool = True,
    what: str | None = None,
    owner: str | None = None,
) -> str | os.PathLike:
    """`value` if it is a str or os.PathLike (non-empty unless `empty`), else a TypeError.

    The message is `"[owner: ]name must be <what>, got <type>: <value>"`, what defaulting to
    "a str or path" ("a non-empty str or path" with `empty=False`).
    """
    if isinstance(value, (str, os.PathLike)) and (empty or str(value)):
        return value
    prefix = f"{owner}: " if owner else ""
    what = what or ("a str or path" if empty else "a non-empty str or path")
    raise TypeError(f"{prefix}{name} must be {what}, got {type(value).__name__}: {value!r}")


def check_writable_file(path: str | os.PathLike, who: str) -> None:
    """Raise an OSError naming `who` (e.g. "ModelCheckpoint filepath") if a file cannot be
    written at `path`: the path is a folder, a file stands where a folder should be, or the
    nearest existing folder is not writable. Nothing is created: missing folders are made at
    the first write, as before.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{who}: {str(path)!r} is a folder, a file name is needed")
    ancestor = path.parent
    while not ancestor.exists():  # False also below a file (NotADirectoryError inside)
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"{who}: cannot write {str(path)!r}: {str(ancestor)!r} is a file, not a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{who}: cannot write {str(path)!r}: the folder {str(ancestor)!r} is not writable"
        )


__all__ = [
    "is_int",
    "is_number",
    "check_int",
    "check_number",
    "check_choice",
    "check_path",
    "check_writable_file",
]
