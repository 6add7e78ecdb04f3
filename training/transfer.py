"""Arrays between the host and the devices, across processes: what every process supplies,
what each keeps, and what each reads back.

In a ``jax.distributed`` run every process computes the same host values (the trainer
derives them from the same keys), puts its devices' share on them, and gathers results
back to every host. Alone, these are plain ``device_put`` and ``np.asarray``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from training.placement import MEMBER_AXIS


def replicate(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """Puts a host array on every device of ``mesh`` (every process supplies the same array)."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def shard_members(tree: Any, mesh: Mesh | None) -> Any:
    """Splits the leading member axis of every leaf over ``mesh``'s member axis.

    Every process supplies the same values (the trainer derives them from the same keys), and
    each keeps the members of its own devices. Without a mesh the tree is returned as it is.
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P(MEMBER_AXIS))

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(array: jax.Array) -> np.ndarray:
    """A (possibly multi-process) array as one NumPy array on every host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def sync_processes(name: str) -> None:
    """Waits until every process of a ``jax.distributed`` run has got here (no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
