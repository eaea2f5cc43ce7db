"""Under DDP, a failure in before_fit on one rank (a rank-0-only callback's check) is the same
error on every rank, at once: two real gloo ranks on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Crash, CrashAt, tiny_learner
from ddp_helpers import COLLECTIVE_TIMEOUT, errors_of_two_ranks, rank_errors, run_two_ranks
from hookloop import BackupAndRestore, Callback, CSVLogger, Learner
from hookloop.distributed import init_distributed, rank


def _learner(cbs: list) -> Learner:
    # 8 training samples in batches of 2: each rank has 2 batches an epoch.
    return tiny_learner(cbs=cbs, n_train=8, bs=2)


class FailInBeforeFit(Callback):
    """Raises in before_fit on the ranks in `ranks`; rank-0-only when asked."""

    def __init__(self, ranks: tuple[int, ...], rank_zero_only: bool = False, order: int = 0):
        self.ranks, self.rank_zero_only, self.order = ranks, rank_zero_only, order

    def before_fit(self) -> None:
        if rank() in self.ranks:
            raise ValueError(f"setup failed on rank {rank()}")


def test_a_csv_log_path_under_a_file_is_the_same_error_on_every_rank(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    log = a_file / "log.csv"
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks", lambda r: _learner([CSVLogger(log)]).fit(2)
    )
    assert rank0 == rank1
    assert rank0 == [
        "NotADirectoryError",
        f"CSVLogger: cannot write {str(log)!r}: {str(a_file)!r} is a file, not a folder",
    ]
    assert a_file.read_text() == "mine"


def test_the_other_rank_says_which_rank_raised_the_shared_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    out = tmp_path / "ranks"
    errors_of_two_ranks(out, lambda r: _learner([CSVLogger(a_file / "log.csv")]).fit(2))
    traceback0, traceback1 = rank_errors(out)
    assert "raised on rank 0; this rank raises it too" in traceback1
    assert "raised in callback CSVLogger during event before_fit" in traceback0
    assert "raised on rank" not in traceback0


def test_a_rank_zero_only_failure_meets_backup_and_restores_exchange(tmp_path):
    # Rank 1 has no FailInBeforeFit: it meets rank 0's after_exception in BackupAndRestore's
    # folder check (order 1000), not in the DistributedTrainer's before_epoch.
    folder = tmp_path / "b"
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks",
        lambda r: _learner([FailInBeforeFit((0,), rank_zero_only=True), BackupAndRestore(folder)])
        .fit(2),
    )  # fmt: skip
    assert rank0 == rank1 == ["ValueError", "setup failed on rank 0"]


def test_a_failure_after_backup_and_restores_exchange_is_shared_at_the_first_epoch(tmp_path):
    folder = tmp_path / "b"
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks",
        lambda r: _learner([BackupAndRestore(folder), FailInBeforeFit((0,), True, order=2000)])
        .fit(2),
    )  # fmt: skip
    assert rank0 == rank1 == ["ValueError", "setup failed on rank 0"]


def test_a_failure_on_rank_one_only_is_raised_on_rank_zero(tmp_path):
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks", lambda r: _learner([FailInBeforeFit((1,))]).fit(2)
    )
    assert rank0 == rank1 == ["ValueError", "setup failed on rank 1"]


def test_a_failure_on_every_rank_keeps_each_ranks_own_error(tmp_path):
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks", lambda r: _learner([FailInBeforeFit((0, 1))]).fit(2)
    )
    assert rank0 == ["ValueError", "setup failed on rank 0"]
    assert rank1 == ["ValueError", "setup failed on rank 1"]


def test_a_fit_with_no_epoch_to_run_shares_a_setup_failure_at_after_fit(tmp_path):
    # The backup of a complete run resumes into nothing to do: no before_epoch on any rank.
    folder = tmp_path / "b"

    def fits(r: int) -> None:
        _learner([BackupAndRestore(folder, delete_on_success=False)]).fit(2)
        _learner([BackupAndRestore(folder), FailInBeforeFit((1,), order=2000)]).fit(2)

    rank0, rank1 = errors_of_two_ranks(tmp_path / "ranks", fits)
    assert rank0 == rank1 == ["ValueError", "setup failed on rank 1"]


def test_a_fit_that_sets_up_alike_on_every_rank_trains_on_both(tmp_path):
    def fit(rank_: int, folder: Path) -> None:
        init_distributed(timeout=COLLECTIVE_TIMEOUT)
        learn = _learner([CSVLogger(folder / "log.csv"), BackupAndRestore(folder / "b")])
        (folder / f"epochs{rank_}.json").write_text(json.dumps(learn.fit(2).epoch))

    assert run_two_ranks(fit, tmp_path) == [0, 0], "\n".join(rank_errors(tmp_path))
    assert [json.loads((tmp_path / f"epochs{r}.json").read_text()) for r in range(2)] == [
        [0, 1],
        [0, 1],
    ]


def test_a_rank_zero_only_failure_is_met_before_a_resume_gathers_the_newest_backup(tmp_path):
    # fit(resume=folder) has no folder check: the other rank's first collective after
    # before_fit's failure on rank 0 is the resume's choice of a backup, which must not take
    # rank 0's error for a checkpoint name.
    folder = tmp_path / "b"

    def fits(r: int) -> None:
        with pytest.raises(Crash):
            _learner([BackupAndRestore(folder), CrashAt(3)]).fit(2)
        _learner([FailInBeforeFit((0,), rank_zero_only=True)]).fit(2, resume=folder)

    rank0, rank1 = errors_of_two_ranks(tmp_path / "ranks", fits)
    assert rank0 == rank1 == ["ValueError", "setup failed on rank 0"]
