"""Member strategies, step loops, throughput and memory of the ensemble trainer.

Not a test: a measurement, whose numbers set the trainer's ``auto`` choices
(``train.AUTO_MEMBER_STRATEGY`` and ``train.AUTO_STEP_LOOP``). From the repository root:

    python benchmarks/trainer.py --suite cpu   # under 10 minutes on 2 CPU cores
    python benchmarks/trainer.py --suite gpu   # under 8 minutes on one GPU

It prints Markdown tables and writes ``benchmarks/results/trainer_<suite>.json`` with the
machine, the backend and the versions. What it measures, each after checking that the path
it times computes the same numbers as the plain one:

- ensemble efficiency E(N) = N * t_single / t_group for N members per group and every member
  strategy (vmap, loop, members sharded over devices); E > 1 means a group of N trains faster
  than N members one by one;
- the step loop: a Python loop of jitted steps against ``lax.scan`` with and without unroll;
- throughput of the paper's protocol (ResNet50, 224x224, batch 30): images per second, the
  XLA-counted FLOPs of a train step, model FLOP utilisation against the card's peak, and the
  estimated time of the whole HeLa experiment;
- memory per member (the compiled step's argument, output and temporary buffers; device peak
  on GPUs);
- the optimizer update cost, from ``benchmarks/optimizer_update.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

_pre_parser = argparse.ArgumentParser(add_help=False)
_pre_parser.add_argument("--suite")
_suite, _ = _pre_parser.parse_known_args()  # before jax is imported
if getattr(_suite, "suite", None) == "cpu" and "XLA_FLAGS" not in os.environ:
    # Two host devices on a two-core machine: the smallest setting in which sharding members
    # over devices can show what it costs or saves.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402  (after XLA_FLAGS is set)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from data.augment import Normalization  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# Dense bfloat16 peak of the cards this project runs on, FLOP/s (vendor data sheets).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
# The paper's HeLa protocol: 862 images, 5 folds, batch 30, 20 epochs, 56 members.
HELA_IMAGES, HELA_FOLDS, HELA_MEMBERS = 862, 5, 14 + 7 + 7 + 14 + 7 + 7

SUITES = {
    "cpu": dict(
        efficiency=dict(model="resnet18_small", image_size=32, batch_size=32, dtype="float32",
                        members=(1, 2, 4, 8), strategies=("loop", "vmap", "sharded")),
        step_loop=dict(model="resnet18_small", image_size=32, batch_size=32, dtype="float32",
                       steps=6, members=2),
        paper=dict(model="resnet50", image_size=224, batch_size=30, dtype="float32",
                   members=1, steps=2),
    ),
    "gpu": dict(
        efficiency=dict(model="resnet50", image_size=224, batch_size=30, dtype="bfloat16",
                        members=(1, 2, 4, 7), strategies=("loop", "vmap")),
        step_loop=dict(model="resnet50", image_size=224, batch_size=30, dtype="bfloat16",
                       steps=12, members=1),
        paper=dict(model="resnet50", image_size=224, batch_size=30, dtype="bfloat16",
                   members=7, steps=10),
    ),
}  # fmt: skip


class Group:
    """One optimizer group's compiled programs, members, data and one epoch's randomness."""

    def __init__(self, settings: dict, members: int, strategy: str, step_loop="python"):
        self.config = train.TrainConfig(
            model=settings["model"], image_size=settings["image_size"],
            batch_size=settings["batch_size"], dtype=settings["dtype"], augment="paper",
            step_loop=step_loop, scan_unroll=settings.get("unroll", 8),
        )  # fmt: skip
        mesh = train.member_mesh(members) if strategy == "sharded" else None
        self.programs = train.GroupPrograms(
            self.config, "dgrad", 10, strategy, mesh, Normalization((0.5,) * 3, (0.25,) * 3)
        )
        slots = -(-members // mesh.size) * mesh.size if mesh is not None else members
        keys = jnp.stack([jax.random.key(train.member_seed(0, "dgrad", m)) for m in range(slots)])
        self.members, self.slots = members, slots
        self.state = self.programs.init(keys)
        size = settings["image_size"]
        count = settings["batch_size"] * 16
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.int32)
        self.data = train.GroupData(
            train._replicated(images, mesh), train._replicated(labels, mesh),
            jnp.asarray(count, jnp.int32),
        )  # fmt: skip
        self.orders, self.keys = train._epoch_randomness(keys, jnp.asarray(0), count, count)

    def fresh_metrics(self):
        return jnp.zeros((self.slots, 3), jnp.float32)

    def copy_state(self):
        return jax.tree.map(jnp.copy, self.state)

    def step(self, state, metrics, step):
        return self.programs.train_step(state, metrics, self.orders, step, self.keys, self.data)


def _block(tree):
    jax.block_until_ready(tree)
    return tree


def time_steps(group: Group, steps: int, warmup: int = 2) -> dict:
    """Median seconds of one train step of the whole group, and the first call's time."""
    state, metrics = group.copy_state(), group.fresh_metrics()
    started = time.perf_counter()
    state, metrics = _block(group.step(state, metrics, 0))
    first = time.perf_counter() - started
    for step in range(1, warmup):
        state, metrics = _block(group.step(state, metrics, step))
    times = []
    for step in range(warmup, warmup + steps):
        started = time.perf_counter()
        state, metrics = _block(group.step(state, metrics, step))
        times.append(time.perf_counter() - started)
    return dict(step_s=statistics.median(times), first_call_s=first)


def _max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def _after_steps(group: Group, steps: int):
    """The members' parameters and summed losses after ``steps`` plain steps."""
    state, metrics = group.copy_state(), group.fresh_metrics()
    for step in range(steps):
        state, metrics = group.step(state, metrics, step)
    return jax.tree.map(lambda leaf: leaf[: group.members], state.params), metrics[: group.members]


def check_same(name: str, candidate, reference, steps: int, learning_rate: float) -> float:
    """Raises unless two paths agree; returns the largest parameter difference.

    An Adam-like step moves a parameter by at most about the learning rate, and near-zero
    gradients may round to either sign, so a few parameters may differ by up to ``2 * lr`` a
    step. Wrong data or keys move essentially every parameter by about the learning rate, so
    at least 90% must agree within a tenth of that, and the losses, which depend on every
    parameter, must agree closely.
    """
    (params, metrics), (reference_params, reference_metrics) = candidate, reference
    difference = _max_difference(params, reference_params)
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(reference_params), strict=True)
    close = sum(int(jnp.sum(jnp.abs(a - b) <= learning_rate / 10)) for a, b in pairs)
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    if (
        difference > 2 * learning_rate * steps
        or close < 0.9 * total
        or not np.allclose(metrics[:, 0], reference_metrics[:, 0], rtol=1e-4)
    ):
        raise AssertionError(
            f"{name} differs from the plain path: parameters by {difference}, losses "
            f"{np.asarray(metrics[:, 0])} vs {np.asarray(reference_metrics[:, 0])}"
        )
    return difference


def memory_per_member(group: Group) -> float:
    """Bytes per member of the compiled step: arguments + outputs - donated + temporaries."""
    compiled = group.programs.train_step.lower(
        group.state, group.fresh_metrics(), group.orders, 0, group.keys, group.data
    ).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)  # fmt: skip
    # A sharded program's sizes are per device, and each device holds slots / devices members.
    devices = group.programs.mesh.size if group.programs.mesh is not None else 1
    return total * devices / group.slots


def efficiency(settings: dict) -> list[dict]:
    """E(N) per strategy, each strategy checked against ``loop`` before it is timed.

    t_single is the plain single-member step (``loop`` with N = 1), the same for every row.
    Memory per member hardly depends on N, so it is read off the largest N only (reading it
    compiles the step once more).
    """
    rows, single = [], {}
    assert settings["strategies"][0] == "loop", "loop runs first: it is the reference"
    for members in settings["members"]:
        reference = None
        for strategy in settings["strategies"]:
            if strategy == "sharded" and jax.device_count() == 1:
                continue
            group = Group(settings, members, strategy)
            started = time.perf_counter()
            checked = jax.block_until_ready(_after_steps(group, 2))
            compile_s = time.perf_counter() - started
            reference = reference or checked
            difference = check_same(f"{strategy} N={members}", checked, reference, 2,
                                    group.config.learning_rate)  # fmt: skip
            timing = time_steps(group, steps=3 if members > 2 else 5)
            if members == 1 and strategy == "loop":
                single["loop"] = timing["step_s"]
            largest = members == max(settings["members"])
            rows.append(dict(
                strategy=strategy, members=members, step_ms=1e3 * timing["step_s"],
                compile_and_2_steps_s=compile_s,
                efficiency=members * single["loop"] / timing["step_s"],
                memory_mb_per_member=memory_per_member(group) / 1e6 if largest else None,
                max_difference_vs_loop=difference,
            ))  # fmt: skip
            print(_row_markdown(rows[-1]), flush=True)
    return rows


def _row_markdown(row: dict) -> str:
    return (f"| {row['strategy']} | {row['members']} | {row['step_ms']:.1f} | "
            f"{row['efficiency']:.2f} | {row['compile_and_2_steps_s']:.1f} | "
            f"{row['memory_mb_per_member'] or float('nan'):.0f} |")  # fmt: skip


def step_loops(settings: dict) -> list[dict]:
    """Seconds per step of a Python loop, a plain scan and an unrolled scan over an epoch."""
    steps, rows = settings["steps"], []
    members = settings["members"]
    strategy = train.resolve_strategy(train.TrainConfig(), members)[0]
    strategy = "loop" if strategy == "sharded" else strategy
    python_group = Group(settings, members, strategy)
    reference = _after_steps(python_group, steps)
    for name, unroll in (("python", None), ("scan", 1), ("scan", 8)):
        group = Group({**settings, "unroll": unroll or 1}, members, strategy)
        epoch = group.programs.train_epoch(steps) if unroll else None

        def run(state, metrics, group=group, epoch=epoch):
            if epoch is not None:
                return epoch(state, metrics, group.orders, group.keys, group.data)
            for step in range(steps):
                state, metrics = group.step(state, metrics, step)
            return state, metrics

        state, metrics = _block(run(group.copy_state(), group.fresh_metrics()))
        params = jax.tree.map(lambda leaf: leaf[:members], state.params)
        difference = check_same(f"{name} (unroll {unroll})", (params, metrics[:members]),
                                reference, steps, group.config.learning_rate)  # fmt: skip
        times = []
        for _ in range(1 if name == "scan" and jax.default_backend() == "cpu" else 3):
            started = time.perf_counter()
            _block(run(group.copy_state(), group.fresh_metrics()))
            times.append(time.perf_counter() - started)
        rows.append(dict(loop=name, unroll=unroll, members=members, strategy=strategy,
                         step_ms=1e3 * min(times) / steps, max_difference=difference))
        print(f"| {name} | {unroll or '-'} | {rows[-1]['step_ms']:.1f} |", flush=True)
    return rows


def paper_throughput(settings: dict) -> dict:
    """Images per second, XLA-counted FLOPs and utilisation of the paper's train step."""
    members = settings["members"]
    strategy, _ = train.resolve_strategy(train.TrainConfig(), members)
    strategy = "loop" if strategy == "sharded" else strategy
    group = Group(settings, members, strategy)
    single = Group(settings, 1, strategy)
    compiled = single.programs.train_step.lower(
        single.state, single.fresh_metrics(), single.orders, 0, single.keys, single.data
    ).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops_per_image = float(cost.get("flops", float("nan"))) / settings["batch_size"]
    del single, compiled
    timing = time_steps(group, steps=settings["steps"])
    images_per_s = members * settings["batch_size"] / timing["step_s"]
    kind = jax.devices()[0].device_kind
    peak = next((value for name, value in BF16_PEAK.items() if name in kind), None)
    steps_per_epoch = (HELA_IMAGES * (HELA_FOLDS - 1) // HELA_FOLDS) // settings["batch_size"]
    member_steps = HELA_MEMBERS * HELA_FOLDS * 20 * steps_per_epoch
    hela_hours = member_steps * timing["step_s"] / members / 3600
    device_peak = None
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        device_peak = stats["peak_bytes_in_use"] / members / 1e6
    return dict(
        strategy=strategy, members=members, dtype=settings["dtype"],
        step_ms=1e3 * timing["step_s"], images_per_s=images_per_s,
        train_gflops_per_image=flops_per_image / 1e9,
        mfu=images_per_s * flops_per_image / peak if peak else None,
        hela_experiment_hours=hela_hours, device_peak_mb_per_member=device_peak,
        memory_mb_per_member=memory_per_member(group) / 1e6,
    )  # fmt: skip


def optimizer_update() -> list[dict] | None:
    """Runs benchmarks/optimizer_update.py and returns its rows."""
    script = ROOT / "benchmarks" / "optimizer_update.py"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), "--repeats", "7"], cwd=ROOT,
                            env=environment, capture_output=True, text=True,
                            check=False)  # fmt: skip
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    path = RESULTS / "optimizer_update.json"
    return json.loads(path.read_text())["rows"] if path.exists() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--smoke", action="store_true",
                        help="run the suite's code paths on a tiny model and few members, to "
                        "check the script itself (the numbers mean nothing)")  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=(),
                        choices=("efficiency", "step_loop", "paper", "optimizer"),
                        help="parts to leave out")  # fmt: skip
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    if args.smoke:
        tiny = dict(model="resnet_tiny", image_size=8, batch_size=4)
        suite = {part: {**settings, **tiny} for part, settings in suite.items()}
        suite["efficiency"]["members"] = (1, 2)
        suite["paper"]["members"] = min(suite["paper"]["members"], 2)
    started = time.perf_counter()
    report = dict(
        suite=args.suite, backend=jax.default_backend(), device=jax.devices()[0].device_kind,
        devices=jax.device_count(), machine=platform.machine(), processor=platform.processor(),
        cpus=os.cpu_count(), python=platform.python_version(), jax=jax.__version__,
        auto_member_strategy=train.AUTO_MEMBER_STRATEGY, auto_step_loop=train.AUTO_STEP_LOOP,
    )  # fmt: skip
    print(f"backend {report['backend']} ({report['device']}), {report['devices']} devices")
    if "efficiency" not in args.skip:
        print("\n| strategy | N | group step ms | E(N) | compile + 2 steps s | MB per member |")
        print("|---|---|---|---|---|---|")
        report["efficiency"] = efficiency(suite["efficiency"])
    if "step_loop" not in args.skip:
        print("\n| step loop | unroll | ms per step |\n|---|---|---|")
        report["step_loop"] = step_loops(suite["step_loop"])
    if "paper" not in args.skip:
        report["paper"] = paper_throughput(suite["paper"])
        paper = report["paper"]
        mfu = f"{100 * paper['mfu']:.1f}%" if paper["mfu"] else "n/a (CPU)"
        print("\n| strategy | N | dtype | step ms | images/s | train GFLOP/image | MFU | "
              "HeLa experiment h |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        print(f"| {paper['strategy']} | {paper['members']} | {paper['dtype']} | "
              f"{paper['step_ms']:.0f} | {paper['images_per_s']:.1f} | "
              f"{paper['train_gflops_per_image']:.1f} | {mfu} | "
              f"{paper['hela_experiment_hours']:.1f} |")  # fmt: skip
    if "optimizer" not in args.skip:
        report["optimizer_update"] = optimizer_update()
    report["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"trainer_{args.suite}{'_smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
