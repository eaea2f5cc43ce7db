"""Fault tolerance under real torchrun: a rank SIGKILLed mid-epoch (or mid-backup) is restarted by
`torchrun --max-restarts=1` and the run ends bit-identical to an uninterrupted 2-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hookloop
from callbacks.resume_worker import differences
from conftest import free_port
from hookloop.checkpoint import safe_load

WORKER = Path(__file__).with_name("elastic_worker.py")
SRC = Path(hookloop.__file__).resolve().parents[1]
# One torchrun run (2 workers, maybe a restart) takes ~10-20 s on 2 cores; a hang fails here.
RUN_TIMEOUT = 180


def _torchrun(out: Path, kill: dict | None = None, standalone: bool = False) -> list[dict]:
    """`torchrun --nproc_per_node=2 --max-restarts=1` of the worker; each rank's result."""
    out.mkdir(parents=True)
    rdzv = (
        ["--standalone"]
        if standalone
        else ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--nnodes=1"]
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "ELASTIC_KILL": json.dumps(kill or {}),
        "OMP_NUM_THREADS": "1",
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node=2", "--max-restarts=1", "--monitor-interval=0.1",
           *rdzv, str(WORKER), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [safe_load(out / f"result{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-process run every kill is compared with."""
    return _torchrun(tmp_path_factory.mktemp("elastic") / "reference")


def _check_identical(reference: list[dict], resumed: list[dict], restored_from: str) -> None:
    for r in range(2):
        assert resumed[r]["restart_count"] == 1  # torchrun restarted the group once
        assert resumed[r]["restored_from"] == restored_from
        assert differences(reference[r], resumed[r]) == [], f"rank {r}"
    # Every rank records the same, reduced epoch values.
    assert resumed[0]["history"] == resumed[1]["history"]


# Per rank and epoch: 8 training batches and 1 validation batch; backups after global steps
# 3, 6, 9, 12, ... resume at (epoch, batch) (0, 3), (0, 6), (1, 1), (1, 4), ...


def test_rank_one_killed_mid_epoch_is_restarted_and_ends_bit_identical(reference, tmp_path):
    # Its 15th batch is batch 5 of epoch 1; the newest backup resumes at batch 4.
    resumed = _torchrun(tmp_path / "run", kill={"rank": 1, "batch": 15})
    _check_identical(reference, resumed, "ckpt-e000001-i00000004")


def test_rank_zero_killed_mid_epoch_is_restarted_and_ends_bit_identical(reference, tmp_path):
    # Its 13th batch is batch 3 of epoch 1; the newest backup resumes at batch 1, between the
    # two micro-batches of an accumulated step (each rank's own gradients are in the backup).
    resumed = _torchrun(tmp_path / "run", kill={"rank": 0, "batch": 13}, standalone=True)
    _check_identical(reference, resumed, "ckpt-e000001-i00000001")


def test_rank_zero_killed_while_writing_a_backup_resumes_from_the_previous_one(reference, tmp_path):
    # Rank 0 dies halfway through a file of the second backup: the first one is used.
    resumed = _torchrun(tmp_path / "run", kill={"rank": 0, "write": 2, "stage": "half:1"})
    _check_identical(reference, resumed, "ckpt-e000000-i00000003")
