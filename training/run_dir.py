"""The trainer's side of the run directory: checks before anything is written, the lock,
logs and orbax checkpoints.

The contract of the directory (layout, ``config.json`` and its provenance, which directory
the trainer may empty, atomic writes) is ``rundir``'s; this module applies it. A checkpoint
carries a checksum of the member states and the log rows up to its epoch; one that cannot be
restored or does not match its checksum is reported, moved aside (``rundir.set_aside_dir``)
and kept, and the fold trains again from an earlier checkpoint or from scratch, which gives
the same numbers (every random draw is a function of the seed, group, member, fold, epoch and
step). A fold's checkpoint holds every member of the groups it trains (one member axis); one
written with another number of padding slots (another ``--mesh``), or holding more groups
than are left to train, restores the members asked for.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import rundir
from rundir import RunDirectoryError
from training.config import RESULT_FIELDS, TrainConfig, config_to_json, result_differences
from training.placement import sync_processes, to_host

LOG_FIELDS = ("epoch", "member", "loss", "train_accuracy", "diverged")


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_run_directory(config: TrainConfig, *, resume: bool, overwrite: bool) -> str | None:
    """Checks that the run can write into ``config.out_dir``; writes nothing.

    Returns:
      The digest of the run's settings when it resumes (the one its score files carry), else
      None.

    Raises:
      RunDirectoryError: the directory is not writable; holds a run that neither ``resume``
        nor ``overwrite`` was given for; holds the trainer's entries without a
        ``config.json`` (it cannot prove it wrote them); ``resume`` finds nothing to resume,
        a run without provenance, or one whose result-affecting settings differ;
        ``overwrite`` finds files the trainer did not write.
    """
    path = os.path.abspath(config.out_dir)
    if resume and overwrite:
        raise RunDirectoryError("resume continues the run in out_dir and overwrite deletes it")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"output directory {path!r} is not writable ({existing!r})")
    has_config = os.path.isfile(os.path.join(path, rundir.CONFIG_FILE))
    if resume:
        return _check_resumable(path, config, has_config)
    if not has_config:
        ours = rundir.trainer_entries_present(path)
        if ours:
            raise RunDirectoryError(
                f"{path!r} holds {ours} but no {rundir.CONFIG_FILE}, so the trainer cannot "
                "tell they are a run it wrote: it neither adds to them nor removes them; move "
                "them away or choose another --out-dir"
            )
        return None
    if not overwrite:
        raise RunDirectoryError(
            f"{path!r} already holds a run ({rundir.CONFIG_FILE}); pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out-dir"
        )
    try:
        rundir.read_config(path)
    except RunDirectoryError as error:
        raise RunDirectoryError(
            f"--overwrite empties only a run directory the trainer wrote, and {error}"
        ) from None
    foreign = rundir.foreign_entries(path)
    if foreign:
        raise RunDirectoryError(
            f"--overwrite removes only what the trainer writes, but {path!r} also holds "
            f"{foreign}; move them away or choose another --out-dir"
        )
    return None


def _check_resumable(path: str, config: TrainConfig, has_config: bool) -> str:
    if not os.path.isdir(path):
        raise RunDirectoryError(f"nothing to resume at {path!r}: the directory does not exist")
    if not has_config:
        raise RunDirectoryError(
            f"nothing to resume at {path!r}: it has no {rundir.CONFIG_FILE}, which a run "
            "writes before anything else; without it the settings of what is there are "
            "unknown. Start a new run (without --resume) in another --out-dir"
        )
    saved = rundir.read_config(path)
    if saved.provenance is None:
        raise RunDirectoryError(
            f"cannot resume {path!r}: it was written by a trainer before score files carried "
            "provenance, so what they were trained with cannot be checked; ensemble.py still "
            "reads it. Start again with --overwrite or in another --out-dir"
        )
    if saved.stale_settings():
        raise RunDirectoryError(
            f"cannot resume {path!r}: its {rundir.CONFIG_FILE} was changed after the run "
            "wrote it (its settings no longer match the digest written with them), so the "
            "scores and checkpoints there were trained with other settings. Restore the file, "
            "or start again with --overwrite or in another --out-dir"
        )
    differing = result_differences(saved.values, config)
    if differing:
        current = config_to_json(config)
        raise RunDirectoryError(
            f"cannot resume {path!r}: its {rundir.CONFIG_FILE} differs in {differing} (saved "
            f"{[saved.values.get(k) for k in differing]}, now "
            f"{[current[k] for k in differing]})"
        )
    return saved.provenance.digest


class RunDirectory:
    """An open run directory: holds its lock until :meth:`close` (or the process ends)."""

    def __init__(self, path: str, digest: str):
        self.path = path
        self.digest = digest  # of the settings; every score file of the run carries it
        self._lock: io.TextIOWrapper | None = None

    @classmethod
    def open(
        cls,
        config: TrainConfig,
        planned_folds: Sequence[int],
        *,
        resume: bool,
        overwrite: bool,
    ) -> RunDirectory:
        """Checks, locks, clears (``overwrite``) and initialises the run directory."""
        resumed_digest = check_run_directory(config, resume=resume, overwrite=overwrite)
        # Every process checks the directory as it found it before process 0 changes it;
        # otherwise a slower process would find process 0's new config.json and refuse.
        sync_processes("run directory checked")
        path = os.path.abspath(config.out_dir)
        values = config_to_json(config)
        digest = resumed_digest or rundir.config_digest(values, RESULT_FIELDS)
        run_dir = cls(path, digest)
        if jax.process_index() == 0:
            os.makedirs(path, exist_ok=True)
            run_dir._acquire_lock()
            if overwrite:
                run_dir._remove_previous_run()
            if resumed_digest is None:
                rundir.write_atomically(
                    os.path.join(path, rundir.CONFIG_FILE),
                    rundir.config_json(values, RESULT_FIELDS, planned_folds),
                )
        sync_processes("run directory ready")
        return run_dir

    def _remove_previous_run(self) -> None:
        for entry in rundir.TRAINER_ENTRIES:
            target = os.path.join(self.path, entry)
            if entry == rundir.LOCK_FILE or not os.path.exists(target):
                continue
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        if os.path.exists(os.path.join(self.path, rundir.ENSEMBLE_DIR)):
            print(
                f"note: kept {os.path.join(self.path, rundir.ENSEMBLE_DIR)} (ensemble.py's "
                "tables of the run just replaced); run ensemble.py again to refresh it",
                file=sys.stderr,
            )

    def _acquire_lock(self) -> None:
        # flock is released by the kernel when its holder exits however it exits, so a lock
        # file left by a dead process is never mistaken for a live holder.
        lock = open(os.path.join(self.path, rundir.LOCK_FILE), "a+")
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
        return rundir.scores_path(self.path, fold, group)

    def log_path(self, fold: int, group: str) -> str:
        return rundir.log_path(self.path, fold, group)

    def checkpoint_dir(self, fold: int) -> str:
        return rundir.checkpoint_dir(self.path, fold)

    def write_log(self, fold: int, group: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replaces a fold/group's CSV log with ``rows``, atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        rundir.write_atomically(self.log_path(fold, group), text.getvalue())

    def remove_checkpoints(self, fold: int) -> None:
        """Deletes a finished fold's checkpoints, and the folders they leave empty."""
        directory = self.checkpoint_dir(fold)
        shutil.rmtree(directory, ignore_errors=True)
        for parent in (os.path.dirname(directory), os.path.dirname(os.path.dirname(directory))):
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # only when empty

    @contextlib.contextmanager
    def checkpoints(self, fold: int) -> Iterator[FoldCheckpoints]:
        """The checkpoints of one fold, closed (saves finished) on any exit."""
        checkpoints = FoldCheckpoints(
            self.checkpoint_dir(fold), rundir.set_aside_dir(self.path, fold)
        )
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


Layout = Sequence[tuple[str, int]]  # (group, members) in member-axis order


class FoldCheckpoints:
    """Orbax checkpoints of one fold: the member states, divergence and log rows."""

    def __init__(self, directory: str, set_aside: str):
        self.directory = directory
        self.set_aside = set_aside
        self._manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    def save(
        self,
        epoch: int,
        state: Any,
        diverged: np.ndarray,
        layout: Layout,
        log_rows: dict[str, list[dict]],
    ) -> None:
        """Saves the state of every slot after ``epoch`` epochs (asynchronously)."""
        checksum = to_host(state_checksum(state)).tolist()
        meta = {"checksum": checksum, "log_rows": log_rows, "slots": len(diverged),
                "groups": [list(entry) for entry in layout]}  # fmt: skip
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"state": state, "diverged": diverged}),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore_latest(
        self,
        template: Any,
        diverged: np.ndarray,
        layout: Layout,
        place: Callable[[Any], Any],
        warn: Callable[[str], None],
    ) -> tuple[int, Any, np.ndarray, dict[str, list[dict]]] | None:
        """The newest checkpoint that restores and matches its checksum, or None.

        ``template`` is the fold's initial state of every slot, its members the groups of
        ``layout``. A checkpoint of the same layout and slot count restores as it is; one of
        another (another mesh's padding, more groups than are left to train) is read to the
        host, and each group of ``layout`` takes its members from it and the padding slots
        from ``template``; ``place`` lays the combined host arrays out as ``template`` is. A
        checkpoint that fails is reported through ``warn``, moved to ``set_aside`` and kept,
        and the next older one is tried.
        """
        for epoch in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self._restore(epoch, template, diverged, layout, place)
            except Exception as error:  # orbax raises many types for a damaged checkpoint
                self._set_aside(epoch, error, warn)
        return None

    def _restore(self, epoch, template, diverged, layout, place):
        only_meta = ocp.args.Composite(meta=ocp.args.JsonRestore())
        meta = self._manager.restore(epoch, args=only_meta)["meta"]
        stored_slots = meta["slots"]
        stored_layout = [tuple(entry) for entry in meta["groups"]]
        offsets = np.cumsum([0] + [n for _, n in stored_layout[:-1]]).tolist()
        starts = {g: int(start) for (g, _), start in zip(stored_layout, offsets, strict=True)}
        sizes = dict(stored_layout)
        for group, members in layout:
            if sizes.get(group) != members:
                raise ValueError(
                    f"it holds groups {stored_layout}; this fold trains {list(layout)}"
                )
        slots = len(diverged)
        same = stored_layout == [tuple(entry) for entry in layout] and stored_slots == slots
        if same:
            stored_template, stored_diverged = template, diverged
        else:  # read it to the host and take the members asked for
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            stored_template = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(
                    (stored_slots, *leaf.shape[1:]), leaf.dtype, sharding=device
                ),
                template,
            )
            stored_diverged = np.zeros(stored_slots, bool)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(
                    {"state": stored_template, "diverged": stored_diverged}
                ),
            ),
        )
        state = restored["state"]["state"]
        if to_host(state_checksum(state)).tolist() != meta["checksum"]:
            raise ValueError("its content does not match the checksum saved with it")
        restored_diverged = np.asarray(restored["state"]["diverged"])
        if not same:
            rows = np.concatenate([np.arange(starts[g], starts[g] + n) for g, n in layout])
            members = len(rows)
            padding = jax.tree.map(lambda leaf: to_host(leaf)[members:], template)
            state = place(
                jax.tree.map(
                    lambda leaf, pad: np.concatenate([np.asarray(leaf)[rows], pad]),
                    state,
                    padding,
                )
            )
            restored_diverged = np.concatenate(
                [restored_diverged[rows], np.zeros(slots - members, bool)]
            )
        log_rows = {group: meta["log_rows"][group] for group, _ in layout}
        return epoch, state, restored_diverged, log_rows

    def _set_aside(self, epoch: int, error: Exception, warn: Callable[[str], None]) -> None:
        path = os.path.join(self.directory, str(epoch))
        target = os.path.join(self.set_aside, f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}")
        problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if jax.process_index() == 0:
            os.makedirs(self.set_aside, exist_ok=True)
            shutil.move(path, target)
        sync_processes(f"checkpoint {path} set aside")
        self._manager.reload()
        warn(
            f"warning: checkpoint {path} cannot be used ({type(error).__name__}: "
            f"{problem[:200]}); it is moved to {target} and kept, and the fold trains again "
            "from an earlier point"
        )

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
