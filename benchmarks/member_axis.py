"""Ways to put every group's members on one member axis, measured side by side.

Not a test: a measurement, behind the trainer's design (docs/training.md, "One member axis
for the whole run"). For the default run's network (``TrainConfig()``: resnet_tiny, 8 px,
batch 32) and members of all seven optimizers (member ``m`` uses optimizer ``m mod 7``):

- ``loop``: every member written out one after another in one program (the trainer before
  one member axis), against one member's step compiled once and called per member on the
  stacked state, in place (the trainer's ``loop`` now): compile seconds and step time.
- ``vmap``: (a) each member's optimizer chosen by its ``rule`` inside the vmapped step
  (``lax.switch`` on a batched index: every optimizer's update is computed and one kept),
  against (b) every member's forward and backward pass vmapped together, then each group's
  optimizer vmapped over its own static slice, and against one optimizer for every member
  (what neither design can beat).

Every variant is checked against the one-member program's numbers after the timed steps.

    python benchmarks/member_axis.py [--members 7 21] [--repeats 5]

(from the repository root). Writes benchmarks/results/member_axis.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.pretrained import Normalization  # noqa: E402
from rundir import write_atomically  # noqa: E402
from training import (  # noqa: E402
    OPTIMIZER_NAMES,
    ProgramSpec,
    RunPrograms,
    TrainConfig,
    resolve_placement,
    slot_keys,
)
from training.members import MemberState, epoch_randomness  # noqa: E402
from training.programs import GroupData  # noqa: E402

RESULTS_PATH = Path(__file__).parent / "results" / "member_axis.json"
CLASSES, NORMALIZATION = 10, Normalization((0.5,) * 3, (0.25,) * 3)
STEPS = 8  # steps per timing repeat: one epoch's worth of work is not needed to rank


def build(strategy: str, members: int, optimizers: tuple[str, ...]) -> RunPrograms:
    config = TrainConfig(optimizers={name: 1 for name in optimizers})
    placement = resolve_placement(strategy, "python", members, batch_size=config.batch_size)
    return RunPrograms(ProgramSpec.for_run(config, CLASSES, placement, NORMALIZATION))


def inputs(programs: RunPrograms, members: int):
    """(state, metrics, orders, keys, data) of ``members`` members of a random data set."""
    batch, size = programs.spec.batch_size, programs.spec.image_size
    rows = batch * STEPS
    rng = np.random.default_rng(0)
    data = GroupData(
        jnp.asarray(rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8)),
        jnp.asarray(rng.integers(0, CLASSES, rows).astype(np.int32)),
        jnp.asarray(rows, jnp.int32),
    )
    init_keys, data_keys = slot_keys(0, 0, [("bench", m) for m in range(members)])
    state = programs.init(init_keys)
    orders, keys = epoch_randomness(data_keys, jnp.asarray(0), data.num_train, rows)
    return state, jnp.zeros((members, 3), jnp.float32), orders, keys, data


def member_step(programs, state, metrics, order, step, key, data, rule):
    """The trainer's one-member step, from its public parts."""
    grads, batch_stats, loss, correct = programs.member_gradients(state, order, step, key, data)
    params, opt_state = programs.tx.apply(grads, state.opt_state, state.params, rule)
    return MemberState(params, batch_stats, opt_state), metrics + jnp.stack([loss, correct, 1.0])


def written_out(programs: RunPrograms):
    """Every member's step written out one after another in one program."""

    def step(state, metrics, orders, step, keys, data, rules):
        outs = [
            member_step(programs, *jax.tree.map(lambda leaf, m=m: leaf[m],
                                                (state, metrics, orders)),
                        step, keys[m], data, rules[m])
            for m in range(len(rules))
        ]  # fmt: skip
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return jax.jit(step, donate_argnums=(0, 1))


def static_slices(programs: RunPrograms, members: int):
    """Design (b): all members' gradients vmapped together, then each optimizer vmapped over
    its members (``m mod 7``: a strided slice, the same work as a contiguous one)."""
    names = programs.spec.optimizers

    def step(state, metrics, orders, step, keys, data, rules):
        grads, batch_stats, loss, correct = jax.vmap(
            programs.member_gradients, in_axes=(0, 0, None, 0, None)
        )(state, orders, step, keys, data)
        params, opt_state = state.params, state.opt_state
        for index in range(len(names)):
            rows = np.arange(index, members, len(names))
            if not len(rows):
                continue
            part = lambda tree, rows=rows: jax.tree.map(lambda leaf: leaf[rows], tree)  # noqa: E731
            new_params, new_opt = jax.vmap(programs.tx.apply, in_axes=(0, 0, 0, None))(
                part(grads), part(opt_state), part(params), jnp.int32(index)
            )
            put = lambda whole, new, rows=rows: whole.at[rows].set(new)  # noqa: E731
            params = jax.tree.map(put, params, new_params)
            opt_state = jax.tree.map(put, opt_state, new_opt)
        metrics = metrics + jnp.stack([loss, correct, jnp.ones_like(loss)], axis=1)
        return MemberState(params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=(0, 1))


def lower_whole(program):
    """Compiles a whole-axis step program for the given inputs."""
    return lambda s, m, o, k, d, r: program.lower(s, m, o, jnp.int32(0), k, d, r).compile()


def run_whole(compiled, state, metrics, orders, step, keys, data, rules):
    return compiled(state, metrics, orders, jnp.int32(step), keys, data, rules)


def lower_chunked(programs: RunPrograms):
    """Compiles the trainer's chunk program (chunk 1 under loop) for the given inputs."""
    return lambda s, m, o, k, d, r: programs.step_program.lower(
        s, m, o, jnp.int32(0), k, d, r, jnp.int32(0)
    ).compile()


def run_chunked(programs: RunPrograms):
    """One step of every member: the chunk program called for each chunk, as the trainer."""
    return lambda c, s, m, o, i, k, d, r: programs.run_chunks(c, s, m, o, jnp.int32(i), k, d, r)


def measure(name, programs, run, lower, members, repeats, rules):
    """Compiles (``lower``), then times ``run`` over STEPS steps, ``repeats`` times."""
    state, metrics, orders, keys, data = inputs(programs, members)
    started = time.perf_counter()
    compiled = lower(state, metrics, orders, keys, data, rules)
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        state, metrics, orders, keys, data = inputs(programs, members)
        jax.block_until_ready(state)
        started = time.perf_counter()
        for step in range(STEPS):
            state, metrics = run(compiled, state, metrics, orders, step, keys, data, rules)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - started) / STEPS)
    return dict(variant=name, members=members, compile_s=compile_s,
                step_ms=1e3 * statistics.median(times),
                losses=np.asarray(metrics[:, 0]).tolist())  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[7, 21])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    rows = []
    print("| variant | N | compile s | step ms | losses vs one-member program |")
    print("|---|---|---|---|---|")
    for members in args.members:
        loop = build("loop", members, OPTIMIZER_NAMES)
        vmap = build("vmap", members, OPTIMIZER_NAMES)
        rules = loop.rules([OPTIMIZER_NAMES[m % 7] for m in range(members)])
        one_rule_vmap = build("vmap", members, ("dgrad",))
        whole, chunked = (lower_whole, run_whole), (lower_chunked(loop), run_chunked(loop))
        variants = [
            ("loop: one-member program per member", loop, chunked),
            ("loop: members written out in one program", loop, whole, written_out(loop)),
            ("vmap (a): rule per member, lax.switch", vmap, whole, vmap.step_program),
            ("vmap (b): static slice per optimizer", vmap, whole, static_slices(vmap, members)),
            ("vmap: one optimizer (DGrad) for all", one_rule_vmap, whole,
             one_rule_vmap.step_program),
        ]  # fmt: skip
        reference = None
        for name, programs, (lower, run), *program in variants:
            lower = lower(*program) if program else lower
            member_rules = rules if programs is not one_rule_vmap else jnp.zeros(members, jnp.int32)
            row = measure(name, programs, run, lower, members, args.repeats, member_rules)
            if reference is None:
                reference = np.array(row["losses"])
            comparable = programs is not one_rule_vmap
            row["loss_difference"] = (
                float(np.max(np.abs(np.array(row["losses"]) - reference))) if comparable else None
            )
            rows.append(row)
            difference = "-" if row["loss_difference"] is None else f"{row['loss_difference']:.1e}"
            print(f"| {name} | {members} | {row['compile_s']:.1f} | {row['step_ms']:.1f} | "
                  f"{difference} |", flush=True)  # fmt: skip
    result = dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), backend=jax.default_backend(),
                     load_average=os.getloadavg()),
        jax=jax.__version__, config=dataclasses.asdict(TrainConfig()) | {"optimizers": "all 7"},
        steps_per_repeat=STEPS, repeats=args.repeats, rows=rows,
    )  # fmt: skip
    write_atomically(args.output, json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
