"""Compile: trains with torch.compile, the events still firing between compiled regions."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._util import output_logits, unwrap_model
from ..callback import Callback, handler_of
from ..learner import Learner

# What a callback may ask to keep eager with `compile_eager = ("forward",)` on its class.
REGIONS = {
    "forward": "the forward pass and the loss (and their backward)",
    "step": "the optimizer step",
}
_COMPILE_ARGS = tuple(p for p in inspect.signature(torch.compile).parameters if p != "model")
# torch >= 2.13: each torch.compile call keeps its own graphs and recompile count, so one
# learner's graphs (or many learners in one process) never use up another's limit.
_ISOLATE = {"isolate_recompiles": True} if "isolate_recompiles" in _COMPILE_ARGS else {}


def _forward_loss(model: Any, loss_func: Any, pred_key: Any, xb: Any, yb: tuple) -> tuple:
    # What Learner._forward_loss computes for a model, a loss_func and targets, in one graph.
    pred = model(*xb) if type(xb) is tuple else model(**xb)
    if not yb:
        return pred, None
    return pred, loss_func(pred if type(pred) is Tensor else output_logits(pred, pred_key), *yb)


def _call_module(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # `module(*args)` without its `_compiled_call_impl`, which is this function compiled.
    return module._call_impl(*args, **kwargs)


def _step(eager_step: Any) -> None:
    eager_step()


def _mark_batch_dim(*batches: Any) -> None:
    # Dimension 0 of every input and target tensor is the batch size; "maybe": a model that
    # needs a fixed size specializes it instead of failing.
    for part in batches:
        for t in part.values() if isinstance(part, dict) else part:
            if type(t) is Tensor and t.ndim:
                torch._dynamo.maybe_mark_dynamic(t, 0)


# The hyper-parameters schedules change at every step, as tensors inside the compiled step
# (torch's compiled-optimizer recipe): a float is a constant of the graph, and a new value
# would recompile it.
_TENSOR_HYPERS = ("lr", "betas")


class _HyperTensors:
    """0-dim tensors holding an optimizer's `lr` and `betas`, put into its param groups for the
    compiled step only: outside it (schedules, the Recorder, state_dict) they stay floats."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.tensors: list[dict[str, Any]] = []
        self.values: list[dict[str, Any]] = []  # what the tensors hold

    def _tensors_for(self, group: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _TENSOR_HYPERS:
            v = group.get(key)
            if isinstance(v, float):
                out[key] = torch.tensor(v, dtype=torch.float32)
            elif isinstance(v, tuple) and v and all(isinstance(b, float) for b in v):
                out[key] = tuple(torch.tensor(b, dtype=torch.float32) for b in v)
        return out

    def swap_in(self) -> list[dict[str, Any]]:
        groups = self.opt.param_groups
        if len(self.tensors) != len(groups):
            self.tensors = [self._tensors_for(g) for g in groups]
            self.values = [{} for _ in groups]
        saved = []
        for group, tensors, values in zip(groups, self.tensors, self.values):
            old = {}
            for key, t in tensors.items():
                v = old[key] = group[key]
                if values.get(key) != v:  # a fill is a kernel launch: only on a change
                    values[key] = v
                    if isinstance(t, tuple):
                        for ti, vi in zip(t, v):
                            ti.fill_(vi)
                    else:
                        t.fill_(v)
                group[key] = t
            saved.append(old)
        return saved

    def swap_out(self, saved: list[dict[str, Any]]) -> None:
        for group, old in zip(self.opt.param_groups, saved):
            group.update(old)


# torch's fused CPU kernels (torch >= 2.4) make one pass over each parameter and its state.
# Measured here (one thread, 1.1M parameters): AdamW 0.60 ms fused, 1.81 ms compiled, 2.24 ms
# eager; Adam 0.60 / 1.62 / 1.93; SGD with momentum 0.21 / 0.31 / 0.66. Exact types: a subclass
# may change `step`. Elsewhere (CUDA) the compiled step is torch's documented recipe.
_FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _fusable(opt: Any) -> bool:
    """Whether `opt` can take its steps with torch's fused CPU kernel: an Adam, AdamW or SGD
    whose parameters are all floating point on the CPU, not made differentiable or capturable,
    and not explicitly `fused=False` by the user."""
    if type(opt) not in _FUSED_ON_CPU:
        return False
    for group in opt.param_groups:
        if group.get("fused") is False:  # torch's default is None: False is the user's choice
            return False
        if group.get("differentiable") or group.get("capturable"):
            return False
        for p in group["params"]:
            if p.device.type != "cpu" or not p.is_floating_point():
                return False
    return True


# Below this many parameter elements the compiled step is faster: its guards cost less than
# the eager `Optimizer.step` machinery around the fused kernel. Measured in the loop (AdamW, one
# thread, us per training step, fused / compiled): 1.4K elements 418 / 385; 26K 628 / 624;
# 85K 971 / 1042; 301K 2286 / 2743; 1.1M (benchmarks/compile.py) about 0.6 / 1.8 ms per step.
FUSED_MIN_ELEMENTS = 1 << 15

_STEP_CHOICES = (True, False, "fused", "compiled")


def _step_kind(opt: Any, step: bool | str) -> str:
    """How `Compile(step=...)` runs this optimizer's step: "fused", "compiled" or "eager"."""
    if step is False:
        return "eager"
    if step == "compiled":
        return "compiled"
    fusable = _fusable(opt)
    if step == "fused":
        if not fusable:
            raise ValueError(
                f"Compile(step='fused'): torch's fused CPU kernel takes an Adam, AdamW or SGD "
                f"with floating-point parameters on the CPU, not differentiable, capturable or "
                f"made with fused=False; got {type(opt).__name__} (use step=True or 'compiled')"
            )
        return "fused"
    n = sum(p.numel() for g in opt.param_groups for p in g["params"]) if fusable else 0
    return "fused" if n >= FUSED_MIN_ELEMENTS else "compiled"


def _fused_step(opt: torch.optim.Optimizer) -> Any:
    """`opt.step` with `fused=True` for the call only: state dicts and the optimizer outside the
    fit stay as the user made them (the state tensors are the same either way)."""
    eager = opt.step
    # Fused SGD takes no sparse gradients (nn.Embedding(sparse=True)): looked at in the first
    # step only, since a parameter's gradients are sparse at every step or at none.
    sparse: bool | None = None if type(opt) is torch.optim.SGD else False  # None: not seen yet

    def step(closure: Any = None) -> Any:
        nonlocal sparse
        # Read at each step: load_state_dict (a resume) replaces the list of groups.
        groups = opt.param_groups
        if sparse is None:
            grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
            if not grads:  # gradients made by a closure: this step stays torch's own
                return eager(closure)
            sparse = any(grad.is_sparse for grad in grads)
        if sparse:
            return eager(closure)
        saved = [(g.get("fused"), g.get("foreach")) for g in groups]
        for g in groups:
            g["fused"], g["foreach"] = True, False
        try:
            return eager(closure)
        finally:
            for g, (fused, foreach) in zip(groups, saved):
                g["fused"], g["foreach"] = fused, foreach

    return step


def _eager_random(kwargs: dict[str, Any]) -> dict[str, Any]:
    """torch.compile arguments with inductor's `fallback_random` on, unless the user chose it,
    a `mode` (torch takes a mode or options, not both) or another backend.

    Inductor draws dropout's (and every random op's) numbers its own way: a compiled BERT's
    losses then differ from eager by 3% after 3 epochs, and a checkpoint moved between eager and
    compiled continues with other random numbers. With the fallback, the random ops are torch's
    own, from the same generator: compiled and eager agree within 2e-7."""
    if kwargs.get("mode") is not None or kwargs.get("backend", "inductor") != "inductor":
        return dict(kwargs)
    options = dict(kwargs.get("options") or {})
    options.setdefault("fallback_random", True)
    return {**kwargs, "options": options}


def _eager_requests(cbs: list[Callback]) -> dict[str, list[str]]:
    """Region -> names of the callbacks whose class asks for it to run eagerly."""
    out: dict[str, list[str]] = {}
    for cb in cbs:
        regions = getattr(type(cb), "compile_eager", ())
        for region in (regions,) if isinstance(regions, str) else regions:
            if region not in REGIONS:
                raise ValueError(
                    f"{type(cb).__name__}.compile_eager: unknown region {region!r}; "
                    f"regions are {tuple(REGIONS)}"
                )
            out.setdefault(region, []).append(type(cb).__name__)
    return out


class Compile(Callback):
    """Trains with `torch.compile`: what the fit's callbacks leave free runs as compiled graphs.

    Decided at the start of each fit, from the callbacks attached then:
    - forward and loss as one graph (AOTAutograd compiles their backward with it), when no
      callback handles `after_pred`, the model is not wrapped (DistributedDataParallel) and there
      is a `loss_func`: the loop calls it through `learn.forward_loss_fn`. Otherwise the model
      alone is compiled in place (the module inside DDP, so each rank compiles its own) and the
      loss runs eagerly, so a callback that changes `learn.pred` still decides the loss;
    - the optimizer step: torch's compiled-optimizer recipe (`opt.step()` inside
      `torch.compile`, the learning rate and betas as tensors, so a schedule changing them does
      not recompile), or for an Adam, AdamW or SGD on the CPU with at least FUSED_MIN_ELEMENTS
      (32768) parameter elements torch's fused kernel (`fused=True` for the fit's steps only:
      3x faster than the compiled step on large models, slower on small ones). An optimizer made
      with `fused=False` gets the compiled step.
    Random ops (dropout) draw the same numbers as eager (inductor's `fallback_random`, unless
    a `mode` or `options={"fallback_random": False}` is given), so dropout models match eager
    and resume across eager and compiled exactly.
    Every event still fires, in order, between the compiled regions (a callback changing
    `learn.loss` in `after_loss` works as without Compile). The graphs are kept across fits and
    the model and optimizer are left as they were after each fit (`validate()` and `get_preds()`
    outside a fit run eagerly); checkpoints hold the plain state dicts, interchangeable with eager.
    Shapes: the last, shorter batch makes torch recompile once with a dynamic batch size
    (`dynamic=None`, torch's automatic dynamic shapes; no padding, which would change the loss and
    BatchNorm statistics); validation (no_grad, eval mode) gets its graphs in the first epoch. No
    recompilation follows the first epoch. A callback whose class sets `compile_eager =
    ("forward",)` or `("step",)` keeps that region eager for the fit, with one warning naming it;
    so does an optimizer that is not a `torch.optim.Optimizer`. On CUDA, `mode="reduce-overhead"`
    (CUDA graphs) is the choice for small batches: the outputs are then copied out of the graph's
    memory so the Recorder may keep them.

    Example:
        learn = Learner(model, dls, metrics=accuracy)
        learn.compile()  # or Learner(..., compile=True), or cbs=Compile(mode="max-autotune")
        learn.fit(3)

    Args:
        step: True: the optimizer step as the faster of torch's fused kernel and the compiled
            step (see above); "fused" or "compiled" to choose; False: leave it eager.
        **torch_compile_kwargs: passed to `torch.compile` (`mode`, `dynamic`, `fullgraph`,
            `backend`, `options`, ...).

    Attributes (the callback is `learn.compiler`; `learn.compile` is the method):
        regions: what ran compiled in the current (or last) fit: `{"forward": "forward+loss" |
            "forward" | "eager", "step": "fused" | "compiled" | "eager"}` (a model the user compiled
            before is left as it is).
    """

    order = 90  # before_fit after the DistributedTrainer (-20) has wrapped the model

    def __init__(self, step: bool | str = True, **torch_compile_kwargs: Any) -> None:
        unknown = sorted(set(torch_compile_kwargs) - set(_COMPILE_ARGS))
        if unknown:
            raise ValueError(
                f"Compile: unknown torch.compile argument(s) {unknown}; torch.compile takes "
                f"{list(_COMPILE_ARGS)}"
            )
        if not any(step is c or (isinstance(c, str) and step == c) for c in _STEP_CHOICES):
            raise ValueError(
                f"Compile: step must be True (torch's fused kernel or the compiled step, "
                f"whichever is faster), 'fused', 'compiled' or False, got {step!r}"
            )
        self.compile_step = step
        self._name = "compiler"  # `learn.compile` is the method that adds this callback
        self.compile_kwargs = {**_ISOLATE, **_eager_random(torch_compile_kwargs)}
        self._copy_outputs = torch_compile_kwargs.get("mode") == "reduce-overhead"
        # Unless the user chose, the batch dimension is dynamic from the first batch: one graph
        # for full and last batches, the same graphs whichever epoch a (resumed) fit starts at.
        self._mark_batch = "dynamic" not in torch_compile_kwargs
        self._compiled_forward_loss = torch.compile(_forward_loss, **self.compile_kwargs)
        self._compiled_call = torch.compile(_call_module, **self.compile_kwargs)
        self._step_for: tuple | None = None  # (optimizer, its compiled step, _HyperTensors)
        self._module: nn.Module | None = None  # the module compiled in place, to restore
        self._opt: Any = None  # the optimizer whose step is ours, to restore
        self._opt_step: Any = None  # what its instance had as `step` before (usually nothing)
        self.regions: dict[str, str] = {}

    # ---- the compiled regions --------------------------------------------------------------

    def _fused(self, xb: Any, yb: tuple) -> tuple:
        learn = self.learn
        if self._mark_batch:
            _mark_batch_dim(xb, yb)
        pred, loss = self._compiled_forward_loss(
            learn.model, learn.loss_func, learn.pred_key, xb, yb
        )
        if self._copy_outputs:  # CUDA graphs overwrite their outputs at the next replay
            pred = pred.clone() if type(pred) is Tensor else pred
            loss = loss.clone() if loss is not None else loss
        return pred, loss

    def _module_call(self, module: nn.Module) -> Any:
        compiled, mark = self._compiled_call, self._mark_batch

        def call(*args: Any, **kwargs: Any) -> Any:
            if mark:
                _mark_batch_dim(args, kwargs)
            return compiled(module, *args, **kwargs)

        return call

    def _compiled_step(self, opt: torch.optim.Optimizer) -> Any:
        if self._step_for is None or self._step_for[0] is not opt:
            self._step_for = (opt, torch.compile(_step, **self.compile_kwargs), _HyperTensors(opt))
        _, compiled, hypers = self._step_for
        eager = opt.step

        def step(closure: Any = None) -> Any:
            if closure is not None:  # a closure re-evaluates the model: torch's own step
                return eager(closure)
            saved = hypers.swap_in()
            try:
                compiled(eager)
            finally:
                hypers.swap_out(saved)

        return step

    # ---- install for the fit, restore after it --------------------------------------------

    def before_fit(self) -> None:
        learn = self.learn
        eager = _eager_requests(learn.cbs)
        opt = learn.opt
        compile_step = self.compile_step is not False
        if compile_step and "step" not in eager and not isinstance(opt, torch.optim.Optimizer):
            eager["step"] = [f"the optimizer {type(opt).__name__} (not a torch.optim.Optimizer)"]
        for region, who in eager.items():
            if region == "step" and not compile_step:
                continue
            warnings.warn(
                f"Compile: {REGIONS[region]} run eagerly in this fit: {', '.join(who)} cannot "
                f"run compiled",
                stacklevel=2,
            )
        self.regions = {"forward": "eager", "step": "eager"}
        if "forward" not in eager:
            self._install_forward()
        if compile_step and "step" not in eager:
            kind = _step_kind(opt, self.compile_step)
            self._opt, self._opt_step = opt, opt.__dict__.get("step")
            opt.step = _fused_step(opt) if kind == "fused" else self._compiled_step(opt)
            self.regions["step"] = kind

    def _install_forward(self) -> None:
        learn = self.learn
        model, module = learn.model, unwrap_model(learn.model)
        if module is not model and not isinstance(model, nn.parallel.DistributedDataParallel):
            return  # a model the user compiled (`torch.compile(model)`) or wrapped already
        if getattr(module, "_compiled_call_impl", None) is not None:
            self.regions["forward"] = "forward (the user's model.compile())"
            return
        fuse = (
            model is module
            and learn.loss_func is not None
            and not any(handler_of(cb, "after_pred") for cb in learn.cbs)
        )
        if fuse:
            learn.forward_loss_fn = self._fused
            self.regions["forward"] = "forward+loss"
        else:
            module._compiled_call_impl = self._module_call(module)
            self._module = module
            self.regions["forward"] = "forward"

    def _restore(self) -> None:
        learn = self.learn
        if learn is not None and learn.forward_loss_fn == self._fused:
            learn.forward_loss_fn = None
        if self._module is not None:
            self._module._compiled_call_impl = None
            self._module = None
        if self._opt is not None:
            if self._opt_step is None:
                self._opt.__dict__.pop("step", None)
            else:
                self._opt.step = self._opt_step
            self._opt = self._opt_step = None

    def after_fit(self) -> None:
        self._restore()

    def after_exception(self) -> None:
        self._restore()


def compile_learner(self: Learner, step: bool | str = True, **torch_compile_kwargs: Any) -> Learner:
    """Train with `torch.compile` (adds a `Compile` callback, replacing any)."""
    self.remove_cb(Compile)
    return self.add_cb(Compile(step=step, **torch_compile_kwargs))


Learner.compile = compile_learner

__all__ = ["Compile"]
