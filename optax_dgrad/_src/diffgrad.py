r"""diffGrad: Adam with a friction set by the change of the gradient.

Per parameter leaf, with :math:`t = 1, 2, \dots` the step count after increment:

.. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \xi_t &= \sigma(|g_{t-1} - g_t|), \qquad
    u_t = \xi_t \, \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

with :math:`g_0 = 0`, and the optimizer applies :math:`-\eta\, u_t`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_dgrad._src import tree_utils, validation


class DiffGradState(NamedTuple):
    """State of :func:`scale_by_diffgrad`.

    Attributes:
        count: number of updates done so far, int32 scalar (the step t of the next update
            is ``count + 1``); it saturates at the int32 maximum instead of overflowing.
        mu: biased first moment :math:`m_t`, a tree like the params (dtype ``mu_dtype``).
        nu: biased second moment :math:`v_t`, a tree like the params (dtype ``nu_dtype``).
        prev_grad: the gradient this transform received at the previous update (zeros
            before the first), a tree like the params, cast to their dtype.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    prev_grad: optax.Updates


def _after(g: jax.Array, u: jax.Array) -> jax.Array:
    """``g``, computed after ``u``: ``g + 0 * u``, with ``u``'s non-finite entries as 0.

    The new prev_grad is written into the buffer of the old one when the state is donated,
    and the fusion that computes the update still reads the old one. Without a data
    dependence nothing orders that read before the write, and XLA:CPU (no multi-output
    fusion) copies the old prev_grad to scratch memory on every step; with it the write
    is scheduled after the update. ``0 * u`` is not folded away for floats; masking the
    non-finite entries of ``u`` makes the result equal ``g`` everywhere (up to the sign of
    a zero), whatever ``u`` is.
    """
    u = u.astype(g.dtype)
    finite_u = jnp.where(jnp.isfinite(u), u, jnp.zeros_like(u))
    return g + jnp.zeros([], g.dtype) * finite_u


def scale_by_diffgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by diffGrad: Adam's direction times :math:`\sigma(|g_{t-1} - g_t|)`.

    The optimizer without its learning rate; see :func:`optax_dgrad.diffgrad` for the
    math and :mod:`optax_dgrad` for the interpretation choices and the references.
    :math:`g_{t-1}` is the gradient this transform received (after any transform chained
    before it, such as clipping or weight decay), :math:`g_0 = 0`.

    ``state.prev_grad`` equals the gradient received (non-finite entries included). A
    non-finite gradient entry makes that entry's moments and updates NaN from then on, as in
    Adam, and harms no other entry; :func:`optax.apply_if_finite` skips such steps.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params'
            dtype, as in :func:`optax.scale_by_adam`.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params'
            dtype. The moments are computed in the wider of the stored and the gradient's
            dtype and rounded only when stored (``bfloat16`` halves their memory).

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`DiffGradState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is not in [0, 1), ``eps`` is negative or not
            finite, or ``mu_dtype`` or ``nu_dtype`` is neither None nor a real
            floating-point dtype.
        TypeError: from ``init`` (``update``) if a parameter (gradient) leaf is not of a
            real floating-point dtype; the message names the leaf and its dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_diffgrad()
        >>> grads = jnp.array([0.0, 3.0])
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> state.prev_grad
        Array([0., 3.], dtype=float32)
    """
    validation.check_decay_rate("b1", b1)
    validation.check_decay_rate("b2", b2)
    validation.check_non_negative("eps", eps)
    mu_dtype = validation.moment_dtype("mu_dtype", mu_dtype)
    nu_dtype = validation.moment_dtype("nu_dtype", nu_dtype)

    def init_fn(params):
        validation.check_float_leaves(params, "parameter", "scale_by_diffgrad")
        return DiffGradState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params, dtype=nu_dtype),
            prev_grad=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        validation.check_float_leaves(updates, "gradient", "scale_by_diffgrad")
        count = optax.safe_increment(state.count)
        # Stored moments narrower than the gradient (mu_dtype, nu_dtype) are widened first, so
        # only storing them rounds: a bfloat16 b1 * mu would round once more every step.
        mu = optax.tree.update_moment(updates, tree_utils.widened(state.mu, updates), b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(
            updates, tree_utils.widened(state.nu, updates), b2, 2
        )
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)

        def leaf_update(g, g_prev, m, v):
            if g is None:
                return None
            xi = jax.nn.sigmoid(jnp.abs(g_prev.astype(g.dtype) - g))
            return (xi * m / (jnp.sqrt(v) + eps)).astype(g.dtype)

        new_updates = jax.tree.map(
            leaf_update, updates, state.prev_grad, mu_hat, nu_hat, is_leaf=tree_utils.is_none
        )
        prev_grad = jax.tree.map(
            lambda g, u: None if g is None else _after(g, u),
            updates, new_updates, is_leaf=tree_utils.is_none,
        )
        return new_updates, DiffGradState(
            count=count,
            mu=optax.tree.cast_like(mu, state.mu),  # mu_dtype, else the params': as stored
            nu=optax.tree.cast_like(nu, state.nu),
            prev_grad=optax.tree.cast_like(prev_grad, state.prev_grad),
        )

    return optax.GradientTransformation(init_fn, update_fn)
