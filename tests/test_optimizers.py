"""Tests of optax_dgrad's optimizers against the NumPy reference written from the formulas
(optax_dgrad.testing, the specification in docs/optimizers.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import optax_dgrad
from optax_dgrad.testing import cyclic_decay as np_cyclic_decay
from optax_dgrad.testing import reference_directions

B1, B2, EPS = 0.9, 0.999, 1e-8
FAMILY = ("dgrad", "cos1", "cos2")
NAMES = ("diffgrad", *FAMILY)
SHAPES = {"scalar": (), "vector": (5,), "conv": (3, 3, 2, 4)}


# ---------------------------------------------------------------------------- reference


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def scale_by(name, **kwargs):
    return getattr(optax_dgrad, f"scale_by_{name}")(**kwargs)


def random_grads(n_steps, dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    scales = {k: 10.0 ** rng.uniform(-2, 1) for k in shapes}
    return [
        {k: (scales[k] * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
        for _ in range(n_steps)
    ]


def run_scanned(transform, grads_per_step, params=None):
    """All directions of a transform over the steps, under jit and lax.scan."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads_per_step)
    init_params = grads_per_step[0] if params is None else params

    @jax.jit
    def run(stacked_grads):
        def body(state, grads):
            updates, state = transform.update(grads, state, params)
            return state, updates

        return jax.lax.scan(body, transform.init(init_params), stacked_grads)

    final_state, stacked_updates = run(stacked)
    n = len(grads_per_step)
    updates = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked_updates) for i in range(n)]
    return updates, final_state


def assert_tree_close(actual, expected, rtol, atol, what=""):
    for k in expected:
        np.testing.assert_allclose(
            np.asarray(actual[k], np.float64), expected[k], rtol=rtol, atol=atol,
            err_msg=f"{what} leaf {k!r}",
        )


# ---------------------------------------------------------------------------- numerics


# diffGrad has no max normalisation; the DGrad family is checked with both.
NAME_AND_NORMALIZATION = [("diffgrad", "leaf")] + [
    (name, normalization) for name in FAMILY for normalization in ("leaf", "tree")
]


@pytest.mark.parametrize(("name", "normalization"), NAME_AND_NORMALIZATION)
def test_matches_numpy_reference_float32(name, normalization):
    kwargs = {} if name == "diffgrad" else {"normalization": normalization}
    grads = random_grads(62, np.float32)  # crosses t = 15, 30, 45 and 60 of the cycle
    updates, state = run_scanned(scale_by(name, **kwargs), grads)
    expected = reference_directions(name, grads, normalization=normalization)
    assert int(state.count) == 62
    for t, (actual, reference) in enumerate(zip(updates, expected, strict=True), start=1):
        assert_tree_close(actual, reference, rtol=2e-5, atol=1e-6, what=f"{name} step {t}")


@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_reference_float64(name):
    with jax.enable_x64(True):
        grads = random_grads(55, np.float64, seed=1)
        updates, _ = run_scanned(scale_by(name), grads)
        assert updates[0]["conv"].dtype == np.float64
    expected = reference_directions(name, grads)
    for t, (actual, reference) in enumerate(zip(updates, expected, strict=True), start=1):
        assert_tree_close(actual, reference, rtol=1e-12, atol=1e-13, what=f"{name} step {t}")
    assert jnp.zeros(1).dtype == jnp.float32  # x64 stayed scoped to this test


def test_first_diffgrad_step_by_hand():
    # g_0 = 0, so xi_1 = sigmoid(|g_1|); m_hat = g, v_hat = g**2, so u_1 = xi * g / (|g| + eps).
    transform = optax_dgrad.scale_by_diffgrad()
    grads = jnp.array([0.0, 3.0, -0.5])
    updates, state = transform.update(grads, transform.init(grads))
    expected = [0.0, 3 / (3 + 1e-8) / (1 + np.exp(-3.0)), -0.5 / (0.5 + 1e-8) / (1 + np.exp(-0.5))]
    # 1 - b2 in float32 loses digits to cancellation: v_hat is off by ~1e-5, as in optax.adam.
    np.testing.assert_allclose(updates, expected, rtol=1e-5)
    np.testing.assert_array_equal(state.prev_grad, grads)


def test_first_dgrad_and_cos_steps_by_hand():
    grads = jnp.array([1.0, -2.0])
    # v_1 = 0.001 g**2 = [0.001, 0.004]; D = [0.999, 2.004]; D_hat = [0.999 / 2.004, 1].
    d_hat = np.array([0.999 / 2.004, 1.0])
    adam = np.array([1 / (1 + 1e-8), -2 / (2 + 1e-8)])  # m_hat / (sqrt(v_hat) + eps)
    r1 = abs(np.cos(np.pi / 30)) * np.exp(-0.02)  # t = 1: mod(1, 30) + 1 = 2
    expected = {
        "dgrad": np_sigmoid(4 * d_hat) * adam,
        "cos1": np_sigmoid(4 * (2 - r1) * d_hat) * adam,
        "cos2": (np_sigmoid(2 * (2 - r1) * d_hat) + np_sigmoid(4 * r1) - 0.5) * adam,
    }
    for name, value in expected.items():
        transform = scale_by(name)
        updates, _ = transform.update(grads, transform.init(grads))
        # rtol 1e-5: the float32 rounding of 1 - b2, as in the diffGrad step above.
        np.testing.assert_allclose(updates, value, rtol=1e-5, err_msg=name)


def test_diffgrad_friction_changes_from_step_to_step():
    # diffGrad's direction divided by Adam's is the friction sigmoid(|g_prev - g|).
    diffgrad, adam = optax_dgrad.scale_by_diffgrad(), optax.scale_by_adam()
    grads_per_step = [jnp.array([1.0, -1.0]), jnp.array([3.0, -1.0]), jnp.array([0.0, 2.0])]
    diffgrad_state, adam_state = diffgrad.init(grads_per_step[0]), adam.init(grads_per_step[0])
    previous = jnp.zeros(2)
    frictions = []
    for grads in grads_per_step:
        diffgrad_updates, diffgrad_state = jax.jit(diffgrad.update)(grads, diffgrad_state)
        adam_updates, adam_state = adam.update(grads, adam_state)
        friction = np.asarray(diffgrad_updates / adam_updates)
        np.testing.assert_allclose(friction, np_sigmoid(np.abs(previous - grads)), rtol=1e-6)
        frictions.append(friction)
        previous = grads
    assert not np.allclose(frictions[1], frictions[2])
    assert not np.allclose(frictions[1], 0.5)  # a stale prev_grad would give sigmoid(0)


def test_cyclic_factors_match_the_formulas():
    steps = np.arange(1, 61)
    r = np_cyclic_decay(steps, 30)
    decay = jax.jit(optax_dgrad.cyclic_decay)(jnp.asarray(steps))
    np.testing.assert_allclose(decay, r, rtol=1e-5, atol=1e-6)  # cos near pi/2 in f32
    np.testing.assert_allclose(optax_dgrad.cos1_coefficient(steps), 2 - r, rtol=1e-6)
    a = optax_dgrad.cos2_coefficient(steps)
    np.testing.assert_allclose(a, np.where(np.abs(r) < 1e-6, 9e-4, r), rtol=1e-5, atol=1e-6)
    assert np.flatnonzero(np.isclose(np.asarray(a), 9e-4)).tolist() == [14, 44]  # t = 15, 45
    assert float(optax_dgrad.cos1_coefficient(15)) == pytest.approx(2.0)  # raw r_15 = 0
    assert optax_dgrad.cyclic_decay(jnp.ones((2, 3), jnp.int32), period=7).shape == (2, 3)
    np.testing.assert_allclose(
        optax_dgrad.cyclic_decay(10, period=4), np_cyclic_decay(10, 4), rtol=1e-6, atol=1e-7
    )


# ---------------------------------------------------------------------------- minimisation


def parabola(x):
    return jnp.sum((x - jnp.array([1.0, -2.0])) ** 2)


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("loss", "start", "optimum", "learning_rate", "steps", "tolerance"),
    [
        (parabola, [0.0, 0.0], [1.0, -2.0], 0.05, 2000, 1e-3),
        (rosenbrock, [-1.0, 1.0], [1.0, 1.0], 0.01, 10000, 1e-2),
    ],
    ids=["parabola", "rosenbrock"],
)
def test_minimises(name, loss, start, optimum, learning_rate, steps, tolerance):
    optimizer = getattr(optax_dgrad, name)(learning_rate=learning_rate)

    @jax.jit
    def minimise(x):
        def body(carry, _):
            x, state = carry
            updates, state = optimizer.update(jax.grad(loss)(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        (x, _), _ = jax.lax.scan(body, (x, optimizer.init(x)), length=steps)
        return x

    np.testing.assert_allclose(minimise(jnp.array(start)), optimum, atol=tolerance)


# ---------------------------------------------------------------------------- composability


@pytest.mark.parametrize("name", NAMES)
def test_alias_is_coupled_l2_then_scale_then_learning_rate(name):
    grads = random_grads(5, np.float32, seed=2)
    params = {k: np.full(s, 0.5, np.float32) for k, s in SHAPES.items()}
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1, weight_decay=0.01)
    updates, _ = run_scanned(optimizer, grads, params=params)
    coupled = [{k: g[k] + 0.01 * params[k] for k in g} for g in grads]
    for actual, direction in zip(updates, reference_directions(name, coupled), strict=True):
        assert_tree_close(actual, {k: -0.1 * d for k, d in direction.items()}, 2e-5, 1e-7)


@pytest.mark.parametrize("name", FAMILY)
def test_chain_with_clip_by_global_norm(name):
    grads = random_grads(8, np.float32, seed=3)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), getattr(optax_dgrad, name)(0.1))
    updates, _ = run_scanned(optimizer, grads)
    clipped = []
    for g in grads:
        norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in g.values()))
        clipped.append({k: x * min(1.0, 1.0 / norm) for k, x in g.items()})
    for actual, direction in zip(updates, reference_directions(name, clipped), strict=True):
        assert_tree_close(actual, {k: -0.1 * d for k, d in direction.items()}, 2e-5, 1e-7)


@pytest.mark.parametrize("normalization", ["leaf", "tree"])
def test_masked_leaves_pass_through(normalization):
    grads = random_grads(6, np.float32, seed=4)
    mask = {"scalar": False, "vector": True, "conv": True}
    optimizer = optax.masked(optax_dgrad.dgrad(0.1, normalization=normalization), mask)
    updates, _ = run_scanned(optimizer, grads)
    masked_in = [{k: g[k] for k in ("vector", "conv")} for g in grads]
    expected = reference_directions("dgrad", masked_in, normalization=normalization)
    for actual, grads_t, direction in zip(updates, grads, expected, strict=True):
        np.testing.assert_array_equal(actual["scalar"], grads_t["scalar"])
        assert_tree_close(actual, {k: -0.1 * d for k, d in direction.items()}, 2e-5, 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_none_leaves(name):
    params = {"w": jnp.ones(3), "frozen": None}
    transform = scale_by(name)
    state = transform.init(params)
    updates, _ = transform.update({"w": jnp.array([1.0, -2.0, 0.5]), "frozen": None}, state)
    assert updates["frozen"] is None
    expected = reference_directions(name, [{"w": np.array([1.0, -2.0, 0.5])}])[0]["w"]
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_numbers(name):
    grads = random_grads(12, np.float32, seed=5)
    params = {k: np.full(s, 0.25, np.float32) for k, s in SHAPES.items()}
    kwargs = {"learning_rate": 0.05, "b1": 0.8, "weight_decay": 1e-3}
    plain, _ = run_scanned(getattr(optax_dgrad, name)(**kwargs), grads, params)
    injected_optimizer = optax.inject_hyperparams(getattr(optax_dgrad, name))(**kwargs)
    injected, state = run_scanned(injected_optimizer, grads, params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.05)
    # Injected b1/b2 are float32 arrays, so 1 - b2 is rounded in float32 rather than in
    # Python: ~1e-5 relative, as for optax.adam; anything structural would be far larger.
    for a, b in zip(injected, plain, strict=True):
        assert_tree_close(a, {k: np.asarray(v, np.float64) for k, v in b.items()}, 2e-5, 5e-8)


def test_learning_rate_schedule():
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=10)
    grads = random_grads(10, np.float32, seed=6)
    updates, _ = run_scanned(optax_dgrad.cos2(learning_rate=schedule), grads)
    for t, (actual, direction) in enumerate(
        zip(updates, reference_directions("cos2", grads), strict=True)
    ):
        lr = float(schedule(t))  # the schedule sees the count before this update
        assert_tree_close(actual, {k: -lr * d for k, d in direction.items()}, 2e-5, 1e-8)


def test_multi_steps_accumulates_then_updates():
    grads = random_grads(6, np.float32, seed=7)
    optimizer = optax.MultiSteps(optax_dgrad.dgrad(0.1), every_k_schedule=2)
    state = optimizer.init(grads[0])
    step = jax.jit(optimizer.update)
    pairs = zip(grads[::2], grads[1::2], strict=True)
    averaged = [{k: (a[k] + b[k]) / 2 for k in a} for a, b in pairs]
    expected = reference_directions("dgrad", averaged)
    for i, g in enumerate(grads):
        updates, state = step(g, state)
        if i % 2 == 0:
            assert all(not np.any(u) for u in jax.tree.leaves(updates))
        else:
            direction = expected[i // 2]
            assert_tree_close(updates, {k: -0.1 * d for k, d in direction.items()}, 2e-5, 1e-7)


def test_apply_if_finite_skips_a_non_finite_step():
    grads = random_grads(4, np.float32, seed=8)
    bad = {k: np.full_like(v, np.nan) for k, v in grads[0].items()}
    optimizer = optax.apply_if_finite(optax_dgrad.diffgrad(0.1), max_consecutive_errors=3)
    updates, state = run_scanned(optimizer, [grads[0], bad, *grads[1:]])
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1
    assert all(not np.any(u) for u in jax.tree.leaves(updates[1]))
    expected = reference_directions("diffgrad", grads)
    for actual, direction in zip([updates[0], *updates[2:]], expected, strict=True):
        assert_tree_close(actual, {k: -0.1 * d for k, d in direction.items()}, 2e-5, 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_params_keep_their_dtype(name):
    params = {k: jnp.full(s, 0.5, jnp.bfloat16) for k, s in SHAPES.items()}
    grads = jax.tree.map(lambda p: jnp.linspace(-1, 1, p.size).reshape(p.shape).astype(p.dtype),
                         params)
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.01)
    state = optimizer.init(params)
    for _ in range(3):
        updates, state = jax.jit(optimizer.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    for leaf in jax.tree.leaves((updates, params, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.bfloat16
            assert bool(jnp.all(jnp.isfinite(leaf)))
    expected = reference_directions(name, [jax.tree.map(np.asarray, grads)] * 3)[-1]
    assert_tree_close(updates, {k: -0.01 * d for k, d in expected.items()}, 2e-2, 2e-4)


@pytest.mark.parametrize("name", ["dgrad", "cos1", "cos2"])
def test_float16_moments_keep_the_friction_of_a_small_difference(name):
    # After a zero gradient, max(D) = max(v_t) is about 1e-7: its reciprocal overflows
    # float16 (the friction became 1, Adam's step), so it is taken in float32.
    grads = [[np.array([0.01, 0.02, 0.03, 0.02], np.float16)], [np.zeros(4, np.float16)]]
    transform = scale_by(name, **({} if name == "dgrad" else {"period": 30}))
    state = transform.init([jnp.zeros(4, jnp.float16)])
    for step in grads:
        updates, state = transform.update([jnp.asarray(g) for g in step], state)
    assert state.nu[0].dtype == updates[0].dtype == jnp.float16
    (expected,) = reference_directions(name, grads, period=30, moment_dtype=np.float16)[-1]
    # The update is stored in float16 (half an ulp, 2**-12) after a few float16 operations:
    # four ulps, 2**-9, bound it.
    np.testing.assert_allclose(np.asarray(updates[0], np.float64), expected, rtol=2**-9)


def test_mu_keeps_its_stored_dtype_under_wider_gradients():
    # float32 gradients (accumulated, say) for bfloat16 parameters: both moments stay as
    # init made them, so a scan's carry keeps its type.
    for name in NAMES:
        params = jnp.ones(3, jnp.bfloat16)
        transform = scale_by(name)
        state = transform.init(params)
        _, new_state = transform.update(jnp.array([0.1, -0.2, 0.3], jnp.float32), state)
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
            lambda x: x.dtype, state
        ), name


def test_mu_dtype():
    transform = optax_dgrad.scale_by_dgrad(mu_dtype=jnp.bfloat16)
    grads = {"w": jnp.array([1.0, -2.0])}
    updates, state = transform.update(grads, transform.init(grads))
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32
    assert updates["w"].dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_moments_match_the_reference_rounded_as_stored(name):
    transform = scale_by(name, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    grads = random_grads(20, np.float32, seed=11)
    updates, state = run_scanned(transform, grads)
    assert state.mu["conv"].dtype == state.nu["conv"].dtype == jnp.bfloat16
    assert updates[0]["conv"].dtype == np.float32
    expected = reference_directions(name, grads, moment_dtype=jnp.bfloat16)
    # A moment computed in float32 can round to the other bfloat16 neighbour than the
    # float64 reference's when it lies within float32 rounding of the midpoint: one bfloat16
    # ulp, 2**-8 relative, which moves the direction by about as much; allow two.
    for t, (actual, reference) in enumerate(zip(updates, expected, strict=True), start=1):
        assert_tree_close(actual, reference, rtol=2**-7, atol=1e-6, what=f"{name} step {t}")


@pytest.mark.parametrize("name", NAMES)
def test_nu_dtype_on_the_alias_and_defaults_unchanged(name):
    grads = {"w": jnp.array([1.0, -2.0], jnp.bfloat16)}
    optimizer = getattr(optax_dgrad, name)(1e-3, nu_dtype=jnp.float32)
    _, state = optimizer.update(grads, optimizer.init(grads), grads)
    assert optax.tree.get(state, "nu")["w"].dtype == jnp.float32
    assert optax.tree.get(state, "mu")["w"].dtype == jnp.bfloat16
    default = getattr(optax_dgrad, name)(1e-3).init(grads)
    assert optax.tree.get(default, "nu")["w"].dtype == jnp.bfloat16  # the params'
    assert optax.tree.get(default, "mu")["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("name", NAMES)
def test_default_moment_dtypes_keep_the_numbers_bit_for_bit(name):
    # None, written out or left to the default, and the params' own dtype asked for
    # explicitly must all give the same bits: no rounding, no reordered arithmetic.
    grads = random_grads(6, np.float32, seed=21)
    runs = []
    for kwargs in (
        {},
        {"mu_dtype": None, "nu_dtype": None},
        {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
    ):
        optimizer = getattr(optax_dgrad, name)(0.1, **kwargs)
        params = jax.tree.map(jnp.asarray, grads[0])
        state = optimizer.init(params)
        step = donated_step(optimizer)
        history = []
        for g in grads:
            params, state = step(params, state, g)
            history.append(jax.tree.map(np.asarray, (params, state)))
        runs.append(history)
    for other in runs[1:]:
        for t, (expected, actual) in enumerate(zip(runs[0], other, strict=True)):
            for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
                assert e.dtype == a.dtype and e.tobytes() == a.tobytes(), (name, t)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_moments_stay_within_their_rounding_bound_over_100_steps(name):
    # The problem of the moment-dtype table in docs/optimizers.md: 100 steps on
    # f(x) = sum(a x^2) / 2, 64 parameters, a in [0.1, 10], against the float64 reference
    # (unrounded moments) following its own trajectory.
    steps, learning_rate = 100, 1e-2
    rng = np.random.default_rng(0)
    curvature = 10.0 ** rng.uniform(-1, 1, 64)
    x_ref = rng.standard_normal(64)
    optimizer = getattr(optax_dgrad, name)(
        learning_rate, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
    )
    x = jnp.asarray(x_ref, jnp.float32)
    state = optimizer.init(x)
    step = jax.jit(lambda x, state: optimizer.update(curvature.astype(np.float32) * x, state, x))
    # Storing a moment in bfloat16 (8 significant bits) rounds it by at most u = 2**-8 of its
    # value. The rounding errors of m decay by b1 per step, so together they stay below
    # u / (1 - b1) = 10u of m; those of v decay by b2 = 0.999, hardly at all in 100 steps,
    # so they add up to at most steps * u of v, which the square root halves. The rest of
    # the direction is float32 arithmetic (a few 2**-24, negligible beside that). So each
    # direction is off by at most rho = u / (1 - b1) + steps * u / 2 (0.23) of itself, and
    # x_t by at most rho times its path length sum_s learning_rate * |u_s| so far, taken
    # from the reference, plus the float32 rounding of x itself, 2**-24 of |x| each time it
    # is stored. (The bound leaves out that a moved x changes the later gradients.)
    u = 2.0**-8
    rho = u / (1 - B1) + steps * u / 2
    grads_ref, path_length = [], np.zeros(64)
    rounding = 2.0**-24 * np.abs(x_ref)
    for _ in range(steps):
        updates, state = step(x, state)
        x = optax.apply_updates(x, updates)
        rounding += 2.0**-24 * np.abs(np.asarray(x, np.float64))
        grads_ref.append(curvature * x_ref)
        direction = reference_directions(name, grads_ref)[-1]
        x_ref = x_ref - learning_rate * direction
        path_length += learning_rate * np.abs(direction)
        error = np.abs(np.asarray(x, np.float64) - x_ref)
        np.testing.assert_array_less(error, rho * path_length + rounding)
    assert optax.tree.get(state, "mu").dtype == optax.tree.get(state, "nu").dtype == jnp.bfloat16


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("option", ["mu_dtype", "nu_dtype"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (jnp.int32, "int32"),
        ("complex64", "complex64"),
        (jnp.bool_, "bool"),
        ("float33", "'float33'"),
    ],
)
def test_invalid_moment_dtypes_raise_naming_the_option(name, option, value, shown):
    message = rf"`{option}` must be None or a real floating-point dtype .*got {option}={shown}\."
    with pytest.raises(ValueError, match=message):
        getattr(optax_dgrad, name)(1e-3, **{option: value})
    with pytest.raises(ValueError, match=message):
        scale_by(name, **{option: value})


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_members_equals_one_by_one(name):
    members = 3
    grads = [random_grads(4, np.float32, seed=10 + m) for m in range(members)]
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1)

    def run(member_grads):  # member_grads: list over steps of trees
        state = optimizer.init(member_grads[0])
        updates = []
        for g in member_grads:
            u, state = optimizer.update(g, state)
            updates.append(u)
        return updates

    stacked = [jax.tree.map(lambda *xs: jnp.stack(xs), *[grads[m][t] for m in range(members)])
               for t in range(4)]
    vmapped = jax.jit(jax.vmap(run))(stacked)
    for m in range(members):
        one = run([jax.tree.map(jnp.asarray, g) for g in grads[m]])
        for t in range(4):
            for k in SHAPES:
                np.testing.assert_allclose(vmapped[t][k][m], one[t][k], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_sharded_params_give_sharded_state(name):
    assert len(jax.devices()) == 8, "tests/conftest.py should provide 8 CPU devices"
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(11)
    host_params = {"w": rng.standard_normal((16, 3)).astype(np.float32),
                   "b": rng.standard_normal(8).astype(np.float32)}
    host_grads = jax.tree.map(lambda p: 0.1 * p + 0.05, host_params)
    params = jax.device_put(host_params, sharding)
    grads = jax.device_put(host_grads, sharding)
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1)
    state = jax.jit(optimizer.init)(params)
    updates, new_state = jax.jit(optimizer.update)(grads, state, params)
    scale_state = new_state[0]
    for field in ("mu", "nu") + (("prev_grad",) if name == "diffgrad" else ()):
        for k, leaf in getattr(scale_state, field).items():
            assert leaf.sharding.is_equivalent_to(sharding, host_params[k].ndim), (field, k)
    for k in host_params:
        assert updates[k].sharding.is_equivalent_to(sharding, host_params[k].ndim)
    expected = reference_directions(name, [host_grads])[0]
    assert_tree_close(updates, {k: -0.1 * d for k, d in expected.items()}, 2e-5, 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_no_recompilation_between_steps(name):
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # runs once per trace, so once per compilation
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(4), "b": jnp.zeros(())}
    state = optimizer.init(params)
    for i in range(5):
        grads = jax.tree.map(lambda p, i=i: p * 0 + (i - 2.0), params)
        params, state = step(params, state, grads)
    assert len(traces) == 1


# ---------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(("name", "normalization"), NAME_AND_NORMALIZATION)
def test_zero_gradients_give_finite_updates(name, normalization):
    kwargs = {} if name == "diffgrad" else {"normalization": normalization}
    transform = scale_by(name, **kwargs)
    zeros = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    state = transform.init(zeros)
    for _ in range(3):
        updates, state = transform.update(zeros, state)
        for leaf in jax.tree.leaves((updates, state)):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert all(not np.any(u) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(("name", "normalization"), NAME_AND_NORMALIZATION)
def test_empty_and_zero_dimensional_leaves(name, normalization):
    shapes = {"empty": (0,), "empty_matrix": (0, 3), "scalar": (), "vector": (4,)}
    kwargs = {} if name == "diffgrad" else {"normalization": normalization}
    grads = random_grads(4, np.float32, seed=12, shapes=shapes)
    updates, _ = run_scanned(scale_by(name, **kwargs), grads)
    expected = reference_directions(name, grads, normalization=normalization)
    for actual, reference in zip(updates, expected, strict=True):
        assert actual["empty"].shape == (0,) and actual["empty_matrix"].shape == (0, 3)
        assert actual["scalar"].shape == ()
        assert_tree_close(actual, reference, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (optax_dgrad.dgrad, {"learning_rate": -1e-3}, "learning_rate=-0.001"),
        (optax_dgrad.diffgrad, {"eps": -1.0}, "eps=-1.0"),
        (optax_dgrad.cos1, {"b1": 1.0}, "b1=1.0"),
        (optax_dgrad.cos2, {"b2": -0.1}, "b2=-0.1"),
        (optax_dgrad.scale_by_diffgrad, {"b2": 1.5}, "b2=1.5"),
        (optax_dgrad.cos1, {"period": 0}, "period=0"),
        (optax_dgrad.scale_by_cos2, {"period": 2.5}, "period=2.5"),
        (optax_dgrad.dgrad, {"normalization": "layer"}, "normalization='layer'"),
        (optax_dgrad.scale_by_dgrad, {"normalization": "tree "}, "normalization='tree '"),
        (optax_dgrad.diffgrad, {"weight_decay": -0.5}, "weight_decay=-0.5"),
        (optax_dgrad.cyclic_decay, {"step": 1, "period": -3}, "period=-3"),
        (optax_dgrad.cos1, {"period": 2**31}, "got period=2147483648"),
        (optax_dgrad.dgrad, {"eps": True}, "`eps` must be a number, got eps=True"),
        (optax_dgrad.cos2, {"period": True}, "`period` must be a number, got period=True"),
        (optax_dgrad.dgrad, {"nu_dtype": jnp.float16}, "`nu_dtype` float16 stores squared"),
    ],
)
def test_invalid_hyperparameters_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        factory(**kwargs)


def test_invalid_injected_hyperparameter_raises_at_init():
    optimizer = optax.inject_hyperparams(optax_dgrad.dgrad)(learning_rate=0.1, b1=1.2)
    with pytest.raises(ValueError, match="b1"):
        optimizer.init(jnp.ones(2))


# ---------------------------------------------------------------- the max of D per leaf


@pytest.mark.parametrize("name", FAMILY)
def test_max_of_d_over_leaves_of_every_shape(name):
    # max |g - v_t| is a two-operand reduction (so XLA:CPU need not store |g - v_t|), guarded
    # by a masked one for non-finite entries: 0-d, empty and 4-d leaves against the reference.
    shapes = {"scalar": (), "empty": (0,), "vector": (7,), "conv": (3, 3, 4, 5), "hole": (2, 0, 3)}
    grads = random_grads(3, np.float32, seed=3, shapes=shapes)
    updates, _ = run_scanned(scale_by(name), grads)
    for t, (actual, reference) in enumerate(
        zip(updates, reference_directions(name, grads), strict=True), start=1
    ):
        assert_tree_close(actual, reference, rtol=2e-5, atol=1e-6, what=f"{name} step {t}")


@pytest.mark.parametrize("name", FAMILY)
def test_a_leaf_of_only_non_finite_entries_leaves_the_tree_max_alone(name):
    grads = random_grads(3, np.float32, seed=7)
    grads[1]["vector"][:] = np.inf  # its max over finite entries is 0; the tree's is not
    updates, _ = run_scanned(scale_by(name, normalization="tree"), grads)
    expected = reference_directions(name, grads, normalization="tree")
    for t, (actual, reference) in enumerate(zip(updates, expected, strict=True), start=1):
        for k in ("scalar", "conv"):
            np.testing.assert_allclose(actual[k], reference[k], rtol=2e-5, atol=1e-6,
                                       err_msg=f"{name} step {t} {k}")  # fmt: skip


# ---------------------------------------------------------------- optax's common checks


@pytest.mark.parametrize("name", FAMILY)
def test_dgrad_family_state_is_adams(name):
    transform = scale_by(name)
    state = transform.init({"w": jnp.ones(3)})
    assert type(state) is optax.ScaleByAdamState
    assert optax_dgrad.DGradState is optax.ScaleByAdamState  # the old name keeps working
    _, state = transform.update({"w": jnp.array([1.0, -2.0, 0.5])}, state)
    assert int(optax.tree.get(state, "count")) == 1


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params(name):
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1, weight_decay=1e-4)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    state = optimizer.init(params)
    # A no-op map keeps the state; a map to per-parameter labels replaces every
    # params-shaped field (mu, nu, prev_grad) and leaves the count alone.
    same = optax.tree.map_params(optimizer, lambda v: v, state)
    assert jax.tree.structure(same) == jax.tree.structure(state)
    labels = optax.tree.map_params(
        optimizer, lambda v: f"{v.shape}", state, transform_non_params=lambda _: "other"
    )
    scale_state = labels[1]
    fields = ("mu", "nu", "prev_grad") if name == "diffgrad" else ("mu", "nu")
    for field in fields:
        assert getattr(scale_state, field) == {"w": "(2, 3)", "b": "(3,)"}, field
    assert scale_state.count == "other"


@pytest.mark.parametrize("name", NAMES)
def test_extra_update_arguments_as_in_optax(name):
    # As optax's aliases: the chained optimizer accepts and ignores keyword arguments meant
    # for other transforms, under jit; a bare scale_by_* rejects them, as
    # optax.scale_by_adam does.
    optimizer = getattr(optax_dgrad, name)(learning_rate=0.1)
    params = jnp.array([1.0, -2.0])
    state = optimizer.init(params)
    plain, _ = optimizer.update(params, state, params)
    extra, _ = jax.jit(
        lambda g, s, p: optimizer.update(g, s, p, unexpected_extra_arg=1)
    )(params, state, params)
    np.testing.assert_allclose(extra, plain, rtol=1e-6)
    transform = scale_by(name)
    with pytest.raises(TypeError, match="unexpected_extra_arg"):
        transform.update(params, transform.init(params), None, unexpected_extra_arg=1)
    adam = optax.scale_by_adam()
    with pytest.raises(TypeError, match="unexpected_extra_arg"):
        adam.update(params, adam.init(params), None, unexpected_extra_arg=1)


# ---------------------------------------------------------- donated step and prev_grad


def donated_step(optimizer):
    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def test_diffgrad_prev_grad_equals_the_received_gradient():
    # prev_grad is stored as g + 0 * u (u's non-finite entries masked): it must equal g
    # exactly, also where g or the update is not finite.
    optimizer = optax_dgrad.diffgrad(learning_rate=0.1)
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.zeros(())}
    state = optimizer.init(params)
    step = donated_step(optimizer)
    steps = [
        {"w": np.array([0.5, -1.0, 2.0, 0.0, 3e-3, -7.0], np.float32), "b": np.float32(1.0)},
        {"w": np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -2.0], np.float32),
         "b": np.float32(np.nan)},
        {"w": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32), "b": np.float32(-0.5)},
    ]
    for grads in steps:
        params, state = step(params, state, jax.tree.map(jnp.asarray, grads))
        for k in grads:
            np.testing.assert_array_equal(state[0].prev_grad[k], grads[k], err_msg=k)


def test_diffgrad_prev_grad_with_a_nan_update():
    # eps = 0 and a zero gradient give u = 0 / 0 = NaN (as in Adam); prev_grad is still g.
    transform = optax_dgrad.scale_by_diffgrad(eps=0.0)
    grads = jnp.array([0.0, 2.0])
    updates, state = jax.jit(transform.update)(grads, transform.init(grads))
    assert np.isnan(updates[0]) and np.isfinite(updates[1])
    np.testing.assert_array_equal(state.prev_grad, grads)


def test_diffgrad_donated_step_needs_no_scratch_copy():
    # Without the data dependence of prev_grad on the update, XLA:CPU copied the old
    # prev_grad to scratch memory (a whole tree's worth) on every donated step.
    optimizer = optax_dgrad.diffgrad(learning_rate=0.1)
    params = {"w": jnp.ones((256, 256)), "v": jnp.ones((128, 512))}
    state = optimizer.init(params)
    compiled = donated_step(optimizer).lower(params, state, params).compile()
    leaf_bytes = 256 * 256 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < leaf_bytes // 4


# ---------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize(("name", "normalization"), NAME_AND_NORMALIZATION)
def test_non_finite_entry_harms_only_itself(name, normalization):
    kwargs = {} if name == "diffgrad" else {"normalization": normalization}
    grads = random_grads(5, np.float32, seed=13)
    grads[1]["conv"][0, 0, 0, 0] = np.nan
    grads[2]["vector"][3] = np.inf
    grads[3]["scalar"] = np.float32(-np.inf)
    updates, _ = run_scanned(scale_by(name, **kwargs), grads)
    # The reference takes max D over the finite entries; every finite entry must match it.
    expected = reference_directions(name, grads, normalization=normalization)
    bad = {"conv": (0, 0, 0, 0), "vector": (3,), "scalar": ()}
    first_bad_step = {"conv": 1, "vector": 2, "scalar": 3}
    for t, (actual, reference) in enumerate(zip(updates, expected, strict=True)):
        for k in SHAPES:
            a, r = np.asarray(actual[k], np.float64), reference[k]
            if t >= first_bad_step[k]:
                assert np.isnan(a[bad[k]]), (name, t, k)  # the entry itself is lost, as in Adam
                mask = np.ones(a.shape, bool)
                mask[bad[k]] = False
                a, r = a[mask], r[mask]
            np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-6, err_msg=f"{name} {t} {k}")
    if name != "diffgrad":
        # Not sigmoid(0) = 0.5 for the rest of the leaf: the friction still varies with D.
        last = np.asarray(updates[-1]["conv"]).ravel()[1:]
        adam = reference_directions("adam", grads)[-1]["conv"].ravel()[1:]
        friction = last / adam
        assert friction.max() - friction.min() > 0.05, friction


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64, jnp.bool_])
def test_non_float_parameters_raise_type_error(name, dtype):
    params = {"w": jnp.ones(3), "layer": {"kernel": jnp.ones((2, 2), dtype)}}
    dtype_name = np.dtype(dtype).name
    for optimizer in (getattr(optax_dgrad, name)(0.1), scale_by(name)):
        with pytest.raises(TypeError, match=rf"\['layer'\]\['kernel'\] has dtype {dtype_name}"):
            optimizer.init(params)
    transform = scale_by(name)
    state = transform.init({"w": jnp.ones(3)})
    with pytest.raises(TypeError, match=rf"gradient leaf \['w'\] has dtype {dtype_name}"):
        transform.update({"w": jnp.ones(3, dtype)}, state)


# ---------------------------------------------------------- non-finite hyperparameters


HYPERPARAMETERS = ("learning_rate", "b1", "b2", "eps", "weight_decay")
NAME_AND_HYPERPARAMETER = [(name, argument) for name in NAMES for argument in HYPERPARAMETERS] + [
    (name, "period") for name in ("cos1", "cos2")
]


@pytest.mark.parametrize(("name", "argument"), NAME_AND_HYPERPARAMETER)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_hyperparameters_raise(name, argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}` must be finite, got {argument}="):
        getattr(optax_dgrad, name)(**{argument: value})
    if argument not in ("learning_rate", "weight_decay"):
        with pytest.raises(ValueError, match=rf"`{argument}` must be finite"):
            scale_by(name, **{argument: value})


def test_non_finite_cyclic_period_raises():
    with pytest.raises(ValueError, match="`period` must be finite, got period=inf"):
        optax_dgrad.cyclic_decay(3, period=float("inf"))


@pytest.mark.parametrize("name", NAMES)
def test_injected_hyperparameters_checked_at_init_traced_unchecked(name):
    optimizer = optax.inject_hyperparams(getattr(optax_dgrad, name))(learning_rate=np.inf)
    with pytest.raises(ValueError, match="`learning_rate` must be finite"):
        optimizer.init(jnp.ones(2))
    # Inside jit the injected value is traced: the update runs with it, unchecked.
    optimizer = optax.inject_hyperparams(getattr(optax_dgrad, name))(learning_rate=0.1)
    state = optimizer.init(jnp.ones(2))
    state.hyperparams["learning_rate"] = jnp.asarray(np.inf)
    updates, _ = jax.jit(optimizer.update)(jnp.array([1.0, -1.0]), state, jnp.ones(2))
    assert np.all(np.isinf(updates))
