"""FloatSeries: a per-batch history of floats stored as C doubles, read like a Python list."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload


class FloatSeries(Sequence[float]):
    """A growing sequence of floats kept in an `array('d')`: 8 bytes a value, not the ~32 of a
    list of Python floats, so a run of millions of batches keeps its history in a few MB.

    It reads like the lists fastai's Recorder keeps: `len`, indexing (negative too), slices
    (which return lists), iteration, `==` with a list or tuple, `+` with a list, numpy and
    matplotlib (through `__array__`, a copy). `append` and `extend` grow it in place.
    """

    __slots__ = ("_data",)

    def __init__(self, values: Iterable[float] = ()) -> None:
        if hasattr(values, "tolist") and not isinstance(values, array):  # tensors, ndarrays
            values = values.tolist()
        self._data = array("d", values)

    def __len__(self) -> int:
        return len(self._data)

    @overload
    def __getitem__(self, i: int) -> float: ...

    @overload
    def __getitem__(self, i: slice) -> list[float]: ...

    def __getitem__(self, i: int | slice) -> float | list[float]:
        if isinstance(i, slice):
            return self._data[i].tolist()
        return self._data[i]

    def __iter__(self) -> Iterator[float]:
        return iter(self._data)

    def __reversed__(self) -> Iterator[float]:
        return reversed(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FloatSeries):
            return self._data == other._data
        if isinstance(other, (list, tuple)):
            return len(other) == len(self._data) and self._data.tolist() == list(other)
        if isinstance(other, array):
            return self._data == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, as a list

    def __add__(self, other: Iterable[float]) -> list[float]:
        return self._data.tolist() + list(other)

    def __radd__(self, other: Iterable[float]) -> list[float]:
        return list(other) + self._data.tolist()

    def __repr__(self) -> str:
        return repr(self._data.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        # A copy: a view would pin the buffer, and the next append would fail to resize it.
        out = np.array(self._data, dtype=np.float64)
        return out if dtype is None else out.astype(dtype)

    def __reduce__(self) -> tuple:
        return (FloatSeries, (self._data,))

    def append(self, value: float) -> None:
        self._data.append(value)

    def extend(self, values: Iterable[float]) -> None:
        self._data.extend(values)

    def clear(self) -> None:
        del self._data[:]

    def tolist(self) -> list[float]:
        return self._data.tolist()

    @property
    def nbytes(self) -> int:
        """Bytes the values take (8 a value; the array may have reserved a little more)."""
        return self._data.itemsize * len(self._data)


class SeriesDict(dict):
    """`recorder.hps`: name -> FloatSeries; a list assigned to it (ParamScheduler's
    `hps[name] = []`) is stored as a FloatSeries too."""

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, FloatSeries):
            value = FloatSeries(value)
        super().__setitem__(key, value)


__all__ = ["FloatSeries", "SeriesDict"]
