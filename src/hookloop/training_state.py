"""A learner's training state: random states, callback states, data position, and the
Checkpoint that saves it (`save_checkpoint`) and restores it in two steps (`Checkpoint`)."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._util import rank, unwrap_model
from .checkpoint_format import (
    checkpoint_name,
    load_parts,
    newest_complete,
    read_checkpoint,
    write_and_prune,
)
from .collectives import all_gather_object, gather_object
from .data import is_stateful_loader
from .random_state import gathered_rng_state, own_rng_state, rng_state, set_rng_state
from .run_identity import (
    CONDITIONS,
    NONE_IS_UNKNOWN,
    ResumeMismatchError,
    missing_hypers,
    model_differences,
    run_identity,
)

if TYPE_CHECKING:
    from .learner import Learner


def _keyed(cbs: list) -> list[tuple[str, Any]]:
    # Keyed by name; a second callback of the same name gets `name#1`, and so on.
    seen: dict[str, int] = {}
    out = []
    for cb in cbs:
        n = seen.get(cb.name, 0)
        seen[cb.name] = n + 1
        out.append((cb.name if n == 0 else f"{cb.name}#{n}", cb))
    return out


def callback_states(cbs: list) -> dict[str, dict[str, Any]]:
    """Every callback's `state_dict()`, keyed by name, with its class and `state_version`."""
    return {
        key: {
            "class": type(cb).__name__,
            "version": getattr(type(cb), "state_version", 1),
            "rank_zero_only": bool(cb.rank_zero_only),
            "state": cb.state_dict(),
        }
        for key, cb in _keyed(cbs)
    }


def load_callback_states(cbs: list, states: dict[str, dict[str, Any]]) -> None:
    """Give each callback its saved state, migrating older `state_version`s."""
    keys = set()
    for key, cb in _keyed(cbs):
        keys.add(key)
        saved = states.get(key)
        if saved is None:
            continue
        state, version = saved["state"], saved["version"]
        current = getattr(type(cb), "state_version", 1)
        if version != current:
            migrate = getattr(type(cb), "migrate_state_dict", None)
            if migrate is None or version > current:
                raise ValueError(
                    f"callback {key!r} ({type(cb).__name__}) is at state version {current}, the "
                    f"checkpoint holds version {version}, which it cannot convert"
                )
            state = migrate(cb, state, version)
        cb.load_state_dict(state)

    # Rank-zero-only callbacks (loggers) are missing on the other ranks by design.
    lost = sorted(
        k
        for k, v in states.items()
        if k not in keys and v["state"] and not (v.get("rank_zero_only") and rank() != 0)
    )
    if lost:
        warnings.warn(
            f"the checkpoint holds state for callbacks that are not attached now: "
            f"{', '.join(lost)}; it is ignored",
            stacklevel=2,
        )


def position_target(dl: Any) -> tuple[Any, int] | None:
    """`(obj, unit)`: the object whose `start` (in units; one batch is `unit`) and `seed` place
    `dl` within an epoch; None when `dl` cannot start in the middle of an epoch."""
    if dl is None:
        return None
    if all(hasattr(dl, a) for a in ("start", "seed", "set_epoch")):
        return dl, 1
    sampler = getattr(dl, "sampler", None)
    if sampler is not None and all(hasattr(sampler, a) for a in ("start", "seed", "set_epoch")):
        return sampler, getattr(dl, "batch_size", None) or 1
    return None


def loader_state(dl: Any) -> dict[str, Any] | None:
    """The `state_dict()` of a loader that keeps its own position (torchdata's
    StatefulDataLoader), None for any other."""
    return dl.state_dict() if is_stateful_loader(dl) else None


def _restore_loader(dl: Any, state: dict[str, Any] | None) -> None:
    if state is None or not is_stateful_loader(dl):
        return
    dl.load_state_dict(state)
    # StatefulDataLoader makes the iterator now and hands this one to the loop's next iter():
    # making it there, after the random state is restored, would draw from the global RNG.
    dl.state_dict()


def local_state(learn: Learner) -> dict[str, Any]:
    """What each rank holds of its own: random states, callback states (under DDP each rank's
    share of the epoch's losses and metric sums), accumulated gradients, the loader's state."""
    model = unwrap_model(learn.model)
    # Gradients exist between optimizer steps only while they accumulate over several batches.
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {
        "rng": rng_state(),
        "callbacks": callback_states(learn.cbs),
        "grads": grads,
        "loader": loader_state(learn.dls.train),
    }


def training_state(
    learn: Learner,
    epoch: int,
    iter: int,
    mine: dict[str, Any] | None = None,
    others: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The parts of a checkpoint that resumes `learn` at batch `iter` of `epoch`: this rank's
    `local_state` (`mine`, default computed here) and, under DDP, ranks 1..'s (`others`)."""
    mine = local_state(learn) if mine is None else mine
    target = position_target(learn.dls.train)
    parts: dict[str, Any] = {
        "model": unwrap_model(learn.model).state_dict(),
        "optimizer": learn.opt.state_dict() if learn.opt is not None else {},
        "callbacks": mine["callbacks"],
        "state": {
            "learner": {
                "epoch": epoch,
                "iter": iter,
                "train_iter": learn.train_iter,
                "pct_train": learn.pct_train,
                "n_epoch": learn.n_epoch,
            },
            "data": {
                "seed": getattr(target[0], "seed", None) if target else None,
                "loader": mine["loader"],
            },
            "rng": mine["rng"],
        },
    }
    if mine["grads"]:
        parts["grads"] = mine["grads"]
    if others:
        parts["ranks"] = others
    return parts


def _where(epoch: int, iter: int) -> str:
    return f"after {epoch} epoch(s)" if iter == 0 else f"at batch {iter} of epoch {epoch}"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    learn: Learner,
    directory: str | os.PathLike,
    epoch: int,
    iter: int,
    keep: int | None = 2,
    run_name: str | None = None,
) -> Path:
    """Write the checkpoint that resumes `learn` at batch `iter` of `epoch` into `directory`,
    then delete all but the `keep` newest (only now that the new one is complete). Its manifest
    holds `run_identity(learn, run_name)`, checked when it is resumed.

    Under torch.distributed call it on every rank: each rank's `local_state` is gathered to
    rank 0 (one gather), which writes the checkpoint alone. A rank that dies before the gather
    makes rank 0 fail in it, before writing; one that dies after leaves a complete checkpoint.
    """
    path = Path(directory) / checkpoint_name(epoch, iter)
    mine = local_state(learn)
    gathered = gather_object(None if rank() == 0 else _to_cpu(mine))
    if gathered is None:
        return path
    parts = training_state(learn, epoch, iter, mine, gathered[1:])
    run = run_identity(learn, run_name)
    return write_and_prune(path, parts, epoch, iter, learn.train_iter, keep, run=run)


# `run_name` of a check that does not compare run names (a checkpoint named explicitly).
ANY_RUN = object()


class Checkpoint:
    """A verified, loaded checkpoint, restored into a learner in two steps.

    `restore_fit_start` (at the end of before_fit) loads weights, optimizer, counters and every
    callback's state. For a backup taken mid-epoch, `restore_train_start` (at the end of the
    resumed epoch's before_train) loads the callbacks' state again, so per-epoch resets do not
    wipe the epoch in progress, then the gradients, the data position and the random state, so
    nothing run by before_epoch/before_train shifts the random numbers of the next batch.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], parts: dict[str, Any]) -> None:
        self.path, self.manifest, self.parts = path, manifest, parts
        counters = parts["state"]["learner"]
        self.epoch: int = counters["epoch"]
        self.iter: int = counters["iter"]

    @functools.cached_property
    def own(self) -> dict[str, Any]:
        """This rank's `local_state`: rank 0's is spread over the usual parts, that of ranks
        1.. is in the `ranks` part."""
        r, parts, others = rank(), self.parts, self.parts.get("ranks") or []
        if r > 0 and r <= len(others):
            return others[r - 1]
        if r > 0:
            warnings.warn(
                f"{self.path.name} holds the state of {len(others) + 1} rank(s), this is rank "
                f"{r}; it takes rank 0's (random states, loader position, epoch sums), so it "
                f"will not repeat the original run",
                stacklevel=3,
            )
        return {
            "rng": own_rng_state(parts["state"]["rng"]),
            "callbacks": parts["callbacks"],
            "grads": parts.get("grads", {}),
            "loader": parts["state"]["data"].get("loader"),
        }

    @property
    def mid_epoch(self) -> bool:
        return self.iter > 0

    @classmethod
    def read(cls, path: str | os.PathLike, map_location: Any = None) -> Checkpoint:
        """Load one checkpoint directory; raises CheckpointError if it is incomplete/corrupt."""
        manifest, parts = read_checkpoint(path, map_location)
        return cls(Path(path), manifest, parts)

    @classmethod
    def newest(cls, directory: str | os.PathLike, map_location: Any = None) -> Checkpoint | None:
        """The newest complete checkpoint in `directory`, falling back past broken ones; under
        torch.distributed (call it on every rank) the newest that every rank found complete."""
        found = newest_complete(directory)
        # Under DDP every rank must restore the same one: the newest that every rank found
        # complete (names sort by position; '' where a rank found none, so all start afresh).
        names = all_gather_object(found[0].name if found else "")
        agreed = min(names)
        if not agreed:
            return None
        if found is None or found[0].name != agreed:
            return cls.read(Path(directory) / agreed, map_location)
        path, manifest, blobs = found
        return cls(path, manifest, load_parts(path, blobs, map_location))

    def differences(self, learn: Learner, run_name: Any = ANY_RUN) -> list[str]:
        """How `learn`'s fit differs from the run that made this checkpoint (empty: none).

        Compared: the model's structure (names and shapes, from the saved weights), the
        optimizer class, the run name (unless `ANY_RUN`), the training data (samples, batch
        size, batches per epoch, steps_per_epoch) and n_epoch. A value an older checkpoint does
        not hold is unknown, not a difference.
        """
        out = model_differences(self.parts["model"], unwrap_model(learn.model))
        run = self.manifest.get("run") or {}
        opt = learn.opt
        saved_opt = run.get("optimizer")
        if opt is not None and saved_opt is not None and saved_opt != type(opt).__name__:
            out.append(f"optimizer: {saved_opt} in the backup, {type(opt).__name__} now")
        elif opt is not None and saved_opt is None and self.parts["optimizer"]:
            missing = missing_hypers(opt, self.parts["optimizer"])
            if missing:
                out.append(
                    f"optimizer: the backup's state has no {', '.join(missing)}, which "
                    f"{type(opt).__name__} needs (it was saved by another optimizer class)"
                )
        if opt is not None and self.parts["optimizer"]:
            n_then = len(self.parts["optimizer"].get("param_groups", []))
            if n_then != len(opt.param_groups):
                out.append(
                    f"optimizer: {n_then} parameter group(s) in the backup, "
                    f"{len(opt.param_groups)} now"
                )
        if run_name is not ANY_RUN and "run_name" in run and run["run_name"] != run_name:
            out.append(f"run_name: {run['run_name']!r} in the backup, {run_name!r} now")
        now = run_identity(learn, run_name if isinstance(run_name, str) else None)
        for key, words in CONDITIONS.items():
            if key not in run or (key in NONE_IS_UNKNOWN and None in (run[key], now[key])):
                continue  # an older checkpoint, or a loader that cannot tell
            if run[key] != now[key]:
                out.append(f"{words}: {run[key]} in the backup, {now[key]} now")
        n_epoch = self.parts["state"]["learner"].get("n_epoch")
        if n_epoch is not None and n_epoch != learn.n_epoch:
            where = _where(self.epoch, self.iter)
            if self.epoch >= learn.n_epoch:
                out.append(
                    f"n_epoch: the backup was taken {where} of fit({n_epoch}), past the end "
                    f"of fit({learn.n_epoch}), which would train nothing"
                )
            else:
                out.append(
                    f"n_epoch: the backup was taken {where} of fit({n_epoch}), this is "
                    f"fit({learn.n_epoch}) (schedules follow the fraction of training done)"
                )
        return out

    def check_resumable(
        self, learn: Learner, run_name: Any = ANY_RUN, owner: str = "resume"
    ) -> None:
        """Raise ResumeMismatchError listing `differences` when there are any."""
        found = self.differences(learn, run_name)
        if not found:
            return
        n_epoch = self.parts["state"]["learner"].get("n_epoch")
        if self.epoch >= learn.n_epoch and n_epoch != learn.n_epoch:
            resume = f"Run fit({n_epoch}) to finish it"
        else:
            resume = "Resume it with the same settings"
        raise ResumeMismatchError(
            f"{owner}: cannot resume {self.path.name} in {str(self.path.parent)!r}: "
            f"{'; '.join(found)}. It belongs to another run, or to this one under other "
            f"settings; resuming it would not continue that run. {resume}, or give this run its "
            f"own folder (or delete that backup) to start afresh."
        )

    def restore_fit_start(
        self, learn: Learner, run_name: Any = ANY_RUN, owner: str = "resume"
    ) -> None:
        """Check that `learn` may resume this checkpoint (`check_resumable`), then load the
        weights, optimizer, counters and callback states."""
        self.check_resumable(learn, run_name, owner)
        parts = self.parts
        train = learn.dls.train
        target = position_target(train)
        stateful = is_stateful_loader(train) and self.own["loader"] is not None
        if self.mid_epoch and target is None and not stateful:
            raise ValueError(
                f"{self.path.name} was taken in the middle of epoch {self.epoch}, but the "
                f"training loader ({type(train).__name__}) cannot start mid-epoch; use a "
                f"hookloop DataLoaders, a torch DataLoader over a map-style dataset or a "
                f"torchdata StatefulDataLoader"
            )
        unwrap_model(learn.model).load_state_dict(parts["model"])
        if learn.opt is None:
            learn.create_opt()
        if parts["optimizer"]:
            learn.opt.load_state_dict(parts["optimizer"])
        counters = parts["state"]["learner"]
        learn.epoch, learn.iter = self.epoch, self.iter
        learn.train_iter, learn.pct_train = counters["train_iter"], counters["pct_train"]
        seed = parts["state"]["data"]["seed"]
        if target is not None and seed is not None:
            target[0].seed = seed
        load_callback_states(learn.cbs, self.own["callbacks"])
        if not self.mid_epoch:
            self._restore_last(learn)

    def restore_train_start(self, learn: Learner) -> None:
        if self.mid_epoch:
            load_callback_states(learn.cbs, self.own["callbacks"])
            self._restore_last(learn)

    def _restore_last(self, learn: Learner) -> None:
        grads = self.own["grads"]
        for name, p in unwrap_model(learn.model).named_parameters():
            p.grad = grads[name].to(p.device) if name in grads else None
        train, saved = learn.dls.train, self.own["loader"]
        if self.mid_epoch:
            if not (saved is not None and is_stateful_loader(train)):
                obj, unit = position_target(train)
                obj.start = self.iter * unit
            learn.start_at(self.iter)
        _restore_loader(train, saved)
        set_rng_state(self.own["rng"])


__all__ = [
    "Checkpoint",
    "ResumeMismatchError",
    "ANY_RUN",
    "run_identity",
    "save_checkpoint",
    "training_state",
    "local_state",
    "loader_state",
    "position_target",
    "callback_states",
    "load_callback_states",
    "rng_state",
    "gathered_rng_state",
    "set_rng_state",
]
