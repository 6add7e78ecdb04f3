"""The default run's wall time, compile seconds and compile count, this checkout against
another commit checked out beside it, the runs alternating on the same machine.

Not a test: a measurement for ``docs/performance.md`` ("Compile time"). Each run is
``python train.py --no-progress --out-dir TMP`` plus the given flags, with JAX's persistent
compilation cache off (the default: every program is compiled) or, with ``--warm``, in a
fresh directory per pair that the pair's first run fills and its second run reads. A small launcher
registers ``jax.monitoring`` listeners before ``train.main`` runs, so the same counting works
on any commit of this project. The other commit is checked out with ``git worktree`` into a
temporary directory (the repository's history is needed).

It also compares every array of the two first runs' score files (bit-identical or not, the
largest softmax difference, differing predictions).

    python benchmarks/compile_once.py --against 6bd4891 [--pairs 1] [--warm] [--flags "..."]
        [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the checkout being measured: counts backend compiles, then runs its train.py.
LAUNCHER = """
import json, sys, time
import jax
compiles = []
def listen(name, seconds, fun_name="", **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        compiles.append((fun_name, seconds))
jax.monitoring.register_event_duration_secs_listener(listen)
sys.path.insert(0, ".")
import train
started = time.perf_counter()
status = train.main(sys.argv[2:])
wall = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "wall_s": wall, "compiles": compiles}, f)
"""


def run_once(checkout: Path, flags: list[str], cache: str | None, keep: Path) -> dict:
    """One ``train.py`` run in ``checkout``; its run directory is left at ``keep``."""
    with tempfile.TemporaryDirectory() as scratch:
        result_path = Path(scratch) / "result.json"
        out_dir = keep
        argv = [*flags, "--no-progress", "--out-dir", str(out_dir)]
        env = dict(os.environ)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        if cache is not None:
            env["JAX_COMPILATION_CACHE_DIR"] = cache
        elif "--no-compilation-cache" in (checkout / "train.py").read_text():
            argv.append("--no-compilation-cache")  # older commits had no persistent cache
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(result_path), *argv],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
        )
        process_s = time.perf_counter() - started
        if completed.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"{checkout}: train.py failed:\n{completed.stderr[-3000:]}")
        result = json.loads(result_path.read_text())
        fused = [line for line in completed.stdout.splitlines() if line.startswith("| all |")]
    model = [s for name, s in result["compiles"] if name.startswith("jit(_member")]
    return {
        "process_s": process_s,
        "wall_s": result["wall_s"],
        "compile_count": len(result["compiles"]),
        "compile_s": sum(s for _, s in result["compiles"]),
        "model_compile_count": len(model),
        "model_compile_s": sum(model),
        "summary_all_row": fused[0] if fused else None,
    }


def compare_scores(ours: Path, theirs: Path) -> dict:
    """Every array of every score file of two runs: how many are bit-identical, the largest
    softmax difference, and how many test predictions differ."""
    import numpy as np

    identical = differing = predictions = files = 0
    largest = 0.0
    for path in sorted((ours / "scores").rglob("*.npz")):
        other = theirs / path.relative_to(ours)
        files += 1
        with np.load(path) as a, np.load(other) as b:
            for key in b.files:  # the older run's keys (newer files add provenance)
                if np.array_equal(a[key], b[key]):
                    identical += 1
                    continue
                differing += 1
                if key == "scores":
                    largest = max(largest, float(np.abs(a[key] - b[key]).max()))
                    predictions += int((a[key].argmax(-1) != b[key].argmax(-1)).sum())
    return {
        "score_files": files,
        "identical_arrays": identical,
        "differing_arrays": differing,
        "largest_softmax_difference": largest,
        "differing_predictions": predictions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="6bd4891", help="the commit to compare with")
    parser.add_argument("--pairs", type=int, default=1, help="alternating pairs of runs")
    parser.add_argument(
        "--warm", action="store_true", help="a fresh persistent cache per pair, filled first"
    )
    parser.add_argument("--flags", default="", help="extra train.py flags, space separated")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args()
    flags = args.flags.split()
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.against],
                       cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        try:
            rows = {"this": [], args.against: []}
            for pair in range(args.pairs):
                for name, checkout in (("this", ROOT), (args.against, other)):
                    cache = None
                    keep = Path(scratch) / f"run-{name}-{pair}"
                    if args.warm:
                        cache = str(Path(scratch) / f"cache-{name}-{pair}")
                        run_once(checkout, flags, cache, Path(scratch) / f"fill-{name}-{pair}")
                    rows[name].append(run_once(checkout, flags, cache, keep))
                    row = rows[name][-1]
                    print(
                        f"{name:>10}: wall {row['wall_s']:6.1f} s, compiles "
                        f"{row['compile_count']:3d} ({row['compile_s']:5.1f} s), model programs "
                        f"{row['model_compile_count']:2d} ({row['model_compile_s']:5.1f} s)  "
                        f"{row['summary_all_row']}"
                    )
            scores = compare_scores(
                Path(scratch) / "run-this-0", Path(scratch) / f"run-{args.against}-0"
            )
            print(json.dumps(scores, indent=1))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT,
                           capture_output=True)  # fmt: skip
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in ("wall_s", "compile_s", "compile_count", "model_compile_count")
        }  # fmt: skip
        for name, runs in rows.items()
    }
    print(json.dumps(medians, indent=1))
    if args.out:
        args.out.write_text(json.dumps({
            "machine": platform.machine(), "cpus": os.cpu_count(), "against": args.against,
            "warm": args.warm, "flags": flags, "runs": rows, "medians": medians,
            "scores": scores,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
