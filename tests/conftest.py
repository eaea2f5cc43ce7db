"""Shared test helpers: tiny data and learners, a scripted loss, a local HTTP server, event log,
and two forked ranks on gloo."""

from __future__ import annotations

import http.server
import multiprocessing
import os
import socket
import sys
import threading
import traceback
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from hookloop import Callback, DataLoaders, Learner
from hookloop.events import EVENTS


def tiny_dls(n_train: int = 4, n_valid: int = 4, bs: int = 4, seed: int = 0) -> DataLoaders:
    """n_train/bs training batches and n_valid/bs validation batches of 4-feature, 2-class data."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.randn(n_train, 4, generator=g), torch.randint(0, 2, (n_train,), generator=g)
    xv, yv = torch.randn(n_valid, 4, generator=g), torch.randint(0, 2, (n_valid,), generator=g)
    return DataLoaders.from_tensors(xt, yt, valid=(xv, yv), bs=bs, shuffle=False)


def sign_dls(bs: int = 16) -> DataLoaders:
    """48 training rows (3 batches of 16) and 16 validation rows (1 batch); y = x[:, 0] > 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoaders.from_tensors(x, y, valid_pct=0.25, bs=bs, seed=0)


def tiny_learner(cbs=None, n_train: int = 4, n_valid: int = 4, bs: int = 4, **kwargs) -> Learner:
    torch.manual_seed(0)
    kwargs.setdefault("device", "cpu")
    learn = Learner(
        nn.Linear(4, 2), tiny_dls(n_train, n_valid, bs), nn.CrossEntropyLoss(), cbs=cbs, **kwargs
    )
    learn.logger = lambda line: None  # keep test output quiet
    return learn


def tensor_learner(model, x, y, bs, cbs=None, lr=0.1, loss_func=None, valid=None, **kwargs):
    """A Learner with SGD on CPU over (x, y) in unshuffled batches of `bs` (MSE by default)."""
    dls = DataLoaders.from_tensors(x, y, valid_pct=None, valid=valid, bs=bs, shuffle=False)
    learn = Learner(
        model,
        dls,
        loss_func or nn.MSELoss(),
        opt_func=torch.optim.SGD,
        lr=lr,
        cbs=cbs,
        device="cpu",
        **kwargs,
    )
    learn.logger = lambda line: None
    return learn


class ScriptedLoss:
    """Returns the next of `values` as the loss, with a gradient path through pred."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, pred, y):
        return pred.sum() * 0 + self.values.pop(0)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 recording every POST as (path, headers, body)."""
    received = []
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, dict(self.headers), body.decode()))
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    server.received, server.status = received, status
    server.root = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


class EventLog(Callback):
    """Appends the name of every event it sees to `self.events`."""

    order = -100

    def __init__(self, raise_at: dict | None = None) -> None:
        self.events: list[str] = []
        self.raise_at = raise_at or {}
        for event in EVENTS:
            # Bound to self, as a method would be, so error notes can name the callback.
            self.__dict__[event] = types.MethodType(self._recorder(event), self)

    def _recorder(self, event: str):
        def record(_self) -> None:
            self.events.append(event)
            exc = self.raise_at.get(event)
            if exc is not None:
                self.raise_at.pop(event)
                raise exc

        return record


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Tiny models run far faster on one thread, and the suite shares 2 cores with itself.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class OwnLossClassifier(nn.Module):
    """Hugging Face's shape: keyword inputs, a dict output carrying its own loss and logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)

    def forward(self, x, labels=None):
        logits = self.lin(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Crash(Exception):
    """What CrashAt raises: a crash the tests can tell from a real error."""


class CrashAt(Callback):
    """Raises at the start of training batch `k` (1-based, counted over the fit)."""

    def __init__(self, k: int) -> None:
        self.k, self.seen = k, 0

    def before_batch(self) -> None:
        if self.training:
            self.seen += 1
            if self.seen == self.k:
                raise Crash()


# ---- two processes on gloo ----------------------------------------------------------------------

# A forked child starts in milliseconds (torch is already imported); a spawned one takes ~5 s.
RUN_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_child(target: Callable[[int, Path], None], rank_: int, port: int, folder: Path) -> None:
    # A torchrun-like environment; the group itself is created by hookloop at fit time.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank_),
        LOCAL_RANK=str(rank_),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    sys.stdout = open(folder / f"stdout{rank_}.txt", "w", buffering=1)  # noqa: SIM115
    try:
        target(rank_, folder)
    except BaseException:
        (folder / f"error{rank_}.txt").write_text(traceback.format_exc())
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def run_two_ranks(target: Callable[[int, Path], None], folder: Path) -> list[int | None]:
    """Fork two ranks running `target(rank, folder)`; their exit codes (None: killed at timeout).

    Each rank writes its stdout to `folder/stdout{rank}.txt` and, if it raises, the traceback
    to `folder/error{rank}.txt` (see `rank_errors`). A rank that runs torch.compile sets
    `torch._inductor.config.compile_threads = 1` first (test_compile_distributed.py says why)."""
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_rank_child, args=(target, r, port, folder)) for r in range(2)]
    for p in procs:
        p.start()
    codes: list[int | None] = []
    for p in procs:
        p.join(RUN_TIMEOUT)
        if p.exitcode is None:
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def rank_errors(folder: Path) -> str:
    """The tracebacks the ranks of `run_two_ranks` wrote (empty if none raised)."""
    return "\n".join(f.read_text() for r in range(2) if (f := folder / f"error{r}.txt").exists())
