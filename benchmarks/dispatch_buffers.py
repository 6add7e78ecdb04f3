"""What a jitted call costs the host per buffer: dispatch time against the number of arrays.

Not a test: a measurement, behind docs/performance.md ("Second session: loop at N > 1").
On one H200 a ``loop`` member's ResNet50 step was bound by the host's dispatch (about 600
state buffers in and out, 11 ms a call). This times a donated, jitted ``x -> x + 1`` over
the same number of float32 entries split into K arrays, for several K: the host time until
the call returns (dispatch) and until its results are ready, so the cost per buffer, and
what packing a member's state into a few arrays could save, show on any backend.

    python benchmarks/dispatch_buffers.py [--entries 4194304] [--buffers 1 8 64 600 2000]
        [--repeats 50] [--output F]

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
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rundir import write_atomically  # noqa: E402


def measure(entries: int, buffers: int, repeats: int) -> dict:
    """Median dispatch and ready milliseconds of the donated update over ``buffers`` arrays."""
    step = jax.jit(lambda tree: [x + 1 for x in tree], donate_argnums=0)
    tree = [jnp.zeros(max(entries // buffers, 1), jnp.float32) for _ in range(buffers)]
    for _ in range(3):  # compile and warm up
        tree = jax.block_until_ready(step(tree))
    dispatched, ready = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        tree = step(tree)
        dispatched.append(time.perf_counter() - started)
        tree = jax.block_until_ready(tree)
        ready.append(time.perf_counter() - started)
    return dict(buffers=buffers, entries_per_buffer=max(entries // buffers, 1),
                dispatch_ms=1e3 * statistics.median(dispatched),
                ready_ms=1e3 * statistics.median(ready))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=4 * 1024 * 1024,
                        help="float32 entries in all, split evenly")  # fmt: skip
    parser.add_argument("--buffers", type=int, nargs="+", default=[1, 8, 64, 600, 2000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results"
                        / f"dispatch_buffers_{jax.default_backend()}.json")  # fmt: skip
    args = parser.parse_args()
    if args.entries < 1 or args.repeats < 1 or min(args.buffers) < 1:
        parser.error("--entries, --repeats and every --buffers value must be at least 1")
    rows = [measure(args.entries, k, args.repeats) for k in args.buffers]
    device = jax.devices()[0].device_kind
    print(f"\n{device} ({jax.default_backend()}), {args.entries:,} float32 entries, median of "
          f"{args.repeats}\n\n| arrays | dispatch ms | ready ms | dispatch us per array |\n"
          "|---|---|---|---|")  # fmt: skip
    for row in rows:
        print(f"| {row['buffers']} | {row['dispatch_ms']:.3f} | {row['ready_ms']:.3f} | "
              f"{1e3 * row['dispatch_ms'] / row['buffers']:.1f} |")  # fmt: skip
    write_atomically(args.output, json.dumps(dict(
        entries=args.entries, repeats=args.repeats, jax=jax.__version__, device=device,
        backend=jax.default_backend(), rows=rows), indent=1))  # fmt: skip
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
