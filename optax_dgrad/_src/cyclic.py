r"""The cyclic factors of Cos#1 and Cos#2 (equations 15 and 17 of the paper).

With period :math:`P` (30 in the paper) and step :math:`t = 1, 2, \dots`:

.. math::

    r_t = \left|\cos\left(\frac{\pi t}{P}\right)\right| \, e^{-0.01\,(\operatorname{mod}(t, P) + 1)}

Cos#1 scales the normalised gradient difference by :math:`c_t = 2 - r_t` (equation 15) and
Cos#2 adds the term :math:`\sigma(4 a_t)` with :math:`a_t = r_t` (equation 17). Where
:math:`r_t` is numerically zero (:math:`|r_t| < 10^{-6}`, which happens where
:math:`\operatorname{mod}(t, P) = P/2`) the paper replaces it by :math:`9 \cdot 10^{-4}`;
:math:`c_t` always uses the raw :math:`r_t` (see :mod:`optax_dgrad`).

All three functions are pure, jit-able and vectorised over arrays of steps.
"""

import jax
import jax.numpy as jnp

from optax_dgrad._src import validation

#: Below this magnitude the paper treats :math:`r_t` as zero (equation 17).
ZERO_DECAY_THRESHOLD = 1e-6
#: The value the paper uses for :math:`a_t` where :math:`r_t` is zero (equation 17).
ZERO_DECAY_REPLACEMENT = 9e-4


def cyclic_decay(step: jax.typing.ArrayLike, period: jax.typing.ArrayLike = 30) -> jax.Array:
    r"""The damped cosine :math:`r_t` shared by equations 15 and 17 of the paper.

    .. math::

        r_t = \left|\cos\left(\frac{\pi t}{P}\right)\right|
              \, e^{-0.01\,(\operatorname{mod}(t, P) + 1)}

    :math:`|\cos(\pi t / P)|` has period :math:`P` in :math:`t`, so it is evaluated at
    :math:`\operatorname{mod}(t, P)`: the same value, without the loss of precision of a
    large cosine argument at large step counts.

    Args:
        step: the step :math:`t` (1 for the first update), an integer or an array of them.
        period: the period :math:`P` of the cycle, a whole number >= 1 (30 in the paper).

    Returns:
        :math:`r_t` in the default floating dtype (float32, or float64 under
        ``jax_enable_x64``), with the shape of ``step``.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> r = optax_dgrad.cyclic_decay(jnp.arange(1, 61), period=30)
        >>> r.shape
        (60,)
        >>> bool(abs(r[14]) < 1e-6)  # t = 15 = P / 2: cos(pi / 2) = 0
        True

    """
    validation.check_period(period)
    step = jnp.asarray(step)
    phase = jnp.mod(step, period).astype(jnp.result_type(float))
    return jnp.abs(jnp.cos(jnp.pi * phase / period)) * jnp.exp(-0.01 * (phase + 1))


def cos1_coefficient(
    step: jax.typing.ArrayLike, period: jax.typing.ArrayLike = 30
) -> jax.Array:
    r"""Cos#1's factor :math:`c_t = 2 - r_t` (equation 15 of the paper).

    Cos#1's friction is :math:`\sigma(4 c_t \hat D)`. As printed, equation 15 is never zero
    (:math:`1 \le c_t \le 2`), so the paper's :math:`9 \cdot 10^{-4}` replacement of a zero
    factor never acts here: :math:`c_t` always uses the raw :math:`r_t`.

    Args:
        step: the step :math:`t` (1 for the first update), an integer or an array of them.
        period: the period :math:`P` of the cycle, a whole number >= 1 (30 in the paper).

    Returns:
        :math:`c_t` in the default floating dtype, with the shape of ``step``.

    Example:
        >>> import optax_dgrad
        >>> c = optax_dgrad.cos1_coefficient(15, period=30)  # r_15 = 0 here
        >>> round(float(c), 6)
        2.0

    """
    return 2.0 - cyclic_decay(step, period)


def cos2_coefficient(
    step: jax.typing.ArrayLike, period: jax.typing.ArrayLike = 30
) -> jax.Array:
    r"""Cos#2's factor :math:`a_t` (equation 17 of the paper).

    .. math::

        a_t = \begin{cases} 9 \cdot 10^{-4} & |r_t| < 10^{-6} \\ r_t & \text{otherwise}
        \end{cases}

    Cos#2's friction is :math:`\sigma(2 c_t \hat D) + \sigma(4 a_t) - 0.5`. The paper
    replaces a zero factor by :math:`9 \cdot 10^{-4}`; :math:`r_t` is zero exactly where
    :math:`\operatorname{mod}(t, P) = P / 2` (even :math:`P`), and numerically there
    :math:`|r_t|` is at rounding level, hence the threshold :math:`10^{-6}`.

    Args:
        step: the step :math:`t` (1 for the first update), an integer or an array of them.
        period: the period :math:`P` of the cycle, a whole number >= 1 (30 in the paper).

    Returns:
        :math:`a_t` in the default floating dtype, with the shape of ``step``.

    Example:
        >>> import optax_dgrad
        >>> round(float(optax_dgrad.cos2_coefficient(15, period=30)), 6)
        0.0009

    """
    decay = cyclic_decay(step, period)
    return jnp.where(jnp.abs(decay) < ZERO_DECAY_THRESHOLD, ZERO_DECAY_REPLACEMENT, decay)
