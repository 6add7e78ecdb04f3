"""On-device augmentation against NumPy expectations written from the geometry."""

import jax
import numpy as np
import pytest

from training import AugmentConfig, augment_images
from training.augment import NO_AUGMENTATION


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


def grid_images(count, size=16):
    """Channel 0 rises along x, channel 1 along y, channel 2 with both: every flip shows."""
    rows, columns = np.mgrid[0:size, 0:size]
    image = np.stack([10 * columns, 10 * rows, 5 * columns + 10 * rows], axis=-1)
    return np.broadcast_to(image.astype(np.uint8), (count, size, size, 3)).copy()


def test_all_four_reflections_are_drawn_per_image_and_per_key():
    images = grid_images(64)
    config = AugmentConfig(reflect=True, min_scale=1.0, max_scale=1.0)
    out = np.asarray(augment_images(jax.random.key(3), images, 16, config))
    image = images[0] / 255.0
    outcomes = {
        "plain": image,
        "x": image[:, ::-1],
        "y": image[::-1],
        "both": image[::-1, ::-1],
    }
    counts = {
        name: int(np.isclose(out, view, atol=1e-6).all(axis=(1, 2, 3)).sum())
        for name, view in outcomes.items()
    }
    assert sum(counts.values()) == 64, counts  # every output is one of the four
    assert all(count >= 6 for count in counts.values()), counts  # about 16 each
    again = np.asarray(augment_images(jax.random.key(3), images, 16, config))
    np.testing.assert_array_equal(out, again)
    other = np.asarray(augment_images(jax.random.key(4), images, 16, config))
    assert not np.array_equal(out, other)


def test_scales_are_drawn_per_image_and_per_axis_in_range():
    size, count = 16, 32
    config = AugmentConfig(reflect=False, min_scale=1.0, max_scale=2.0)
    out = np.asarray(augment_images(jax.random.key(5), grid_images(count, size), size, config))
    # Away from the borders the ramps stay linear; a magnification s divides their slope
    # of 10 grey levels per pixel by s.
    centre = slice(size // 2 - 2, size // 2 + 2)
    slope_x = np.diff(out[:, centre, centre, 0], axis=2).mean(axis=(1, 2)) * 255
    slope_y = np.diff(out[:, centre, centre, 1], axis=1).mean(axis=(1, 2)) * 255
    scale_x, scale_y = 10 / slope_x, 10 / slope_y
    assert ((scale_x > 1 - 1e-3) & (scale_x < 2 + 1e-3)).all()
    assert ((scale_y > 1 - 1e-3) & (scale_y < 2 + 1e-3)).all()
    assert np.unique(np.round(scale_x, 3)).size > count // 2  # drawn per image
    assert np.abs(scale_x - scale_y).max() > 0.2  # drawn per axis
    # The magnification is about the centre: the centre pixel keeps its value.
    centre_value = (10 * (size / 2 - 0.5)) / 255
    np.testing.assert_allclose(
        out[:, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1, 0].mean(axis=(1, 2)),
        centre_value,
        atol=1e-4,
    )


def test_invalid_scales_are_rejected():
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        augment_images(jax.random.key(0), grid_images(1), 16, AugmentConfig(True, 2.0, 1.0))


def test_output_size_and_range():
    images = np.random.default_rng(2).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    out = np.asarray(augment_images(jax.random.key(1), images, 16))
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.float32
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
