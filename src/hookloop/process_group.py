"""Process-group setup under torchrun: create the default group (surviving torchrun's restarts),
with a bounded timeout for every collective, and destroy it."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from ._check import check_number
from ._util import is_distributed, local_rank, world_size


def _as_timeout(timeout: Any) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    check_number("timeout", timeout, positive=True, what="positive seconds or a timedelta")
    return datetime.timedelta(seconds=timeout)


def init_distributed(backend: str | None = None, timeout: Any = None) -> bool:
    """Create the default process group from torchrun's environment; True if it was created.

    Nothing happens (False) when a group already exists or `WORLD_SIZE` is missing or 1.
    The backend is nccl when CUDA is available (each process then uses GPU `LOCAL_RANK`),
    gloo otherwise. `timeout` (seconds or a timedelta) bounds every collective: a rank that
    stops answering makes the others fail after it instead of waiting forever.
    """
    timeout = _as_timeout(timeout)
    if is_distributed() or not dist.is_available() or world_size() < 2:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the "
            f"script with torchrun, or call torch.distributed.init_process_group yourself"
        )
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank())
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, **kwargs)
    return True


def destroy_distributed() -> None:
    """Destroy the default process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


__all__ = ["init_distributed", "destroy_distributed"]
