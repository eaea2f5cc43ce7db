"""Kill-and-resume soak: SIGKILL training at many points, resume, compare with an uninterrupted run.

    python tools/resume_soak.py                 # every batch of every configuration + write kills
    python tools/resume_soak.py --points 10     # 10 random batches per configuration

Uses the warm forking runner of the test suite (tests/callbacks/resume_worker.py): one
interpreter, one forked child per run. Prints each failure and how many kill points passed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "callbacks" / "resume_worker.py"
sys.path.insert(0, str(WORKER.parent))

from resume_worker import N_EPOCH, differences  # noqa: E402

from hookloop.checkpoint import safe_load  # noqa: E402

CONFIGS = {
    "tensor-every-3": {"loader": "tensor", "save_freq": 3},
    "tensor-every-1": {"loader": "tensor", "save_freq": 1},
    "tensor-epoch": {"loader": "tensor", "save_freq": "epoch"},
    "torch-every-2": {"loader": "torch", "save_freq": 2},
    "workers-epoch": {"loader": "workers", "save_freq": "epoch"},
}
BATCHES = N_EPOCH * (6 + 1)
STAGES = [f"file:{i}" for i in range(6)] + [f"half:{i}" for i in range(6)] + ["rename", "prune"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=0, help="random batches per config (0: all)")
    parser.add_argument("--writes", type=int, default=4, help="checkpoint writes to kill inside")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="resume-soak-") as tmp:
        root = Path(tmp)
        runs, cases = [], []
        for name, config in CONFIGS.items():
            runs.append({"dir": str(root / name / "ref"), "phases": [config]})
            batches = range(1, BATCHES + 1)
            if args.points:
                batches = sorted(rng.sample(batches, min(args.points, BATCHES)))
            kills = [{"batch": k} for k in batches]
            if name == "tensor-every-3":
                kills += [
                    {"write": n, "stage": s} for n in range(1, args.writes + 1) for s in STAGES
                ]
            for kill in kills:
                folder = root / name / "-".join(str(v) for v in kill.values()).replace(":", "")
                runs.append({"dir": str(folder), "phases": [{**config, "kill": kill}, config]})
                cases.append((name, folder, kill))
        spec = root / "spec.json"
        spec.write_text(json.dumps({"out": str(root / "ends.json"), "runs": runs}))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(WORKER), str(spec)], capture_output=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stderr.decode())
        ends = dict(zip((r["dir"] for r in runs), json.loads((root / "ends.json").read_text())))
        passed = failed = not_killed = 0
        for name, folder, kill in cases:
            killed, resumed = ends[str(folder)]
            if killed.get("signal") != 9:
                not_killed += 1  # e.g. a file index past the last file of that checkpoint
                continue
            diffs = ["resumed run failed"] if resumed.get("exit") != 0 else []
            if not diffs:
                ref = safe_load(root / name / "ref" / "result.pt")
                diffs = differences(ref, safe_load(folder / "result.pt"))
            if diffs:
                failed += 1
                print(f"FAIL {name} {kill}: {', '.join(diffs)}")
            else:
                passed += 1
        print(
            f"{passed} of {passed + failed} kill points passed (bit-identical after SIGKILL and "
            f"resume); {not_killed} kill points never reached; {len(runs)} runs, "
            f"{seconds:.1f} s"
        )
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
