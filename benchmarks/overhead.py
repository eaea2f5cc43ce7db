"""Loop overhead: hookloop against a hand-written PyTorch loop, measured side by side.

Run `python benchmarks/overhead.py` (under a minute on an idle machine). Every configuration
trains the same tiny MLP (Linear(32,32)-ReLU-Linear(32,10), bs 64, SGD, cross-entropy,
pre-made batches, one CPU thread) for one epoch at a time; the configurations take turns
(interleaved, in a shuffled order each round), and each epoch's time is divided by the
reference's epoch time of the same round. The tables show the median of those paired ratios and
their min-max: a noisy neighbour slows both sides of a pair alike. The default clock is this
thread's CPU time, which leaves out the time spent waiting for a busy CPU (`--clock wall` to
compare). Timings are printed, never asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hookloop import Callback, DataLoaders, Learner, accuracy

N_FEATURES, N_CLASSES, BS = 32, 10, 64
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Labels from a fixed linear teacher, so the loss falls and stays finite for many epochs.
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(N_FEATURES, N_CLASSES, generator=torch.Generator().manual_seed(42))
    x = torch.randn(n, N_FEATURES, generator=g)
    return x, (x @ teacher).argmax(1)


def premade_batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + BS], y[i : i + BS]) for i in range(0, len(x), BS)]


# ---- the configurations: each returns a function that runs one epoch -----------------------


def plain_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: list,
    valid: list,
    with_accuracy: bool,
    log: list,
) -> Callable[[], None]:
    """The hand-written loop a reader would write: train, then validate, one line per epoch."""
    loss_func = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        for xb, yb in train:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        total, correct, n = torch.zeros(()), torch.zeros(()), 0
        with torch.no_grad():
            for xb, yb in valid:
                pred = model(xb)
                total += loss_func(pred, yb) * len(yb)
                if with_accuracy:
                    correct += (pred.argmax(-1) == yb).sum()
                n += len(yb)
        log.append(f"valid_loss {float(total) / n:.4f} accuracy {float(correct) / n:.4f}")

    return epoch


class EpochCounter(Callback):
    """Handles only fit- and epoch-level events: it must add nothing to a batch."""

    def before_fit(self) -> None:
        self.epochs = 0

    def before_epoch(self) -> None:
        self.epochs += 1

    def after_epoch(self) -> None:
        pass

    def after_fit(self) -> None:
        pass


def hookloop_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: list,
    valid: list,
    bar: bool,
    metrics: list,
    cbs: list,
    log: list,
    stack: contextlib.ExitStack,
) -> Learner:
    learn = Learner(
        model,
        DataLoaders(train, valid),
        nn.CrossEntropyLoss(),
        opt_func=torch.optim.SGD,
        lr=0.01,
        metrics=metrics,
        cbs=cbs,
        device="cpu",
    )
    learn.opt = opt  # the same optimizer object as the plain loop's (see loop_table)
    learn.logger = log.append
    if bar:
        # Draw the bar (to the null device) so its per-batch update and redraws are counted.
        learn.progress_bar.show_bar = True
    else:
        stack.enter_context(learn.no_bar())
    return learn


def optional_rows(
    model: nn.Module, opt: torch.optim.Optimizer, train: list, valid: list
) -> tuple[dict[str, Callable[[], None]], list[str]]:
    """Rows for other libraries, when installed; the second item says what was left out."""
    rows: dict[str, Callable[[], None]] = {}
    notes = []
    if importlib.util.find_spec("ignite") is not None:
        from ignite.engine import create_supervised_evaluator, create_supervised_trainer
        from ignite.metrics import Loss

        loss_func = nn.CrossEntropyLoss()
        trainer = create_supervised_trainer(model, opt, loss_func)
        evaluator = create_supervised_evaluator(model, metrics={"loss": Loss(loss_func)})

        def ignite_epoch() -> None:
            trainer.run(train, max_epochs=1)
            evaluator.run(valid)

        rows["Ignite"] = ignite_epoch
    else:
        notes.append("Ignite is not installed")
    for name, module in (("fastai", "fastai"), ("Lightning", "lightning")):
        state = "installed" if importlib.util.find_spec(module) is not None else "not installed"
        notes.append(f"{name} is {state} (no row written for it yet)")
    return rows, notes


# ---- measurement -----------------------------------------------------------------------------


def interleave(
    fns: dict[str, Callable[[], None]], repeats: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds per call of each function; every round calls each once, in a shuffled order.

    Shuffled, not rotated: with a fixed cyclic order each function would always follow the
    same neighbour and inherit the same warm or cold caches.
    """
    names = list(fns)
    for fn in fns.values():  # warm-up: first-call allocations and lazy imports
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for _ in range(repeats):
        for name in rng.sample(names, len(names)):
            t0 = clock()
            fns[name]()
            times[name].append(clock() - t0)
    return times


def ratios(times: dict[str, list[float]], name: str, ref: str) -> list[float]:
    return [a / b for a, b in zip(times[name], times[ref])]


def fmt_ratio(rs: list[float]) -> str:
    return f"{statistics.median(rs):6.3f}  [{min(rs):.3f}-{max(rs):.3f}]"


# Each row's reference: the plain loop that computes what the row computes.
REFERENCES = {
    "plain loop": "plain loop",
    "plain loop + accuracy": "plain loop",
    "hookloop barebones": "plain loop",
    "hookloop default": "plain loop + accuracy",
    "default + 50 inert cbs": "plain loop + accuracy",
}


def loop_table(args: argparse.Namespace, clock: Callable[[], float]) -> list[str]:
    x, y = make_data(args.train_batches * BS, seed=0)
    xv, yv = make_data(args.valid_batches * BS, seed=1)
    train, valid = premade_batches(x, y), premade_batches(xv, yv)
    # One model and optimizer for all rows: separate copies would sit at different addresses
    # and differ by a few percent in cache behaviour alone, which is the size of the effect.
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log: list[str] = []
    with contextlib.ExitStack() as stack:

        def hookloop(bar: bool, metrics: list, cbs: list) -> Callable[[], None]:
            learn = hookloop_loop(model, opt, train, valid, bar, metrics, cbs, log, stack)
            return lambda: learn.fit(1)

        fns = {
            "plain loop": plain_loop(model, opt, train, valid, False, log),
            "plain loop + accuracy": plain_loop(model, opt, train, valid, True, log),
            "hookloop barebones": hookloop(False, [], []),
            "hookloop default": hookloop(True, [accuracy], []),
            "default + 50 inert cbs": hookloop(
                True, [accuracy], [EpochCounter() for _ in range(50)]
            ),
        }
        extra, notes = optional_rows(model, opt, train, valid)
        fns.update(extra)
        with open(os.devnull, "w") as null:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                times = interleave(fns, args.repeats, clock)
    steps = args.train_batches
    lines = [
        f"Loop: one epoch = {steps} training + {args.valid_batches} validation batches of {BS}; "
        f"{args.repeats} interleaved epochs per row",
        "",
        f"{'configuration':<24} {'us/step':>8}  {'ratio: median [min-max]':<26} reference",
        "-" * 84,
    ]
    for name in fns:
        ref = REFERENCES.get(name, "plain loop")
        us = statistics.median(times[name]) / steps * 1e6
        shown = "-" if name == ref else ref
        lines.append(f"{name:<24} {us:8.1f}  {fmt_ratio(ratios(times, name, ref)):<26} {shown}")
    diffs = [
        (a - b) / steps * 1e6
        for a, b in zip(times["default + 50 inert cbs"], times["hookloop default"])
    ]
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    lines += [
        "",
        "us/step: epoch time (validation and one fit() call included) / training steps.",
        f"50 inert callbacks, paired epoch difference: {statistics.median(diffs):+.2f} us/step "
        f"(quartiles {q1:+.2f} to {q3:+.2f}; see the dispatch table for the exact cost)",
    ]
    lines.append(f"Other libraries: {'; '.join(notes)}.")
    return lines


# The events of one training step, in the order the loop fires them.
STEP_EVENTS = (
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
)
FIT_EVENTS = ("before_fit", "before_epoch", "after_epoch", "after_fit")


def dispatch_table(args: argparse.Namespace, clock: Callable[[], float]) -> list[str]:
    """The dispatch alone, without a model: what 50 inert callbacks add per step and per fit."""
    x, y = make_data(BS, seed=0)

    def learner(cbs: list) -> Learner:
        learn = Learner(
            make_model(), DataLoaders([(x, y)], None), nn.CrossEntropyLoss(), cbs=cbs, device="cpu"
        )
        learn.logger = lambda line: None
        with learn.no_bar():
            learn.fit(1)  # so the handlers find the state a fit leaves (loss, counters)
        learn.training = True
        return learn

    default, inert = learner([]), learner([EpochCounter() for _ in range(50)])
    bare_inert = learner([EpochCounter() for _ in range(50)])
    bare_inert.remove_cbs([c for c in bare_inert.cbs if not isinstance(c, EpochCounter)])
    n = 20_000

    def fire(learn: Learner, events: tuple[str, ...], reps: int) -> float:
        t0 = clock()
        for _ in range(reps):
            for event in events:
                learn(event)
        return (clock() - t0) / reps * 1e6

    # Best of 5, the two learners taking turns.
    best: dict[str, float] = {"default": math.inf, "inert": math.inf, "fit": math.inf}
    for _ in range(5):
        best["default"] = min(best["default"], fire(default, STEP_EVENTS, n))
        best["inert"] = min(best["inert"], fire(inert, STEP_EVENTS, n))
        best["fit"] = min(best["fit"], fire(bare_inert, FIT_EVENTS, n // 10))
    step_default, step_inert, per_fit = best["default"], best["inert"], best["fit"]

    def handlers(learn: Learner) -> int:
        return sum(len(learn._handlers[e]) for e in STEP_EVENTS)

    steps = args.train_batches
    return [
        "Dispatch alone (no model; best of 5 x 20k):",
        f"  one training step's {len(STEP_EVENTS)} events, default callbacks: "
        f"{step_default:.2f} us ({handlers(default)} handlers)",
        f"  the same with 50 inert callbacks:                 "
        f"{step_inert:.2f} us ({handlers(inert)} handlers)",
        f"  the 50 inert callbacks' fit and epoch events:     {per_fit:.1f} us per epoch "
        f"= {per_fit / steps:.2f} us/step over {steps} steps",
    ]


def data_table(args: argparse.Namespace, clock: Callable[[], float]) -> list[str]:
    n = args.train_batches * BS
    x, y = make_data(n, seed=0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_func = nn.CrossEntropyLoss()
    tensor_loader = DataLoaders.from_tensors(x, y, valid_pct=None, bs=BS, shuffle=True).train
    torch_loader = DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True)
    epoch = [0]

    def hand_slicing():
        g = torch.Generator().manual_seed(epoch[0])
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BS):
            idx = perm[i : i + BS]
            yield x[idx], y[idx]

    def from_tensors():
        tensor_loader.set_epoch(epoch[0])
        return iter(tensor_loader)

    sources = {
        "hand-written slicing": hand_slicing,
        "DataLoaders.from_tensors": from_tensors,
        "DataLoader(TensorDataset)": lambda: iter(torch_loader),
    }

    def iterate_only(source):
        def run():
            epoch[0] += 1
            for _ in source():
                pass

        return run

    def train_on(source):
        def run():
            epoch[0] += 1
            for xb, yb in source():
                loss = loss_func(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad()

        return run

    fns = {f"iter {k}": iterate_only(s) for k, s in sources.items()}
    fns.update({f"train {k}": train_on(s) for k, s in sources.items()})
    times = interleave(fns, args.repeats, clock)
    lines = [
        f"Data path: {args.train_batches} shuffled batches of {BS} per epoch, "
        f"{args.repeats} interleaved epochs per row; ratios to hand-written slicing",
        "",
        f"{'loader':<26} {'us/batch':>8}  {'iterate only: ratio':<26} {'with the training step'}",
        "-" * 90,
    ]
    for k in sources:
        it, tr = f"iter {k}", f"train {k}"
        us = statistics.median(times[it]) / args.train_batches * 1e6
        iterate = fmt_ratio(ratios(times, it, "iter hand-written slicing"))
        with_step = fmt_ratio(ratios(times, tr, "train hand-written slicing"))
        lines.append(f"{k:<26} {us:8.1f}  {iterate:<26} {with_step}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="interleaved epochs per row")
    # 400 batches of 64: a small data set's epoch (MNIST is 938), so the per-epoch work
    # (fit() itself, the bar's setup, the epoch's averages) weighs as it does in practice.
    parser.add_argument("--train-batches", type=int, default=400)
    parser.add_argument("--valid-batches", type=int, default=100)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this thread's CPU time (ignores time spent waiting for a busy CPU); wall",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    t0 = time.perf_counter()
    print(
        f"hookloop overhead benchmark: torch {torch.__version__}, Python "
        f"{platform.python_version()}, {torch.get_num_threads()} thread, clock={args.clock}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print()
    print("\n".join(loop_table(args, clock)))
    print()
    print("\n".join(dispatch_table(args, clock)))
    print()
    print("\n".join(data_table(args, clock)))
    print()
    print(f"total {time.perf_counter() - t0:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
