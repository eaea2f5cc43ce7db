"""Collectives hookloop uses under torch.distributed, each a no-op outside a group of two or
more: barrier, weighted reduction of epoch values, any-rank flags, broadcasts and gathers, and
`fail_together` (an error met by some ranks raised on all)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
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


# What a rank's error becomes for the others: (module, qualified name, message, args). Strings
# and plain args always pickle, and an exception object may not unpickle (a class whose
# constructor takes other arguments than its `args`).
_Failure = tuple[str, str, str, tuple | None]
_PLAIN = (str, int, float, bool, type(None))


def _describe(error: BaseException) -> _Failure:
    cls, args = type(error), tuple(error.args)
    if isinstance(error, OSError) and error.filename is not None:
        # OSError keeps its file names out of `args`: made again from them it would lose them.
        args = (error.errno, error.strerror, error.filename, None, error.filename2)
    plain = all(isinstance(a, _PLAIN) for a in args)
    return cls.__module__, cls.__qualname__, str(error), args if plain else None


def _rebuild(failure: _Failure, src: int) -> Exception:
    """The error rank `src` described: the same class and message when the class is loaded
    here and can be made again from its args (or its message), else a RuntimeError naming it."""
    module, qualname, message, args = failure
    cls: Any = sys.modules.get(module)  # never imported from a name another process sent
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    error: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        for attempt in ([args] if args is not None else []) + [(message,)]:
            try:
                made = cls(*attempt)
            except Exception:
                continue
            if str(made) == message:
                error = made
                break
    if error is None:
        error = RuntimeError(f"{qualname}: {message}")
    error.add_note(
        f"raised on rank {src}; this rank raises it too, instead of waiting for rank {src} in "
        f"a collective until the timeout"
    )
    setattr(error, _SHARED, True)
    return error


# Set on an error that went through an exchange (sent, or rebuilt from another rank's): every
# rank took part in that exchange and raises, so a rank that exchanged again for the same error
# would wait alone in it until the timeout.
_SHARED = "_hookloop_shared"


def was_shared(error: BaseException) -> bool:
    """True when `error` already went through an exchange of `fail_together`'s protocol."""
    return bool(getattr(error, _SHARED, False))


def send_failure(error: Exception) -> None:
    """This rank's half of an exchange in which it failed: the other ranks, in their
    `raise_shared_failure` or `fail_together` at any call site, raise `error` rebuilt.
    Outside a group of two or more it does nothing."""
    if not _active():
        return
    setattr(error, _SHARED, True)
    try:
        all_gather_object(_describe(error))
    except Exception as lost:  # the group is gone too: the step's error is the one to see
        error.add_note(f"the other ranks could not be told of this error: {lost}")


def raise_shared_failure() -> None:
    """This rank's half of an exchange in which it did not fail: raises the error of the first
    rank that sent one (`send_failure`), rebuilt; returns when none did. Outside a group of two
    or more it does nothing."""
    if not _active():
        return
    for src, failure in enumerate(all_gather_object(None)):
        if failure is not None:
            raise _rebuild(failure, src)


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """Run a step that may fail on some ranks only (a check only rank 0 makes); when it fails
    on any rank, it fails on every rank, at once and with the same error.

    Every rank must make the same exchanges in the same order, though not from the same line:
    during a fit's set-up, this exchange may meet the DistributedTrainer's (`send_failure`,
    `raise_shared_failure`) on a rank that failed elsewhere. On leaving, the ranks exchange
    their outcomes (one `all_gather_object`): a rank whose step raised re-raises its own
    error, with its traceback; the others raise the error of the first rank that failed,
    rebuilt with the same type and message and a note naming that rank. Without it the other
    ranks would go on to the next collective and wait there for the failed rank until the
    group's timeout (10 minutes by default), then fail with a transport error that does not
    say what went wrong.
    KeyboardInterrupt and SystemExit are not shared: they stop this process at once. Outside a
    group of two or more it only runs the step.

    Example:
        with fail_together():
            if is_rank_zero():
                check_the_folder()
    """
    if not _active():
        yield
        return
    try:
        yield
    except Exception as error:
        # An error shared inside the step (a nested exchange) was raised on every rank there.
        if not was_shared(error):
            send_failure(error)
        raise
    raise_shared_failure()


__all__ = [
    "barrier",
    "reduce_weighted",
    "any_rank",
    "broadcast_int",
    "broadcast_object",
    "all_gather_object",
    "gather_object",
    "fail_together",
    "send_failure",
    "raise_shared_failure",
    "was_shared",
]
