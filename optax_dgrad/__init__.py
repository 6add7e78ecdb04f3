"""optax_dgrad: diffGrad, DGrad, Cos#1 and Cos#2 as optax GradientTransformations.

The optimizers of Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms
to Improve the Performance of Convolutional Neural Networks" (arXiv 2103.14689), and
diffGrad (Dubey et al., arXiv 1909.11015). Each ``scale_by_*`` is an
``optax.GradientTransformation``; each alias chains it like ``optax.adam`` does.
"""

from optax_dgrad._src.alias import cos1, cos2, dgrad, diffgrad
from optax_dgrad._src.cosine import scale_by_cos1, scale_by_cos2
from optax_dgrad._src.cyclic import cos1_coefficient, cos2_coefficient, cyclic_decay
from optax_dgrad._src.dgrad import DGradState, scale_by_dgrad
from optax_dgrad._src.diffgrad import DiffGradState, scale_by_diffgrad

__all__ = [
    "DGradState",
    "DiffGradState",
    "cos1",
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
