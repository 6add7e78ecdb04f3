"""Member strategies, step loops, throughput and memory of the ensemble trainer.

Not a test: a measurement, whose numbers set the trainer's ``auto`` tables
(``training.placement.AUTO_MEMBER_STRATEGY`` and ``AUTO_STEP_LOOP``). From the repository root:

    python benchmarks/trainer.py --suite cpu   # about 10 minutes on 2 CPU cores
    python benchmarks/trainer.py --suite gpu   # about 7 minutes on one H200 (--budget-s 300)
    python benchmarks/trainer.py --suite gpu --smoke   # every code path, tiny model, on CPU

It writes ``benchmarks/results/trainer_<suite>[_smoke].json`` after every row (a run cut off
by a timeout keeps what it measured) and prints Markdown tables and a recommendation. Parts,
in order: the optimizer update (``benchmarks/optimizer_update.py``, in a subprocess that
writes to a temporary file, before this process takes the GPU); a bf16/f32 matrix-product
peak; ensemble efficiency E(N) = N * t_single / t_group per member strategy, with compile
time, XLA-counted FLOPs and memory per member, each row checked against ``loop``'s numbers;
the paper's whole ensemble as one program (every group's members on one member axis, each
with its own optimizer, under ``vmap`` in member chunks): compile seconds, step time and
E(N); the step loop (Python loop against ``lax.scan``); the paper's protocol (images/s,
MFU, the whole HeLa experiment's time from the measured steps, compiles and predictions).

This file only sets ``XLA_FLAGS`` (before jax starts) and runs ``trainer_suite.py``, which
holds the measurements.

Strategies ``map`` and ``map-vmap2`` are benchmark-only candidates, not trainer strategies:
``jax.lax.map`` over the members (compiled once, whatever N) and over vmapped chunks of 2.
Rows whose estimated cost exceeds the per-row cap or the remaining budget are skipped and
say so; the reference row (loop, N=1) always runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Smoke runs compile with XLA's optimisation off (10x faster compiles; numbers meaningless).
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(suite: str | None, smoke: bool, current: str | None) -> tuple[str, str]:
    """``XLA_FLAGS`` for this process and for the optimizer-update child process."""
    child = " ".join([current or "", *FAST_COMPILE * smoke]).strip()
    flags = current
    if suite == "cpu" and current is None:
        # Two host devices on a two-core machine: the smallest setting in which sharding
        # members over devices can show what it costs or saves.
        flags = "--xla_force_host_platform_device_count=2"
    if smoke:
        flags = " ".join([flags or "", *FAST_COMPILE]).strip()
    return flags or "", child


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--suite")
    early.add_argument("--smoke", action="store_true")
    known, _ = early.parse_known_args(argv)
    flags, child = xla_flags(known.suite, known.smoke, os.environ.get("XLA_FLAGS"))
    if flags:
        os.environ["XLA_FLAGS"] = flags
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    import trainer_suite  # jax starts here, after XLA_FLAGS is set

    return trainer_suite.main(argv, child_xla_flags=child)


if __name__ == "__main__":
    sys.exit(main())
