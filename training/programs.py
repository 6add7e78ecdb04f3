"""A group's compiled programs: init, train step, train epoch and predict.

Every program works on stacked member states (a leading member axis on every leaf). With a
mesh, the member axis is split over it with ``jax.shard_map``: each device trains its own
members with the inner strategy and nothing is communicated. The programs depend on exactly
the fields of a ``ProgramSpec``, so runs that agree on it (the folds of one run, a notebook
calling ``train_ensemble`` again) reuse them from :func:`group_programs`' cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from data.augment import augment_images, resize_images
from models import get_model
from models.pretrained import Normalization
from rundir import SWEEPABLE
from training.config import AUGMENTATIONS, TrainConfig
from training.members import MemberState, map_members, stack_members
from training.optimizers import MemberOptimizer
from training.placement import (
    DATA_AXIS,
    MEMBER_AXIS,
    Placement,
    replicate,
    shard_members,
    to_host,
)

# Per positional argument of a step (state, metrics, order, step, key, data, rule) and of a
# prediction (variables, images): 0 where it carries the member axis, None where it is
# shared (a group's members share their optimizer: ``rule`` is unbatched under vmap).
STEP_AXES = (0, 0, 0, None, 0, None, None)
PREDICT_AXES = (0, None)
EPOCH_AXES = (0, 0, 0, 0, None, None)
# A step's and an epoch's outputs, (state, metrics): split over the member axis.
STEP_OUT_SPECS = (P(MEMBER_AXIS), P(MEMBER_AXIS))


def local_slice(batch: jax.Array, data_parallel: int) -> jax.Array:
    """This device's equal share of ``batch`` along the mesh's data axis."""
    size = batch.shape[0] // data_parallel
    start = jax.lax.axis_index(DATA_AXIS) * size
    return jax.lax.dynamic_slice_in_dim(batch, start, size)


def over_mesh(
    fn: Callable, mesh: Mesh | None, in_axes: Sequence[int | None], out_specs: Any
) -> Callable:
    """``fn`` under ``shard_map`` on ``mesh``: member-axis arguments split, the others
    replicated (``fn`` itself without a mesh).

    Every device of a data row holds the same members; the collectives over the data axis
    (gradients, BatchNorm statistics, metrics) keep their copies identical.
    """
    if mesh is None:
        return fn
    spec = lambda axis: P(MEMBER_AXIS) if axis == 0 else P()  # noqa: E731
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=tuple(spec(a) for a in in_axes),
        out_specs=out_specs,
        check_vma=False,
    )


def _with_rule(program: Callable, named_after: Callable) -> Callable:
    """``program`` with its last argument, the optimizer ``rule``, optional (0: a run of
    one optimizer) and always an int32 scalar, so every value shares one compiled program."""

    def with_rule(*args, rule=0):
        return program(*args, jnp.asarray(rule, jnp.int32))

    with_rule.__name__ = getattr(named_after, "__name__", "program")  # names it in profiles
    return with_rule


class GroupData(NamedTuple):
    """A fold's arrays on the device, padded to the largest fold so one program fits all."""

    train_images: jax.Array  # uint8 [N_pad, H, W, 3]
    train_labels: jax.Array  # int32 [N_pad]
    num_train: jax.Array  # int32 [], how many leading rows are real


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Everything a group's programs are compiled from, and nothing else.

    Attributes:
      model, stride_placement, dtype, num_classes: the network.
      image_size, batch_size, augment, normalization: what a step feeds it.
      optimizers: every group of the run (names in ``training.optimizers.OPTIMIZERS``):
        one train step serves them all, a group's members choosing theirs by its index.
      hyperparameters: ``(name, value)`` of every hyperparameter (``rundir.SWEEPABLE``), the
        run's values.
      swept: the hyperparameters that live in each member's optimizer state instead (a
        sweep's names); their values above are placeholders, :meth:`GroupPrograms.init`
        takes each member's.
      inner_strategy: "vmap" or "loop" over the members one device holds.
      mesh: the ``(member, data)`` mesh, or None on one device.
      scan_unroll: steps unrolled per iteration of the epoch program.
    """

    model: str
    stride_placement: str
    dtype: str
    num_classes: int
    image_size: int
    batch_size: int
    augment: str
    normalization: Normalization
    optimizers: tuple[str, ...]
    hyperparameters: tuple[tuple[str, float], ...]
    swept: tuple[str, ...]
    inner_strategy: str
    mesh: Mesh | None
    scan_unroll: int

    def model_only(self) -> ProgramSpec:
        """This spec without what only the train step uses (optimizer, batch, augmentation):
        the key of the programs every group of a run shares."""
        return dataclasses.replace(
            self, optimizers=(), hyperparameters=(), swept=(), batch_size=0, augment="",
            scan_unroll=0,
        )  # fmt: skip

    @property
    def data_parallel(self) -> int:
        """Devices one member's batch is split over (the mesh's data axis)."""
        return self.mesh.shape[DATA_AXIS] if self.mesh is not None else 1

    @classmethod
    def for_group(
        cls,
        config: TrainConfig,
        group: str,
        num_classes: int,
        placement: Placement,
        normalization: Normalization,
    ) -> ProgramSpec:
        """The spec of group ``group`` of a run: the same for every group of the run (the
        group picks its optimizer at run time, :meth:`GroupPrograms.rule`)."""
        return cls(
            model=config.model,
            stride_placement=config.stride_placement,
            dtype=config.dtype,
            num_classes=num_classes,
            image_size=config.image_size,
            batch_size=config.batch_size,
            augment=config.augment,
            normalization=normalization,
            optimizers=tuple(config.optimizers) if group in config.optimizers else (group,),
            hyperparameters=tuple((k, getattr(config, k)) for k in SWEEPABLE),
            swept=tuple(config.sweep or ()),
            inner_strategy=placement.inner_strategy,
            mesh=placement.mesh,
            scan_unroll=config.scan_unroll,
        )


class GroupPrograms:
    """The compiled programs of one optimizer group, built from a :class:`ProgramSpec`.

    Attributes:
      train_step: one step of every member, state and metrics donated.
      predict: stacked state, uint8 images -> softmax scores [members, n, classes].
      model, tx: the Flax module and the optax transformation of one member.
    """

    def __init__(self, spec: ProgramSpec):
        self.spec = spec
        # The network's init and predict do not depend on the optimizer: every group of a run
        # shares them (model_programs' cache), so they compile once per run, not per group.
        shared = model_programs(spec.model_only())
        self.model = shared.model
        self._init_variables, self.predict = shared.init_variables, shared.predict
        self.tx = MemberOptimizer(spec.optimizers, dict(spec.hyperparameters), spec.swept)
        self._augmentation = AUGMENTATIONS[spec.augment]
        self._step = map_members(self._member_step, spec.inner_strategy, STEP_AXES)
        self.member_sharding = (
            jax.sharding.NamedSharding(spec.mesh, P(MEMBER_AXIS)) if spec.mesh is not None else None
        )
        self._init_optimizer = jax.jit(self._member_init_optimizer)
        self.train_step = jax.jit(
            _with_rule(over_mesh(self._step, spec.mesh, STEP_AXES, STEP_OUT_SPECS), self._step),
            donate_argnums=(0, 1),
        )
        self._epochs: dict[int, Callable] = {}

    def init(self, keys: jax.Array, swept_values: jax.Array | None = None) -> MemberState:
        """Stacked member states from init keys [slots] and swept values [slots, swept]."""
        if swept_values is None:
            swept_values = jnp.zeros((keys.shape[0], len(self.spec.swept)), jnp.float32)
        members = [
            self._member_init(key, values) for key, values in zip(keys, swept_values, strict=True)
        ]
        if self.spec.mesh is None:
            return _stack_on_device(members)
        return shard_members(jax.tree.map(lambda *leaves: np.stack(leaves), *members),
                             self.spec.mesh)  # fmt: skip

    def rule(self, group: str) -> jax.Array:
        """The ``rule`` argument of the step and epoch programs for ``group``'s members."""
        return jnp.asarray(self.spec.optimizers.index(group), jnp.int32)

    def train_epoch(self, num_steps: int) -> Callable:
        """A program running ``num_steps`` steps of every member in one ``lax.scan``."""
        if num_steps not in self._epochs:

            def epoch(state, metrics, orders, keys, data, rule):
                def body(carry, step):
                    return self._step(*carry, orders, step, keys, data, rule), None

                (state, metrics), _ = jax.lax.scan(
                    body, (state, metrics), jnp.arange(num_steps), unroll=self.spec.scan_unroll
                )
                return state, metrics

            self._epochs[num_steps] = jax.jit(
                _with_rule(over_mesh(epoch, self.spec.mesh, EPOCH_AXES, STEP_OUT_SPECS), epoch),
                donate_argnums=(0, 1),
            )
        return self._epochs[num_steps]

    def _member_init(self, key: jax.Array, swept_values: jax.Array) -> MemberState:
        variables = self._init_variables(key)
        opt_state = self._init_optimizer(variables["params"], swept_values)
        return MemberState(variables["params"], variables["batch_stats"], opt_state)

    def _member_init_optimizer(self, params: Any, swept_values: jax.Array) -> Any:
        opt_state = self.tx.init(params)
        if self.spec.swept:  # this member's grid point, held in its optimizer state
            hyperparams = dict(opt_state.hyperparams)
            for name, value in zip(self.spec.swept, swept_values, strict=True):
                hyperparams[name] = value.astype(hyperparams[name].dtype)
            opt_state = opt_state._replace(hyperparams=hyperparams)
        return opt_state

    def _member_step(
        self,
        state: MemberState,
        metrics: jax.Array,
        order: jax.Array,
        step: jax.Array,
        key: jax.Array,
        data: GroupData,
        rule: jax.Array,
    ) -> tuple[MemberState, jax.Array]:
        """One optimizer step of one member on the ``step``-th batch of its epoch order, with
        optimizer ``spec.optimizers[rule]``."""
        batch = self.spec.batch_size
        indices = jax.lax.dynamic_slice_in_dim(order, step * batch, batch)
        labels = data.train_labels[indices]
        images = augment_images(
            jax.random.fold_in(key, step),
            data.train_images[indices],
            self.spec.image_size,
            self._augmentation,
        )
        images = self.spec.normalization.apply(images).astype(self.model.dtype)
        if self.spec.data_parallel > 1:
            # The whole batch is augmented on every device of the data axis, so each image
            # gets the draw it gets on one device; each device then trains on its slice.
            split = self.spec.data_parallel
            images, labels = local_slice(images, split), local_slice(labels, split)

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
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        if self.spec.data_parallel > 1:
            # Equal slices: the batch's mean loss is the mean of the slices' means.
            grads, loss = jax.lax.pmean((grads, loss), DATA_AXIS)
            correct = jax.lax.psum(correct, DATA_AXIS)
        params, opt_state = self.tx.apply(grads, state.opt_state, state.params, rule)
        # [loss sum, correct count, steps]: a NaN loss stays NaN in the sum, so divergence is
        # seen at the end of the epoch without a device-to-host sync every step.
        metrics = metrics + jnp.stack([loss, correct, 1.0])
        return MemberState(params, batch_stats, opt_state), metrics


class ModelPrograms:
    """The programs of a run that depend on the network only, shared by all its groups.

    Attributes:
      init_variables: one member's init key -> its ``{"params", "batch_stats"}``, compiled
        once and called per key (a vmapped init compiles the forward pass as grouped
        convolutions: 6.2 s against 3.7 s for resnet_tiny on XLA:CPU, the same numbers).
      predict: stacked ``(params, batch_stats)``, uint8 images -> softmax scores
        ``[members, n, classes]``: members over the member axis and, when a member's work
        is split, images over the data axis.
    """

    def __init__(self, spec: ProgramSpec):
        self.spec = spec
        self.model = get_model(
            spec.model,
            spec.num_classes,
            stride_placement=spec.stride_placement,
            dtype=jnp.bfloat16 if spec.dtype == "bfloat16" else jnp.float32,
            batch_norm_axis=DATA_AXIS if spec.data_parallel > 1 else None,
        )
        self.init_variables = jax.jit(self._member_variables)
        predict = map_members(self._member_predict, spec.inner_strategy, PREDICT_AXES)
        self.predict = jax.jit(
            over_mesh(predict, spec.mesh, PREDICT_AXES, P(MEMBER_AXIS, DATA_AXIS))
        )

    def _member_variables(self, key: jax.Array) -> Any:
        size = self.spec.image_size
        return self.model.init(key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)

    def _member_predict(self, variables: tuple[Any, Any], images: jax.Array) -> jax.Array:
        params, batch_stats = variables
        if self.spec.data_parallel > 1:
            images = local_slice(images, self.spec.data_parallel)
        images = self.spec.normalization.apply(resize_images(images, self.spec.image_size))
        logits = self.model.apply(
            {"params": params, "batch_stats": batch_stats},
            images.astype(self.model.dtype),
            train=False,
        )
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@functools.lru_cache(maxsize=16)  # bounds the compiled code kept alive
def model_programs(spec: ProgramSpec) -> ModelPrograms:
    """The network programs of ``spec`` (a ``ProgramSpec.model_only()``), built once."""
    return ModelPrograms(spec)


# One program stacks every leaf (a jnp.stack per leaf would compile one program per shape).
_stack_on_device = jax.jit(stack_members)


@functools.lru_cache(maxsize=16)  # bounds the compiled code kept alive
def group_programs(spec: ProgramSpec) -> GroupPrograms:
    """The programs of ``spec``, built once and reused while they stay in the cache."""
    return GroupPrograms(spec)


def predict_members(
    programs: GroupPrograms, state: MemberState, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """Every member's softmax scores [members, n, classes] on uint8 images [n, H, W, 3]."""
    split = programs.spec.data_parallel
    batch_size = -(-batch_size // split) * split  # the data axis takes equal shares
    count = len(images)
    variables, mesh = (state.params, state.batch_stats), programs.spec.mesh
    padded = np.zeros((-(-count // batch_size) * batch_size,) + images.shape[1:], np.uint8)
    padded[:count] = images
    batches = [
        to_host(programs.predict(variables, replicate(padded[i : i + batch_size], mesh)))
        for i in range(0, len(padded), batch_size)
    ]
    return np.concatenate(batches, axis=1)[:, :count]


ProgramFactory = Callable[[ProgramSpec], Any]
