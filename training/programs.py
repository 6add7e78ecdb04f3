"""A run's compiled programs: init, train step, train epoch and predict.

Every program works on stacked member states (a leading member axis on every leaf), the
members of every group of the run on one axis; a member's optimizer is its ``rule``, data
beside its keys. The members one device holds go through a program all at once (``vmap``),
or chunk by chunk through one program that trains the chunk at a given index in place
(``loop`` is chunks of one). With a mesh, the member axis is split over it with
``jax.shard_map``: each device trains its own members and nothing crosses the member axis.
The programs depend on exactly the fields of a ``ProgramSpec``, so runs that agree on it (a
notebook calling ``train_ensemble`` again) reuse them from :func:`run_programs`' cache.
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

from models import get_model
from models.pretrained import Normalization
from rundir import SWEEPABLE
from training.augment import AUGMENTATIONS, augment_images, resize_images
from training.config import TrainConfig
from training.members import MemberState, stack_members
from training.optimizers import MemberOptimizer
from training.placement import DATA_AXIS, MEMBER_AXIS, Placement
from training.transfer import replicate, shard_members, to_host

# Per positional argument of a step (state, metrics, order, step, key, data, rule) and of a
# prediction (variables, images): 0 where it carries the member axis, None where it is
# shared. ``rule``, the index of a member's optimizer, is member data like its key.
STEP_AXES = (0, 0, 0, None, 0, None, 0)
PREDICT_AXES = (0, None)
EPOCH_AXES = (0, 0, 0, 0, None, 0)
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


def over_members(fn: Callable, chunk: int | None, in_axes: Sequence[int | None]) -> Callable:
    """A one-member ``fn`` over the members of its member-axis arguments (``in_axes`` 0).

    ``chunk`` None or more than 1: ``vmap`` (convolutions become grouped convolutions).
    ``chunk`` 1 (the ``loop`` strategy): ``fn`` itself on the one member, its outputs given
    a member axis of 1 back.
    """
    if chunk != 1:
        return jax.vmap(fn, in_axes=tuple(in_axes))

    def one(*args):
        picked = [
            jax.tree.map(lambda leaf: leaf[0], a) if axis == 0 else a
            for a, axis in zip(args, in_axes, strict=True)
        ]
        return jax.tree.map(lambda leaf: leaf[None], fn(*picked))

    one.__name__ = getattr(fn, "__name__", "fn")  # names it in profiles
    return one


def chunk_at(
    fn: Callable, chunk: int, in_axes: Sequence[int | None], *, write_back: bool = True
) -> Callable:
    """``fn(*args)`` on the ``chunk`` members from ``first`` on: the result takes ``first``,
    a traced int32 scalar, as one more argument, so one program serves every chunk whatever
    the member count. With ``write_back``, ``fn``'s ``(state, metrics)`` outputs are written
    into the whole first two arguments (in place when both are donated); without, the
    chunk's outputs are returned (a prediction).

    With ``write_back`` the chunk is sliced out inside a ``lax.cond`` (always true): that
    makes XLA store the slices before anything uses them. Fused into their users instead, a
    read of one stacked array (a member's old moment) sat in the write of another (its
    parameters), XLA could not order the writes, and it copied every stacked array whole,
    twice, on each call (docs/training.md, "One member axis for the whole run").
    """

    def at(*args):
        *args, first = args

        def pick():
            return [
                jax.tree.map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, first, chunk), a)
                for a, axis in zip(args, in_axes, strict=True)
                if axis == 0
            ]

        chunks = iter(jax.lax.cond(first >= 0, pick, pick) if write_back else pick())
        picked = [next(chunks) if axis == 0 else a for a, axis in zip(args, in_axes, strict=True)]
        if not write_back:
            return fn(*picked)
        return jax.tree.map(
            lambda whole, part: jax.lax.dynamic_update_slice_in_dim(whole, part, first, 0),
            (args[0], args[1]),
            fn(*picked),
        )

    at.__name__ = f"{getattr(fn, '__name__', 'fn')}_chunk"  # names it in profiles
    return at


class GroupData(NamedTuple):
    """A fold's arrays on the device, padded to the largest fold so one program fits all."""

    train_images: jax.Array  # uint8 [N_pad, H, W, 3]
    train_labels: jax.Array  # int32 [N_pad]
    num_train: jax.Array  # int32 [], how many leading rows are real


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Everything a run's programs are compiled from, and nothing else.

    Attributes:
      model, stride_placement, dtype, num_classes: the network.
      image_size, batch_size, augment, normalization: what a step feeds it.
      optimizers: every group of the run (names in ``training.optimizers.OPTIMIZERS``):
        one train step serves them all, each member choosing its own by index (its rule).
      hyperparameters: ``(name, value)`` of every hyperparameter (``rundir.SWEEPABLE``), the
        run's values.
      swept: the hyperparameters that live in each member's optimizer state instead (a
        sweep's names); their values above are placeholders, :meth:`RunPrograms.init`
        takes each member's.
      inner_strategy: "vmap" or "loop" over the members one device holds.
      chunk: members per program call on a device (1 for "loop"; None: all it holds).
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
    chunk: int | None
    mesh: Mesh | None
    scan_unroll: int

    def model_only(self) -> ProgramSpec:
        """This spec without what only the train step uses (optimizer, batch, augmentation):
        the key of the network's programs, which do not depend on the optimizers."""
        return dataclasses.replace(
            self, optimizers=(), hyperparameters=(), swept=(), batch_size=0, augment="",
            scan_unroll=0,
        )  # fmt: skip

    @property
    def member_rows(self) -> int:
        """Device rows the members are split over (the mesh's member axis)."""
        return self.mesh.shape[MEMBER_AXIS] if self.mesh is not None else 1

    @property
    def data_parallel(self) -> int:
        """Devices one member's batch is split over (the mesh's data axis)."""
        return self.mesh.shape[DATA_AXIS] if self.mesh is not None else 1

    @classmethod
    def for_run(
        cls,
        config: TrainConfig,
        num_classes: int,
        placement: Placement,
        normalization: Normalization,
    ) -> ProgramSpec:
        """The spec of a run: one for all its groups, folds and grid points."""
        return cls(
            model=config.model,
            stride_placement=config.stride_placement,
            dtype=config.dtype,
            num_classes=num_classes,
            image_size=config.image_size,
            batch_size=config.batch_size,
            augment=config.augment,
            normalization=normalization,
            optimizers=tuple(config.optimizers),
            hyperparameters=tuple((k, getattr(config, k)) for k in SWEEPABLE),
            swept=tuple(config.sweep or ()),
            inner_strategy=placement.inner_strategy,
            chunk=placement.chunk,
            mesh=placement.mesh,
            scan_unroll=config.scan_unroll,
        )


class RunPrograms:
    """The compiled programs of a run, built from a :class:`ProgramSpec`: every member of
    every group and grid point goes through the same ones.

    Attributes:
      model, tx: the Flax module and the optimizer (every optimizer of the run) of a member.
      member_sharding: the stacked states' sharding on the mesh (None without).
    """

    def __init__(self, spec: ProgramSpec):
        self.spec = spec
        # The network's init and predict do not depend on the optimizer (model_programs'
        # cache): a notebook's runs with other optimizers reuse them.
        shared = model_programs(spec.model_only())
        self.model = shared.model
        self._init_variables, self._predict = shared.init_variables, shared.predict
        self.tx = MemberOptimizer(spec.optimizers, dict(spec.hyperparameters), spec.swept)
        self._augmentation = AUGMENTATIONS[spec.augment]
        self.member_sharding = (
            jax.sharding.NamedSharding(spec.mesh, P(MEMBER_AXIS)) if spec.mesh is not None else None
        )
        self._init_optimizer = jax.jit(self._member_init_optimizer)
        self._step = over_members(self._member_step, spec.chunk, STEP_AXES)
        # The jitted programs themselves (with a chunk, each takes the chunk's first slot
        # last); train_step and train_epoch run them over every chunk.
        self.step_program = self._program(self._step, STEP_AXES)
        self._epochs: dict[int, Callable] = {}

    def _program(self, fn: Callable, in_axes: Sequence[int | None]) -> Callable:
        """``fn`` (state, metrics, ... -> state, metrics) jitted over the mesh, on all
        members at once or, with a chunk, on the chunk from its last argument on."""
        if self.spec.chunk is not None:
            fn, in_axes = chunk_at(fn, self.spec.chunk, in_axes), (*in_axes, None)
        program = over_mesh(fn, self.spec.mesh, in_axes, STEP_OUT_SPECS)
        return jax.jit(program, donate_argnums=(0, 1))

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

    def rules(self, groups: Sequence[str]) -> jax.Array:
        """The ``rules`` argument of the step and epoch programs: each slot's optimizer, by
        the group name of the member it holds."""
        rules = np.array([self.spec.optimizers.index(g) for g in groups], np.int32)
        return shard_members(rules, self.spec.mesh) if self.spec.mesh is not None else rules

    def train_step(self, state, metrics, orders, step, keys, data, rules=None):
        """One step of every member (state and metrics donated): ``rules`` [slots] picks
        each member's optimizer (default: the first of ``spec.optimizers``)."""
        rules = self._default_rules(state, rules)
        step = jnp.asarray(step, jnp.int32)
        return self.run_chunks(self.step_program, state, metrics, orders, step, keys, data, rules)

    def epoch_program(self, num_steps: int) -> Callable:
        """The jitted program of ``num_steps`` steps in one ``lax.scan``: ``(state, metrics,
        orders, keys, data, rules[, first]) -> (state, metrics)``."""
        if num_steps not in self._epochs:

            def epoch(state, metrics, orders, keys, data, rules):
                def body(carry, step):
                    return self._step(*carry, orders, step, keys, data, rules), None

                (state, metrics), _ = jax.lax.scan(
                    body, (state, metrics), jnp.arange(num_steps), unroll=self.spec.scan_unroll
                )
                return state, metrics

            self._epochs[num_steps] = self._program(epoch, EPOCH_AXES)
        return self._epochs[num_steps]

    def train_epoch(self, num_steps: int) -> Callable:
        """``(state, metrics, orders, keys, data, rules=None) -> (state, metrics)``:
        ``num_steps`` steps of every member (of each chunk in turn)."""
        program = self.epoch_program(num_steps)

        def run_epoch(state, metrics, orders, keys, data, rules=None):
            rules = self._default_rules(state, rules)
            return self.run_chunks(program, state, metrics, orders, keys, data, rules)

        return run_epoch

    def run_chunks(self, program: Callable, state: MemberState, metrics, *args):
        """A step or epoch ``program`` on all members at once, or on each chunk in turn."""
        if self.spec.chunk is None:
            return program(state, metrics, *args)
        local = jax.tree.leaves(state.params)[0].shape[0] // self.spec.member_rows
        for first in self._chunk_starts(local):
            state, metrics = program(state, metrics, *args, first)
        return state, metrics

    @functools.cache  # noqa: B019  (one tuple per slot count, kept with the programs)
    def _chunk_starts(self, local: int) -> tuple[jax.Array, ...]:
        """Each chunk's first slot as a device scalar, made once: a call per member per step
        should not also make an array."""
        return tuple(jnp.asarray(first, jnp.int32) for first in range(0, local, self.spec.chunk))

    def _default_rules(self, state: MemberState, rules: Any) -> Any:
        if rules is not None:
            return rules
        slots = jax.tree.leaves(state.params)[0].shape[0]
        return self.rules([self.spec.optimizers[0]] * slots)

    def predict(self, variables: tuple[Any, Any], images: jax.Array) -> np.ndarray:
        """Stacked ``(params, batch_stats)``, uint8 images -> softmax scores
        ``[slots, n, classes]`` on the host."""
        return self._predict(variables, images)

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
        grads, batch_stats, loss, correct = self.member_gradients(state, order, step, key, data)
        params, opt_state = self.tx.apply(grads, state.opt_state, state.params, rule)
        # [loss sum, correct count, steps]: a NaN loss stays NaN in the sum, so divergence is
        # seen at the end of the epoch without a device-to-host sync every step.
        metrics = metrics + jnp.stack([loss, correct, 1.0])
        return MemberState(params, batch_stats, opt_state), metrics

    def member_gradients(
        self, state: MemberState, order: jax.Array, step: jax.Array, key: jax.Array,
        data: GroupData,
    ) -> tuple[Any, Any, jax.Array, jax.Array]:  # fmt: skip
        """One member's forward and backward pass on the ``step``-th batch of its epoch
        order: ``(grads, new batch_stats, mean loss, correct count)``."""
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
        return grads, batch_stats, loss, correct


class ModelPrograms:
    """The programs of a run that depend on the network only (not on its optimizers).

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
        predict = over_members(self._member_predict, spec.chunk, PREDICT_AXES)
        axes = PREDICT_AXES
        if spec.chunk is not None:
            predict = chunk_at(predict, spec.chunk, PREDICT_AXES, write_back=False)
            axes = (*PREDICT_AXES, None)
        self._predict = jax.jit(over_mesh(predict, spec.mesh, axes, P(MEMBER_AXIS, DATA_AXIS)))

    def predict(self, variables: tuple[Any, Any], images: jax.Array) -> np.ndarray:
        """Stacked ``(params, batch_stats)``, images -> softmax scores ``[slots, n, classes]``
        on the host (every process's, across processes), each chunk in turn."""
        if self.spec.chunk is None:
            return to_host(self._predict(variables, images))
        rows, chunk = self.spec.member_rows, self.spec.chunk
        local = jax.tree.leaves(variables[0])[0].shape[0] // rows
        parts = [
            to_host(self._predict(variables, images, jnp.asarray(first, jnp.int32)))
            for first in range(0, local, chunk)
        ]
        # Call k gave chunk k of every device row: [rows * chunk, n, c] -> slot order.
        stacked = np.stack([p.reshape(rows, chunk, *p.shape[1:]) for p in parts], axis=1)
        return stacked.reshape(rows * local, *stacked.shape[3:])

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
def run_programs(spec: ProgramSpec) -> RunPrograms:
    """The programs of ``spec``, built once and reused while they stay in the cache."""
    return RunPrograms(spec)


def predict_members(
    programs: RunPrograms, state: MemberState, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """Every member's softmax scores [members, n, classes] on uint8 images [n, H, W, 3]."""
    split = programs.spec.data_parallel
    batch_size = -(-batch_size // split) * split  # the data axis takes equal shares
    count = len(images)
    variables, mesh = (state.params, state.batch_stats), programs.spec.mesh
    padded = np.zeros((-(-count // batch_size) * batch_size,) + images.shape[1:], np.uint8)
    padded[:count] = images
    batches = [
        programs.predict(variables, replicate(padded[i : i + batch_size], mesh))
        for i in range(0, len(padded), batch_size)
    ]
    return np.concatenate(batches, axis=1)[:, :count]


ProgramFactory = Callable[[ProgramSpec], Any]
