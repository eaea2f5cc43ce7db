"""What `fit` and `get_preds` hand back: the Keras-style History and the predictions gatherer."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import torch

from ._util import output_logits
from .callback import Callback


class History(Callback):
    """What `fit` returns, as in Keras: `.history` (key -> per-epoch list), `.epoch`, `.params`.

    `fit` builds one per fit (through the Recorder). Keras code that passes its own instance
    as a callback gets it filled the same way, as Keras' History callback does.

    Example:
        history = History()
        learn.fit(3, cbs=history)
        history.history["val_loss"]   # 3 values, as in the History that fit returns

    Args:
        params: the fit's parameters (`epochs`, `steps`, `verbose`); set by fit when passed
            as a callback.
    """

    def __init__(self, params: dict | None = None) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = dict(params or {})

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    # Keras' History callback: `epoch` restarts each fit, `history` keeps growing (as Keras).
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.append(epoch, dict(logs or {}))

    def __repr__(self) -> str:
        return f"History(epochs={self.epoch}, keys={list(self.history)})"


class ValidationResult(list):
    """What `validate` returns: `[valid_loss, *metrics]` as fastai (`loss, acc = ...` unpacks),
    which also answers by name (`res["accuracy"]`, `res.keys()`), as a dict would."""

    def __init__(self, values: dict[str, float]) -> None:
        super().__init__(values.values())
        self.names = list(values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return super().__getitem__(self.names.index(key))
            except ValueError:
                raise KeyError(f"{key!r}; validation values are {self.names}") from None
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self.names)

    def items(self) -> list[tuple[str, float]]:
        return list(zip(self.names, self))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.names else default

    def as_dict(self) -> dict[str, float]:
        return dict(self.items())

    def __repr__(self) -> str:
        return f"ValidationResult({self.as_dict()})"


class GatherPreds(Callback):
    """Collects predictions, targets (and inputs, per-item losses) during `get_preds`."""

    order = 100
    run_train = False

    def __init__(self, with_input: bool = False, with_loss: bool = False) -> None:
        self.with_input, self.with_loss = with_input, with_loss
        self._preds: list = []
        self._targs: list = []
        self._inputs: list = []
        self._losses: list = []

    def before_validate(self) -> None:
        self._loss_none = _per_item_loss(self.learn.loss_func) if self.with_loss else None

    def after_batch(self) -> None:
        learn = self.learn
        # A structured output (a Hugging Face ModelOutput) gives its logits, as metrics see.
        pred = output_logits(learn.pred, learn.pred_key)
        self._preds.append(pred.detach())
        if learn.yb:
            self._targs.append(_detached(learn.yb))
        if self.with_input:
            self._inputs.append(_detached(learn.xb))
        if self._loss_none is not None:
            self._losses.append(self._loss_none(pred, *learn.yb).detach())

    def preds(self) -> torch.Tensor:
        return torch.cat(self._preds)

    def targets(self) -> Any:
        """Every batch's targets, concatenated: one tensor, or a tuple for several targets."""
        return _concat(self._targs) if self._targs else None

    def inputs(self) -> Any:
        """Every batch's inputs, concatenated: one tensor, a tuple for several inputs, or a
        dict for mapping batches."""
        return _concat(self._inputs)

    def losses(self) -> torch.Tensor:
        return torch.cat(self._losses)


def _detached(x: Any) -> Any:
    # A batch's inputs or targets (a tuple, or a mapping of keyword inputs), off the graph.
    if isinstance(x, Mapping):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in x)


def _concat(batches: list) -> Any:
    # Element-wise over the batches: a tuple of one item gives that tensor (fastai's shape).
    first = batches[0]
    if isinstance(first, Mapping):
        return {k: torch.cat([b[k] for b in batches]) for k in first}
    cols = tuple(torch.cat([b[i] for b in batches]) for i in range(len(first)))
    return cols[0] if len(cols) == 1 else cols


def _per_item_loss(loss_func: Any) -> Any:
    # A copy of the loss with reduction='none' (torch modules), or the function called with it.
    if hasattr(loss_func, "reduction"):
        lf = copy.copy(loss_func)
        lf.reduction = "none"
        return lf
    return functools.partial(loss_func, reduction="none")


__all__ = ["History", "GatherPreds", "ValidationResult"]
