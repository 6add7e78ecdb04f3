"""Where the run's members run: the member strategy, the step loop, the device mesh.

``auto`` resolves per backend from measurements (``benchmarks/trainer.py``; the numbers are
in ``docs/performance.md``). On XLA:CPU a vmapped convolution runs as a slow grouped
convolution (E(N) 0.18-0.33 against 1.01-1.03 for one member's program called per member),
and a train step inside a ``lax.scan`` without unrolling hits a slow weight-gradient layout
(jax-ml/jax#12868, 20x). On one H200 (ResNet50, 224 px, batch 30, bfloat16) the vmapped
members ran at E(7) 0.43, E(14) 0.45 and all 56 of the paper's in chunks of 14 at E 0.32, so
``loop`` is the GPU's too; its step loop and the TPU entries are not measured yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

AUTO_MEMBER_STRATEGY = {"cpu": "loop", "gpu": "loop", "tpu": "vmap"}  # tpu: unmeasured
AUTO_STEP_LOOP = {"cpu": "python", "gpu": "python", "tpu": "python"}  # gpu, tpu: unmeasured
MEMBER_AXIS = "member"  # members are split over it; nothing crosses it
DATA_AXIS = "data"  # one member's batch is split over it; gradients and BatchNorm reduce over it
MESH_AXES = (MEMBER_AXIS, DATA_AXIS)


def parse_mesh(text: str) -> dict[str, int] | None:
    """Parses ``"member=2,data=4"`` into ``{"member": 2, "data": 4}`` (a missing axis is 1);
    ``"auto"`` is None, the mesh :func:`auto_mesh_shape` picks."""
    if text.strip() == "auto":
        return None
    shape = {MEMBER_AXIS: 1, DATA_AXIS: 1}
    given: set[str] = set()
    for item in text.split(","):
        name, equals, size = item.strip().partition("=")
        name = name.strip()
        if name not in MESH_AXES or not equals:
            raise ValueError(f"--mesh {text!r}: expected 'member=M,data=D', got {item.strip()!r}")
        if name in given:
            raise ValueError(f"--mesh {text!r}: the {name} axis is given twice")
        given.add(name)
        try:
            shape[name] = int(size)
        except ValueError:
            raise ValueError(f"--mesh {text!r}: {name} size {size!r} is not an integer") from None
        if shape[name] < 1:
            raise ValueError(f"--mesh {text!r}: {name} size must be >= 1")
    return shape


def format_mesh(shape: dict[str, int]) -> str:
    """``{"member": 2, "data": 4}`` -> ``"member=2 data=4"``."""
    return " ".join(f"{axis}={shape[axis]}" for axis in MESH_AXES)


class Placement(NamedTuple):
    """How the run's members are laid out.

    Attributes:
      strategy: "vmap", "loop" or "sharded" (``auto`` resolved).
      inner_strategy: how the members one device holds share its program ("vmap" or
        "loop"; the strategy itself unless it is "sharded").
      step_loop: "python" or "scan" (``auto`` resolved).
      mesh: the ``(member, data)`` mesh of the "sharded" strategy, else None.
      slots: member slots the programs run; more than the members when the members do not
        divide the member axis (the extra slots train padding members whose scores are
        dropped).
      chunk: members one program call trains on a device: 1 under "loop" (a one-member
        program called per member), all a device holds under "vmap" (None) unless
        ``member_chunk`` asks for fewer, so that they fit its memory.
    """

    strategy: str
    inner_strategy: str
    step_loop: str
    mesh: Mesh | None
    slots: int
    chunk: int | None = None

    def slots_for(self, members: int) -> int:
        """Slots for ``members``: every device holds as many, a whole number of chunks."""
        unit = self.mesh_shape[MEMBER_AXIS] * (self.chunk or 1)
        return -(-members // unit) * unit

    @property
    def mesh_shape(self) -> dict[str, int]:
        """``{"member": M, "data": D}``; 1 x 1 without a mesh."""
        if self.mesh is None:
            return {MEMBER_AXIS: 1, DATA_AXIS: 1}
        return {axis: self.mesh.shape[axis] for axis in MESH_AXES}


def auto_mesh_shape(members: int, devices: int, batch_size: int) -> dict[str, int]:
    """The mesh ``auto`` picks: the most devices busy, members first, no padded slots.

    A shape is ``member`` x ``data`` devices with ``data`` dividing the batch. In one
    process the member axis divides the members (so no device trains padding) and the
    shape may leave devices out; across processes every device takes part (each process
    holds its share of the members), padding members where nothing else fits.
    """
    every_device = jax.process_count() > 1
    shapes = [
        (member, data)
        for member in range(1, devices + 1)
        for data in range(1, devices // member + 1)
        if batch_size % data == 0
        and (member * data == devices if every_device else members % member == 0)
        and member <= members
    ]
    if not shapes:
        raise ValueError(
            f"no (member, data) mesh of {devices} devices fits {members} members and "
            f"batch_size {batch_size} (data must divide the batch)"
        )
    member, data = max(shapes, key=lambda s: (s[0] * s[1], members % s[0] == 0, s[0]))
    return {MEMBER_AXIS: member, DATA_AXIS: data}


def check_mesh_shape(shape: dict[str, int], members: int, devices: int, batch_size: int) -> None:
    """ValueError naming the numbers when ``shape`` does not fit the devices, members or batch."""
    member, data = shape[MEMBER_AXIS], shape[DATA_AXIS]
    if member * data > devices:
        raise ValueError(
            f"mesh {format_mesh(shape)} needs {member * data} devices; {devices} are available"
        )
    if jax.process_count() > 1 and member * data != devices:
        raise ValueError(
            f"mesh {format_mesh(shape)} uses {member * data} of {devices} devices; across "
            "processes the mesh must hold every device"
        )
    if member > members:
        raise ValueError(
            f"mesh member={member} is more than the run's {members} members (devices "
            "would train only padding); use a larger data axis"
        )
    if batch_size % data:
        raise ValueError(
            f"mesh data={data} does not divide batch_size {batch_size}: each member's batch "
            "is split evenly over the data axis"
        )


def check_mesh_strategy(strategy: str, mesh_shape: dict[str, int]) -> None:
    """ValueError unless ``strategy`` can use a mesh: only "sharded" (or "auto") shards."""
    if strategy in ("vmap", "loop"):
        raise ValueError(
            f"mesh {format_mesh(mesh_shape)} needs strategy 'sharded' or 'auto', not {strategy!r}"
        )


def resolve_placement(
    strategy: str,
    step_loop: str,
    members: int,
    *,
    batch_size: int,
    mesh_shape: dict[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
    member_chunk: int | None = None,
) -> Placement:
    """Resolves ``auto`` for the current backend and lays ``members`` out on ``devices``.

    Args:
      strategy: "auto", "vmap", "loop" or "sharded".
      step_loop: "auto", "python" or "scan".
      members: the run's member count (every group's, on one axis).
      batch_size: images per step per member (the data axis must divide it).
      mesh_shape: ``{"member": M, "data": D}`` for "sharded" (or "auto"); None lets
        :func:`auto_mesh_shape` choose.
      devices: the devices of the "sharded" strategy (default: every device of every
        process).
      member_chunk: members per program call under "vmap" (default: all a device holds).

    Raises:
      ValueError: a mesh with "vmap" or "loop", or a mesh shape that does not fit.
    """
    backend = jax.default_backend()
    devices = list(jax.devices() if devices is None else devices)
    if mesh_shape is not None:
        check_mesh_strategy(strategy, mesh_shape)
    if strategy == "auto":
        # A mesh asked for is used (or refused by check_mesh_shape), never dropped.
        sharded = len(devices) > 1 or mesh_shape is not None
        strategy = "sharded" if sharded else AUTO_MEMBER_STRATEGY.get(backend, "loop")
    if step_loop == "auto":
        step_loop = AUTO_STEP_LOOP.get(backend, "python")
    if strategy != "sharded":
        return _with_chunk(Placement(strategy, strategy, step_loop, None, members), member_chunk)
    if mesh_shape is None:
        mesh_shape = auto_mesh_shape(members, len(devices), batch_size)
    check_mesh_shape(mesh_shape, members, len(devices), batch_size)
    member, data = mesh_shape[MEMBER_AXIS], mesh_shape[DATA_AXIS]
    mesh = Mesh(np.array(devices[: member * data]).reshape(member, data), MESH_AXES)
    inner = AUTO_MEMBER_STRATEGY.get(backend, "loop")
    return _with_chunk(Placement(strategy, inner, step_loop, mesh, members), member_chunk)


def _with_chunk(placement: Placement, member_chunk: int | None) -> Placement:
    """``placement`` with its chunk and the slots its members then take."""
    if placement.inner_strategy == "loop":
        if member_chunk not in (None, 1):
            raise ValueError(
                f"member_chunk {member_chunk} needs the vmap inner strategy; 'loop' trains "
                "one member per program call"
            )
        chunk = 1
    elif member_chunk is not None:  # no larger than what a device holds: no idle padding
        chunk = min(member_chunk, -(-placement.slots // placement.mesh_shape[MEMBER_AXIS]))
    else:
        chunk = None
    placement = placement._replace(chunk=chunk)
    return placement._replace(slots=placement.slots_for(placement.slots))


def describe_placement(placement: Placement, requested: str, requested_loop: str) -> str:
    """The strategy line a run prints, e.g. ``member strategy: sharded, mesh member=2 ...``."""
    where = f", mesh {format_mesh(placement.mesh_shape)}" if placement.mesh is not None else ""
    return (
        f"member strategy: {placement.strategy}{where}, step loop: {placement.step_loop} "
        f"(backend {jax.default_backend()}; requested {requested}/{requested_loop})"
    )
