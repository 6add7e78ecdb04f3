"""Where a ``loop`` member's time goes at N members against N=1, on the suite's network.

Not a test: a measurement. The GPU suite measured ``loop`` at 11.4 ms per member at N=1 and
20-23 ms at N=7-14 (ResNet50, 224 px, bfloat16, one H200). This times, the variants
taking turns, one step of:

- ``one``: the N=1 program on one member;
- ``one x N``: the N=1 program called N times, each on its own member's state (separate
  buffers, no stacked arrays);
- ``stacked``: the N-member program as the trainer calls it (one call per member on the
  stacked states).

For each, the host time until the calls return (dispatch) and until the results are ready,
per member.

    python benchmarks/loop_dispatch.py [--suite gpu] [--members 7] [--repeats 5] [--output F]

(from the repository root).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import trainer_suite  # noqa: E402

from rundir import write_atomically  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="gpu", choices=sorted(trainer_suite.SUITES))
    parser.add_argument("--members", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results"
                        / "loop_dispatch.json")  # fmt: skip
    args = parser.parse_args()
    settings, n = trainer_suite.SUITES[args.suite], args.members
    bench = trainer_suite.Bench(settings, n)
    programs = {}
    for members in (1, n):
        started = time.perf_counter()
        placement, sharding, compile_step = trainer_suite.step_program(bench, "loop", members)
        inputs = bench.inputs(placement, sharding)
        compiled, run = compile_step(*inputs)
        programs[members] = (run, inputs)
        print(f"compiled N={members} in {time.perf_counter() - started:.1f} s", flush=True)
    run_one, (state, metrics, orders, keys, data) = programs[1]
    variants = {
        "one": (run_one, [(state, metrics)], 1, (orders, keys, data)),
        "one x N": (run_one, [jax.tree.map(lambda x: x.copy(), (state, metrics))
                              for _ in range(n)], n, (orders, keys, data)),  # fmt: skip
    }
    run_n, (state_n, metrics_n, orders_n, keys_n, data_n) = programs[n]
    variants["stacked"] = (run_n, [(state_n, metrics_n)], n, (orders_n, keys_n, data_n))
    times = {name: {"dispatch": [], "ready": []} for name in variants}
    for step in range(2 + args.repeats):
        for name, (run, carries, members, (orders, keys, data)) in variants.items():
            started = time.perf_counter()
            carries[:] = [run(*carry, orders, step, keys, data) for carry in carries]
            dispatched = time.perf_counter()
            jax.block_until_ready(carries)
            if step >= 2:  # two warm-up steps
                times[name]["dispatch"].append((dispatched - started) / members)
                times[name]["ready"].append((time.perf_counter() - started) / members)
    rows = [dict(variant=name, ms_per_member_dispatch=1e3 * statistics.median(t["dispatch"]),
                 ms_per_member_ready=1e3 * statistics.median(t["ready"]))
            for name, t in times.items()]  # fmt: skip
    print(f"\n{settings['model']}, {settings['image_size']} px, {settings['dtype']}, N={n}, "
          f"median of {args.repeats}\n\n| variant | ms per member, dispatched | ready |\n"
          "|---|---|---|")  # fmt: skip
    for row in rows:
        print(f"| {row['variant']} | {row['ms_per_member_dispatch']:.2f} | "
              f"{row['ms_per_member_ready']:.2f} |")  # fmt: skip
    write_atomically(args.output, json.dumps(dict(
        suite=args.suite, members=n, repeats=args.repeats, jax=jax.__version__,
        device=jax.devices()[0].device_kind, rows=rows), indent=1))  # fmt: skip
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
