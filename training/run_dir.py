"""The trainer's side of the run directory: checks before anything is written, the lock and
the logs.

The contract of the directory (layout, ``config.json`` and its provenance, which directory
the trainer may empty, atomic writes) is ``rundir``'s; this module applies it. The fold
checkpoints inside it are ``training.checkpoints``'.
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
from collections.abc import Iterator, Sequence
from typing import Any

import jax

import rundir
from rundir import RunDirectoryError
from training.checkpoints import FoldCheckpoints
from training.config import RESULT_FIELDS, TrainConfig, config_to_json, result_differences
from training.transfer import sync_processes

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
        # The lock is ours and stays. config.json goes last: a removal that fails part way
        # leaves a directory that still reads as the trainer's run, so the same --overwrite
        # can be given again.
        last = (rundir.LOCK_FILE, rundir.CONFIG_FILE)
        outputs = [entry for entry in rundir.TRAINER_ENTRIES if entry not in last]
        for entry in (*outputs, rundir.CONFIG_FILE):
            target = os.path.join(self.path, entry)
            if os.path.islink(target):  # the link is the run's; what it points to is not
                print(f"note: removed the link {target} -> {os.readlink(target)}; what it "
                      "points to is left as it is", file=sys.stderr)  # fmt: skip
                os.remove(target)
            elif os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
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
