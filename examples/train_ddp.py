"""Train the digits MLP in one process or several, with the same script and global batch.

    python examples/train_ddp.py
    torchrun --nproc_per_node=2 examples/train_ddp.py

    # fault tolerant: a dead process makes torchrun restart the group (up to 3 times), which
    # continues from the newest backup that every rank agrees is complete, bit-identically
    torchrun --nproc_per_node=2 --max-restarts=3 examples/train_ddp.py --resume
    # two machines (run on each, NODE_RANK 0 and 1; HOST is the first machine's address)
    torchrun --nnodes=2 --nproc_per_node=2 --max-restarts=3 --rdzv-id=digits \
        --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 examples/train_ddp.py --resume

Under torchrun, `fit` creates the process group (gloo on the CPU, nccl on GPUs), wraps the
model in DistributedDataParallel and gives each process its share of every batch; the epoch
table, the CSV log and the saved model are written once, by rank 0. With `--resume` the state
of every rank is backed up every 10 steps into ddp-demo/models/backup (on a filesystem all
machines share): running the same command again after a crash continues from there too.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from hookloop import BackupAndRestore, CSVLogger, Learner, SaveModel, accuracy, world_size
from hookloop.cli import digits_dls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resume", action="store_true", help="back up every 10 steps and resume from backups"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    # bs is per process: dividing by the number of processes keeps the global batch at 64.
    dls = digits_dls(bs=64 // world_size())
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), metrics=accuracy, path="ddp-demo")
    cbs = [CSVLogger("history.csv"), SaveModel(monitor="accuracy")]
    if args.resume:
        cbs.append(BackupAndRestore(learn.path / learn.model_dir / "backup", save_freq=10))
    learn.fit_one_cycle(5, 1e-2, cbs=cbs)
    # validate() outside fit runs the whole validation set on each process (no collective).
    acc = learn.validate()["accuracy"]
    learn.logger(f"{world_size()} process(es): validation accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
