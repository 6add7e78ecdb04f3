r"""The optimizers as complete optax pipelines, like :func:`optax.adam`.

Each alias is ``optax.chain(add_decayed_weights(weight_decay), scale_by_*(...),
scale_by_learning_rate(learning_rate))``. Weight decay is coupled L2: ``weight_decay *
params`` is added to the gradient before the moments are updated (MATLAB's
``L2Regularization``; the paper was run in MATLAB). With a plain ``weight_decay == 0`` the
term is left out, so ``update`` then needs no ``params``. Under
:func:`optax.inject_hyperparams` ``weight_decay`` becomes an array whose value can change,
so the term is always kept and ``update`` needs ``params`` (or pass
``static_args="weight_decay"``). Like optax's aliases, the result is an
:class:`optax.GradientTransformationExtraArgs`: its ``update`` accepts and ignores extra
keyword arguments meant for other transforms of a chain.

The interpretation choices, the handling of non-finite gradients and of non-float dtypes,
and the references are in the package documentation, :mod:`optax_dgrad`.
"""

from typing import Any

import jax
import optax

from optax_dgrad._src import cosine, validation
from optax_dgrad._src import dgrad as dgrad_lib
from optax_dgrad._src import diffgrad as diffgrad_lib


def coupled_weight_decay(weight_decay: Any) -> tuple[optax.GradientTransformation, ...]:
    """The coupled-L2 stage that goes before an optimizer in a chain.

    ``(optax.add_decayed_weights(weight_decay),)``: ``weight_decay * params`` added to the
    gradient before the moments see it. A plain ``0`` (an int or float) gives ``()``, so
    the chain's state and numbers are the optimizer's own and ``update`` needs no
    ``params``; any other value, an injected or traced one included, keeps the stage.

    Args:
        weight_decay: the coupled L2 factor, >= 0.

    Returns:
        The transformations to put in front of the optimizer's in :func:`optax.chain`.

    Raises:
        ValueError: if a concrete ``weight_decay`` is negative or not finite.

    Example:
        >>> import optax
        >>> import optax_dgrad
        >>> len(optax_dgrad.coupled_weight_decay(0.0)), len(optax_dgrad.coupled_weight_decay(1e-4))
        (0, 1)
        >>> sgd = optax.chain(*optax_dgrad.coupled_weight_decay(1e-4), optax.sgd(0.1))
    """
    validation.check_non_negative("weight_decay", weight_decay)
    if isinstance(weight_decay, int | float) and weight_decay == 0:
        return ()
    return (optax.add_decayed_weights(weight_decay),)


def _chain(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any,
    scale_by: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    validation.check_non_negative("learning_rate", learning_rate)
    return optax.chain(
        *coupled_weight_decay(weight_decay), scale_by, optax.scale_by_learning_rate(learning_rate)
    )


def diffgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The diffGrad optimizer (Dubey et al. 2019), as used by Nanni et al. (2021).

    .. math::

        \theta_t = \theta_{t-1} - \eta \, \sigma(|g_{t-1} - g_t|) \,
                   \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    with :math:`g_0 = 0` (:func:`optax_dgrad.scale_by_diffgrad`).

    Args:
        learning_rate: step size :math:`\eta` >= 0, a float or an optax schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        weight_decay: coupled L2 factor >= 0: ``weight_decay * params`` is added to the
            gradient before the moments. Non-zero values need ``params`` in ``update``.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params' dtype.

    Returns:
        The optimizer, an :class:`optax.GradientTransformationExtraArgs`.

    Raises:
        ValueError: if a hyperparameter is not finite or out of range (negative
            ``learning_rate``, ``eps`` or ``weight_decay``; ``b1`` or ``b2`` outside
            [0, 1)), or ``mu_dtype`` or ``nu_dtype`` is neither None nor a real
            floating-point dtype; the message names the argument and its value.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import optax_dgrad
        >>> def loss(x): return jnp.sum(x ** 2)
        >>> optimizer = optax_dgrad.diffgrad(learning_rate=0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = optimizer.init(params)
        >>> for _ in range(100):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 1.0)
        True
    """
    return _chain(
        learning_rate,
        weight_decay,
        diffgrad_lib.scale_by_diffgrad(b1, b2, eps, mu_dtype, nu_dtype=nu_dtype),
    )


def dgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The DGrad optimizer (Nanni et al. 2021, equations 12 to 14).

    .. math::

        \theta_t = \theta_{t-1} - \eta \, \sigma(4 \hat D_t) \,
                   \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon},
        \qquad \hat D_t = \frac{|g_t - v_t|}{\max |g_t - v_t|}

    with :math:`v_t` the biased second moment that already includes :math:`g_t`, the max
    over the finite entries, and :math:`\hat D_t = 0` where the max is 0
    (:func:`optax_dgrad.scale_by_dgrad`).

    Args:
        learning_rate: step size :math:`\eta` >= 0, a float or an optax schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        weight_decay: coupled L2 factor >= 0: ``weight_decay * params`` is added to the
            gradient before the moments. Non-zero values need ``params`` in ``update``.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        normalization: ``"leaf"`` (default, the paper's per-layer update) takes the max per
            parameter tensor; ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params' dtype.

    Returns:
        The optimizer, an :class:`optax.GradientTransformationExtraArgs`.

    Raises:
        ValueError: if a hyperparameter is not finite or out of range (negative
            ``learning_rate``, ``eps`` or ``weight_decay``; ``b1`` or ``b2`` outside
            [0, 1); an unknown ``normalization``), or ``mu_dtype`` or ``nu_dtype`` is
            neither None nor a real floating-point dtype; the message names the argument
            and its value.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import optax_dgrad
        >>> def loss(x): return jnp.sum(x ** 2)
        >>> optimizer = optax.chain(
        ...     optax.clip_by_global_norm(1.0), optax_dgrad.dgrad(learning_rate=0.1)
        ... )
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = optimizer.init(params)
        >>> for _ in range(100):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 1.0)
        True
    """
    return _chain(
        learning_rate,
        weight_decay,
        dgrad_lib.scale_by_dgrad(
            b1, b2, eps, mu_dtype, normalization=normalization, nu_dtype=nu_dtype
        ),
    )


def cos1(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    period: int = 30,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The Cos#1 optimizer (Nanni et al. 2021, equations 12 to 15).

    .. math::

        \theta_t = \theta_{t-1} - \eta \, \sigma(4 c_t \hat D_t) \,
                   \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon},
        \qquad c_t = 2 - |\cos(\pi t / P)| \, e^{-0.01 (\operatorname{mod}(t, P) + 1)}

    with DGrad's :math:`\hat D_t` (:func:`optax_dgrad.dgrad`,
    :func:`optax_dgrad.scale_by_cos1`).

    Args:
        learning_rate: step size :math:`\eta` >= 0, a float or an optax schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        weight_decay: coupled L2 factor >= 0: ``weight_decay * params`` is added to the
            gradient before the moments. Non-zero values need ``params`` in ``update``.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factor, a whole number >= 1.
        normalization: ``"leaf"`` (default, the paper's per-layer update) takes the max per
            parameter tensor; ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params' dtype.

    Returns:
        The optimizer, an :class:`optax.GradientTransformationExtraArgs`.

    Raises:
        ValueError: if a hyperparameter is not finite or out of range (negative
            ``learning_rate``, ``eps`` or ``weight_decay``; ``b1`` or ``b2`` outside
            [0, 1); ``period`` not a whole number >= 1; an unknown ``normalization``), or
            ``mu_dtype`` or ``nu_dtype`` is neither None nor a real floating-point dtype;
            the message names the argument and its value.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import optax_dgrad
        >>> def loss(x): return jnp.sum(x ** 2)
        >>> optimizer = optax_dgrad.cos1(learning_rate=0.1, period=30)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = optimizer.init(params)
        >>> for _ in range(100):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 1.0)
        True
    """
    return _chain(
        learning_rate,
        weight_decay,
        cosine.scale_by_cos1(
            b1, b2, eps, mu_dtype, period=period, normalization=normalization, nu_dtype=nu_dtype
        ),
    )


def cos2(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    period: int = 30,
    normalization: str = "leaf",
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The Cos#2 optimizer (Nanni et al. 2021, equations 12 to 17).

    .. math::

        \theta_t = \theta_{t-1} - \eta \,
                   \left(\sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5\right)
                   \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    with DGrad's :math:`\hat D_t`, :math:`c_t = 2 - r_t` and :math:`a_t = r_t`
    (:math:`9 \cdot 10^{-4}` where :math:`|r_t| < 10^{-6}`),
    :math:`r_t = |\cos(\pi t / P)| \, e^{-0.01 (\operatorname{mod}(t, P) + 1)}`
    (:func:`optax_dgrad.scale_by_cos2`).

    Args:
        learning_rate: step size :math:`\eta` >= 0, a float or an optax schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator, >= 0.
        weight_decay: coupled L2 factor >= 0: ``weight_decay * params`` is added to the
            gradient before the moments. Non-zero values need ``params`` in ``update``.
        mu_dtype: dtype of the stored first moment; None (default) keeps the params' dtype.
        period: the period :math:`P` of the cyclic factors, a whole number >= 1.
        normalization: ``"leaf"`` (default, the paper's per-layer update) takes the max per
            parameter tensor; ``"tree"`` takes it over the whole tree.
        nu_dtype: dtype of the stored second moment; None (default) keeps the params' dtype.

    Returns:
        The optimizer, an :class:`optax.GradientTransformationExtraArgs`.

    Raises:
        ValueError: if a hyperparameter is not finite or out of range (negative
            ``learning_rate``, ``eps`` or ``weight_decay``; ``b1`` or ``b2`` outside
            [0, 1); ``period`` not a whole number >= 1; an unknown ``normalization``), or
            ``mu_dtype`` or ``nu_dtype`` is neither None nor a real floating-point dtype;
            the message names the argument and its value.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import optax_dgrad
        >>> def loss(x): return jnp.sum(x ** 2)
        >>> optimizer = optax_dgrad.cos2(learning_rate=0.1, period=30)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = optimizer.init(params)
        >>> for _ in range(100):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 1.0)
        True
    """
    return _chain(
        learning_rate,
        weight_decay,
        cosine.scale_by_cos2(
            b1, b2, eps, mu_dtype, period=period, normalization=normalization, nu_dtype=nu_dtype
        ),
    )
