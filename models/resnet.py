"""ResNet (He et al., 2016) as Flax linen modules.

The paper this project reproduces fine-tunes ResNet50. Two placements of the
down-sampling stride exist in the wild and both are built here:

* ``"v1"``: the original model (Caffe, MATLAB, Keras): a down-sampling bottleneck
  strides its first 1x1 convolution.
* ``"v1.5"``: torchvision's and timm's model: the stride sits on the 3x3 convolution,
  which costs a little more compute and is slightly more accurate.

The two have identical parameter shapes, so weights load into either; they compute
different functions, so load weights into the placement they were trained with.

Variables: ``{"params", "batch_stats"}``. Parameters are always float32; ``dtype`` is
the computation dtype (bfloat16 on accelerators), and logits are returned as float32.

Example:

    >>> import jax, jax.numpy as jnp
    >>> from models.resnet import ResNetTiny
    >>> model = ResNetTiny(num_classes=3)
    >>> images = jnp.zeros((2, 16, 16, 3))
    >>> variables = model.init(jax.random.key(0), images, train=False)
    >>> logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    >>> logits.shape
    (2, 3)

References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
    (arXiv 1512.03385).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

STRIDE_PLACEMENTS = ("v1", "v1.5")

# torchvision's initialisation: He-normal over the fan-out, for ReLU networks.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# torchvision's BatchNorm: running averages keep 90% of the old value per step.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
    # Explicit symmetric padding, as torchvision and Keras pad: Flax's "SAME" pads a
    # stride-2 convolution of an even-sized input on the bottom/right only.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
        name=name,
    )


def _batch_norm(train: bool, dtype: Any, name: str, axis_name: str | None) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        axis_name=axis_name,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet18 and ResNet34).

    Attributes:
        filters: output channels.
        strides: stride of the first convolution (and of the projection shortcut).
        stride_placement: ignored (a basic block has one place for the stride); present
            so that all blocks share one constructor.
        dtype: computation dtype.
        batch_norm_axis: see ``ResNet``.
    """

    filters: int
    strides: int = 1
    stride_placement: str = "v1"
    dtype: Any = jnp.float32
    batch_norm_axis: str | None = None

    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        shortcut = x
        y = _conv(self.filters, 3, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1", self.batch_norm_axis)(y))
        y = _conv(self.filters, 3, 1, self.dtype, "conv2")(y)
        y = _batch_norm(train, self.dtype, "bn2", self.batch_norm_axis)(y)
        if self.strides != 1 or x.shape[-1] != self.filters:
            shortcut = _conv(self.filters, 1, self.strides, self.dtype, "shortcut_conv")(x)
            shortcut = _batch_norm(train, self.dtype, "shortcut_bn", self.batch_norm_axis)(shortcut)
        return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), and a shortcut (ResNet50 and deeper).

    Attributes:
        filters: channels of the inner convolutions; the block outputs ``4 * filters``.
        strides: down-sampling stride of the block (1 or 2).
        stride_placement: ``"v1"`` strides the first 1x1 convolution, ``"v1.5"`` the 3x3.
        dtype: computation dtype.
        batch_norm_axis: see ``ResNet``.
    """

    filters: int
    strides: int = 1
    stride_placement: str = "v1"
    dtype: Any = jnp.float32
    batch_norm_axis: str | None = None

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out_filters = self.filters * self.expansion
        strides_1x1, strides_3x3 = (
            (self.strides, 1) if self.stride_placement == "v1" else (1, self.strides)
        )
        shortcut = x
        y = _conv(self.filters, 1, strides_1x1, self.dtype, "conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1", self.batch_norm_axis)(y))
        y = _conv(self.filters, 3, strides_3x3, self.dtype, "conv2")(y)
        y = nn.relu(_batch_norm(train, self.dtype, "bn2", self.batch_norm_axis)(y))
        y = _conv(out_filters, 1, 1, self.dtype, "conv3")(y)
        y = _batch_norm(train, self.dtype, "bn3", self.batch_norm_axis)(y)
        if self.strides != 1 or x.shape[-1] != out_filters:
            shortcut = _conv(out_filters, 1, self.strides, self.dtype, "shortcut_conv")(x)
            shortcut = _batch_norm(train, self.dtype, "shortcut_bn", self.batch_norm_axis)(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet classifier: stem, stages of residual blocks, global average pool, dense head.

    Stage ``i`` (0-based) has ``stage_sizes[i]`` blocks of ``num_filters * 2**i`` filters;
    every stage but the first halves the resolution in its first block. The ImageNet stem
    is a 7x7 stride-2 convolution and a 3x3 stride-2 max pool (224 px -> 56 px); with
    ``small_inputs`` it is a 3x3 stride-1 convolution without pooling, for 8-32 px images.

    Parameter names: ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}`` (1-based) holding
    ``conv1``, ``bn1``, ... and ``shortcut_conv``/``shortcut_bn`` where the shortcut is a
    projection, and ``head`` (the classifier). ``models.pretrained`` maps these names to
    torchvision's and Keras' layouts.

    Attributes:
        stage_sizes: number of blocks per stage, e.g. ``[3, 4, 6, 3]`` for ResNet50.
        block_cls: ``BasicBlock`` or ``BottleneckBlock``.
        num_classes: size of the logits.
        num_filters: filters of the stem and of the first stage.
        stride_placement: ``"v1"`` or ``"v1.5"``, see the module docstring.
        small_inputs: use the small-image stem (3x3 stride 1, no max pool).
        dtype: computation dtype; parameters are float32 and logits are cast to float32.
        batch_norm_axis: a named axis (of ``jax.shard_map`` or ``vmap``) over which one
            batch is split; BatchNorm then averages its batch statistics over that axis, so
            they are the statistics of the whole batch. None: the batch is local.

    Call:
        ``model.apply(variables, images, train=...)`` with ``images`` a float array
        ``[batch, height, width, channels]``; pass ``mutable=["batch_stats"]`` when
        ``train=True``. The channel count is fixed by the images given to ``init``.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    num_filters: int = 64
    stride_placement: str = "v1"
    small_inputs: bool = False
    dtype: Any = jnp.float32
    batch_norm_axis: str | None = None

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        self._check_inputs(images)
        x = jnp.asarray(images, self.dtype)
        if self.small_inputs:
            x = _conv(self.num_filters, 3, 1, self.dtype, "stem_conv")(x)
            x = nn.relu(_batch_norm(train, self.dtype, "stem_bn", self.batch_norm_axis)(x))
        else:
            x = _conv(self.num_filters, 7, 2, self.dtype, "stem_conv")(x)
            x = nn.relu(_batch_norm(train, self.dtype, "stem_bn", self.batch_norm_axis)(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = self.block_cls(
                    filters=self.num_filters * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    stride_placement=self.stride_placement,
                    dtype=self.dtype,
                    batch_norm_axis=self.batch_norm_axis,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return jnp.asarray(x, jnp.float32)

    def _check_inputs(self, images: jnp.ndarray) -> None:
        if self.stride_placement not in STRIDE_PLACEMENTS:
            raise ValueError(
                f"stride_placement must be one of {STRIDE_PLACEMENTS}, "
                f"got {self.stride_placement!r}"
            )
        if images.ndim != 4:
            raise ValueError(
                f"expected images [batch, height, width, channels], got shape {tuple(images.shape)}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"expected floating-point images (normalise integer pixels first), got dtype "
                f"{images.dtype}"
            )
        if self.is_initializing():
            return
        # Flax's own shape mismatch error names the convolution kernel, not the input.
        stem_kernel = self.variables.get("params", {}).get("stem_conv", {}).get("kernel")
        if stem_kernel is not None and stem_kernel.shape[2] != images.shape[-1]:
            raise ValueError(
                f"expected images [batch, height, width, {stem_kernel.shape[2]}] (the channel "
                f"count the model was initialised with), got shape {tuple(images.shape)}"
            )


ResNet18 = partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckBlock)
ResNet101 = partial(ResNet, stage_sizes=[3, 4, 23, 3], block_cls=BottleneckBlock)
ResNet152 = partial(ResNet, stage_sizes=[3, 8, 36, 3], block_cls=BottleneckBlock)

# Small models for 8-32 px images: the CPU demo and the tests.
ResNet18Small = partial(
    ResNet, stage_sizes=[2, 2, 2, 2], block_cls=BasicBlock, num_filters=16, small_inputs=True
)
ResNet50Small = partial(
    ResNet,
    stage_sizes=[3, 4, 6, 3],
    block_cls=BottleneckBlock,
    num_filters=16,
    small_inputs=True,
)
ResNetTiny = partial(
    ResNet, stage_sizes=[1, 1], block_cls=BasicBlock, num_filters=8, small_inputs=True
)
