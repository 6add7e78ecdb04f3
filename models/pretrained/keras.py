"""Keras ResNet50/101/152 ``.h5`` weight files, in every layout Keras has written.

Kernels are already ``[h, w, in, out]``. Keras convolutions carry a bias ``c`` followed by
BatchNorm; since ``BN(z + c) = gamma * (z + c - mean) / sqrt(var + eps_k) + beta``, the
bias is folded into the moving mean, ``mean' = mean - c``. Keras' BatchNorm epsilon
``eps_k`` (1.001e-5 in ``keras.applications``, 1e-3 in the older ``keras_applications``
ResNet50) differs from ours (1e-5); it is folded into the variance,
``var' = var + eps_k - 1e-5``. Both folds are exact: the model computes the same function
without biases. Keras ResNets were trained with stride placement ``"v1"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import h5py
import numpy as np
from flax import traverse_util

from models.pretrained import core
from models.pretrained.formats import PathLike, check_file, weight_format
from models.resnet import BATCH_NORM_EPSILON

KERAS_STRIDE_PLACEMENT = "v1"
# BatchNorm epsilon of keras.applications.ResNet50/101/152.
KERAS_BATCH_NORM_EPSILON = 1.001e-5
# BatchNorm epsilon of the older keras_applications ResNet50 (layer names like res2a_branch2a).
KERAS_LEGACY_BATCH_NORM_EPSILON = 1e-3


def _keras_name(module: tuple[str, ...]) -> str:
    """Our module path -> keras.applications' layer name (``conv2_block1_1_conv``)."""
    top = {("stem_conv",): "conv1_conv", ("stem_bn",): "conv1_bn", ("head",): "predictions"}
    if module in top:
        return top[module]
    stage, block, layer = core.split_block_layer(module)
    kind, index = core.kind_and_index(layer)
    return f"conv{stage + 1}_block{block}_{index}_{kind}"


def _keras_legacy_name(module: tuple[str, ...]) -> str:
    """Our module path -> the older keras_applications ResNet50 name (``res2a_branch2a``)."""
    top = {("stem_conv",): "conv1", ("stem_bn",): "bn_conv1", ("head",): "fc1000"}
    if module in top:
        return top[module]
    stage, block, layer = core.split_block_layer(module)
    base = f"{stage + 1}{chr(ord('a') + block - 1)}_branch"
    kind, index = core.kind_and_index(layer)
    branch = "1" if index == "0" else "2" + "abc"[int(index) - 1]
    return f"{'res' if kind == 'conv' else 'bn'}{base}{branch}"


def _targets(
    variables: Mapping[str, Any],
    include_head: bool,
    layer_name: Callable[[tuple[str, ...]], str],
    keras_epsilon: float,
) -> tuple[list[core.Target], Callable[[str], bool]]:
    layers = core.layers(variables)
    params = traverse_util.flatten_dict(dict(variables["params"]))
    # Each BatchNorm follows the convolution of the same name with _bn for _conv.
    conv_of_bn = {}
    for module, kind in layers.items():
        if kind == "conv":
            bn = (*module[:-1], module[-1].replace("conv", "bn"))
            if layers.get(bn) != "bn":
                raise ValueError(f"{'/'.join(module)} is not followed by a BatchNorm {bn}")
            conv_of_bn[bn] = module
    epsilon_shift = keras_epsilon - BATCH_NORM_EPSILON
    targets = []
    for module, kind in layers.items():
        if kind == "dense" and not include_head:
            continue
        name = layer_name(module)
        if kind in ("conv", "dense"):
            kernel = params[(*module, "kernel")].shape
            targets.append(
                core.Target(
                    ("params", *module, "kernel"), (f"{name}/kernel",), (kernel,), core.identity
                )
            )
            if kind == "dense":
                bias = params[(*module, "bias")].shape
                targets.append(
                    core.Target(
                        ("params", *module, "bias"), (f"{name}/bias",), (bias,), core.identity
                    )
                )
        else:
            channels = params[(*module, "scale")].shape
            conv_bias = f"{layer_name(conv_of_bn[module])}/bias"
            targets += [
                core.Target(
                    ("params", *module, "scale"), (f"{name}/gamma",), (channels,), core.identity
                ),
                core.Target(
                    ("params", *module, "bias"), (f"{name}/beta",), (channels,), core.identity
                ),
                core.Target(
                    ("batch_stats", *module, "mean"),
                    (f"{name}/moving_mean", conv_bias),
                    (channels, channels),
                    np.subtract,
                ),
                core.Target(
                    ("batch_stats", *module, "var"),
                    (f"{name}/moving_variance",),
                    (channels,),
                    partial(np.add, epsilon_shift),
                ),
            ]
    head = layer_name(("head",))

    def ignorable(key: str) -> bool:
        return not include_head and key in (f"{head}/kernel", f"{head}/bias")

    return targets, ignorable


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_classic_keras(root: h5py.Group) -> dict[str, np.ndarray]:
    tensors = {}
    for layer in map(_text, root.attrs["layer_names"]):
        group = root[layer]
        for weight in map(_text, group.attrs.get("weight_names", [])):
            # "conv1_conv/kernel:0" (Keras 2) or "conv1_conv/kernel" (Keras 3).
            short = weight.split("/")[-1].removesuffix(":0")
            tensors[f"{layer}/{short}"] = np.asarray(group[weight])
    return tensors


_KERAS3_VARIABLES = {
    "conv": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
_KERAS3_CLASS = {"conv": "conv2d", "bn": "batch_normalization", "dense": "dense"}


def _keras3_order(module: tuple[str, ...]) -> tuple[int, ...]:
    # keras.applications lists a projection block's layers as 1, 2, 0 (shortcut), 3.
    if len(module) == 1:
        return (0,) if module != ("head",) else (2,)
    stage, block, _ = core.split_block_layer(module)
    rank = {"1": 0, "2": 1, "0": 2, "3": 3}[_keras_name(module).split("_")[-2]]
    return (1, stage, block, rank)


def _read_keras3(layers: h5py.Group, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    ordered = sorted(core.layers(variables).items(), key=lambda item: _keras3_order(item[0]))
    counters = dict.fromkeys(_KERAS3_CLASS.values(), 0)
    generic_to_name = {}
    for module, kind in ordered:
        cls = _KERAS3_CLASS[kind]
        generic = cls if counters[cls] == 0 else f"{cls}_{counters[cls]}"
        counters[cls] += 1
        generic_to_name[generic] = (_keras_name(module), kind)
    tensors = {}
    for generic in layers:
        group = layers[generic]
        if "vars" not in group or not len(group["vars"]):
            continue  # a layer without weights (activation, padding, pooling)
        if generic not in generic_to_name:
            for index in group["vars"]:
                tensors[f"{generic}/vars/{index}"] = np.asarray(group["vars"][index])
            continue
        name, kind = generic_to_name[generic]
        for index in group["vars"]:
            names = _KERAS3_VARIABLES[kind]
            key = (
                f"{name}/{names[int(index)]}"
                if int(index) < len(names)
                else f"{generic}/vars/{index}"
            )
            tensors[key] = np.asarray(group["vars"][index])
    return tensors


def read_keras_h5(path: PathLike, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors of a Keras weight file as ``{"layer_name/weight": array}``.

    Two layouts exist. The classic one (Keras 2 ``save_weights('x.h5')``, the official
    ImageNet files, and Keras 3 ``model.save('x.h5')`` under ``model_weights``) names
    every layer; Keras 3 ``save_weights('x.weights.h5')`` names layers by class and
    position (``layers/conv2d_3/vars/0``), which is translated here through the order
    in which ``keras.applications`` ResNets list their layers.
    """
    try:
        with h5py.File(path, "r") as file:
            root = file["model_weights"] if "model_weights" in file else file
            if "layer_names" in root.attrs:
                return _read_classic_keras(root)
            if "layers" in root and "conv2d" in root["layers"]:
                return _read_keras3(root["layers"], variables)
            top_level = list(file)
    except (OSError, KeyError) as error:  # h5py: truncated file, dangling link
        raise ValueError(f"Keras weight file {os.fspath(path)} cannot be read: {error}") from error
    raise ValueError(
        f"Keras weight file {os.fspath(path)}: neither the classic layout (a "
        "'layer_names' attribute) nor the Keras 3 '.weights.h5' layout of a "
        f"keras.applications ResNet (layers/conv2d/vars/0); top-level keys: {top_level}"
    )


def prepare(
    path: PathLike,
    variables: Mapping[str, Any],
    stride_placement: str | None,
    include_head: bool,
    keras_epsilon: float | None,
) -> tuple[list[core.Target], dict[str, np.ndarray]]:
    """Reads the file and checks it against ``variables``: the targets and the tensors."""
    source = f"Keras weight file {os.fspath(path)}"
    core.check_variables(variables)
    core.check_stride_placement(stride_placement, KERAS_STRIDE_PLACEMENT, source, variables)
    tensors = read_keras_h5(path, variables)
    legacy = "bn_conv1/gamma" in tensors and "conv1_bn/gamma" not in tensors
    layer_name = _keras_legacy_name if legacy else _keras_name
    if keras_epsilon is None:
        keras_epsilon = KERAS_LEGACY_BATCH_NORM_EPSILON if legacy else KERAS_BATCH_NORM_EPSILON
    targets, ignorable = _targets(variables, include_head, layer_name, keras_epsilon)
    core.check_tensors(targets, core.shapes_of(tensors), ignorable, source)
    return targets, tensors


def load_keras_h5_weights(
    path: PathLike,
    variables: Mapping[str, Any],
    *,
    stride_placement: str | None = None,
    include_head: bool = False,
    keras_epsilon: float | None = None,
) -> dict[str, Any]:
    """Loads a Keras ResNet50/101/152 ``.h5`` weight file into ``variables``.

    Reads ``keras.applications`` files (``conv1_conv``, ``conv2_block1_1_conv``, ...,
    ``predictions``) in the classic and the Keras 3 ``.weights.h5`` layouts, and the older
    ``keras_applications`` ResNet50 file (``conv1``, ``bn_conv1``, ``res2a_branch2a``,
    ..., ``fc1000``). Convolution biases are folded into the BatchNorm means and Keras'
    BatchNorm epsilon into the variances (see the module docstring).

    Args:
      path: the ``.h5`` file, e.g. ``resnet50_weights_tf_dim_ordering_tf_kernels.h5``.
      variables: ``{"params", "batch_stats"}`` of a freshly initialised ResNet50 (101, 152).
      stride_placement: the model's ``stride_placement``; if given, it must be ``"v1"``,
        the placement Keras ResNets were trained with.
      include_head: also load the classifier (``predictions``/``fc1000``) into the head.
      keras_epsilon: BatchNorm epsilon of the Keras model that produced the file; by
        default 1.001e-5 (``keras.applications``), or 1e-3 for the older layer names.

    Returns:
      New variables: every convolution and BatchNorm from the file.

    Raises:
      ValueError: the file does not exist, is not HDF5 or cannot be read, tensors are
        missing, extra or mis-shaped (all are listed), the layout is unknown, or the
        stride placement differs.
    """
    check_file(path)
    kind = weight_format(path)
    if kind != "hdf5":
        raise ValueError(
            f"weight file {os.fspath(path)} is not a Keras .h5 file: expected HDF5, found {kind}"
        )
    targets, tensors = prepare(path, variables, stride_placement, include_head, keras_epsilon)
    return core.fill(variables, targets, tensors)
