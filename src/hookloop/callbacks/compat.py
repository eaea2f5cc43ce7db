"""fastai v1's learner-first calls (`SaveModelCallback(learn, every='epoch')`, `CSVLogger(learn)`).

fastai v1 built these callbacks with the learner as the first argument, positionally or through
`callback_fns=[partial(Cls, ...)]`. Each class keeps its own keyword signature; a call whose
first argument is a Learner goes to one of the factories below, which translates v1's arguments
to that signature. The factories take the class as their first argument, so this module
imports no callback module.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .._check import check_int, check_path
from ..learner import Learner


class LearnerFirst(type):
    """Metaclass of the callbacks fastai v1 built as `Cls(learn, ...)`.

    `Cls(learn, ...)` (or `Cls(learn=learn, ...)`) returns `Cls.from_learner(learn, ...)`; any
    other call is the class's own `__init__`. The choice has to be made before the instance
    exists: whatever `__new__` returns, Python then calls `__init__` with the learner-first
    arguments, which the class's signature cannot take.
    """

    def __call__(cls, *args: Any, **kwargs: Any):  # unannotated: type checkers read __init__
        if (args and isinstance(args[0], Learner)) or "learn" in kwargs:
            return cls.from_learner(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    @property
    def __signature__(cls) -> inspect.Signature:
        # help() and notebooks show the class's own signature, not the (*args, **kwargs) above.
        init = inspect.signature(cls.__init__)
        return init.replace(
            parameters=tuple(init.parameters.values())[1:],
            return_annotation=inspect.Signature.empty,
        )


def _check_learner(learn: Any) -> None:
    if not isinstance(learn, Learner):
        raise TypeError(f"learn must be a Learner, got {learn!r}")


def early_stopping(
    cls: type,
    learn: Learner,
    monitor: str = "valid_loss",
    mode: str = "auto",
    min_delta: float = 0.0,
    patience: int = 0,
    **kwargs: Any,
) -> Any:
    """fastai v1: `EarlyStoppingCallback(learn, monitor, mode, min_delta, patience)`.

    v1 stopped when the wait counter exceeded `patience`; EarlyStopping stops when it reaches
    it, so v1's patience (epochs tolerated, default 0) is one less than `cb.patience`.
    """
    _check_learner(learn)
    patience = check_int("patience", patience, 0, typed=True)
    return cls(monitor=monitor, min_delta=min_delta, patience=patience + 1, mode=mode, **kwargs)


def save_model(
    cls: type,
    learn: Learner,
    monitor: str | None = None,
    mode: str = "auto",
    every: str | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> Any:
    """fastai v1: `SaveModelCallback(learn, monitor, mode, every='improvement', name='bestmodel')`.

    Writes `bestmodel.pth`, or with `every='epoch'` `bestmodel_1.pth, bestmodel_2.pth, ...`
    (1-based, as v1 numbered them). The learner is otherwise unused: the learner that runs the
    callback is used.
    """
    _check_learner(learn)
    if name is None and kwargs.get("fname") is None:
        name = "bestmodel"
    cb = cls(monitor=monitor, mode=mode, every=every, name=name, **kwargs)
    cb.v1 = True  # file numbers 1-based
    return cb


def csv_logger(
    cls: type, learn: Learner, filename: Any = "history", append: bool = False, **kwargs: Any
) -> Any:
    """fastai v1: `CSVLogger(learn, filename='history', append=False)` writes `<filename>.csv`."""
    _check_learner(learn)
    path = Path(check_path("filename", filename))
    if path.suffix == "":
        path = path.with_suffix(".csv")
    return cls(fname=path, append=append, **kwargs)


__all__ = ["LearnerFirst", "early_stopping", "save_model", "csv_logger"]
