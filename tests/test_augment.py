"""On-device augmentation against NumPy expectations written from the geometry."""

import jax
import numpy as np

from data.augment import NO_AUGMENTATION, AugmentConfig, augment_images, normalize


def ramp_images(count=4, size=16):
    """Images whose value is 10 * column: a magnification is easy to predict."""
    columns = 10 * np.arange(size, dtype=np.uint8)
    return np.broadcast_to(columns[None, None, :, None], (count, size, size, 3)).copy()


def test_no_augmentation_is_the_identity():
    images = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    out = augment_images(jax.random.key(0), images, 12, NO_AUGMENTATION)
    np.testing.assert_allclose(np.asarray(out), images / 255.0, atol=1e-6)


def test_unit_scale_without_reflection_is_the_identity():
    images = np.random.default_rng(1).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    config = AugmentConfig(reflect=False, min_scale=1.0, max_scale=1.0)
    out = augment_images(jax.random.key(0), images, 12, config)
    np.testing.assert_allclose(np.asarray(out), images / 255.0, atol=1e-6)


def test_magnification_about_the_centre():
    size, scale = 16, 2.0
    config = AugmentConfig(reflect=False, min_scale=scale, max_scale=scale)
    out = np.asarray(augment_images(jax.random.key(0), ramp_images(size=size), size, config))
    # Output pixel centre j + 1/2 comes from input position (j + 1/2 - size/2) / scale +
    # size/2; the ramp's value at input position u (in pixel-centre units, u - 1/2) is 10u.
    source = (np.arange(size) + 0.5 - size / 2) / scale + size / 2 - 0.5
    np.testing.assert_allclose(out[0, 5, :, 0], 10 * source / 255.0, atol=1e-5)
    np.testing.assert_allclose(out, np.broadcast_to(out[:1, :1], out.shape), atol=1e-6)


def test_reflections_and_scales_are_drawn_per_image_and_per_key():
    images = ramp_images(count=32)
    config = AugmentConfig(reflect=True, min_scale=1.0, max_scale=1.0)
    out = np.asarray(augment_images(jax.random.key(3), images, 16, config))
    plain, mirrored = images[0] / 255.0, images[0, :, ::-1] / 255.0
    is_plain = np.isclose(out, plain, atol=1e-6).all(axis=(1, 2, 3))
    is_mirrored = np.isclose(out, mirrored, atol=1e-6).all(axis=(1, 2, 3))
    assert (is_plain | is_mirrored).all()
    assert 4 < is_mirrored.sum() < 28  # about half of 32 images, per image draws
    again = np.asarray(augment_images(jax.random.key(3), images, 16, config))
    np.testing.assert_array_equal(out, again)
    other = np.asarray(augment_images(jax.random.key(4), images, 16, config))
    assert not np.array_equal(out, other)


def test_output_size_and_range():
    images = np.random.default_rng(2).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    out = np.asarray(augment_images(jax.random.key(1), images, 16))
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.float32
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_normalize():
    x = np.full((1, 2, 2, 3), 0.5, np.float32)
    out = np.asarray(normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 2.0)))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.5, 0.25])
