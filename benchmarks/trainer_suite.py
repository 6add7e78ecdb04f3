"""The measurements of ``benchmarks/trainer.py`` (what they are: its docstring). Import this
only after ``XLA_FLAGS`` is set, as ``trainer.py`` does: XLA reads it when jax starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import trainer_support as ts  # beside this module (trainer.py puts benchmarks/ on the path)

from models.pretrained import Normalization
from training import (
    AUTO_MEMBER_STRATEGY,
    AUTO_STEP_LOOP,
    ProgramSpec,
    RunPrograms,
    TrainConfig,
    member_keys,
    resolve_placement,
    slot_keys,
)
from training.members import epoch_randomness
from training.programs import GroupData, predict_members
from training.transfer import replicate

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results"
DESCRIPTION = "Member strategies, step loops, throughput and memory of the ensemble trainer."
DATASHEET_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, FLOP/s
MATMUL_REFERENCE = {"H200": 790e12}  # 8192^3 bf16 products seen on the device machine
GROUP, CLASSES, NORMALIZATION = "dgrad", 10, Normalization((0.5,) * 3, (0.25,) * 3)
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 3e-2}  # bf16 convolutions round differently
CLOSE_FRACTION = {"float32": 0.9, "bfloat16": 0.75}
# A row may differ from the reference by this many times what a one-ulp nudge of the
# reference's initial parameters changes: the row's program reassociates sums in every
# layer, the nudge perturbs the inputs once (docs/performance.md, "What the check can tell").
NUDGE_FACTOR = 10

_RESNET50 = dict(model="resnet50", image_size=224, batch_size=30)
PAPER_GROUPS = {"sgd": 14, "adam": 7, "diffgrad": 7, "dgrad": 14, "cos1": 7, "cos2": 7}
_SIX = dict.fromkeys(PAPER_GROUPS, 1)  # one member of each of the paper's optimizers
SUITES = {
    "cpu": dict(
        model="resnet18_small", image_size=32, batch_size=32, dtype="float32", steps_per_epoch=16,
        rows=[(1, ("loop", "vmap", "sharded")), (2, ("loop", "vmap", "sharded")),
              (4, ("loop", "vmap", "sharded")), (8, ("loop", "vmap", "sharded"))],
        timing=dict(check_steps=2, steps=3, repeats=3), step_loop=dict(members=2, unrolls=(1, 8)),
        paper=dict(_RESNET50, dtype="float32", steps_per_epoch=23,
                   timing=dict(check_steps=1, steps=1, repeats=2)),
        ensemble=dict(groups=_SIX, runs=(("loop", None), ("vmap", 3), ("vmap", None)),
                      budget_s=120),
        budget_s=900, row_cap_s=300, matmul=(1024, "float32"), optimizer_repeats=7,
    ),
    "gpu": dict(
        _RESNET50, dtype="bfloat16", steps_per_epoch=23,  # one HeLa epoch: 690 images
        # Measured on one H200: vmap at N = 7, 14 (E 0.43, 0.45) and loop at N = 1, 7, 14
        # (docs/performance.md). Next: the map candidates; then the step loop runs.
        rows=[(1, ("loop",)), (7, ("map", "map-vmap2")), (14, ("map", "map-vmap2")),
              (2, ("loop", "vmap")), (4, ("loop", "vmap"))],
        # One check step: after an Adam-like first step a ResNet50 is chaotic (a one-ulp nudge
        # of the initial parameters leaves 38% of them within lr/10 after two steps).
        timing=dict(check_steps=1, steps=5, repeats=3), step_loop=dict(members=1, unrolls=(1, 4)),
        paper=None,  # the efficiency rows are the paper's protocol
        # 56 at once would not fit 139 GiB; runs after the efficiency rows and the step loop.
        # loop first: it is what auto runs on a GPU (vmap in chunks of 14 was measured).
        ensemble=dict(groups=PAPER_GROUPS, runs=(("loop", None), ("vmap", 28)), budget_s=120,
                      timing=dict(check_steps=1, steps=2, repeats=2)),
        budget_s=300, row_cap_s=150, matmul=(8192, "bfloat16"), optimizer_repeats=7,
    ),
}  # fmt: skip
SMOKE = dict(  # every code path on a tiny model; the N=20000 row must be skipped by the cap
    model="resnet_tiny",
    image_size=8,
    batch_size=4,
    steps_per_epoch=6,
    row_cap_s=None,
    row_cap_factor=5,  # x the reference row's compile: relative, so loaded machines agree
    timing=dict(check_steps=2, steps=2, repeats=1),
    matmul=(64, "float32"),
    optimizer_repeats=1,
    ensemble=dict(groups=_SIX, runs=(("loop", None), ("vmap", 2), ("vmap", None)), budget_s=60),
)


def placement_for(strategy: str, step_loop: str, members: int, batch_size: int):
    """The trainer's placement of ``members`` (auto mesh for "sharded")."""
    return resolve_placement(strategy, step_loop, members, batch_size=batch_size)


def device_memory() -> dict | None:
    return jax.local_devices()[0].memory_stats()  # None on CPU


# -- the measured programs ------------------------------------------------------------------
class Bench:
    """What every row shares: a pool of initialised members, one data set, one epoch's
    orders and augmentation keys. Member m's keys depend only on m, so the first N members
    of the pool are the members of any group of N."""

    def __init__(self, settings: dict, pool: int):
        self.settings, self.batch = settings, settings["batch_size"]
        self.config = TrainConfig(
            model=settings["model"], image_size=settings["image_size"], batch_size=self.batch,
            dtype=settings["dtype"], augment="paper", step_loop="python", scan_unroll=1,
        )  # fmt: skip
        self.count = self.batch * settings["steps_per_epoch"]
        rng, size = np.random.default_rng(0), settings["image_size"]
        self.images = rng.integers(0, 256, (self.count, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, CLASSES, self.count).astype(np.int32)
        init_keys, data_keys = member_keys(0, GROUP, 0, pool)
        programs = RunPrograms(self.spec(self.placement("loop", "python", pool)))
        started = time.perf_counter()
        self.state = jax.block_until_ready(programs.init(init_keys))
        self.init_s = time.perf_counter() - started  # compile + run of the init program
        count = jnp.asarray(self.count, jnp.int32)
        self.orders, self.keys = epoch_randomness(data_keys, jnp.asarray(0), count, self.count)

    def placement(self, strategy: str, step_loop: str, members: int):
        return placement_for(strategy, step_loop, members, self.batch)

    def spec(self, placement, config=None) -> ProgramSpec:
        config = dataclasses.replace(config or self.config, optimizers={GROUP: 1})
        return ProgramSpec.for_run(config, CLASSES, placement, NORMALIZATION)

    def inputs(self, placement, sharding=None):
        """Fresh (state, metrics, orders, keys, data) of the first ``slots`` pool members,
        put on ``sharding`` (a program's ``member_sharding``) where there is a mesh."""
        slots, mesh = placement.slots, placement.mesh
        pool = len(self.orders)
        if slots > pool:
            raise ValueError(f"a row needs {slots} member slots; the pool holds {pool}")
        place = partial(jax.device_put, device=sharding) if sharding else (lambda tree: tree)
        state = jax.tree.map(lambda leaf: jnp.copy(leaf[:slots]), self.state)  # donated
        data = GroupData(replicate(self.images, mesh), replicate(self.labels, mesh),
                         jnp.asarray(self.count, jnp.int32))  # fmt: skip
        return (place(state), place(jnp.zeros((slots, 3), jnp.float32)),
                place(self.orders[:slots]), place(self.keys[:slots]), data)  # fmt: skip


def step_program(bench: Bench, strategy: str, members: int):
    """(placement, member sharding, compile) of a row: ``compile(state, metrics, orders,
    keys, data)`` returns the compiled program (for its cost analysis) and ``run(state,
    metrics, orders, step, keys, data)``, one step of every member as the trainer runs it
    (a ``loop`` placement calls the one-member program per member). A hybrid maps a
    one-member trainer step over the members with ``jax.lax.map`` (vmapping chunks of
    ``ts.HYBRIDS[strategy]``)."""
    if strategy not in ts.HYBRIDS:
        placement = bench.placement(strategy, "python", members)
        programs = RunPrograms(bench.spec(placement))
        rules = programs.rules([GROUP] * placement.slots)
        first = (jnp.int32(0),) if placement.chunk is not None else ()

        def compile_trainer_step(state, metrics, orders, keys, data):
            compiled = programs.step_program.lower(
                state, metrics, orders, jnp.int32(0), keys, data, rules, *first
            ).compile()

            def run(state, metrics, orders, step, keys, data):
                return programs.run_chunks(compiled, state, metrics, orders, jnp.int32(step),
                                           keys, data, rules)  # fmt: skip

            return compiled, run

        return placement, programs.member_sharding, compile_trainer_step
    one = RunPrograms(bench.spec(bench.placement("loop", "python", 1))).step_program
    chunk = ts.HYBRIDS[strategy]
    rule, first = np.zeros(1, np.int32), np.int32(0)  # host constants: nothing closed over

    def member_step(member, step, data):
        state, metrics, order, key = jax.tree.map(lambda leaf: leaf[None], member)
        stepped = one(state, metrics, order, step, key, data, rule, first)
        return jax.tree.map(lambda leaf: leaf[0], stepped)

    def group_step(state, metrics, orders, step, keys, data):
        return jax.lax.map(
            partial(member_step, step=step, data=data),
            (state, metrics, orders, keys),
            batch_size=chunk if chunk > 1 else None,
        )

    step = jax.jit(group_step, donate_argnums=(0, 1))

    def compile_hybrid(state, metrics, orders, keys, data):
        compiled = step.lower(state, metrics, orders, jnp.int32(0), keys, data).compile()
        return compiled, lambda s, m, o, i, k, d: compiled(s, m, o, jnp.int32(i), k, d)

    return bench.placement("loop", "python", members), None, compile_hybrid


class Reference(NamedTuple):
    """The loop strategy's members after the check steps, and ``nudged``: how far the same
    run from initial parameters one ulp larger ends from it (``differences``)."""

    params: Any
    losses: np.ndarray
    nudged: dict


def nudged(inputs: tuple) -> tuple:
    """``Bench.inputs`` with every parameter one ulp larger: the smallest change there is."""
    state, *rest = inputs
    params = jax.tree.map(lambda leaf: jnp.nextafter(leaf, jnp.inf), state.params)
    return (state._replace(params=params), *rest)


def differences(ref_params, ref_losses, params, losses, lr: float) -> dict:
    """How far the first members' parameters and losses are from the reference's: the
    largest parameter difference, the fraction within a tenth of the learning rate, and
    the largest relative loss difference."""
    k = min(len(losses), len(ref_losses))
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True))
    close = sum(int(jnp.sum(jnp.abs(a[:k] - b[:k]) <= lr / 10)) for a, b in pairs)
    return dict(
        members=k,
        max_param_difference=max(float(jnp.max(jnp.abs(a[:k] - b[:k]))) for a, b in pairs),
        close_fraction=close / sum(a[:k].size for a, _ in pairs),
        loss_relative=float(np.max(np.abs(losses[:k] - ref_losses[:k]) / np.abs(ref_losses[:k]))),
        losses=np.asarray(losses[:k]).tolist(), reference_losses=ref_losses[:k].tolist(),
    )  # fmt: skip


def reference_of(bench: Bench, run, fresh_inputs, steps: int, known=None) -> Reference:
    """``run(state, metrics, orders, step, keys, data)`` for ``steps`` steps from
    ``fresh_inputs()`` and from ``nudged(fresh_inputs())`` (each run donates its inputs):
    the reference and its sensitivity. ``known``: the un-nudged run's ``(params, losses)``,
    where the caller has them already."""

    def trained(state, metrics, orders, keys, data):
        for i in range(steps):
            state, metrics = run(state, metrics, orders, i, keys, data)
        members = len(orders)
        params = jax.tree.map(lambda leaf: jnp.copy(leaf[:members]), state.params)
        return params, np.asarray(metrics[:members, 0])

    params, losses = known if known is not None else trained(*fresh_inputs())
    lr = bench.config.learning_rate
    sensitivity = differences(params, losses, *trained(*nudged(fresh_inputs())), lr)
    return Reference(params, losses, sensitivity)


def check_against(reference: Reference | None, params, losses, steps: int, bench: Bench) -> dict:
    """Compares the first members with the reference trajectory (the loop strategy).

    An Adam-like step moves a parameter by at most about the learning rate, so no parameter
    may differ by more than twice that per step. Wrong data or keys move essentially every
    parameter by about that much, so most parameters must agree within a tenth of it, and
    the losses closely: "most" and "closely" are the dtype's bounds, or NUDGE_FACTOR times
    what a one-ulp nudge of the reference's parameters changes where that is more (a
    ResNet50's first step in bfloat16 is that sensitive; a check it cannot decide passes).
    """
    if reference is None:
        return dict(against=None, ok=True)
    lr, dtype = bench.config.learning_rate, bench.config.dtype
    seen = differences(reference.params, reference.losses, params, losses, lr)
    nudge = reference.nudged
    far_allowed = max(1 - CLOSE_FRACTION[dtype], NUDGE_FACTOR * (1 - nudge["close_fraction"]))
    close_needed = max(1 - far_allowed, 0.0)
    loss_allowed = max(LOSS_RTOL[dtype], NUDGE_FACTOR * nudge["loss_relative"])
    ok = (
        seen["max_param_difference"] <= 2 * lr * steps
        and seen["close_fraction"] >= close_needed
        and seen["loss_relative"] <= loss_allowed
    )
    return dict(against=f"loop, first {seen['members']} members", ok=bool(ok), **seen,
                close_needed=close_needed, loss_relative_allowed=loss_allowed,
                nudged_reference={k: v for k, v in nudge.items() if "losses" not in k})  # fmt: skip


def measure_row(bench: Bench, strategy: str, members: int, reference, timing: dict) -> tuple:
    """Compiles, checks and times one group step; returns (row, params, losses, compiled)."""
    before, started = device_memory(), time.perf_counter()
    placement, sharding, compile_step = step_program(bench, strategy, members)
    state, metrics, orders, keys, data = bench.inputs(placement, sharding)
    compiled, run = compile_step(state, metrics, orders, keys, data)
    compile_s = time.perf_counter() - started
    # Members one call of the compiled program trains: all slots, or a chunk per device row.
    per_call = (
        placement.slots
        if placement.chunk is None
        else (placement.mesh_shape["member"] * placement.chunk)
    )
    spe = bench.settings["steps_per_epoch"]
    for i in range(timing["check_steps"]):
        state, metrics = run(state, metrics, orders, i, keys, data)
    params = jax.tree.map(lambda leaf: jnp.copy(leaf[:members]), state.params)  # kept
    losses = np.asarray(metrics[:members, 0])
    check = check_against(reference, params, losses, timing["check_steps"], bench)
    times, i = [], timing["check_steps"]
    for _ in range(timing["repeats"]):  # no sync between steps, as in the trainer
        start = time.perf_counter()
        for _ in range(timing["steps"]):
            state, metrics = run(state, metrics, orders, i % spe, keys, data)
            i += 1
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / timing["steps"])
    step_s, flops = statistics.median(times), ts.xla_flops(compiled)
    footprint = ts.compiled_bytes(compiled)
    devices = placement.mesh.size if placement.mesh is not None else 1
    delta, after = ts.peak_delta_bytes(before, device_memory()), device_memory()
    row = dict(
        strategy=strategy, members=members, slots=placement.slots,
        benchmark_only=strategy in ts.HYBRIDS, compile_s=compile_s, step_ms=1e3 * step_s,
        images_per_s=members * bench.batch / step_s, images_per_s_per_member=bench.batch / step_s,
        xla_flops_per_image=flops / (per_call * bench.batch) if flops else None,
        compiled_mb_per_member=footprint * devices / per_call / 1e6 if footprint else None,
        device_peak_delta_mb_per_member=delta / members / 1e6 if delta else None,
        device_peak_mb_process=after["peak_bytes_in_use"] / 1e6 if after else None,
        check=check, row_s=time.perf_counter() - started,
    )  # fmt: skip
    return row, params, losses, run


def _print_row(row: dict) -> None:
    if "skipped" in row or "error" in row:
        print(f"| {row['strategy']} | {row['members']} | {row.get('skipped') or row['error']} |")
        return
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"| {row['strategy']} | {row['members']} | {row['step_ms']:.1f} | "
          f"{row['efficiency']:.2f} | {row['compile_s']:.1f} | "
          f"{fmt(row['compiled_mb_per_member'], '.1f')} | "
          f"{fmt(row['device_peak_delta_mb_per_member'], '.1f')} | "
          f"{fmt(row['mfu_datasheet'], '.1%')} / {fmt(row['mfu_matmul'], '.1%')} | "
          f"{'ok' if row['check']['ok'] else 'DIFFERS'} |", flush=True)  # fmt: skip


def efficiency(
    bench: Bench, suite: dict, report: ts.Report, deadline: float, peaks: dict, later_compiles: int
) -> dict:
    """E(N) rows in the suite's priority order; returns the kept python-loop programs.

    A row starts only if the budget still holds it and ``later_compiles`` compiles of the
    reference row's size for the parts that run after it."""
    rows, reference, kept, timing = report.data["efficiency"], None, {}, suite["timing"]
    loop_members = suite["step_loop"]["members"]
    print("\n| strategy | N | group step ms | E(N) | compile s | compiled MB/member | device peak "
          "MB/member | MFU sheet / matmul | check |\n" + "|---" * 9 + "|")  # fmt: skip
    for members, strategies in suite["rows"]:
        for strategy in strategies:
            if strategy == "sharded" and jax.device_count() == 1:
                continue
            measured = [r for r in rows if "step_ms" in r]
            single = next((r for r in measured if (r["strategy"], r["members"]) == ("loop", 1)),
                          None)  # fmt: skip
            if single is not None:  # the reference row (loop, N=1) is never skipped
                same = {r["members"]: r["compile_s"] for r in measured if r["strategy"] == strategy}
                fallback = 2 * single["compile_s"]  # a strategy's first row
                per_member = max(
                    [r["step_ms"] / r["members"] for r in measured if r["strategy"] == strategy]
                    or [4 * single["step_ms"]]
                )
                steps = timing["check_steps"] + timing["steps"] * timing["repeats"]
                estimate = (ts.estimate_compile_s(same, members, fallback)
                            + steps * members * per_member / 1e3)  # fmt: skip
                reserve = later_compiles * single["compile_s"]
                reason = ts.skip_reason(estimate, deadline - time.perf_counter(), reserve,
                                     ts.row_cap(suite, single))  # fmt: skip
                if reason:
                    rows.append(dict(strategy=strategy, members=members, skipped=reason))
                    _print_row(rows[-1])
                    report.save()
                    continue
            try:
                row, params, losses, run = measure_row(bench, strategy, members, reference,
                                                       timing)  # fmt: skip
            except Exception as error:  # noqa: BLE001  (one failing row must not end the run)
                rows.append(dict(strategy=strategy, members=members, error=repr(error)[:800]))
                _print_row(rows[-1])
                report.save()
                continue
            single = single or row
            row["efficiency"] = ts.ensemble_efficiency(members, single["step_ms"], row["step_ms"])
            for name, peak in peaks.items():
                row[name] = ts.mfu(row["images_per_s"], single["xla_flops_per_image"], peak)
            if strategy == "loop" and (reference is None or members > len(reference.losses)):
                inputs = partial(bench.inputs, bench.placement("loop", "python", members))
                reference = reference_of(bench, run, inputs, timing["check_steps"],
                                         known=(params, losses))  # fmt: skip
            if strategy == "loop" and members == loop_members:
                kept = dict(run=run, row=row)
            rows.append(row)
            _print_row(row)
            report.save()
    return kept


def step_loops(bench: Bench, suite: dict, report: ts.Report, deadline: float, kept: dict):
    """A Python loop of jitted steps against ``lax.scan`` over one epoch (unroll 1, ...)."""
    members, steps = suite["step_loop"]["members"], bench.settings["steps_per_epoch"]
    rows, repeats = report.data["step_loop"], max(suite["timing"]["repeats"], 1)
    if not kept:
        rows.append(dict(loop="python", skipped=f"no measured loop row with N={members}"))
        return
    python = kept["run"]
    placement = bench.placement("loop", "python", members)

    def run_python(state, metrics, orders, keys, data):
        for i in range(steps):
            state, metrics = python(state, metrics, orders, i, keys, data)
        return jax.block_until_ready((state, metrics))

    reference = reference_of(bench, python, partial(bench.inputs, placement), steps)
    print("\n| step loop | unroll | ms per step | compile s | check |\n|---|---|---|---|---|")
    candidates = [("python", None, run_python, kept["row"]["compile_s"])]
    for unroll in suite["step_loop"]["unrolls"]:
        config = dataclasses.replace(bench.config, scan_unroll=unroll)
        estimate = kept["row"]["compile_s"] / members * (unroll + (steps % unroll > 0))
        reason = ts.skip_reason(estimate, deadline - time.perf_counter(), 0.0,
                             ts.row_cap(suite, kept["row"]))  # fmt: skip
        if reason:
            rows.append(dict(loop="scan", unroll=unroll, skipped=reason))
            print(f"| scan | {unroll} | {reason} |")
            continue
        try:
            scan_placement = bench.placement("loop", "scan", members)
            programs = RunPrograms(bench.spec(scan_placement, config))
            rules = programs.rules([GROUP] * scan_placement.slots)
            first = (jnp.int32(0),) if scan_placement.chunk is not None else ()
            started = time.perf_counter()
            compiled = (
                programs.epoch_program(steps)
                .lower(*bench.inputs(scan_placement), rules, *first)
                .compile()
            )
            compile_s = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001
            rows.append(dict(loop="scan", unroll=unroll, error=repr(error)[:800]))
            continue
        candidates.append(("scan", unroll, lambda *a, c=compiled, p=programs, r=rules:
                           jax.block_until_ready(p.run_chunks(c, *a, r)), compile_s))  # fmt: skip
    for name, unroll, run, compile_s in candidates:
        state, metrics = run(*bench.inputs(placement))
        check = check_against(reference, jax.tree.map(lambda leaf: leaf[:members], state.params),
                              np.asarray(metrics[:members, 0]), steps, bench)  # fmt: skip
        times = []
        for _ in range(repeats):
            inputs = bench.inputs(placement)
            started = time.perf_counter()
            run(*inputs)
            times.append((time.perf_counter() - started) / steps)
        rows.append(dict(loop=name, unroll=unroll, members=members, step_ms=1e3 * min(times),
                         compile_s=compile_s, check=check))  # fmt: skip
        print(f"| {name} | {unroll or '-'} | {rows[-1]['step_ms']:.1f} | {compile_s:.1f} | "
              f"{'ok' if check['ok'] else 'DIFFERS'} |", flush=True)  # fmt: skip
        report.save()


def measure_predict(bench: Bench, strategy: str, members: int) -> dict:
    """Compile and run time of the test-set predictions of a HeLa fold (173 images)."""
    placement = bench.placement(strategy, "python", members)
    programs = RunPrograms(bench.spec(placement))
    state = bench.inputs(placement, programs.member_sharding)[0]
    test = bench.images[np.arange(ts.HELA["images"] // ts.HELA["folds"] + 1) % bench.count]
    batch = bench.config.eval_batch_size
    times = []
    for _ in range(2):  # the first call compiles
        started = time.perf_counter()
        predict_members(programs, state, test, batch)
        times.append(time.perf_counter() - started)
    return dict(strategy=strategy, members=members, images=len(test), compile_s=times[0] - times[1],
                seconds_per_member=times[1] / members)  # fmt: skip


def paper_protocol(bench: Bench, suite: dict, report: ts.Report, deadline: float, peaks: dict):
    """Images/s, MFU and the HeLa experiment's time of the paper's protocol (ResNet50, 224,
    batch 30): the efficiency rows themselves, or on CPU one separate ResNet50 row."""
    rows = report.data["efficiency"]
    if suite["paper"]:  # the CPU suite's efficiency model is smaller than the paper's
        bench = Bench(suite["paper"], 1)
        row = measure_row(bench, "loop", 1, None, suite["paper"]["timing"])[0]
        rows = [dict(row, efficiency=1.0, **{k: ts.mfu(row["images_per_s"],
                     row["xla_flops_per_image"], p) for k, p in peaks.items()})]  # fmt: skip
    measured = [r for r in rows if "step_ms" in r]
    if not measured:
        return dict(problem="no measured row")
    chosen = report.data["recommendation"].get("member_strategy")
    chosen = chosen if any(r["strategy"] == chosen for r in measured) else "loop"
    sizes = [r["members"] for r in measured if r["strategy"] == chosen]
    predict = {}
    if deadline - time.perf_counter() > 0 or suite.get("smoke"):  # smoke: always
        predict = measure_predict(bench, chosen, 7 if 7 in sizes else max(sizes))
    fields = ("strategy", "members", "step_ms", "images_per_s", "images_per_s_per_member",
              "xla_flops_per_image", "mfu_datasheet", "mfu_matmul")  # fmt: skip
    paper = dict(
        predict=predict,
        init_s=bench.init_s,
        rows=[{k: r.get(k) for k in fields} for r in measured],
        hela_experiment=ts.hela_estimates(measured, bench.batch, bench.init_s, predict),
    )
    print("\nHeLa experiment (56 members x 5 folds x 20 epochs), compiles included:")
    for strategy, estimate in paper["hela_experiment"].items():
        print(
            f"  {strategy}: {estimate['minutes']:.1f} min (extrapolated N: "
            f"{estimate['extrapolated_members'] or 'none'})"
        )
    return paper


def whole_ensemble(bench: Bench, suite: dict, report: ts.Report, deadline: float) -> None:
    """The paper's ensemble as one program, as the trainer runs it: every group's members
    on one member axis (each member's optimizer picked by its rule), one member per call
    (``loop``) or under ``vmap`` in member chunks that fit the device's memory. Per run:
    compile seconds, the step time of all members, and E(N) against the loop N=1 row."""
    groups = suite["ensemble"]["groups"]
    members = sum(groups.values())
    config = dataclasses.replace(bench.config, optimizers=groups)
    single = next((r for r in report.data["efficiency"] if "step_ms" in r
                   and (r["strategy"], r["members"]) == ("loop", 1)), None)  # fmt: skip
    timing = suite["ensemble"].get("timing", suite["timing"])
    rows = report.data["whole_ensemble"] = []  # saved after every row, like the others
    # Its own allowance after the efficiency rows' deadline: these rows are the point of
    # a GPU run, and each starts only while the allowance lasts.
    deadline = max(deadline, time.perf_counter()) + suite["ensemble"]["budget_s"]
    print(
        f"\n| whole ensemble: {members} members of {len(groups)} optimizers, strategy | "
        "chunk | slots | compile s | step ms (all members) | E(N) | device peak MB |\n"
        + "|---" * 7 + "|"
    )
    for strategy, chunk in suite["ensemble"]["runs"]:
        if time.perf_counter() > deadline and not suite.get("smoke"):
            rows.append(dict(strategy=strategy, chunk=chunk, skipped="the budget is spent"))
            continue
        try:
            started = time.perf_counter()
            placement = resolve_placement(strategy, "python", members, batch_size=bench.batch,
                                          member_chunk=chunk)  # fmt: skip
            programs = RunPrograms(ProgramSpec.for_run(config, CLASSES, placement, NORMALIZATION))
            names = [g for g, n in groups.items() for _ in range(n)]
            names += names[:1] * (placement.slots - members)  # padding slots
            init_keys, data_keys = slot_keys(0, 0, [(g, i) for i, g in enumerate(names)])
            state = jax.block_until_ready(programs.init(init_keys))
            init_s = time.perf_counter() - started
            rules = programs.rules(names)
            count = jnp.asarray(bench.count, jnp.int32)
            orders, keys = epoch_randomness(data_keys, jnp.asarray(0), count, bench.count)
            data = GroupData(replicate(bench.images, None), replicate(bench.labels, None), count)
            metrics = jnp.zeros((placement.slots, 3), jnp.float32)
            first = (jnp.int32(0),) if placement.chunk is not None else ()
            started = time.perf_counter()
            compiled = programs.step_program.lower(state, metrics, orders, jnp.int32(0), keys,
                                                   data, rules, *first).compile()  # fmt: skip
            compile_s = time.perf_counter() - started
            spe, i, times = bench.settings["steps_per_epoch"], 0, []
            for _ in range(timing["check_steps"]):
                state, metrics = programs.run_chunks(compiled, state, metrics, orders,
                                                     jnp.int32(i), keys, data, rules)  # fmt: skip
                i += 1
            for _ in range(timing["repeats"]):
                start = time.perf_counter()
                for _ in range(timing["steps"]):
                    state, metrics = programs.run_chunks(
                        compiled, state, metrics, orders, jnp.int32(i % spe), keys, data, rules
                    )
                    i += 1
                jax.block_until_ready((state, metrics))
                times.append((time.perf_counter() - start) / timing["steps"])
            losses = np.asarray(metrics[:members, 0])
            step_s, memory = statistics.median(times), device_memory()
            del state, metrics
        except Exception as error:  # noqa: BLE001  (an out-of-memory chunk must not end the run)
            rows.append(dict(strategy=strategy, chunk=chunk, error=repr(error)[:800]))
            print(f"| {strategy} | {chunk or 'all'} | {rows[-1]['error'][:100]} |")
            report.save()
            continue
        row = dict(
            members=members, groups=groups, strategy=strategy, chunk=placement.chunk,
            slots=placement.slots, init_s=init_s,
            compile_s=compile_s, step_ms=1e3 * step_s,
            images_per_s=members * bench.batch / step_s,
            efficiency=(ts.ensemble_efficiency(members, single["step_ms"], 1e3 * step_s)
                        if single else None),
            device_peak_mb_process=memory["peak_bytes_in_use"] / 1e6 if memory else None,
            finite_losses=bool(np.isfinite(losses).all()),
        )  # fmt: skip
        rows.append(row)
        efficiency = "-" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
        peak = row["device_peak_mb_process"]
        print(
            f"| {strategy} | {placement.chunk or 'all'} | {row['slots']} | {compile_s:.1f} | "
            f"{row['step_ms']:.1f} | "
            f"{efficiency} | {'-' if peak is None else f'{peak:.0f}'} |",
            flush=True,
        )
        report.save()


def main(argv=None, *, child_xla_flags: str = "") -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/trainer.py", description=DESCRIPTION)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run every code path on a tiny "
        "model and few members, to check the script itself (numbers meaningless)",
    )
    parser.add_argument("--budget-s", type=float, help="seconds after which no row starts "
                        "(default: the suite's); the reference row always runs")  # fmt: skip
    parser.add_argument("--output", type=Path, help="the results JSON (default: "
                        "benchmarks/results/trainer_<suite>[_smoke].json)")  # fmt: skip
    parser.add_argument(
        "--rows",
        help="efficiency rows to run instead of the suite's, in "
        "order, e.g. '7:loop,vmap;14:map' (a rerun filling skipped rows)",
    )
    parser.add_argument("--unrolls", type=int, nargs="*", help="scan unrolls of the step-loop "
                        "part instead of the suite's")  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=(), help="parts to leave out",
                        choices=("optimizer", "step_loop", "paper", "ensemble"))  # fmt: skip
    args = parser.parse_args(argv)
    suite = dict(SUITES[args.suite])
    if args.smoke:
        suite = {**suite, **SMOKE, "smoke": True}
        suite["rows"] = [(1, ("loop", "vmap", "sharded")), (2, ("loop", "vmap", "sharded")),
                         (3, ("loop", "vmap", *ts.HYBRIDS)), (20000, ("loop",))]  # fmt: skip
        suite["step_loop"] = dict(members=1, unrolls=(1, 2))
        if suite["paper"]:
            suite["paper"] = {**suite["paper"], **SMOKE, "dtype": "float32"}
    if args.rows:
        suite["rows"] = ts.parse_rows(args.rows)
        if not any(n == 1 and "loop" in names for n, names in suite["rows"]):
            suite["rows"].insert(0, (1, ("loop",)))  # the reference of E(N) and the checks
    if args.unrolls is not None:
        suite["step_loop"] = dict(suite["step_loop"], unrolls=tuple(args.unrolls))
    started = time.perf_counter()
    deadline = started + (args.budget_s if args.budget_s is not None else suite["budget_s"])
    path = args.output or RESULTS / f"trainer_{args.suite}{'_smoke' if args.smoke else ''}.json"
    if "optimizer" not in args.skip:  # first: before this process takes the device's memory
        optimizer = ts.optimizer_update(
            ROOT,
            suite["optimizer_repeats"],
            args.smoke,
            max(deadline - time.perf_counter(), 60),
            child_xla_flags,
        )
    kind = jax.devices()[0].device_kind
    report = ts.Report(
        path, suite=args.suite, smoke=args.smoke, backend=jax.default_backend(), device=kind,
        devices=jax.device_count(), machine=platform.machine(), cpus=os.cpu_count(),
        python=platform.python_version(), jax=jax.__version__, jaxlib=ts.version("jaxlib"),
        settings={k: v for k, v in suite.items() if k != "paper"}, paper_settings=suite["paper"],
        budget_s=deadline - started, efficiency=[], step_loop=[],
    )  # fmt: skip
    if args.smoke:
        report.data["note"] = "smoke run: tiny model, the numbers are meaningless"
    if "optimizer" not in args.skip:
        report.data["optimizer_update"] = optimizer
    print(
        f"backend {report.data['backend']} ({kind}), {jax.device_count()} devices, "
        f"jax {jax.__version__}{' (SMOKE: numbers meaningless)' if args.smoke else ''}"
    )
    sheet = next((v for k, v in DATASHEET_BF16_PEAK.items() if k in kind), None)
    measured_peak = ts.matmul_peak(*suite["matmul"])
    peaks = dict(mfu_datasheet=sheet, mfu_matmul=measured_peak)
    report.data["peaks"] = dict(
        datasheet_bf16_flops=sheet,
        matmul_measured_flops=measured_peak,
        matmul=suite["matmul"],
        matmul_reference_flops=next((v for k, v in MATMUL_REFERENCE.items() if k in kind), None),
    )
    print(f"matrix product {suite['matmul']}: {measured_peak / 1e12:.1f} TFLOP/s")
    pool = max(n for n, _ in suite["rows"] if n < 100) if args.smoke else max(
        n for n, _ in suite["rows"])  # fmt: skip
    bench = Bench(suite, -(-pool // jax.device_count()) * jax.device_count())
    report.data["init_s"] = bench.init_s
    # After the rows: the scan step loop (unroll 1 compiled anew) and the paper protocol
    # (its predictions and a margin); the whole ensemble has its own allowance.
    later_compiles = ("step_loop" not in args.skip) + 2 * bool(
        "paper" not in args.skip and suite["paper"]
    )
    kept = efficiency(bench, suite, report, deadline, peaks, later_compiles)
    if "step_loop" not in args.skip:  # before the whole ensemble, whose allowance may run out
        step_loops(bench, suite, report, deadline, kept)
    if "ensemble" not in args.skip:
        whole_ensemble(bench, suite, report, deadline)
    recommendation = ts.recommend(report.data["efficiency"], report.data["step_loop"])
    report.data["recommendation"] = recommendation
    if "paper" not in args.skip:
        report.data["paper"] = paper_protocol(bench, suite, report, deadline, peaks)
    backend = report.data["backend"]
    tables = (("member_strategy", AUTO_MEMBER_STRATEGY), ("step_loop", AUTO_STEP_LOOP))
    report.data["auto_table"] = ts.auto_sources(backend, recommendation, tables,
                                             RESULTS / "trainer_cpu.json")  # fmt: skip
    print(
        f"\nrecommendation ({recommendation.get('by')}): "
        f"AUTO_MEMBER_STRATEGY[{backend!r}] = {recommendation.get('member_strategy')!r}, "
        f"AUTO_STEP_LOOP[{backend!r}] = {recommendation.get('step_loop')!r} "
        f"(best measured: {recommendation.get('best')!r}; now "
        f"{AUTO_MEMBER_STRATEGY.get(backend)!r}/{AUTO_STEP_LOOP.get(backend)!r})"
    )
    report.save()
    print(f"\nwrote {path} ({report.data['seconds']:.0f} s)")
    return 0
