"""Compiled training: hookloop with Compile against hand-written eager and compiled loops.

Run `python benchmarks/compile.py` (about 3 minutes here, most of it compiling). The script
runs itself twice in a subprocess: once with glibc malloc's trim and mmap thresholds fixed high
(GLIBC_TUNABLES, read when a process starts), so that the eager loop's freed activations stay in
the heap instead of going back to the OS and page-faulting in again at every step, and once with
the default allocator. Each run trains, one thread, with pre-made batches (the last one shorter):
- an MLP 64-1024-1024-10 (ReLU), bs 128, AdamW: the hand-written eager loop (the reference),
  the same loop with `torch.compile(model)` (what users try first), the same loop with the model
  and the optimizer step compiled (torch's recipe), the eager loop and the compiled-model loop
  with torch's fused AdamW kernel, hookloop default eager and hookloop default with
  `learn.compile()`, and the matrix products alone (a floor for any loop);
- overhead.py's tiny MLP 32-32-10, bs 64, AdamW: the eager loop, hookloop default eager and
  with `learn.compile()`.
"Hookloop default" is every callback of a default learner on (TrainEval, Recorder, the progress
bar drawn to the null device) and an accuracy metric; each loop validates with accuracy too.
Rows take turns (shuffled order per round, see overhead.py) after one warm-up epoch each, and the
table shows the median [min-max] of the per-round ratios to the eager loop: a busy neighbour slows
both sides of a pair alike. The clock is this thread's CPU time (`--clock wall` to compare).
The first (compiling) epoch's wall time minus a steady epoch's is printed as the compile time,
and the first 20 losses of an eager and a compiled hookloop run side by side (fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import CLOCKS, fmt_ratio, hookloop_loop, interleave, plain_loop, ratios  # noqa: E402

from hookloop import Learner, accuracy  # noqa: E402

STEADY_MALLOC = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"


def mlp(sizes: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batches(n_batches: int, bs: int, n_in: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    # n_batches full batches and a last one of half the size; labels from a linear teacher.
    g = torch.Generator().manual_seed(seed)
    n = n_batches * bs + bs // 2
    x = torch.randn(n, n_in, generator=g)
    teacher = torch.randn(n_in, 10, generator=torch.Generator().manual_seed(42))
    y = (x @ teacher).argmax(1)
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]


class CompiledStep:
    """The optimizer with `step` compiled, as torch's compiled-optimizer recipe writes it (with
    the learning rate a tensor: a float would be a constant of the graph)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt, self.param_groups = opt, opt.param_groups
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]))
        self.step = torch.compile(opt.step)

    def zero_grad(self) -> None:
        self.opt.zero_grad()


def matmuls_only(model: nn.Module, train: list, valid: list) -> Callable[[], None]:
    """An epoch of only the matrix products the MLP's training and validation need, into buffers
    made beforehand: forward `x @ W.T + b` per layer, backward `g.T @ x` (weight gradient) per
    layer and `g @ W` (input gradient) for all but the first. No loop, loss, activation or
    optimizer: a floor no training loop on this CPU goes under, since torch.compile calls the
    same matmul kernels."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [m.weight.detach() for m in linears]
    biases = [m.bias.detach() for m in linears]

    def passes(bs: int) -> list[tuple[torch.Tensor, ...]]:
        acts = [torch.randn(bs, linears[0].in_features)]
        acts += [torch.empty(bs, m.out_features) for m in linears]
        grads = [torch.randn(bs, m.out_features) for m in linears]
        wgrads = [torch.empty_like(w) for w in weights]
        ingrads = [torch.empty(bs, m.in_features) for m in linears]
        return [acts, grads, wgrads, ingrads]

    buffers = {len(xb): passes(len(xb)) for xb, _ in train + valid}

    def forward(acts: list) -> None:
        for i, (w, b) in enumerate(zip(weights, biases)):
            torch.addmm(b, acts[i], w.t(), out=acts[i + 1])

    def epoch() -> None:
        for xb, _ in train:
            acts, grads, wgrads, ingrads = buffers[len(xb)]
            forward(acts)
            for i, w in enumerate(weights):
                torch.mm(grads[i].t(), acts[i], out=wgrads[i])
                if i:
                    torch.mm(grads[i], w, out=ingrads[i])
        for xb, _ in valid:
            forward(buffers[len(xb)][0])

    return epoch


def rows(
    sizes: tuple[int, ...], bs: int, n_batches: int, hand_compiled: bool, stack: Any
) -> tuple[dict[str, Callable[[], None]], str]:
    """One epoch per call for each configuration; all share one model and optimizer."""
    model = mlp(sizes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = batches(n_batches, bs, sizes[0], seed=0)
    valid = batches(max(n_batches // 4, 1), bs, sizes[0], seed=1)
    log: list[str] = []

    def hookloop(compile: bool) -> Callable[[], None]:
        learn = hookloop_loop(model, opt, train, valid, True, [accuracy], [], log, stack)
        if compile:
            learn.compile()
        return lambda: learn.fit(1)

    fns = {"eager loop": plain_loop(model, opt, train, valid, True, log)}
    if hand_compiled:
        compiled_model = torch.compile(model)
        fns["loop, torch.compile(model)"] = plain_loop(compiled_model, opt, train, valid, True, log)
        # Its own optimizer: CompiledStep turns the learning rate into a tensor.
        opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fns["loop, model + step compiled"] = plain_loop(
            compiled_model, CompiledStep(opt2), train, valid, True, log
        )
        # torch's fused CPU kernel for the step (what Compile uses for AdamW on the CPU), with
        # the model eager and compiled: the fastest hand-written loops found here.
        opt3 = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        fns["loop, fused AdamW"] = plain_loop(model, opt3, train, valid, True, log)
        fns["loop, model compiled + fused"] = plain_loop(
            compiled_model, opt3, train, valid, True, log
        )
        fns["matmuls only (floor)"] = matmuls_only(model, train, valid)
    fns["hookloop default"] = hookloop(False)
    fns["hookloop default + compile"] = hookloop(True)
    shape = "-".join(map(str, sizes))
    return fns, f"MLP {shape}, bs {bs}, AdamW, {n_batches}+1 training batches per epoch"


def compile_times(fns: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Wall seconds of each row's first epoch beyond a steady one (compiling, for compiled rows)."""
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        out[name] = first - (time.perf_counter() - t0)
    return out


def table(args: argparse.Namespace, sizes: tuple[int, ...], bs: int, n_batches: int) -> list[str]:
    clock = CLOCKS[args.clock]
    with contextlib.ExitStack() as stack:
        fns, title = rows(sizes, bs, n_batches, sizes[1] > 100, stack)
        with open(os.devnull, "w") as null:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                first = compile_times(fns)
                times = interleave(fns, args.repeats, clock)
    steps = n_batches + 1
    lines = [
        f"{title}; {args.repeats} interleaved epochs per row",
        f"{'configuration':<28} {'us/step':>9}  {'ratio to eager loop':<26} "
        f"{'first epoch extra':>17}",
        "-" * 86,
    ]
    for name in fns:
        us = statistics.median(times[name]) / steps * 1e6
        ratio = fmt_ratio(ratios(times, name, "eager loop"))
        lines.append(f"{name:<28} {us:9.1f}  {ratio:<26} {first[name]:15.1f} s")
    same = fmt_ratio(ratios(times, "hookloop default + compile", "hookloop default"))
    lines.append(f"hookloop + compile / hookloop default (eager): {same}")
    return lines


def first_losses(n: int = 20) -> list[str]:
    """The first n training losses of hookloop eager and compiled, on the large MLP, fp32."""
    sizes = (64, 1024, 1024, 10)
    train = batches(n, 128, sizes[0], seed=0)[:n]
    out = []
    for compile in (False, True):
        learn = Learner(mlp(sizes), (train, None), nn.CrossEntropyLoss(), device="cpu")
        learn.logger = lambda *a: None
        with learn.no_bar():
            if compile:
                learn.compile()
            learn.fit(1)
        out.append(learn.recorder.losses[:n])
    lines = [f"{'step':>4} {'eager':>12} {'compiled':>12} {'relative difference':>20}"]
    worst = 0.0
    for i, (a, b) in enumerate(zip(*out)):
        rel = abs(a - b) / abs(a)
        worst = max(worst, rel)
        lines.append(f"{i:>4} {a:12.7f} {b:12.7f} {rel:20.2e}")
    lines.append(f"largest relative difference over {n} steps: {worst:.2e}")
    return lines


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    print(f"allocator: {os.environ.get('GLIBC_TUNABLES') or 'glibc default'}")
    print()
    print("\n".join(table(args, (64, 1024, 1024, 10), 128, args.batches)))
    print()
    print("\n".join(table(args, (32, 32, 10), 64, args.tiny_batches)))
    if args.losses:
        print()
        print("\n".join(first_losses()))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved epochs per row")
    parser.add_argument("--batches", type=int, default=20, help="large MLP: full batches")
    parser.add_argument("--tiny-batches", type=int, default=200, help="tiny MLP: full batches")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--losses", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    t0 = time.perf_counter()
    print(
        f"hookloop compile benchmark: torch {torch.__version__}, Python "
        f"{platform.python_version()}, 1 thread, clock={args.clock}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    passed = list(argv if argv is not None else sys.argv[1:])
    for tunables, losses in ((STEADY_MALLOC, True), ("", False)):
        env = dict(os.environ)
        env.pop("GLIBC_TUNABLES", None)
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        cmd = [sys.executable, os.path.abspath(__file__), *passed, "--child"]
        cmd += ["--losses"] if losses else []
        print()
        sys.stdout.flush()
        subprocess.run(cmd, env=env, check=True)
    print()
    print(f"load average {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
