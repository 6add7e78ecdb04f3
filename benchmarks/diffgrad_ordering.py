"""Ways to order diffGrad's ``prev_grad`` write after the update on XLA:CPU, side by side.

Not a test: a measurement, behind ``optax_dgrad._src.diffgrad._after`` (docs/optimizers.md,
"History of the measurements"). With the state donated, the new ``prev_grad`` (the gradient)
is written into the old one's buffer while the update still reads the old one; unless a
data dependence orders the write after that read, XLA copies the old ``prev_grad`` to
scratch memory on every step. Each variant gives the same bits; per variant, the bytes XLA
counts, its scratch memory, and the donated step's time against ``optax.adam`` (the same
step as ``optimizer_update.py``, on the ResNet50 tree, the programs taking turns):

- ``shipped``: ``g + 0 * u`` (``u``, the update, with its non-finite entries as 0);
- ``plain``: ``g`` (no ordering);
- ``first entry``: ``g + 0 * u.ravel()[0]``;
- ``one cond``: the first entries of all leaves summed inside one ``lax.cond``.

    python benchmarks/diffgrad_ordering.py [--repeats 15] [--output F]

(from the repository root). XLA's own multi-output fusion, a process-wide flag, is measured
by running the same command with
``XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import optimizer_update  # noqa: E402

import optax_dgrad  # noqa: E402
from optax_dgrad._src import diffgrad  # noqa: E402
from rundir import write_atomically  # noqa: E402

SHIPPED = diffgrad._after


def _finite(x):
    return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def _first_entry(g, u):
    return g + jnp.zeros([], g.dtype) * _finite(u.astype(g.dtype).ravel()[0])


def one_cond_diffgrad() -> optax.GradientTransformation:
    """diffGrad whose prev_grad writes wait on one conditional over all the updates (traced
    with ``_after`` as the plain gradient, see ``VARIANTS``)."""
    inner = optax_dgrad.scale_by_diffgrad(optimizer_update.B1, optimizer_update.B2,
                                          optimizer_update.EPS)  # fmt: skip

    def update_fn(updates, state, params=None):
        directions, new_state = inner.update(updates, state, params)
        true = jax.lax.optimization_barrier(jnp.bool_(True))  # traced: the cond stays a cond
        total = jax.lax.cond(
            true,
            lambda us: _finite(sum(u.ravel()[0] for u in jax.tree.leaves(us))),
            lambda us: jnp.zeros([], jnp.float32),
            directions,
        )
        prev = jax.tree.map(lambda g: g + jnp.zeros([], g.dtype) * total, updates)
        return directions, new_state._replace(prev_grad=prev)

    return optax.chain(optax.GradientTransformation(inner.init, update_fn),
                       optax.scale(-optimizer_update.LEARNING_RATE))  # fmt: skip


# name: (the optimizer, diffgrad._after while it is traced)
VARIANTS = {
    "adam": (optimizer_update.OPTIMIZERS["adam"], SHIPPED),
    "shipped": (optimizer_update.OPTIMIZERS["diffgrad"], SHIPPED),
    "plain": (optimizer_update.OPTIMIZERS["diffgrad"], lambda g, u: g),
    "first entry": (optimizer_update.OPTIMIZERS["diffgrad"], _first_entry),
    "one cond": (one_cond_diffgrad, lambda g, u: g),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results"
                        / "diffgrad_ordering.json")  # fmt: skip
    args = parser.parse_args()
    shapes = optimizer_update.resnet50_shapes()
    keys = jax.random.split(jax.random.key(0), len(shapes))
    initial = [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
    grads = [0.01 * p for p in initial]
    runs, updates = {}, {}
    for name, (make, after) in VARIANTS.items():
        optimizer, params = make(), [p.copy() for p in initial]
        state = optimizer.init(params)
        diffgrad._after = after
        try:
            compiled = optimizer_update.make_step(optimizer).lower(params, state, grads).compile()
            # Two plain steps (not donated) for the bitwise comparison below.
            updates[name] = jax.jit(optimizer.update)(grads, optimizer.init(params))
            updates[name] = jax.jit(optimizer.update)(grads, updates[name][1])
        finally:
            diffgrad._after = SHIPPED
        costs = compiled.cost_analysis()
        costs = costs[0] if isinstance(costs, list) else costs
        for _ in range(3):  # warm-up
            params, state = jax.block_until_ready(compiled(params, state, grads))
        runs[name] = dict(compiled=compiled, carry=(params, state), times=[],
                          xla_mb=costs["bytes accessed"] / 1e6,
                          temp_mb=compiled.memory_analysis().temp_size_in_bytes / 1e6)  # fmt: skip
    for name in VARIANTS:
        if name not in ("adam", "shipped"):
            same = all(bool((a == b).all()) for a, b in zip(
                jax.tree.leaves(updates[name]), jax.tree.leaves(updates["shipped"]), strict=True))
            if not same:
                raise RuntimeError(f"{name!r} does not give the shipped diffGrad's bits")
    for _ in range(args.repeats):
        for run in runs.values():
            started = time.perf_counter()
            run["carry"] = jax.block_until_ready(run["compiled"](*run["carry"], grads))
            run["times"].append(time.perf_counter() - started)
    adam = statistics.median(runs["adam"]["times"])
    rows = [dict(variant=name, ms=1e3 * statistics.median(r["times"]),
                 vs_adam=statistics.median(r["times"]) / adam, xla_mb=r["xla_mb"],
                 temp_mb=r["temp_mb"]) for name, r in runs.items()]  # fmt: skip
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"\nResNet50 tree, donated step, median of {args.repeats}; XLA_FLAGS={flags!r}\n\n"
          "| variant | ms | vs adam | XLA bytes (MB) | scratch (MB) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['ms']:.1f} | {row['vs_adam']:.2f}x | "
              f"{row['xla_mb']:.0f} | {row['temp_mb']:.1f} |")
    write_atomically(args.output, json.dumps(dict(
        repeats=args.repeats, xla_flags=flags, jax=jax.__version__, cpus=os.cpu_count(),
        load_average=os.getloadavg()[0], rows=rows), indent=1))  # fmt: skip
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
