"""The input normalisation that ImageNet weights imply, and its type.

Weights are trained on inputs normalised one particular way; fine-tuning must feed the
same. torchvision and timm normalise RGB in [0, 1] with ImageNet's per-channel mean and
standard deviation. Keras' ImageNet ResNets use "caffe" preprocessing: BGR in [0, 255]
minus a per-channel mean, no division. A model trained from scratch gets ImageNet's
statistics too: they never come from the data set, so no test image influences training.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Per-channel statistics of ImageNet, RGB, for images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras' "caffe" mean, BGR order, in [0, 255] units divided by 255 (inputs here are in [0, 1]).
KERAS_IMAGENET_MEAN_BGR = (103.939 / 255, 116.779 / 255, 123.68 / 255)


class Normalization(NamedTuple):
    """The input normalisation a model expects, applied to float RGB images in [0, 1].

    A NamedTuple of tuples: hashable, so it can be part of a compile-cache key, and
    applied inside a jitted step.

    Attributes:
      mean: per-channel mean, subtracted after any channel reversal.
      std: per-channel divisor.
      reverse_channels: feed BGR instead of RGB (Keras' "caffe" ImageNet weights).

    Example:
      >>> import jax.numpy as jnp
      >>> Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).apply(jnp.ones((1, 1, 1, 3)))
      Array([[[[2., 2., 2.]]]], dtype=float32)
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    reverse_channels: bool = False

    def apply(self, images: jax.Array) -> jax.Array:
        """``(x - mean) / std`` per channel, ``x`` the images (channels reversed if asked)."""
        if self.reverse_channels:
            images = images[..., ::-1]
        return (images - jnp.asarray(self.mean, images.dtype)) / jnp.asarray(self.std, images.dtype)


# torchvision and timm weights, and no weights at all.
IMAGENET_NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD)
# Keras' "caffe" preprocessing: x * 255 - mean_bgr on BGR = (x - mean_bgr / 255) / (1 / 255).
KERAS_CAFFE_NORMALIZATION = Normalization(
    KERAS_IMAGENET_MEAN_BGR, (1 / 255,) * 3, reverse_channels=True
)
