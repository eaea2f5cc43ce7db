"""EMA: an exponential moving average of the model's weights, optionally used to validate."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._check import check_int, check_number
from .._util import unwrap_model
from ..callback import Callback


class EMA(Callback):
    """Keeps an exponential moving average of the model's weights, optionally used to validate.

    After every `every`-th optimizer step, each floating-point parameter and buffer of the EMA
    copy becomes `decay * ema + (1 - decay) * weight` (integer buffers are copied). The copy is
    made from the model's weights at the start of each `fit` (unless a state was loaded since
    the last fit: then the loaded average continues). With `swap_on_validate` the EMA
    weights are copied into the model for every validation pass (also `validate()` and
    `get_preds()`, like Keras `SwapEMAWeights`) and the training weights put back after it.

    Example:
        learn = Learner(model, dls, cbs=EMA(decay=0.999))
        learn.fit(5)
        preds = learn.ema.model(x)  # inference with the averaged weights

    Args:
        decay: weight of the old average at each update, in [0, 1).
        every: update after every `every` optimizer steps.
        swap_on_validate: validate with the EMA weights.
    """

    def __init__(self, decay: float = 0.999, every: int = 1, swap_on_validate: bool = True) -> None:
        check_number("decay", decay, 0, below=1)
        self.decay = float(decay)
        self.every = check_int("every", every, 1)
        self.swap_on_validate = bool(swap_on_validate)
        self.n_steps = 0
        self._ema_model: nn.Module | None = None
        self._float_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._other_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._backup: list[torch.Tensor] | None = None
        self._skip_step = False
        self._pending: dict | None = None
        self._loaded = False

    @property
    def model(self) -> nn.Module | None:
        """The averaged copy of the model (eval mode, no gradients); None before the first fit."""
        return self._ema_model

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        return list(module.parameters()) + list(module.buffers())

    def _init_from_model(self) -> None:
        source = unwrap_model(self.learn.model)
        ema = copy.deepcopy(source).eval().requires_grad_(False)
        self._ema_model = ema
        self._pair(source)
        self.n_steps = 0

    def _pair(self, source: nn.Module) -> None:
        ema_ts, src_ts = self._tensors(self._ema_model), self._tensors(source)
        floats = [(e, s) for e, s in zip(ema_ts, src_ts) if e.is_floating_point()]
        self._float_pairs = ([e for e, _ in floats], [s.detach() for _, s in floats])
        self._other_pairs = [(e, s) for e, s in zip(ema_ts, src_ts) if not e.is_floating_point()]

    def before_fit(self) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)
        if self._loaded:
            self._loaded = False  # resuming: keep the restored average
            self._pair(unwrap_model(self.learn.model))
        else:
            self._init_from_model()

    def after_cancel_step(self) -> None:
        self._skip_step = True  # the weights did not change (e.g. an fp16 overflow)

    @torch.no_grad()
    def after_step(self) -> None:
        if self._skip_step:
            self._skip_step = False
            return
        self.n_steps += 1
        if self.n_steps % self.every:
            return
        ema_ts, src_ts = self._float_pairs
        if ema_ts:
            torch._foreach_lerp_(ema_ts, src_ts, 1.0 - self.decay)
        for e, s in self._other_pairs:
            e.copy_(s)

    # ---- validation with the averaged weights ----------------------------------------------

    @torch.no_grad()
    def before_validate(self) -> None:
        if not self.swap_on_validate or self._ema_model is None or self._backup is not None:
            return
        source = unwrap_model(self.learn.model)
        src_ts = self._tensors(source)
        self._backup = [t.detach().clone() for t in src_ts]
        for s, e in zip(src_ts, self._tensors(self._ema_model)):
            s.copy_(e)

    @torch.no_grad()
    def _restore(self) -> None:
        if self._backup is None:
            return
        backup, self._backup = self._backup, None
        for s, b in zip(self._tensors(unwrap_model(self.learn.model)), backup):
            s.copy_(b)

    def after_validate(self) -> None:
        self._restore()

    # A cancel or error inside validation skips after_validate; put the weights back anyway.
    def after_epoch(self) -> None:
        self._restore()

    def after_fit(self) -> None:
        self._restore()
        self._loaded = False

    def after_exception(self) -> None:
        self._restore()
        self._loaded = False

    # ---- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self._ema_model is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"model": self._ema_model.state_dict(), "n_steps": self.n_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average; usable at once through `model`, and kept by the next fit."""
        if "model" not in state:
            return
        if self.learn is None:
            self._pending = dict(state)  # applied when the next fit starts
            return
        if self._ema_model is None:
            self._init_from_model()
        self._ema_model.load_state_dict(state["model"])
        self.n_steps = int(state["n_steps"])
        self._loaded = True


__all__ = ["EMA"]
