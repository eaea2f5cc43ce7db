"""Two real ranks on one machine: forked processes in a torchrun-like environment (gloo on
127.0.0.1). Used by tests/test_distributed.py and tests/callbacks/test_resume_errors.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from hookloop.distributed import init_distributed

# A forked child starts in milliseconds (torch is already imported); a spawned one takes ~5 s.
RUN_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(target: Callable[[int, Path], None], rank_: int, port: int, folder: Path) -> None:
    # A torchrun-like environment; the group itself is created by hookloop at fit time.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank_),
        LOCAL_RANK=str(rank_),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    sys.stdout = open(folder / f"stdout{rank_}.txt", "w", buffering=1)  # noqa: SIM115
    try:
        target(rank_, folder)
    except BaseException:
        (folder / f"error{rank_}.txt").write_text(traceback.format_exc())
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def run_two_ranks(target: Callable[[int, Path], None], folder: Path) -> list[int | None]:
    """Fork two ranks running `target(rank, folder)`; their exit codes (None: killed at timeout).

    A rank that raises exits with 1 and leaves its traceback in `folder/error<rank>.txt`; what
    it prints goes to `folder/stdout<rank>.txt`."""
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(target, r, port, folder)) for r in range(2)]
    for p in procs:
        p.start()
    codes: list[int | None] = []
    for p in procs:
        p.join(RUN_TIMEOUT)
        if p.exitcode is None:
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def rank_errors(folder: Path) -> list[str]:
    """Each rank's traceback ('' for a rank that raised nothing)."""
    return [
        (folder / f"error{r}.txt").read_text() if (folder / f"error{r}.txt").exists() else ""
        for r in range(2)
    ]


# A rank left waiting in a collective fails after this timeout with a gloo error instead of the
# error it should share: a regression fails in seconds, not after the 10-minute default.
COLLECTIVE_TIMEOUT = 5


def errors_of_two_ranks(out: Path, fit: Callable[[int], object]) -> list[list[str]]:
    """Each rank's error, [type name, message], from `fit(rank)` run by two ranks with a
    COLLECTIVE_TIMEOUT-second group (both must fail); their tracebacks are left in `out`."""

    def run(rank_: int, folder: Path) -> None:
        init_distributed(timeout=COLLECTIVE_TIMEOUT)
        try:
            fit(rank_)
        except Exception as e:
            (folder / f"raised{rank_}.json").write_text(json.dumps([type(e).__name__, str(e)]))
            raise

    out.mkdir()
    codes = run_two_ranks(run, out)
    assert codes == [1, 1], "\n".join(rank_errors(out))
    return [json.loads((out / f"raised{r}.json").read_text()) for r in range(2)]
