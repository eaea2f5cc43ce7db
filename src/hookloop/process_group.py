"""Process-group setup under torchrun: create the default group (surviving torchrun's restarts),
with a bounded timeout for every collective, and destroy it.

Why a store of our own under torchrun: torchrun's agent hosts one TCPStore for the whole job
(`TORCHELASTIC_USE_AGENT_STORE=True`) and keeps it across restarts (`--max-restarts`), so a
restarted group that rendezvouses in it with `init_process_group("env://")` meets the keys of
the dead round (gloo addresses, nccl ids, barrier counters): "connectFullMesh failed ...
Connection refused", or a hang. Prefixing the keys with `TORCHELASTIC_RESTART_COUNT` is not
enough: that count is kept by each node's agent and can differ between nodes. Instead, rank 0
of every round starts a fresh TCPStore and publishes its address and a random token in the
agent's store; the other ranks connect to the address published there, and an address left by
a dead round fails to connect (its process is gone) or shows another token, so they read again.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from typing import Any

import torch
import torch.distributed as dist

from ._check import check_number
from ._util import is_distributed, local_rank, rank, world_size

# Bounds every collective and the group's setup: a peer that died is usually reported at once
# (its connections close), one that hangs makes the others fail after this long, so torchrun
# can restart the group. torch's own default is 30 minutes for gloo and 10 for nccl.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)
# How long a rank tries the rank-0 store address it read before reading the address again.
_CONNECT_TIMEOUT = datetime.timedelta(seconds=2)
# The store of the current round (rank 0 hosts it): it lives as long as the group.
_round_store: Any = None


def _as_timeout(timeout: Any) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    check_number("timeout", timeout, positive=True, what="positive seconds or a timedelta")
    return datetime.timedelta(seconds=timeout)


def init_distributed(backend: str | None = None, timeout: Any = None) -> bool:
    """Create the default process group from torchrun's environment; True if it was created.

    Nothing happens (False) when a group already exists or `WORLD_SIZE` is missing or 1.
    The backend is nccl when CUDA is available (each process then uses GPU `LOCAL_RANK`),
    gloo otherwise. `timeout` (seconds or a timedelta; default `DEFAULT_TIMEOUT`, 10 minutes)
    bounds every collective: a rank that stops answering makes the others fail after it
    instead of waiting forever. Under torchrun the group survives `--max-restarts`: each
    restarted round rendezvouses in a store of its own (see the module's docstring).
    """
    timeout = _as_timeout(timeout) or DEFAULT_TIMEOUT
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
    kwargs: dict[str, Any] = {"timeout": timeout}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        global _round_store
        _round_store = _fresh_round_store(timeout)
        kwargs.update(store=_round_store, rank=rank(), world_size=world_size())
    dist.init_process_group(backend, **kwargs)
    return True


def _fresh_round_store(timeout: datetime.timedelta) -> dist.Store:
    # Rank 0 runs on the host of the agent's store (torchrun puts global rank 0 on the node that
    # hosts it, for static, c10d and standalone rendezvous), so MASTER_ADDR reaches it.
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    key = f"hookloop/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/round_store"
    if rank() == 0:
        store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timeout)
        token = uuid.uuid4().hex
        store.set("token", token)
        agent.set(key, json.dumps([host, store.port, token]))
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        # Blocks until the first round's rank 0 publishes; later rounds find the last address.
        addr, round_port, token = json.loads(agent.get(key))
        try:
            store = dist.TCPStore(addr, round_port, is_master=False, timeout=_CONNECT_TIMEOUT)
            if store.get("token").decode() == token:
                return store
        except (RuntimeError, dist.DistError):
            pass  # the address of a dead round: its rank 0 is gone
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {rank()}: no store from rank 0 of this round within {timeout} (read "
                f"{addr}:{round_port} from torchrun's store at {host}:{port})"
            )


def destroy_distributed() -> None:
    """Destroy the default process group if there is one."""
    global _round_store
    if is_distributed():
        dist.destroy_process_group()
    _round_store = None


__all__ = ["DEFAULT_TIMEOUT", "init_distributed", "destroy_distributed"]
