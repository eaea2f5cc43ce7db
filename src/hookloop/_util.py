"""Bottom helpers every layer shares: names, ranks, batches, notebooks, atomic files, models."""

from __future__ import annotations

import glob
import io
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# ---- names ---------------------------------------------------------------------------------

_CAMEL_1 = re.compile("(.)([A-Z][a-z]+)")
_CAMEL_2 = re.compile("([a-z0-9])([A-Z])")


def camel_to_snake(name: str) -> str:
    """`CSVLogger` -> `csv_logger`, `EarlyStopping` -> `early_stopping`."""
    return _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", name)).lower()


# Keras spellings accepted wherever a recorded name is looked up.
KERAS_TO_CANONICAL = {"loss": "train_loss", "val_loss": "valid_loss"}


def keras_name(name: str) -> str:
    """Canonical (fastai) name -> Keras logs key: `valid_loss` -> `val_loss`."""
    if name == "train_loss":
        return "loss"
    if name == "valid_loss":
        return "val_loss"
    if name.startswith("valid_"):  # valid_<metric> beside train_<metric> (train_metrics=True)
        return f"val_{name[len('valid_') :]}"
    if name.startswith("train_"):
        return name[len("train_") :]
    return f"val_{name}"


def length_or_none(o: Any) -> int | None:
    """`len(o)`, or None for an object with no length (a stream's loader)."""
    try:
        return len(o)
    except TypeError:
        return None


def listify(o: Any) -> list:
    """None -> [], a list or tuple -> a list of its items, anything else -> [o]."""
    if o is None:
        return []
    if isinstance(o, (list, tuple)):
        return list(o)
    return [o]


# ---- ranks (torchrun's environment before the process group exists) ------------------------


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group, else torchrun's `RANK`, else 0."""
    # The environment answers before the group exists, so rank-0-only callbacks are left out
    # of the dispatch table from the moment a Learner is built under torchrun.
    return dist.get_rank() if is_distributed() else _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group, else torchrun's `WORLD_SIZE`, else 1."""
    return dist.get_world_size() if is_distributed() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's rank on its machine (torchrun's `LOCAL_RANK`; 0 without it)."""
    return _env_int("LOCAL_RANK", 0)


def is_rank_zero() -> bool:
    """True on the process that owns side effects (files, network, printing)."""
    return rank() == 0


def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """`print` on rank 0, nothing elsewhere (the learner's default `logger`)."""
    if rank() == 0:
        print(*args, **kwargs)


def no_log(line: str) -> None:
    """The logger of `learn.no_logging()`: drops every line."""


# ---- models and batches --------------------------------------------------------------------


def unwrap_model(model: Any) -> Any:
    """The user's module inside DistributedDataParallel / DataParallel wrappers and
    torch.compile's OptimizedModule (whose state dict keys start with `_orig_mod.`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        # Only torch.compile makes an OptimizedModule: none exists before it is imported.
        eval_frame = sys.modules.get("torch._dynamo.eval_frame")
        if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
            model = model._orig_mod
            continue
        return model


def output_loss(out: Any) -> Any:
    """The loss a model put in its output (HF `ModelOutput.loss`, a dict's or a namedtuple's
    `loss`), or None."""
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    return loss


def output_logits(out: Any, key: str | None = None) -> Any:
    """What metrics and `get_preds` see of a model's output: the tensor itself, else its
    `key` entry or attribute (default `logits`), else the output as it is."""
    if type(out) is torch.Tensor:
        return out
    key = key or "logits"
    if isinstance(out, Mapping):
        return out[key] if key in out else out
    value = getattr(out, key, None)
    return out if value is None else value


def find_bs(b: Any) -> int:
    """The batch size of a batch: the first dimension of its first tensor."""
    # Metrics ask once per batch: answer the usual tuple of tensors without the walk.
    first = b[0] if type(b) is tuple and b else b
    if type(first) is torch.Tensor and first.ndim:
        return len(first)
    return _find_bs(b)


def _find_bs(b: Any) -> int:
    if isinstance(b, torch.Tensor):
        return b.shape[0] if b.ndim else 1
    if isinstance(b, (tuple, list)):
        return _find_bs(b[0])
    if isinstance(b, Mapping):
        return _find_bs(next(iter(b.values())))
    return len(b)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm renders as a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return type(ip).__name__ == "ZMQInteractiveShell"


# ---- files: never half-written, loaded without unpickling code ------------------------------


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
    remove_stale_temporaries(path)
    return path


# A temporary this much older than the file just completed is a killed writer's leftover; a
# younger one may belong to a writer still at work on the same name, and is left alone.
STALE_SECONDS = 60.0


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries `atomic_write_bytes` left for `path` (a kill during a write)
    that are older than `path` by more than STALE_SECONDS; returns those removed."""
    path = Path(path)
    newest = path.stat().st_mtime
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if tmp.stat().st_mtime < newest - STALE_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another writer finished or cleaned it meanwhile
            continue
    return removed


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
        if "weights_only" not in str(e):
            raise _not_torch_file(path, e) from e
        raise ValueError(
            f"refusing to load {str(path)!r}: it needs arbitrary unpickling, which can run code "
            f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]}). Save state dicts "
            f"of tensors and plain Python values instead."
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        # A text file (KeyError), an empty one (EOFError), a truncated zip (RuntimeError).
        raise _not_torch_file(path, e) from e


def _not_torch_file(path: Path, e: BaseException) -> ValueError:
    size = path.stat().st_size if path.exists() else 0
    first = str(e).splitlines()[0] if str(e) else "no message"
    return ValueError(
        f"cannot load {str(path)!r} ({size} bytes): it is not a complete file written by "
        f"torch.save ({type(e).__name__}: {first})"
    )


def save_png(fig: Any, fname: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file in the same folder, then rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(fname, buf.getvalue())
