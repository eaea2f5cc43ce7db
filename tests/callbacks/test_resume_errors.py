"""Bad input to backup and resume: each is a clear error in before_fit, before any optimizer
step, and leaves every backup as it was (issue #20, the BACKUP/RESUME items)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

import hookloop.checkpoint_format as checkpoint_format
import hookloop.folder_lock as folder_lock
from conftest import Crash, CrashAt, tiny_dls
from ddp_helpers import errors_of_two_ranks
from hookloop import BackupAndRestore, Callback, Learner
from hookloop.checkpoint import (
    LOCK_NAME,
    FolderInUseError,
    FolderLock,
    ResumeMismatchError,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    write_checkpoint,
)


class CountBatches(Callback):
    def __init__(self) -> None:
        self.n = 0

    def before_batch(self) -> None:
        self.n += 1


def _learner(cbs=(), n_train=8, bs=2, model=None, opt_func=torch.optim.AdamW) -> Learner:
    # 8 training samples in batches of 2 (4 batches per epoch), 4 validation samples.
    torch.manual_seed(0)
    learn = Learner(
        model if model is not None else nn.Linear(4, 2),
        tiny_dls(n_train, 4, bs),
        nn.CrossEntropyLoss(),
        cbs=list(cbs),
        opt_func=opt_func,
        device="cpu",
    )
    learn.logger = lambda line: None
    learn.remove_cb(learn.progress_bar)
    return learn


def _crashed_backup(folder: Path, at: int, n_epoch: int = 3, **kwargs) -> dict[str, bytes]:
    """Backups of a fit crashed at training batch `at`; returns the folder's files."""
    save_freq = kwargs.pop("save_freq", "epoch")
    backup = BackupAndRestore(folder, save_freq=save_freq, run_name=kwargs.pop("run_name", None))
    with pytest.raises(Crash):
        _learner([backup, CrashAt(at)], **kwargs).fit(n_epoch)
    return _files(folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _fails_before_any_step(learn: Learner, n_epoch: int, error: type, match: str, **fit_kwargs):
    """`learn.fit(n_epoch)` raises `error` matching `match` with no batch run, the weights as
    initialised and no optimizer state."""
    counter = CountBatches()
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(error, match=match) as info:
        learn.fit(n_epoch, cbs=[counter], **fit_kwargs)
    assert counter.n == 0
    assert learn.train_iter == 0
    assert all(torch.equal(v, weights[k]) for k, v in learn.model.state_dict().items())
    assert not learn.opt.state  # no optimizer step ran, no state was loaded
    return str(info.value)


# ---- item 1: resumed under other conditions ------------------------------------------------


def test_mid_epoch_backup_resumed_with_another_batch_size_is_an_error_naming_bs(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=5, save_freq=3)  # after batch 3: epoch 0, batch 3
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt-e000000-i00000003"]
    learn = _learner([BackupAndRestore(folder, save_freq=3)], bs=4)
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, r"batch size, bs: 2 in the backup")
    assert "batch size, bs: 2 in the backup, 4 now" in msg
    assert "training batches per epoch: 4 in the backup, 2 now" in msg
    assert "ckpt-e000000-i00000003" in msg
    assert _files(folder) == before


def test_mid_epoch_backup_resumed_with_another_dataset_length_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=5, save_freq=3)
    learn = _learner([BackupAndRestore(folder, save_freq=3)], n_train=12)
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "training samples")
    assert "training samples, len(dls.train.dataset): 8 in the backup, 12 now" in msg
    assert _files(folder) == before


def test_backup_resumed_with_another_steps_per_epoch_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "b"
    backup = BackupAndRestore(folder, save_freq=1)
    with pytest.raises(Crash):
        _learner([backup, CrashAt(3)]).fit(2, steps_per_epoch=3)
    before = _files(folder)
    learn = _learner([BackupAndRestore(folder, save_freq=1)])
    msg = _fails_before_any_step(learn, 2, ResumeMismatchError, "steps_per_epoch: 3 in the backup")
    assert "steps_per_epoch: 3 in the backup, None now" in msg
    assert _files(folder) == before


def test_fit_2_resumed_from_a_backup_after_epoch_3_says_the_run_is_past_it(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=13, n_epoch=5)  # 4 batches an epoch: crash in epoch 3
    assert latest_checkpoint(folder).name == "ckpt-e000003-i00000000"
    learn = _learner([BackupAndRestore(folder)])
    msg = _fails_before_any_step(learn, 2, ResumeMismatchError, "would train nothing")
    assert "after 3 epoch(s) of fit(5), past the end of fit(2)" in msg
    assert "Run fit(5) to finish it, or give this run its own folder" in msg
    assert _files(folder) == before  # not deleted by a fit that trained nothing


def test_a_longer_fit_resumed_from_a_shorter_fits_backup_is_an_error_naming_n_epoch(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=6, n_epoch=3)
    learn = _learner([BackupAndRestore(folder)])
    msg = _fails_before_any_step(learn, 5, ResumeMismatchError, "n_epoch")
    assert "after 1 epoch(s) of fit(3), this is fit(5)" in msg
    assert _files(folder) == before


def test_the_backup_of_a_complete_run_finishes_without_training_and_says_so(tmp_path):
    # Keras: a backup at the end of the same fit resumes into nothing left to do.
    folder = tmp_path / "b"
    first = _learner([BackupAndRestore(folder, delete_on_success=False)])
    first.fit(2)
    lines = []
    learn = _learner([BackupAndRestore(folder)])
    learn.logger = lines.append
    counter = CountBatches()
    history = learn.fit(2, cbs=[counter])
    assert counter.n == 0
    assert history.epoch == [0, 1]
    assert torch.equal(learn.model.weight, first.model.weight)
    assert any("the run is already complete" in line for line in lines)
    assert not folder.exists()


# ---- item 2: two learners, one folder ------------------------------------------------------


def test_a_backup_of_another_model_in_the_folder_is_an_error_naming_the_difference(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=6)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    learn = _learner([BackupAndRestore(folder)], model=model)
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "model: the backup's has 2")
    assert "this Sequential has 4 (not in this model: weight, bias)" in msg
    assert "(not in the backup: 0.weight, 0.bias, 2.weight and 1 more)" in msg
    assert _files(folder) == before  # the first learner's backup is neither used nor deleted


def test_a_backup_of_a_model_with_other_shapes_names_each_tensor(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=6)
    learn = _learner([BackupAndRestore(folder)], model=nn.Linear(4, 3))
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "model: weight has shape")
    assert "model: weight has shape [2, 4] in the backup, [3, 4] in this model" in msg
    assert "model: bias has shape [2] in the backup, [3] in this model" in msg
    assert _files(folder) == before


@pytest.mark.parametrize("first, second", [("run-a", "run-b"), ("run-a", None), (None, "run-b")])
def test_a_backup_with_another_run_name_is_an_error_not_a_resume(tmp_path, first, second):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=6, run_name=first)
    learn = _learner([BackupAndRestore(folder, run_name=second)])
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "run_name")
    assert f"run_name: {first!r} in the backup, {second!r} now" in msg
    assert _files(folder) == before


def test_a_backup_with_the_same_run_name_resumes(tmp_path):
    folder = tmp_path / "b"
    _crashed_backup(folder, at=6, run_name="run-a")
    learn = _learner([BackupAndRestore(folder, run_name="run-a")])
    learn.fit(3)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000001-i00000000"


def test_run_name_that_is_not_a_str_is_an_error():
    with pytest.raises(TypeError, match="run_name must be a str or None, got int: 3"):
        BackupAndRestore("b", run_name=3)


def test_an_explicit_checkpoint_is_resumed_whatever_its_run_name(tmp_path):
    folder = tmp_path / "b"
    _crashed_backup(folder, at=6, run_name="run-a")
    learn = _learner()
    assert learn.fit(3, resume=latest_checkpoint(folder)).epoch == [0, 1, 2]


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_a_folder_in_use_by_a_running_fit_in_another_process_is_an_error(tmp_path):
    folder = tmp_path / "b"
    started_r, started_w = os.pipe()
    go_r, go_w = os.pipe()

    class Pause(Callback):
        """In the child's first batch: tell the parent, then wait for its word."""

        def before_batch(self) -> None:
            if self.training and self.train_iter == 0:
                os.write(started_w, b"1")
                os.read(go_r, 1)

    def child() -> None:
        os.close(started_r), os.close(go_w)
        _learner([BackupAndRestore(folder), Pause()]).fit(2)

    pid = _fork(child)
    os.close(started_w), os.close(go_r)
    try:
        assert os.read(started_r, 1) == b"1"  # b"" if the child died first
        lock = (folder / LOCK_NAME).read_bytes()
        host = socket.gethostname()
        learn = _learner([BackupAndRestore(folder)])
        msg = _fails_before_any_step(learn, 2, FolderInUseError, "in use by another run")
        assert f"(process {pid} on {host})" in msg
        assert (folder / LOCK_NAME).read_bytes() == lock  # the child's lock is left alone
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the child's fit went on and finished
    assert not folder.exists()  # its backups deleted on success, the lock file with them
    assert _learner([BackupAndRestore(folder)]).fit(1).epoch == [0]  # free again


def test_the_lock_of_a_killed_run_does_not_block_the_next_one(tmp_path):
    folder = tmp_path / "b"

    def child() -> None:
        lock = FolderLock(folder, owner="test")
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    folder.mkdir()
    _, status = os.waitpid(_fork(child), 0)
    assert os.WIFSIGNALED(status)
    assert (folder / LOCK_NAME).exists()  # left behind, but no longer locked
    learn = _learner([BackupAndRestore(folder)])
    assert learn.fit(1).epoch == [0]
    assert not folder.exists()


def test_a_killed_runs_forked_workers_do_not_keep_its_lock(tmp_path):
    # DataLoader workers are forked after the lock is taken and outlive a SIGKILLed parent by a
    # few seconds: a POSIX lock (fcntl.lockf) is not theirs; an flock would be, and block.
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def run() -> None:
        lock = FolderLock(tmp_path, owner="test")
        lock.acquire()
        if os.fork() == 0:  # the worker: tells it is alive, then waits for the word
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    _, status = os.waitpid(_fork(run), 0)
    os.close(ready_w), os.close(go_r)
    try:
        assert os.WIFSIGNALED(status)
        assert os.read(ready_r, 1) == b"1"  # the worker lives on, holding the lock's file open
        lock = FolderLock(tmp_path, owner="test")
        assert lock.acquire()
        lock.release()
    finally:
        os.write(go_w, b"1")


def test_one_folder_for_two_fits_in_one_process_is_an_error(tmp_path):
    first = FolderLock(tmp_path, owner="first")
    assert first.acquire()
    learn = _learner([BackupAndRestore(tmp_path)])
    msg = _fails_before_any_step(learn, 1, FolderInUseError, "in use by another fit in this")
    assert repr(str(tmp_path)) in msg
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert learn.fit(1).epoch == [0]


class BrokenCleanUp(Callback):
    """Fails in after_exception; order 0: before BackupAndRestore's (1000)."""

    def after_exception(self) -> None:
        raise OSError("after_exception failed")


class BrokenAfterFit(Callback):
    """Fails in after_fit; order 0: before BackupAndRestore's (1000)."""

    def after_fit(self) -> None:
        raise OSError("after_fit failed")


def test_a_failing_after_exception_of_another_callback_still_releases_the_folder(tmp_path):
    folder = tmp_path / "b"
    # Kept alive: a lock that leaked would otherwise be dropped when the learner is collected.
    first = _learner([BrokenCleanUp(), BackupAndRestore(folder), CrashAt(6)])
    with pytest.raises(Crash):
        first.fit(3)
    assert not (folder / LOCK_NAME).exists()
    assert _learner([BackupAndRestore(folder)]).fit(3).epoch == [0, 1, 2]  # resumed, not refused


def test_a_failing_after_fit_of_another_callback_still_releases_the_folder(tmp_path):
    folder = tmp_path / "b"
    first = _learner([BrokenAfterFit(), BackupAndRestore(folder)])
    with pytest.raises(OSError, match="after_fit failed"):
        first.fit(2)
    # BackupAndRestore's after_fit was skipped, its after_exception released the lock; the
    # backups of the complete run are kept, and the next fit finds nothing left to do.
    assert not (folder / LOCK_NAME).exists()
    assert _learner([BackupAndRestore(folder)]).fit(2).epoch == [0, 1]


def test_on_a_filesystem_without_locks_backups_warn_and_go_on(tmp_path, monkeypatch):
    class NoLocks:
        LOCK_EX, LOCK_NB = 2, 4

        @staticmethod
        def lockf(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folder_lock, "fcntl", NoLocks)
    with pytest.warns(UserWarning, match="has no file locks \\(ENOLCK\\): runs sharing"):
        assert _learner([BackupAndRestore(tmp_path / "b")]).fit(2).epoch == [0, 1]


def _temporary(folder: Path, owner: str) -> Path:
    tmp = folder / f".tmp-ckpt-e000009-i00000000.{owner}.x1"
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"half")
    return tmp


def _dead_pid() -> int:
    pid = _fork(lambda: None)
    os.waitpid(pid, 0)  # reaped: the pid names no process now
    return pid


def _host() -> str:
    return checkpoint_format._host()


def test_clean_up_removes_a_dead_writers_temporary_and_never_a_live_writers(tmp_path):
    write_checkpoint(tmp_path / "ckpt-e000001-i00000000", _parts(), epoch=1, iter=0, step=4)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def live_writer() -> None:  # a writer still at work: alive until told
        os.write(ready_w, b"1")
        os.read(go_r, 1)

    pid = _fork(live_writer)
    os.close(ready_w), os.close(go_r)
    try:
        assert os.read(ready_r, 1) == b"1"
        live = _temporary(tmp_path, f"{pid}@{_host()}")
        dead = _temporary(tmp_path, f"{_dead_pid()}@{_host()}")
        mine = _temporary(tmp_path, f"{os.getpid()}@{_host()}")
        elsewhere = _temporary(tmp_path, f"{pid}@another-host")  # young: may be at work
        removed = prune_checkpoints(tmp_path, keep=1)
        assert removed == [dead]
        assert live.is_dir() and mine.is_dir() and elsewhere.is_dir()
        assert (live / "model.pt").read_bytes() == b"half"
    finally:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)


def test_another_hosts_temporary_is_removed_once_older_than_the_newest_backup(tmp_path):
    tmp = _temporary(tmp_path, "123@another-host")
    path = write_checkpoint(tmp_path / "ckpt-e000001-i00000000", _parts(), epoch=1, iter=0, step=4)
    newest = (path / "manifest.json").stat().st_mtime
    os.utime(tmp, (newest - 30, newest - 30))
    assert prune_checkpoints(tmp_path, keep=1) == []  # 30 s older: may still be at work
    os.utime(tmp, (newest - 61, newest - 61))
    assert prune_checkpoints(tmp_path, keep=1) == [tmp]  # over STALE_SECONDS (60 s)


def _parts() -> dict:
    return {
        "model": {"weight": torch.zeros(3)},
        "optimizer": {},
        "callbacks": {},
        "state": {"learner": {"epoch": 1, "iter": 0}},
    }


# ---- item 3: another optimizer -------------------------------------------------------------


def test_an_adamw_backup_resumed_into_an_sgd_learner_is_an_error_naming_both(tmp_path):
    folder = tmp_path / "b"
    before = _crashed_backup(folder, at=6)
    learn = _learner([BackupAndRestore(folder)], opt_func=torch.optim.SGD)
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "optimizer: AdamW in the backup")
    assert "optimizer: AdamW in the backup, SGD now" in msg
    assert _files(folder) == before


def _as_old_backups(folder: Path) -> None:
    """Remove what this version adds to a manifest, as an older hookloop wrote it."""
    for path in list_checkpoints(folder):
        manifest = json.loads((path / "manifest.json").read_text())
        del manifest["run"]
        (path / "manifest.json").write_text(json.dumps(manifest))


def test_an_old_adamw_backup_resumed_into_sgd_names_what_sgd_lacks(tmp_path):
    folder = tmp_path / "b"
    _crashed_backup(folder, at=6)
    _as_old_backups(folder)
    before = _files(folder)
    learn = _learner([BackupAndRestore(folder)], opt_func=torch.optim.SGD)
    msg = _fails_before_any_step(learn, 3, ResumeMismatchError, "optimizer: the backup's state")
    assert "has no dampening, momentum, which SGD needs" in msg
    assert _files(folder) == before


def test_an_old_backup_without_identity_fields_resumes_exactly(tmp_path):
    reference = _learner()
    expected = reference.fit(3)
    folder = tmp_path / "b"
    _crashed_backup(folder, at=7, save_freq=3)
    _as_old_backups(folder)
    learn = _learner([BackupAndRestore(folder, save_freq=3, run_name="new-name")])
    history = learn.fit(3)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000001-i00000002"
    assert history.history == expected.history
    assert torch.equal(learn.model.weight, reference.model.weight)


def test_backups_record_the_identity_and_conditions_of_their_run(tmp_path):
    folder = tmp_path / "b"
    _crashed_backup(folder, at=6, save_freq=3, run_name="run-a")
    manifest = json.loads((latest_checkpoint(folder) / "manifest.json").read_text())
    run = manifest["run"]
    assert {k: v for k, v in run.items() if k != "model"} == {
        "run_name": "run-a",
        "optimizer": "AdamW",
        "n_train": 8,
        "bs": 2,
        "batches_per_epoch": 4,
        "steps_per_epoch": None,
        "n_epoch": 3,
    }
    assert run["model"]["tensors"] == 2 and len(run["model"]["sha256"]) == 64


# ---- item 4: a folder that cannot hold backups ---------------------------------------------


def test_backup_dir_that_is_a_file_fails_in_before_fit(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    learn = _learner([BackupAndRestore(a_file)])
    msg = _fails_before_any_step(learn, 2, NotADirectoryError, "backup_dir .* is a file")
    assert repr(str(a_file)) in msg
    assert a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_backup_dir_under_a_file_fails_in_before_fit(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    learn = _learner([BackupAndRestore(a_file / "backup")])
    msg = _fails_before_any_step(learn, 2, NotADirectoryError, "cannot write backups in backup_dir")
    assert repr(str(a_file / "backup")) in msg
    assert a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_fit_resume_auto_under_a_file_fails_in_before_fit(tmp_path):
    a_file = tmp_path / "models"
    a_file.write_text("mine")
    torch.manual_seed(0)
    learn = _learner()
    learn.path = tmp_path  # model_dir 'models' is a file: the backups go to models/backup
    _fails_before_any_step(learn, 2, NotADirectoryError, "backup_dir", resume="auto")
    assert a_file.read_text() == "mine"


def test_under_ddp_a_backup_dir_that_is_a_file_is_the_same_error_on_every_rank(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "ranks", lambda r: _learner([BackupAndRestore(a_file)]).fit(2)
    )
    assert rank0 == rank1
    assert rank0[0] == "NotADirectoryError"
    assert rank0[1].startswith(f"BackupAndRestore: backup_dir {str(a_file)!r} is a file")


def test_under_ddp_a_folder_in_use_is_the_same_error_on_every_rank(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    other_run = FolderLock(folder, owner="test")  # held by this process, not by the ranks
    assert other_run.acquire()
    try:
        rank0, rank1 = errors_of_two_ranks(
            tmp_path / "ranks", lambda r: _learner([BackupAndRestore(folder)]).fit(2)
        )
    finally:
        other_run.release()
    assert rank0 == rank1
    assert rank0[0] == "FolderInUseError"
    assert f"{str(folder)!r} is in use by another run (process {os.getpid()} on" in rank0[1]


def test_under_ddp_a_resume_mismatch_on_one_rank_is_the_same_error_on_every_rank(tmp_path):
    folder = tmp_path / "b"
    crashed = errors_of_two_ranks(
        tmp_path / "crash", lambda r: _learner([BackupAndRestore(folder), CrashAt(3)]).fit(2)
    )
    assert crashed == [["Crash", ""], ["Crash", ""]]  # in epoch 1: a backup of epoch 0 is left
    # Rank 0 resumes its AdamW state as it should; rank 1 alone finds the mismatch.
    opt_funcs = [torch.optim.AdamW, torch.optim.SGD]
    rank0, rank1 = errors_of_two_ranks(
        tmp_path / "resume",
        lambda r: _learner([BackupAndRestore(folder)], opt_func=opt_funcs[r]).fit(2),
    )
    assert rank0 == rank1
    assert rank0[0] == "ResumeMismatchError"
    assert "optimizer: AdamW in the backup, SGD now" in rank0[1]


# ---- item 5: temporaries of a killed backup write ------------------------------------------


def test_a_kill_during_a_backup_write_leaves_a_temporary_that_the_next_fit_removes(tmp_path):
    from resume_worker import arm_kill_in_write

    folder = tmp_path / "b"

    def killed() -> None:
        arm_kill_in_write(2, "half:1")  # SIGKILL halfway through a file of the 2nd backup
        _learner([BackupAndRestore(folder, save_freq=3)]).fit(3)

    _, status = os.waitpid(_fork(killed), 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    litter = [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]
    assert len(litter) == 1 and litter[0].startswith(".tmp-ckpt-e000001-i00000002.")
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt-e000000-i00000003"]

    class Look(Callback):
        order = 2000  # after BackupAndRestore's before_fit

        def before_fit(self) -> None:
            self.seen = sorted(p.name for p in folder.iterdir())

    look = Look()
    learn = _learner([BackupAndRestore(folder, save_freq=3, delete_on_success=False), look])
    learn.fit(3)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000000-i00000003"
    assert look.seen == [LOCK_NAME, "ckpt-e000000-i00000003"]  # removed at fit start
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_fit_resume_path_of_another_optimizers_checkpoint_is_an_error_naming_fit_resume(tmp_path):
    folder = tmp_path / "b"
    _crashed_backup(folder, at=6)
    learn = _learner(opt_func=torch.optim.SGD)
    msg = _fails_before_any_step(
        learn, 3, ResumeMismatchError, "optimizer", resume=latest_checkpoint(folder)
    )
    assert msg.startswith("fit(resume=...): cannot resume ckpt-e000001-i00000000")
