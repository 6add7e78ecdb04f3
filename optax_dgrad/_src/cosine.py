r"""Cos#1 and Cos#2: DGrad with a cyclic, damped friction (Nanni et al. 2021).

Both keep DGrad's normalised difference :math:`\hat D_t = D_t / \max(D_t)`,
:math:`D_t = |g_t - v_t|` (see :mod:`optax_dgrad._src.dgrad`), and change the friction:

.. math::

    \text{Cos\#1:}\quad \xi_t &= \sigma(4 c_t \hat D_t) \\
    \text{Cos\#2:}\quad \xi_t &= \sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5

with :math:`c_t = 2 - r_t` (equation 15) and :math:`a_t` (equation 17) the cyclic factors
of :mod:`optax_dgrad._src.cyclic`.
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
    period: int = 30,
    normalization: str = "leaf",
) -> optax.GradientTransformation:
    r"""Rescale updates by Cos#1 (Nanni et al. 2021, equations 12 to 15).

    DGrad with the friction :math:`\xi_t = \sigma(4 c_t \hat D_t)`, where
    :math:`c_t = 2 - r_t` (:func:`optax_dgrad.cos1_coefficient`) cycles with period
    :math:`P` and :math:`\hat D_t = |g_t - v_t| / \max|g_t - v_t|` (0 where the max is 0):

    .. math::

        r_t &= |\cos(\pi t / P)| \, e^{-0.01 (\operatorname{mod}(t, P) + 1)} \\
        u_t &= \sigma(4 (2 - r_t) \hat D_t) \; \frac{m_t / (1 - \beta_1^t)}
               {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Where the paper is ambiguous, we chose:

    - its equation 10 prints :math:`m_t` without a hat; we use the bias-corrected
      :math:`\hat m_t`, as diffGrad's reference code and MATLAB's ``adamupdate`` do (the
      paper's code is MATLAB);
    - its equation 12 subtracts the squared-gradient average from the gradient, as
      printed; we implement it as printed (:math:`v_t` is the biased average that already
      includes :math:`g_t`);
    - its equation 15 as printed is never zero, so the :math:`9 \cdot 10^{-4}` rule only
      ever acts on equation 17 (:math:`c_t` always uses the raw :math:`r_t`);
    - "max" in equation 13 is per parameter tensor (the paper's per-layer update); a
      whole-tree option (``normalization="tree"``) exists for users who want it.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factor, a whole number >= 1.
        normalization: ``"leaf"`` (default) takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`DGradState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is outside [0, 1), ``eps`` is negative, ``period``
            is not a whole number >= 1 or ``normalization`` is not ``"leaf"`` or ``"tree"``.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_cos1(period=30)
        >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> direction["w"].shape
        (2,)

    References:
        Nanni, Maguolo & Lumini, `Exploiting Adam-like Optimization Algorithms to Improve
        the Performance of Convolutional Neural Networks <https://arxiv.org/abs/2103.14689>`_,
        2021.
    """
    validation.check_period(period)

    def friction_for_step(count: jax.Array) -> Callable[[jax.Array], jax.Array]:
        coefficient = cyclic.cos1_coefficient(count, period)

        def friction(normalized_difference):
            scale = 4 * coefficient.astype(normalized_difference.dtype)
            return jax.nn.sigmoid(scale * normalized_difference)

        return friction

    return dgrad.scale_by_normalized_difference(
        friction_for_step, b1, b2, eps, mu_dtype, normalization
    )


def scale_by_cos2(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    period: int = 30,
    normalization: str = "leaf",
) -> optax.GradientTransformation:
    r"""Rescale updates by Cos#2 (Nanni et al. 2021, equations 12 to 17).

    DGrad with the friction
    :math:`\xi_t = \sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5`, where
    :math:`c_t = 2 - r_t` (:func:`optax_dgrad.cos1_coefficient`), :math:`a_t = r_t` except
    :math:`9 \cdot 10^{-4}` where :math:`|r_t| < 10^{-6}`
    (:func:`optax_dgrad.cos2_coefficient`) and
    :math:`\hat D_t = |g_t - v_t| / \max|g_t - v_t|` (0 where the max is 0):

    .. math::

        u_t = \left(\sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5\right)
              \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Where the paper is ambiguous, we chose:

    - its equation 10 prints :math:`m_t` without a hat; we use the bias-corrected
      :math:`\hat m_t`, as diffGrad's reference code and MATLAB's ``adamupdate`` do (the
      paper's code is MATLAB);
    - its equation 12 subtracts the squared-gradient average from the gradient, as
      printed; we implement it as printed (:math:`v_t` is the biased average that already
      includes :math:`g_t`);
    - its equation 15 as printed is never zero, so the :math:`9 \cdot 10^{-4}` rule only
      ever acts on equation 17 (:math:`c_t` always uses the raw :math:`r_t`);
    - "max" in equation 13 is per parameter tensor (the paper's per-layer update); a
      whole-tree option (``normalization="tree"``) exists for users who want it.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factors, a whole number >= 1.
        normalization: ``"leaf"`` (default) takes :math:`\max(D_t)` per parameter tensor;
            ``"tree"`` takes it over the whole tree.

    Returns:
        An :class:`optax.GradientTransformation` with state :class:`DGradState`.

    Raises:
        ValueError: if ``b1`` or ``b2`` is outside [0, 1), ``eps`` is negative, ``period``
            is not a whole number >= 1 or ``normalization`` is not ``"leaf"`` or ``"tree"``.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax_dgrad
        >>> transform = optax_dgrad.scale_by_cos2(period=30)
        >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
        >>> state = transform.init(grads)
        >>> direction, state = transform.update(grads, state)
        >>> direction["b"].dtype
        dtype('float32')

    References:
        Nanni, Maguolo & Lumini, `Exploiting Adam-like Optimization Algorithms to Improve
        the Performance of Convolutional Neural Networks <https://arxiv.org/abs/2103.14689>`_,
        2021.
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
        friction_for_step, b1, b2, eps, mu_dtype, normalization
    )
