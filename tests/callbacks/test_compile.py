"""Compile: compiled training fires the same events, matches eager and never recompiles."""

from __future__ import annotations

import math

import pytest
import torch
from compile_helpers import GraphCount, compile_data, mlp_learner, weights
from torch import nn

from hookloop import (
    EMA,
    EVENTS,
    BackupAndRestore,
    Callback,
    Compile,
    CutMix,
    DataLoaders,
    GradientAccumulation,
    GradientClip,
    Learner,
    MixedPrecision,
    MixUp,
)
from hookloop.callbacks.compile import _fusable, _fused_step, _step_kind


class EventLog(Callback):
    """Every event except after_pred (whose handler would keep the loss out of the graph)."""

    def __init__(self) -> None:
        self.events: list[str] = []


for _event in EVENTS:
    if _event not in ("after_pred", "after_create"):
        setattr(EventLog, _event, lambda self, e=_event: self.events.append(e))


# The 8-16-3 MLP has 195 parameter elements: Compile() compiles its step (torch's fused kernel
# is slower below FUSED_MIN_ELEMENTS); step="fused" makes it take the fused kernel.
FUSED = {"step": "fused"}


def _one_cycle_run(compile: bool | dict, **kwargs) -> tuple[Learner, EventLog, GraphCount]:
    # fit_one_cycle changes the learning rate and momentum at every step.
    log, count = EventLog(), GraphCount()
    learn = mlp_learner(compile, cbs=[log, count], **kwargs)
    learn.fit_one_cycle(3, lr_max=1e-2)
    return learn, log, count


@pytest.fixture(scope="module")
def eager_run():
    return _one_cycle_run(False)


@pytest.fixture(scope="module")
def compiled_run():
    return _one_cycle_run(True)


@pytest.fixture(scope="module")
def fused_run():
    return _one_cycle_run(FUSED)


@pytest.mark.parametrize("run, step", [("compiled_run", "compiled"), ("fused_run", "fused")])
def test_compiled_fit_fires_the_same_events_in_the_same_order_as_eager(
    eager_run, run, step, request
):
    learn, log, _ = request.getfixturevalue(run)
    assert log.events == eager_run[1].events
    assert learn.compiler.regions == {"forward": "forward+loss", "step": step}


def test_the_step_is_fused_from_32768_parameter_elements_and_never_for_fused_false():
    small = torch.optim.AdamW(nn.Linear(8, 3).parameters())
    large = torch.optim.AdamW(nn.Linear(256, 128).parameters())  # 256 * 128 + 128 = 32896
    unfused = torch.optim.AdamW(nn.Linear(256, 128).parameters(), fused=False)
    rmsprop = torch.optim.RMSprop(nn.Linear(256, 128).parameters())
    assert [_step_kind(o, True) for o in (small, large, unfused, rmsprop)] == [
        "compiled",
        "fused",
        "compiled",
        "compiled",
    ]
    assert _step_kind(small, "fused") == "fused" and _step_kind(large, "compiled") == "compiled"
    with pytest.raises(ValueError, match="step='fused'.*got RMSprop"):
        _step_kind(rmsprop, "fused")
    with pytest.raises(ValueError, match="step must be True.*got 'fast'"):
        Compile(step="fast")


@pytest.mark.parametrize("run", ["compiled_run", "fused_run"])
def test_compiled_losses_match_eager_within_1e5_over_the_first_20_steps(eager_run, run, request):
    compiled_run = request.getfixturevalue(run)
    eager, compiled = eager_run[0].recorder.losses[:20], compiled_run[0].recorder.losses[:20]
    assert len(compiled) == 20
    for a, b in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-5)


# Graphs compiled in the first epoch: forward+loss for training and for validation, and the
# optimizer step when it is compiled (not when torch's fused kernel takes it).
@pytest.mark.parametrize("run, graphs", [("compiled_run", 3), ("fused_run", 2)])
def test_no_recompilation_after_the_first_epoch_with_short_batches_validation_and_schedules(
    run, graphs, request
):
    count = request.getfixturevalue(run)[2]
    assert len(count.per_epoch) == 3
    assert count.per_epoch[1] == count.per_epoch[0] and count.per_epoch[2] == count.per_epoch[0]
    # Flat because nothing recompiles, not because torch gave up and runs eagerly (a frame
    # over the recompile limit counts in "total" but not in "ok").
    new_graphs, total, ok = (a - b for a, b in zip(count.per_epoch[0], count.start))
    assert ok == total
    assert new_graphs == graphs


def test_the_fused_step_calls_torchs_fused_kernel_once_per_batch(monkeypatch):
    calls = []
    fused = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1) or fused(*a, **k))
    learn = mlp_learner(FUSED)
    learn.fit(1)
    assert len(calls) == 20  # 310 samples in batches of 16


def test_sgd_takes_the_fused_kernel_with_dense_gradients(monkeypatch):
    calls = []
    fused = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda *a, **k: calls.append(1) or fused(*a, **k))
    lin = nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    step = _fused_step(opt)
    for _ in range(3):
        lin(torch.ones(2, 4)).sum().backward()
        step()
    assert len(calls) == 3


def test_sgd_steps_eagerly_with_sparse_gradients_with_the_same_result():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 1)
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        emb.reset_parameters(), lin.reset_parameters()
        opt = torch.optim.SGD([*emb.parameters(), *lin.parameters()], lr=0.1)
        step = _fused_step(opt) if fused else opt.step
        for _ in range(3):
            lin(emb(torch.tensor([1, 2, 2]))).sum().backward()
            step()
            opt.zero_grad()
        results.append([p.detach().clone() for p in (emb.weight, lin.weight)])
    assert _fusable(opt)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_the_fused_step_leaves_the_optimizer_as_the_user_made_it(fused_run):
    # fused=True is set for each step only: the state dict an eager run loads says None.
    groups = fused_run[0].opt.state_dict()["param_groups"]
    assert [(g["fused"], g["foreach"]) for g in groups] == [(None, None)] * len(groups)


@pytest.mark.parametrize("run", ["compiled_run", "fused_run"])
def test_the_model_and_optimizer_are_left_uncompiled_after_the_fit(run, request):
    learn = request.getfixturevalue(run)[0]
    assert learn.forward_loss_fn is None
    assert "step" not in learn.opt.__dict__
    assert learn.model._compiled_call_impl is None


def test_compiled_checkpoint_has_no_orig_mod_prefix_and_loads_into_an_eagermlp_learner(
    compiled_run, tmp_path
):
    learn = compiled_run[0]
    learn.path = tmp_path
    state = torch.load(learn.save("compiled"), weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    eager = mlp_learner(False, path=tmp_path)
    eager.load("compiled")
    assert all(torch.equal(a, b) for a, b in zip(weights(eager).values(), weights(learn).values()))


def test_a_model_the_user_compiled_saves_without_orig_mod_prefix(tmp_path):
    model = torch.compile(nn.Linear(8, 3))
    learn = Learner(model, compile_data(), device="cpu", path=tmp_path)
    state = torch.load(learn.save("m"), weights_only=True)
    assert sorted(state["model"]) == ["bias", "weight"]
    learn.load("m")


class CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.at = epoch

    def before_epoch(self) -> None:
        if self.epoch == self.at:
            raise RuntimeError("simulated crash")


def _crash_then_backup(compile: bool | dict, folder, **attrs) -> None:
    learn = mlp_learner(compile, cbs=[CrashAtEpoch(2)], **attrs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        learn.fit_one_cycle(3, lr_max=1e-2, cbs=BackupAndRestore(folder))


def _resume(compile: bool | dict, folder, **attrs) -> Learner:
    learn = mlp_learner(compile, **attrs)
    learn.fit_one_cycle(3, lr_max=1e-2, cbs=BackupAndRestore(folder))
    return learn


def _dropout_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_dropout_draws_eagers_random_numbers_compiled_and_resumes_across_eager_and_compiled(
    tmp_path,
):
    # Inductor's own random numbers gave a compiled BERT losses 3% off eager; with
    # fallback_random (Compile's default) compiled dropout masks are eager's.
    eager = mlp_learner(False, model=_dropout_mlp())
    eager.fit_one_cycle(3, lr_max=1e-2)
    compiled = mlp_learner(True, model=_dropout_mlp())
    compiled.fit_one_cycle(3, lr_max=1e-2)
    assert compiled.recorder.raw_losses == pytest.approx(eager.recorder.raw_losses, rel=1e-5)
    # A compiled run's backup resumed eagerly continues the same random stream.
    _crash_then_backup(True, tmp_path, model=_dropout_mlp())
    resumed = _resume(False, tmp_path, model=_dropout_mlp())
    assert resumed.recorder.raw_losses == pytest.approx(eager.recorder.raw_losses, rel=1e-5)


def test_fallback_random_is_left_to_a_mode_another_backend_or_the_users_options():
    assert Compile().compile_kwargs["options"] == {"fallback_random": True}
    assert "options" not in Compile(mode="max-autotune").compile_kwargs
    assert "options" not in Compile(backend="eager").compile_kwargs
    options = Compile(options={"fallback_random": False}).compile_kwargs["options"]
    assert options == {"fallback_random": False}


@pytest.fixture(scope="module")
def compiled_backup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compiled_backup")
    _crash_then_backup(True, folder)
    return folder


def test_compiled_run_resumed_compiled_is_bit_identical_to_the_uninterrupted_one(
    compiled_run, compiled_backup, tmp_path
):
    folder = tmp_path / "b"
    folder.mkdir()
    for f in compiled_backup.iterdir():  # the backup is used by the next test too
        (folder / f.name).symlink_to(f)
    resumed = _resume(True, folder)
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(resumed).values(), weights(compiled_run[0]).values())
    )
    assert resumed.recorder.losses == compiled_run[0].recorder.losses


def test_a_fused_step_run_resumed_is_bit_identical_to_the_uninterrupted_one(fused_run, tmp_path):
    # The resume replaces the optimizer's param groups: the fused step must read the new ones.
    _crash_then_backup(FUSED, tmp_path)
    resumed = _resume(FUSED, tmp_path)
    assert resumed.compiler.regions["step"] == "fused"
    assert all(
        torch.equal(a, b) for a, b in zip(weights(resumed).values(), weights(fused_run[0]).values())
    )


def test_compiled_backup_resumes_eager_and_eager_backup_resumes_compiled(
    eager_run, compiled_backup, tmp_path
):
    eager_resumed = _resume(False, compiled_backup)
    _crash_then_backup(False, tmp_path)
    compiled_resumed = _resume(True, tmp_path)
    reference = weights(eager_run[0])
    for learn in (eager_resumed, compiled_resumed):
        for k, v in weights(learn).items():
            torch.testing.assert_close(v, reference[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make_cb",
    [
        lambda: GradientClip(max_norm=0.5),
        lambda: GradientAccumulation(n_acc=32),
        lambda: EMA(decay=0.9),
        lambda: MixedPrecision(torch.bfloat16),
    ],
    ids=["GradientClip", "GradientAccumulation", "EMA", "MixedPrecision-bf16"],
)
def test_each_supported_callback_trains_compiled_like_eager(make_cb):
    results = []
    for compile in (False, True):
        learn = mlp_learner(compile, cbs=[make_cb()])
        learn.fit(2, lr=1e-2)
        results.append((weights(learn), learn.recorder.values))
    bf16 = "MixedPrecision" in type(make_cb()).__name__
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    for k, v in results[1][0].items():
        torch.testing.assert_close(v, results[0][0][k], **tol)


@pytest.mark.parametrize(
    "make_cb", [lambda: MixUp(seed=3), lambda: CutMix(seed=3)], ids=["MixUp", "CutMix"]
)
def test_mixing_trains_compiled_like_eager_with_no_graph_after_the_first_epoch(make_cb):
    # The mixing weights change every batch; as floats in the loss they would be constants of
    # the graph. The 8 features as a 1x2x4 image, for CutMix's box.
    def imagemlp_learner(compile: bool, cbs: list) -> Learner:
        learn = mlp_learner(compile, cbs=cbs)
        learn.dls = DataLoaders(
            *[
                [(x.view(-1, 1, 2, 4), y) for x, y in dl]
                for dl in (learn.dls.train, learn.dls.valid)
            ]
        )
        learn.model = nn.Sequential(nn.Flatten(), learn.model)
        return learn

    count = GraphCount()
    compiled = imagemlp_learner(True, [make_cb(), count])
    compiled.fit(3)
    eager = imagemlp_learner(False, [make_cb()])
    eager.fit(3)
    assert compiled.recorder.raw_losses == pytest.approx(eager.recorder.raw_losses, rel=1e-5)
    assert count.per_epoch[2] == count.per_epoch[1] == count.per_epoch[0]
    graphs, total, ok = (a - b for a, b in zip(count.per_epoch[0], count.start))
    # Training and validation forward+loss, and the optimizer step; none given up.
    assert (graphs, ok) == (3, total)


class ZeroPred(Callback):
    def after_pred(self) -> None:
        self.learn.pred = self.learn.pred * 0


class DoubleLoss(Callback):
    def after_loss(self) -> None:
        self.learn.loss = self.learn.loss * 2


def test_a_callback_changing_pred_or_loss_works_compiled():
    learn = mlp_learner(True, cbs=[ZeroPred()])
    learn.fit(1)
    # The loss of all-zero logits over 3 classes is log(3), whatever the weights.
    assert learn.compiler.regions["forward"] == "forward"
    assert learn.recorder.losses[-1] == pytest.approx(math.log(3), rel=1e-6)
    learn = mlp_learner(True, cbs=[DoubleLoss()])
    learn.fit(1)
    assert learn.compiler.regions["forward"] == "forward+loss"
    eager = mlp_learner(False, cbs=[DoubleLoss()])
    eager.fit(1)
    assert learn.recorder.losses == pytest.approx(eager.recorder.losses, rel=1e-5)


class NeedsEagerStep(Callback):
    compile_eager = ("step",)


def test_a_callback_that_cannot_run_compiled_keeps_its_region_eager_with_one_warning():
    learn = mlp_learner(True, cbs=[NeedsEagerStep()])
    with pytest.warns(UserWarning, match="optimizer step run eagerly.*NeedsEagerStep") as w:
        learn.fit(1)
    assert len([x for x in w if "Compile" in str(x.message)]) == 1
    assert learn.compiler.regions == {"forward": "forward+loss", "step": "eager"}


def test_learn_compile_adds_one_compile_callback_and_rejects_unknown_arguments():
    learn = mlp_learner(False)
    learn.compile(mode="default")
    learn.compile(dynamic=None)
    assert [type(cb) for cb in learn.cbs].count(Compile) == 1
    assert isinstance(learn.compiler, Compile)
    assert isinstance(mlp_learner(True).compiler, Compile)
    with pytest.raises(ValueError, match="unknown torch.compile argument.*'modes'"):
        Compile(modes="default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs)")
def test_reduce_overhead_mode_trains_on_cuda_like_eager():
    results = []
    for compile in (False, {"mode": "reduce-overhead"}):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        learn = Learner(model, compile_data(), device="cuda", compile=compile)
        learn.logger = lambda *a: None
        learn.fit(2, lr=1e-2)
        results.append(learn.recorder.losses)
    assert results[1] == pytest.approx(results[0], rel=1e-4)
