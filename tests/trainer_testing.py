"""Shared helpers of the trainer tests: a small data set, a fast config, score loading."""

from __future__ import annotations

import functools
import os

import numpy as np

import train
from data import ImageDataset, load_dataset
from models.pretrained import Normalization
from training.placement import resolve_placement
from training.programs import GroupPrograms, ProgramSpec

FAST = dict(
    model="resnet_tiny",
    image_size=8,
    epochs=2,
    batch_size=16,
    eval_batch_size=64,
    checkpoint_every=1,
    step_loop="python",
)
HALF = Normalization((0.5,) * 3, (0.5,) * 3)
# How far two member strategies on one device may differ in softmax scores after an epoch of
# the fast config: loop against vmap measured 7e-4 (float32 sums in another order, amplified
# by training); a wrong slice, key or statistic gives 0.1-0.4.
STRATEGY_SPREAD = 1e-3


@functools.cache
def small_digits() -> ImageDataset:
    """600 digits at 8x8 with two folds: big enough to learn something, fast to train."""
    digits = load_dataset("digits", 8)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(digits.labels), 600, replace=False))
    test_a, test_b = np.arange(0, 300), np.arange(300, 600)
    return ImageDataset(
        name="digits",
        images=digits.images[keep],
        labels=digits.labels[keep],
        class_names=digits.class_names,
        folds=((test_b, test_a), (test_a, test_b)),
    )


def fast_config(tmp_path, name="run", **overrides) -> train.TrainConfig:
    return train.TrainConfig(
        **{**FAST, "out_dir": str(tmp_path / name), "strategy": "loop", **overrides}
    )


def run(tmp_path, dataset, name="run", **overrides) -> train.TrainResult:
    config = fast_config(tmp_path, name, **overrides)
    return train.train_ensemble(config, dataset=dataset, progress=False)


def programs_for(config, group, members, strategy="loop") -> GroupPrograms:
    placement = resolve_placement(strategy, "python", members, batch_size=config.batch_size)
    return GroupPrograms(ProgramSpec.for_group(config, group, 10, placement, HALF))


def programs_with(wrap_init=None, wrap_predict=None):
    """A ``build_programs`` factory whose programs' init or predict are wrapped."""

    def build(spec):
        programs = GroupPrograms(spec)
        if wrap_init is not None:
            programs.init = wrap_init(programs.init)
        if wrap_predict is not None:
            programs.predict = wrap_predict(programs.predict)
        return programs

    return build


def load_scores(run_dir, fold, group) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, "scores", f"fold{fold}", f"{group}.npz")) as f:
        return {key: f[key] for key in f.files}
