"""Train the digits MLP in one process or several, with the same script and global batch.

    python examples/train_ddp.py
    torchrun --nproc_per_node=2 examples/train_ddp.py

Under torchrun, `fit` creates the process group (gloo on the CPU, nccl on GPUs), wraps the
model in DistributedDataParallel and gives each process its share of every batch; the epoch
table, the CSV log and the saved model are written once, by rank 0.
"""

from __future__ import annotations

import torch
from torch import nn

from hookloop import CSVLogger, Learner, SaveModel, accuracy, world_size
from hookloop.cli import digits_dls


def main() -> None:
    torch.manual_seed(0)
    # bs is per process: dividing by the number of processes keeps the global batch at 64.
    dls = digits_dls(bs=64 // world_size())
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), metrics=accuracy, path="ddp-demo")
    learn.fit_one_cycle(5, 1e-2, cbs=[CSVLogger("history.csv"), SaveModel(monitor="accuracy")])
    # validate() outside fit runs the whole validation set on each process (no collective).
    acc = learn.validate()["accuracy"]
    learn.logger(f"{world_size()} process(es): validation accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
