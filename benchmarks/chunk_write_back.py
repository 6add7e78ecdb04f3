"""How a chunk's step is written back into the stacked states, measured side by side.

Not a test: a measurement, behind ``training.programs.chunk_at`` (docs/training.md, "One
member axis for the whole run"). The ``loop`` strategy calls one member's step per member on
the stacked states, slicing the member out and writing its new state back in place:

- ``fused``: the slices as plain ``dynamic_slice``s, which XLA fuses into their users (the
  trainer before this measurement);
- ``cond``: the slices taken inside a ``lax.cond`` that is always true, so they are stored
  before anything uses them (the trainer now).

For each: how many whole stacked arrays the compiled step copies, and a member's share of
the step's time at N members against N=1, the programs taking turns so that load hits both.

    python benchmarks/chunk_write_back.py [--model resnet18_small] [--members 4] [--repeats 10]

(from the repository root). Writes benchmarks/results/chunk_write_back_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import trainer_suite  # noqa: E402

import training.programs  # noqa: E402
from rundir import write_atomically  # noqa: E402

SHIPPED = training.programs.chunk_at


def fused_chunk_at(fn, chunk, in_axes, *, write_back=True):
    """``chunk_at`` with the slices fused into their users (no ``lax.cond``)."""

    def at(*args):
        *args, first = args
        picked = [
            jax.tree.map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, first, chunk), a)
            if axis == 0
            else a
            for a, axis in zip(args, in_axes, strict=True)
        ]
        new = fn(*picked)
        if not write_back:
            return new
        return jax.tree.map(lambda whole, part: jax.lax.dynamic_update_slice_in_dim(
            whole, part, first, 0), (args[0], args[1]), new)  # fmt: skip

    at.__name__ = f"{getattr(fn, '__name__', 'fn')}_chunk"
    return at


def build(bench, variant: str, members: int) -> dict:
    training.programs.chunk_at = {"fused": fused_chunk_at, "cond": SHIPPED}[variant]
    try:
        placement, sharding, compile_step = trainer_suite.step_program(bench, "loop", members)
        state, metrics, orders, keys, data = bench.inputs(placement, sharding)
        compiled, run = compile_step(state, metrics, orders, keys, data)
    finally:
        training.programs.chunk_at = SHIPPED
    text = compiled.as_text()
    entry = text.split("ENTRY", 1)[1]
    for step in range(2):  # warm-up
        state, metrics = run(state, metrics, orders, step, keys, data)
    jax.block_until_ready(state)
    return dict(run=run, carry=(state, metrics), fixed=(orders, keys, data), times=[], hlo=text,
                whole_copies=len(re.findall(r"copy\(%args", entry)), members=members)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18_small")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, help="the results JSON (default: "
                        "benchmarks/results/chunk_write_back_<model>.json)")  # fmt: skip
    parser.add_argument("--dump-hlo", type=Path, help="a folder for each compiled step's HLO")
    args = parser.parse_args()
    settings = dict(trainer_suite.SUITES["cpu"], model=args.model)
    bench = trainer_suite.Bench(settings, args.members)
    runs = {(v, n): build(bench, v, n) for v in ("fused", "cond") for n in (1, args.members)}
    for repeat in range(args.repeats):
        for r in runs.values():
            orders, keys, data = r["fixed"]
            started = time.perf_counter()
            r["carry"] = jax.block_until_ready(r["run"](*r["carry"], orders, 2 + repeat % 8,
                                                        keys, data))  # fmt: skip
            r["times"].append((time.perf_counter() - started) / r["members"])
    if args.dump_hlo:
        args.dump_hlo.mkdir(parents=True, exist_ok=True)
        for (v, n), r in runs.items():
            (args.dump_hlo / f"{args.model}_{v}_{n}.hlo.txt").write_text(r["hlo"])
    rows = [dict(variant=v, members=n, whole_copies=r["whole_copies"],
                 ms_per_member=1e3 * statistics.median(r["times"]))
            for (v, n), r in runs.items()]  # fmt: skip
    print(f"\n{args.model}, {settings['image_size']} px, batch {settings['batch_size']}, "
          f"median of {args.repeats}\n\n| variant | N | stacked arrays copied | ms per member |\n"
          "|---|---|---|---|")  # fmt: skip
    for row in rows:
        print(f"| {row['variant']} | {row['members']} | {row['whole_copies']} | "
              f"{row['ms_per_member']:.2f} |")  # fmt: skip
    path = args.output or ROOT / "benchmarks" / "results" / f"chunk_write_back_{args.model}.json"
    write_atomically(path, json.dumps(dict(
        model=args.model, settings={k: settings[k] for k in ("image_size", "batch_size")},
        repeats=args.repeats, machine=platform.machine(), jax=jax.__version__,
        backend=jax.default_backend(), device=jax.devices()[0].device_kind, rows=rows,
    ), indent=1))  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
