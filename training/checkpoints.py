"""Orbax checkpoints of a fold: every member's state, divergence and log rows, checked.

A checkpoint carries a checksum of the member states and the log rows up to its epoch; one
that cannot be restored or does not match its checksum is reported, moved aside
(``rundir.set_aside_dir``) and kept, and the fold trains again from an earlier checkpoint
or from scratch, which gives the same numbers (every random draw is a function of the
seed, group, member, fold, epoch and step). A fold's checkpoint holds every member of the
groups it trains (one member axis); one written with another number of padding slots
(another ``--mesh``), or holding more groups than are left to train, restores the members
asked for.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from training.transfer import sync_processes, to_host


class CheckpointPolicy(NamedTuple):
    """When a fold saves a checkpoint.

    Attributes:
      every: epochs between saves (and after the last), 0 for none; None: by time.
      minutes: by time, save once this many minutes have passed since the last save.
      keep: the fold's checkpoints outlive its score files (so by time, the last epoch is
        saved too).
    """

    every: int | None
    minutes: float
    keep: bool

    def due(self, epoch: int, epochs: int, seconds_since_save: float) -> bool:
        """Whether to save after ``epoch`` (0-based) of ``epochs``. Every process takes
        process 0's answer: an orbax save is a collective."""
        last = epoch + 1 == epochs
        if self.every is not None:
            due = self.every > 0 and ((epoch + 1) % self.every == 0 or last)
        else:
            # Saving every epoch cost a third of `python train.py` (59 s against 40 s,
            # measured); a checkpoint only saves the work since the previous one.
            due = seconds_since_save >= 60 * self.minutes or (last and self.keep)
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
        return due


def _out_of_memory(error: BaseException) -> bool:
    """Host or device memory ran out (XLA says RESOURCE_EXHAUSTED)."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


@jax.jit
def state_checksum(tree: Any) -> jax.Array:
    """Two position-weighted uint32 sums of the bits of every leaf: ``[leaves, 2]``.

    Computed where the state lives (sharded states included), so checking a checkpoint costs
    one pass over it on the device and no host copy; any change of a stored bit changes it.
    """

    def leaf_sums(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.dtype.itemsize == 4:
            bits = jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()
        else:
            bits = leaf.astype(jnp.uint32).ravel()  # bool, int8/16, bfloat16 counters
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
        return jnp.stack([bits.sum(dtype=jnp.uint32), (bits * weights).sum(dtype=jnp.uint32)])

    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([leaf_sums(leaf) for leaf in leaves])


Layout = Sequence[tuple[str, int]]  # (group, members) in member-axis order


class FoldCheckpoints:
    """Orbax checkpoints of one fold: the member states, divergence and log rows."""

    def __init__(self, directory: str, set_aside: str):
        self.directory = directory
        self.set_aside = set_aside
        self._manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    def save(
        self,
        epoch: int,
        state: Any,
        diverged: np.ndarray,
        layout: Layout,
        log_rows: dict[str, list[dict]],
    ) -> None:
        """Saves the state of every slot after ``epoch`` epochs (asynchronously)."""
        checksum = to_host(state_checksum(state)).tolist()
        meta = {"checksum": checksum, "log_rows": log_rows, "slots": len(diverged),
                "groups": [list(entry) for entry in layout]}  # fmt: skip
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"state": state, "diverged": diverged}),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore_latest(
        self,
        template: Any,
        diverged: np.ndarray,
        layout: Layout,
        place: Callable[[Any], Any],
        warn: Callable[[str], None],
    ) -> tuple[int, Any, np.ndarray, dict[str, list[dict]]] | None:
        """The newest checkpoint that restores and matches its checksum, or None.

        ``template`` is the fold's initial state of every slot, its members the groups of
        ``layout``. A checkpoint of the same layout and slot count restores as it is; one of
        another (another mesh's padding, more groups than are left to train) is read to the
        host, and each group of ``layout`` takes its members from it and the padding slots
        from ``template``; ``place`` lays the combined host arrays out as ``template`` is. A
        checkpoint that fails is reported through ``warn``, moved to ``set_aside`` and kept,
        and the next older one is tried. Running out of memory is not the checkpoint's fault:
        it raises ``MemoryError`` and moves nothing.
        """
        for epoch in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self._restore(epoch, template, diverged, layout, place)
            except Exception as error:  # orbax raises many types for a damaged checkpoint
                if _out_of_memory(error):  # the machine's problem, not the checkpoint's
                    raise MemoryError(
                        f"not enough memory to restore checkpoint "
                        f"{os.path.join(self.directory, str(epoch))} (kept as it is): {error}"
                    ) from error
                self._set_aside(epoch, error, warn)
        return None

    def _restore(self, epoch, template, diverged, layout, place):
        only_meta = ocp.args.Composite(meta=ocp.args.JsonRestore())
        meta = self._manager.restore(epoch, args=only_meta)["meta"]
        stored_slots = meta["slots"]
        stored_layout = [tuple(entry) for entry in meta["groups"]]
        offsets = np.cumsum([0] + [n for _, n in stored_layout[:-1]]).tolist()
        starts = {g: int(start) for (g, _), start in zip(stored_layout, offsets, strict=True)}
        sizes = dict(stored_layout)
        for group, members in layout:
            if sizes.get(group) != members:
                raise ValueError(
                    f"it holds groups {stored_layout}; this fold trains {list(layout)}"
                )
        slots = len(diverged)
        same = stored_layout == [tuple(entry) for entry in layout] and stored_slots == slots
        if same:
            stored_template, stored_diverged = template, diverged
        else:  # read it to the host and take the members asked for
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            stored_template = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(
                    (stored_slots, *leaf.shape[1:]), leaf.dtype, sharding=device
                ),
                template,
            )
            stored_diverged = np.zeros(stored_slots, bool)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(
                    {"state": stored_template, "diverged": stored_diverged}
                ),
            ),
        )
        state = restored["state"]["state"]
        if to_host(state_checksum(state)).tolist() != meta["checksum"]:
            raise ValueError("its content does not match the checksum saved with it")
        restored_diverged = np.asarray(restored["state"]["diverged"])
        if not same:
            rows = np.concatenate([np.arange(starts[g], starts[g] + n) for g, n in layout])
            members = len(rows)
            padding = jax.tree.map(lambda leaf: to_host(leaf)[members:], template)
            state = place(
                jax.tree.map(
                    lambda leaf, pad: np.concatenate([np.asarray(leaf)[rows], pad]),
                    state,
                    padding,
                )
            )
            restored_diverged = np.concatenate(
                [restored_diverged[rows], np.zeros(slots - members, bool)]
            )
        log_rows = {group: meta["log_rows"][group] for group, _ in layout}
        return epoch, state, restored_diverged, log_rows

    def _set_aside(self, epoch: int, error: Exception, warn: Callable[[str], None]) -> None:
        path = os.path.join(self.directory, str(epoch))
        target = os.path.join(self.set_aside, f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}")
        problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if jax.process_index() == 0:
            os.makedirs(self.set_aside, exist_ok=True)
            shutil.move(path, target)
        sync_processes(f"checkpoint {path} set aside")
        self._manager.reload()
        warn(
            f"warning: checkpoint {path} cannot be used ({type(error).__name__}: "
            f"{problem[:200]}); it is moved to {target} and kept, and the fold trains again "
            "from an earlier point"
        )

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
