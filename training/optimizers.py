"""The trainer's optimizers: one registry from group name to factory and hyperparameters.

Every list of optimizer names (the config's validation, the CLI's help, the default groups)
comes from ``OPTIMIZERS``. Weight decay is coupled L2 added to the gradient before the
optimizer, as in MATLAB's ``L2Regularization`` that the paper used.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _with_coupled_l2(make: Callable[..., optax.GradientTransformation]) -> Callable[..., Any]:
    def make_with_weight_decay(*, weight_decay: float, **hyperparameters):
        transformation = make(**hyperparameters)
        if not weight_decay:
            return transformation
        return optax.chain(optax.add_decayed_weights(weight_decay), transformation)

    return make_with_weight_decay


_ADAM_LIKE = ("learning_rate", "b1", "b2", "eps", "weight_decay")

OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        _with_coupled_l2(optax.sgd), ("learning_rate", "momentum", "weight_decay")
    ),
    "adam": OptimizerEntry(_with_coupled_l2(optax.adam), _ADAM_LIKE),
    "amsgrad": OptimizerEntry(_with_coupled_l2(optax.amsgrad), _ADAM_LIKE),
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


def make_optimizer(name: str, config: Any) -> optax.GradientTransformation:
    """Group ``name``'s transformation with the hyperparameters of ``config``."""
    return OPTIMIZERS[name].make(**optimizer_hyperparameters(name, config))
