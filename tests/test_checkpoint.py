"""Checkpoint directories: manifest, checksums, fallback past broken ones, pruning, safe loading."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch

from hookloop.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    rng_state,
    set_rng_state,
    verify_checkpoint,
    write_checkpoint,
)


def _parts(value: float) -> dict:
    return {
        "model": {"weight": torch.full((3,), value)},
        "optimizer": {},
        "callbacks": {},
        "state": {"learner": {"epoch": 0, "iter": 0}},
    }


def _write(directory, epoch: int, value: float = 1.0):
    name = f"ckpt-e{epoch:06d}-i00000000"
    return write_checkpoint(directory / name, _parts(value), epoch=epoch, iter=0, step=epoch * 4)


def test_a_checkpoint_is_a_folder_whose_manifest_lists_each_files_size_and_sha256(tmp_path):
    path = _write(tmp_path, 2)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "hookloop-checkpoint"
    assert (manifest["version"], manifest["epoch"], manifest["iter"], manifest["step"]) == (
        1,
        2,
        0,
        8,
    )
    assert sorted(manifest["files"]) == ["callbacks.pt", "model.pt", "optimizer.pt", "state.pt"]
    data = (path / "model.pt").read_bytes()
    assert manifest["files"]["model.pt"] == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_read_checkpoint_returns_the_parts_as_written(tmp_path):
    manifest, parts = read_checkpoint(_write(tmp_path, 1, value=2.5))
    assert torch.equal(parts["model"]["weight"], torch.tensor([2.5, 2.5, 2.5]))
    assert manifest["epoch"] == 1


def test_a_flipped_byte_fails_the_checksum_and_latest_falls_back_with_a_warning(tmp_path):
    older, newer = _write(tmp_path, 1), _write(tmp_path, 2)
    data = bytearray((newer / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (newer / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.pt does not match its sha256"):
        verify_checkpoint(newer)
    with pytest.warns(UserWarning, match="skipped 1 incomplete or corrupt.*using ckpt-e000001"):
        assert latest_checkpoint(tmp_path) == older


def test_a_truncated_file_fails_the_size_check_and_latest_falls_back(tmp_path):
    older, newer = _write(tmp_path, 1), _write(tmp_path, 2)
    data = (newer / "optimizer.pt").read_bytes()
    (newer / "optimizer.pt").write_bytes(data[:10])
    with pytest.raises(
        CheckpointError, match=f"optimizer.pt has 10 bytes, the manifest says {len(data)}"
    ):
        verify_checkpoint(newer)
    with pytest.warns(UserWarning, match="truncated"):
        assert latest_checkpoint(tmp_path) == older


def test_a_checkpoint_without_manifest_is_incomplete(tmp_path):
    older, newer = _write(tmp_path, 1), _write(tmp_path, 2)
    (newer / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json, the checkpoint is incomplete"):
        Checkpoint.read(newer)
    with pytest.warns(UserWarning, match="incomplete"):
        found = Checkpoint.newest(tmp_path)
    assert found.path == older


def test_latest_is_none_when_no_complete_checkpoint_is_left(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    only = _write(tmp_path, 1)
    (only / "state.pt").unlink()
    with pytest.warns(UserWarning, match="state.pt is missing.*no complete checkpoint is left"):
        assert latest_checkpoint(tmp_path) is None


def test_a_manifest_naming_a_file_outside_the_checkpoint_is_rejected(tmp_path):
    path = _write(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../model.pt"] = manifest["files"].pop("model.pt")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="malformed entry '../model.pt'"):
        verify_checkpoint(path)


RAN: list[str] = []


def _record(what: str) -> str:
    RAN.append(what)
    return what


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record, ("code ran",))


def test_a_part_that_needs_pickle_is_refused_and_never_run(tmp_path):
    parts = _parts(1.0)
    parts["callbacks"] = {"evil": RunsCodeWhenUnpickled()}
    # Checksums match: the file is what was written, yet it is not loaded.
    path = write_checkpoint(tmp_path / "ckpt-e000001-i00000000", parts, epoch=1, iter=0, step=4)
    verify_checkpoint(path)
    with pytest.raises(ValueError, match="refusing to load .*callbacks.pt: it needs arbitrary"):
        read_checkpoint(path)
    assert RAN == []


def test_prune_keeps_the_newest_complete_checkpoints_and_removes_temporaries(tmp_path):
    for epoch in (1, 2, 3, 4):
        _write(tmp_path, epoch)
    (tmp_path / "ckpt-e000004-i00000000" / "manifest.json").unlink()  # incomplete: not counted
    (tmp_path / ".tmp-ckpt-e000005-i00000000.x1").mkdir()  # left by a killed write
    (tmp_path / "notes.txt").write_text("mine")
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-e000004-i00000000",
        "ckpt-e000003-i00000000",
        "ckpt-e000002-i00000000",
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ckpt")) == [
        "notes.txt"
    ]


def test_writing_the_same_position_again_replaces_the_old_checkpoint(tmp_path):
    _write(tmp_path, 1, value=1.0)
    path = _write(tmp_path, 1, value=7.0)
    _, parts = read_checkpoint(path)
    assert torch.equal(parts["model"]["weight"], torch.full((3,), 7.0))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_rng_state_round_trip_repeats_python_numpy_and_torch_draws(tmp_path):
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    path = write_checkpoint(
        tmp_path / "ckpt-e000000-i00000001",
        {**_parts(0.0), "state": {"learner": {"epoch": 0, "iter": 1}, "rng": state}},
        epoch=0,
        iter=1,
        step=1,
    )
    random.random(), np.random.rand(), torch.rand(2)  # move every generator on
    set_rng_state(read_checkpoint(path)[1]["state"]["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert again[:2] == first[:2]
    assert torch.equal(again[2], first[2])
