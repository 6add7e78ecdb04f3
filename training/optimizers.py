"""The trainer's optimizers: one registry from group name to factory and hyperparameters.

Every list of optimizer names (the config's validation, the CLI's help, the default groups)
comes from ``OPTIMIZERS``. Weight decay is coupled L2 added to the gradient before the
optimizer, as in MATLAB's ``L2Regularization`` that the paper used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import optax

import optax_dgrad


class OptimizerEntry(NamedTuple):
    """How to build one optimizer group's transformation.

    Attributes:
      make: builds the transformation from keyword hyperparameters.
      hyperparameters: the ``TrainConfig`` fields ``make`` takes, by name.
    """

    make: Callable[..., optax.GradientTransformation]
    hyperparameters: tuple[str, ...]


def _coupled_l2(weight_decay: Any, transformation: optax.GradientTransformation):
    # A plain zero adds nothing; a swept (array) weight decay is always chained.
    if isinstance(weight_decay, int | float) and weight_decay == 0:
        return transformation
    return optax.chain(optax.add_decayed_weights(weight_decay), transformation)


def _sgd(learning_rate, momentum, weight_decay):
    return _coupled_l2(weight_decay, optax.sgd(learning_rate, momentum=momentum))


def _adam(learning_rate, b1, b2, eps, weight_decay):
    return _coupled_l2(weight_decay, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def _amsgrad(learning_rate, b1, b2, eps, weight_decay):
    return _coupled_l2(weight_decay, optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps))


_ADAM_LIKE = ("learning_rate", "b1", "b2", "eps", "weight_decay")

OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(_sgd, ("learning_rate", "momentum", "weight_decay")),
    "adam": OptimizerEntry(_adam, _ADAM_LIKE),
    "amsgrad": OptimizerEntry(_amsgrad, _ADAM_LIKE),
    # optax_dgrad's aliases apply the coupled L2 themselves.
    "diffgrad": OptimizerEntry(optax_dgrad.diffgrad, _ADAM_LIKE),
    "dgrad": OptimizerEntry(optax_dgrad.dgrad, _ADAM_LIKE),
    "cos1": OptimizerEntry(optax_dgrad.cos1, _ADAM_LIKE),
    "cos2": OptimizerEntry(optax_dgrad.cos2, _ADAM_LIKE),
}
OPTIMIZER_NAMES = tuple(OPTIMIZERS)


def optimizer_hyperparameters(name: str, config: Any) -> dict[str, float]:
    """The hyperparameters group ``name`` takes, with their values in ``config``."""
    return {field: getattr(config, field) for field in OPTIMIZERS[name].hyperparameters}


def make_optimizer(
    name: str, hyperparameters: Mapping[str, float] | Any, swept: Sequence[str] = ()
) -> optax.GradientTransformation:
    """Group ``name``'s transformation.

    Args:
      name: a key of ``OPTIMIZERS``.
      hyperparameters: the values of its hyperparameters, or a ``TrainConfig`` holding them.
      swept: hyperparameters that live in the optimizer state instead of the program
        (``optax.inject_hyperparams``), so members with different values share one compiled
        program; set each member's values in its ``opt_state.hyperparams``.
    """
    if not isinstance(hyperparameters, Mapping):
        hyperparameters = optimizer_hyperparameters(name, hyperparameters)
    make = OPTIMIZERS[name].make
    if not swept:
        return make(**hyperparameters)
    fixed = tuple(key for key in hyperparameters if key not in swept)
    return optax.inject_hyperparams(make, static_args=fixed)(**hyperparameters)
