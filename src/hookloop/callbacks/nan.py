"""TerminateOnNaN: stops the fit after the epoch of the first non-finite training loss."""

from __future__ import annotations

import torch

from .._check import check_int
from ..callback import Callback
from ..distributed import is_distributed, is_rank_zero
from ..events import CancelBatchException, CancelFitException, CancelTrainException


class TerminateOnNaN(Callback):
    """Stops the fit at the first non-finite (NaN or infinite) training loss.

    As in Keras 3, the epoch in which the loss went bad still finishes: its training batches
    end after the bad one, validation runs, and the epoch is recorded with its non-finite
    loss (History, the logs, a CSVLogger row reading `nan`); then no further epoch starts.

    The training loss as recorded (`learn.loss`, unaffected by loss scaling) is checked after
    every `after_loss` handler has run, before backward. On the CPU (single process) each batch
    is checked at once, which costs nothing: the bad batch skips backward and step, so no step
    is taken on the bad loss and the weights stay finite.

    On an accelerator (CUDA, MPS), or under torch.distributed, or with `check_every` set,
    reading a device value on the host each batch would stall the pipeline, so the check stays
    on the device: a non-finite loss sets a device flag and zeroes that batch's gradients
    there (`masked_fill_`, no sync). The optimizer still calls `step()` on the zeroed gradients
    (momentum and weight decay still act; the weights stay finite), and the flag is read once
    at the end of each training epoch, or every `check_every` training batches, where the
    training batches stop (all ranks agree: the flag is reduced with MAX).

    Example:
        learn.fit(10, cbs=TerminateOnNaN())
        learn.fit(10, cbs=TerminateOnNaN(raise_error=True))   # RuntimeError instead

    Args:
        raise_error: raise RuntimeError at once instead of ending the fit gracefully (Keras 3);
            the epoch is not recorded, the fit's `after_fit` handlers do not run,
            `after_exception` does.
        check_every: None: every batch on a single-process CPU run, once per training epoch
            otherwise. An int N: keep the flag on the device and read it every N training
            batches (and at each epoch's end), on any device.
    """

    order = -9

    def __init__(self, raise_error: bool = False, check_every: int | None = None) -> None:
        self.raise_error = bool(raise_error)
        self.check_every = (
            None if check_every is None else check_int("check_every", check_every, 1, typed=True)
        )
        self.stopped_at: tuple[int, int] | None = None  # (epoch, batch of that epoch)
        self._reset()

    def _reset(self) -> None:
        self._on_device: bool | None = None
        self._bad: torch.Tensor | None = None  # this batch's loss is non-finite
        # First bad batch since the fit started, as epoch * 2**32 + batch; -1: none yet.
        self._first: torch.Tensor | None = None
        self._since_read = 0

    def before_fit(self) -> None:
        self.stopped_at = None
        self._reset()

    def before_epoch(self) -> None:
        # Keras: the epoch that saw the bad loss was recorded; no further epoch starts.
        if self.stopped_at is not None:
            raise CancelFitException()

    def before_batch(self) -> None:
        # The bad batch ran its after_batch (the Recorder has its loss); no batch follows it.
        if self.stopped_at is not None and self.learn.training:
            raise CancelTrainException()

    def before_backward(self) -> None:
        learn = self.learn
        loss = learn.loss if isinstance(learn.loss, torch.Tensor) else torch.as_tensor(learn.loss)
        if self._on_device is None:
            self._on_device = (
                self.check_every is not None or loss.device.type != "cpu" or is_distributed()
            )
        if not self._on_device:
            if not bool(torch.isfinite(loss)):  # a CPU tensor: reading it is not a device sync
                self._stop(learn.epoch, learn.iter, f"{float(loss)}")
                raise CancelBatchException()  # no backward, no step on this loss
            return
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss)
        # Python scalars in torch.where need no host-to-device transfer.
        self._code = (learn.epoch << 32) + learn.iter
        self._first = torch.where(bad & (self._first < 0), self._code, self._first)
        self._bad = bad

    def after_backward(self) -> None:
        if self._bad is None:
            return
        grads = [p.grad for g in self.learn.opt.param_groups for p in g["params"]]
        grads = [g for g in grads if g is not None]
        bad = self._bad
        if is_distributed() and grads:
            # DDP has already averaged the gradients, so one rank's non-finite loss is in every
            # rank's gradients: decide on them, or the ranks would step differently and diverge.
            norms = torch.stack(torch._foreach_norm(grads))
            bad = bad | ~torch.isfinite(norms).all()
            self._first = torch.where(bad & (self._first < 0), self._code, self._first)
        for grad in grads:
            grad.masked_fill_(bad, 0.0)
        self._bad = None

    def after_batch(self) -> None:
        if self.check_every is None or not self.learn.training or self._first is None:
            return
        self._since_read += 1
        if self._since_read >= self.check_every:
            self._read()

    def after_train(self) -> None:
        if self._first is not None:
            self._read()

    def _read(self) -> None:
        # The one host-device sync: per epoch, or per `check_every` batches. Every rank reads
        # (the reduction is collective) until the flag is up, then none.
        if self.stopped_at is not None:
            return
        self._since_read = 0
        flag = (self._first >= 0).to(torch.int32)
        if is_distributed():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if bool(flag):
            code = int(self._first)
            if code < 0:  # another rank saw it
                self._stop(self.learn.epoch, -1, "on another rank")
            else:
                self._stop(code >> 32, code & 0xFFFFFFFF, "nan or inf")

    def _stop(self, epoch: int, batch: int, value: str) -> None:
        self.stopped_at = (epoch, batch)
        message = f"Epoch {epoch}, batch {batch}: non-finite training loss ({value}), stopping"
        if self.raise_error:
            raise RuntimeError(f"{message} (NaN or Inf loss encountered)")
        if is_rank_zero():
            self.learn.logger(message)


# fastai spelling.
TerminateOnNaNCallback = TerminateOnNaN

__all__ = ["TerminateOnNaN", "TerminateOnNaNCallback"]
