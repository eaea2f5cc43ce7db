"""What a checkpoint belongs to: a run's identity and conditions, and how a resume differs."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

from ._check import is_int
from ._util import unwrap_model

if TYPE_CHECKING:
    from .learner import Learner


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to another run, or was taken under other conditions than the fit
    that would resume it (its message lists every difference)."""


def _shapes(state: dict[str, Any]) -> dict[str, list[int]]:
    return {k: list(getattr(v, "shape", ())) for k, v in state.items()}


def _batch_size(dl: Any) -> int | None:
    for attr in ("bs", "batch_size"):  # hookloop's TensorLoader, torch's DataLoader
        value = getattr(dl, attr, None)
        if is_int(value):
            return value
    return None


def _dataset_length(dl: Any) -> int | None:
    try:
        return len(dl.dataset)
    except Exception:  # no dataset, or one with no length (a stream)
        return None


def run_identity(learn: Learner, run_name: str | None = None) -> dict[str, Any]:
    """What a backup of `learn` belongs to and what its position means, as stored in the
    manifest's `run`: the run name the user gave, the model's structure (sha256 of its state
    dict's names and shapes), the optimizer class, the number of training samples, the batch
    size, the training batches per epoch, `steps_per_epoch` and `n_epoch`."""
    shapes = _shapes(unwrap_model(learn.model).state_dict())
    train = learn.dls.train
    return {
        "run_name": run_name,
        "model": {
            "tensors": len(shapes),
            "sha256": hashlib.sha256(json.dumps(sorted(shapes.items())).encode()).hexdigest(),
        },
        "optimizer": type(learn.opt).__name__ if learn.opt is not None else None,
        "n_train": _dataset_length(train),
        "bs": _batch_size(train),
        "batches_per_epoch": learn.batches_per_epoch,
        "steps_per_epoch": learn.steps_per_epoch,
        "n_epoch": learn.n_epoch,
    }


# Conditions compared one to one, with the words that name them in an error.
CONDITIONS = {
    "n_train": "training samples, len(dls.train.dataset)",
    "bs": "batch size, bs",
    "steps_per_epoch": "steps_per_epoch",
    "batches_per_epoch": "training batches per epoch",
}

# None where a loader cannot tell (no dataset length, no batch size), not a value to compare;
# steps_per_epoch None means "the loader's length".
NONE_IS_UNKNOWN = {"n_train", "bs", "batches_per_epoch"}


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def model_differences(saved: dict[str, Any], model: Any) -> list[str]:
    then, now = _shapes(saved), _shapes(model.state_dict())
    out = []
    extra = [k for k in then if k not in now]
    missing = [k for k in now if k not in then]
    if extra or missing:
        out.append(
            f"model: the backup's has {len(then)} tensors, this {type(model).__name__} has "
            f"{len(now)}"
            + (f" (not in this model: {_names(extra)})" if extra else "")
            + (f" (not in the backup: {_names(missing)})" if missing else "")
        )
    reshaped = [k for k in now if k in then and now[k] != then[k]]
    for k in reshaped[:3]:
        out.append(f"model: {k} has shape {then[k]} in the backup, {now[k]} in this model")
    if len(reshaped) > 3:
        out.append(f"model: {len(reshaped) - 3} more tensors have other shapes")
    return out


def missing_hypers(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> list[str]:
    # An optimizer state with no class name (an older backup): the hyper-parameters this
    # optimizer needs that the saved groups lack once its own defaults are filled in, as
    # load_state_dict would. AdamW's state in SGD lacks momentum (a KeyError at the first step).
    probe = type(opt).__new__(type(opt))
    try:
        groups = [dict(g) for g in saved.get("param_groups", [])]
        probe.__setstate__({"defaults": dict(opt.defaults), "state": {}, "param_groups": groups})
        return sorted({k for g in probe.param_groups for k in opt.defaults if k not in g})
    except Exception:  # an optimizer that cannot be probed: load_state_dict will tell
        return []


__all__ = [
    "ResumeMismatchError",
    "run_identity",
    "CONDITIONS",
    "NONE_IS_UNKNOWN",
    "model_differences",
    "missing_hypers",
]
