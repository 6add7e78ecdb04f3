r"""diffGrad: Adam with a friction set by the change of the gradient (Dubey et al. 2019).

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

from optax_dgrad._src import validation


class DiffGradState(NamedTuple):
    """State of :func:`scale_by_diffgrad`.

    Attributes:
        count: number of updates done so far, int32 scalar (the step t of the next update
            is ``count + 1``); it saturates at the int32 maximum instead of overflowing.
        mu: biased first moment :math:`m_t`, a tree like the params (dtype ``mu_dtype``).
        nu: biased second moment :math:`v_t`, a tree like the params.
        prev_grad: the gradient this transform received at the previous update (zeros
            before the first), a tree like the params. A copy of the value: implementations
            that kept a reference to the gradient buffer saw it overwritten in place, so
            their friction was always :math:`\\sigma(0) = 0.5`.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    prev_grad: optax.Updates


def _is_none(leaf) -> bool:
    return leaf is None


def scale_by_diffgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by diffGrad (Dubey et al. 2019; Nanni et al. 2021, equation 10).

    Adam's bias-corrected direction times the friction
    :math:`\xi_t = \sigma(|g_{t-1} - g_t|)`, elementwise, with :math:`g_0 = 0`:

    .. math::

        u_t = \sigma(|g_{t-1} - g_t|) \;
              \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    So the first update's friction is :math:`\sigma(|g_1|)`. :math:`g_{t-1}` is the
    gradient this transform received (after any transform chained before it, such as
    clipping or weight decay).

    Where the paper is ambiguous, we chose: its equation 10 prints :math:`m_t` without a
    hat; we use the bias-corrected :math:`\hat m_t`, as diffGrad's reference code and
    MATLAB's ``adamupdate`` do (the paper's code is MATLAB).

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params'
            dtype, as in :func:`optax.scale_by_adam`.

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`DiffGradState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is outside [0, 1) or ``eps`` is negative.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_diffgrad()
        >>> grads = jnp.array([0.0, 3.0])
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> state.prev_grad
        Array([0., 3.], dtype=float32)

    References:
        Dubey et al., `diffGrad: An Optimization Method for Convolutional Neural
        Networks <https://arxiv.org/abs/1909.11015>`_, 2019.

        Nanni, Maguolo & Lumini, `Exploiting Adam-like Optimization Algorithms to Improve
        the Performance of Convolutional Neural Networks <https://arxiv.org/abs/2103.14689>`_,
        2021.
    """
    validation.check_decay_rate("b1", b1)
    validation.check_decay_rate("b2", b2)
    validation.check_non_negative("eps", eps)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def init_fn(params):
        return DiffGradState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params),
            prev_grad=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)

        def leaf_update(g, g_prev, m, v):
            if g is None:
                return None
            xi = jax.nn.sigmoid(jnp.abs(g_prev.astype(g.dtype) - g))
            return (xi * m / (jnp.sqrt(v) + eps)).astype(g.dtype)

        new_updates = jax.tree.map(
            leaf_update, updates, state.prev_grad, mu_hat, nu_hat, is_leaf=_is_none
        )
        return new_updates, DiffGradState(
            count=count,
            mu=optax.tree.cast(mu, mu_dtype),
            nu=optax.tree.cast_like(nu, state.nu),
            prev_grad=optax.tree.cast_like(updates, state.prev_grad),
        )

    return optax.GradientTransformation(init_fn, update_fn)
