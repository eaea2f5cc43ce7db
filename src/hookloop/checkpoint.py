"""Checkpoints, one import away: the directory format (`checkpoint_format`), a learner's
training state (`training_state`), and the atomic file helpers they are built on."""

from __future__ import annotations

from ._util import atomic_save, atomic_write_bytes, fsync_dir, safe_load
from .checkpoint_format import (
    LOCK_NAME,
    MANIFEST,
    CheckpointError,
    FolderInUseError,
    FolderLock,
    checkpoint_name,
    is_checkpoint_name,
    latest_checkpoint,
    leftover_temporaries,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    read_manifest,
    remove_stale_temporaries,
    stale_temporaries,
    verify_checkpoint,
    write_checkpoint,
)
from .training_state import (
    Checkpoint,
    ResumeMismatchError,
    gathered_rng_state,
    position_target,
    rng_state,
    run_identity,
    save_checkpoint,
    set_rng_state,
    training_state,
)

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "safe_load",
    "fsync_dir",
    "MANIFEST",
    "LOCK_NAME",
    "CheckpointError",
    "Checkpoint",
    "checkpoint_name",
    "write_checkpoint",
    "read_checkpoint",
    "read_manifest",
    "verify_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "is_checkpoint_name",
    "leftover_temporaries",
    "stale_temporaries",
    "remove_stale_temporaries",
    "FolderLock",
    "FolderInUseError",
    "ResumeMismatchError",
    "run_identity",
    "position_target",
    "save_checkpoint",
    "training_state",
    "rng_state",
    "gathered_rng_state",
    "set_rng_state",
]
