"""Tree helpers shared by the optimizers' updates (no public names)."""

import jax
import jax.numpy as jnp


def is_none(leaf) -> bool:
    """A gradient leaf that is None (a masked-out parameter): the moments skip it."""
    return leaf is None


def widened(moments, updates):
    """``moments`` in the wider of their dtype and the gradient's (no-op where they agree)."""
    return jax.tree.map(
        lambda m, g: None if g is None else m.astype(jnp.promote_types(m.dtype, g.dtype)),
        moments, updates, is_leaf=is_none,
    )  # fmt: skip
