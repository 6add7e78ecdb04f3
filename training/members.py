"""Ensemble members: their state, their keys and data order, and ImageNet weights for all.

Every random draw of a member is a function of (run seed, group, member index) and, for
data order and augmentation, of (fold, epoch, step): the same config gives the same numbers
whatever the member strategy, the device count or an interruption in between.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.pretrained import load_pretrained
from training.transfer import to_host


class MemberState(NamedTuple):
    """One member's trainable state (or, stacked, a group's: every leaf gets a member axis)."""

    params: Any
    batch_stats: Any
    opt_state: Any


def member_seed(run_seed: int, group: str, member: int) -> int:
    """The integer seed of one member: a stable hash of (run seed, group, member index)."""
    return zlib.crc32(f"{run_seed}/{group}/{member}".encode()) & 0x7FFFFFFF


def member_keys(
    run_seed: int, group: str, fold: int, slots: int, member_indices: Sequence[int] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Each member slot's ``(init_key, data_key)`` for one group; see :func:`slot_keys`.

    ``member_indices`` gives each slot's member index (default ``0 .. slots-1``): a sweep's
    member ``i`` at every grid point has the keys of member ``i`` of a plain run.
    """
    indices = range(slots) if member_indices is None else member_indices
    return slot_keys(run_seed, fold, [(group, m) for m in indices])


def slot_keys(
    run_seed: int, fold: int, members: Sequence[tuple[str, int]]
) -> tuple[jax.Array, jax.Array]:
    """Each slot's ``(init_key, data_key)`` from its ``(group, member index)``; the data keys
    also depend on the fold. A member's keys do not depend on the slot it sits in."""
    keys = jnp.stack([jax.random.key(member_seed(run_seed, g, m)) for g, m in members])
    init_keys, data_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    return init_keys, jax.vmap(jax.random.fold_in, in_axes=(0, None))(data_keys, fold)


@partial(jax.jit, static_argnums=3)
def epoch_randomness(
    data_keys: jax.Array, epoch: jax.Array, num_train: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
    """Each member's order of the training rows for one epoch, and its augmentation key.

    The order is a random permutation of the ``num_train`` real rows followed by the padding
    rows up to ``size``, so a fold smaller than the padded array never samples padding.
    """

    def one(key):
        order_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
        noise = jax.random.uniform(order_key, (size,))
        return jnp.argsort(jnp.where(jnp.arange(size) < num_train, noise, 2.0)), augment_key

    return jax.vmap(one)(data_keys)


def stack_members(trees: Sequence[Any]) -> Any:
    """Stacks one-member trees into a tree with a leading member axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def load_pretrained_members(
    state: MemberState,
    path: str,
    *,
    init_optimizer: Callable[[Any], Any],
    stride_placement: str | None,
    sharding: jax.sharding.Sharding | None = None,
) -> MemberState:
    """Loads the ImageNet weights into every member, keeping each member's own new head.

    The file is read once; the loader keeps the head of the variables it is given, so every
    member takes the loaded body and its own freshly initialised head. The optimizer state
    is initialised anew for the loaded parameters.
    """
    first = jax.tree.map(lambda leaf: np.asarray(leaf[0]), state)
    loaded = load_pretrained(
        path,
        {"params": first.params, "batch_stats": first.batch_stats},
        stride_placement=stride_placement,
    )
    members = jax.tree.leaves(state.params)[0].shape[0]
    stacked = jax.tree.map(lambda leaf: np.broadcast_to(leaf, (members,) + leaf.shape), loaded)
    # to_host: on a mesh over several processes no process can read the stacked heads alone.
    params = {**stacked["params"], "head": jax.tree.map(to_host, state.params["head"])}
    opt_state = jax.vmap(init_optimizer)(params)
    if hasattr(opt_state, "hyperparams"):  # each member keeps its swept hyperparameters
        opt_state = opt_state._replace(hyperparams=state.opt_state.hyperparams)
    return jax.device_put(MemberState(params, stacked["batch_stats"], opt_state), sharding)
