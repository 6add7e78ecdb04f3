"""Flax (linen) ResNet family and ImageNet-weight import.

``get_model(name, num_classes)`` builds a model by name; ``models.pretrained`` loads
torchvision, timm and Keras ImageNet weights into it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    ResNet18,
    ResNet18Small,
    ResNet34,
    ResNet50,
    ResNet50Small,
    ResNet101,
    ResNet152,
    ResNetTiny,
)

_MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnet18_small": ResNet18Small,
    "resnet50_small": ResNet50Small,
    "resnet_tiny": ResNetTiny,
}
MODEL_NAMES = tuple(_MODELS)

_OVERRIDABLE = tuple(
    field.name for field in dataclasses.fields(ResNet) if field.name not in ("parent", "name")
)


def get_model(name: str, num_classes: int, dtype: Any = jnp.float32, **overrides) -> nn.Module:
    """The ResNet called ``name`` with a ``num_classes``-way head.

    Args:
      name: one of ``MODEL_NAMES`` (lower case), e.g. ``"resnet50"`` or ``"resnet_tiny"``.
      num_classes: number of classes (size of the logits).
      dtype: computation dtype; parameters stay float32.
      **overrides: other ``ResNet`` attributes, e.g. ``stride_placement="v1.5"``,
        ``small_inputs=True``, ``num_filters=32``.

    Returns:
      An uninitialised ``ResNet`` module.

    Example:
      >>> from models import get_model
      >>> model = get_model("resnet50", num_classes=10, stride_placement="v1")
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(
            f"unknown ResNet attribute(s) {unknown} for model {name!r}; "
            f"known attributes: {', '.join(_OVERRIDABLE)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return _MODELS[name](num_classes=num_classes, dtype=dtype, **overrides)


__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "ResNet18",
    "ResNet18Small",
    "ResNet34",
    "ResNet50",
    "ResNet50Small",
    "ResNet101",
    "ResNet152",
    "ResNetTiny",
    "get_model",
]
