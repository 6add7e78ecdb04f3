"""The run's configuration: ``TrainConfig``, its presets, validation and JSON form.

Each field carries its CLI help text, so ``train.py`` builds its parser from the fields and
the two can never disagree. A field marked ``affects_results=False`` (how members share a
program, checkpoint cadence, batching of the evaluation) may change when a run is resumed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from models import MODEL_NAMES
from models.resnet import STRIDE_PLACEMENTS
from rundir import SWEEPABLE, canonical_names, format_hyperparameter, grid_points
from training.augment import AUGMENTATIONS
from training.optimizers import OPTIMIZER_NAMES, OPTIMIZERS
from training.placement import MESH_AXES, check_mesh_strategy, parse_mesh

MEMBER_STRATEGIES = ("auto", "vmap", "loop", "sharded")
STEP_LOOPS = ("auto", "python", "scan")
DTYPES = ("float32", "bfloat16")


def parse_optimizer_groups(text: str) -> dict[str, int]:
    """Parses ``"sgd:14,dgrad:7"`` into ``{"sgd": 14, "dgrad": 7}``; a bare name means 1."""
    groups: dict[str, int] = {}
    for item in text.split(","):
        name, colon, count = item.strip().partition(":")
        name = name.strip().lower()
        if name not in OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown optimizer {name!r} in --optimizers {text!r}; known: "
                f"{', '.join(OPTIMIZER_NAMES)}"
            )
        if colon and not count.strip():
            raise ValueError(f"{item.strip()!r} in --optimizers {text!r} has no member count")
        try:
            members = int(count) if colon else 1
        except ValueError:
            raise ValueError(f"member count {count!r} for {name!r} is not an integer") from None
        if name in groups:
            raise ValueError(f"optimizer {name!r} is listed twice in --optimizers {text!r}")
        groups[name] = members
    return groups


def format_optimizer_groups(groups: Mapping[str, int]) -> str:
    """The inverse of :func:`parse_optimizer_groups`."""
    return ",".join(f"{name}:{members}" for name, members in groups.items())


def parse_folds(text: str) -> tuple[int, ...]:
    """Parses ``"0,2"`` into ``(0, 2)``."""
    try:
        folds = tuple(int(fold) for fold in text.split(","))
    except ValueError:
        raise ValueError(f"--folds {text!r} is not a comma-separated list of integers") from None
    if any(fold < 0 for fold in folds):
        raise ValueError(f"--folds {text!r}: folds are counted from 0")
    return folds


def parse_sweep(text: str) -> dict[str, tuple[float, ...]]:
    """Parses ``"learning_rate=3e-3,1e-3"`` into ``{"learning_rate": (0.003, 0.001)}``."""
    name, equals, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not equals or name not in SWEEPABLE:
        raise ValueError(
            f"--sweep {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}"
        )
    try:
        return {name: tuple(float(value) for value in values.split(","))}
    except ValueError:
        raise ValueError(f"--sweep {text!r}: the values are not comma-separated numbers") from None


def _field(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    affects_results: bool = True,
    append: bool = False,
) -> Any:
    metadata = dict(
        help=help, choices=choices, parse=parse, affects_results=affects_results, append=append
    )
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _default_groups() -> dict[str, int]:
    return {name: 3 for name in OPTIMIZER_NAMES}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; saved as ``config.json`` in the run directory.

    Every field is a ``train.py`` flag (``image_size`` is ``--image-size``); its help text is
    the field's ``metadata["help"]``, printed by ``python train.py --help``.
    """

    dataset: str = _field("digits", "digits (embedded, offline), hela, bg, lar or folder:PATH")
    data_dir: str | None = _field(None, "directory of the TFDS builds of hela/bg/lar")
    model: str = _field("resnet_tiny", "model name, one of models.MODEL_NAMES")
    stride_placement: str = _field(
        "v1",
        "where a down-sampling bottleneck strides: v1 (the paper's and Keras' ResNet50) or "
        "v1.5 (torchvision/timm weights)",
        choices=STRIDE_PLACEMENTS,
    )
    image_size: int = _field(8, "side of the square model input, in pixels")
    optimizers: Mapping[str, int] = _field(
        default_factory=_default_groups,
        help=f"groups as name:members, comma separated, from {', '.join(OPTIMIZER_NAMES)}",
        parse=parse_optimizer_groups,
    )
    epochs: int = _field(6, "passes over the training split per fold")
    batch_size: int = _field(32, "images per step per member; the last partial batch is dropped")
    learning_rate: float = _field(1e-3, "learning rate of every optimizer")
    b1: float = _field(0.9, "first-moment decay of the Adam-like optimizers")
    b2: float = _field(0.999, "second-moment decay of the Adam-like optimizers")
    eps: float = _field(1e-8, "epsilon of the Adam-like optimizers")
    momentum: float = _field(0.9, "SGD's momentum (the paper's SGD uses 0.9)")
    weight_decay: float = _field(0.0, "coupled L2 weight decay added to the gradient (0: none)")
    sweep: Mapping[str, tuple[float, ...]] | None = _field(
        None,
        "train every group at every point of a hyperparameter grid, in one program: "
        "NAME=V1,V2,... (repeat the flag for a grid over several names; NAME from "
        f"{', '.join(SWEEPABLE)}); each group's members are trained at each point",
        parse=parse_sweep,
        append=True,
    )
    seed: int = _field(
        0, "run seed (>= 0); every member's keys derive from it, the group and the member"
    )
    validation_fraction: float = _field(
        0.0,
        "hold out this stratified share of each fold's training split (not trained on) and "
        "write every member's scores on it, for ensemble.py --select and --calibrate (0: the "
        "paper's protocol)",
    )
    folds: tuple[int, ...] | None = _field(
        None, "comma-separated 0-based folds to train (default: all)", parse=parse_folds
    )
    dtype: str = _field(
        "float32", "computation dtype; parameters and optimizer state stay float32", choices=DTYPES
    )
    weights: str | None = _field(
        None, "ImageNet weight file (.safetensors, .pth, Keras .h5) to fine-tune from"
    )
    augment: str = _field(
        "none",
        "training augmentation: paper (reflections, x/y scales in [1, 2]), scale, none",
        choices=tuple(sorted(AUGMENTATIONS)),
    )
    strategy: str = _field(
        "auto",
        "how the members share a program: vmap, loop, sharded or auto",
        choices=MEMBER_STRATEGIES,
        affects_results=False,
    )
    step_loop: str = _field(
        "auto",
        "python (a jitted step per batch), scan (an epoch in one lax.scan) or auto",
        choices=STEP_LOOPS,
        affects_results=False,
    )
    mesh: Mapping[str, int] | None = _field(
        None,
        "the sharded strategy's device mesh, e.g. member=2,data=4: members split over the "
        "member axis, each member's batch over the data axis (default: auto picks it)",
        parse=parse_mesh,
        affects_results=False,
    )
    member_chunk: int | None = _field(
        None,
        "under vmap, members per program call on a device, so that their activations fit its "
        "memory (default: all it holds); loop trains one at a time",
        parse=int,
        affects_results=False,
    )
    scan_unroll: int = _field(8, "steps unrolled per scan iteration", affects_results=False)
    eval_batch_size: int = _field(256, "test images per prediction call", affects_results=False)
    checkpoint_every: int | None = _field(
        None,
        "epochs between orbax checkpoints, 0 for none (default: by time, --checkpoint-minutes)",
        parse=int,
        affects_results=False,
    )
    checkpoint_minutes: float = _field(
        1.0,
        "without --checkpoint-every: checkpoint at the end of an epoch once this many minutes "
        "have passed since the fold started or was last saved",
        affects_results=False,
    )
    keep_checkpoints: bool = _field(
        False,
        "keep a fold's checkpoints after its score files are written (default: remove them)",
        affects_results=False,
    )
    out_dir: str = _field("runs/default", "the run directory", affects_results=False)

    def __post_init__(self):
        # One grid member order whatever the order the names were given in (rundir).
        if isinstance(self.sweep, Mapping):
            canonical = {name: self.sweep[name] for name in canonical_names(self.sweep)}
            object.__setattr__(self, "sweep", canonical)


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

RESULT_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["affects_results"]
)


def validate_config(config: TrainConfig) -> None:
    """Raises ValueError naming the first setting that cannot work, before any training."""
    if not config.optimizers:
        raise ValueError("optimizers is empty: name at least one group, e.g. {'dgrad': 7}")
    for name, members in config.optimizers.items():
        if name not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_NAMES)}")
        if not _is_int(members):
            raise ValueError(f"optimizer group {name!r}: member count {members!r} is not an int")
        if members < 1:
            raise ValueError(f"optimizer group {name!r} needs at least 1 member, got {members!r}")
    _validate_sweep(config)
    if config.model not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.model!r}; known: {', '.join(MODEL_NAMES)}")
    if not 0 <= config.validation_fraction < 1:  # NaN fails too
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {config.validation_fraction!r}"
        )
    for field in ("learning_rate", "b1", "b2", "eps", "momentum", "weight_decay"):
        if not math.isfinite(getattr(config, field)):
            raise ValueError(f"{field} must be a finite number, got {getattr(config, field)!r}")
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
        ("member_chunk", 1),
        ("checkpoint_every", 0),
        ("seed", 0),  # the validation split's seed sequence takes no negative seed
    ):
        value = getattr(config, field)
        if value is not None and not _is_int(value):
            raise ValueError(f"{field} must be an int, got {value!r} ({type(value).__name__})")
        if value is not None and not value >= minimum:
            raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    minutes = config.checkpoint_minutes  # may be fractional
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes >= 0):
        raise ValueError(f"checkpoint_minutes must be a number >= 0, got {minutes!r}")
    if config.folds is not None and (
        len(config.folds) == 0 or not all(_is_int(f) and f >= 0 for f in config.folds)
    ):
        raise ValueError(
            f"folds must be None (every fold) or fold indices >= 0, got {config.folds!r}"
        )
    for field, allowed in (
        ("strategy", MEMBER_STRATEGIES),
        ("step_loop", STEP_LOOPS),
        ("augment", tuple(AUGMENTATIONS)),
        ("stride_placement", STRIDE_PLACEMENTS),
        ("dtype", DTYPES),
    ):
        if getattr(config, field) not in allowed:
            raise ValueError(f"{field} {getattr(config, field)!r} is not one of {allowed}")
    if config.mesh is not None:
        if set(config.mesh) != set(MESH_AXES) or not all(
            _is_int(size) and size >= 1 for size in config.mesh.values()
        ):
            raise ValueError(f"mesh {dict(config.mesh)!r} is not {{'member': M, 'data': D}}")
        check_mesh_strategy(config.strategy, config.mesh)
    if config.weights is not None and not os.path.isfile(config.weights):
        raise ValueError(f"weights file {config.weights!r} does not exist")
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        raise ValueError(f"data directory {config.data_dir!r} does not exist")


def _is_int(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate_sweep(config: TrainConfig) -> None:
    if not config.sweep:
        return
    for name, values in config.sweep.items():
        if name not in SWEEPABLE:
            raise ValueError(f"sweep over {name!r}: sweepable are {', '.join(SWEEPABLE)}")
        if len(values) == 0 or len({format_hyperparameter(v) for v in values}) != len(values):
            raise ValueError(
                f"sweep {name}={list(values)} needs distinct values (to 6 significant digits, "
                "as score files and ensemble specifications name them)"
            )
        lacking = [
            group for group in config.optimizers if name not in OPTIMIZERS[group].hyperparameters
        ]
        if lacking:
            raise ValueError(
                f"sweep over {name!r}: optimizer {lacking[0]!r} has no hyperparameter {name!r} "
                f"(it takes {', '.join(OPTIMIZERS[lacking[0]].hyperparameters)})"
            )
    for point in grid_points(config.sweep):  # every value must be valid where it is used
        try:
            validate_config(dataclasses.replace(config, sweep=None, **point))
        except ValueError as error:
            raise ValueError(f"sweep point {point}: {error}") from None


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON values (the form of ``config.json``)."""
    # NumPy integers become Python's: json cannot write them, and the digest must not
    # depend on which of the two a caller passed.
    values = {k: int(v) if _is_int(v) else v for k, v in dataclasses.asdict(config).items()}
    values["optimizers"] = {name: int(n) for name, n in config.optimizers.items()}
    values["mesh"] = (
        {axis: int(size) for axis, size in config.mesh.items()} if config.mesh is not None else None
    )
    values["sweep"] = (
        {name: [float(v) for v in vals] for name, vals in config.sweep.items()}
        if config.sweep
        else None
    )
    values["folds"] = [int(f) for f in config.folds] if config.folds is not None else None
    return values


def result_differences(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """The result-affecting fields in which a saved ``config.json`` and ``config`` differ.

    The plain value of a swept hyperparameter (``learning_rate`` in a learning-rate sweep)
    reaches no member, so it does not count.
    """
    current = config_to_json(config)
    swept = set(current["sweep"] or ()) | set(saved.get("sweep") or ())
    return sorted(
        name for name in RESULT_FIELDS if name not in swept and saved.get(name) != current[name]
    )
