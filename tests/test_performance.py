"""Performance as behaviour: no host-device sync per batch, a dispatch table of handlers only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hookloop.learner
from conftest import tiny_learner
from hookloop import Callback, DataLoaders, Learner, accuracy
from hookloop.data import on_device
from hookloop.events import EVENTS

# Calls that copy a tensor's value to the host (a device sync on CUDA).
HOST_READS = frozenset(
    {"item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__"}
)

# The events between before_batch and after_batch, cancels included, in the loop's order.
BATCH_EVENTS = EVENTS[EVENTS.index("before_batch") : EVENTS.index("after_batch") + 1]


class HostReads(torch.Tensor):
    """A tensor that logs every read of its value on the host; ops on it return HostReads too,
    so values derived from it (the detached loss, stacked losses, metrics) are logged as well."""

    log: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            cls.log.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


class LoggedLinear(nn.Module):
    """nn.Linear(4, 2) whose predictions are HostReads tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).as_subclass(HostReads)


def logged_cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(pred, target).as_subclass(HostReads)


def host_reads_of_fit(n_train: int, n_epoch: int, **learner_kwargs) -> list[str]:
    """Host reads of per-batch losses and predictions during fit: bs 4, 8 validation samples."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(n_train + 8, 4, generator=g),
        torch.randint(0, 2, (n_train + 8,), generator=g),
    )
    dls = DataLoaders.from_tensors(x[:n_train], y[:n_train], valid=(x[n_train:], y[n_train:]), bs=4)
    learn = Learner(
        LoggedLinear(), dls, logged_cross_entropy, metrics=accuracy, device="cpu", **learner_kwargs
    )
    learn.logger = lambda line: None
    HostReads.log = []
    learn.fit(n_epoch)
    return list(HostReads.log)


def test_host_reads_are_three_per_epoch_whatever_the_number_of_batches():
    # One tolist for the epoch's training losses, one float each for valid_loss and accuracy.
    per_epoch = ["tolist", "__float__", "__float__"]
    assert host_reads_of_fit(n_train=8, n_epoch=1) == per_epoch  # 2 + 1 batches
    assert host_reads_of_fit(n_train=24, n_epoch=1) == per_epoch  # 6 + 1 batches
    assert host_reads_of_fit(n_train=24, n_epoch=2) == per_epoch * 2


def test_train_metrics_add_one_host_read_per_epoch_not_per_batch():
    reads = host_reads_of_fit(n_train=24, n_epoch=2, train_metrics=True)
    assert reads == ["tolist", "__float__", "__float__", "__float__"] * 2


def test_a_drawn_progress_bar_reads_the_loss_only_when_it_redraws():
    # With an hour between redraws the bar draws only when it opens and closes, when the
    # Recorder has nothing pending: no read beyond the epoch's own three.
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    dls = DataLoaders.from_tensors(x[:24], y[:24], valid=(x[24:], y[24:]), bs=4)
    learn = Learner(LoggedLinear(), dls, logged_cross_entropy, metrics=accuracy, device="cpu")
    learn.progress_bar.show_bar = True
    learn.progress_bar.mininterval = 3600.0
    HostReads.log = []
    learn.fit(2)
    assert HostReads.log == ["tolist", "__float__", "__float__"] * 2


class SyncErrorsInBatches(Callback):
    """Turns CUDA's sync debug mode to 'error' from the first before_batch handler..."""

    order = -1000

    def before_batch(self) -> None:
        torch.cuda.set_sync_debug_mode("error")


class SyncAllowedBetweenBatches(Callback):
    """...to the last after_batch handler, so the per-epoch reads may sync."""

    order = 1000

    def after_batch(self) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_inside_a_batch_on_cuda():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    dls = DataLoaders.from_tensors(x[:48], y[:48], valid=(x[48:], y[48:]), bs=8, device="cuda")
    learn = Learner(
        nn.Linear(4, 2),
        dls,
        nn.CrossEntropyLoss(),
        opt_func=torch.optim.SGD,
        lr=0.1,
        metrics=accuracy,
        device="cuda",
        cbs=[SyncErrorsInBatches(), SyncAllowedBetweenBatches()],
    )
    learn.logger = lambda line: None
    try:
        learn.fit(2)  # a synchronizing call inside a batch raises RuntimeError
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(learn.recorder.losses) == 12  # 6 training batches x 2 epochs


class AfterPred(Callback):
    def after_pred(self) -> None:
        pass


class EpochOnly(Callback):
    """Handles fit- and epoch-level events only."""

    def before_fit(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass


def test_the_dispatch_table_holds_only_the_handlers_callbacks_define():
    cb = AfterPred()
    learn = tiny_learner(cbs=[cb])
    for phase in ("train", "valid"):
        table = learn._tables[phase]
        assert set(table) == set(EVENTS)
        assert table["after_pred"] == (cb.after_pred,)
        # Nobody handles these: the loop finds an empty tuple.
        for event in ("before_batch", "after_loss", "before_backward", "before_step"):
            assert table[event] == ()
        for event, handlers in table.items():
            assert isinstance(handlers, tuple)
            for h in handlers:
                assert hasattr(type(h.__self__), event)


def handler_classes(learn: Learner, phase: str, event: str) -> list[str]:
    return [type(h.__self__).__name__ for h in learn._tables[phase][event]]


def test_fifty_callbacks_without_batch_handlers_add_nothing_to_batch_events():
    plain = tiny_learner()
    inert = tiny_learner(cbs=[EpochOnly() for _ in range(50)])
    for phase in ("train", "valid"):
        for event in BATCH_EVENTS:
            assert handler_classes(inert, phase, event) == handler_classes(plain, phase, event)
        for event in ("before_fit", "before_epoch", "after_epoch"):
            assert handler_classes(inert, phase, event).count("EpochOnly") == 50
    assert handler_classes(plain, "train", "after_batch") == ["Recorder", "ProgressBar"]


def count_moves(monkeypatch) -> list:
    calls: list = []
    real = hookloop.learner.to_device

    def counting_to_device(b, device):
        calls.append(1)
        return real(b, device)

    monkeypatch.setattr(hookloop.learner, "to_device", counting_to_device)
    return calls


def test_batches_from_a_loader_on_the_learners_device_are_not_moved_again(monkeypatch):
    learn = tiny_learner(n_train=8, n_valid=4, bs=4)  # TensorLoaders on the cpu
    assert learn.dls.train.device == torch.device("cpu")
    calls = count_moves(monkeypatch)
    learn.fit(1)
    assert calls == []


def test_a_loader_whose_first_batch_is_on_the_device_is_not_moved(monkeypatch):
    learn = tiny_learner(n_train=8, n_valid=4, bs=4)
    batches = list(learn.dls.train)  # a plain list of 2 batches has no `device`
    learn.dls = DataLoaders(batches, list(learn.dls.valid))
    calls = count_moves(monkeypatch)
    learn.fit(1)
    assert calls == []  # the first batch of each phase was checked, and it was already there


def test_on_device_sees_a_nested_tensor_that_is_elsewhere():
    cpu = torch.device("cpu")
    assert on_device((torch.zeros(2), [torch.zeros(1)], {"m": torch.zeros(1)}), cpu)
    assert not on_device((torch.zeros(2), [torch.zeros(1, device="meta")]), cpu)
