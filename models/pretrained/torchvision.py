"""torchvision and timm ResNet state dicts (``.safetensors``, or ``.pth`` with torch).

Convolution weights ``[out, in, h, w]`` become Flax kernels ``[h, w, in, out]``;
``fc.weight`` ``[out, in]`` is transposed; BatchNorm ``weight, bias, running_mean,
running_var`` become ``scale, bias, mean, var``; ``num_batches_tracked`` has no counterpart
and is ignored. torchvision and timm ResNets were trained with stride placement ``"v1.5"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from models.pretrained import core
from models.pretrained.formats import PathLike, check_file, weight_format

TORCHVISION_STRIDE_PLACEMENT = "v1.5"


def _torchvision_name(module: tuple[str, ...]) -> str:
    """Our module path -> torchvision's module name (``layer1.0.conv1``)."""
    top = {("stem_conv",): "conv1", ("stem_bn",): "bn1", ("head",): "fc"}
    if module in top:
        return top[module]
    stage, block, layer = core.split_block_layer(module)
    inner = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(layer, layer)
    return f"layer{stage}.{block - 1}.{inner}"


def _torch_conv_to_flax(weight: np.ndarray) -> np.ndarray:
    """[out, in, h, w] -> [h, w, in, out]."""
    return weight.transpose(2, 3, 1, 0)


def _targets(
    variables: Mapping[str, Any], include_head: bool
) -> tuple[list[core.Target], Callable[[str], bool]]:
    params = traverse_util.flatten_dict(dict(variables["params"]))
    targets = []
    for module, kind in core.layers(variables).items():
        if kind == "dense" and not include_head:
            continue
        name = _torchvision_name(module)
        if kind == "conv":
            h, w, c_in, c_out = params[(*module, "kernel")].shape
            targets.append(
                core.Target(
                    ("params", *module, "kernel"),
                    (f"{name}.weight",),
                    ((c_out, c_in, h, w),),
                    _torch_conv_to_flax,
                )
            )
        elif kind == "dense":
            c_in, c_out = params[(*module, "kernel")].shape
            targets += [
                core.Target(
                    ("params", *module, "kernel"),
                    (f"{name}.weight",),
                    ((c_out, c_in),),
                    np.transpose,
                ),
                core.Target(
                    ("params", *module, "bias"), (f"{name}.bias",), ((c_out,),), core.identity
                ),
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
                    core.Target(
                        (collection, *module, leaf),
                        (f"{name}.{torch_leaf}",),
                        (channels,),
                        core.identity,
                    )
                )

    def ignorable(key: str) -> bool:
        return key.endswith(".num_batches_tracked") or (
            not include_head and key in ("fc.weight", "fc.bias")
        )

    return targets, ignorable


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
    if not isinstance(state, Mapping):
        raise ValueError(
            f"PyTorch file {os.fspath(path)} holds a {type(state).__name__}, expected a "
            "state dict (a mapping of tensor names to tensors)"
        )
    return {key: value.detach().cpu().float().numpy() for key, value in state.items()}


def read_torchvision_file(path: PathLike, kind: str) -> dict[str, np.ndarray]:
    """The tensors of a ``"safetensors"`` or ``"torch"`` file, as float32-able arrays."""
    if kind == "safetensors":
        try:
            return safetensors.numpy.load_file(os.fspath(path))
        except (safetensors.SafetensorError, OSError) as error:
            raise ValueError(
                f"safetensors file {os.fspath(path)} cannot be read: {error}"
            ) from error
    return _read_torch_file(path)


def prepare(
    path: PathLike,
    variables: Mapping[str, Any],
    kind: str,
    stride_placement: str | None,
    include_head: bool,
) -> tuple[list[core.Target], dict[str, np.ndarray]]:
    """Reads the file and checks it against ``variables``: the targets and the tensors."""
    source = f"torchvision/timm weight file {os.fspath(path)}"
    core.check_variables(variables)
    core.check_stride_placement(stride_placement, TORCHVISION_STRIDE_PLACEMENT, source, variables)
    tensors = read_torchvision_file(path, kind)
    targets, ignorable = _targets(variables, include_head)
    core.check_tensors(targets, core.shapes_of(tensors), ignorable, source)
    return targets, tensors


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
        a ``.pth``/``.pt`` file (needs torch). The format is read from the file's bytes.
      variables: ``{"params", "batch_stats"}`` of a freshly initialised ResNet of the same
        depth and width (e.g. ``ResNet50`` for ``resnet50`` weights).
      stride_placement: the model's ``stride_placement``; if given, it must be ``"v1.5"``,
        the placement torchvision and timm ResNets were trained with, unless the model has
        only basic blocks (ResNet18/34), where both placements are the same model.
      include_head: also load ``fc.weight`` and ``fc.bias`` into the head (its shape must
        match); by default the head of ``variables`` is kept.

    Returns:
      New variables: every convolution and BatchNorm from the file.

    Raises:
      ValueError: the file does not exist or is neither safetensors nor a PyTorch file,
        tensors are missing, extra or mis-shaped (all are listed), or the stride placement
        differs.
      ImportError: a ``.pth`` file and torch is not installed.
    """
    check_file(path)
    kind = weight_format(path)
    if kind not in ("safetensors", "torch"):
        raise ValueError(
            f"weight file {os.fspath(path)} is not a torchvision/timm file: expected "
            f"safetensors or a PyTorch file, found {kind}"
        )
    targets, tensors = prepare(path, variables, kind, stride_placement, include_head)
    return core.fill(variables, targets, tensors)
