"""The trainer's optimizers: one registry from group name to factory and hyperparameters.

Every list of optimizer names (the config's validation, the CLI's help, the default groups)
comes from ``OPTIMIZERS``. Weight decay is coupled L2 added to the gradient before the
optimizer, as in MATLAB's ``L2Regularization`` that the paper used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
    # optax_dgrad owns when the stage is left out; alone, the transformation keeps its own
    # state layout (a chain of one would wrap it).
    stages = optax_dgrad.coupled_weight_decay(weight_decay)
    return optax.chain(*stages, transformation) if stages else transformation


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


def make_optimizer(
    name: str, hyperparameters: Mapping[str, float], swept: Sequence[str] = ()
) -> optax.GradientTransformation:
    """Group ``name``'s transformation alone (the trainer runs it in ``MemberOptimizer``).

    Args:
      name: a key of ``OPTIMIZERS``.
      hyperparameters: the values of its hyperparameters (``OPTIMIZERS[name].hyperparameters``).
      swept: hyperparameters that live in the optimizer state instead of the program
        (``optax.inject_hyperparams``), so members with different values share one compiled
        program; set each member's values in its ``opt_state.hyperparams``.
    """
    make = OPTIMIZERS[name].make
    if not swept:
        return make(**hyperparameters)
    fixed = tuple(key for key in hyperparameters if key not in swept)
    return optax.inject_hyperparams(make, static_args=fixed)(**hyperparameters)


class MemberOptimizerState(NamedTuple):
    """A member's optimizer state under :class:`MemberOptimizer`.

    Attributes:
      hyperparams: each swept hyperparameter's name -> float32 scalar, this member's value
        (``{}`` without a sweep: the values are the program's constants).
      slots: the run's optimizers' state, shared: ``"count"`` (int32 step count) and the
        parameter-shaped trees they keep, ``"mu"`` (Adam's first moment, or SGD's momentum
        trace), ``"nu"``, ``"nu_max"`` (AMSGrad), ``"prev_grad"`` (diffGrad); only those
        some optimizer of the run needs.
    """

    hyperparams: dict[str, Any]
    slots: dict[str, Any]


def _slot(path: tuple) -> tuple[str, tuple]:
    """A native state leaf's slot and its path inside the slot's tree: ``[1][0].mu['w']``
    -> ``("mu", ['w'])``; SGD's momentum ``trace`` shares ``mu`` (a member has one)."""
    for position in range(len(path) - 1, -1, -1):
        key = path[position]
        if isinstance(key, jax.tree_util.GetAttrKey):
            return ("mu" if key.name == "trace" else key.name), path[position + 1 :]
    raise ValueError(f"optimizer state leaf {jax.tree_util.keystr(path)} has no field name")


class MemberOptimizer:
    """Every optimizer of a run behind one state, so one compiled step serves all groups.

    The hyperparameters are the run's constants, except the swept ones, which live in each
    member's state (``hyperparams``, as ``optax.inject_hyperparams`` keeps them), so the
    arithmetic is that of each optimizer built alone. Which optimizer updates a member is
    ``rule``, an index into ``names`` given to :meth:`apply` at run time (``lax.switch``):
    one member per call (``loop``) runs only its optimizer's update; under ``vmap`` the
    index is batched, so every optimizer's update is computed and each member keeps its
    own (docs/training.md, "One member axis for the whole run"). Each branch is the
    optimizer's own optax transformation (``OPTIMIZERS``) applied to its part of the shared
    state, so the numbers are those of that transformation. The state holds the union of
    the optimizers' slots (see :class:`MemberOptimizerState`): a run with AMSGrad and
    diffGrad keeps four parameter-sized trees per member where Adam alone keeps two.
    """

    def __init__(
        self, names: Sequence[str], hyperparameters: Mapping[str, float], swept: Sequence[str] = ()
    ):
        self.names = tuple(names)
        self.hyperparameters = dict(hyperparameters)
        self.swept = tuple(swept)

    def _native(self, name: str, hyperparams: Mapping[str, Any]) -> optax.GradientTransformation:
        entry = OPTIMIZERS[name]
        values = {**self.hyperparameters, **hyperparams}
        return entry.make(**{key: values[key] for key in entry.hyperparameters})

    def init(self, params: Any) -> MemberOptimizerState:
        """Zero slots for ``params``; swept hyperparameters 0 until the member's are set."""
        hyperparams = {name: jnp.zeros((), jnp.float32) for name in self.swept}
        leaves: dict[str, dict[str, Any]] = {}
        for name in self.names:
            state = self._native(name, {}).init(params)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
                slot, inner = _slot(path)
                leaves.setdefault(slot, {}).setdefault(jax.tree_util.keystr(inner), leaf)
        slots = {}
        for slot, by_path in leaves.items():
            if slot == "count":
                slots[slot] = by_path[""]
            else:  # a tree shaped like params
                paths = jax.tree_util.tree_flatten_with_path(params)[0]
                treedef = jax.tree.structure(params)
                slots[slot] = jax.tree.unflatten(
                    treedef, [by_path[jax.tree_util.keystr(p)] for p, _ in paths]
                )
        return MemberOptimizerState(hyperparams, slots)

    def apply(
        self, grads: Any, state: MemberOptimizerState, params: Any, rule: jax.Array
    ) -> tuple[Any, MemberOptimizerState]:
        """New parameters and state after one step of optimizer ``names[rule]``.

        The parameters are updated inside the branch, with the update, as the optimizer's
        own step would fuse them: SGD's numbers are then bit for bit its own.
        """
        branches = [functools.partial(self._applied, name) for name in self.names]
        return jax.lax.switch(rule, branches, grads, state, params)

    def _applied(self, name, grads, state: MemberOptimizerState, params):
        updates, state = self._branch(name, grads, state, params)
        return optax.apply_updates(params, updates), state

    def _branch(self, name, updates, state: MemberOptimizerState, params):
        native = self._native(name, state.hyperparams)
        template = jax.eval_shape(native.init, params)
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        places = [_slot(path) for path, _ in paths]
        by_path = {
            slot: dict(
                (jax.tree_util.keystr(p), leaf)
                for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            )
            for slot, tree in state.slots.items()
        }
        native_state = jax.tree.unflatten(
            treedef, [by_path[slot][jax.tree_util.keystr(inner)] for slot, inner in places]
        )
        updates, native_state = native.update(updates, native_state, params)
        for (slot, inner), leaf in zip(places, jax.tree.leaves(native_state), strict=True):
            by_path[slot][jax.tree_util.keystr(inner)] = leaf
        slots = {
            slot: jax.tree.unflatten(jax.tree.structure(tree), list(by_path[slot].values()))
            for slot, tree in state.slots.items()
        }
        return updates, MemberOptimizerState(state.hyperparams, slots)
