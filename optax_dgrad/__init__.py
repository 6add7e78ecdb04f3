r"""optax_dgrad: diffGrad, DGrad, Cos#1 and Cos#2 as optax GradientTransformations.

The optimizers of Nanni, Maguolo & Lumini (2021) and diffGrad (Dubey et al. 2019). Each
``scale_by_*`` is an :class:`optax.GradientTransformation`; each alias (``diffgrad``,
``dgrad``, ``cos1``, ``cos2``) chains it like :func:`optax.adam` does. All four are Adam
with an elementwise friction :math:`\xi_t` in front of the bias-corrected direction:

.. math::

    u_t = \xi_t \, \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon},
    \qquad \theta_t = \theta_{t-1} - \eta \, u_t

- diffGrad: :math:`\xi_t = \sigma(|g_{t-1} - g_t|)`, :math:`g_0 = 0`;
- DGrad: :math:`\xi_t = \sigma(4 \hat D_t)`, :math:`\hat D_t = D_t / \max D_t`,
  :math:`D_t = |g_t - v_t|`;
- Cos#1: :math:`\xi_t = \sigma(4 c_t \hat D_t)`;
- Cos#2: :math:`\xi_t = \sigma(2 c_t \hat D_t) + \sigma(4 a_t) - 0.5`,

with the cyclic factors :math:`c_t`, :math:`a_t` of :func:`cos1_coefficient` and
:func:`cos2_coefficient`. The full specification, with the performance notes, is
``docs/optimizers.md`` in the repository.

Where the paper is ambiguous, we chose:

- its equation 10 prints :math:`m_t` without a hat; we use the bias-corrected
  :math:`\hat m_t`, as diffGrad's reference code and MATLAB's ``adamupdate`` do (the
  paper's code is MATLAB);
- its equation 12 subtracts the squared-gradient average from the gradient, as printed;
  we implement it as printed (:math:`v_t` is the biased average that already includes
  :math:`g_t`);
- its equation 15 as printed is never zero (:math:`1 \le c_t \le 2`), so the
  :math:`9 \cdot 10^{-4}` rule for a zero factor only ever acts on equation 17
  (:math:`a_t`); :math:`c_t` always uses the raw :math:`r_t`;
- "max" in equation 13 is per parameter tensor (the paper's per-layer update); a
  whole-tree option (``normalization="tree"``) exists for users who want it;
- weight decay, where asked for, is coupled L2 added to the gradient before the moments
  (MATLAB's ``L2Regularization``).

Non-finite gradients. A NaN or infinite gradient entry makes that entry's moments, and so
its updates, NaN from then on, as in Adam. It harms only itself: DGrad, Cos#1 and Cos#2
take :math:`\max D_t` over the finite entries of :math:`D_t` (0 if there are none), so the
other entries of the leaf (of the tree with ``normalization="tree"``) keep the friction the
formulas give. To skip such steps altogether, wrap the optimizer in
:func:`optax.apply_if_finite`.

Dtypes. Parameters and gradients must be of a real floating-point dtype (float16,
bfloat16, float32, float64): the frictions compare magnitudes, which the paper does not
define for complex numbers, and integer leaves cannot hold an Adam update. ``init`` raises a
``TypeError`` naming the first parameter leaf of another dtype (integer, complex, bool), and
``update`` does the same for gradient leaves; the check reads static dtypes only. The
moments are stored in the parameters' dtype unless ``mu_dtype`` or ``nu_dtype`` (for
instance ``bfloat16``, half the memory) say otherwise, and keep it whatever the gradients'
dtype; they are computed in the wider of that dtype and the gradient's, so storing them is
their only rounding. float16 is as narrow as it is in ``optax.adam`` (``eps = 1e-8`` is 0
there, small squared gradients underflow), so ``nu_dtype=float16`` is refused; DGrad's and
the Cos variants' ``1 / max(D)`` is taken in float32 for float16.

Hyperparameters. Concrete values are checked at construction: a non-finite or out-of-range
value, or a ``mu_dtype`` or ``nu_dtype`` that is neither None nor a real floating-point
dtype, is a ``ValueError`` naming the argument and its value. Schedules and traced values
(under :func:`optax.inject_hyperparams` inside :func:`jax.jit`) are not checked.

References:
    Nanni, Maguolo & Lumini, `Exploiting Adam-like Optimization Algorithms to Improve the
    Performance of Convolutional Neural Networks <https://arxiv.org/abs/2103.14689>`_,
    2021.

    Dubey et al., `diffGrad: An Optimization Method for Convolutional Neural Networks
    <https://arxiv.org/abs/1909.11015>`_, 2019.
"""

from optax_dgrad._src.alias import cos1, cos2, coupled_weight_decay, dgrad, diffgrad
from optax_dgrad._src.cosine import scale_by_cos1, scale_by_cos2
from optax_dgrad._src.cyclic import cos1_coefficient, cos2_coefficient, cyclic_decay
from optax_dgrad._src.dgrad import DGradState, scale_by_dgrad
from optax_dgrad._src.diffgrad import DiffGradState, scale_by_diffgrad

__all__ = [
    "DGradState",
    "DiffGradState",
    "cos1",
    "coupled_weight_decay",
    "cos1_coefficient",
    "cos2",
    "cos2_coefficient",
    "cyclic_decay",
    "dgrad",
    "diffgrad",
    "scale_by_cos1",
    "scale_by_cos2",
    "scale_by_dgrad",
    "scale_by_diffgrad",
]
