"""Kill-and-resume runner: one warm interpreter forks a child per training run, SIGKILLs some.

Run as `python resume_worker.py spec.json`. The spec lists runs; each run is a sequence of
phases in one work folder, each phase a forked child that runs `user_script` (the script a user
would run, and run again after a crash). A phase may carry a kill point: the child then SIGKILLs
itself at the k-th batch (training or validation) or at a chosen point inside a checkpoint write.
Each finished child saves what the user sees (weights, optimizer, History, Recorder, CSV) to
`result.pt` in its folder; the parent writes every phase's exit status to `spec['out']`.
Used by tests/callbacks/test_resume.py and tools/resume_soak.py.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

import hookloop.checkpoint_format as checkpoint
from hookloop import (
    BackupAndRestore,
    Callback,
    CSVLogger,
    DataLoaders,
    EarlyStopping,
    GradientAccumulation,
    Learner,
    MixUp,
    ParamScheduler,
    ReduceLROnPlateau,
    SchedCos,
    accuracy,
)
from hookloop.checkpoint import atomic_save

N_EPOCH = 3


def die() -> None:
    """A real SIGKILL of this process: nothing after it runs, no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtBatch(Callback):
    """SIGKILLs the process at the start of its k-th batch (training and validation counted)."""

    order = -1000

    def __init__(self, k: int) -> None:
        self.k, self.seen = k, 0

    def before_batch(self) -> None:
        self.seen += 1
        if self.seen == self.k:
            die()


def arm_kill_in_write(nth: int, stage: str) -> None:
    """SIGKILL inside the `nth` checkpoint write: `file:i` before its i-th file (the manifest is
    the last), `half:i` halfway through writing file i, `rename` after all files are written and
    before the rename, `prune` after the rename and before old checkpoints are pruned."""
    count = {"ckpt": 0, "file": 0}
    write_checkpoint, write_file = checkpoint.write_checkpoint, checkpoint._write_file
    fsync_dir, prune = checkpoint.fsync_dir, checkpoint.prune_checkpoints
    here = lambda: count["ckpt"] == nth  # noqa: E731

    def counting_write_checkpoint(*args: Any, **kwargs: Any) -> Any:
        count["ckpt"] += 1
        count["file"] = 0
        return write_checkpoint(*args, **kwargs)

    def killing_write_file(path: Path, data: bytes) -> None:
        i = count["file"]
        count["file"] += 1
        if here() and stage == f"file:{i}":
            die()
        if here() and stage == f"half:{i}":
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            die()
        write_file(path, data)

    def killing_fsync_dir(path: Any) -> None:
        # The temporary directory is fsynced once, after its last file and before the rename.
        if here() and stage == "rename" and Path(path).name.startswith(".tmp-"):
            die()
        fsync_dir(path)

    def killing_prune(*args: Any, **kwargs: Any) -> Any:
        if here() and stage == "prune":
            die()
        return prune(*args, **kwargs)

    # The checkpoint directory format (hookloop.checkpoint_format) calls these through its own
    # module globals, so replacing them there reaches every write.
    checkpoint.write_checkpoint = counting_write_checkpoint
    checkpoint._write_file = killing_write_file
    checkpoint.fsync_dir = killing_fsync_dir
    checkpoint.prune_checkpoints = killing_prune


class NoisyDataset(Dataset):
    """Adds fresh random noise to each sample: data-loading randomness (in workers, if any)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


class NoisyStream(IterableDataset):
    """An endless stream of the samples with noise, keeping its position (torchdata's Stateful
    protocol: a StatefulDataLoader saves it). Each sample's noise depends on its position only."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.pos = x, y, 0

    def __iter__(self):
        while True:
            i, g = self.pos % len(self.x), torch.Generator().manual_seed(self.pos)
            self.pos += 1
            yield self.x[i] + 0.1 * torch.randn(self.x.shape[1], generator=g), self.y[i]

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def make_data(loader: str) -> DataLoaders:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(56, 6, generator=g), torch.randint(0, 3, (56,), generator=g)
    xt, yt, xv, yv = x[:44], y[:44], x[44:], y[44:]  # 6 training batches of 8 (the last of 4)
    if loader == "tensor":
        return DataLoaders.from_tensors(xt, yt, valid=(xv, yv), bs=8, shuffle=True, seed=3)
    if loader == "torch":
        train = DataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True)
        return DataLoaders(train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    if loader == "workers":
        train = DataLoader(NoisyDataset(xt, yt), batch_size=8, shuffle=True, num_workers=2)
        return DataLoaders(train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    if loader == "stateful":  # torchdata's resumable loader, shuffled, over a map-style dataset
        train = StatefulDataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True)
        return DataLoaders(train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    if loader == "stream":  # an endless stream, run with steps_per_epoch
        train = StatefulDataLoader(NoisyStream(xt, yt), batch_size=8)
        return DataLoaders(train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    raise ValueError(f"unknown loader {loader!r}")


def user_script(config: dict, workdir: Path) -> None:
    """What a user runs: seeded, shuffled, dropout, MixUp, gradient accumulation, a CSV log,
    an lr reduced on plateau, early stopping that keeps the best weights, a wd schedule."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    dls = make_data(config["loader"])
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    backup = BackupAndRestore(workdir / "backup", save_freq=config["save_freq"])
    cbs = [
        backup,
        CSVLogger(fname="log.csv", append=False),
        MixUp(0.4),
        GradientAccumulation(n_acc=16),
        # Callbacks with state of their own, and a schedule driven by pct_train.
        ReduceLROnPlateau(monitor="accuracy", factor=0.5, patience=0),
        EarlyStopping(monitor="valid_loss", patience=N_EPOCH, restore_best_weights=True),
        ParamScheduler({"wd": SchedCos(0.05, 0.0)}),
    ]
    kill = config.get("kill")
    if kill and "batch" in kill:
        cbs.append(KillAtBatch(kill["batch"]))
    if kill and "write" in kill:
        arm_kill_in_write(kill["write"], kill["stage"])
    learn = Learner(
        model, dls, nn.CrossEntropyLoss(), metrics=accuracy, cbs=cbs, device="cpu", path=workdir
    )
    learn.logger = lambda line: None
    with learn.no_bar():
        history = learn.fit(N_EPOCH, steps_per_epoch=config.get("steps"))
    result = {
        **user_view(learn, history),
        "csv": (workdir / "log.csv").read_text(),
        "restored_from": str(backup.restored_from) if backup.restored_from else "",
        "backups_left": (workdir / "backup").exists(),
    }
    atomic_save(result, workdir / "result.pt")


def user_view(learn: Learner, history: Any) -> dict:
    """What a user sees after a fit: weights, optimizer, History and Recorder (series as lists,
    so the result loads with weights_only=True)."""
    rec = learn.recorder
    return {
        "model": learn.model.state_dict(),
        "optimizer": learn.opt.state_dict(),
        "history": {"history": history.history, "epoch": history.epoch},
        "recorder": {
            "losses": list(rec.losses),
            "raw_losses": list(rec.raw_losses),
            "hps": {k: list(v) for k, v in rec.hps.items()},
            "rows": rec.rows,
            "iters": rec.iters,
        },
    }


def run_child(config: dict, workdir: Path) -> dict:
    """Fork; the child runs the script in a process group of its own (`pgid` of the result,
    see `end_group`). Returns how it ended."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        code = 0
        try:
            user_script(config, workdir)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: whichever of the two runs first
    except OSError:
        pass  # the child did it (and may have exec'd or exited already)
    _, status = os.waitpid(pid, 0)
    end = {"seconds": time.perf_counter() - t0, "pgid": pid}
    if os.WIFSIGNALED(status):
        return {**end, "signal": os.WTERMSIG(status)}
    return {**end, "exit": os.WEXITSTATUS(status)}


def end_group(pgid: int) -> None:
    """SIGKILL what is left of a finished child's process group: DataLoader workers of a killed
    child. torch's worker notices its parent's death by `getppid()` changing from the value it
    read at start; a parent killed before that read leaves a worker that never exits, holding
    this runner's stdout open (the caller's `capture_output` would wait forever)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left of it


def run_spec(spec: dict) -> list[list[dict]]:
    out = []
    for run in spec["runs"]:
        workdir = Path(run["dir"])
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        ends = []
        for i, phase in enumerate(run["phases"]):
            ends.append(run_child(phase, workdir))
            if phase.get("kill") and (workdir / "log.csv").exists():
                # The log as the killed run left it, to check the resumed run keeps its rows.
                shutil.copy(workdir / "log.csv", workdir / f"log-killed-{i}.csv")
        # Only now: a killed phase's orphaned workers live on while the next phase resumes, as
        # they would after a real kill (they keep the backup folder's lock file open).
        for end in ends:
            end_group(end["pgid"])
        out.append(ends)
    return out


def warm_up() -> None:
    # Pay the first-use costs (optimizer, autograd, torch.save) once, before forking.
    model = nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), io.BytesIO())


def main() -> None:
    torch.set_num_threads(1)  # forked children must not inherit a busy thread pool
    spec = json.loads(Path(sys.argv[1]).read_text())
    warm_up()
    ends = run_spec(spec)
    Path(spec["out"]).write_text(json.dumps(ends))


# ---- comparing results ---------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _csv_without_time(text: str) -> list[str]:
    # `time` is the last column: wall-clock, the one value no rerun reproduces.
    return [line.rsplit(",", 1)[0] for line in text.splitlines()]


def differences(ref: dict, got: dict) -> list[str]:
    """What differs between two results (bit for bit; the wall-clock `time` column aside)."""
    diffs = []
    for key in ("model", "optimizer", "history"):
        if not _equal(ref[key], got[key]):
            diffs.append(key)
    for key in ("losses", "hps", "iters"):
        if not _equal(ref["recorder"][key], got["recorder"][key]):
            diffs.append(f"recorder.{key}")
    if not _equal(_without_time(ref["recorder"]["rows"]), _without_time(got["recorder"]["rows"])):
        diffs.append("recorder.rows")
    if _csv_without_time(ref["csv"]) != _csv_without_time(got["csv"]):
        diffs.append("csv")
    return diffs


if __name__ == "__main__":
    main()
