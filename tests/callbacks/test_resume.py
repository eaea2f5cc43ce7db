"""BackupAndRestore and fit(resume=...): a run killed with SIGKILL and resumed is bit-identical."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_worker import N_EPOCH, differences
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from conftest import Crash, CrashAt, tiny_learner
from ddp_helpers import rank_errors, run_two_ranks
from hookloop import BackupAndRestore, Callback, DataLoaders, Learner, ResumableSampler
from hookloop.checkpoint import list_checkpoints, safe_load

WORKER = Path(__file__).with_name("resume_worker.py")
# save_freq=3 backs up after training batches 3, 6, 9, ...: (epoch, next batch) of each backup.
BACKUPS_EVERY_3 = ["ckpt-e000000-i00000003", "ckpt-e000000-i00000006", "ckpt-e000001-i00000003"]
CONFIGS = {
    "tensor-every-3": ({"loader": "tensor", "save_freq": 3}, 8),
    "tensor-epoch": ({"loader": "tensor", "save_freq": "epoch"}, 6),
    "torch-every-2": ({"loader": "torch", "save_freq": 2}, 6),
    "workers-epoch": ({"loader": "workers", "save_freq": "epoch"}, 2),
    # torchdata's StatefulDataLoader: its own state_dict() is the data position.
    "stateful-every-2": ({"loader": "stateful", "save_freq": 2}, 4),
    # An endless stream of 5 batches an epoch: the loader's iterator carries over epochs.
    "stream-every-3": ({"loader": "stream", "save_freq": 3, "steps": 5}, 4),
    "stream-epoch": ({"loader": "stream", "save_freq": "epoch", "steps": 5}, 2),
}
STATEFUL = ("stateful-every-2", "stream-every-3", "stream-epoch")
# SIGKILL inside the n-th checkpoint write, at these stages (see resume_worker.arm_kill_in_write).
WRITE_KILLS = [(1, "file:0"), (2, "half:1"), (3, "file:4"), (2, "rename"), (3, "prune")]


@pytest.fixture(scope="module")
def kill_runs(tmp_path_factory):
    """One warm interpreter runs every scenario; each run is a forked child, some SIGKILLed."""
    root = tmp_path_factory.mktemp("kills")
    rng = random.Random(8)
    runs, cases = [], []
    for name, (config, n_points) in CONFIGS.items():
        runs.append({"dir": str(root / name / "ref"), "phases": [config]})
        # Kill points: training batches (6 an epoch, or `steps`) and 1 validation batch an epoch.
        batches = N_EPOCH * (config.get("steps", 6) + 1)
        for k in sorted(rng.sample(range(1, batches + 1), n_points)):
            killed = {**config, "kill": {"batch": k}}
            runs.append({"dir": str(root / name / f"batch-{k}"), "phases": [killed, config]})
            cases.append((name, f"batch-{k}"))
    config = CONFIGS["tensor-every-3"][0]
    for nth, stage in WRITE_KILLS:
        killed = {**config, "kill": {"write": nth, "stage": stage}}
        case = f"write-{nth}-{stage.replace(':', '-')}"
        runs.append({"dir": str(root / "tensor-every-3" / case), "phases": [killed, config]})
    # A stream killed inside a write: the previous backup holds the loader's position.
    killed = {**CONFIGS["stream-every-3"][0], "kill": {"write": 3, "stage": "half:1"}}
    phases = [killed, CONFIGS["stream-every-3"][0]]
    runs.append({"dir": str(root / "stream-every-3" / "write-3-half-1"), "phases": phases})
    spec = root / "spec.json"
    spec.write_text(json.dumps({"out": str(root / "ends.json"), "runs": runs}))
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(spec)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    ends = json.loads((root / "ends.json").read_text())
    by_dir = {Path(run["dir"]): end for run, end in zip(runs, ends)}
    return root, by_dir, cases, proc.stderr


def _result(folder: Path) -> dict:
    return safe_load(folder / "result.pt")


def _position(restored_from: str) -> tuple[int, int]:
    m = re.search(r"ckpt-e(\d+)-i(\d+)$", restored_from)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_run_killed_at_random_batches_resumes_bit_identical(kill_runs):
    root, ends, cases, stderr = kill_runs
    assert len(cases) >= 20
    positions = set()
    for name, case in cases:
        folder = root / name / case
        assert ends[folder][0].get("signal") == 9, (case, ends[folder], stderr)  # SIGKILLed
        assert ends[folder][1].get("exit") == 0, (case, ends[folder], stderr)
        resumed = _result(folder)
        diffs = differences(_result(root / name / "ref"), resumed)
        assert diffs == [], (name, case, diffs)
        assert not resumed["backups_left"]  # delete_on_success
        positions.add(_position(resumed["restored_from"]))
    # The kills hit every kind of resume point: none yet, an epoch boundary, mid-epoch.
    assert (0, 0) in positions
    assert any(e > 0 and i == 0 for e, i in positions)
    assert any(i > 0 for e, i in positions)


def test_stateful_and_streaming_loaders_resume_mid_epoch_bit_identical(kill_runs):
    root, ends, cases, stderr = kill_runs
    positions = {name: set() for name in STATEFUL}
    for name, case in cases:
        if name in STATEFUL:
            folder = root / name / case
            assert ends[folder][0].get("signal") == 9, (case, ends[folder], stderr)
            resumed = _result(folder)
            assert differences(_result(root / name / "ref"), resumed) == [], (name, case)
            positions[name].add(_position(resumed["restored_from"]))
    # Mid-epoch positions come from the loader's own state_dict (no sampler can skip a stream).
    assert any(i > 0 for _, i in positions["stateful-every-2"])
    assert any(i > 0 for _, i in positions["stream-every-3"])
    # Epoch backups of a stream resume the carried iterator, not the stream's start.
    assert any(e > 0 for e, _ in positions["stream-epoch"])


def test_stream_killed_during_a_write_resumes_from_the_previous_backup(kill_runs):
    root, ends, _, stderr = kill_runs
    folder = root / "stream-every-3" / "write-3-half-1"
    assert ends[folder][0].get("signal") == 9, (ends[folder], stderr)
    resumed = _result(folder)
    # Backups after batches 3 and 6 (the stream's epoch has 5): (0, 3) and (1, 1).
    assert Path(resumed["restored_from"]).name == "ckpt-e000001-i00000001"
    assert differences(_result(root / "stream-every-3" / "ref"), resumed) == []


def test_resumed_csv_keeps_the_killed_runs_rows_with_their_time(kill_runs):
    root, ends, cases, _ = kill_runs
    kept = 0
    for name, case in cases:
        folder = root / name / case
        epoch, _ = _position(_result(folder)["restored_from"])
        killed = (folder / "log-killed-0.csv").read_text().splitlines()
        resumed = (folder / "log.csv").read_text().splitlines()
        # Header plus one row per epoch finished before the backup, byte for byte (time too).
        assert resumed[: 1 + epoch] == killed[: 1 + epoch], case
        assert len(resumed) == 1 + N_EPOCH
        kept += epoch
    assert kept > 0


@pytest.mark.parametrize("nth, stage", WRITE_KILLS)
def test_kill_during_a_checkpoint_write_resumes_from_the_newest_complete_one(kill_runs, nth, stage):
    root, ends, _, stderr = kill_runs
    folder = root / "tensor-every-3" / f"write-{nth}-{stage.replace(':', '-')}"
    assert ends[folder][0].get("signal") == 9, (ends[folder], stderr)
    assert ends[folder][1].get("exit") == 0, (ends[folder], stderr)
    resumed = _result(folder)
    # Killed before the rename: the write never happened. After it (before pruning): it did.
    complete = nth if stage == "prune" else nth - 1
    expected = BACKUPS_EVERY_3[complete - 1] if complete else ""
    assert Path(resumed["restored_from"]).name == expected
    assert differences(_result(root / "tensor-every-3" / "ref"), resumed) == []
    # The killed write's temporary is removed (its writer is dead), so the folder is too.
    assert not resumed["backups_left"]


# ---- in-process behaviour ------------------------------------------------------------------


def _learner(cbs=(), **kwargs) -> Learner:
    # 8 training samples in batches of 2 (4 batches per epoch), 4 validation samples.
    learn = tiny_learner(cbs=list(cbs), n_train=8, n_valid=4, bs=2, **kwargs)
    learn.remove_cb(learn.progress_bar)
    return learn


def test_backup_and_restore_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive int, got 0"):
        BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="save_freq.*got 'batch'"):
        BackupAndRestore(tmp_path, save_freq="batch")
    with pytest.raises(ValueError, match="keep must be a positive int, got 0"):
        BackupAndRestore(tmp_path, keep=0)
    with pytest.raises(TypeError, match="backup_dir must be a path, got 3"):
        BackupAndRestore(3)


def test_epoch_backups_cost_nothing_per_batch(tmp_path):
    learn = _learner([BackupAndRestore(tmp_path / "b")])
    handlers = [h.__self__ for h in learn._tables["train"]["after_batch"]]
    assert not any(isinstance(cb, BackupAndRestore) for cb in handlers)
    learn = _learner([BackupAndRestore(tmp_path / "b", save_freq=2)])
    handlers = [h.__self__ for h in learn._tables["train"]["after_batch"]]
    assert any(isinstance(cb, BackupAndRestore) for cb in handlers)


def test_backups_are_kept_after_a_crash_and_deleted_after_success(tmp_path):
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup), CrashAt(9)]).fit(3)  # in epoch 2 (4 batches each)
    # keep=2: the backups after epochs 0 and 1, resuming at epochs 1 and 2.
    assert [p.name for p in list_checkpoints(backup)] == [
        "ckpt-e000002-i00000000",
        "ckpt-e000001-i00000000",
    ]
    learn = _learner([BackupAndRestore(backup)])
    history = learn.fit(3)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000002-i00000000"
    assert history.epoch == [0, 1, 2]
    assert not backup.exists()


def test_history_after_resume_holds_the_epochs_before_the_crash(tmp_path):
    uninterrupted = _learner().fit(3)
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup, save_freq=3), CrashAt(7)]).fit(3)
    resumed = _learner([BackupAndRestore(backup, save_freq=3)])
    history = resumed.fit(3)
    # Backup after training batch 6 = epoch 1, batch 2.
    assert resumed.backup_and_restore.restored_from.name == "ckpt-e000001-i00000002"
    assert history.epoch == [0, 1, 2]
    assert history.history == uninterrupted.history
    assert len(resumed.recorder.losses) == 12


def test_callback_state_is_restored_after_other_callbacks_reset_it_in_before_fit(tmp_path):
    class Counter(Callback):
        def __init__(self) -> None:
            self.batches = 0

        def before_fit(self) -> None:
            self.batches = 0  # reset per fit, as most callbacks do

        def after_batch(self) -> None:
            self.batches += self.training

        def state_dict(self) -> dict:
            return {"batches": self.batches}

        def load_state_dict(self, state: dict) -> None:
            self.batches = state["batches"]

    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup, save_freq=2), Counter(), CrashAt(6)]).fit(3)
    counter = Counter()
    _learner([BackupAndRestore(backup, save_freq=2), counter]).fit(3)
    assert counter.batches == 12  # 4 counted before the backup at batch 4, 8 after


def test_older_callback_state_goes_through_migrate_state_dict(tmp_path):
    class Renamed(Callback):
        state_version = 2

        def __init__(self) -> None:
            self.total = 0

        def state_dict(self) -> dict:
            return {"total": self.total}

        def load_state_dict(self, state: dict) -> None:
            self.total = state["total"]

        def migrate_state_dict(self, state: dict, version: int) -> dict:
            return {"total": state["count"] * 10}  # version 1 stored tens in "count"

    class RenamedV1(Renamed):
        state_version = 1

        def state_dict(self) -> dict:
            return {"count": 4}

    RenamedV1.__name__ = "Renamed"  # the same callback name in both runs
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup), RenamedV1(), CrashAt(5)]).fit(2)
    cb = Renamed()
    _learner([BackupAndRestore(backup), cb]).fit(2)
    assert cb.total == 40


def test_fit_resume_path_continues_from_that_checkpoint(tmp_path):
    backup = tmp_path / "b"
    _learner([BackupAndRestore(backup, delete_on_success=False)]).fit(2)
    # Back up after epoch 0 and 1; resume from the first, naming it.
    first = list_checkpoints(backup)[-1]
    assert first.name == "ckpt-e000001-i00000000"
    learn = _learner()
    history = learn.fit(2, resume=first)
    assert history.epoch == [0, 1]
    assert len(learn.recorder.losses) == 8
    assert learn.train_iter == 8


def test_fit_resume_auto_backs_up_under_the_model_dir(tmp_path):
    with pytest.raises(Crash):
        _learner([CrashAt(6)], path=tmp_path).fit(2, resume="auto")
    backup = tmp_path / "models" / "backup"
    assert [p.name for p in list_checkpoints(backup)] == ["ckpt-e000001-i00000000"]
    learn = _learner(path=tmp_path)
    assert learn.fit(2, resume="auto").epoch == [0, 1]
    assert learn.train_iter == 8
    assert not backup.exists()


def test_fit_resume_rejects_a_missing_path_and_a_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or backup folder"):
        _learner().fit(1, resume=tmp_path / "nothing")
    with pytest.raises(TypeError, match="resume must be None, 'auto' or a path, got 3"):
        _learner().fit(1, resume=3)


def test_mid_epoch_backups_need_a_loader_that_can_start_mid_epoch(tmp_path):
    class Batches:  # a loader with no way to skip batches
        dataset = [(torch.zeros(4), 0)]

        def __len__(self) -> int:
            return 1

        def __iter__(self):
            yield torch.zeros(2, 4), torch.zeros(2).long()

    learn = Learner(nn.Linear(4, 2), Batches(), nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(ValueError, match="cannot restart mid-epoch; use save_freq='epoch'"):
        learn.fit(1, cbs=BackupAndRestore(tmp_path, save_freq=1))


def test_resumable_sampler_order_depends_only_on_seed_and_epoch():
    ds = TensorDataset(torch.arange(10))
    a, b = ResumableSampler(RandomSampler(ds), seed=5), ResumableSampler(RandomSampler(ds), seed=5)
    a.set_epoch(2)
    torch.manual_seed(123)  # the global random state plays no part
    first = list(a)
    b.set_epoch(2)
    assert list(b) == first
    assert sorted(first) == list(range(10))
    b.set_epoch(3)
    assert list(b) != first


def test_resumable_sampler_start_skips_indices_once():
    sampler = ResumableSampler(RandomSampler(TensorDataset(torch.arange(10))), seed=0)
    full = list(sampler)
    sampler.start = 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the next pass starts at 0 again


def test_a_plain_dataloader_is_made_resumable_and_leaves_the_global_rng_alone(tmp_path):
    ds = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    dl = DataLoader(ds, batch_size=2, shuffle=True)
    learn = Learner(nn.Linear(4, 2), DataLoaders(dl), nn.CrossEntropyLoss(), device="cpu")
    learn.remove_cb(learn.progress_bar)

    class GlobalDraws(Callback):
        """Records the global random state when each training pass starts and ends."""

        def __init__(self) -> None:
            self.states = []

        def before_train(self) -> None:
            self.states.append(torch.get_rng_state())

        def after_train(self) -> None:
            self.states.append(torch.get_rng_state())

    draws = GlobalDraws()
    learn.fit(1, cbs=[BackupAndRestore(tmp_path, save_freq=2), draws])
    assert isinstance(dl.sampler, ResumableSampler)
    assert dl.batch_sampler.sampler is dl.sampler
    # Creating the iterator and shuffling drew nothing (a linear model uses no randomness).
    assert torch.equal(draws.states[0], draws.states[1])


class Noise(Callback):
    """Draws from the global random state in before_epoch and in every training batch."""

    def before_epoch(self) -> None:
        self.epoch_draw = torch.rand(())

    def before_batch(self) -> None:
        if self.training:
            self.learn.xb = (self.xb[0] + torch.randn_like(self.xb[0]),)


def test_random_draws_before_the_resumed_epoch_do_not_shift_its_batches(tmp_path):
    torch.manual_seed(0)
    reference = _learner([Noise()])
    reference.fit(2)
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        torch.manual_seed(0)
        _learner([BackupAndRestore(backup, save_freq=3), Noise(), CrashAt(5)]).fit(2)
    torch.manual_seed(0)
    resumed = _learner([BackupAndRestore(backup, save_freq=3), Noise()])
    resumed.fit(2)
    # Resumed at epoch 0, batch 3: the random state is put back after before_epoch's draw.
    assert resumed.backup_and_restore.restored_from.name == "ckpt-e000000-i00000003"
    assert torch.equal(resumed.model.weight, reference.model.weight)
    assert resumed.recorder.losses == reference.recorder.losses


def test_train_metrics_of_the_resumed_epoch_cover_all_its_batches(tmp_path):
    from hookloop import accuracy

    reference = _learner(metrics=accuracy, train_metrics=True).fit(2)
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner(
            [BackupAndRestore(backup, save_freq=2), CrashAt(4)],
            metrics=accuracy,
            train_metrics=True,
        ).fit(2)
    learn = _learner([BackupAndRestore(backup, save_freq=2)], metrics=accuracy, train_metrics=True)
    history = learn.fit(2)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000000-i00000002"
    assert history.history == reference.history


def test_the_bar_of_an_epoch_resumed_mid_way_starts_at_the_resumed_batch(tmp_path, capsys):
    # 4 training batches per epoch; the backup after batch 2 resumes epoch 0 at batch 2, so the
    # bar's first count is 3 (batches 0-2 done), not 1, and it ends at 4/4.
    from hookloop import ProgressBar

    counts = []

    class Watch(Callback):
        order = 70  # after the ProgressBar's after_batch (60)

        def after_batch(self) -> None:
            bar = self.learn.progress_bar.bar
            if self.training and bar is not None:
                counts.append(bar.n)

    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup, save_freq=2), CrashAt(3)]).fit(1)
    learn = _learner([BackupAndRestore(backup, save_freq=2), Watch()])
    learn.add_cb(ProgressBar(show_bar=True, leave=True, mininterval=0))
    learn.fit(1)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000000-i00000002"
    assert counts[0] == 3
    assert "4/4" in capsys.readouterr().err


def test_lr_find_neither_restores_nor_replaces_nor_deletes_the_backups(tmp_path):
    backup = tmp_path / "b"
    with pytest.raises(Crash):
        _learner([BackupAndRestore(backup), CrashAt(6)]).fit(2)
    before = {p.name: (p / "model.pt").read_bytes() for p in list_checkpoints(backup)}
    assert list(before) == ["ckpt-e000001-i00000000"]
    learn = _learner([BackupAndRestore(backup)])  # on the learner: lr_find's fit sees it too
    learn.lr_find(num_it=6, show_plot=False)
    assert learn.backup_and_restore.restored_from is None
    assert {p.name: (p / "model.pt").read_bytes() for p in list_checkpoints(backup)} == before
    learn.fit(2)
    assert learn.backup_and_restore.restored_from.name == "ckpt-e000001-i00000000"


# ---- two processes under torch.distributed -------------------------------------------------


def _ddp_learner(rank_: int, folder: Path, cbs) -> Learner:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 4, generator=g), torch.randint(0, 2, (48,), generator=g)
    dls = DataLoaders.from_tensors(x[:32], y[:32], valid=(x[32:], y[32:]), bs=4, seed=2)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), cbs=cbs, device="cpu", path=folder)
    learn.remove_cb(learn.progress_bar)
    learn.logger = lambda line: None
    torch.manual_seed(100 + rank_)  # each rank draws its own dropout masks
    return learn


def _ddp_resume_scenario(rank_: int, folder: Path) -> None:
    reference = _ddp_learner(rank_, folder, [])
    reference.fit(2)
    backup = folder / "backup"
    with pytest.raises(Crash):
        _ddp_learner(rank_, folder, [BackupAndRestore(backup, save_freq=3), CrashAt(6)]).fit(2)
    resumed = _ddp_learner(rank_, folder, [BackupAndRestore(backup, save_freq=3)])
    resumed.fit(2)
    result = {
        "restored_from": resumed.backup_and_restore.restored_from.name,
        "equal": all(
            torch.equal(a, b)
            for a, b in zip(
                reference.model.state_dict().values(), resumed.model.state_dict().values()
            )
        ),
    }
    (folder / f"result{rank_}.json").write_text(json.dumps(result))


def test_resume_under_two_ranks_restores_each_ranks_random_state(tmp_path):
    codes = run_two_ranks(_ddp_resume_scenario, tmp_path)
    assert codes == [0, 0], "\n".join(rank_errors(tmp_path))
    for r in range(2):
        result = json.loads((tmp_path / f"result{r}.json").read_text())
        # 4 batches of 4 per rank and epoch: the backup after batch 3, then batch 6 crashes.
        assert result == {"restored_from": "ckpt-e000000-i00000003", "equal": True}


def test_keras_keywords_delete_checkpoint_and_double_checkpoint(tmp_path):
    cb = BackupAndRestore(tmp_path, delete_checkpoint=False, double_checkpoint=False)
    assert (cb.delete_on_success, cb.keep) == (False, 1)
    assert BackupAndRestore(tmp_path, keep=1, double_checkpoint=True).keep == 2
