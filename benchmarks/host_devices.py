"""Does splitting the CPU into one XLA device per core make ``auto`` train faster?

Not a test: a measurement behind ``train.py``'s choice of host devices on CPU. It times the
same short training run end to end (start, compiles, training, scores) as a user runs it:
with XLA's default single CPU device (``auto`` is ``loop``); with
``--xla_force_host_platform_device_count`` set to the core count, where ``auto`` shards each
group of 3 over a ``(member, data)`` mesh (``member=1 data=2`` on 2 cores: each member's
batch split over the data axis); and on the same devices with the member axis only
(``--mesh member=2,data=1``: 3 members padded to 4 slots, no data axis). The settings
alternate so that load changes on a shared machine hit all alike. From the repository
root:

    python benchmarks/host_devices.py --repeats 3

It prints a Markdown table and writes ``benchmarks/results/host_devices.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--optimizers", "dgrad:3,cos1:3", "--folds", "0", "--epochs", "6", "--no-progress"]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def timed_run(devices: int | None, extra: list[str]) -> tuple[float, str]:
    """Seconds of one ``train.py`` run and its strategy line; None: XLA's default device."""
    flags = "" if devices is None else f"--xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "train.py", *RUN, *extra, "--out-dir", out_dir],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    line = next(x for x in result.stdout.splitlines() if x.startswith("member strategy"))
    return seconds, line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    settings = {
        "1 device, auto": (None, []),
        f"{cores()} devices, auto": (cores(), []),
        f"{cores()} devices, member axis only": (cores(), ["--mesh", f"member={cores()},data=1"]),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    lines: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, (devices, extra) in settings.items():
            seconds, lines[name] = timed_run(devices, extra)
            times[name].append(seconds)
            print(f"{name}: {seconds:.1f} s ({lines[name]})", flush=True)
    print("\n| host devices | strategy line | median s | runs s |\n|---|---|---|---|")
    for name in settings:
        runs = ", ".join(f"{t:.0f}" for t in times[name])
        print(f"| {name} | {lines[name]} | {statistics.median(times[name]):.1f} | {runs} |")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = dict(run=RUN, cores=cores(), machine=platform.machine(), load_average=load,
                  python=platform.python_version(), times=times, strategy_lines=lines)  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "host_devices.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
