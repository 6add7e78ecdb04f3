"""Jitted update time of each optimizer against optax.adam on the ResNet50 parameter tree.

Not a test: a measurement. For each optimizer it checks two steps against the NumPy
reference (``optax_dgrad.testing``), then times the donated, jitted step
``params, state -> apply_updates(params, update(grads, state))`` (median of several runs
after warm-up, the optimizers taking turns) and reports, per row:

- the bytes the update must move at least (Adam 7 arrays of parameter size; diffGrad and
  DGrad/Cos 9), the floor they set at the read+write bandwidth measured in the same turns
  (a donated ``x -> 2 * x`` over the tree), and the step's ratio to that floor;
- the bytes the compiled program moves (XLA's cost analysis: XLA:CPU fuses no multiple
  outputs, so it moves more than the minimum), the floor they set and the ratio to it;
- the state size and XLA's scratch memory per call.

Then, for float32 and bfloat16 moments, the ResNet50 state size and the error of a
100-step trajectory on a small problem against the float64 NumPy reference. The tree is
``models``' own ResNet50 (1000 classes), its shapes from ``jax.eval_shape``. Prints
Markdown tables and writes benchmarks/results/optimizer_update.json.

    python benchmarks/optimizer_update.py [--repeats 15]

(from the repository root). What limits the ratios on XLA:CPU, and what was tried, is in
docs/optimizers.md.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # models is used from the checkout, not installed

import optax_dgrad  # noqa: E402
from models import get_model  # noqa: E402
from optax_dgrad.testing import reference_directions  # noqa: E402

RESULTS_PATH = Path(__file__).parent / "results" / "optimizer_update.json"
RESNET50_PARAMETERS = 25_557_032
LEARNING_RATE = 1e-3
B1, B2, EPS, PERIOD = 0.9, 0.999, 1e-8, 30


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of ``models``' ResNet50 (1000 classes), in tree-leaf order."""
    model = get_model("resnet50", num_classes=1000)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda key, x: model.init(key, x, train=False), jax.random.key(0), images
    )
    return [leaf.shape for leaf in jax.tree.leaves(variables["params"])]


OPTIMIZERS = {
    "adam": lambda: optax.adam(LEARNING_RATE, B1, B2, EPS),
    "diffgrad": lambda: optax_dgrad.diffgrad(LEARNING_RATE, B1, B2, EPS),
    "dgrad": lambda: optax_dgrad.dgrad(LEARNING_RATE, B1, B2, EPS),
    "cos1": lambda: optax_dgrad.cos1(LEARNING_RATE, B1, B2, EPS, period=PERIOD),
    "cos2": lambda: optax_dgrad.cos2(LEARNING_RATE, B1, B2, EPS, period=PERIOD),
}
#: Arrays of parameter size each update must read or write at least (docs/optimizers.md).
ARRAYS_MOVED = {"adam": 7, "diffgrad": 9, "dgrad": 9, "cos1": 9, "cos2": 9}


def make_step(optimizer):
    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def check_against_reference(name, shapes, rng):
    """Two steps on the full tree against the NumPy reference; raises on a mismatch."""
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads_per_step = [
        [rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(2)
    ]
    optimizer = OPTIMIZERS[name]()
    step = make_step(optimizer)
    jax_params = [jnp.asarray(p) for p in params]
    state = optimizer.init(jax_params)
    expected = reference_directions(name, grads_per_step, b1=B1, b2=B2, eps=EPS, period=PERIOD)
    for grads, directions in zip(grads_per_step, expected, strict=True):
        before = [np.asarray(p, np.float64) for p in jax_params]
        jax_params, state = step(jax_params, state, [jnp.asarray(g) for g in grads])
        for p_before, p_after, direction in zip(before, jax_params, directions, strict=True):
            np.testing.assert_allclose(
                np.asarray(p_after, np.float64) - p_before,
                -LEARNING_RATE * direction,
                rtol=0,
                atol=1e-6,  # params ~ N(0, 1) in float32: rounding of p + update is ~6e-8
                err_msg=f"{name} differs from the NumPy reference",
            )


def time_steps(shapes, repeats):
    """Median seconds per donated, jitted step of every optimizer, with its state bytes,
    XLA's scratch and accessed bytes and its compile seconds; and the read+write bandwidth.

    The programs take turns, one call each per round, the bandwidth probe among them, so
    load from other processes on a shared machine hits all of them, and the floor, alike.
    """
    keys = jax.random.split(jax.random.key(0), len(shapes))
    initial_params = [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
    grads = [0.01 * p for p in initial_params]
    runs = {}
    for name, make_optimizer in OPTIMIZERS.items():
        optimizer = make_optimizer()
        params = [p.copy() for p in initial_params]
        state = optimizer.init(params)
        compile_start = time.perf_counter()
        compiled = make_step(optimizer).lower(params, state, grads).compile()
        compile_seconds = time.perf_counter() - compile_start
        costs = compiled.cost_analysis()
        costs = costs[0] if isinstance(costs, list) else costs  # a list in older jax
        for _ in range(3):  # warm-up
            params, state = jax.block_until_ready(compiled(params, state, grads))
        runs[name] = {
            "call": lambda carry, compiled=compiled: compiled(*carry, grads),
            "carry": (params, state),
            "times": [],
            "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
            "compile_seconds": compile_seconds,
            # Scratch memory XLA allocates per call; on CPU a large one costs page faults.
            "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            "xla_bytes": costs["bytes accessed"],
        }
    # The bandwidth probe reads and writes the whole tree once, in place.
    double = jax.jit(lambda tree: [2 * x for x in tree], donate_argnums=0)
    tree = [jnp.ones(s, jnp.float32) for s in shapes]
    for _ in range(3):  # warm-up
        tree = jax.block_until_ready(double(tree))
    probe = {"call": lambda carry: (double(carry[0]),), "carry": (tree,), "times": []}
    for _ in range(repeats):
        for run in (*runs.values(), probe):
            start = time.perf_counter()
            run["carry"] = jax.block_until_ready(run["call"](run["carry"]))
            run["times"].append(time.perf_counter() - start)
    for run in runs.values():
        run["seconds"] = float(np.median(run.pop("times")))
        del run["call"], run["carry"]
    bytes_probed = 2 * sum(x.nbytes for x in probe["carry"][0])
    return runs, bytes_probed / float(np.median(probe["times"]))


def trajectory_error(name, dtype, steps=100, lr=1e-2):
    """max |x_t - x_ref_t| over 100 steps on f(x) = sum(a x^2) / 2 (a in [0.1, 10], 64
    parameters), with the moments stored in ``dtype``; x_ref from the float64 reference."""
    rng = np.random.default_rng(0)
    curvature = 10.0 ** rng.uniform(-1, 1, 64)
    x0 = rng.standard_normal(64)
    optimizer = OPTIMIZERS_WITH_DTYPE[name](dtype)
    x, x_ref = jnp.asarray(x0, jnp.float32), x0.copy()
    state = optimizer.init(x)
    step = jax.jit(lambda x, state: optimizer.update(curvature.astype(np.float32) * x, state, x))
    grads_ref, worst = [], 0.0
    for _ in range(steps):
        updates, state = step(x, state)
        x = optax.apply_updates(x, updates)
        # The reference replays the same gradients of the reference trajectory itself.
        grads_ref.append(curvature * x_ref)
        (direction,) = reference_directions(name, grads_ref, b1=B1, b2=B2, eps=EPS,
                                            period=PERIOD)[-1:]  # fmt: skip
        x_ref = x_ref - lr * direction
        worst = max(worst, float(np.abs(np.asarray(x, np.float64) - x_ref).max()))
    return worst


OPTIMIZERS_WITH_DTYPE = {
    "adam": lambda dtype: optax.adam(1e-2, B1, B2, EPS, mu_dtype=dtype),  # optax: no nu_dtype
    "diffgrad": lambda dtype: optax_dgrad.diffgrad(1e-2, B1, B2, EPS, mu_dtype=dtype,
                                                   nu_dtype=dtype),  # fmt: skip
    "dgrad": lambda dtype: optax_dgrad.dgrad(1e-2, B1, B2, EPS, mu_dtype=dtype, nu_dtype=dtype),
    "cos1": lambda dtype: optax_dgrad.cos1(1e-2, B1, B2, EPS, mu_dtype=dtype, period=PERIOD,
                                           nu_dtype=dtype),  # fmt: skip
    "cos2": lambda dtype: optax_dgrad.cos2(1e-2, B1, B2, EPS, mu_dtype=dtype, period=PERIOD,
                                           nu_dtype=dtype),  # fmt: skip
}


def moment_dtypes(shapes):
    """ResNet50 state size with float32 and bfloat16 moments, and each one's trajectory
    error against the float64 reference over 100 steps of a small quadratic."""
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    rows = {}
    for name, make in OPTIMIZERS_WITH_DTYPE.items():
        sizes = {}
        for dtype in ("float32", "bfloat16"):
            state = jax.eval_shape(make(jnp.dtype(dtype)).init, params)
            sizes[dtype] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 1e6
        rows[name] = {
            "state_mb_float32": sizes["float32"], "state_mb_bfloat16": sizes["bfloat16"],
            "trajectory_error_float32": trajectory_error(name, jnp.float32),
            "trajectory_error_bfloat16": trajectory_error(name, jnp.bfloat16),
        }
    return rows


# A four-leaf tree for --smoke: every code path in seconds, the numbers meaningless.
SMOKE_SHAPES = [(3, 3, 3, 8), (8,), (8, 10), (10,)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per optimizer")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="the results JSON")
    parser.add_argument("--smoke", action="store_true", help="a four-leaf tree instead of "
                        "ResNet50's, to check the script itself (numbers meaningless)")  # fmt: skip
    args = parser.parse_args(argv)

    shapes = SMOKE_SHAPES if args.smoke else resnet50_shapes()
    n_params = sum(int(np.prod(s)) for s in shapes)
    if not args.smoke and n_params != RESNET50_PARAMETERS:
        raise RuntimeError(f"ResNet50 tree has {n_params} parameters, expected 25,557,032")
    bytes_per_array = 4 * n_params

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    for name in OPTIMIZERS:
        check_against_reference(name, shapes, rng)
    print("all optimizers match the NumPy reference (2 steps, ResNet50 tree)")

    timings, bandwidth = time_steps(shapes, args.repeats)
    rows = []
    for name, run in timings.items():
        bytes_moved = ARRAYS_MOVED[name] * bytes_per_array
        floor, xla_floor = bytes_moved / bandwidth, run["xla_bytes"] / bandwidth
        rows.append({
            "optimizer": name,
            "median_ms": 1e3 * run["seconds"],
            "bytes_moved_mb": bytes_moved / 1e6,
            "bandwidth_gb_s": bandwidth / 1e9,
            "floor_ms": 1e3 * floor,
            "vs_floor": run["seconds"] / floor,
            "xla_bytes_mb": run["xla_bytes"] / 1e6,
            "xla_floor_ms": 1e3 * xla_floor,
            "vs_xla_floor": run["seconds"] / xla_floor,
            "state_mb": run["state_bytes"] / 1e6,
            "xla_temp_mb": run["temp_bytes"] / 1e6,
            "compile_s": run["compile_seconds"],
        })
    adam = rows[0]
    for row in rows:
        row["vs_adam"] = row["median_ms"] / adam["median_ms"]
        row["floor_vs_adam"] = row["floor_ms"] / adam["floor_ms"]
        row["xla_floor_vs_adam"] = row["xla_floor_ms"] / adam["xla_floor_ms"]

    print(
        f"\nResNet50-shaped tree: {n_params:,} float32 parameters in {len(shapes)} leaves; "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), median of "
        f"{args.repeats}; read+write bandwidth {bandwidth / 1e9:.1f} GB/s in the same turns; "
        f"1-minute load {load_before[0]:.1f}\n"
    )
    print(
        "| optimizer | update (ms) | vs adam | bytes moved (MB) | floor (ms) | vs floor "
        "| XLA bytes (MB) | XLA floor (ms) | vs XLA floor | state (MB) | XLA temp (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['optimizer']} | {row['median_ms']:.1f} | {row['vs_adam']:.2f}x | "
            f"{row['bytes_moved_mb']:.0f} | {row['floor_ms']:.1f} | {row['vs_floor']:.2f}x | "
            f"{row['xla_bytes_mb']:.0f} | {row['xla_floor_ms']:.1f} | "
            f"{row['vs_xla_floor']:.2f}x | {row['state_mb']:.1f} | {row['xla_temp_mb']:.1f} |"
        )
    moments = moment_dtypes(shapes)
    print(
        "\nMoments stored in float32 and in bfloat16 (mu_dtype = nu_dtype; optax.adam has "
        "mu_dtype only): ResNet50 state size, and max |x_t - x_ref_t| over 100 steps of the "
        "small quadratic against the float64 NumPy reference\n"
    )
    print(
        "| optimizer | state, float32 (MB) | state, bfloat16 (MB) | bfloat16 / float32 "
        "| error, float32 | error, bfloat16 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in moments.items():
        print(
            f"| {name} | {row['state_mb_float32']:.1f} | {row['state_mb_bfloat16']:.1f} | "
            f"{row['state_mb_bfloat16'] / row['state_mb_float32']:.2f} | "
            f"{row['trajectory_error_float32']:.1e} | {row['trajectory_error_bfloat16']:.1e} |"
        )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "parameters": n_params,
        "leaves": len(shapes),
        "smoke": args.smoke,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        # 1-minute load averages before and after: other processes on a shared machine
        # slow all optimizers (they take turns), but add noise to the ratios.
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "read_write_bandwidth_gb_s": bandwidth / 1e9,
        "jax": jax.__version__,
        "optax": optax.__version__,
        "rows": rows,
        "moment_dtypes": moments,
    }, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
