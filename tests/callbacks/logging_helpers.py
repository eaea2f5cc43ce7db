"""Helpers of the logging tests: learners whose batch losses are scripted."""

from __future__ import annotations

import torch
from torch import nn

from conftest import ScriptedLoss
from hookloop import DataLoaders, Learner


def scripted_learner(losses, n_train, n_valid, bs=1, **kwargs):
    """Batches of `bs` items; `losses` are the batch losses in the order the loop meets them."""
    torch.manual_seed(0)
    x, y = torch.randn(n_train, 4), torch.zeros(n_train).long()
    valid = (torch.randn(n_valid, 4), torch.zeros(n_valid).long()) if n_valid else None
    dls = DataLoaders.from_tensors(
        x, y, valid=valid, valid_pct=None, bs=bs, valid_bs=bs, shuffle=False
    )
    learn = Learner(nn.Linear(4, 2), dls, ScriptedLoss(losses), device="cpu", **kwargs)
    learn.logger = lambda line: None
    # No smoothing: the table's train_loss (fastai's smoothed loss) is the epoch's last loss.
    learn.recorder.beta = 0.0
    return learn


def two_epochs(**kwargs):
    """2 epochs of 2 training batches and 1 validation batch: train_loss 2.0 then 3.0 (the
    last loss and the mean alike), valid_loss 5.0 then 7.0."""
    return scripted_learner([2.0, 2.0, 5.0, 3.0, 3.0, 7.0], n_train=2, n_valid=1, **kwargs)
