"""Seed-vectorised ensemble trainer: many ResNet members per optimizer, one program a group.

The data flow of one run, in the order the code below follows it:

  config -> load split (uint8 arrays, labels) -> put on device(s) -> init members (one key
  each) -> per epoch: per-member permutation -> gather batch -> augment on device -> step
  (loss, grads, optimizer update) -> evaluate -> softmax scores per member -> scores file.

``ensemble.py`` reads the scores files and fuses, scores and tabulates them.

Python API: :func:`train_ensemble` with a :class:`TrainConfig`. CLI: ``python train.py
--help``. With no flags it trains a small ensemble on scikit-learn's digits, offline.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

import optax_dgrad
from data import ImageDataset, iter_folds, load_dataset
from data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KERAS_IMAGENET_MEAN_BGR,
    NO_AUGMENTATION,
    PAPER_AUGMENTATION,
    AugmentConfig,
    Normalization,
    augment_images,
    resize_images,
)
from models import MODEL_NAMES, get_model
from models.pretrained import load_pretrained

OPTIMIZER_NAMES = ("sgd", "adam", "amsgrad", "diffgrad", "dgrad", "cos1", "cos2")
MEMBER_STRATEGIES = ("auto", "vmap", "loop", "sharded")
STEP_LOOPS = ("auto", "python", "scan")
AUGMENTATIONS = {
    "paper": PAPER_AUGMENTATION,
    "none": NO_AUGMENTATION,
    "scale": AugmentConfig(reflect=False, min_scale=1.0, max_scale=2.0),
}

# What `auto` picks, per backend. The CPU entries are measured (benchmarks/trainer.py, the
# README's performance section): XLA:CPU runs vmapped convolutions as slow grouped
# convolutions (E(N) 0.17-0.27), and a train step inside a while loop hits a slow
# weight-gradient layout (jax-ml/jax#12868, 20x). The GPU and TPU entries are unmeasured
# defaults until `python benchmarks/trainer.py --suite gpu` has run on such a device.
AUTO_MEMBER_STRATEGY = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}
AUTO_STEP_LOOP = {"cpu": "python", "gpu": "python", "tpu": "python"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; saved as ``config.json`` in the run directory.

    Attributes:
      dataset: "digits" (embedded, offline), "hela", "bg", "lar", or "folder:PATH".
      data_dir: where the TFDS builds of hela/bg/lar live (None: TFDS's default).
      model: a name from ``models.MODEL_NAMES``.
      stride_placement: "v1" (stride on a bottleneck's first 1x1 convolution: the paper's,
        Keras' model) or "v1.5" (on the 3x3: torchvision's and timm's weights).
      image_size: side of the square model input, in pixels.
      optimizers: group name -> number of members, e.g. {"sgd": 14, "dgrad": 7}.
      epochs: passes over the training split per fold.
      batch_size: images per step per member; the last partial batch is dropped.
      learning_rate, b1, b2, eps: shared by every Adam-like optimizer.
      momentum: SGD's momentum (the paper's SGD uses 0.9).
      weight_decay: coupled L2 added to the gradient before the optimizer (0 disables).
      seed: the run seed; every member's keys derive from it, the group and the member index.
      folds: which folds of the data set's protocol to train (None: all of them).
      dtype: computation dtype of the model, "float32" or "bfloat16" (parameters and optimizer
        state stay float32).
      weights: a pretrained ImageNet weight file (.safetensors, .pth or Keras .h5), or None.
      augment: "paper" (reflections and x/y scales in [1, 2]), "scale" (scales only) or "none".
      strategy: how a group's members share a program: "vmap", "loop", "sharded" or "auto".
      step_loop: "python" (a jitted step per batch) or "scan" (an epoch in one lax.scan), or
        "auto".
      scan_unroll: steps unrolled per scan iteration when step_loop is "scan".
      eval_batch_size: test images per prediction call.
      checkpoint_every: save a checkpoint every this many epochs (0: never).
      out_dir: the run directory.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "resnet_tiny"
    stride_placement: str = "v1"
    image_size: int = 8
    optimizers: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {
            "sgd": 3,
            "adam": 3,
            "amsgrad": 3,
            "diffgrad": 3,
            "dgrad": 3,
            "cos1": 3,
            "cos2": 3,
        }
    )
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    folds: tuple[int, ...] | None = None
    dtype: str = "float32"
    weights: str | None = None
    augment: str = "none"
    strategy: str = "auto"
    step_loop: str = "auto"
    scan_unroll: int = 8
    eval_batch_size: int = 256
    checkpoint_every: int = 1
    out_dir: str = "runs/default"


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol: ResNet50 fine-tuned at 224x224, batch 30, 20 epochs, lr 1e-3,
    # 14 networks for SGD and DGrad and 7 for the others (the members its Table 2 uses).
    "paper": dict(
        model="resnet50",
        image_size=224,
        batch_size=30,
        epochs=20,
        learning_rate=1e-3,
        b1=0.9,
        b2=0.999,
        augment="paper",
        dataset="hela",
        optimizers={"sgd": 14, "adam": 7, "diffgrad": 7, "dgrad": 14, "cos1": 7, "cos2": 7},
    ),
    "default": {},
}


def parse_optimizer_groups(text: str) -> dict[str, int]:
    """Parses ``"sgd:14,dgrad:7"`` into ``{"sgd": 14, "dgrad": 7}``, validating names/counts."""
    groups: dict[str, int] = {}
    for item in text.split(","):
        name, _, count = item.strip().partition(":")
        name = name.strip().lower()
        if name not in OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown optimizer {name!r} in --optimizers {text!r}; known: "
                f"{', '.join(OPTIMIZER_NAMES)}"
            )
        try:
            members = int(count) if count else 1
        except ValueError:
            raise ValueError(f"member count {count!r} for {name!r} is not an integer") from None
        if name in groups:
            raise ValueError(f"optimizer {name!r} is listed twice in --optimizers {text!r}")
        groups[name] = members
    return groups


def _cli_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that shows the parser's own message (argparse hides ValueErrors)."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse_flag.__name__ = parse.__name__
    return parse_flag


def parse_folds(text: str) -> tuple[int, ...]:
    """Parses ``"0,2"`` into ``(0, 2)``."""
    try:
        folds = tuple(int(fold) for fold in text.split(","))
    except ValueError:
        raise ValueError(f"--folds {text!r} is not a comma-separated list of integers") from None
    if any(fold < 0 for fold in folds):
        raise ValueError(f"--folds {text!r}: folds are counted from 0")
    return folds


def validate_config(config: TrainConfig) -> None:
    """Raises ValueError naming the first setting that cannot work, before any training."""
    if not config.optimizers:
        raise ValueError("optimizers is empty: name at least one group, e.g. {'dgrad': 7}")
    for name, members in config.optimizers.items():
        if name not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_NAMES)}")
        if not isinstance(members, (int, np.integer)) or isinstance(members, bool):
            raise ValueError(f"optimizer group {name!r}: member count {members!r} is not an int")
        if members < 1:
            raise ValueError(f"optimizer group {name!r} needs at least 1 member, got {members!r}")
    if config.model not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.model!r}; known: {', '.join(MODEL_NAMES)}")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {config.learning_rate!r}")
    for field in ("b1", "b2", "momentum"):
        if not 0 <= getattr(config, field) < 1:
            raise ValueError(f"{field} must be in [0, 1), got {getattr(config, field)!r}")
    for field in ("eps", "weight_decay"):
        if not getattr(config, field) >= 0:
            raise ValueError(f"{field} must be >= 0, got {getattr(config, field)!r}")
    for field, minimum in (
        ("epochs", 1),
        ("batch_size", 1),
        ("image_size", 8),
        ("eval_batch_size", 1),
        ("scan_unroll", 1),
        ("checkpoint_every", 0),
    ):
        if getattr(config, field) < minimum:
            raise ValueError(f"{field} must be >= {minimum}, got {getattr(config, field)!r}")
    if config.strategy not in MEMBER_STRATEGIES:
        raise ValueError(f"strategy {config.strategy!r} is not one of {MEMBER_STRATEGIES}")
    if config.step_loop not in STEP_LOOPS:
        raise ValueError(f"step_loop {config.step_loop!r} is not one of {STEP_LOOPS}")
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"augment {config.augment!r} is not one of {tuple(AUGMENTATIONS)}")
    if config.stride_placement not in ("v1", "v1.5"):
        raise ValueError(f"stride_placement {config.stride_placement!r} is not 'v1' or 'v1.5'")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {config.dtype!r} is not 'float32' or 'bfloat16'")
    if config.weights is not None and not os.path.isfile(config.weights):
        raise ValueError(f"weights file {config.weights!r} does not exist")
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        raise ValueError(f"data directory {config.data_dir!r} does not exist")


def make_optimizer(name: str, config: TrainConfig) -> optax.GradientTransformation:
    """The paper's optimizers by group name; weight decay is coupled L2 for all of them."""
    adam_like = dict(learning_rate=config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)
    decay = config.weight_decay
    if name in ("diffgrad", "dgrad", "cos1", "cos2"):
        return getattr(optax_dgrad, name)(weight_decay=decay, **adam_like)
    base = {
        "sgd": lambda: optax.sgd(config.learning_rate, momentum=config.momentum),
        "adam": lambda: optax.adam(**adam_like),
        "amsgrad": lambda: optax.amsgrad(**adam_like),
    }[name]()
    return optax.chain(optax.add_decayed_weights(decay), base) if decay else base


def member_seed(run_seed: int, group: str, member: int) -> int:
    """The integer seed of one member: a stable hash of (run seed, group, member index)."""
    return zlib.crc32(f"{run_seed}/{group}/{member}".encode()) & 0x7FFFFFFF


class MemberState(NamedTuple):
    """One member's trainable state (or, stacked, a group's: every leaf gets a member axis)."""

    params: Any
    batch_stats: Any
    opt_state: Any


class GroupData(NamedTuple):
    """A fold's arrays on the device, padded to the largest fold so one program fits all."""

    train_images: jax.Array  # uint8 [N_pad, H, W, 3]
    train_labels: jax.Array  # int32 [N_pad]
    num_train: jax.Array  # int32 [], how many leading rows are real


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def map_members(fn: Callable, strategy: str, in_axes: Sequence[int | None]) -> Callable:
    """Applies a one-member function over the leading member axis of some arguments.

    ``vmap`` turns the member axis into a batch axis (convolutions become grouped
    convolutions); ``loop`` writes the members out one after another in the same program.
    Both see the same keys and data, so they compute the same numbers.

    Args:
      fn: a function of one member's arguments.
      strategy: "vmap" or "loop".
      in_axes: per positional argument, 0 if it carries the member axis, None if shared.
    """
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=tuple(in_axes))

    def looped(*args):
        stacked = next(a for a, axis in zip(args, in_axes, strict=True) if axis == 0)
        count = jax.tree.leaves(stacked)[0].shape[0]
        return _stack(
            [
                fn(
                    *(
                        jax.tree.map(lambda leaf, m=m: leaf[m], a) if axis == 0 else a
                        for a, axis in zip(args, in_axes, strict=True)
                    )
                )
                for m in range(count)
            ]
        )

    return looped


class GroupPrograms:
    """The compiled programs of one optimizer group: init, train step, train epoch, predict.

    Every program works on stacked member states (a leading member axis on every leaf). With
    the ``sharded`` strategy the member axis is split over ``mesh`` with ``jax.shard_map``:
    each device trains its own members with the backend's inner strategy and nothing is
    communicated. The programs are built once per group and reused for every fold.
    """

    def __init__(
        self,
        config: TrainConfig,
        group: str,
        num_classes: int,
        strategy: str,
        mesh: Mesh | None,
        normalization: Normalization,
    ):
        self.config = config
        self.model = get_model(
            config.model,
            num_classes,
            stride_placement=config.stride_placement,
            dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
        )
        self.tx = make_optimizer(group, config)
        self.augmentation = AUGMENTATIONS[config.augment]
        self.normalization = normalization
        self.mesh = mesh
        inner = (
            AUTO_MEMBER_STRATEGY.get(jax.default_backend(), "loop")
            if strategy == "sharded"
            else strategy
        )
        self._step = map_members(self._member_step, inner, (0, 0, 0, None, 0, None))
        self._predict = map_members(self._member_predict, inner, (0, None))
        self.member_sharding = NamedSharding(mesh, P("members")) if mesh is not None else None
        self.init = jax.jit(jax.vmap(self._member_init), out_shardings=self.member_sharding)
        self.train_step = jax.jit(
            self._sharded(self._step, (0, 0, 0, None, 0, None), 2), donate_argnums=(0, 1)
        )
        self.predict = jax.jit(self._sharded(self._predict, (0, None), 1))
        self._epochs: dict[int, Callable] = {}

    def _sharded(self, fn: Callable, in_axes: Sequence[int | None], outputs: int) -> Callable:
        if self.mesh is None:
            return fn
        spec = lambda axis: P("members") if axis == 0 else P()  # noqa: E731
        out_specs = P("members") if outputs == 1 else (P("members"),) * outputs
        return jax.shard_map(
            fn,
            mesh=self.mesh,
            in_specs=tuple(spec(a) for a in in_axes),
            out_specs=out_specs,
            check_vma=False,
        )

    def train_epoch(self, num_steps: int) -> Callable:
        """A program running ``num_steps`` steps of every member in one ``lax.scan``."""
        if num_steps not in self._epochs:

            def epoch(state, metrics, orders, keys, data):
                def body(carry, step):
                    return self._step(*carry[:2], orders, step, keys, data), None

                (state, metrics), _ = jax.lax.scan(
                    body, (state, metrics), jnp.arange(num_steps), unroll=self.config.scan_unroll
                )
                return state, metrics

            self._epochs[num_steps] = jax.jit(
                self._sharded(epoch, (0, 0, 0, 0, None), 2), donate_argnums=(0, 1)
            )
        return self._epochs[num_steps]

    def _member_init(self, key: jax.Array) -> MemberState:
        dummy = jnp.zeros((1, self.config.image_size, self.config.image_size, 3), jnp.float32)
        variables = self.model.init(key, dummy, train=False)
        return MemberState(
            variables["params"], variables["batch_stats"], self.tx.init(variables["params"])
        )

    def _member_step(
        self,
        state: MemberState,
        metrics: jax.Array,
        order: jax.Array,
        step: jax.Array,
        key: jax.Array,
        data: GroupData,
    ):
        """One optimizer step of one member on the ``step``-th batch of its epoch order."""
        batch = self.config.batch_size
        indices = jax.lax.dynamic_slice_in_dim(order, step * batch, batch)
        labels = data.train_labels[indices]
        images = augment_images(
            jax.random.fold_in(key, step),
            data.train_images[indices],
            self.config.image_size,
            self.augmentation,
        )
        images = self.normalization.apply(images).astype(self.model.dtype)

        def loss_fn(params):
            logits, updated = self.model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()
            return loss, (updated["batch_stats"], logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        # [loss sum, correct count, steps]: a NaN loss stays NaN in the sum, so divergence is
        # seen at the end of the epoch without a device-to-host sync every step.
        metrics = metrics + jnp.stack([loss, correct, 1.0])
        return MemberState(params, batch_stats, opt_state), metrics

    def _member_predict(self, state: MemberState, images: jax.Array) -> jax.Array:
        images = self.normalization.apply(resize_images(images, self.config.image_size))
        logits = self.model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            images.astype(self.model.dtype),
            train=False,
        )
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


# The settings a group's compiled programs depend on; runs that agree on them (a notebook
# calling train_ensemble again, the folds of one run) reuse the compiled programs.
_PROGRAM_FIELDS = (
    "model", "stride_placement", "image_size", "batch_size", "learning_rate", "b1", "b2",
    "eps", "momentum", "weight_decay", "dtype", "augment", "scan_unroll", "eval_batch_size",
)  # fmt: skip
_PROGRAM_CACHE: dict[tuple, GroupPrograms] = {}


def _group_programs(
    config: TrainConfig,
    group: str,
    num_classes: int,
    strategy: str,
    mesh: Mesh | None,
    normalization,
) -> GroupPrograms:
    key = (tuple(getattr(config, f) for f in _PROGRAM_FIELDS), group, num_classes, strategy,
           mesh, normalization)  # fmt: skip
    if key not in _PROGRAM_CACHE:
        if len(_PROGRAM_CACHE) >= 16:  # bound the compiled code kept alive
            _PROGRAM_CACHE.pop(next(iter(_PROGRAM_CACHE)))
        _PROGRAM_CACHE[key] = GroupPrograms(config, group, num_classes, strategy, mesh,
                                            normalization)  # fmt: skip
    return _PROGRAM_CACHE[key]


@partial(jax.jit, static_argnums=3)
def _epoch_randomness(
    data_keys: jax.Array, epoch: jax.Array, num_train: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
    """Each member's order of the training rows for one epoch, and its augmentation key.

    The order is a random permutation of the ``num_train`` real rows followed by the padding
    rows, so a fold smaller than the padded array never samples padding.
    """

    def one(key):
        order_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
        noise = jax.random.uniform(order_key, (size,))
        return jnp.argsort(jnp.where(jnp.arange(size) < num_train, noise, 2.0)), augment_key

    return jax.vmap(one)(data_keys)


def resolve_strategy(config: TrainConfig, members: int) -> tuple[str, str]:
    """The member strategy and step loop this run uses, with ``auto`` resolved per backend."""
    backend = jax.default_backend()
    strategy = config.strategy
    if strategy == "auto":
        strategy = (
            "sharded"
            if jax.device_count() > 1 and members > 1
            else AUTO_MEMBER_STRATEGY.get(backend, "loop")
        )
    step_loop = config.step_loop
    if step_loop == "auto":
        step_loop = AUTO_STEP_LOOP.get(backend, "python")
    return strategy, step_loop


def member_mesh(members: int) -> Mesh:
    """The 1-D device mesh a group's members are split over.

    In one process a group smaller than the device count uses one device per member, so no
    device trains padding; across processes every device takes part, so that each process
    holds its share of the members.
    """
    devices = jax.devices()
    if jax.process_count() == 1:
        devices = devices[:members]
    return Mesh(np.array(devices), ("members",))


def _replicated(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """Puts a host array on every device (every process supplies the same array)."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _to_host(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


@dataclasses.dataclass
class GroupResult:
    """One optimizer group's outcome over the trained folds.

    Attributes:
      member_accuracy: each member's accuracy on the test splits of all trained folds pooled.
      fused_accuracy: the sum-rule accuracy of the group's non-diverged members.
      diverged: indices of members whose loss became NaN or inf in any fold.
      seconds: wall time spent training and evaluating the group.
    """

    member_accuracy: np.ndarray
    fused_accuracy: float
    diverged: list[int]
    seconds: float


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_ensemble` returns; the score files in ``run_dir`` hold the rest."""

    run_dir: str
    strategy: str
    step_loop: str
    groups: dict[str, GroupResult]
    fused_accuracy: float  # all non-diverged members of all groups, sum rule


StepCallback = Callable[[str, int, int, int], None]


def _config_json(config: TrainConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["optimizers"] = dict(config.optimizers)
    values["folds"] = list(config.folds) if config.folds is not None else None
    return values


def _prepare_run_dir(config: TrainConfig, resume: bool) -> str:
    """Creates (or, resuming, checks) the run directory before any training starts."""
    run_dir = os.path.abspath(config.out_dir)
    config_path = os.path.join(run_dir, "config.json")
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test.{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"output directory {run_dir!r} is not writable: {error}") from None
    if os.path.exists(config_path):
        if not resume:
            raise ValueError(
                f"{run_dir!r} already holds a run (config.json); pass --resume to continue it "
                "or choose another --out-dir"
            )
        with open(config_path) as f:
            saved = json.load(f)
        current = _config_json(config)
        # out_dir may be spelled differently (relative, trailing slash): it is the same run.
        differing = sorted(k for k in current if k != "out_dir" and saved.get(k) != current[k])
        if differing:
            raise ValueError(
                f"cannot resume {run_dir!r}: its config.json differs in {differing} (saved "
                f"{[saved.get(k) for k in differing]}, now {[current[k] for k in differing]})"
            )
    # Every process checks the directory before process 0 writes config.json into it.
    _sync_processes("run directory checked")
    if not os.path.exists(config_path) and jax.process_index() == 0:
        with open(config_path, "w") as f:
            json.dump(_config_json(config), f, indent=2)
    return run_dir


def _sync_processes(name: str) -> None:
    """Waits until every process of a ``jax.distributed`` run has got here (no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _read_log(path: str, last_epoch: int) -> list[dict[str, str]]:
    """The CSV log rows of epochs up to ``last_epoch`` (later rows are from a killed run)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= last_epoch]


LOG_FIELDS = ("epoch", "member", "loss", "train_accuracy", "diverged")


def _write_log(path: str, rows: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def train_fold_group(
    programs: GroupPrograms,
    config: TrainConfig,
    dataset: ImageDataset,
    group: str,
    members: int,
    fold: int,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    padded_train: int,
    run_dir: str,
    step_loop: str,
    progress: tqdm | None = None,
    on_step: StepCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Trains one group's members on one fold and returns their test scores and divergence.

    Resumes from the newest checkpoint of this fold and group when there is one.

    Returns:
      ``(scores, diverged)``: softmax scores [members, n_test, classes] and a bool [members].
    """
    mesh = programs.mesh
    slots = members
    if mesh is not None:  # every device trains the same number of members
        slots = -(-members // mesh.size) * mesh.size
    keys = jnp.stack([jax.random.key(member_seed(config.seed, group, m)) for m in range(slots)])
    init_keys, data_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    data_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(data_keys, fold)
    state = programs.init(init_keys)
    if config.weights is not None:
        state = _load_pretrained_members(state, config.weights, programs)

    images = np.zeros((padded_train,) + dataset.images.shape[1:], np.uint8)
    labels = np.zeros((padded_train,), np.int32)
    images[: len(train_indices)] = dataset.images[train_indices]
    labels[: len(train_indices)] = dataset.labels[train_indices]
    data = GroupData(
        _replicated(images, mesh),
        _replicated(labels, mesh),
        jnp.asarray(len(train_indices), jnp.int32),
    )
    steps = len(train_indices) // config.batch_size

    diverged = np.zeros(slots, bool)
    start_epoch = 0
    checkpoints = ocp.CheckpointManager(
        os.path.join(run_dir, "checkpoints", f"fold{fold}", group),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
    )
    log_path = os.path.join(run_dir, "logs", f"fold{fold}", f"{group}.csv")
    if checkpoints.latest_step() is not None:
        saved_epoch = checkpoints.latest_step()
        restored = checkpoints.restore(
            saved_epoch, args=ocp.args.StandardRestore({"state": state, "diverged": diverged})
        )
        state, diverged = restored["state"], np.asarray(restored["diverged"])
        start_epoch = saved_epoch
    log_rows: list[dict[str, Any]] = _read_log(log_path, start_epoch)
    if progress is not None:
        progress.update(start_epoch)

    # An interruption must not leave an asynchronous checkpoint save half-written behind
    # a manager that a resumed run opens again.
    try:
        for epoch in range(start_epoch, config.epochs):
            orders, augment_keys = _epoch_randomness(
                data_keys, jnp.asarray(epoch), data.num_train, padded_train
            )
            metrics = jnp.zeros((slots, 3), jnp.float32)
            if step_loop == "scan":
                run_epoch = programs.train_epoch(steps)
                state, metrics = run_epoch(state, metrics, orders, augment_keys, data)
            else:
                for step in range(steps):
                    state, metrics = programs.train_step(
                        state, metrics, orders, step, augment_keys, data
                    )
                    if on_step is not None:
                        on_step(group, fold, epoch, step)
            loss_sum, correct, counted = _to_host(metrics).T
            loss = loss_sum / counted
            accuracy = correct / (counted * config.batch_size)
            for m in np.flatnonzero(~np.isfinite(loss[:members]) & ~diverged[:members]):
                _warn(
                    f"warning: {group} member {m} diverged in fold {fold}, epoch {epoch + 1} "
                    f"(loss {loss[m]}); it is excluded from fusion"
                )
            diverged |= ~np.isfinite(loss)
            log_rows += [
                dict(
                    epoch=epoch + 1,
                    member=m,
                    loss=float(loss[m]),
                    train_accuracy=float(accuracy[m]),
                    diverged=bool(diverged[m]),
                )
                for m in range(members)
            ]
            if jax.process_index() == 0:
                _write_log(log_path, log_rows)
            if config.checkpoint_every and (
                (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
            ):
                checkpoints.save(
                    epoch + 1, args=ocp.args.StandardSave({"state": state, "diverged": diverged})
                )
            if progress is not None:
                healthy = loss[:members][~diverged[:members]]
                progress.set_postfix(loss=f"{healthy.mean():.4f}" if healthy.size else "nan")
                progress.update(1)
    finally:
        checkpoints.wait_until_finished()
        checkpoints.close()
    scores = predict_members(programs, state, dataset.images[test_indices])[:members]
    diverged = diverged[:members]
    # The loss is computed before each update, so a last update that breaks a member shows
    # only in its scores.
    for m in np.flatnonzero(~np.isfinite(scores).all(axis=(1, 2)) & ~diverged):
        _warn(f"warning: {group} member {m} gives non-finite test scores in fold {fold}; "
              "it is excluded from fusion")  # fmt: skip
        diverged[m] = True
    return scores, diverged


def _warn(message: str) -> None:
    """Prints a warning above the progress bar, once per run (process 0 of several)."""
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)


def predict_members(programs: GroupPrograms, state: MemberState, images: np.ndarray) -> np.ndarray:
    """Every member's softmax scores [members, n, classes] on uint8 images [n, H, W, 3]."""
    size = programs.config.eval_batch_size
    count = len(images)
    padded = np.zeros((-(-count // size) * size,) + images.shape[1:], np.uint8)
    padded[:count] = images
    batches = [
        _to_host(programs.predict(state, _replicated(padded[i : i + size], programs.mesh)))
        for i in range(0, len(padded), size)
    ]
    return np.concatenate(batches, axis=1)[:, :count]


def _load_pretrained_members(state: MemberState, path: str, programs: GroupPrograms) -> MemberState:
    """Loads the ImageNet weights into every member, keeping each member's own new head.

    The file is read once; the loader keeps the head of the variables it is given, so every
    member takes the loaded body and its own freshly initialised head.
    """
    first = jax.tree.map(lambda leaf: np.asarray(leaf[0]), state)
    loaded = load_pretrained(
        path,
        {"params": first.params, "batch_stats": first.batch_stats},
        stride_placement=programs.model.stride_placement,
    )
    members = jax.tree.leaves(state.params)[0].shape[0]
    stacked = jax.tree.map(lambda leaf: np.broadcast_to(leaf, (members,) + leaf.shape), loaded)
    params = {**stacked["params"], "head": jax.tree.map(np.asarray, state.params["head"])}
    opt_state = jax.vmap(programs.tx.init)(params)
    return jax.device_put(
        MemberState(params, stacked["batch_stats"], opt_state), programs.member_sharding
    )


def _scores_path(run_dir: str, fold: int, group: str) -> str:
    return os.path.join(run_dir, "scores", f"fold{fold}", f"{group}.npz")


def _write_scores(
    path: str,
    scores: np.ndarray,
    dataset: ImageDataset,
    test_indices: np.ndarray,
    seeds: list[int],
    diverged: np.ndarray,
    group: str,
    fold: int,
) -> None:
    """Writes one fold's and group's score file in the format ``ensemble.py`` reads."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".partial.npz"
    np.savez(
        temporary,
        scores=scores.astype(np.float32),
        labels=dataset.labels[test_indices].astype(np.int64),
        test_indices=np.asarray(test_indices, np.int64),
        class_names=np.asarray(dataset.class_names, dtype=str),
        member_seeds=np.asarray(seeds, np.int64),
        diverged=diverged.astype(bool),
        optimizer=np.asarray(group),
        fold=np.asarray(fold, np.int64),
        dataset=np.asarray(dataset.name),
    )
    os.replace(temporary, path)  # a kill never leaves a truncated score file behind


def _normalization(config: TrainConfig) -> Normalization:
    """What the weights were trained with; ImageNet's statistics without weights.

    The statistics never come from the data set, so no test image influences training.
    """
    if config.weights is not None and h5py.is_hdf5(config.weights):
        # Keras' ImageNet ResNet50 ("caffe" preprocessing): BGR in [0, 255] minus the mean.
        return Normalization(KERAS_IMAGENET_MEAN_BGR, (1 / 255,) * 3, reverse_channels=True)
    return Normalization(IMAGENET_MEAN, IMAGENET_STD)


def train_ensemble(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    dataset: ImageDataset | None = None,
) -> TrainResult:
    """Trains every optimizer group's members on every fold and writes their scores.

    Args:
      config: the run (see :class:`TrainConfig`).
      resume: continue the run in ``config.out_dir`` from its last checkpoints; folds and
        groups with a score file are not trained again.
      progress: show a tqdm progress bar over epochs.
      on_step: called as ``on_step(group, fold, epoch, step)`` after each step of the Python
        step loop (for logging, or to interrupt a run); with ``step_loop="scan"`` the host
        sees no step boundary, so it is not called.
      dataset: an already loaded data set to use instead of loading ``config.dataset``.

    Returns:
      A :class:`TrainResult` with the stand-alone and fused accuracies per group.

    Example:
      >>> result = train_ensemble(TrainConfig(optimizers={"dgrad": 2}, epochs=1,
      ...                                     out_dir="/tmp/dgrad-run"))  # doctest: +SKIP
    """
    validate_config(config)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.image_size, data_dir=config.data_dir)
    folds = [
        (f, tr, te)
        for f, tr, te in iter_folds(dataset)
        if config.folds is None or f in config.folds
    ]
    if config.folds is not None:
        missing = sorted(set(config.folds) - {f for f, _, _ in folds})
        if missing:
            raise ValueError(
                f"folds {missing} do not exist; {dataset.name} has "
                f"{len(dataset.folds)} folds (0-based)"
            )
    smallest = min(len(tr) for _, tr, _ in folds)
    if config.batch_size > smallest:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the smallest training "
            f"split ({smallest} images) of {dataset.name}"
        )
    run_dir = _prepare_run_dir(config, resume)
    largest_group = max(config.optimizers.values())
    strategy, step_loop = resolve_strategy(config, largest_group)
    print(
        f"member strategy: {strategy}"
        + (f" over up to {jax.device_count()} devices" if strategy == "sharded" else "")
        + f", step loop: {step_loop} (backend {jax.default_backend()}; "
        f"requested {config.strategy}/{config.step_loop})"
    )
    padded_train = max(len(tr) for _, tr, _ in folds)
    normalization = _normalization(config)

    total_epochs = len(config.optimizers) * len(folds) * config.epochs
    bar = tqdm(total=total_epochs, unit="epoch", disable=not progress or jax.process_index())
    groups: dict[str, GroupResult] = {}
    all_scores, all_labels = [], []
    for group, members in config.optimizers.items():
        started = time.perf_counter()
        mesh = member_mesh(members) if strategy == "sharded" else None
        programs = _group_programs(
            config, group, len(dataset.class_names), strategy, mesh, normalization
        )
        seeds = [member_seed(config.seed, group, m) for m in range(members)]
        fold_scores, fold_labels, fold_diverged = [], [], []
        for fold, train_indices, test_indices in folds:
            bar.set_description(f"{group} fold {fold}")
            path = _scores_path(run_dir, fold, group)
            if resume and os.path.exists(path):
                with np.load(path) as saved:
                    scores, diverged = saved["scores"], saved["diverged"]
                bar.update(config.epochs)
            else:
                scores, diverged = train_fold_group(
                    programs,
                    config,
                    dataset,
                    group,
                    members,
                    fold,
                    train_indices,
                    test_indices,
                    padded_train,
                    run_dir,
                    step_loop,
                    bar,
                    on_step,
                )
                if jax.process_index() == 0:
                    _write_scores(path, scores, dataset, test_indices, seeds, diverged, group, fold)
            fold_scores.append(scores)
            fold_labels.append(dataset.labels[test_indices])
            fold_diverged.append(diverged)
        scores = np.concatenate(fold_scores, axis=1)
        labels = np.concatenate(fold_labels)
        diverged = np.any(fold_diverged, axis=0)
        member_accuracy = (scores.argmax(-1) == labels).mean(-1)
        groups[group] = GroupResult(
            member_accuracy=member_accuracy,
            fused_accuracy=_sum_rule_accuracy(scores[~diverged], labels),
            diverged=np.flatnonzero(diverged).tolist(),
            seconds=time.perf_counter() - started,
        )
        all_scores.append(scores[~diverged])
        all_labels = labels
    bar.close()
    fused = _sum_rule_accuracy(np.concatenate(all_scores), all_labels)
    return TrainResult(run_dir, strategy, step_loop, groups, fused)


def _sum_rule_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the argmax of the members' summed softmax scores (NaN with no member)."""
    if len(scores) == 0:
        return float("nan")
    return float((scores.sum(0).argmax(-1) == labels).mean())


def _sample_std(values: np.ndarray) -> float:
    """Standard deviation with Bessel's correction, as MATLAB's std and ensemble.py report."""
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def format_summary(result: TrainResult) -> str:
    """A Markdown table of stand-alone and fused accuracies per group."""
    lines = [
        "| group | members | stand-alone accuracy (mean ± std) | fused (sum rule) | "
        "diverged | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for group, outcome in result.groups.items():
        healthy = np.delete(outcome.member_accuracy, outcome.diverged)
        stand_alone = (
            f"{100 * healthy.mean():.2f} ± {100 * _sample_std(healthy):.2f}"
            if healthy.size
            else "n/a"
        )
        lines.append(
            f"| {group} | {len(outcome.member_accuracy)} | {stand_alone} | "
            f"{100 * outcome.fused_accuracy:.2f} | {outcome.diverged or '-'} | "
            f"{outcome.seconds:.0f} |"
        )
    members = sum(len(g.member_accuracy) - len(g.diverged) for g in result.groups.values())
    lines.append(f"| all | {members} | | {100 * result.fused_accuracy:.2f} | | |")
    return "\n".join(lines)


def _format_groups(groups: Mapping[str, int]) -> str:
    return ",".join(f"{name}:{members}" for name, members in groups.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train ensembles of ResNets, one compiled program per optimizer group, and "
        "write each member's test-set softmax scores for ensemble.py. With no flags: a small "
        "ensemble of every optimizer on scikit-learn's digits (offline, a few CPU minutes).",

    )
    defaults = TrainConfig()
    add = parser.add_argument
    add(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="start from a preset: 'paper' is the paper's protocol (ResNet50, 224x224, batch "
        "30, 20 epochs, lr 1e-3, SGD:14 Adam:7 diffGrad:7 DGrad:14 Cos#1:7 Cos#2:7, paper "
        "augmentation, HeLa); flags given explicitly override the preset [default]",
    )
    add("--dataset", help=f"digits, hela, bg, lar or folder:PATH [{defaults.dataset}]")
    add("--data-dir", help="directory of the TFDS builds of hela/bg/lar [TFDS default]")
    add("--model", help=f"model name, see models.MODEL_NAMES [{defaults.model}]")
    add(
        "--stride-placement",
        choices=("v1", "v1.5"),
        help="where a down-sampling bottleneck strides: v1 (the paper's and Keras' ResNet50) "
        f"or v1.5 (torchvision/timm weights) [{defaults.stride_placement}]",
    )
    add("--image-size", type=int, help=f"model input side in pixels [{defaults.image_size}]")
    add(
        "--optimizers",
        type=_cli_type(parse_optimizer_groups),
        help="groups as name:members, comma separated, from "
        f"{', '.join(OPTIMIZER_NAMES)} [{_format_groups(defaults.optimizers)}]",
    )
    add("--epochs", type=int, help=f"epochs per fold [{defaults.epochs}]")
    add("--batch-size", type=int, help=f"images per step per member [{defaults.batch_size}]")
    add("--learning-rate", type=float, help=f"learning rate [{defaults.learning_rate}]")
    add("--b1", type=float, help=f"first-moment decay of the Adam-like optimizers [{defaults.b1}]")
    add("--b2", type=float, help=f"second-moment decay [{defaults.b2}]")
    add("--eps", type=float, help=f"epsilon of the Adam-like optimizers [{defaults.eps}]")
    add("--momentum", type=float, help=f"SGD momentum [{defaults.momentum}]")
    add(
        "--weight-decay",
        type=float,
        help=f"coupled L2 weight decay added to the gradient [{defaults.weight_decay}]",
    )
    add("--seed", type=int, help=f"run seed; members' keys derive from it [{defaults.seed}]")
    add(
        "--folds",
        type=_cli_type(parse_folds),
        help="comma-separated 0-based folds to train [all folds of the data set's protocol]",
    )
    add(
        "--dtype",
        choices=("float32", "bfloat16"),
        help=f"computation dtype; parameters stay float32 [{defaults.dtype}]",
    )
    add("--weights", help="ImageNet weight file (.safetensors, .pth, Keras .h5) to fine-tune from")
    add(
        "--augment",
        choices=sorted(AUGMENTATIONS),
        help=f"training augmentation [{defaults.augment}]",
    )
    add(
        "--strategy",
        choices=MEMBER_STRATEGIES,
        help=f"how members share a program: vmap, loop, sharded, auto [{defaults.strategy}]",
    )
    add(
        "--step-loop",
        choices=STEP_LOOPS,
        help=f"python (one jitted step per batch) or scan (one program per epoch) "
        f"[{defaults.step_loop}]",
    )
    add(
        "--scan-unroll",
        type=int,
        help=f"steps unrolled per scan iteration [{defaults.scan_unroll}]",
    )
    add("--eval-batch-size", type=int, help=f"test images per call [{defaults.eval_batch_size}]")
    add(
        "--checkpoint-every",
        type=int,
        help=f"epochs between orbax checkpoints, 0 for none [{defaults.checkpoint_every}]",
    )
    add("--out-dir", help=f"run directory [{defaults.out_dir}]")
    add("--resume", action="store_true", help="continue the run in --out-dir from its checkpoints")
    add("--overwrite", action="store_true", help="delete --out-dir first if it holds a run")
    add("--no-progress", action="store_true", help="no progress bar")
    add(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host; configure with the "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID environment variables "
        "or the cluster's auto-detection)",
    )
    add(
        "--coordinator-address",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="with --distributed: host:port of process 0 [$JAX_COORDINATOR_ADDRESS]",
    )
    add(
        "--num-processes",
        type=int,
        default=_env_int("JAX_NUM_PROCESSES"),
        help="with --distributed: number of processes [$JAX_NUM_PROCESSES]",
    )
    add(
        "--process-id",
        type=int,
        default=_env_int("JAX_PROCESS_ID"),
        help="with --distributed: this process's index, 0-based [$JAX_PROCESS_ID]",
    )
    return parser


def _env_int(name: str) -> int | None:
    """An integer environment variable, or None when it is not set."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's values, overridden by every flag given explicitly."""
    values = dict(PRESETS[args.preset])
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out-dir and --overwrite deletes it: pick one")
    if args.distributed:
        # Cross-process collectives on CPU need gloo; the setting is ignored by GPU and TPU, and
        # it must be made before initialize(), which must come before any backend is started.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    try:
        config = config_from_args(args)
        if (
            args.overwrite
            and jax.process_index() == 0
            and os.path.exists(os.path.join(config.out_dir, "config.json"))
        ):
            shutil.rmtree(config.out_dir)
        _sync_processes("old run removed")
        result = train_ensemble(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(format_summary(result))
        print(
            f"scores written to {os.path.join(result.run_dir, 'scores')}; fuse and tabulate "
            f"them with: python ensemble.py {result.run_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
