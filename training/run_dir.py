"""The run directory: its layout, checks before anything is written, lock, logs, checkpoints.

Layout (``out_dir``)::

    config.json                     the TrainConfig of the run
    train.lock                      held by the process that trains into the directory
    scores/fold{f}/{group}.npz      softmax scores, the input of ensemble.py
    logs/fold{f}/{group}.csv        per epoch and member: loss, train accuracy, diverged
    checkpoints/fold{f}/{group}/    orbax checkpoints of an unfinished fold/group

Every file is written atomically (a temporary file, then ``os.replace``), so a kill never
leaves a truncated file behind. A checkpoint carries a checksum of the member states and
the log rows up to its epoch; one that cannot be restored or does not match its checksum
is reported and dropped, and the fold/group trains again from an earlier checkpoint or
from scratch, which gives the same numbers (every random draw is a function of the seed,
group, member, fold, epoch and step).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from training.config import (
    TrainConfig,
    config_to_json,
    read_config_json,
    result_differences,
)
from training.placement import sync_processes, to_host

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"
TRAINER_ENTRIES = (CONFIG_FILE, LOCK_FILE, "scores", "logs", "checkpoints")
LOG_FIELDS = ("epoch", "member", "loss", "train_accuracy", "diverged")


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (names the directory and why)."""


def write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so readers see old or new."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.partial"
    with open(temporary, "w", newline="") as f:
        f.write(text)
    os.replace(temporary, path)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_run_directory(config: TrainConfig, *, resume: bool, overwrite: bool) -> str:
    """Checks that the run can write into ``config.out_dir``; writes nothing.

    Returns:
      The absolute path of the run directory.

    Raises:
      RunDirectoryError: the directory is not writable; holds a run that neither ``resume``
        nor ``overwrite`` was given for; holds a run whose result-affecting settings differ
        (``resume``); or holds files the trainer did not write (``overwrite``).
    """
    path = os.path.abspath(config.out_dir)
    if resume and overwrite:
        raise RunDirectoryError("resume continues the run in out_dir and overwrite deletes it")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"output directory {path!r} is not writable ({existing!r})")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        return path
    if overwrite:
        foreign = sorted(set(os.listdir(path)) - set(TRAINER_ENTRIES))
        if foreign:
            raise RunDirectoryError(
                f"--overwrite removes only what the trainer writes, but {path!r} also holds "
                f"{foreign}; move them away or choose another --out-dir"
            )
    elif not resume:
        raise RunDirectoryError(
            f"{path!r} already holds a run (config.json); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out-dir"
        )
    else:
        saved = read_config_json(config_path)
        differing = result_differences(saved, config)
        if differing:
            current = config_to_json(config)
            raise RunDirectoryError(
                f"cannot resume {path!r}: its config.json differs in {differing} (saved "
                f"{[saved.get(k) for k in differing]}, now {[current[k] for k in differing]})"
            )
    return path


class RunDirectory:
    """An open run directory: holds its lock until :meth:`close` (or the process ends)."""

    def __init__(self, path: str):
        self.path = path
        self._lock: io.TextIOWrapper | None = None

    @classmethod
    def open(cls, config: TrainConfig, *, resume: bool, overwrite: bool) -> RunDirectory:
        """Checks, locks, clears (``overwrite``) and initialises the run directory."""
        path = check_run_directory(config, resume=resume, overwrite=overwrite)
        # Every process checks the directory as it found it before process 0 changes it;
        # otherwise a slower process would find process 0's new config.json and refuse.
        sync_processes("run directory checked")
        run_dir = cls(path)
        if jax.process_index() == 0:
            os.makedirs(path, exist_ok=True)
            run_dir._acquire_lock()
            if overwrite:
                for entry in TRAINER_ENTRIES:
                    target = os.path.join(path, entry)
                    if entry == LOCK_FILE or not os.path.exists(target):
                        continue
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
            if not os.path.exists(os.path.join(path, CONFIG_FILE)):
                write_atomically(
                    os.path.join(path, CONFIG_FILE), json.dumps(config_to_json(config), indent=2)
                )
        sync_processes("run directory ready")
        return run_dir

    def _acquire_lock(self) -> None:
        # flock is released by the kernel when its holder exits however it exits, so a lock
        # file left by a dead process is never mistaken for a live holder.
        lock = open(os.path.join(self.path, LOCK_FILE), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise RunDirectoryError(
                f"{self.path!r} is in use by {holder}; wait for it to finish or stop it"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        self._lock = lock

    def close(self) -> None:
        """Releases the lock."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def scores_path(self, fold: int, group: str) -> str:
        return os.path.join(self.path, "scores", f"fold{fold}", f"{group}.npz")

    def log_path(self, fold: int, group: str) -> str:
        return os.path.join(self.path, "logs", f"fold{fold}", f"{group}.csv")

    def checkpoint_dir(self, fold: int, group: str) -> str:
        return os.path.join(self.path, "checkpoints", f"fold{fold}", group)

    def write_log(self, fold: int, group: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replaces a fold/group's CSV log with ``rows``, atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(self.log_path(fold, group), text.getvalue())

    def remove_checkpoints(self, fold: int, group: str) -> None:
        """Deletes a finished fold/group's checkpoints, and the folders they leave empty."""
        directory = self.checkpoint_dir(fold, group)
        shutil.rmtree(directory, ignore_errors=True)
        for parent in (os.path.dirname(directory), os.path.dirname(os.path.dirname(directory))):
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # only when empty

    @contextlib.contextmanager
    def checkpoints(self, fold: int, group: str) -> Iterator[FoldCheckpoints]:
        """The checkpoints of one fold/group, closed (saves finished) on any exit."""
        checkpoints = FoldCheckpoints(self.checkpoint_dir(fold, group))
        try:
            yield checkpoints
        finally:
            checkpoints.close()


@jax.jit
def state_checksum(tree: Any) -> jax.Array:
    """Two position-weighted uint32 sums of the bits of every leaf: ``[leaves, 2]``.

    Computed where the state lives (sharded states included), so checking a checkpoint costs
    one pass over it on the device and no host copy; any change of a stored bit changes it.
    """

    def leaf_sums(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.dtype.itemsize == 4:
            bits = jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()
        else:
            bits = leaf.astype(jnp.uint32).ravel()  # bool, int8/16, bfloat16 counters
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
        return jnp.stack([bits.sum(dtype=jnp.uint32), (bits * weights).sum(dtype=jnp.uint32)])

    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([leaf_sums(leaf) for leaf in leaves])


class FoldCheckpoints:
    """Orbax checkpoints of one fold/group: the member states, divergence and log rows."""

    def __init__(self, directory: str):
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    def save(self, epoch: int, state: Any, diverged: np.ndarray, log_rows: list[dict]) -> None:
        """Saves the state after ``epoch`` epochs (asynchronously)."""
        checksum = to_host(state_checksum(state)).tolist()
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"state": state, "diverged": diverged}),
                meta=ocp.args.JsonSave({"checksum": checksum, "log_rows": log_rows}),
            ),
        )

    def restore_latest(
        self, template: Any, diverged: np.ndarray, warn
    ) -> tuple[int, Any, np.ndarray, list[dict]] | None:
        """The newest checkpoint that restores and matches its checksum, or None.

        A checkpoint that fails either check is reported through ``warn`` with its path and
        deleted, and the next older one is tried.
        """
        for epoch in sorted(self._manager.all_steps(), reverse=True):
            path = os.path.join(self.directory, str(epoch))
            try:
                restored = self._manager.restore(
                    epoch,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore({"state": template, "diverged": diverged}),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                state = restored["state"]["state"]
                stored = restored["meta"]["checksum"]
                if to_host(state_checksum(state)).tolist() != stored:
                    raise ValueError("its content does not match the checksum saved with it")
            except Exception as error:  # orbax raises many types for a damaged checkpoint
                problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
                warn(
                    f"warning: checkpoint {path} cannot be used ({type(error).__name__}: "
                    f"{problem[:200]}); it is deleted and the fold/group trains again from an "
                    "earlier point"
                )
                try:
                    self._manager.delete(epoch)
                except Exception:  # a checkpoint too damaged for orbax to delete
                    shutil.rmtree(path, ignore_errors=True)
                    self._manager.reload()
                continue
            rows = restored["meta"]["log_rows"]
            return epoch, state, np.asarray(restored["state"]["diverged"]), rows
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
