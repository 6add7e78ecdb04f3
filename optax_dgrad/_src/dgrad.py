r"""DGrad: Adam with a friction set by the normalised gradient/variance difference.

Per parameter leaf, with :math:`t = 1, 2, \dots` the step count after increment:

.. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    D_t &= |g_t - v_t|, \qquad
    \hat D_t = D_t / \max(D_t) \quad (\hat D_t = 0 \text{ where } \max(D_t) = 0) \\
    u_t &= \xi_t(\hat D_t) \, \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)}
           + \epsilon}

with :math:`\xi_t = \sigma(4 \hat D_t)` for DGrad. Cos#1 and Cos#2
(:mod:`optax_dgrad._src.cosine`) change only :math:`\xi_t`; this module holds the machinery
the three share. The max is taken over the finite entries of :math:`D_t`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from optax_dgrad._src import tree_utils, validation

#: Maps the step count t (after increment) to an elementwise friction of the normalised
#: difference. Called once per update, so per-step scalars are computed once, not per leaf.
FrictionForStep = Callable[[jax.Array], Callable[[jax.Array], jax.Array]]

#: The state of DGrad, Cos#1 and Cos#2 is Adam's (``count``, ``mu``, ``nu``): the friction
#: is computed from the current gradient and second moment, so nothing more is stored, and
#: optax tooling that knows :class:`optax.ScaleByAdamState` reads it as Adam's.
DGradState = optax.ScaleByAdamState


def _max_of_abs_difference(accumulated, element):
    # Reducer of _leaf_max_abs_difference. A pair (a, b) stands for |a - b|; partial maxima
    # m are carried as (m, 0), and |m - 0| = m exactly since m >= 0. So the reducer is the
    # max over the pairs' |a - b| whatever order XLA combines them in.
    (a1, b1), (a2, b2) = accumulated, element
    return jnp.maximum(jnp.abs(a1 - b1), jnp.abs(a2 - b2)), jnp.zeros_like(b1)


def _leaf_max_abs_difference(g: jax.Array, v: jax.Array) -> jax.Array:
    """max |g - v| over the leaf's finite entries (0 if none), without storing |g - v|.

    ``jnp.max(jnp.abs(g - v))`` (with the non-finite entries masked) is the same number,
    but XLA:CPU does not fuse the elementwise difference into that reduction: it writes
    |g - v| of every leaf to scratch memory and reads it back. A two-operand reduction
    over (g, v) reads them directly. Entries where g - v is not finite enter it as (0, 0):
    that mask fuses into the reduction's operands and costs nothing measurable against
    the plain max, where a mask inside the reducer made the step ~30% slower and a plain
    max with the masked one under ``lax.cond`` 5-13% slower (a select computing both
    under ``vmap``); docs/optimizers.md has the measurements.
    """
    dtype = jnp.result_type(g, v)
    g, v = g.astype(dtype), v.astype(dtype)
    finite = jnp.isfinite(g - v)
    zero = jnp.zeros([], dtype)
    a, b = jax.lax.reduce(
        (jnp.where(finite, g, zero), jnp.where(finite, v, zero)), (zero, zero),
        _max_of_abs_difference, tuple(range(g.ndim)),
    )
    # (a, b) is (max, 0), except for a 0-d leaf: reducing over no axis returns the operands.
    return jnp.abs(a - b)


def scale_by_normalized_difference(
    friction_for_step: FrictionForStep,
    b1: float,
    b2: float,
    eps: float,
    mu_dtype: jax.typing.DTypeLike | None,
    normalization: str,
    name: str = "scale_by_normalized_difference",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Adam scaled elementwise by :math:`\xi_t = f_t(\hat D_t)` (DGrad, Cos#1, Cos#2).

    Args:
        friction_for_step: maps the step :math:`t` to :math:`f_t`, the friction as an
            elementwise function of the normalised difference :math:`\hat D_t \in [0, 1]`.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None keeps the params' dtype.
        normalization: ``"leaf"`` takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.
        name: the transform's name in error messages.
        nu_dtype: dtype of the stored second moment; None keeps the params' dtype.

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`optax.ScaleByAdamState`.
    """
    validation.check_decay_rate("b1", b1)
    validation.check_decay_rate("b2", b2)
    validation.check_non_negative("eps", eps)
    validation.check_normalization(normalization)
    mu_dtype = validation.moment_dtype("mu_dtype", mu_dtype)
    nu_dtype = validation.moment_dtype("nu_dtype", nu_dtype)

    def init_fn(params):
        validation.check_float_leaves(params, "parameter", name)
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        validation.check_float_leaves(updates, "gradient", name)
        count = optax.safe_increment(state.count)
        # Stored moments narrower than the gradient (mu_dtype, nu_dtype) are widened first, so
        # only storing them rounds: a bfloat16 b1 * mu would round once more every step.
        mu = optax.tree.update_moment(updates, tree_utils.widened(state.mu, updates), b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(
            updates, tree_utils.widened(state.nu, updates), b2, 2
        )
        # D_t = |g - v_t| is recomputed where it is used instead of stored: see
        # _leaf_max_abs_difference.
        max_difference = jax.tree.map(
            lambda g, v: None if g is None else _leaf_max_abs_difference(g, v),
            updates, nu, is_leaf=tree_utils.is_none,
        )
        if normalization == "tree":
            # Leaf maxima are >= 0 (0 for an empty leaf); optax.tree.max starts at -inf.
            tree_max = jnp.maximum(optax.tree.max(max_difference), 0)
            max_difference = jax.tree.map(lambda _: tree_max, max_difference)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        friction = friction_for_step(count)

        def leaf_update(g, d_max, v_t, m, v):
            if g is None:
                return None
            d = jnp.abs(g - v_t)
            # One reciprocal per leaf, then a multiply per element; 0 where max(D) == 0.
            # In float32 for float16, whose range cannot hold 1 / max(D) below 1.5e-5.
            d_max = d_max.astype(jnp.float32 if d.dtype == jnp.float16 else d.dtype)
            inverse_max = jnp.where(d_max > 0, 1 / d_max, 0)
            xi = friction(d * inverse_max)
            return (xi * m / (jnp.sqrt(v) + eps)).astype(g.dtype)

        updates = jax.tree.map(
            leaf_update, updates, max_difference, nu, mu_hat, nu_hat, is_leaf=tree_utils.is_none
        )
        return updates, optax.ScaleByAdamState(
            count=count,
            mu=optax.tree.cast_like(mu, state.mu),  # mu_dtype, else the params': as stored
            nu=optax.tree.cast_like(nu, state.nu),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def _dgrad_friction(count: jax.Array) -> Callable[[jax.Array], jax.Array]:
    del count  # DGrad's friction does not depend on the step.
    return lambda normalized_difference: jax.nn.sigmoid(4 * normalized_difference)


def scale_by_dgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by DGrad: Adam's direction times :math:`\sigma(4 \hat D_t)`.

    The optimizer without its learning rate; see :func:`optax_dgrad.dgrad` for the math
    and :mod:`optax_dgrad` for the interpretation choices, the handling of non-finite
    gradients (a non-finite entry harms only itself; :func:`optax.apply_if_finite` skips
    such steps) and the references.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params'
            dtype, as in :func:`optax.scale_by_adam`.
        normalization: ``"leaf"`` (default) takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params'
            dtype. The moments are computed in the wider of the stored and the gradient's
            dtype and rounded only when stored (``bfloat16`` halves their memory).

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`optax.ScaleByAdamState`
        (exported as :data:`optax_dgrad.DGradState` too).

    Raises:
        ValueError: if ``b1`` or ``b2`` is not in [0, 1), ``eps`` is negative or not
            finite, ``normalization`` is not ``"leaf"`` or ``"tree"``, or ``mu_dtype``
            or ``nu_dtype`` is neither None nor a real floating-point dtype.
        TypeError: from ``init`` (``update``) if a parameter (gradient) leaf is not of a
            real floating-point dtype; the message names the leaf and its dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_dgrad()
        >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> int(state.count)
        1
    """
    return scale_by_normalized_difference(
        _dgrad_friction, b1, b2, eps, mu_dtype, normalization, name="scale_by_dgrad",
        nu_dtype=nu_dtype,
    )
