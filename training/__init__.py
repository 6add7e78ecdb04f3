"""The seed-vectorised ensemble trainer: many ResNet members of many optimizers, one member
axis, one set of compiled programs per run.

``train_ensemble`` trains a :class:`TrainConfig`'s members on every fold and writes a score
file per (fold, group) into the run directory; ``format_summary`` tabulates its result.
``train.py`` is its CLI, one flag per ``TrainConfig`` field. docs/training.md explains
every setting and the building blocks below.

Example:
  >>> import training
  >>> config = training.TrainConfig(optimizers={"dgrad": 2}, epochs=1, folds=(0,),
  ...                               out_dir="/tmp/dgrad-run")
  >>> result = training.train_ensemble(config, progress=False)  # doctest: +SKIP
  >>> print(training.format_summary(result))  # doctest: +SKIP
"""

from training.augment import AUGMENTATIONS, AugmentConfig, augment_images
from training.checkpoints import CheckpointPolicy
from training.config import (
    MEMBER_STRATEGIES,
    PRESETS,
    RESULT_FIELDS,
    STEP_LOOPS,
    TrainConfig,
    config_to_json,
    format_optimizer_groups,
    parse_folds,
    parse_optimizer_groups,
    parse_sweep,
    validate_config,
)
from training.fold import Fold, FoldMembers, FoldOutcome, MemberGroup, train_fold
from training.members import member_keys, member_seed, slot_keys
from training.optimizers import OPTIMIZER_NAMES, OPTIMIZERS, MemberOptimizer, make_optimizer
from training.placement import (
    AUTO_MEMBER_STRATEGY,
    AUTO_STEP_LOOP,
    Placement,
    parse_mesh,
    resolve_placement,
)
from training.programs import ProgramSpec, RunPrograms, run_programs
from training.results import GroupResult, TrainResult, format_summary
from training.trainer import select_folds, train_ensemble

__all__ = [
    "AUGMENTATIONS", "AUTO_MEMBER_STRATEGY", "AUTO_STEP_LOOP", "AugmentConfig",
    "CheckpointPolicy", "Fold", "FoldMembers", "FoldOutcome", "GroupResult",
    "MEMBER_STRATEGIES", "MemberGroup", "MemberOptimizer", "OPTIMIZERS", "OPTIMIZER_NAMES",
    "PRESETS", "Placement", "ProgramSpec", "RESULT_FIELDS", "RunPrograms", "STEP_LOOPS",
    "TrainConfig", "TrainResult", "augment_images", "config_to_json",
    "format_optimizer_groups", "format_summary", "make_optimizer", "member_keys",
    "member_seed", "parse_folds", "parse_mesh", "parse_optimizer_groups", "parse_sweep",
    "resolve_placement", "run_programs", "select_folds", "slot_keys", "train_ensemble",
    "train_fold", "validate_config",
]  # fmt: skip
