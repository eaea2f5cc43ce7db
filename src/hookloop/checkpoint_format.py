"""The checkpoint directory on disk: crash-safe writes, verified reads, listing and pruning."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ._util import STALE_SECONDS, fsync_dir
from .folder_lock import LOCK_NAME, FolderInUseError, FolderLock

# One checkpoint is one directory `ckpt-e<epoch>-i<iter>` named after the position training
# resumes at (batch `iter` of epoch `epoch`), so names sort by age. It holds one torch file per
# part (model.pt, optimizer.pt, callbacks.pt, state.pt, grads.pt while gradients accumulate,
# ranks.pt under torch.distributed: what ranks 1.. hold of their own) and manifest.json, written
# last, with each file's size and sha256, and (since hookloop 0.x, optional for readers) `run`:
# what the checkpoint belongs to and what its position means (see run_identity.run_identity).

FORMAT = "hookloop-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-e(\d+)-i(\d+)$")
_TMP_PREFIX = ".tmp-"
# A temporary is `.tmp-<checkpoint name>.<pid>@<host>.<random>`: its writer, so that clean-up
# removes only the temporaries of writers that are gone (older hookloop wrote no owner).
_TMP_NAME = re.compile(r"^\.tmp-ckpt-e\d+-i\d+\.(?:(\d+)@([A-Za-z0-9_-]*)\.)?")
_PARTS = {"model", "optimizer", "callbacks", "state"}
_CPU = {"state", "ranks"}


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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def _owner() -> str:
    return f"{os.getpid()}@{_host()}"


def write_checkpoint(
    path: str | os.PathLike,
    objects: dict[str, Any],
    epoch: int,
    iter: int,
    step: int,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write `objects` (part name -> state) as the checkpoint directory `path`, crash-safely.

    The parts go to `<name>.pt` in a temporary directory beside `path` named after this
    process (`.tmp-<name>.<pid>@<host>.*`), each file fsynced, the manifest last (with `run`,
    when given: the identity and conditions of the run); then the directory is renamed into
    place and the parent fsynced. A crash at any point leaves either no `path` or a complete one.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}.{_owner()}.", dir=parent))
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
        if run is not None:
            manifest["run"] = run
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_dir(tmp)
        if path.exists():
            # Only after falling back past a corrupt checkpoint is its position written again; a
            # directory cannot be renamed over a non-empty one, so move the old one aside first.
            old = parent / f"{_TMP_PREFIX}{path.name}.{_owner()}.old"
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
    return manifest, load_parts(path, _read_verified(path, manifest), map_location)


def load_parts(path: Path, blobs: dict[str, bytes], map_location: Any) -> dict[str, Any]:
    """Load verified file bytes (`newest_complete`) with `torch.load(weights_only=True)`."""
    # RNG states (in `state`, and each rank's in `ranks`) must stay CPU tensors; everything
    # else goes where the learner trains.
    return {
        name: _load_bytes(data, str(path / f"{name}.pt"), "cpu" if name in _CPU else map_location)
        for name, data in blobs.items()
    }


def is_checkpoint_name(name: str) -> bool:
    """True for the name of a checkpoint directory (`ckpt-e<epoch>-i<iter>`)."""
    return _NAME.match(name) is not None


def leftover_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Temporary directories of checkpoint writes in `directory`: writes in progress, and writes
    that never finished (a crash mid-write). `stale_temporaries` says which may be removed."""
    prefix = f"{_TMP_PREFIX}ckpt-"
    return [p for p in Path(directory).iterdir() if p.name.startswith(prefix) and p.is_dir()]


def process_alive(pid: int) -> bool:
    """True while process `pid` exists on this host (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _newest_complete_mtime(directory: Path) -> float | None:
    for path in list_checkpoints(directory):
        try:
            return (path / MANIFEST).stat().st_mtime
        except FileNotFoundError:
            continue
    return None


def stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """The temporaries in `directory` whose writer is gone, which clean-up may remove.

    A temporary names its writer (pid and host). One of this host is stale once its process has
    died; this process's own, and those of live processes, are never stale. One of another host
    (whose processes cannot be asked) is stale when it is older than the newest complete
    checkpoint by more than `STALE_SECONDS`, the rule of the single-file atomic writes
    (`_util.remove_stale_temporaries`). One with no owner in its name was left by an older
    hookloop, whose writers removed every temporary: it is stale too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    host, newest, stale = _host(), _newest_complete_mtime(directory), []
    for tmp in leftover_temporaries(directory):
        m = _TMP_NAME.match(tmp.name)
        if not (m and m.group(1)):
            stale.append(tmp)
            continue
        if m.group(2) == host:
            pid = int(m.group(1))
            if pid != os.getpid() and not process_alive(pid):
                stale.append(tmp)
            continue
        try:
            old = newest is not None and tmp.stat().st_mtime < newest - STALE_SECONDS
        except FileNotFoundError:  # its writer finished or removed it meanwhile
            continue
        if old:
            stale.append(tmp)
    return stale


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove `stale_temporaries(directory)`; returns those removed."""
    removed = stale_temporaries(directory)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


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


def newest_complete(directory: str | os.PathLike) -> tuple[Path, dict, dict[str, bytes]] | None:
    """`(path, manifest, verified file bytes)` of the newest complete checkpoint in `directory`
    (None if there is none); incomplete or corrupt ones are skipped with a warning."""
    directory = Path(directory)
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
    found = newest_complete(Path(directory))
    return found[0] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints with a manifest, and the temporaries of
    writers that are gone (`stale_temporaries`; never those of a live writer)."""
    directory = Path(directory)
    removed = []
    kept = 0
    for path in list_checkpoints(directory):
        if kept < keep:
            kept += (path / MANIFEST).is_file()
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed + remove_stale_temporaries(directory)


def write_and_prune(
    path: str | os.PathLike,
    objects: dict[str, Any],
    epoch: int,
    iter: int,
    step: int,
    keep: int | None,
    run: dict[str, Any] | None = None,
) -> Path:
    """`write_checkpoint`, then, only once it is complete, keep the `keep` newest (None: all)."""
    path = write_checkpoint(path, objects, epoch, iter, step, run=run)
    if keep is not None:
        prune_checkpoints(path.parent, keep)
    return path


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "CheckpointError",
    "checkpoint_name",
    "write_checkpoint",
    "write_and_prune",
    "read_checkpoint",
    "read_manifest",
    "verify_checkpoint",
    "newest_complete",
    "load_parts",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "is_checkpoint_name",
    "leftover_temporaries",
    "stale_temporaries",
    "remove_stale_temporaries",
    "process_alive",
    "LOCK_NAME",
    "FolderLock",
    "FolderInUseError",
]
