"""Shared helpers of the trainer tests: a small data set, a fast config, runs trained once
per session, interruptions, compile counting and score loading."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from session_cache import SessionCache

import training
from data import ImageDataset, load_dataset
from models.pretrained import Normalization
from training import ProgramSpec, RunPrograms, config_to_json, resolve_placement

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


def fast_config(tmp_path, name="run", **overrides) -> training.TrainConfig:
    return training.TrainConfig(
        **{**FAST, "out_dir": str(tmp_path / name), "strategy": "loop", **overrides}
    )


def run(tmp_path, dataset, name="run", **overrides) -> training.TrainResult:
    config = fast_config(tmp_path, name, **overrides)
    return training.train_ensemble(config, dataset=dataset, progress=False)


def programs_for(config, members, strategy="loop") -> RunPrograms:
    placement = resolve_placement(strategy, "python", members, batch_size=config.batch_size)
    return RunPrograms(ProgramSpec.for_run(config, 10, placement, HALF))


def programs_with(wrap_init=None, wrap_predict=None):
    """A ``build_programs`` factory whose programs' init or predict are wrapped."""

    def build(spec):
        programs = RunPrograms(spec)
        if wrap_init is not None:
            programs.init = wrap_init(programs.init)
        if wrap_predict is not None:
            programs.predict = wrap_predict(programs.predict)
        return programs

    return build


def load_scores(run_dir, fold, group) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, "scores", f"fold{fold}", f"{group}.npz")) as f:
        return {key: f[key] for key in f.files}


class Killed(Exception):
    """Raised from ``on_step`` to interrupt a run where a test wants it interrupted."""


def kill_at(epoch: int, step: int):
    """An ``on_step`` callback that interrupts the run after ``step`` of ``epoch`` (0-based)."""

    def on_step(fold, at_epoch, at_step):
        if (at_epoch, at_step) == (epoch, step):
            raise Killed

    return on_step


class SharedRuns:
    """Runs of :func:`small_digits` trained once per pytest session and read by many tests.

    A run is keyed by its whole config but the run directory (``config.json``'s fields,
    non-result ones included, so a test asking for ``vmap`` never gets a ``loop`` run), and
    kept in the session's :class:`SessionCache`, so the xdist workers share it. A shared run
    is read-only: a test that changes files gets its own copy (:meth:`interrupted`).
    """

    def __init__(self, cache: SessionCache):
        self.cache = cache

    def _name(self, config: training.TrainConfig, kind: str) -> str:
        fields = config_to_json(config)
        fields.pop("out_dir")
        text = json.dumps(fields, sort_keys=True)
        return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def finished(self, **overrides) -> training.TrainResult:
        """The run of ``fast_config(**overrides)``, trained to the end."""
        config = fast_config(self.cache.root, "unused", **overrides)

        def make(directory: Path) -> None:
            run_config = dataclasses.replace(config, out_dir=str(directory / "run"))
            result = training.train_ensemble(run_config, dataset=small_digits(), progress=False)
            (directory / "result.pickle").write_bytes(pickle.dumps(result))

        directory = self.cache.directory(self._name(config, "finished"), make)
        return pickle.loads((directory / "result.pickle").read_bytes())

    def finished_copy(
        self, tmp_path: Path, name: str = "copy", **overrides
    ) -> training.TrainConfig:
        """A private copy, at ``tmp_path / name``, of :meth:`finished`'s run; returns the config
        that resumes or overwrites it."""
        result = self.finished(**overrides)
        shutil.copytree(result.run_dir, tmp_path / name)
        return fast_config(tmp_path, name, **overrides)

    def interrupted(
        self, tmp_path: Path, name: str = "resumed", **overrides
    ) -> training.TrainConfig:
        """A private copy, at ``tmp_path / name``, of the run killed at step 3 of its second
        epoch (after the checkpoint of its first); returns the config that resumes it."""
        config = fast_config(self.cache.root, "unused", **overrides)

        def make(directory: Path) -> None:
            run_config = dataclasses.replace(config, out_dir=str(directory / "run"))
            with contextlib.suppress(Killed):
                training.train_ensemble(run_config, dataset=small_digits(), progress=False,
                                     on_step=kill_at(1, 3))  # fmt: skip

        template = self.cache.directory(self._name(config, "interrupted"), make) / "run"
        shutil.copytree(template, tmp_path / name)
        return dataclasses.replace(config, out_dir=str(tmp_path / name))


@contextlib.contextmanager
def count_backend_compiles() -> Iterator[list[str]]:
    """Collects the name of every program XLA compiles inside the block.

    The session's persistent compilation cache is switched off meanwhile: a program found
    there is not compiled, so it would not be counted.
    """
    compiled: list[str] = []

    def listen(name, seconds, fun_name="", **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiled.append(fun_name)

    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        jax.config.update("jax_enable_compilation_cache", cache)
