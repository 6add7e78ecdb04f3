"""The trainer's MemberOptimizer: every optimizer of a run behind one state and one program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from training import OPTIMIZER_NAMES, OPTIMIZERS, MemberOptimizer, make_optimizer

HYPERPARAMETERS = dict(
    learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=1e-3
)
STEPS = 30


def _gradients():
    """A fixed gradient sequence (not a function of the parameters, so a rounding
    difference in one step does not feed back into the next step's gradient)."""
    key = jax.random.key(3)
    return {
        "w": jax.random.normal(key, (STEPS, 8, 5)),
        "b": jnp.sin(jnp.arange(STEPS * 5, dtype=jnp.float32)).reshape(STEPS, 5),
    }


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 40).reshape(8, 5), "b": jnp.zeros(5)}


@jax.jit
def _member_trajectory(rule):
    optimizer = MemberOptimizer(OPTIMIZER_NAMES, HYPERPARAMETERS)
    params = _params()

    def step(carry, grads):
        params, state = carry
        return optimizer.apply(grads, state, params, rule), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), _gradients())
    return params


def _own_trajectory(name):
    entry = OPTIMIZERS[name]
    optimizer = make_optimizer(name, {k: HYPERPARAMETERS[k] for k in entry.hyperparameters})

    @jax.jit
    def run():
        params = _params()

        def step(carry, grads):
            params, state = carry
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), _gradients())
        return params

    return run()


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_rule_is_its_optimizer(name):
    got = _member_trajectory(jnp.int32(OPTIMIZER_NAMES.index(name)))
    want = _own_trajectory(name)
    if name == "sgd":
        # Nothing but products and sums, fused alike in and out of the branch: bit for bit.
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        return
    # Inside lax.switch XLA:CPU compiles the update as its own computation and may round
    # differently: each step's direction (|u| <= 2 for these optimizers) may differ by a
    # few float32 ulps, moving the parameters by lr * |du| per step, with no feedback
    # (fixed gradients): at most STEPS * lr * 2 * 8 ulp(1).
    bound = STEPS * HYPERPARAMETERS["learning_rate"] * 2 * 8 * np.finfo(np.float32).eps
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=bound)


def test_the_state_holds_only_the_slots_the_runs_optimizers_use():
    params = _params()
    sizes = lambda names: sorted(MemberOptimizer(names, HYPERPARAMETERS).init(params).slots)  # noqa: E731
    assert sizes(("sgd",)) == ["mu"]
    assert sizes(("adam", "dgrad", "cos1", "cos2")) == ["count", "mu", "nu"]
    assert sizes(OPTIMIZER_NAMES) == ["count", "mu", "nu", "nu_max", "prev_grad"]


def test_swept_hyperparameters_live_in_the_state():
    optimizer = MemberOptimizer(("adam", "sgd"), HYPERPARAMETERS, swept=("learning_rate",))
    params = _params()
    state = optimizer.init(params)
    assert set(state.hyperparams) == {"learning_rate"}
    state = state._replace(hyperparams={"learning_rate": jnp.float32(0.0)})
    grads = jax.tree.map(jnp.ones_like, params)
    for rule in (0, 1):  # a zero learning rate leaves the parameters where they were
        new_params, _ = optimizer.apply(grads, state, params, jnp.int32(rule))
        for key in params:
            np.testing.assert_array_equal(new_params[key], params[key])
