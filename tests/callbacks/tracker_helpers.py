"""Helpers of the tracker, saving and nan tests: scripted metric values, weights, a learner."""

from __future__ import annotations

import torch
from torch import nn

from hookloop import Callback, DataLoaders, Learner, Metric, ProgressBar


class Scripted(Metric):
    """A validation value that is `values[epoch]`, so trackers see exactly these numbers."""

    def __init__(self, values, name="scripted_loss", higher_is_better=None):
        self.values = list(values)
        self._name = name
        self.higher_is_better = higher_is_better
        self._epoch = 0

    def reset(self):
        pass

    def accumulate(self, learn):
        self._epoch = learn.epoch

    @property
    def value(self):
        return float(self.values[self._epoch])

    @property
    def name(self):
        return self._name


class Weights(Callback):
    """Keeps a copy of the weights at the end of every epoch (and optionally every step)."""

    def __init__(self, per_step=False):
        self.per_epoch, self.per_step, self.steps = {}, [], 0
        self._per_step = per_step

    def after_step(self):
        self.steps += 1
        if self._per_step:
            self.per_step.append(_weights(self.learn.model))

    def after_epoch(self):
        self.per_epoch[self.learn.epoch] = _weights(self.learn.model)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_learner(
    metrics=None,
    n_train=8,
    bs=4,
    x_train=None,
    opt_func=torch.optim.AdamW,
    valid=True,
    **kw,
):
    """Linear(4, 2) on n_train/bs training batches and one validation batch (none with
    valid=False); logs captured."""
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(n_train, 4, generator=g) if x_train is None else x_train
    yt = torch.randint(0, 2, (len(xt),), generator=g)
    xv, yv = torch.randn(4, 4, generator=g), torch.randint(0, 2, (4,), generator=g)
    valid_set = (xv, yv) if valid else None
    dls = DataLoaders.from_tensors(xt, yt, valid=valid_set, valid_pct=None, bs=bs, shuffle=False)
    torch.manual_seed(0)
    learn = Learner(
        nn.Linear(4, 2),
        dls,
        nn.CrossEntropyLoss(),
        metrics=metrics,
        device="cpu",
        lr=0.1,
        opt_func=opt_func,
        **kw,
    )
    learn.remove_cb(ProgressBar)  # it prints to stdout; tests read learn.logger's lines
    learn.lines = []
    learn.logger = learn.lines.append
    return learn


def epochs_run(learn):
    return len(learn.recorder.rows)


class CountBatches(Callback):
    def __init__(self):
        self.n = 0

    def before_batch(self):
        self.n += 1
