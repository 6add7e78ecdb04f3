"""models.resnet and models.get_model: architecture, modes, dtypes and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import get_model
from models.resnet import BATCH_NORM_MOMENTUM, ResNet50, ResNetTiny


def _abstract_variables(model, image_size=224, channels=3):
    images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _equations(jaxpr):
    """All equations of a jaxpr, including those of nested jaxprs (pjit, custom_jvp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _eval_equations(model, image_size=224):
    variables = _abstract_variables(model, image_size)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return list(_equations(closed.jaxpr))


# Parameter counts of torchvision's models (torchvision.models documentation).
@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ],
)
@pytest.mark.parametrize("stride_placement", ["v1", "v1.5"])
def test_parameter_counts_match_torchvision(name, expected, stride_placement):
    model = get_model(name, num_classes=1000, stride_placement=stride_placement)
    variables = _abstract_variables(model)
    assert _count(variables["params"]) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_resnet50_batch_norm_statistics_count():
    # 53 BatchNorms; their channels: stem 64, and per stage (blocks x (f + f + 4f)) + 4f
    # for the projection, f = 64, 128, 256, 512; two statistics (mean, var) each.
    channels = 64 + sum(
        n * 6 * f + 4 * f for n, f in zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)
    )
    variables = _abstract_variables(ResNet50(num_classes=1000))
    assert _count(variables["batch_stats"]) == 2 * channels == 53_120


def test_resnet50_has_53_convolutions_one_max_pool_one_average_pool():
    equations = _eval_equations(ResNet50(num_classes=1000))
    primitives = [eqn.primitive.name for eqn in equations]
    assert primitives.count("conv_general_dilated") == 53
    assert primitives.count("reduce_window_max") == 1
    # In eval mode BatchNorm reduces nothing, so the only sum is the global average pool.
    sums = [eqn for eqn in equations if eqn.primitive.name == "reduce_sum"]
    assert len(sums) == 1 and sums[0].params["axes"] == (1, 2)
    assert sums[0].invars[0].aval.shape == (1, 7, 7, 2048)
    params = _abstract_variables(ResNet50(num_classes=1000))["params"]
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 4]
    projections = [block for block in params.values() if "shortcut_conv" in block]
    assert (len(kernels), len(projections)) == (53, 4)


@pytest.mark.parametrize(
    "stride_placement, strided_kernels",
    [
        # v1: the stem, then each down-sampling block's first 1x1 and its projection.
        ("v1", [(7, 7), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1)]),
        # v1.5: the stem, then each down-sampling block's 3x3 and its projection.
        ("v1.5", [(7, 7), (3, 3), (1, 1), (3, 3), (1, 1), (3, 3), (1, 1)]),
    ],
)
def test_stride_placement_moves_the_stride(stride_placement, strided_kernels):
    model = ResNet50(num_classes=10, stride_placement=stride_placement)
    convs = [e for e in _eval_equations(model, 64) if e.primitive.name == "conv_general_dilated"]
    strided = [
        tuple(e.invars[1].aval.shape[:2]) for e in convs if e.params["window_strides"] == (2, 2)
    ]
    assert strided == strided_kernels


def test_small_input_stem_keeps_resolution():
    model = get_model("resnet18_small", num_classes=10)
    equations = _eval_equations(model, 32)
    assert "reduce_window_max" not in [e.primitive.name for e in equations]
    sums = [e for e in equations if e.primitive.name == "reduce_sum"]
    # 32 px, stride 1 stem, three stride-2 stages: 4x4 before the average pool.
    assert sums[0].invars[0].aval.shape == (1, 4, 4, 128)


def _stem_batch_norm_reference(images, kernel):
    """NumPy: a 3x3 stride-1 convolution with padding 1, then per-channel batch statistics."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = images.shape[1:3]
    out = sum(
        np.einsum("bhwc,cf->bhwf", padded[:, dy : dy + height, dx : dx + width], kernel[dy, dx])
        for dy in range(3)
        for dx in range(3)
    )
    return out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))


def test_training_updates_batch_stats_with_momentum():
    model = ResNetTiny(num_classes=4)
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), images)
    _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    mean, var = _stem_batch_norm_reference(
        images.astype(np.float64), np.asarray(variables["params"]["stem_conv"]["kernel"])
    )
    new_stats = updates["batch_stats"]["stem_bn"]
    # Running averages start at mean 0, var 1.
    np.testing.assert_allclose(new_stats["mean"], (1 - BATCH_NORM_MOMENTUM) * mean, atol=1e-5)
    np.testing.assert_allclose(
        new_stats["var"], BATCH_NORM_MOMENTUM + (1 - BATCH_NORM_MOMENTUM) * var, rtol=1e-5
    )
    changed = jax.tree.map(
        lambda old, new: not np.allclose(old, new), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))


def test_eval_uses_running_averages_and_is_deterministic():
    model = ResNetTiny(num_classes=4)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), images)
    random_stats = {
        "mean": lambda n: rng.normal(0, 0.1, n),
        "var": lambda n: rng.uniform(0.5, 2, n),
    }
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(random_stats[path[-1].key](s.shape), jnp.float32),
        variables["batch_stats"],
    )
    variables = {"params": variables["params"], "batch_stats": batch_stats}
    batch = model.apply(variables, images, train=False)
    assert np.abs(batch).min() > 1e-3
    again = model.apply(variables, images, train=False)
    np.testing.assert_array_equal(batch, again)
    # With running averages an image's logits do not depend on the rest of the batch.
    alone = model.apply(variables, images[:1], train=False)
    np.testing.assert_allclose(alone[0], batch[0], rtol=1e-5, atol=1e-6)
    # In training mode they do (batch statistics), and they differ from eval mode.
    train_batch, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    train_pair, _ = model.apply(variables, images[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(train_batch[0], train_pair[0], atol=1e-4)
    assert not np.allclose(train_batch, batch, atol=1e-4)
    # Changing the running averages changes eval logits: they are really used.
    shifted = {**variables, "batch_stats": jax.tree.map(lambda s: s * 1.5, batch_stats)}
    assert not np.allclose(model.apply(shifted, images, train=False), batch, atol=1e-4)


def test_bfloat16_computation_keeps_float32_params_and_logits():
    images = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    model32 = get_model("resnet_tiny", num_classes=5)
    model16 = get_model("resnet_tiny", num_classes=5, dtype=jnp.bfloat16)
    variables = model16.init(jax.random.key(0), images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits16 = model16.apply(variables, images, train=False)
    logits32 = model32.apply(variables, images, train=False)
    assert logits16.dtype == jnp.float32
    assert not np.array_equal(logits16, logits32)  # really computed in bfloat16
    np.testing.assert_allclose(logits16, logits32, atol=0.1 * float(np.abs(logits32).max()))


def test_any_number_of_input_channels_and_classes():
    model = get_model("resnet_tiny", num_classes=7)
    images = jnp.ones((2, 12, 12, 1))
    variables = model.init(jax.random.key(0), images)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 1, 8)
    assert model.apply(variables, images).shape == (2, 7)


def test_wrong_rank_channels_and_dtype_raise_clear_errors():
    model = get_model("resnet_tiny", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\].*\(2, 8, 8, 1\)"):
        model.apply(variables, jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\].*\(8, 8, 3\)"):
        model.apply(variables, jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        model.apply(variables, jnp.zeros((1, 8, 8, 3), jnp.uint8))
    with pytest.raises(ValueError, match="stride_placement.*'v2'"):
        get_model("resnet_tiny", num_classes=3, stride_placement="v2").init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 3))
        )


def test_get_model_names_and_errors():
    assert set(models.MODEL_NAMES) >= {"resnet18", "resnet50", "resnet18_small", "resnet_tiny"}
    model = get_model("resnet101", num_classes=3, stride_placement="v1.5", small_inputs=True)
    assert (model.stage_sizes, model.num_classes) == ([3, 4, 23, 3], 3)
    assert (model.stride_placement, model.small_inputs) == ("v1.5", True)
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50.*resnet_tiny"):
        get_model("resnet51", num_classes=3)
    with pytest.raises(ValueError, match=r"unknown ResNet attribute.*\['width'\]"):
        get_model("resnet50", num_classes=3, width=2)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        get_model("resnet50", num_classes=0)
