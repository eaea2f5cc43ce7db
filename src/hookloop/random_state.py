"""The global random states (python, numpy, torch CPU and CUDA) a checkpoint saves and restores."""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch

from ._util import is_distributed, rank, world_size


def rng_state() -> dict[str, Any]:
    """The global random states: python, numpy, torch CPU, and CUDA per device once initialised."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    # Querying CUDA would initialise it; a run that never touched it has nothing to save.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gathered_rng_state() -> dict[str, Any]:
    """`rng_state()`; under torch.distributed every rank's, as `{'per_rank': [...]}` (one
    all_gather, so every rank must call it)."""

    state = rng_state()
    if not (is_distributed() and world_size() > 1):
        return state
    import torch.distributed as dist

    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, state)
    return {"per_rank": states}


def own_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    if "per_rank" not in state:
        return state

    states = state["per_rank"]
    if rank() >= len(states):
        warnings.warn(
            f"the checkpoint holds random states for {len(states)} rank(s), this is rank "
            f"{rank()}; it takes rank 0's, so its random numbers differ from the original run",
            stacklevel=3,
        )
        return states[0]
    return states[rank()]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            warnings.warn(
                f"the checkpoint holds CUDA random states for {len(cuda)} device(s), this "
                f"process has {n}; CUDA random numbers will differ from the original run",
                stacklevel=2,
            )


__all__ = ["rng_state", "gathered_rng_state", "own_rng_state", "set_rng_state"]
