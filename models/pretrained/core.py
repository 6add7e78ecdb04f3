"""What every weight format shares: our layer names, the conversion targets, the checks.

A loader turns the file into ``{key: array}`` and lists one :class:`Target` per leaf of our
variables (which keys of the file it comes from, their shapes, how to convert them).
:func:`check_tensors` compares the whole file with the targets and raises one error listing
every problem; :func:`fill` then builds the new variables. Internal to ``models.pretrained``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_BLOCK = re.compile(r"stage(\d+)_block(\d+)")
_INNER = re.compile(r"(conv|bn)(\d)")


class Target(NamedTuple):
    """One leaf of our variables and how to compute it from tensors of the file."""

    path: tuple[str, ...]  # e.g. ("params", "stage1_block1", "conv1", "kernel")
    sources: tuple[str, ...]  # keys of the file's tensors
    source_shapes: tuple[tuple[int, ...], ...]  # the shapes those tensors must have
    convert: Callable[..., np.ndarray]  # (*source tensors) -> leaf


def check_variables(variables: Mapping[str, Any]) -> None:
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(
            "expected the variables of a models.resnet.ResNet ({'params', 'batch_stats'}), "
            f"got collections {sorted(variables)}"
        )


def layers(variables: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
    """Our layers: module path -> "conv", "bn" or "dense"."""
    check_variables(variables)
    found = {}
    for path in traverse_util.flatten_dict(dict(variables["params"])):
        module, leaf = path[:-1], path[-1]
        if leaf == "scale":
            found[module] = "bn"
        elif leaf == "kernel":
            found[module] = "conv" if module != ("head",) else "dense"
    return found


def split_block_layer(module: tuple[str, ...]) -> tuple[int, int, str]:
    """("stage2_block1", "conv3") -> (2, 1, "conv3")."""
    match = _BLOCK.fullmatch(module[0]) if len(module) == 2 else None
    if match is None:
        raise ValueError(f"{'/'.join(module)} is not a layer of a models.resnet.ResNet")
    return int(match[1]), int(match[2]), module[1]


def kind_and_index(layer: str) -> tuple[str, str]:
    """A block's layer -> ("conv" or "bn", Keras' index: "0" for the shortcut, else 1-3)."""
    if layer.startswith("shortcut_"):
        return layer.removeprefix("shortcut_"), "0"
    match = _INNER.fullmatch(layer)
    if match is None:
        raise ValueError(f"{layer} is not a layer of a models.resnet block")
    return match[1], match[2]


def has_strided_bottleneck(variables: Mapping[str, Any]) -> bool:
    """Whether the model has a down-sampling bottleneck, the only block a placement moves.

    ``models.resnet`` strides the first block of every stage after the first; a bottleneck
    block is the one with a third convolution. Basic blocks have one place for the stride.
    """
    for module in layers(variables):
        if len(module) == 2 and module[1] == "conv3":
            stage, block, _ = split_block_layer(module)
            if stage > 1 and block == 1:
                return True
    return False


def check_stride_placement(
    stride_placement: str | None, trained: str, source: str, variables: Mapping[str, Any]
) -> None:
    if stride_placement is None or stride_placement == trained:
        return
    if not has_strided_bottleneck(variables):
        return  # basic blocks (ResNet18/34): both placements are the same model
    raise ValueError(
        f"{source} holds weights trained with stride_placement={trained!r}, but the model "
        f"has stride_placement={stride_placement!r}; build the model with "
        f"stride_placement={trained!r} (train.py: --stride-placement {trained}), or pass "
        "stride_placement=None to load anyway"
    )


def identity(array: np.ndarray) -> np.ndarray:
    return array


def check_tensors(
    targets: list[Target],
    shapes: Mapping[str, tuple[int, ...]],
    ignorable: Callable[[str], bool],
    source: str,
) -> None:
    """Raises one ValueError listing every missing, mis-shaped and extra tensor of the file.

    Args:
      targets: what the model needs.
      shapes: the file's tensors, key -> shape.
      ignorable: keys the model has no place for but that are not an error.
      source: the file, as named in the message.
    """
    missing, misshaped, used = [], [], set()
    for target in targets:
        for key, expected in zip(target.sources, target.source_shapes, strict=True):
            used.add(key)
            if key not in shapes:
                missing.append(f"  {key}: expected shape {tuple(expected)}")
            elif tuple(shapes[key]) != tuple(expected):
                misshaped.append(
                    f"  {key}: expected shape {tuple(expected)}, found {tuple(shapes[key])}"
                )
    extra = [
        f"  {key}: shape {tuple(shapes[key])}"
        for key in sorted(shapes)
        if key not in used and not ignorable(key)
    ]
    if missing or misshaped or extra:
        sections = [
            (f"{len(lines)} {title}:\n" + "\n".join(lines))
            for title, lines in (
                ("missing tensors", missing),
                ("mis-shaped tensors", misshaped),
                ("extra tensors the model has no place for", extra),
            )
            if lines
        ]
        raise ValueError(
            f"{source} does not match the model; nothing was loaded.\n" + "\n".join(sections)
        )


def fill(
    variables: Mapping[str, Any], targets: list[Target], tensors: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """New variables: each target's leaf computed from the (checked) tensors."""
    flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
    for target in targets:
        old = flat[target.path]
        value = target.convert(*(np.asarray(tensors[key], np.float32) for key in target.sources))
        flat[target.path] = jnp.asarray(value, old.dtype)
    return traverse_util.unflatten_dict(flat)


def shapes_of(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}
