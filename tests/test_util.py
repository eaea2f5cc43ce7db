"""Bottom helpers: atomic writes clean up what a killed writer left behind."""

from __future__ import annotations

import os

from hookloop._util import STALE_SECONDS, atomic_write_bytes


def _leftover(folder, name, tag, age_seconds, now):
    tmp = folder / f".{name}.{tag}.tmp"
    tmp.write_bytes(b"half a file")
    os.utime(tmp, (now - age_seconds, now - age_seconds))
    return tmp


def test_a_save_removes_its_own_stale_temporaries_and_nothing_else(tmp_path):
    target = tmp_path / "model.pth"
    atomic_write_bytes(target, b"first")
    now = target.stat().st_mtime
    stale = _leftover(tmp_path, "model.pth", "k1", STALE_SECONDS + 10, now)  # a kill long ago
    fresh = _leftover(tmp_path, "model.pth", "w2", 0, now)  # maybe a writer at work right now
    other = _leftover(tmp_path, "other.pth", "k3", STALE_SECONDS + 10, now)  # another file's
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert not stale.exists()
    assert fresh.exists() and other.exists()
