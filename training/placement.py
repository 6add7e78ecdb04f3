"""Where a group's members run: the member strategy, the step loop, the device mesh.

``auto`` resolves per backend from measurements (``benchmarks/trainer.py``; the numbers are
in ``docs/performance.md``). On XLA:CPU a vmapped convolution runs as a slow grouped
convolution (E(N) 0.17-0.27 against 0.94-1.17 for members written out one after another),
and a train step inside a ``lax.scan`` without unrolling hits a slow weight-gradient layout
(jax-ml/jax#12868, 20x). The GPU and TPU entries are not measured yet: they are defaults
until ``python benchmarks/trainer.py --suite gpu`` has run on such a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AUTO_MEMBER_STRATEGY = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}  # gpu, tpu: unmeasured
AUTO_STEP_LOOP = {"cpu": "python", "gpu": "python", "tpu": "python"}  # gpu, tpu: unmeasured
MEMBER_AXIS = "members"


class Placement(NamedTuple):
    """How one group's members are laid out.

    Attributes:
      strategy: "vmap", "loop" or "sharded" (``auto`` resolved).
      inner_strategy: how the members one device holds share its program ("vmap" or
        "loop"; the strategy itself unless it is "sharded").
      step_loop: "python" or "scan" (``auto`` resolved).
      mesh: the 1-D member mesh of the "sharded" strategy, else None.
      slots: member slots the programs run; more than the members when the members do not
        divide the mesh (the extra slots train padding members whose scores are dropped).
    """

    strategy: str
    inner_strategy: str
    step_loop: str
    mesh: Mesh | None
    slots: int

    @property
    def member_sharding(self) -> NamedSharding | None:
        """The sharding of a stacked member state (None on one device)."""
        return NamedSharding(self.mesh, P(MEMBER_AXIS)) if self.mesh is not None else None


def resolve_placement(
    strategy: str,
    step_loop: str,
    members: int,
    devices: Sequence[jax.Device] | None = None,
) -> Placement:
    """Resolves ``auto`` for the current backend and lays ``members`` out on ``devices``.

    Args:
      strategy: "auto", "vmap", "loop" or "sharded".
      step_loop: "auto", "python" or "scan".
      members: the group's member count.
      devices: the devices of the "sharded" strategy (default: every device of every
        process). In one process a group smaller than the device count uses one device per
        member, so no device trains padding; across processes every device takes part, so
        that each process holds its share of the members.
    """
    backend = jax.default_backend()
    devices = list(jax.devices() if devices is None else devices)
    if strategy == "auto":
        strategy = (
            "sharded"
            if len(devices) > 1 and members > 1
            else AUTO_MEMBER_STRATEGY.get(backend, "loop")
        )
    if step_loop == "auto":
        step_loop = AUTO_STEP_LOOP.get(backend, "python")
    if strategy != "sharded":
        return Placement(strategy, strategy, step_loop, None, members)
    if jax.process_count() == 1:
        devices = devices[:members]
    mesh = Mesh(np.array(devices), (MEMBER_AXIS,))
    slots = -(-members // mesh.size) * mesh.size  # every device trains as many members
    inner = AUTO_MEMBER_STRATEGY.get(backend, "loop")
    return Placement(strategy, inner, step_loop, mesh, slots)


def describe_placement(placement: Placement, requested: str, requested_loop: str) -> str:
    """The strategy line a run prints, e.g. ``member strategy: loop, step loop: python ...``."""
    where = f" over {placement.mesh.size} devices" if placement.mesh is not None else ""
    return (
        f"member strategy: {placement.strategy}{where}, step loop: {placement.step_loop} "
        f"(backend {jax.default_backend()}; requested {requested}/{requested_loop})"
    )


def replicate(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """Puts a host array on every device of ``mesh`` (every process supplies the same array)."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(array: jax.Array) -> np.ndarray:
    """A (possibly multi-process) array as one NumPy array on every host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def sync_processes(name: str) -> None:
    """Waits until every process of a ``jax.distributed`` run has got here (no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
