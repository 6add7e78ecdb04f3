r"""Cos#1 and Cos#2: DGrad with a cyclic, damped friction.

Both keep DGrad's normalised difference :math:`\hat D_t = D_t / \max(D_t)`,
:math:`D_t = |g_t - v_t|` (see :mod:`optax_dgrad._src.dgrad`), and change the friction:

.. math::

    \text{Cos\#1:}\quad \xi_t &= \sigma(4 c_t \hat D_t) \\
    \text{Cos\#2:}\quad \xi_t &= \sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5

with :math:`c_t` and :math:`a_t` the cyclic factors of :mod:`optax_dgrad._src.cyclic`.
"""

from collections.abc import Callable

import jax
import optax

from optax_dgrad._src import cyclic, dgrad, validation


def scale_by_cos1(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    period: int = 30,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by Cos#1: Adam's direction times :math:`\sigma(4 c_t \hat D_t)`.

    The optimizer without its learning rate; see :func:`optax_dgrad.cos1` for the math
    and :mod:`optax_dgrad` for the interpretation choices, the handling of non-finite
    gradients (a non-finite entry harms only itself; :func:`optax.apply_if_finite` skips
    such steps) and the references.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factor, a whole number >= 1.
        normalization: ``"leaf"`` (default) takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params'
            dtype. The moments are computed in the wider of the stored and the gradient's
            dtype and rounded only when stored (``bfloat16`` halves their memory).

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`optax.ScaleByAdamState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is not in [0, 1), ``eps`` is negative or not
            finite, ``period`` is not a whole number >= 1, ``normalization`` is not
            ``"leaf"`` or ``"tree"``, or ``mu_dtype`` or ``nu_dtype`` is neither None nor
            a real floating-point dtype.
        TypeError: from ``init`` (``update``) if a parameter (gradient) leaf is not of a
            real floating-point dtype; the message names the leaf and its dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_cos1(period=30)
        >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> direction["w"].shape
        (2,)
    """
    validation.check_period(period)

    def friction_for_step(count: jax.Array) -> Callable[[jax.Array], jax.Array]:
        coefficient = cyclic.cos1_coefficient(count, period)

        def friction(normalized_difference):
            scale = 4 * coefficient.astype(normalized_difference.dtype)
            return jax.nn.sigmoid(scale * normalized_difference)

        return friction

    return dgrad.scale_by_normalized_difference(
        friction_for_step, b1, b2, eps, mu_dtype, normalization, name="scale_by_cos1",
        nu_dtype=nu_dtype,
    )


def scale_by_cos2(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    period: int = 30,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by Cos#2: Adam's direction times
    :math:`\sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5`.

    The optimizer without its learning rate; see :func:`optax_dgrad.cos2` for the math
    and :mod:`optax_dgrad` for the interpretation choices, the handling of non-finite
    gradients (a non-finite entry harms only itself; :func:`optax.apply_if_finite` skips
    such steps) and the references.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factors, a whole number >= 1.
        normalization: ``"leaf"`` (default) takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params'
            dtype. The moments are computed in the wider of the stored and the gradient's
            dtype and rounded only when stored (``bfloat16`` halves their memory).

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`optax.ScaleByAdamState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is not in [0, 1), ``eps`` is negative or not
            finite, ``period`` is not a whole number >= 1, ``normalization`` is not
            ``"leaf"`` or ``"tree"``, or ``mu_dtype`` or ``nu_dtype`` is neither None nor
            a real floating-point dtype.
        TypeError: from ``init`` (``update``) if a parameter (gradient) leaf is not of a
            real floating-point dtype; the message names the leaf and its dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_cos2(period=30)
        >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> direction["b"].dtype
        dtype('float32')
    """
    validation.check_period(period)

    def friction_for_step(count: jax.Array) -> Callable[[jax.Array], jax.Array]:
        scale = 2 * cyclic.cos1_coefficient(count, period)
        offset = jax.nn.sigmoid(4 * cyclic.cos2_coefficient(count, period)) - 0.5

        def friction(normalized_difference):
            dtype = normalized_difference.dtype
            return jax.nn.sigmoid(scale.astype(dtype) * normalized_difference) + offset.astype(
                dtype
            )

        return friction

    return dgrad.scale_by_normalized_difference(
        friction_for_step, b1, b2, eps, mu_dtype, normalization, name="scale_by_cos2",
        nu_dtype=nu_dtype,
    )
