"""Helpers of the compile tests: the data and MLP learner they train, torch's graph counts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._dynamo.utils import counters

from hookloop import Callback, DataLoaders, Learner, accuracy

# 310 training samples in batches of 16: 20 steps an epoch, the last one of 6 samples;
# validation in batches of 32 with a last one of 4.
N_TRAIN, N_VALID, BS, VALID_BS = 310, 100, 16, 32


def compile_data() -> DataLoaders:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VALID, 8, generator=g)
    y = (x[:, :3] + 0.5 * x[:, 3:6]).argmax(1)
    kw = {"valid_pct": None, "shuffle": False}  # all of each split, in order
    train = DataLoaders.from_tensors(x[:N_TRAIN], y[:N_TRAIN], bs=BS, **kw)
    valid = DataLoaders.from_tensors(x[N_TRAIN:], y[N_TRAIN:], bs=VALID_BS, **kw)
    return DataLoaders(train.train, valid.train)


def mlp_learner(compile: bool | dict, cbs: list | None = None, **attrs: Any) -> Learner:
    """An 8-16-3 MLP (seed 0) on `compile_data()` on the CPU; `attrs` are set on the learner."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, compile_data(), metrics=accuracy, cbs=cbs, device="cpu", compile=compile)
    learn.logger = lambda *a: None
    for k, v in attrs.items():
        setattr(learn, k, v)
    return learn


def weights(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


class GraphCount(Callback):
    """torch's own counts of compiled graphs and compiled frames at the end of each epoch."""

    @staticmethod
    def now() -> tuple[int, int, int]:
        frames = counters["frames"]
        return counters["stats"]["unique_graphs"], frames["total"], frames["ok"]

    def before_fit(self) -> None:
        self.start = self.now()
        self.per_epoch: list[tuple[int, int, int]] = []

    def after_epoch(self) -> None:
        self.per_epoch.append(self.now())
