"""Atomic file writes, safe (weights-only) loading, and crash-safe training checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._util import (
    atomic_save,
    atomic_write_bytes,
    fsync_dir,
    is_distributed,
    rank,
    safe_load,
    unwrap_model,
    world_size,
)

if TYPE_CHECKING:
    from .learner import Learner


# ---- checkpoint directories ----------------------------------------------------------------
#
# One checkpoint is one directory `ckpt-e<epoch>-i<iter>` named after the position training
# resumes at (batch `iter` of epoch `epoch`), so names sort by age. It holds one torch file per
# part (model.pt, optimizer.pt, callbacks.pt, state.pt, grads.pt while gradients accumulate)
# and manifest.json, written last, with each file's size and sha256.

FORMAT = "hookloop-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-e(\d+)-i(\d+)$")
_TMP_PREFIX = ".tmp-"
_PARTS = {"model", "optimizer", "callbacks", "state"}


class CheckpointError(Exception):
    """A checkpoint directory is incomplete or corrupt (no manifest, a wrong size or checksum)."""


def checkpoint_name(epoch: int, iter: int) -> str:
    """Directory name of the checkpoint that resumes at batch `iter` of `epoch`."""
    return f"ckpt-e{epoch:06d}-i{iter:08d}"


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint(
    path: str | os.PathLike, objects: dict[str, Any], epoch: int, iter: int, step: int
) -> Path:
    """Write `objects` (part name -> state) as the checkpoint directory `path`, crash-safely.

    The parts go to `<name>.pt` in a temporary directory beside `path`, each file fsynced, the
    manifest last; then the directory is renamed into place and the parent fsynced. A crash at
    any point leaves either no `path` or a complete one.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}.", dir=parent))
    old = None
    try:
        files = {}
        for name, obj in objects.items():
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = buf.getvalue()
            _write_file(tmp / f"{name}.pt", data)
            files[f"{name}.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "epoch": epoch,
            "iter": iter,
            "step": step,
            "files": files,
        }
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_dir(tmp)
        if path.exists():
            # Only after falling back past a corrupt checkpoint is its position written again; a
            # directory cannot be renamed over a non-empty one, so move the old one aside first.
            old = parent / f"{_TMP_PREFIX}{path.name}.old-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of checkpoint `path`; CheckpointError when it is missing or not ours."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {str(path)!r}")
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST}, the checkpoint is incomplete") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, int) for v in _positions(manifest)):
        raise CheckpointError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {manifest.get('version')!r} is newer than this hookloop "
            f"reads ({FORMAT_VERSION})"
        )
    for fname, entry in files.items():
        if (
            Path(fname).name != fname
            or not fname.endswith(".pt")
            or not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointError(f"{path}: {MANIFEST} has a malformed entry {fname!r}")
    return manifest


def _positions(manifest: dict[str, Any]) -> list:
    return [manifest.get(k) for k in ("epoch", "iter", "step")]


def _read_verified(path: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    blobs = {}
    for fname, entry in manifest["files"].items():
        try:
            data = (path / fname).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: {fname} is missing") from None
        if len(data) != entry["size"]:
            raise CheckpointError(
                f"{path}: {fname} has {len(data)} bytes, the manifest says {entry['size']} "
                f"(truncated or overwritten)"
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path}: {fname} does not match its sha256 in the manifest")
        blobs[fname[: -len(".pt")]] = data
    missing = sorted(_PARTS - set(blobs))
    if missing:
        raise CheckpointError(f"{path}: the manifest lists no {', '.join(missing)}")
    return blobs


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file of checkpoint `path` against its manifest; returns the manifest."""
    manifest = read_manifest(path)
    _read_verified(Path(path), manifest)
    return manifest


def _load_bytes(data: bytes, where: str, map_location: Any) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {where}: it needs arbitrary unpickling, which can run code "
            f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]}). A hookloop "
            f"checkpoint holds only tensors and plain Python values."
        ) from e


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify checkpoint `path` and load its parts with `torch.load(weights_only=True)`.

    Returns `(manifest, {part name: object})`. Raises CheckpointError when the checkpoint is
    incomplete or corrupt, ValueError when a part needs arbitrary unpickling.
    """
    path = Path(path)
    manifest = read_manifest(path)
    return manifest, _load_parts(path, _read_verified(path, manifest), map_location)


def _load_parts(path: Path, blobs: dict[str, bytes], map_location: Any) -> dict[str, Any]:
    # RNG states must stay CPU tensors; everything else goes where the learner trains.
    return {
        name: _load_bytes(
            data, str(path / f"{name}.pt"), "cpu" if name == "state" else map_location
        )
        for name, data in blobs.items()
    }


def is_checkpoint_name(name: str) -> bool:
    """True for the name of a checkpoint directory (`ckpt-e<epoch>-i<iter>`)."""
    return _NAME.match(name) is not None


def leftover_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Temporary directories of checkpoint writes that never finished (a crash mid-write)."""
    prefix = f"{_TMP_PREFIX}ckpt-"
    return [p for p in Path(directory).iterdir() if p.name.startswith(prefix) and p.is_dir()]


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint directories in `directory`, newest first (not verified)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append(((int(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found, reverse=True)]


def _newest_complete(directory: Path) -> tuple[Path, dict, dict[str, bytes]] | None:
    skipped = []
    found = None
    for path in list_checkpoints(directory):
        try:
            manifest = read_manifest(path)
            found = path, manifest, _read_verified(path, manifest)
            break
        except CheckpointError as e:
            skipped.append(str(e))
    if skipped:
        using = f"using {found[0].name}" if found else "no complete checkpoint is left"
        warnings.warn(
            f"skipped {len(skipped)} incomplete or corrupt checkpoint(s) in {directory} "
            f"({'; '.join(skipped)}); {using}",
            stacklevel=3,
        )
    return found


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `directory` (None if there is none).

    Incomplete or corrupt ones (no manifest, a wrong size or checksum) are skipped with a warning.
    """
    found = _newest_complete(Path(directory))
    return found[0] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints with a manifest, and leftover temporaries."""
    directory = Path(directory)
    removed = []
    kept = 0
    for path in list_checkpoints(directory):
        if kept < keep:
            kept += (path / MANIFEST).is_file()
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for p in leftover_temporaries(directory):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# ---- the training state of a learner -------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global random states: python, numpy, torch CPU, and CUDA per device once initialised."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    # Querying CUDA would initialise it; a run that never touched it has nothing to save.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gathered_rng_state() -> dict[str, Any]:
    """`rng_state()`; under torch.distributed every rank's, as `{'per_rank': [...]}` (one
    all_gather, so every rank must call it)."""

    state = rng_state()
    if not (is_distributed() and world_size() > 1):
        return state
    import torch.distributed as dist

    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, state)
    return {"per_rank": states}


def _own_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    if "per_rank" not in state:
        return state

    states = state["per_rank"]
    if rank() >= len(states):
        warnings.warn(
            f"the checkpoint holds random states for {len(states)} rank(s), this is rank "
            f"{rank()}; it takes rank 0's, so its random numbers differ from the original run",
            stacklevel=3,
        )
        return states[0]
    return states[rank()]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            warnings.warn(
                f"the checkpoint holds CUDA random states for {len(cuda)} device(s), this "
                f"process has {n}; CUDA random numbers will differ from the original run",
                stacklevel=2,
            )


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


def training_state(
    learn: Learner, epoch: int, iter: int, rng: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parts of a checkpoint that resumes `learn` at batch `iter` of `epoch` (`rng`: the
    random states to save, default this process's)."""
    model = unwrap_model(learn.model)
    target = position_target(learn.dls.train)
    parts: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": learn.opt.state_dict() if learn.opt is not None else {},
        "callbacks": callback_states(learn.cbs),
        "state": {
            "learner": {
                "epoch": epoch,
                "iter": iter,
                "train_iter": learn.train_iter,
                "pct_train": learn.pct_train,
                "n_epoch": learn.n_epoch,
            },
            "data": {"seed": getattr(target[0], "seed", None) if target else None},
            "rng": rng if rng is not None else rng_state(),
        },
    }
    # Gradients exist between optimizer steps only while they accumulate over several batches.
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    if grads:
        parts["grads"] = grads
    return parts


def save_checkpoint(
    learn: Learner, directory: str | os.PathLike, epoch: int, iter: int, keep: int | None = 2
) -> Path:
    """Write the checkpoint that resumes `learn` at batch `iter` of `epoch` into `directory`,
    then delete all but the `keep` newest (only now that the new one is complete).

    Under torch.distributed call it on every rank: their random states are gathered, and rank 0
    writes.
    """

    path = Path(directory) / checkpoint_name(epoch, iter)
    rng = gathered_rng_state()
    if rank() != 0:
        return path
    write_checkpoint(path, training_state(learn, epoch, iter, rng), epoch, iter, learn.train_iter)
    if keep is not None:
        prune_checkpoints(directory, keep)
    return path


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
        """The newest complete checkpoint in `directory`, falling back past broken ones."""
        found = _newest_complete(Path(directory))
        if found is None:
            return None
        path, manifest, blobs = found
        return cls(path, manifest, _load_parts(path, blobs, map_location))

    def restore_fit_start(self, learn: Learner) -> None:
        parts = self.parts
        target = position_target(learn.dls.train)
        if self.mid_epoch and target is None:
            raise ValueError(
                f"{self.path.name} was taken in the middle of epoch {self.epoch}, but the "
                f"training loader ({type(learn.dls.train).__name__}) cannot start mid-epoch; "
                f"use a hookloop DataLoaders or a torch DataLoader over a map-style dataset"
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
        load_callback_states(learn.cbs, parts["callbacks"])
        if not self.mid_epoch:
            self._restore_last(learn)

    def restore_train_start(self, learn: Learner) -> None:
        if self.mid_epoch:
            load_callback_states(learn.cbs, self.parts["callbacks"])
            self._restore_last(learn)

    def _restore_last(self, learn: Learner) -> None:
        grads = self.parts.get("grads", {})
        for name, p in unwrap_model(learn.model).named_parameters():
            p.grad = grads[name].to(p.device) if name in grads else None
        if self.mid_epoch:
            obj, unit = position_target(learn.dls.train)
            obj.start = self.iter * unit
            learn.start_at(self.iter)
        set_rng_state(_own_rng_state(self.parts["state"]["rng"]))


__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "safe_load",
    "fsync_dir",
    "CheckpointError",
    "Checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "read_manifest",
    "verify_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "is_checkpoint_name",
    "leftover_temporaries",
    "save_checkpoint",
    "training_state",
    "rng_state",
    "gathered_rng_state",
    "set_rng_state",
]
