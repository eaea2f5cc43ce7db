"""TensorBoard: losses, metrics, the learning rate and parameter histograms as event files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._check import check_int, check_path
from .._util import unwrap_model
from ..callback import Callback

_UPDATE_FREQ = "'epoch', 'batch' or a positive int"


class TensorBoard(Callback):
    """Writes losses, metrics and the learning rate to TensorBoard event files.

    Per epoch, `epoch/<name>` for every recorded value (`epoch/train_loss`, `epoch/valid_loss`,
    `epoch/accuracy`) and `epoch/lr`, at step = epoch (0-based). With `update_freq='batch'` or
    an int N, also `batch/train_loss` and `batch/lr` every N training batches at step =
    `train_iter`; the losses are buffered on the device and read in one transfer per epoch
    (or per 64 points), so the event file gets them at epoch end.

    Example:
        learn.fit(3, cbs=TensorBoard("runs/exp1", update_freq="batch"))

    Args:
        log_dir: folder of the event files, relative to `learn.path` unless absolute.
        update_freq: 'epoch', 'batch' (every batch), or an int N (every N training batches).
        histogram_freq: write a histogram of every parameter each `histogram_freq` epochs
            (epochs 0, N, 2N, ...); 0 writes none.
    """

    # After the Recorder (order 50), so an epoch cancelled before validation is complete here too.
    order = 51
    rank_zero_only = True

    def __init__(
        self,
        log_dir: str | os.PathLike = "runs",
        update_freq: str | int = "epoch",
        histogram_freq: int = 0,
    ) -> None:
        check_path("log_dir", log_dir)
        if update_freq == "epoch":
            every = 0
        elif update_freq == "batch":
            every = 1
        else:
            every = check_int("update_freq", update_freq, 1, what=_UPDATE_FREQ)
        check_int("histogram_freq", histogram_freq, 0, typed=True)
        self.log_dir = Path(log_dir)
        self.update_freq = update_freq
        self.histogram_freq = histogram_freq
        self._every = every
        self.writer: Any = None
        self._pending: list[tuple[int, Any, float]] = []

    def before_fit(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoard needs the tensorboard package: pip install 'hookloop[tensorboard]'"
            ) from e
        log_dir = self.log_dir if self.log_dir.is_absolute() else self.learn.path / self.log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._pending = []

    def after_batch(self) -> None:
        learn = self.learn
        if self._every and learn.training and learn.loss is not None:
            if learn.train_iter % self._every == 0:
                lr = learn.opt.param_groups[-1]["lr"]
                self._pending.append((learn.train_iter, learn.loss, lr))
                if len(self._pending) >= 64:
                    self._write_batches()

    def _write_batches(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([loss.detach().float().reshape(()) for _, loss, _ in pending])
        for (step, _, lr), loss in zip(pending, losses.tolist()):
            self.writer.add_scalar("batch/train_loss", loss, step)
            self.writer.add_scalar("batch/lr", lr, step)

    def after_epoch(self) -> None:
        learn = self.learn
        epoch = learn.epoch
        self._write_batches()
        if not learn.recorder.epoch_recorded():
            return
        rec = learn.recorder
        for name in rec.recorded_names():
            self.writer.add_scalar(f"epoch/{name}", float(rec.log[name]), epoch)
        self.writer.add_scalar("epoch/lr", learn.opt.param_groups[-1]["lr"], epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for name, p in unwrap_model(learn.model).named_parameters():
                self.writer.add_histogram(name, p.detach().float().cpu(), epoch)
        self.writer.flush()

    def _close(self) -> None:
        if self.writer is not None:
            self._write_batches()
            self.writer.close()
            self.writer = None

    def after_fit(self) -> None:
        self._close()

    def after_exception(self) -> None:
        self._close()


# fastai v2's name; its first argument (log_dir) means the same.
TensorBoardCallback = TensorBoard

__all__ = ["TensorBoard", "TensorBoardCallback"]
