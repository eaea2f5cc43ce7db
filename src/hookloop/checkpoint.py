"""Atomic file writes and safe (weights-only) loading of saved training state."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file in the same folder, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` that never leaves a half-written file at `path`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)`; a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved file at {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {str(path)!r}: it needs arbitrary unpickling, which can run code "
            f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]}). Save state dicts "
            f"of tensors and plain Python values instead."
        ) from e


__all__ = ["atomic_save", "atomic_write_bytes", "safe_load", "fsync_dir"]
