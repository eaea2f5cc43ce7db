"""Host memory per training batch: peak RSS added by one epoch of many tiny batches.

Run `python benchmarks/memory.py` (about a minute). Each measurement runs in a fresh Python
process: it builds a default Learner (no progress bar) on a `Linear(4, 2)` at batch size 8, runs
one epoch of 100 batches to warm up (allocator pools, the optimizer's state, lazily built
tables), reads the peak resident set size (VmHWM in /proc/self/status, getrusage's ru_maxrss
elsewhere), then trains one epoch of N batches and reads the peak again. The batches come from a
loader that hands out the same pre-made batch N times, so the data itself costs nothing per
batch: what grows is what the loop and its callbacks keep per batch.

Printed: the peak RSS added by an epoch of 2,000 and of 200,000 batches, their difference, and
that difference per batch. Issue #21's bound: at most 20 MB more over 2,000 batches (about 100
bytes per batch). Figures are printed, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SMALL, LARGE = 2_000, 200_000

CHILD = r"""
import resource, sys
import torch
from torch import nn
from hookloop import Learner

def peak_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

class Repeat:
    # The same batch n times: a loader whose data costs nothing per batch.
    def __init__(self, batch, n):
        self.batch, self.n = batch, n
    def __len__(self):
        return self.n
    def __iter__(self):
        for _ in range(self.n):
            yield self.batch

torch.manual_seed(0)
torch.set_num_threads(1)
n = int(sys.argv[1])
batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
train, valid = Repeat(batch, 100), Repeat(batch, 2)
learn = Learner(nn.Linear(4, 2), (train, valid), loss_func=nn.CrossEntropyLoss(), lr=1e-3)
with learn.no_bar():
    learn.fit(1)
    before = peak_kb()
    train.n = n
    learn.fit(1)
after = peak_kb()
print(before, after)
"""


def added_kb(n: int) -> int:
    """Peak RSS (KiB) added by one epoch of `n` batches, in a fresh process."""
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    before, after = map(int, out.stdout.split()[-2:])
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=SMALL)
    parser.add_argument("--large", type=int, default=LARGE)
    args = parser.parse_args()
    small, large = added_kb(args.small), added_kb(args.large)
    extra = large - small
    per_batch = extra * 1024 / (args.large - args.small)
    print(f"peak RSS added by one epoch of {args.small:>7,} batches: {small / 1024:8.1f} MiB")
    print(f"peak RSS added by one epoch of {args.large:>7,} batches: {large / 1024:8.1f} MiB")
    print(f"difference: {extra / 1024:.1f} MiB, {per_batch:.0f} bytes per batch")


if __name__ == "__main__":
    main()
