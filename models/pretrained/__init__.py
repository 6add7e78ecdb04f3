"""ImageNet weights for ``models.resnet``: torchvision/timm and Keras files.

Every loader takes the variables of a *freshly initialised* model and returns a copy in
which every convolution and BatchNorm comes from the file. The classifier head is kept
as initialised (the task has its own classes, as in the paper) unless
``include_head=True``. The file must match the model exactly: missing, extra or
mis-shaped tensors raise one ``ValueError`` that lists all of them, and nothing is
returned half-loaded.

This package owns the weight file's format and the input normalisation that follows from
it: :func:`weight_format` reads the format from the file's bytes, :func:`preprocessing_for`
gives the :class:`Normalization` the weights were trained with, :func:`check_pretrained`
checks a file against a model's variable shapes without loading it (so a bad file is
refused before anything is written), and :func:`load_pretrained` loads it.

Modules: ``formats`` (format detection), ``preprocessing`` (``Normalization`` and the
ImageNet statistics), ``torchvision`` and ``keras`` (the two families of files and their
conversions), ``core`` (layer names, conversion targets, the checks they share).

Stride placement: torchvision and timm weights were trained with the ``"v1.5"``
placement, Keras weights with ``"v1"``. Parameter shapes do not tell them apart, so
pass ``stride_placement=model.stride_placement`` to have the loader check it. Models of
basic blocks only (ResNet18/34) have no stride placement and accept either.

Example:

  >>> import jax, jax.numpy as jnp
  >>> from models import get_model
  >>> from models.pretrained import load_pretrained
  >>> model = get_model("resnet50", num_classes=3, stride_placement="v1.5")
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  >>> variables = load_pretrained(
  ...     "resnet50.safetensors", variables, stride_placement=model.stride_placement
  ... )  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from models.pretrained import keras, torchvision
from models.pretrained.formats import PathLike, unknown_format_error, weight_format
from models.pretrained.keras import (
    KERAS_BATCH_NORM_EPSILON,
    KERAS_LEGACY_BATCH_NORM_EPSILON,
    KERAS_STRIDE_PLACEMENT,
    load_keras_h5_weights,
)
from models.pretrained.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_NORMALIZATION,
    IMAGENET_STD,
    KERAS_CAFFE_NORMALIZATION,
    KERAS_IMAGENET_MEAN_BGR,
    Normalization,
)
from models.pretrained.torchvision import TORCHVISION_STRIDE_PLACEMENT, load_torchvision_weights


def preprocessing_for(path: PathLike | None) -> Normalization:
    """The input normalisation the weights in ``path`` were trained with.

    Args:
      path: a weight file, or None for a model trained from scratch.

    Returns:
      ``KERAS_CAFFE_NORMALIZATION`` (BGR in [0, 255] minus Keras' mean) for a Keras HDF5
      file; ``IMAGENET_NORMALIZATION`` (RGB in [0, 1], ImageNet mean and std) for
      torchvision/timm files and for no weights: the statistics never come from the data
      set, so no test image influences training.

    Raises:
      ValueError: the file does not exist or is of no supported format.

    Example:
      >>> from models.pretrained import preprocessing_for
      >>> preprocessing_for(None).mean
      (0.485, 0.456, 0.406)
    """
    if path is None:
        return IMAGENET_NORMALIZATION
    kind = weight_format(path)
    if kind == "hdf5":
        return KERAS_CAFFE_NORMALIZATION
    if kind in ("safetensors", "torch"):
        return IMAGENET_NORMALIZATION
    raise unknown_format_error(path)


def check_pretrained(
    path: PathLike,
    variables: Mapping[str, Any],
    *,
    stride_placement: str | None = None,
    include_head: bool = False,
) -> None:
    """Checks that ``load_pretrained(path, variables, ...)`` would succeed, loading nothing.

    Reads the file and compares every tensor's name and shape with the model's; only
    shapes are needed, so ``variables`` may be ``jax.eval_shape(model.init, ...)``.

    Args:
      path: the weight file.
      variables: ``{"params", "batch_stats"}`` of the model, arrays or
        ``jax.ShapeDtypeStruct`` leaves.
      stride_placement: the model's ``stride_placement``, checked against the file's.
      include_head: whether the file's classifier will be loaded too.

    Raises:
      ValueError: naming the file and the problem: it does not exist, cannot be read, is
        of no supported format, needs torch which is not installed, does not fit the model
        (every offending tensor listed) or was trained with the other stride placement.
    """
    kind = weight_format(path)
    try:
        if kind == "hdf5":
            keras.prepare(path, variables, stride_placement, include_head, keras_epsilon=None)
        elif kind in ("safetensors", "torch"):
            torchvision.prepare(path, variables, kind, stride_placement, include_head)
        else:
            raise unknown_format_error(path)
    except ImportError as error:
        raise ValueError(str(error)) from error


def load_pretrained(
    path: PathLike,
    variables: Mapping[str, Any],
    *,
    stride_placement: str | None = None,
    include_head: bool = False,
) -> dict[str, Any]:
    """Loads ImageNet weights from ``path``, whichever supported format it is.

    HDF5 files go to ``load_keras_h5_weights``; safetensors and PyTorch files to
    ``load_torchvision_weights``. The format is read from the file's bytes
    (:func:`weight_format`), never from its name.

    Args:
      path: a ``.safetensors``, ``.pth``/``.pt`` or Keras ``.h5`` file.
      variables: the variables of a freshly initialised model.
      stride_placement: the model's ``stride_placement``, checked against the file's.
      include_head: also load the file's classifier into the head.

    Returns:
      New variables with the file's convolutions and BatchNorms.

    Raises:
      ValueError: the file is of no supported format, or does not fit the model.
      ImportError: a PyTorch file and torch is not installed.
    """
    kind = weight_format(path)
    if kind == "hdf5":
        return load_keras_h5_weights(
            path, variables, stride_placement=stride_placement, include_head=include_head
        )
    if kind in ("safetensors", "torch"):
        return load_torchvision_weights(
            path, variables, stride_placement=stride_placement, include_head=include_head
        )
    raise unknown_format_error(os.fspath(path))


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_NORMALIZATION",
    "IMAGENET_STD",
    "KERAS_BATCH_NORM_EPSILON",
    "KERAS_CAFFE_NORMALIZATION",
    "KERAS_IMAGENET_MEAN_BGR",
    "KERAS_LEGACY_BATCH_NORM_EPSILON",
    "KERAS_STRIDE_PLACEMENT",
    "TORCHVISION_STRIDE_PLACEMENT",
    "Normalization",
    "check_pretrained",
    "load_keras_h5_weights",
    "load_pretrained",
    "load_torchvision_weights",
    "preprocessing_for",
    "weight_format",
]
