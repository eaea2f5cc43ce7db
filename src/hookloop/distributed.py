"""torch.distributed support: rank helpers (more lands with the distributed issue)."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 outside torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 outside torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_rank_zero() -> bool:
    """True on the process that owns side effects (files, network, printing)."""
    return rank() == 0


__all__ = ["is_distributed", "rank", "world_size", "is_rank_zero"]
