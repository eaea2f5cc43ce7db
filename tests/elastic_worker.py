"""A user's training script, run under a real `torchrun --max-restarts=1` by tests/test_elastic.py.

    torchrun --nproc_per_node=2 --max-restarts=1 ... tests/elastic_worker.py OUT_DIR

In the first round (TORCHELASTIC_RESTART_COUNT 0) the rank named by the environment variable
ELASTIC_KILL (JSON: `{"rank": 1, "batch": 15}` or `{"rank": 0, "write": 2, "stage": "half:1"}`)
SIGKILLs itself at its k-th batch (training and validation counted) or inside the n-th checkpoint
write; torchrun then restarts both ranks and the same script resumes from the backups. Each rank
saves what a user sees (weights, optimizer, History, Recorder, CSV) to `OUT_DIR/result<rank>.pt`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from hookloop import (
    BackupAndRestore,
    CSVLogger,
    DataLoaders,
    GradientAccumulation,
    Learner,
    accuracy,
)
from hookloop.checkpoint import atomic_save

# The kill helpers (at a batch, inside a checkpoint write) and the result layout of the
# single-process resume worker (run as a script, as tools/resume_soak.py does, so its folder
# goes on the path).
sys.path.insert(0, str(Path(__file__).parent / "callbacks"))
from resume_worker import KillAtBatch, arm_kill_in_write, user_view  # noqa: E402

N_EPOCH = 3


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    kill = json.loads(os.environ.get("ELASTIC_KILL") or "{}")
    first_round = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 4, generator=g), torch.randint(0, 2, (80,), generator=g)
    # Per rank and epoch: 64 / (4 * 2) = 8 training batches of 4 and 1 validation batch of 8.
    dls = DataLoaders.from_tensors(x[:64], y[:64], valid=(x[64:], y[64:]), bs=4, seed=2)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    backup = BackupAndRestore(out / "backup", save_freq=3)
    cbs = [
        backup,
        CSVLogger(out / "log.csv", append=False),
        # A step every 2 batches: backups after odd batches hold each rank's own gradients.
        GradientAccumulation(n_acc=8),
    ]
    if first_round and kill.get("rank") == rank:
        if "batch" in kill:
            cbs.append(KillAtBatch(kill["batch"]))
        if "write" in kill:
            arm_kill_in_write(kill["write"], kill["stage"])
    learn = Learner(
        model, dls, nn.CrossEntropyLoss(), metrics=accuracy, train_metrics=True, cbs=cbs,
        device="cpu", path=out,
    )  # fmt: skip
    learn.logger = lambda line: None
    torch.manual_seed(100 + rank)  # each rank draws its own dropout masks
    with learn.no_bar():
        history = learn.fit(N_EPOCH)
    log = out / "log.csv"
    result = {
        **user_view(learn, history),
        "csv": log.read_text() if rank == 0 else "",
        "restored_from": backup.restored_from.name if backup.restored_from else "",
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
    }
    atomic_save(result, out / f"result{rank}.pt")


if __name__ == "__main__":
    main()
