"""Memory per batch stays small and bounded: a long epoch keeps no tensor per batch.

The full figure (200,000 batches, peak RSS in a fresh process) is benchmarks/memory.py; here the
resident set size is read at the last training batch of a 1,000- and a 10,000-batch epoch (where
memory kept per batch peaks: the epoch's end releases buffers), and the difference is divided by
the 9,000 extra batches. Before the bounded buffers it was ~900 bytes a batch; now ~40.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hookloop import Callback, Learner

STATM = Path("/proc/self/statm")
pytestmark = pytest.mark.skipif(not STATM.exists(), reason="reads /proc/self/statm (Linux)")


class Repeat:
    """The same batch `n` times: data that costs nothing per batch."""

    def __init__(self, batch: tuple, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def rss_bytes() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssAtLastBatch(Callback):
    """Reads the resident set size after the epoch's last training batch."""

    run_valid = False

    def after_batch(self) -> None:
        if self.learn.iter == self.learn.n_iter - 1:
            self.rss = rss_bytes()


def rss_added_by_an_epoch(learn: Learner, train: Repeat, n: int) -> int:
    train.n = n
    probe = RssAtLastBatch()
    before = rss_bytes()
    learn.fit(1, cbs=probe)
    return probe.rss - before


def test_an_epoch_of_10000_batches_holds_under_200_bytes_a_batch_more_than_one_of_1000():
    torch.manual_seed(0)
    batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
    train = Repeat(batch, 100)
    learn = Learner(nn.Linear(4, 2), (train, Repeat(batch, 2)), nn.CrossEntropyLoss(), device="cpu")
    learn.logger = lambda line: None
    with learn.no_bar():
        learn.fit(1)  # warm up: optimizer state, dispatch tables, allocator pools
        small = rss_added_by_an_epoch(learn, train, 1_000)
        large = rss_added_by_an_epoch(learn, train, 10_000)
    # ~4 floats of 8 bytes a batch (raw and smoothed loss, lr, mom); a 0-d tensor kept per
    # batch would add several hundred.
    assert (large - small) / 9_000 < 200
