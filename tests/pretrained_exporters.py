"""Writers of torchvision-layout weight files, for the tests of ``models.pretrained``.

Written independently of the loader's own name tables (a regular expression over our
parameter paths here, lookup tables there), so a round trip through the two checks both.
"""

from __future__ import annotations

import os
import re

import numpy as np
import safetensors.numpy
from flax import traverse_util

_BLOCK = re.compile(r"stage(\d+)_block(\d+)")
_TOP = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
_SHORTCUT = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}
_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_module(module: tuple[str, ...]) -> str:
    if len(module) == 1:
        return _TOP[module[0]]
    stage, block = map(int, _BLOCK.fullmatch(module[0]).groups())
    return f"layer{stage}.{block - 1}.{_SHORTCUT.get(module[1], module[1])}"


def torchvision_state_dict(variables, *, with_counters: bool = False) -> dict[str, np.ndarray]:
    """``variables`` in torchvision's ResNet state-dict layout (float32 NumPy arrays).

    Includes the head (``fc``). ``with_counters`` adds the int64 ``num_batches_tracked``
    that real torchvision state dicts hold for every BatchNorm.
    """
    state = {}
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        module, leaf = path[1:-1], path[-1]
        name = _torch_module(module)
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            # conv [h, w, in, out] -> [out, in, h, w]; dense [in, out] -> [out, in]
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            state[f"{name}.weight"] = np.ascontiguousarray(value)
        elif module == ("head",):
            state[f"{name}.bias"] = value
        else:
            state[f"{name}.{_BN_LEAF[leaf]}"] = value
            if with_counters and leaf == "scale":
                state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)
    return state


def save_torchvision_safetensors(variables, path, **kwargs) -> None:
    """Writes ``variables`` as a torchvision-layout ``.safetensors`` file."""
    safetensors.numpy.save_file(
        torchvision_state_dict(variables, **kwargs), os.fspath(path), metadata={"format": "pt"}
    )
