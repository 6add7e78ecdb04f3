"""ImageNet weights for ``models.resnet``: torchvision/timm and Keras files, in and out.

Every loader takes the variables of a *freshly initialised* model and returns a copy in
which every convolution and BatchNorm comes from the file. The classifier head is kept
as initialised (the task has its own classes, as in the paper) unless
``include_head=True``. The file must match the model exactly: missing, extra or
mis-shaped tensors raise one ``ValueError`` that lists all of them, and nothing is
returned half-loaded.

Conversions:

* torchvision/timm state dicts: convolution weights ``[out, in, h, w]`` become Flax
  kernels ``[h, w, in, out]``; ``fc.weight`` ``[out, in]`` is transposed; BatchNorm
  ``weight, bias, running_mean, running_var`` become ``scale, bias, mean, var``;
  ``num_batches_tracked`` has no counterpart and is ignored.
* Keras ResNet50/101/152: kernels are already ``[h, w, in, out]``. Keras convolutions
  carry a bias ``c`` followed by BatchNorm; since
  ``BN(z + c) = gamma * (z + c - mean) / sqrt(var + eps_k) + beta``, the bias is folded
  into the moving mean, ``mean' = mean - c``. Keras' BatchNorm epsilon ``eps_k``
  (1.001e-5 in ``keras.applications``, 1e-3 in the older ``keras_applications``
  ResNet50) differs from ours (1e-5); it is folded into the variance,
  ``var' = var + eps_k - 1e-5``. Both folds are exact: the model computes the same
  function without biases.

Stride placement: torchvision and timm weights were trained with the ``"v1.5"``
placement, Keras weights with ``"v1"``. Parameter shapes do not tell them apart, so
pass ``stride_placement=model.stride_placement`` to have the loader check it.

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

import json
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import h5py
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from models.resnet import BATCH_NORM_EPSILON

TORCHVISION_STRIDE_PLACEMENT = "v1.5"
KERAS_STRIDE_PLACEMENT = "v1"
# BatchNorm epsilon of keras.applications.ResNet50/101/152.
KERAS_BATCH_NORM_EPSILON = 1.001e-5
# BatchNorm epsilon of the older keras_applications ResNet50 (layer names like res2a_branch2a).
KERAS_LEGACY_BATCH_NORM_EPSILON = 1e-3

_BLOCK = re.compile(r"stage(\d+)_block(\d+)")
_INNER = re.compile(r"(conv|bn)(\d)")

PathLike = str | os.PathLike


class _Target(NamedTuple):
    """One leaf of our variables and how to compute it from tensors of the file."""

    path: tuple[str, ...]  # e.g. ("params", "stage1_block1", "conv1", "kernel")
    sources: tuple[str, ...]  # keys of the file's tensors
    source_shapes: tuple[tuple[int, ...], ...]  # the shapes those tensors must have
    convert: Callable[..., np.ndarray]  # (*source tensors) -> leaf


# --------------------------------------------------------------------------- layer names


def _check_variables(variables: Mapping[str, Any]) -> None:
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(
            "expected the variables of a models.resnet.ResNet ({'params', 'batch_stats'}), "
            f"got collections {sorted(variables)}"
        )


def _layers(variables: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
    """Our layers: module path -> "conv", "bn" or "dense"."""
    _check_variables(variables)
    layers = {}
    for path in traverse_util.flatten_dict(dict(variables["params"])):
        module, leaf = path[:-1], path[-1]
        if leaf == "scale":
            layers[module] = "bn"
        elif leaf == "kernel":
            layers[module] = "conv" if module != ("head",) else "dense"
    return layers


def _split_block_layer(module: tuple[str, ...]) -> tuple[int, int, str]:
    """("stage2_block1", "conv3") -> (2, 1, "conv3")."""
    match = _BLOCK.fullmatch(module[0]) if len(module) == 2 else None
    if match is None:
        raise ValueError(f"{'/'.join(module)} is not a layer of a models.resnet.ResNet")
    return int(match[1]), int(match[2]), module[1]


def _torchvision_name(module: tuple[str, ...]) -> str:
    """Our module path -> torchvision's module name (``layer1.0.conv1``)."""
    top = {("stem_conv",): "conv1", ("stem_bn",): "bn1", ("head",): "fc"}
    if module in top:
        return top[module]
    stage, block, layer = _split_block_layer(module)
    inner = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(layer, layer)
    return f"layer{stage}.{block - 1}.{inner}"


def _kind_and_index(layer: str) -> tuple[str, str]:
    """A block's layer -> ("conv" or "bn", Keras' index: "0" for the shortcut, else 1-3)."""
    if layer.startswith("shortcut_"):
        return layer.removeprefix("shortcut_"), "0"
    match = _INNER.fullmatch(layer)
    if match is None:
        raise ValueError(f"{layer} is not a layer of a models.resnet block")
    return match[1], match[2]


def _keras_name(module: tuple[str, ...]) -> str:
    """Our module path -> keras.applications' layer name (``conv2_block1_1_conv``)."""
    top = {("stem_conv",): "conv1_conv", ("stem_bn",): "conv1_bn", ("head",): "predictions"}
    if module in top:
        return top[module]
    stage, block, layer = _split_block_layer(module)
    kind, index = _kind_and_index(layer)
    return f"conv{stage + 1}_block{block}_{index}_{kind}"


def _keras_legacy_name(module: tuple[str, ...]) -> str:
    """Our module path -> the older keras_applications ResNet50 name (``res2a_branch2a``)."""
    top = {("stem_conv",): "conv1", ("stem_bn",): "bn_conv1", ("head",): "fc1000"}
    if module in top:
        return top[module]
    stage, block, layer = _split_block_layer(module)
    base = f"{stage + 1}{chr(ord('a') + block - 1)}_branch"
    kind, index = _kind_and_index(layer)
    branch = "1" if index == "0" else "2" + "abc"[int(index) - 1]
    return f"{'res' if kind == 'conv' else 'bn'}{base}{branch}"


# --------------------------------------------------------------------------- layouts


def _torchvision_targets(
    variables: Mapping[str, Any], include_head: bool
) -> tuple[list[_Target], Callable[[str], bool]]:
    params = traverse_util.flatten_dict(dict(variables["params"]))
    targets = []
    for module, kind in _layers(variables).items():
        if kind == "dense" and not include_head:
            continue
        name = _torchvision_name(module)
        if kind == "conv":
            h, w, c_in, c_out = params[(*module, "kernel")].shape
            targets.append(
                _Target(
                    ("params", *module, "kernel"),
                    (f"{name}.weight",),
                    ((c_out, c_in, h, w),),
                    _torch_conv_to_flax,
                )
            )
        elif kind == "dense":
            c_in, c_out = params[(*module, "kernel")].shape
            targets += [
                _Target(
                    ("params", *module, "kernel"),
                    (f"{name}.weight",),
                    ((c_out, c_in),),
                    np.transpose,
                ),
                _Target(("params", *module, "bias"), (f"{name}.bias",), ((c_out,),), _identity),
            ]
        else:
            channels = params[(*module, "scale")].shape
            for collection, leaf, torch_leaf in (
                ("params", "scale", "weight"),
                ("params", "bias", "bias"),
                ("batch_stats", "mean", "running_mean"),
                ("batch_stats", "var", "running_var"),
            ):
                targets.append(
                    _Target(
                        (collection, *module, leaf),
                        (f"{name}.{torch_leaf}",),
                        (channels,),
                        _identity,
                    )
                )

    def ignorable(key: str) -> bool:
        return key.endswith(".num_batches_tracked") or (
            not include_head and key in ("fc.weight", "fc.bias")
        )

    return targets, ignorable


def _keras_targets(
    variables: Mapping[str, Any],
    include_head: bool,
    layer_name: Callable[[tuple[str, ...]], str],
    keras_epsilon: float,
) -> tuple[list[_Target], Callable[[str], bool]]:
    layers = _layers(variables)
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
                _Target(("params", *module, "kernel"), (f"{name}/kernel",), (kernel,), _identity)
            )
            if kind == "dense":
                bias = params[(*module, "bias")].shape
                targets.append(
                    _Target(("params", *module, "bias"), (f"{name}/bias",), (bias,), _identity)
                )
        else:
            channels = params[(*module, "scale")].shape
            conv_bias = f"{layer_name(conv_of_bn[module])}/bias"
            targets += [
                _Target(("params", *module, "scale"), (f"{name}/gamma",), (channels,), _identity),
                _Target(("params", *module, "bias"), (f"{name}/beta",), (channels,), _identity),
                _Target(
                    ("batch_stats", *module, "mean"),
                    (f"{name}/moving_mean", conv_bias),
                    (channels, channels),
                    np.subtract,
                ),
                _Target(
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


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def _torch_conv_to_flax(weight: np.ndarray) -> np.ndarray:
    """[out, in, h, w] -> [h, w, in, out]."""
    return weight.transpose(2, 3, 1, 0)


# --------------------------------------------------------------------------- the core


def _fill(
    variables: Mapping[str, Any],
    targets: list[_Target],
    tensors: Mapping[str, np.ndarray],
    ignorable: Callable[[str], bool],
    source: str,
) -> dict[str, Any]:
    """Checks the whole file against the targets, then builds the new variables."""
    missing, misshaped, used = [], [], set()
    for target in targets:
        for key, expected in zip(target.sources, target.source_shapes, strict=True):
            used.add(key)
            if key not in tensors:
                missing.append(f"  {key}: expected shape {expected}")
            elif tuple(tensors[key].shape) != tuple(expected):
                misshaped.append(
                    f"  {key}: expected shape {tuple(expected)}, found {tuple(tensors[key].shape)}"
                )
    extra = [
        f"  {key}: shape {tuple(tensors[key].shape)}"
        for key in sorted(tensors)
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
    flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
    for target in targets:
        old = flat[target.path]
        value = target.convert(*(np.asarray(tensors[key], np.float32) for key in target.sources))
        flat[target.path] = jnp.asarray(value, old.dtype)
    return traverse_util.unflatten_dict(flat)


def _check_file(path: PathLike) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"weight file {os.fspath(path)} does not exist")


def _check_stride_placement(stride_placement: str | None, trained: str, source: str) -> None:
    if stride_placement is not None and stride_placement != trained:
        raise ValueError(
            f"{source} holds weights trained with stride_placement={trained!r}, but the model "
            f"has stride_placement={stride_placement!r}; build the model with "
            f"stride_placement={trained!r} (or pass stride_placement=None to load anyway)"
        )


# --------------------------------------------------------------------------- torchvision


def _read_torch_file(path: PathLike) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415  (optional dependency, only for .pth files)
    except ImportError as error:
        raise ImportError(
            f"reading the PyTorch file {os.fspath(path)} needs torch, which is not installed. "
            "Either install torch, or convert it once on a machine with torch: "
            "`import torch, safetensors.torch; safetensors.torch.save_file("
            "torch.load('resnet50.pth', map_location='cpu'), 'resnet50.safetensors')`, "
            "or download timm's safetensors file from the Hugging Face hub "
            "(e.g. timm/resnet50.tv_in1k)"
        ) from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints nest the state dict.
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return {key: value.detach().cpu().float().numpy() for key, value in state.items()}


def load_torchvision_weights(
    path: PathLike,
    variables: Mapping[str, Any],
    *,
    stride_placement: str | None = None,
    include_head: bool = False,
) -> dict[str, Any]:
    """Loads a torchvision or timm ResNet state dict into ``variables``.

    Args:
      path: a ``.safetensors`` file (read with ``safetensors.numpy``; no torch needed) or
        a ``.pth``/``.pt`` file (needs torch).
      variables: ``{"params", "batch_stats"}`` of a freshly initialised ResNet of the same
        depth and width (e.g. ``ResNet50`` for ``resnet50`` weights).
      stride_placement: the model's ``stride_placement``; if given, it must be ``"v1.5"``,
        the placement torchvision and timm ResNets were trained with.
      include_head: also load ``fc.weight`` and ``fc.bias`` into the head (its shape must
        match); by default the head of ``variables`` is kept.

    Returns:
      New variables: every convolution and BatchNorm from the file.

    Raises:
      ValueError: tensors are missing, extra or mis-shaped (all are listed), or the
        stride placement differs.
      ImportError: a ``.pth`` file and torch is not installed.
    """
    source = f"torchvision/timm weight file {os.fspath(path)}"
    _check_variables(variables)
    _check_stride_placement(stride_placement, TORCHVISION_STRIDE_PLACEMENT, source)
    _check_file(path)
    if _sniff(path) == "safetensors":
        tensors = safetensors.numpy.load_file(os.fspath(path))
    else:
        tensors = _read_torch_file(path)
    targets, ignorable = _torchvision_targets(variables, include_head)
    return _fill(variables, targets, tensors, ignorable, source)


def torchvision_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``variables`` in torchvision's ResNet state-dict layout (float32 NumPy arrays).

    Includes the head (``fc``). BatchNorm ``num_batches_tracked`` counters are not
    written: Flax keeps none, and torch's ``load_state_dict`` fills them in.
    """
    flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
    state = {}
    for target in _torchvision_targets(variables, include_head=True)[0]:
        (key,) = target.sources
        value = np.asarray(flat[target.path], np.float32)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        state[key] = np.ascontiguousarray(value)
    return state


def save_torchvision_safetensors(variables: Mapping[str, Any], path: PathLike) -> None:
    """Writes ``variables`` as a torchvision-layout ``.safetensors`` file.

    ``torchvision.models.resnet50().load_state_dict(safetensors.torch.load_file(path))``
    reads it (for a ``"v1.5"`` model), and so does ``load_torchvision_weights``.
    """
    safetensors.numpy.save_file(
        torchvision_state_dict(variables), os.fspath(path), metadata={"format": "pt"}
    )


# --------------------------------------------------------------------------- Keras


def _read_keras_h5(path: PathLike, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors of a Keras weight file as ``{"layer_name/weight": array}``.

    Two layouts exist. The classic one (Keras 2 ``save_weights('x.h5')``, the official
    ImageNet files, and Keras 3 ``model.save('x.h5')`` under ``model_weights``) names
    every layer; Keras 3 ``save_weights('x.weights.h5')`` names layers by class and
    position (``layers/conv2d_3/vars/0``), which is translated here through the order
    in which ``keras.applications`` ResNets list their layers.
    """
    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "model_weights" in file else file
        if "layer_names" in root.attrs:
            return _read_classic_keras(root)
        if "layers" in root and "conv2d" in root["layers"]:
            return _read_keras3(root["layers"], variables)
        raise ValueError(
            f"Keras weight file {os.fspath(path)}: neither the classic layout (a "
            "'layer_names' attribute) nor the Keras 3 '.weights.h5' layout of a "
            f"keras.applications ResNet (layers/conv2d/vars/0); top-level keys: {list(file)}"
        )


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
    stage, block, _ = _split_block_layer(module)
    rank = {"1": 0, "2": 1, "0": 2, "3": 3}[_keras_name(module).split("_")[-2]]
    return (1, stage, block, rank)


def _read_keras3(layers: h5py.Group, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    ordered = sorted(_layers(variables).items(), key=lambda item: _keras3_order(item[0]))
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
      ValueError: tensors are missing, extra or mis-shaped (all are listed), the layout
        is unknown, or the stride placement differs.
    """
    source = f"Keras weight file {os.fspath(path)}"
    _check_variables(variables)
    _check_stride_placement(stride_placement, KERAS_STRIDE_PLACEMENT, source)
    _check_file(path)
    tensors = _read_keras_h5(path, variables)
    legacy = "bn_conv1/gamma" in tensors and "conv1_bn/gamma" not in tensors
    layer_name = _keras_legacy_name if legacy else _keras_name
    if keras_epsilon is None:
        keras_epsilon = KERAS_LEGACY_BATCH_NORM_EPSILON if legacy else KERAS_BATCH_NORM_EPSILON
    targets, ignorable = _keras_targets(variables, include_head, layer_name, keras_epsilon)
    return _fill(variables, targets, tensors, ignorable, source)


# --------------------------------------------------------------------------- front door


def _sniff(path: PathLike) -> str:
    """The file's format from its first bytes: "hdf5", "safetensors", "torch" or "unknown"."""
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"  # torch.save's zip archive, or its legacy pickle
    if len(head) >= 9 and head[8:9] == b"{":
        # safetensors: an 8-byte little-endian header length, then a JSON header.
        header_length = int.from_bytes(head[:8], "little")
        with open(path, "rb") as file:
            file.seek(8)
            try:
                json.loads(file.read(header_length))
                return "safetensors"
            except ValueError:
                return "unknown"
    return "unknown"


def load_pretrained(
    path: PathLike,
    variables: Mapping[str, Any],
    *,
    stride_placement: str | None = None,
    include_head: bool = False,
) -> dict[str, Any]:
    """Loads ImageNet weights from ``path``, whichever supported format it is.

    HDF5 files go to ``load_keras_h5_weights``; safetensors and PyTorch files to
    ``load_torchvision_weights``. The format is read from the file's first bytes.

    Args:
      path: a ``.safetensors``, ``.pth``/``.pt`` or Keras ``.h5`` file.
      variables: the variables of a freshly initialised model.
      stride_placement: the model's ``stride_placement``, checked against the file's.
      include_head: also load the file's classifier into the head.

    Returns:
      New variables with the file's convolutions and BatchNorms.

    Raises:
      ValueError: the file is of no supported format, or does not fit the model.
    """
    _check_variables(variables)
    _check_file(path)
    kind = _sniff(path)
    if kind == "hdf5":
        return load_keras_h5_weights(
            path, variables, stride_placement=stride_placement, include_head=include_head
        )
    if kind in ("safetensors", "torch"):
        return load_torchvision_weights(
            path, variables, stride_placement=stride_placement, include_head=include_head
        )
    raise ValueError(
        f"weight file {os.fspath(path)} is neither HDF5 (Keras .h5), safetensors nor a "
        "PyTorch file (.pth)"
    )
