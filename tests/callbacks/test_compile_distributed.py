"""Compile under DDP: 2 gloo ranks train compiled as eager, save plain weights, never recompile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._inductor.config
from compile_helpers import BS, N_TRAIN, GraphCount, mlp_learner, weights

from ddp_helpers import rank_errors, run_two_ranks
from hookloop import Callback, SaveModel

EPOCHS = 3
# Each rank's shard of the 310 training samples: 155, in batches of 16 (9 full, then 11).
SHARD_BATCHES = [BS] * 9 + [N_TRAIN // 2 - 9 * BS]


class TrainBatchSizes(Callback):
    """The sizes of this rank's training batches in the first epoch."""

    def before_fit(self) -> None:
        self.sizes: list[int] = []

    def after_batch(self) -> None:
        if self.training and self.epoch == 0:
            self.sizes.append(len(self.learn.yb[0]))


def _eager_then_compiled(rank_: int, folder: Path) -> None:
    # The ranks are forked (run_two_ranks) from the pytest process, which has often compiled
    # already (test_compile.py runs first). With compile_threads > 1 (the core count) inductor
    # builds its C++ kernels on AsyncCompile.pool(), a ThreadPoolExecutor made once per process;
    # torch's at-fork handler resets its process pools but not this one, so a forked rank gets
    # an executor whose threads stayed in the parent, and its first kernel that misses the
    # inductor cache waits forever: both ranks hang until run_two_ranks kills them (seen with
    # a fresh TORCHINDUCTOR_CACHE_DIR). With one compile thread the rank compiles in itself (on
    # this CPU build, without Triton, inductor starts no worker processes either). Fork stays
    # usable: ranks start in milliseconds where spawn would re-import torch in each (~5 s).
    torch._inductor.config.compile_threads = 1
    eager = mlp_learner(False)
    eager.fit(EPOCHS)
    count, sizes = GraphCount(), TrainBatchSizes()
    learn = mlp_learner(False, cbs=[count, sizes], path=folder)
    learn.compile()
    # Saved by rank 0 after every epoch, from inside the compiled fit.
    learn.fit(EPOCHS, cbs=SaveModel(fname="compiled", every_epoch=True))
    result = {
        "eager": weights(eager),
        "compiled": weights(learn),
        "regions": dict(learn.compiler.regions),
        "graphs": (count.start, count.per_epoch),
        "batch_sizes": sizes.sizes,
    }
    torch.save(result, folder / f"result{rank_}.pt")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One 2-rank run: an eager DDP fit, then the same fit with `learn.compile()`, per rank."""
    folder = tmp_path_factory.mktemp("ddp_compile")
    codes = run_two_ranks(_eager_then_compiled, folder)
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(rank_errors(folder))
    return folder, [torch.load(folder / f"result{r}.pt", weights_only=False) for r in range(2)]


def test_compiled_ddp_fit_ends_with_the_weights_of_the_eager_ddp_fit(ddp_runs):
    # Measured: at most 1.0e-6 relative (6e-8 absolute); the smallest weight is 3.4e-3.
    for res in ddp_runs[1]:
        for name, value in res["eager"].items():
            torch.testing.assert_close(res["compiled"][name], value, rtol=1e-5, atol=1e-7)


def test_both_ranks_hold_identical_weights_after_the_compiled_fit(ddp_runs):
    rank0, rank1 = (res["compiled"] for res in ddp_runs[1])
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_each_rank_reports_its_inner_module_compiled_and_its_step_compiled(ddp_runs):
    # With DDP the module inside the wrapper is compiled in place and the loss stays eager:
    # "forward", where one process would report "forward+loss". The MLP's 195 parameter
    # elements are below FUSED_MIN_ELEMENTS: the step is compiled.
    for res in ddp_runs[1]:
        assert res["regions"] == {"forward": "forward", "step": "compiled"}


def test_checkpoint_of_the_compiled_ddp_fit_has_plain_keys_and_loads_into_one_eager_process(
    ddp_runs,
):
    folder, results = ddp_runs
    eager = mlp_learner(False, path=folder)
    file = eager.model_file(f"compiled_{EPOCHS - 1}")  # written in the last epoch's after_epoch
    state = torch.load(file, weights_only=True)
    assert sorted(state["model"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    eager.load(file.stem)
    assert all(torch.equal(v, results[0]["compiled"][k]) for k, v in weights(eager).items())


def test_no_recompilation_after_the_first_epoch_on_either_rank_with_a_short_last_batch(ddp_runs):
    for res in ddp_runs[1]:
        assert res["batch_sizes"] == SHARD_BATCHES  # [16] * 9 + [11]
        start, per_epoch = res["graphs"]
        assert len(per_epoch) == EPOCHS
        assert per_epoch[1] == per_epoch[0] and per_epoch[2] == per_epoch[0]
        # Flat because nothing recompiles, not because torch gave up and runs eagerly (a frame
        # over the recompile limit counts in "total" but not in "ok"). The first epoch compiled
        # each graph once: the module's training forward (the batch size dynamic from the
        # start, so the batch of 11 reuses it), its validation forward (no_grad; batches of 32
        # and 18), and the optimizer step.
        graphs, total, ok = (a - b for a, b in zip(per_epoch[0], start))
        assert (graphs, ok) == (3, total)
