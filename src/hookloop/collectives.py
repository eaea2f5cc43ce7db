"""Collectives hookloop uses under torch.distributed, each a no-op outside a group of two or
more: barrier, weighted reduction of epoch values, any-rank flags, broadcasts and gathers."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ._util import is_distributed


def barrier() -> None:
    """Wait for every rank (no-op outside a process group of two or more)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _active() -> bool:
    return is_distributed() and dist.get_world_size() > 1


def reduce_weighted(pairs: dict[str, tuple[float, int]]) -> dict[str, float]:
    """Per name, the mean over ranks of `value` weighted by `count`: sum(v*c) / sum(c).

    One all_reduce for all names. A rank with count 0 adds nothing; a name with no samples on
    any rank is NaN; a NaN with samples on any rank makes the result NaN on every rank.
    Outside a process group the values come back unchanged.
    """
    if not _active():
        return {k: float(v) for k, (v, _) in pairs.items()}
    names = list(pairs)
    rows = [[float(v) * c if c else 0.0, float(c)] for v, c in pairs.values()]
    t = torch.tensor(rows, dtype=torch.float64, device=_comm_device()).reshape(-1, 2)
    dist.all_reduce(t)
    return {k: s / c if c else float("nan") for k, (s, c) in zip(names, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (one all_reduce; local outside DDP)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s `value` on every rank (local outside DDP)."""
    if not _active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, src)
    return int(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (`obj` itself outside DDP)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank (`[obj]` outside DDP)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable `obj`, in rank order, on rank `dst`; None on the other ranks
    (`[obj]` outside DDP). Tensors travel as they are: move them to the CPU first."""
    if not _active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


__all__ = [
    "barrier",
    "reduce_weighted",
    "any_rank",
    "broadcast_int",
    "broadcast_object",
    "all_gather_object",
    "gather_object",
]
