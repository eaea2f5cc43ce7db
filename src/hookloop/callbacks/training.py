"""Training techniques as callbacks: MixedPrecision, GradientClip, GradientAccumulation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._check import check_int, check_number, is_number
from ..callback import Callback
from ..data import find_bs
from ..events import CancelBatchException, CancelStepException
from ..learner import Learner

_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class MixedPrecision(Callback):
    """Runs the forward pass and the loss under `torch.autocast`; float16 adds a GradScaler.

    Autocast is entered in `before_batch` and left in `after_loss`, so backward and the step run
    outside it. With float16 the scaler multiplies `loss_grad` in `before_backward`, unscales the
    gradients in `before_step` (so GradientClip, which runs after it, sees true gradients), and
    when they hold inf/NaN cancels the step (`CancelStepException`: the loop still zeroes the
    gradients) and lowers the scale; `scaler.update()` runs in `after_batch`, only for batches
    that reached the step. The inf check reads one flag per optimizer step from the device, as
    `GradScaler.step` does. bfloat16 needs no scaler and no read.

    Example:
        learn = Learner(model, dls, cbs=MixedPrecision(torch.bfloat16))
        learn.to_fp16()  # the same with float16 and a GradScaler

    Args:
        dtype: `torch.float16` (with a GradScaler) or `torch.bfloat16` (without); the strings
            'fp16' and 'bf16' work too.
        init_scale: the GradScaler's first loss scale (float16 only).
        growth_factor: the scale is multiplied by it after `growth_interval` finite steps.
        backoff_factor: the scale is multiplied by it after a step with inf/NaN gradients.
        growth_interval: number of consecutive finite steps before the scale grows.
    """

    def __init__(
        self,
        dtype: torch.dtype | str = torch.float16,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if isinstance(dtype, str):
            if dtype.lower() not in _DTYPES:
                raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype!r}")
            dtype = _DTYPES[dtype.lower()]
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype!r}")
        check_number("init_scale", init_scale, positive=True, what="> 0")
        # An infinite factor would make the scale infinite after `growth_interval` steps.
        if not (is_number(growth_factor) and 1 < growth_factor < math.inf):
            raise ValueError(f"growth_factor must be a finite number > 1, got {growth_factor!r}")
        check_number("backoff_factor", backoff_factor, positive=True, below=1, what="in (0, 1)")
        self.dtype = dtype
        self.scaler_kwargs = {
            "init_scale": init_scale,
            "growth_factor": growth_factor,
            "backoff_factor": backoff_factor,
            "growth_interval": check_int("growth_interval", growth_interval, 1),
        }
        self.scaler: torch.amp.GradScaler | None = None
        self._pending_scaler_state: dict | None = None
        self._autocast: Any = None
        self._autocast_device = ""
        self._active: Any = None
        self._unscaled = False

    @property
    def uses_scaler(self) -> bool:
        """True for float16, whose small range needs loss scaling."""
        return self.dtype == torch.float16

    def _get_scaler(self) -> torch.amp.GradScaler:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.learn.device.type, **self.scaler_kwargs)
            if self._pending_scaler_state is not None:
                self.scaler.load_state_dict(self._pending_scaler_state)
                self._pending_scaler_state = None
        return self.scaler

    # ---- autocast around forward and loss --------------------------------------------------

    def before_batch(self) -> None:
        device_type = self.learn.device.type
        if self._autocast is None or self._autocast_device != device_type:
            self._autocast = torch.autocast(device_type, dtype=self.dtype)
            self._autocast_device = device_type
        self._exit_autocast()
        self._autocast.__enter__()
        self._active = self._autocast

    def after_loss(self) -> None:
        self._exit_autocast()

    def _exit_autocast(self) -> None:
        # Idempotent: every path out of a batch (loss computed, cancel, error) calls it.
        if self._active is not None:
            active, self._active = self._active, None
            active.__exit__(None, None, None)

    # A cancel or error raised between before_batch and after_loss skips after_loss; these
    # events are the ones that still fire on each such path.
    def after_cancel_batch(self) -> None:
        self._exit_autocast()

    def after_train(self) -> None:
        self._exit_autocast()

    def after_validate(self) -> None:
        self._exit_autocast()

    def after_epoch(self) -> None:
        self._exit_autocast()

    def after_fit(self) -> None:
        self._exit_autocast()
        self._update_scaler()

    def after_exception(self) -> None:
        self._exit_autocast()
        self._update_scaler()

    # ---- float16 loss scaling --------------------------------------------------------------

    def before_fit(self) -> None:
        if self.uses_scaler:
            self._get_scaler()

    def before_backward(self) -> None:
        if self.uses_scaler:
            # A new tensor: learn.loss shares storage with loss_grad and must stay unscaled.
            self.learn.loss_grad = self._get_scaler().scale(self.learn.loss_grad)

    def before_step(self) -> None:
        if not self.uses_scaler:
            return
        scaler = self._get_scaler()
        self._update_scaler()  # a previous step that never reached after_batch
        scaler.unscale_(self.learn.opt)
        self._unscaled = True
        # GradScaler.step makes the same host read to decide whether to skip the step.
        found_inf = scaler._found_inf_per_device(self.learn.opt)
        if sum(v.item() for v in found_inf.values()):
            raise CancelStepException()

    def after_batch(self) -> None:
        self._exit_autocast()
        self._update_scaler()

    def _update_scaler(self) -> None:
        if self._unscaled:
            self._unscaled = False
            self.scaler.update()

    def state_dict(self) -> dict:
        if self.scaler is not None:
            return {"scaler": self.scaler.state_dict()}
        if self._pending_scaler_state is not None:
            return {"scaler": dict(self._pending_scaler_state)}
        return {}

    def load_state_dict(self, state: dict) -> None:
        if "scaler" not in state:
            return
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        else:
            self._pending_scaler_state = dict(state["scaler"])


class GradientClip(Callback):
    """Clips the gradients before each optimizer step (after MixedPrecision has unscaled them).

    Example:
        learn = Learner(model, dls, cbs=GradientClip(max_norm=1.0))

    Args:
        max_norm: the total norm of all gradients is scaled down to at most this value
            (`torch.nn.utils.clip_grad_norm_`); None: no norm clipping.
        norm_type: the p of the p-norm (2.0; `float('inf')` for the max-norm).
        clip_value: also clamp every gradient element to [-clip_value, clip_value], before the
            norm clipping; None: no value clipping.

    Attributes:
        last_norm: the total gradient norm before clipping at the last step (a tensor, left on
            the device), or None.
    """

    run_after = ("MixedPrecision", "GradientAccumulation")

    def __init__(
        self,
        max_norm: float | None = 1.0,
        norm_type: float = 2.0,
        clip_value: float | None = None,
    ) -> None:
        if max_norm is None and clip_value is None:
            raise ValueError("GradientClip needs max_norm or clip_value; got None for both")
        # An infinite norm_type is the max-norm; an infinite bound records the norm unclipped.
        what = "a number > 0 (or inf)"
        if max_norm is not None:
            check_number("max_norm", max_norm, positive=True, what=what, finite=False)
        check_number("norm_type", norm_type, positive=True, what=what, finite=False)
        if clip_value is not None:
            check_number("clip_value", clip_value, positive=True, what=what, finite=False)
        self.max_norm, self.norm_type, self.clip_value = max_norm, float(norm_type), clip_value
        self.last_norm: torch.Tensor | None = None

    def before_step(self) -> None:
        params = [p for g in self.learn.opt.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        if self.clip_value is not None:
            nn.utils.clip_grad_value_(params, self.clip_value)
        if self.max_norm is not None:
            self.last_norm = nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)


class GradientAccumulation(Callback):
    """Steps the optimizer only once enough samples (or micro-batches) have been accumulated.

    Each micro-batch's `loss_grad` is scaled by `bs / n_acc` (or `1 / steps`), so SGD over
    micro-batches of 16 with `n_acc=32` gives the weights of one step on the 32 samples. Until
    then `before_step` raises CancelBatchException (as fastai), which skips the step and
    zero_grad, so the gradients add up. The recorded `loss` stays unscaled. The count carries
    over epoch boundaries (as fastai); a partial accumulation left at the end of `fit` is
    discarded (the gradients are zeroed), so it never leaks into a later fit. Under
    DistributedDataParallel the micro-batches that do not step run in `no_sync()`: their
    gradients add up on each rank and are all-reduced once, with the stepping micro-batch.

    Example:
        learn = Learner(model, DataLoaders.from_tensors(x, y, bs=16),
                        cbs=GradientAccumulation(n_acc=64))  # one step per 64 samples

    Args:
        n_acc: samples per optimizer step (fastai's meaning; default 32). A step is taken at
            the first micro-batch that brings the count to `n_acc` or more.
        steps: micro-batches per optimizer step, instead of `n_acc`.
    """

    run_before = ("MixedPrecision", "GradientClip")
    run_valid = False

    def __init__(self, n_acc: int | None = None, steps: int | None = None) -> None:
        if n_acc is not None and steps is not None:
            raise ValueError(f"pass n_acc or steps, not both; got n_acc={n_acc!r}, steps={steps!r}")
        if steps is not None:
            self.n_acc, self.steps = None, check_int("steps", steps, 1)
        else:
            self.n_acc, self.steps = check_int("n_acc", 32 if n_acc is None else n_acc, 1), None
        self.count = 0
        self._pending: dict | None = None
        self._loaded = False
        self._no_sync: Any = None  # DDP's no_sync context while a non-stepping batch runs

    def _size(self) -> int:
        return 1 if self.steps is not None else find_bs(self.learn.yb)

    @property
    def target(self) -> int:
        """The count (samples, or micro-batches with `steps=`) that triggers a step."""
        return self.steps if self.steps is not None else self.n_acc

    def _reset(self) -> None:
        self.count = 0
        if self.learn.opt is not None:
            self.learn.opt.zero_grad()

    def before_fit(self) -> None:
        self._check_reachable()
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._reset()
            self.load_state_dict(state)
        if self._loaded:
            self._loaded = False  # resuming: keep the restored count and gradients
        else:
            self._reset()  # drop gradients a previous, interrupted fit left behind

    def _check_reachable(self) -> None:
        # A target the whole fit cannot reach trains every epoch with no optimizer step.
        learn = self.learn
        batches = learn.total_iters
        if batches is None:  # a stream with no length: the fit's size is unknown
            return
        if self.steps is not None:
            if self.steps > batches:
                raise ValueError(
                    f"GradientAccumulation: steps={self.steps} micro-batches per optimizer step, "
                    f"but this fit has {batches} training batches: no step would ever be taken; "
                    f"lower steps or train longer"
                )
            return
        train = learn.dls.train
        bs = getattr(train, "bs", None) or getattr(train, "batch_size", None)
        if not isinstance(bs, int):
            return
        most = batches * bs  # at most this many samples reach the accumulation in this fit
        if self.n_acc > most:
            raise ValueError(
                f"GradientAccumulation: n_acc={self.n_acc} samples per optimizer step, but this "
                f"fit sees at most {most} training samples ({batches} batches of at most {bs}): "
                f"no step would ever be taken; lower n_acc (or use steps=) or train longer"
            )

    def after_fit(self) -> None:
        self._reset()
        self._loaded = False

    def after_exception(self) -> None:
        self._loaded = False  # the next fit starts clean
        self._leave_no_sync()

    def before_batch(self) -> None:
        # DDP decides in the forward pass whether the backward all-reduces, so no_sync is
        # entered before it, for a micro-batch that will not reach the step.
        model = self.learn.model
        if isinstance(model, nn.parallel.DistributedDataParallel):
            if self.count + self._size() < self.target:
                self._no_sync = model.no_sync()
                self._no_sync.__enter__()

    def after_batch(self) -> None:
        self._leave_no_sync()

    def _leave_no_sync(self) -> None:
        if self._no_sync is not None:
            context, self._no_sync = self._no_sync, None
            context.__exit__(None, None, None)

    def before_backward(self) -> None:
        # A new tensor: learn.loss shares storage with loss_grad and must stay unscaled.
        self.learn.loss_grad = self.learn.loss_grad * (self._size() / self.target)

    def before_step(self) -> None:
        self.count += self._size()
        if self.count < self.target:
            raise CancelBatchException()
        self.count = 0

    def state_dict(self) -> dict:
        """The micro-step count. The accumulated gradients belong to the training state that
        BackupAndRestore's checkpoints save (with the weights); restored together, a resume in
        the middle of an accumulation is exact."""
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if self.learn is None:
            self._pending = dict(state)  # applied when the next fit starts
            return
        self._loaded = True
        self.count = int(state["count"])


# ---- Learner shortcuts: fastai's precision switches ----


def to_fp16(self: Learner, **kwargs: Any) -> Learner:
    """Train with float16 autocast and a GradScaler (replaces any MixedPrecision)."""
    self.remove_cb(MixedPrecision)
    return self.add_cb(MixedPrecision(torch.float16, **kwargs))


def to_bf16(self: Learner) -> Learner:
    """Train with bfloat16 autocast (replaces any MixedPrecision)."""
    self.remove_cb(MixedPrecision)
    return self.add_cb(MixedPrecision(torch.bfloat16))


def to_fp32(self: Learner) -> Learner:
    """Train in float32 again: remove MixedPrecision."""
    return self.remove_cb(MixedPrecision)


Learner.to_fp16 = to_fp16
Learner.to_bf16 = to_bf16
Learner.to_fp32 = to_fp32

__all__ = ["MixedPrecision", "GradientClip", "GradientAccumulation"]
