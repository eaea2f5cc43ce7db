"""Data-mixing callbacks: MixUp and CutMix, with the mixing loss wrapper they share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._check import check_int, check_number
from ..callback import Callback
from ..data import find_bs
from ..learner import Learner


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha) using only `generator` (two Gamma draws)."""
    x = _sample_gamma(alpha, generator)
    y = _sample_gamma(alpha, generator)
    return x / (x + y) if x + y > 0 else 0.5


def _sample_gamma(shape: float, generator: torch.Generator) -> float:
    # Marsaglia and Tsang (2000); for shape < 1, Gamma(a) = Gamma(a + 1) * U ** (1 / a).
    # torch.distributions.Beta cannot take a generator, and the callback owns its random state.
    boost = 1.0
    if shape < 1:
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        boost = u ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = torch.randn((), generator=generator, dtype=torch.float64).item()
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        if u > 0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost


class MixedLoss:
    """The user's loss averaged over the batch's mixture of targets.

    Each mixing callback mixes inputs `x` with `x[perm]` in proportions `lam : 1 - lam` and
    records that with `mix(lam, perm)`; the loss is then `sum_k w_k * loss_func(pred, y[idx_k])`,
    for MixUp alone `lam * L(pred, y) + (1 - lam) * L(pred, y[perm])`. Mixing twice (MixUp and
    CutMix together) composes: four terms. With no mixing recorded it is the plain loss.
    """

    def __init__(self, loss_func: Callable) -> None:
        self.loss_func = loss_func
        self.parts: list[tuple[float, torch.Tensor | None]] | None = None
        self.weights: list[torch.Tensor] = []
        self.indices: list[torch.Tensor | None] = []

    def mix(self, lam: float, perm: torch.Tensor) -> None:
        """Record that sample i is now `lam * sample i + (1 - lam) * sample perm[i]`."""
        parts = self.parts or [(1.0, None)]
        self.parts = [(w * lam, idx) for w, idx in parts] + [
            (w * (1.0 - lam), perm if idx is None else idx[perm]) for w, idx in parts
        ]
        # For a compiled loss (Compile) the weights are tensors, inputs of its graph (a float
        # would be a constant, recompiled for every batch), and the partner indices have a
        # dynamic batch size, like the inputs (the short last batch takes the same graph).
        # A float32 0-dim tensor times a float32 loss is bit-equal to the float times it.
        # `__call__` reads these two lists only: reading `parts` would make the floats guards.
        self.weights = [torch.scalar_tensor(w, dtype=torch.float32) for w, _ in self.parts]
        self.indices = [idx for _, idx in self.parts]
        for idx in self.indices:
            if idx is not None:
                torch._dynamo.maybe_mark_dynamic(idx, 0)

    def reset(self) -> None:
        """Forget the mixing: the next batch's loss is the plain loss until `mix` again."""
        self.parts, self.weights, self.indices = None, [], []

    def __call__(self, pred: Any, *yb: Any) -> torch.Tensor:
        if not self.weights:
            return self.loss_func(pred, *yb)
        total = None
        for w, idx in zip(self.weights, self.indices):
            ys = yb if idx is None else tuple(y[idx] for y in yb)
            term = w * self.loss_func(pred, *ys)
            total = term if total is None else total + term
        return total

    def __getattr__(self, key: str) -> Any:
        # Attributes of the wrapped loss (reduction, activation, ...) stay reachable.
        if key.startswith("__") or key in ("loss_func", "parts", "weights", "indices"):
            raise AttributeError(key)
        return getattr(self.loss_func, key)

    def __repr__(self) -> str:
        return f"MixedLoss({self.loss_func!r})"


class _Mixing(Callback):
    """Shared machinery: own random state, loss swap for training, per-batch mixing."""

    run_valid = False
    # Mix at full precision, before MixedPrecision enters autocast.
    run_before = ("MixedPrecision",)

    def __init__(self, alpha: float, seed: int | None) -> None:
        check_number("alpha", alpha, positive=True, what="a number > 0")
        if seed is None:
            # Follows torch.manual_seed, so a seeded script draws the same mixes.
            seed = int(torch.randint(0, 2**62, (1,)).item())
        else:
            check_int("seed", seed, what="an int or None", typed=True)
        self.alpha = float(alpha)
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.lam: float | None = None
        self.perm: torch.Tensor | None = None

    # Override points (subclass to fix them, e.g. in tests).
    def sample_lam(self) -> float:
        """The mixing proportion of this batch, drawn from Beta(alpha, alpha)."""
        return sample_beta(self.alpha, self.generator)

    def sample_perm(self, n: int) -> torch.Tensor:
        """The partner of each sample: a random permutation of range(n)."""
        return torch.randperm(n, generator=self.generator)

    def mix_inputs(self, xb: tuple, lam: float, perm: torch.Tensor) -> tuple[tuple, float]:
        """Return the mixed inputs and the actual share of the original samples."""
        raise NotImplementedError

    # ---- events ----------------------------------------------------------------------------

    def _mixed_loss(self) -> MixedLoss:
        lf = self.learn.loss_func
        if not isinstance(lf, MixedLoss):
            lf = MixedLoss(lf)
            self.learn.loss_func = lf
        return lf

    def _restore_loss(self) -> None:
        lf = self.learn.loss_func
        if isinstance(lf, MixedLoss):
            self.learn.loss_func = lf.loss_func

    def before_train(self) -> None:
        self._mixed_loss()

    def before_batch(self) -> None:
        learn = self.learn
        if not learn.yb:
            return
        perm = self.sample_perm(find_bs(learn.xb))
        lam = self.sample_lam()
        perm = perm.to(learn.xb[0].device)
        # New tensors: the batch may be a view of the data set's own tensors.
        learn.xb, lam = self.mix_inputs(learn.xb, lam, perm)
        self.lam, self.perm = lam, perm
        self._mixed_loss().mix(lam, perm)

    def after_batch(self) -> None:
        lf = self.learn.loss_func
        if isinstance(lf, MixedLoss):
            lf.reset()

    # Training is over (normally, cancelled, or by an error): give validation the plain loss.
    def after_train(self) -> None:
        self._restore_loss()

    def after_epoch(self) -> None:
        self._restore_loss()

    def after_fit(self) -> None:
        self._restore_loss()

    def after_exception(self) -> None:
        self._restore_loss()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def _check_float(xb: tuple, who: str) -> None:
    for x in xb:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"{who} mixes inputs, so they must be floating-point tensors; got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )


class MixUp(_Mixing):
    """MixUp (Zhang et al. 2018): trains on convex combinations of pairs of samples.

    Each training batch's inputs become `lam * x + (1 - lam) * x[perm]` with
    `lam = max(l, 1 - l)`, `l ~ Beta(alpha, alpha)` (one per batch; as fastai, the original
    sample dominates) and the loss `lam * L(pred, y) + (1 - lam) * L(pred, y[perm])` with the
    user's loss function, for integer class targets and one-hot/soft targets alike. `learn.yb`
    keeps the original targets, so training metrics compare with them (as fastai). Validation
    uses the plain loss.

    Example:
        learn = Learner(model, dls, cbs=MixUp(0.4))
        learn = Learner(model, dls).mixup()  # fastai v1 spelling

    Args:
        alpha: the Beta distribution's parameter; small values mix little.
        seed: seed of the callback's own generator (None: drawn from torch's global RNG).

    Attributes:
        lam, perm: this batch's proportion and partner indices.
    """

    def __init__(self, alpha: float = 0.4, seed: int | None = None) -> None:
        super().__init__(alpha, seed)

    def sample_lam(self) -> float:
        lam = super().sample_lam()
        return max(lam, 1.0 - lam)

    def mix_inputs(self, xb: tuple, lam: float, perm: torch.Tensor) -> tuple[tuple, float]:
        _check_float(xb, "MixUp")
        return tuple(torch.lerp(x[perm], x, lam) for x in xb), lam


class CutMix(_Mixing):
    """CutMix (Yun et al. 2019): pastes a random box of a partner sample into each sample.

    The box covers a share `1 - l`, `l ~ Beta(alpha, alpha)`, of the spatial size (all dims
    after the channel dim: `(N, C, H, W)` images, `(N, C, L)` sequences), centred uniformly at
    random and cut off at the borders; `lam` is then the share actually kept. The loss is
    `lam * L(pred, y) + (1 - lam) * L(pred, y[perm])` with the user's loss function;
    validation uses the plain loss.

    Example:
        learn = Learner(model, dls, cbs=CutMix(1.0))

    Args:
        alpha: the Beta distribution's parameter (1.0: the box share is uniform).
        seed: seed of the callback's own generator (None: drawn from torch's global RNG).

    Attributes:
        lam, perm, box: this batch's kept share, partner indices and box (slices).
    """

    def __init__(self, alpha: float = 1.0, seed: int | None = None) -> None:
        super().__init__(alpha, seed)
        self.box: tuple[slice, ...] | None = None

    def sample_box(self, spatial: tuple[int, ...], lam: float) -> tuple[slice, ...]:
        """A box over the spatial dims holding about `1 - lam` of the cells."""
        side = (1.0 - lam) ** (1.0 / len(spatial))
        box = []
        for size in spatial:
            cut = int(size * side)
            centre = int(torch.randint(0, size, (), generator=self.generator).item())
            lo = min(max(centre - cut // 2, 0), size)
            hi = min(max(centre - cut // 2 + cut, 0), size)
            box.append(slice(lo, hi))
        return tuple(box)

    def mix_inputs(self, xb: tuple, lam: float, perm: torch.Tensor) -> tuple[tuple, float]:
        _check_float(xb, "CutMix")
        spatial = tuple(xb[0].shape[2:])
        for x in xb:
            if x.ndim < 3 or tuple(x.shape[2:]) != spatial:
                raise ValueError(
                    f"CutMix needs inputs shaped (N, C, *spatial) with the same spatial size; "
                    f"got shapes {[tuple(t.shape) for t in xb]}"
                )
        box = self.sample_box(spatial, lam)
        self.box = box
        index = (slice(None), slice(None), *box)
        out = []
        for x in xb:
            mixed = x.clone()
            mixed[index] = x[perm][index]
            out.append(mixed)
        area = math.prod(s.stop - s.start for s in box)
        return tuple(out), 1.0 - area / math.prod(spatial)


# ---- Learner shortcuts: fastai v1's learn.mixup() ----


def mixup(self: Learner, alpha: float = 0.4, seed: int | None = None) -> Learner:
    """Train with MixUp (fastai v1's `learn.mixup()`); returns the learner."""
    self.remove_cb(MixUp)
    return self.add_cb(MixUp(alpha, seed=seed))


Learner.mixup = mixup

__all__ = ["MixUp", "CutMix", "MixedLoss", "sample_beta"]
