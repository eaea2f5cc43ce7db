"""Schedule functions of training progress ``pos`` in [0, 1], matching fastai's values."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = [
    "Schedule",
    "SchedLin",
    "SchedCos",
    "SchedNo",
    "SchedExp",
    "SchedPoly",
    "combine_scheds",
    "combined_cos",
]

Schedule = Callable[[float], float]

# Cumulative pcts are built by repeated float addition, so an exact comparison with 1
# would reject e.g. [0.1] * 10.
_PCT_SUM_TOL = 1e-6


class SchedLin:
    """Linear from ``start`` (pos 0) to ``end`` (pos 1)."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def __call__(self, pos: float) -> float:
        return self.start + pos * (self.end - self.start)

    def __repr__(self) -> str:
        return f"SchedLin(start={self.start!r}, end={self.end!r})"


class SchedCos:
    """Half-cosine from ``start`` to ``end``: flat at both ends, steepest in the middle."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def __call__(self, pos: float) -> float:
        return self.start + (1 + math.cos(math.pi * (1 - pos))) * (self.end - self.start) / 2

    def __repr__(self) -> str:
        return f"SchedCos(start={self.start!r}, end={self.end!r})"


class SchedNo:
    """Constant ``start``; ``end`` is accepted only so all schedules share a signature."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def __call__(self, pos: float) -> float:
        return self.start

    def __repr__(self) -> str:
        return f"SchedNo(start={self.start!r}, end={self.end!r})"


class SchedExp:
    """Geometric from ``start`` to ``end``; both must be positive."""

    def __init__(self, start: float, end: float) -> None:
        # A non-positive ratio would make end/start ** pos complex or zero.
        if start <= 0:
            raise ValueError(f"SchedExp needs start > 0, got start={start!r}")
        if end <= 0:
            raise ValueError(f"SchedExp needs end > 0, got end={end!r}")
        self.start, self.end = start, end

    def __call__(self, pos: float) -> float:
        return self.start * (self.end / self.start) ** pos

    def __repr__(self) -> str:
        return f"SchedExp(start={self.start!r}, end={self.end!r})"


class SchedPoly:
    """``start + (end - start) * pos ** power``."""

    def __init__(self, start: float, end: float, power: float) -> None:
        # power <= 0 would not reach start at pos 0 (and negative powers divide by zero there).
        if power <= 0:
            raise ValueError(f"SchedPoly needs power > 0, got power={power!r}")
        self.start, self.end, self.power = start, end, power

    def __call__(self, pos: float) -> float:
        return self.start + (self.end - self.start) * pos**self.power

    def __repr__(self) -> str:
        return f"SchedPoly(start={self.start!r}, end={self.end!r}, power={self.power!r})"


class _Combined:
    """Runs ``scheds[i]`` over the i-th slice of [0, 1], each with its own local pos."""

    def __init__(self, pcts: Sequence[float], scheds: Sequence[Schedule]) -> None:
        pcts, scheds = list(pcts), list(scheds)
        if len(pcts) != len(scheds):
            raise ValueError(
                f"combine_scheds needs one pct per schedule, got len(pcts)={len(pcts)} "
                f"and len(scheds)={len(scheds)}"
            )
        if not pcts:
            raise ValueError("combine_scheds needs at least one schedule, got pcts=[]")
        for i, p in enumerate(pcts):
            if p < 0:
                raise ValueError(f"combine_scheds needs pcts >= 0, got pcts[{i}]={p!r}")
        total = sum(pcts)
        if abs(total - 1) > _PCT_SUM_TOL:
            raise ValueError(
                f"combine_scheds needs pcts summing to 1, got pcts={pcts!r} (sum {total!r})"
            )
        bounds = [0.0]
        for p in pcts:
            bounds.append(bounds[-1] + p)
        # Pin the last boundary so float drift cannot leave a gap just below pos 1.
        bounds[-1] = 1.0
        self.pcts, self.scheds, self._bounds = pcts, scheds, bounds

    def __call__(self, pos: float) -> float:
        if pos >= 1.0:
            return self.scheds[-1](1.0)
        # The last segment starting at or before pos wins, so zero-width segments are skipped.
        idx = 0
        for i in range(len(self.scheds)):
            if pos >= self._bounds[i]:
                idx = i
        lo, hi = self._bounds[idx], self._bounds[idx + 1]
        return self.scheds[idx]((pos - lo) / (hi - lo))

    def __repr__(self) -> str:
        return f"combine_scheds(pcts={self.pcts!r}, scheds={self.scheds!r})"


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Chain ``scheds``, the i-th running over a fraction ``pcts[i]`` of training.

    ``pcts`` must be non-negative and sum to 1. At ``pos == 1`` the last schedule is
    evaluated at its own pos 1.
    """
    return _Combined(pcts, scheds)


def combined_cos(pct: float, start: float, middle: float, end: float) -> Schedule:
    """Cosine from ``start`` to ``middle`` over the first ``pct``, then cosine to ``end``."""
    if not 0 <= pct <= 1:
        raise ValueError(f"combined_cos needs 0 <= pct <= 1, got pct={pct!r}")
    return combine_scheds([pct, 1 - pct], [SchedCos(start, middle), SchedCos(middle, end)])
