"""On-device image augmentation, per ensemble member, inside the train step.

The paper (following MATLAB's ``imageDataAugmenter``) augments each training image with a
random horizontal and a random vertical reflection and independent random x and y scale
factors drawn from [1, 2]: the image is magnified about its centre and the view of the
network input's size is kept. Everything here runs inside the jitted train step on uint8
images already on the device, so no host round trip is paid per batch.

The input normalisation that follows augmentation belongs to the weights, not to the
augmentation: see ``models.pretrained.preprocessing_for`` and ``Normalization``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AugmentConfig(NamedTuple):
    """What to draw for each training image.

    Attributes:
      reflect: random horizontal and vertical reflections, each with probability 1/2.
      min_scale: lower bound of the x and y magnification factors (1 = no magnification).
      max_scale: upper bound of the factors; the paper uses [1, 2].
    """

    reflect: bool = True
    min_scale: float = 1.0
    max_scale: float = 2.0


PAPER_AUGMENTATION = AugmentConfig(reflect=True, min_scale=1.0, max_scale=2.0)
NO_AUGMENTATION = AugmentConfig(reflect=False, min_scale=1.0, max_scale=1.0)
# The presets ``TrainConfig.augment`` names.
AUGMENTATIONS = {
    "paper": PAPER_AUGMENTATION,
    "none": NO_AUGMENTATION,
    "scale": AugmentConfig(reflect=False, min_scale=1.0, max_scale=2.0),
}


def _resample(image: jax.Array, output_size: int, scale_yx: jax.Array) -> jax.Array:
    """Magnifies ``image`` [H, W, C] by ``scale_yx`` about its centre into a square view.

    The input-to-output map is ``out = in * s + t`` with ``s = scale * output / input`` and
    ``t`` chosen so the image centre maps to the view centre.
    """
    in_size = jnp.array(image.shape[:2], jnp.float32)
    scale = scale_yx * output_size / in_size
    translation = output_size / 2.0 - scale * in_size / 2.0
    return jax.image.scale_and_translate(
        image,
        (output_size, output_size, image.shape[2]),
        (0, 1),
        scale,
        translation,
        method="linear",
        antialias=True,
    )


def resize_images(images: jax.Array, output_size: int) -> jax.Array:
    """Resizes uint8 images [B, H, W, C] to float32 [B, S, S, C] in [0, 1], no augmentation."""
    images = images.astype(jnp.float32) / 255.0
    if images.shape[1:3] == (output_size, output_size):
        return images
    return jax.image.resize(
        images, (images.shape[0], output_size, output_size, images.shape[3]), "linear"
    )


def augment_images(
    key: jax.Array, images: jax.Array, output_size: int, config: AugmentConfig = PAPER_AUGMENTATION
) -> jax.Array:
    """Draws one random augmentation per image and returns float32 views in [0, 1].

    Args:
      key: a ``jax.random`` key; the same key gives the same augmentation.
      images: uint8 images [B, H, W, C].
      output_size: side of the square output view (the model input).
      config: the augmentation to draw.

    Returns:
      float32 images [B, output_size, output_size, C] with values in [0, 1].

    Example:
      >>> import jax, jax.numpy as jnp
      >>> batch = jnp.zeros((2, 32, 32, 3), jnp.uint8)
      >>> augment_images(jax.random.key(0), batch, 28).shape
      (2, 28, 28, 3)
    """
    if not 0 < config.min_scale <= config.max_scale:
        raise ValueError(
            f"augmentation scales must satisfy 0 < min_scale <= max_scale, got "
            f"[{config.min_scale}, {config.max_scale}]"
        )
    if config == NO_AUGMENTATION:
        return resize_images(images, output_size)
    batch = images.shape[0]
    reflect_key, scale_key = jax.random.split(key)
    images = images.astype(jnp.float32) / 255.0
    if config.reflect:
        flip_y, flip_x = jnp.moveaxis(jax.random.bernoulli(reflect_key, 0.5, (batch, 2)), 1, 0)
        images = jnp.where(flip_y[:, None, None, None], images[:, ::-1], images)
        images = jnp.where(flip_x[:, None, None, None], images[:, :, ::-1], images)
    scales = jax.random.uniform(
        scale_key, (batch, 2), minval=config.min_scale, maxval=config.max_scale
    )
    return jax.vmap(_resample, in_axes=(0, None, 0))(images, output_size, scales)
