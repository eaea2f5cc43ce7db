"""Tests for hookloop.distributed: rank helpers, sharding, and 2-process DDP runs on gloo."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from conftest import OwnLossClassifier, rank_errors, run_two_ranks
from hookloop import (
    Callback,
    CSVLogger,
    DataLoaders,
    DistributedTrainer,
    EarlyStopping,
    GradientAccumulation,
    Learner,
    Metric,
    SaveModel,
    ShardSampler,
    TerminateOnNaN,
    accuracy,
)
from hookloop.distributed import (
    barrier,
    init_distributed,
    rank,
    rank_zero_print,
    reduce_weighted,
    shard_loader,
    world_size,
)

# ---- rank helpers and sharding, in this process --------------------------------------------


def test_rank_and_world_size_come_from_torchrun_environment_before_a_group_exists(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (rank(), world_size()) == (1, 2)


def test_rank_zero_print_is_silent_on_other_ranks(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    rank_zero_print("hello")
    monkeypatch.setenv("RANK", "0")
    rank_zero_print("world")
    assert capsys.readouterr().out == "world\n"


def test_rank_zero_only_callbacks_are_left_out_of_the_loop_on_other_ranks(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    learn = _learner(bs=4, path=tmp_path, cbs=CSVLogger("log.csv"))
    handlers = {type(h.__self__).__name__ for hs in learn._tables["train"].values() for h in hs}
    assert "CSVLogger" not in handlers and "ProgressBar" not in handlers
    assert "Recorder" in handlers


def test_save_writes_nothing_on_other_ranks(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    path = _learner(bs=4, path=tmp_path).save("weights")
    assert path == tmp_path / "models" / "weights.pth"
    assert not path.exists()


def test_reduce_weighted_returns_the_values_outside_a_process_group():
    assert reduce_weighted({"loss": (0.5, 3), "accuracy": (1.0, 0)}) == {
        "loss": 0.5,
        "accuracy": 1.0,
    }


def test_shard_sampler_takes_every_world_size_th_index():
    assert list(ShardSampler(5, rank=1, world_size=2)) == [1, 3]
    assert len(ShardSampler(5, rank=0, world_size=2)) == 3


def test_shard_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank must be an int in \\[0, 2\\), got 2"):
        ShardSampler(5, rank=2, world_size=2)


def test_training_dataloader_gets_a_distributed_sampler():
    dl = DataLoader(TensorDataset(torch.arange(6)), batch_size=2)
    shard = shard_loader(dl, rank=1, world_size=2, train=True)
    assert isinstance(shard.sampler, DistributedSampler)
    assert [b[0].tolist() for b in shard] == [[1, 3], [5]]


def test_validation_dataloader_is_split_without_repeats():
    dl = DataLoader(TensorDataset(torch.arange(5)), batch_size=2)
    shards = [shard_loader(dl, rank=r, world_size=2, train=False) for r in range(2)]
    assert [[b[0].tolist() for b in s] for s in shards] == [[[0, 2], [4]], [[1, 3]]]


def test_distributed_trainer_leaves_a_single_process_fit_unchanged(tmp_path):
    plain = _learner(bs=16, path=tmp_path)
    plain.fit(2)
    with_cb = _learner(bs=16, path=tmp_path, cbs=DistributedTrainer())
    with_cb.fit(2)
    assert type(with_cb.model) is nn.Linear
    assert torch.equal(plain.model.weight, with_cb.model.weight)


def test_distrib_ctx_in_one_process_trains_and_detaches_its_callback(tmp_path):
    learn = _learner(bs=16, path=tmp_path)
    with learn.distrib_ctx():
        assert any(isinstance(c, DistributedTrainer) for c in learn.cbs)
        learn.fit(1)
    assert not any(isinstance(c, DistributedTrainer) for c in learn.cbs)
    assert len(learn.recorder.rows) == 1


def test_distrib_ctx_refuses_to_launch_processes_from_a_notebook(tmp_path):
    learn = _learner(bs=16, path=tmp_path)
    with pytest.raises(ValueError, match="in_notebook=True"):
        with learn.distrib_ctx(in_notebook=True):
            pass


def test_torchrun_environment_without_master_address_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(RuntimeError, match="MASTER_ADDR not set"):
        init_distributed()


def test_distributed_trainer_rejects_a_negative_timeout():
    with pytest.raises(ValueError, match="timeout must be positive seconds or a timedelta, got -1"):
        DistributedTrainer(timeout=-1)


# ---- two processes: the helpers every scenario uses -----------------------------------------


def _data() -> tuple[torch.Tensor, ...]:
    # 64 training samples (4 global batches of 16) and 32 validation samples; y = (x0 > 0).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return x[:64], y[:64], x[64:], y[64:]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _learner(bs: int, path: Path, cbs=None, metrics=accuracy, model=None, **kwargs) -> Learner:
    torch.manual_seed(0)
    model = nn.Linear(4, 2) if model is None else model
    xt, yt, xv, yv = _data()
    dls = DataLoaders.from_tensors(xt, yt, valid=(xv, yv), bs=bs, valid_bs=8, seed=1)
    return Learner(
        model, dls, nn.CrossEntropyLoss(), lr=1e-2, metrics=metrics, cbs=cbs, path=path,
        device="cpu", **kwargs,
    )  # fmt: skip


class RankScore(Metric):
    """A validation 'metric' whose value is SCORES[rank][epoch] on each rank."""

    SCORES = [[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, -0.5, -2.0, -3.0, -4.0]]
    name = "score"
    higher_is_better = True

    def reset(self) -> None:
        self.epoch = 0

    def accumulate(self, learn) -> None:
        self.epoch = learn.epoch

    @property
    def value(self) -> float:
        return self.SCORES[rank()][self.epoch]


class CountAllReduces(Callback):
    """Counts DDP's gradient all-reduces (one per bucket; this model has one bucket)."""

    order = 2000  # after DistributedTrainer has wrapped the model in before_fit

    def __init__(self) -> None:
        self.calls: list[int] = []

    def before_fit(self) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def hook(state, bucket):
            self.calls.append(self.learn.train_iter)
            return default_hooks.allreduce_hook(state, bucket)

        self.learn.model.register_comm_hook(None, hook)


def _dict_learner(bs: int, path: Path) -> Learner:
    xt, yt, xv, yv = _data()
    train = [{"x": xt[i], "labels": yt[i]} for i in range(len(xt))]
    valid = [{"x": xv[i], "labels": yv[i]} for i in range(len(xv))]
    dls = DataLoaders.from_datasets(train, valid, bs=bs, shuffle=False)
    return Learner(OwnLossClassifier(), dls, lr=1e-2, metrics=accuracy, path=path, device="cpu")


def _ddp_scenario(rank_: int, folder: Path) -> None:
    results: dict = {}
    # 1. The same script as the single-process reference, with half the batch per rank.
    learn = _learner(bs=8, path=folder, train_metrics=True)
    learn.fit(3, cbs=[CSVLogger(folder / f"history_rank{rank_}.csv"), SaveModel()])
    results["weights"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
    results["rows"] = learn.recorder.rows
    results["model_type"] = type(learn.model).__name__
    learn.save("final")
    barrier()
    learn.load("final")
    if rank_ == 0:  # outside fit validate() is not a collective: rank 0 may run it alone
        results["validate"] = learn.validate()
    # 2. EarlyStopping decides on the reduced value, so both ranks stop together.
    es = EarlyStopping(monitor="score", patience=1)
    learn = _learner(bs=8, path=folder, metrics=RankScore(), cbs=es)
    learn.fit(5)
    results["es_epochs"] = learn.recorder.history.epoch
    results["es_scores"] = [row["score"] for row in learn.recorder.rows]
    # 3. lr_find: the ranks stop together and get the same suggestion; weights are put back.
    learn = _learner(bs=8, path=folder)
    before = learn.model.weight.clone()
    results["lr_find"] = learn.lr_find(num_it=10, show_plot=False).valley
    results["lr_find_restored"] = torch.equal(learn.model.weight, before)
    # 4. torch DataLoaders: DistributedSampler for training, ShardSampler for validation.
    xt, yt, xv, yv = _data()
    dls = DataLoaders.from_datasets(TensorDataset(xt, yt), TensorDataset(xv, yv), bs=8)
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(), lr=1e-2, device="cpu")
    learn.fit(2)
    results["dl_weight"] = learn.model.weight.clone()
    results["dl_valid_loss"] = learn.recorder.rows[-1]["valid_loss"]
    results["dl_full_valid_loss"] = learn.validate()["valid_loss"]
    # 5. A model the user sharded with FSDP2 is trained as it is (no DDP around it).
    from torch.distributed.fsdp import fully_shard

    learn = _learner(bs=8, path=folder, model=fully_shard(_mlp()))
    learn.fit(3)
    results["fsdp_weights"] = {k: v.full_tensor() for k, v in learn.model.state_dict().items()}
    results["fsdp_rows"] = learn.recorder.rows
    # 6. A non-finite loss on rank 1 only: DDP spreads it into both ranks' gradients, so both
    #    skip that step and stop together, with the same finite weights.
    learn = _learner(bs=8, path=folder, cbs=TerminateOnNaN())
    plain_loss = learn.loss_func

    def nan_on_rank_one_at_step_two(pred, y):
        loss = plain_loss(pred, y)
        return loss * float("nan") if rank_ == 1 and learn.train_iter == 2 else loss

    learn.loss_func = nan_on_rank_one_at_step_two
    learn.fit(3)
    results["nan_weights"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
    results["nan_steps"] = learn.train_iter
    # 7. Gradient accumulation over 2 micro-batches of 4 per rank (16 samples a step, as the
    #    reference's bs 16): the non-stepping micro-batch skips the all-reduce.
    counter = CountAllReduces()
    learn = _learner(bs=4, path=folder, cbs=[GradientAccumulation(steps=2), counter])
    learn.fit(3)
    results["acc_weights"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
    results["acc_allreduces"] = len(counter.calls)
    # 8. Dict batches and a model that computes its own loss (Hugging Face's shape).
    learn = _dict_learner(bs=8, path=folder)
    learn.fit(2)
    results["dict_weights"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
    results["dict_rows"] = learn.recorder.rows
    torch.save(results, folder / f"result{rank_}.pt")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-process run of `_ddp_scenario` and the single-process reference with bs=16."""
    single_dir = tmp_path_factory.mktemp("single")
    single = _learner(bs=16, path=single_dir, train_metrics=True)
    single.logger = lambda line: None
    single.fit(3, cbs=[CSVLogger(single_dir / "history.csv"), SaveModel()])
    single_mlp = _learner(bs=16, path=single_dir, model=_mlp())
    single_mlp.logger = lambda line: None
    single_mlp.fit(3)
    folder = tmp_path_factory.mktemp("ddp")
    codes = run_two_ranks(_ddp_scenario, folder)
    assert codes == [0, 0], f"exit codes {codes}\n{rank_errors(folder)}"
    results = [torch.load(folder / f"result{r}.pt", weights_only=False) for r in range(2)]
    return single, folder, results, single_mlp


def _numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time"}


# ---- two processes: what a user sees ---------------------------------------------------------


def test_two_ranks_end_with_the_weights_of_one_process_with_twice_the_batch(ddp_run):
    single, _, results, _ = ddp_run
    for res in results:
        for name, value in single.model.state_dict().items():
            assert torch.allclose(res["weights"][name], value, atol=1e-6, rtol=0), name


def test_model_is_the_users_module_again_after_fit(ddp_run):
    _, _, results, _ = ddp_run
    assert [res["model_type"] for res in results] == ["Linear", "Linear"]


def test_every_rank_records_the_values_of_the_single_process_run(ddp_run):
    single, _, results, _ = ddp_run
    expected = [_numeric(row) for row in single.recorder.rows]
    assert list(expected[0]) == [
        "epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
    ]  # fmt: skip
    for res in results:
        got = [_numeric(row) for row in res["rows"]]
        assert len(got) == 3
        for g, e in zip(got, expected):
            assert g == pytest.approx(e, abs=1e-6)


def test_csv_log_is_written_once_by_rank_zero_with_the_reduced_values(ddp_run):
    single, folder, _, _ = ddp_run
    assert not (folder / "history_rank1.csv").exists()
    with open(folder / "history_rank0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for row, expected in zip(rows, single.recorder.rows):
        for name in ("train_loss", "valid_loss", "valid_accuracy"):
            assert float(row[name]) == pytest.approx(expected[name], abs=1e-6)


def test_epoch_table_is_printed_by_rank_zero_only(ddp_run):
    _, folder, _, _ = ddp_run
    rank0 = (folder / "stdout0.txt").read_text().splitlines()
    assert rank0[0].split()[:2] == ["epoch", "train_loss"]
    assert (folder / "stdout1.txt").read_text() == ""


def test_sharded_validation_equals_a_full_validation_of_the_final_weights(ddp_run):
    _, _, results, _ = ddp_run
    # validate() after fit runs the whole validation set; SaveModel loaded the best epoch,
    # the last one (valid_loss goes down every epoch here).
    losses = [row["valid_loss"] for row in results[0]["rows"]]
    assert losses == sorted(losses, reverse=True)
    full = results[0]["validate"]
    assert full["valid_loss"] == pytest.approx(losses[-1], abs=1e-6)
    assert full["accuracy"] == pytest.approx(results[0]["rows"][-1]["valid_accuracy"], abs=1e-6)


def test_early_stopping_stops_both_ranks_at_the_same_epoch(ddp_run):
    _, _, results, _ = ddp_run
    # Reduced scores (mean of the two ranks' 16 validation samples each): 0, 0.25, 0, ...
    # patience=1 stops after epoch 2. Alone, rank 1 (0, -0.5) would stop after epoch 1 and
    # rank 0 (0, 1, 2, ...) never.
    for res in results:
        assert res["es_scores"] == [0.0, 0.25, 0.0]
        assert res["es_epochs"] == [0, 1, 2]


def test_lr_find_gives_every_rank_the_same_suggestion_and_restores_the_weights(ddp_run):
    _, _, results, _ = ddp_run
    assert results[0]["lr_find"] == results[1]["lr_find"]
    assert [res["lr_find_restored"] for res in results] == [True, True]


def test_torch_dataloaders_are_sharded_and_validation_is_exact(ddp_run):
    _, _, results, _ = ddp_run
    assert torch.equal(results[0]["dl_weight"], results[1]["dl_weight"])
    for res in results:
        assert res["dl_valid_loss"] == pytest.approx(res["dl_full_valid_loss"], abs=1e-6)


def test_dict_batches_with_the_models_own_loss_train_like_one_process_with_twice_the_batch(
    ddp_run, tmp_path
):
    _, _, results, _ = ddp_run
    single = _dict_learner(bs=16, path=tmp_path)
    single.logger = lambda line: None
    single.fit(2)
    for res in results:
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(res["dict_weights"][k], v, atol=1e-6, rtol=0)
        assert res["dict_rows"][-1]["accuracy"] == pytest.approx(
            single.recorder.rows[-1]["accuracy"], abs=1e-6
        )


def test_fsdp_sharded_model_trains_like_one_process_with_twice_the_batch(ddp_run):
    _, _, results, single_mlp = ddp_run
    expected = single_mlp.model.state_dict()
    for res in results:
        for name, value in expected.items():
            assert torch.allclose(res["fsdp_weights"][name], value, atol=1e-6, rtol=0), name
        valid = [row["valid_loss"] for row in res["fsdp_rows"]]
        assert valid == pytest.approx([r["valid_loss"] for r in single_mlp.recorder.rows])


def test_accumulated_micro_batches_all_reduce_once_per_step_and_match_one_process(ddp_run):
    single, _, results, _ = ddp_run
    for res in results:
        for name, value in single.model.state_dict().items():
            assert torch.allclose(res["acc_weights"][name], value, atol=1e-6, rtol=0), name
        # 32 samples per rank per epoch in micro-batches of 4: 8 micro-batches, 4 steps; 3 epochs.
        assert res["acc_allreduces"] == 12


# ---- two processes: a failure on one rank -------------------------------------------------


def test_a_nan_loss_on_one_rank_leaves_both_ranks_with_the_same_finite_weights(ddp_run):
    _, _, results, _ = ddp_run
    w0, w1 = results[0]["nan_weights"], results[1]["nan_weights"]
    assert all(torch.isfinite(v).all() for v in w0.values())
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # The bad step (the third, train_iter 2) is read at the end of epoch 0: 4 steps, then stop.
    assert results[0]["nan_steps"] == results[1]["nan_steps"] == 4


class FailOnRankOne(Callback):
    def after_batch(self) -> None:
        if rank() == 1 and self.learn.epoch == 1 and self.learn.iter == 1:
            raise RuntimeError("rank 1 failed")


def _failing_scenario(rank_: int, folder: Path) -> None:
    _learner(bs=8, path=folder, cbs=FailOnRankOne()).fit(3)


def test_a_callback_raising_on_one_rank_makes_both_ranks_exit_with_an_error(tmp_path):
    codes = run_two_ranks(_failing_scenario, tmp_path)
    assert codes == [1, 1]  # None would mean a rank hung until the timeout
    assert "RuntimeError: rank 1 failed" in (tmp_path / "error1.txt").read_text()
    # Rank 0 was waiting on rank 1 in DDP's gradient all-reduce: gloo reports the lost peer
    # ("Connection closed by peer" or "reset by peer", depending on timing) instead of hanging.
    rank0 = (tmp_path / "error0.txt").read_text()
    assert "gloo/transport" in rank0 and "rank 1 failed" not in rank0
