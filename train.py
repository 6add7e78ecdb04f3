"""The trainer's CLI: parses the flags (one per ``TrainConfig`` field) and runs
``training.train_ensemble``; with no flags it trains a small ensemble on scikit-learn's
digits, offline. ``python train.py --help`` lists the flags and ``docs/training.md``
explains them; the Python API is the ``training`` package.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax

from rundir import describe_os_error
from training import PRESETS, TrainConfig, format_optimizer_groups, format_summary, train_ensemble

__all__ = ["build_parser", "config_from_args", "main"]

INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def _cli_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that shows the parser's own message (argparse hides ValueErrors)."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse_flag.__name__ = parse.__name__
    return parse_flag


def _shown(value: Any) -> str:
    return format_optimizer_groups(value) if isinstance(value, dict) else str(value)


def _env_int(name: str) -> int | None:
    """An integer environment variable, or None when it is not set."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    """The CLI: ``--preset``, one flag per ``TrainConfig`` field, and how to run."""
    parser = argparse.ArgumentParser(
        description="Train ensembles of ResNets, one compiled program for all optimizer groups, "
        "and write each member's test-set softmax scores for ensemble.py. With no flags: a small "
        "ensemble of every optimizer on scikit-learn's digits (offline, about a minute on 2 CPU "
        "cores).",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="start from a preset: 'paper' is the paper's protocol (ResNet50, 224x224, batch "
        "30, 20 epochs, lr 1e-3, SGD:14 Adam:7 diffGrad:7 DGrad:14 Cos#1:7 Cos#2:7, paper "
        "augmentation, HeLa); flags given explicitly override the preset [default]",
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        meta = field.metadata
        default = getattr(defaults, field.name)
        help_text = f"{meta['help']} [{_shown(default)}]"
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
            continue
        if meta["parse"] is not None:
            kind = _cli_type(meta["parse"])
        else:
            kind = {"int": int, "float": float}.get(field.type, str)
        action = "append" if meta["append"] else "store"
        parser.add_argument(flag, type=kind, choices=meta["choices"], action=action, help=help_text)
    add = parser.add_argument
    add("--resume", action="store_true", help="continue the run in --out-dir from its checkpoints")
    add(
        "--overwrite",
        action="store_true",
        help="replace the run in --out-dir (removes only what the trainer wrote there)",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    add(
        "--no-compilation-cache",
        action="store_true",
        help="neither read nor write JAX's persistent compilation cache (default: on, in "
        "$JAX_COMPILATION_CACHE_DIR or $XDG_CACHE_HOME/optax-dgrad/jax, ~/.cache by default)",
    )
    add(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host; configure with the "
        "flags below, their environment variables or the cluster's auto-detection)",
    )
    add(
        "--coordinator-address",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="with --distributed: host:port of process 0 [$JAX_COORDINATOR_ADDRESS]",
    )
    add(
        "--num-processes",
        type=int,
        default=_env_int("JAX_NUM_PROCESSES"),
        help="with --distributed: number of processes [$JAX_NUM_PROCESSES]",
    )
    add(
        "--process-id",
        type=int,
        default=_env_int("JAX_PROCESS_ID"),
        help="with --distributed: this process's index, 0-based [$JAX_PROCESS_ID]",
    )
    return parser


def user_compilation_cache_dir() -> str:
    """Where the CLI keeps compiled programs: ``$XDG_CACHE_HOME/optax-dgrad/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "optax-dgrad", "jax")


def use_compilation_cache(enabled: bool) -> None:
    """Turns JAX's persistent compilation cache on (in the user's cache directory unless
    ``$JAX_COMPILATION_CACHE_DIR`` names one) or off; before the first compile."""
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", user_compilation_cache_dir())
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # JAX's default (1 s) leaves out most programs of a small run; each costs 0.1-1 s.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's values, overridden by every flag given explicitly."""
    values = dict(PRESETS[args.preset])
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None and field.metadata["append"]:  # one mapping per repeated flag
            merged: dict[str, Any] = {}
            for part in given:
                repeated = sorted(set(merged) & set(part))
                if repeated:
                    raise ValueError(f"--{field.name.replace('_', '-')} names {repeated} twice")
                merged.update(part)
            given = merged
        if given is not None:
            values[field.name] = given
    return TrainConfig(**values)


class _Interrupt:
    """Ctrl-C that is never lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread is; raised inside a
    finalizer or a callback it is printed as "Exception ignored" and the run goes on (seen
    once in CI: the run finished with status 0). The handler also records the request, and
    the next step raises it again.
    """

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def raise_if_requested(self, *where) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def handled(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out-dir and --overwrite deletes it: pick one")
    use_compilation_cache(not args.no_compilation_cache)
    if args.distributed:
        # Cross-process collectives on CPU need gloo; the setting is ignored by GPU and TPU, and
        # it must be made before initialize(), which must come before any backend is started.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    interrupt = _Interrupt()
    try:
        config = config_from_args(args)
        with interrupt.handled():
            result = train_ensemble(
                config,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                on_step=interrupt.raise_if_requested,
            )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path that cannot be written, a full disk, ...
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except MemoryError as error:  # e.g. restoring a checkpoint onto too small a device
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted; run the same command with --resume to continue from the last "
            "checkpoint",
            file=sys.stderr,
        )
        return INTERRUPTED
    if jax.process_index() == 0:
        print(format_summary(result))
        print(
            f"scores written to {os.path.join(result.run_dir, 'scores')}; fuse and tabulate "
            f"them with: python ensemble.py {shlex.quote(result.run_dir)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
