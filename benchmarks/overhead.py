"""Loop overhead: hookloop against a hand-written PyTorch loop, measured side by side.

Run `python benchmarks/overhead.py` (about 40 s on an idle machine). Every configuration
trains the same tiny MLP (Linear(32,32)-ReLU-Linear(32,10), bs 64, SGD, cross-entropy,
pre-made batches, one CPU thread) for one epoch at a time; the configurations take turns
(interleaved, in a shuffled order each round), and each epoch's time is divided by the
reference's epoch time of the same round. The tables show the median of those paired ratios and
their min-max: a noisy neighbour slows both sides of a pair alike. The default clock is this
thread's CPU time, which leaves out the time spent waiting for a busy CPU (`--clock wall` to
compare). Timings are printed, never asserted in tests.

hookloop resets gradients as `opt.zero_grad()` does by default (`p.grad = None`) without the
profiler annotation torch wraps around each call (~9 us here), so the hookloop rows are also
compared with a plain loop that resets them the same way: the "equal-work ratio", the cost of
hookloop's machinery alone.

Rows for PyTorch-Ignite, Lightning and fastai are added when the library can be imported (CI
installs none of them), each on the same model, optimizer settings and batches, without a
progress bar, logger or checkpoints, and each against the plain loop. Installing them unpinned
lets pip replace torch with another version (a CUDA build of several GB), so pin the installed one:
    echo "torch==$(python -c 'import torch; print(torch.__version__)')" > torch-constraint.txt
    pip install -c torch-constraint.txt pytorch-ignite lightning fastai
If `python -c "import torchvision"` then fails (fastai pulled a CUDA torchvision next to a CPU
torch), `pip uninstall torchvision`: no row needs it, and a broken one makes `import lightning`
fail (through torchmetrics). A library that fails to import or to run an epoch is left out with
a one-line note. With all three rows it takes about 70 s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hookloop import Callback, DataLoaders, Learner, accuracy
from hookloop.events import EVENTS

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
    grads_to_none: bool = False,
) -> Callable[[], None]:
    """The hand-written loop a reader would write: train, then validate, one line per epoch.

    `grads_to_none`: reset the gradients with `p.grad = None`, as hookloop's loop does, instead
    of `opt.zero_grad()` (same effect; torch's adds a profiler annotation costing ~9 us a call).
    """
    loss_func = nn.CrossEntropyLoss()
    params = [p for group in opt.param_groups for p in group["params"]]

    def epoch() -> None:
        model.train()
        for xb, yb in train:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            if grads_to_none:
                for p in params:
                    p.grad = None
            else:
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


class Batches:
    """The pre-made batch list behind the minimal interface the other libraries' loops use.

    Lightning reads a bare list as a list of loaders (each tuple would be a loader of its own),
    so it needs a non-list iterable. fastai takes the list as it is, but its loop looks up the
    loader's `device` and `n_inp` on every batch, which its own DataLoader answers directly and
    a list only through a failed lookup; they are given here as fastai's DataLoader gives them.
    """

    n_inp = 1

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def to(self, device: torch.device) -> Batches:
        self.device = device
        return self


def ignite_row(
    model: nn.Module, opt: torch.optim.Optimizer, train: list, valid: list, log: list
) -> Callable[[], None]:
    from ignite.engine import create_supervised_evaluator, create_supervised_trainer
    from ignite.metrics import Loss

    loss_func = nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(model, opt, loss_func)
    # Loss averages over samples (batch loss times batch size), as the plain loop does.
    evaluator = create_supervised_evaluator(model, metrics={"loss": Loss(loss_func)})

    def epoch() -> None:
        # A finished run restarts from epoch 0 on the next run() call: one epoch per call.
        trainer.run(train, max_epochs=1)
        evaluator.run(valid)
        log.append(f"valid_loss {evaluator.state.metrics['loss']:.4f}")

    return epoch


def lightning_row(
    model: nn.Module, opt: torch.optim.Optimizer, train: list, valid: list, log: list
) -> Callable[[], None]:
    import lightning

    # Its info lines ("GPU available", tips, "`Trainer.fit` stopped" after every fit) go to a
    # handler bound to the real stderr, which the redirection around the timings cannot reach.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.loss_func = nn.CrossEntropyLoss()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
            xb, yb = batch
            return self.loss_func(self.model(xb), yb)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], i: int) -> None:
            xb, yb = batch
            # Lightning's own way to a validation loss: the epoch's mean weighted by batch_size.
            self.log("valid_loss", self.loss_func(self.model(xb), yb), batch_size=len(yb))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return opt  # the plain loop's optimizer object, as for the hookloop rows

    module = Module()
    trainer = lightning.Trainer(
        max_epochs=0,  # raised by one before each fit(): one Trainer, one more epoch per call
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,  # else every fit() would start with 2 extra validation batches
        accelerator="cpu",
        devices=1,
    )
    train_batches, valid_batches = Batches(train), Batches(valid)

    def epoch() -> None:
        # Lightning 2 keeps the mode it finds instead of calling train() (and warns if any
        # module is in eval mode); the other rows left the shared model in eval mode.
        module.train()
        trainer.fit_loop.max_epochs += 1
        trainer.fit(module, train_dataloaders=train_batches, val_dataloaders=valid_batches)
        log.append(f"valid_loss {float(trainer.callback_metrics['valid_loss']):.4f}")

    return epoch


def fastai_row(
    model: nn.Module, opt: torch.optim.Optimizer, train: list, valid: list, log: list
) -> Callable[[], None]:
    from functools import partial

    from fastai.callback.progress import ProgressCallback
    from fastai.data.core import DataLoaders as FastaiDataLoaders
    from fastai.learner import Learner as FastaiLearner
    from fastai.optimizer import SGD

    dls = FastaiDataLoaders(Batches(train), Batches(valid), device=torch.device("cpu"))
    learn = FastaiLearner(
        dls,
        model,
        loss_func=nn.CrossEntropyLoss(),
        # fastai drives its optimizer through set_hypers, which a torch optimizer lacks, so
        # not the plain loop's object: fastai's SGD with mom=0 and wd=0 is fastai's plain
        # SGD, the same update as torch.optim.SGD(lr=0.01) on the same parameters.
        opt_func=partial(SGD, mom=0.0, wd=0.0),
        lr=0.01,
        cbs=[],
    )
    learn.remove_cb(ProgressCallback)
    # The Recorder's line per epoch goes to the list the other rows write to, not to print().
    learn.logger = log.append
    return lambda: learn.fit(1)


OPTIONAL_ROWS = (
    # (row name, library, module to import, distribution for the version, row builder, note)
    ("Ignite", "Ignite", "ignite", "pytorch-ignite", ignite_row, ""),
    ("Lightning (no bar)", "Lightning", "lightning", "lightning", lightning_row, ""),
    ("fastai (no bar)", "fastai", "fastai", "fastai", fastai_row, " (fastai's SGD, mom=0 wd=0)"),
)


def optional_rows(
    model: nn.Module, opt: torch.optim.Optimizer, train: list, valid: list, log: list
) -> tuple[dict[str, Callable[[], None]], list[str]]:
    """Rows for other libraries, when installed; the second item says what each row used."""
    rows: dict[str, Callable[[], None]] = {}
    notes = []
    for row, library, module, distribution, build, note in OPTIONAL_ROWS:
        if importlib.util.find_spec(module) is None:
            notes.append(f"{library} is not installed")
            continue
        try:
            with open(os.devnull, "w") as null:
                with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                    fn = build(model, opt, train, valid, log)
                    # One epoch now, so that a library that cannot run here is left out
                    # before the timings start, not in the middle of them.
                    fn()
        except Exception as e:
            message = (str(e).splitlines() or [""])[0][:120]
            notes.append(f"{library} left out, it failed: {type(e).__name__}: {message}")
            continue
        rows[row] = fn
        notes.append(f"{library} {importlib.metadata.version(distribution)}{note}")
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
    "plain, grads to None": "plain loop",
    "plain + acc, grads None": "plain loop + accuracy",
    "hookloop barebones": "plain loop",
    "hookloop default": "plain loop + accuracy",
    "default + 50 inert cbs": "plain loop + accuracy",
}


# hookloop rows against the plain loop doing the same torch work (see plain_loop).
EQUAL_WORK = {
    "hookloop barebones": "plain, grads to None",
    "hookloop default": "plain + acc, grads None",
    "default + 50 inert cbs": "plain + acc, grads None",
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
            "plain, grads to None": plain_loop(model, opt, train, valid, False, log, True),
            "plain + acc, grads None": plain_loop(model, opt, train, valid, True, log, True),
            "hookloop barebones": hookloop(False, [], []),
            "hookloop default": hookloop(True, [accuracy], []),
            "default + 50 inert cbs": hookloop(
                True, [accuracy], [EpochCounter() for _ in range(50)]
            ),
        }
        extra, notes = optional_rows(model, opt, train, valid, log)
        with open(os.devnull, "w") as null:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                times = interleave(fns, args.repeats, clock)
                # The other libraries take turns with the plain loop in a run of their own:
                # their heavier epochs (more objects, more memory) would otherwise change the
                # cache and allocator state the hookloop rows and their references start from.
                others = interleave({"plain loop": fns["plain loop"], **extra}, args.repeats, clock)
    steps = args.train_batches
    lines = [
        f"Loop: one epoch = {steps} training + {args.valid_batches} validation batches of {BS}; "
        f"{args.repeats} interleaved epochs per row",
        "",
        f"{'configuration':<24} {'us/step':>8}  {'ratio: median [min-max]':<26} "
        f"{'reference':<22} equal-work ratio",
        "-" * 100,
    ]
    rows = [(name, times, REFERENCES.get(name, "plain loop")) for name in fns]
    rows += [(name, others, "plain loop") for name in extra]
    for name, run, ref in rows:
        us = statistics.median(run[name]) / steps * 1e6
        shown = "-" if name == ref else ref if run is times else f"{ref} (own run)"
        line = f"{name:<24} {us:8.1f}  {fmt_ratio(ratios(run, name, ref)):<26} {shown:<22}"
        same = EQUAL_WORK.get(name)
        if same is not None:
            line += f" {fmt_ratio(ratios(times, name, same))}"
        lines.append(line.rstrip())
    diffs = [
        (a - b) / steps * 1e6
        for a, b in zip(times["default + 50 inert cbs"], times["hookloop default"])
    ]
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    lines += [
        "",
        "us/step: epoch time (validation and one fit() call included) / training steps.",
        "equal-work ratio: against the plain loop that resets gradients as hookloop does",
        "(p.grad = None, without zero_grad's profiler annotation): the cost of the loop alone.",
        f"50 inert callbacks, paired epoch difference: {statistics.median(diffs):+.2f} us/step "
        f"(quartiles {q1:+.2f} to {q3:+.2f}; see the dispatch table for the exact cost)",
    ]
    lines.append(f"Other libraries: {'; '.join(notes)}.")
    return lines


# The events of one training step that is not cancelled, in the order the loop fires them.
STEP_EVENTS = tuple(
    e
    for e in EVENTS[EVENTS.index("before_batch") : EVENTS.index("after_batch") + 1]
    if not e.startswith("after_cancel")
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
