"""Helpers of ``benchmarks/trainer.py``: the formulas and estimates (free of measurement, so
``tests/test_benchmarks.py`` checks them against hand-computed values), the results'
provenance, and the optimizer-update subprocess.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from rundir import write_atomically

HELA = dict(images=862, folds=5, epochs=20, groups=(14, 7, 7, 14, 7, 7))  # 56 members
HYBRIDS = {"map": 1, "map-vmap2": 2}  # benchmark-only: lax.map over chunks of this size


def ensemble_efficiency(members: int, single_step_s: float, group_step_s: float) -> float:
    """E(N) = N * t_single / t_group: above 1, a group of N beats N members one by one."""
    return members * single_step_s / group_step_s


def mfu(images_per_s: float, flops_per_image: float | None, peak: float | None) -> float | None:
    """Model FLOP utilisation: achieved FLOP/s over a peak; None without a count or a peak."""
    return None if not flops_per_image or not peak else images_per_s * flops_per_image / peak


def hela_fold_train_sizes(images: int = HELA["images"], folds: int = HELA["folds"]) -> list:
    """Training images per fold when ``images`` are split into ``folds`` near-equal folds."""
    return [images - (images // folds + (fold < images % folds)) for fold in range(folds)]


def hela_experiment_s(step_s: dict, compile_s: dict, batch: int, *, groups=HELA["groups"],
                      epochs=HELA["epochs"], fold_sizes=None, per_group_s=0.0,
                      eval_s_per_member=0.0) -> float:  # fmt: skip
    """Seconds of the whole experiment: per group, its compile and overhead, then per fold
    ``epochs * (train images // batch)`` group steps and each member's test predictions."""
    fold_sizes = hela_fold_train_sizes() if fold_sizes is None else fold_sizes
    return sum(
        compile_s[n] + per_group_s
        + sum(epochs * (size // batch) * step_s[n] + n * eval_s_per_member for size in fold_sizes)
        for n in groups
    )  # fmt: skip


def estimate_compile_s(measured: dict, members: int, fallback: float) -> float:
    """A row's compile time from the same strategy's measured ``{N: seconds}``: a line
    through the two largest measured N, its slope at least 0 (every strategy compiles one
    program whatever N, but a bigger stacked state compiles a little longer); with one
    point, that point; with none, ``fallback``.
    """
    if not measured:
        return fallback
    points = sorted(measured.items())[-2:]
    if len(points) == 1:
        return points[0][1]
    (n1, c1), (n2, c2) = points
    return max(c2 + max((c2 - c1) / (n2 - n1), 0.0) * (members - n2), 0.0)


def skip_reason(estimate_s: float, remaining_s: float, reserve_s: float, cap_s: float):
    """Why a row must not start (None if it may): over the per-row cap or the budget."""
    if estimate_s > cap_s:
        return f"estimated {estimate_s:.0f} s > per-row cap {cap_s:.0f} s"
    if estimate_s + reserve_s > remaining_s:
        return (f"estimated {estimate_s:.0f} s + {reserve_s:.0f} s reserved for later parts > "
                f"{remaining_s:.0f} s left of the budget")  # fmt: skip
    return None


def peak_delta_bytes(before: dict | None, after: dict | None) -> float | None:
    """Device memory a row added at its peak: peak after minus in use before, when the row
    set a new process peak (JAX cannot reset the peak; otherwise None: not isolated)."""
    if not before or not after or "peak_bytes_in_use" not in after:
        return None
    if after["peak_bytes_in_use"] <= before.get("peak_bytes_in_use", 0):
        return None
    return float(after["peak_bytes_in_use"] - before["bytes_in_use"])


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (a dict in newer jax, a list of dicts in older).
    A ``while`` body (lax.map, scan) may be counted once, not per iteration."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops and flops > 0 else None


def compiled_bytes(compiled) -> float | None:
    """Arguments + outputs - donated + temporaries of a compiled program (per device)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    size = lambda name: getattr(stats, name, 0) or 0  # noqa: E731
    return float(size("argument_size_in_bytes") + size("output_size_in_bytes")
                 - size("alias_size_in_bytes") + size("temp_size_in_bytes"))  # fmt: skip


def recommend(efficiency_rows: list, step_loop_rows: list, members: int = 7) -> dict:
    """The member strategy with the best E(members) among checked rows (falling back to the
    largest N measured), the same among trainer strategies (benchmark-only candidates left
    out; ``loop`` where the best is below 1, since ``loop`` runs the members one by one
    whether or not its row at that N was measured), and the fastest step loop."""

    def best(rows):
        n = members if any(r["members"] == members for r in rows) else max(
            r["members"] for r in rows)  # fmt: skip
        return n, max((r for r in rows if r["members"] == n), key=lambda r: r["efficiency"])

    ok = [r for r in efficiency_rows if "efficiency" in r and r["check"]["ok"]]
    if not ok:
        return dict(problem="no checked efficiency row")
    n, top = best(ok)
    trainer = [r for r in ok if not r["benchmark_only"]]
    n_trainer, chosen = best(trainer) if trainer else (None, {})
    if chosen.get("efficiency", 1.0) < 1.0:  # slower than its members one by one: loop is that
        chosen = dict(strategy="loop", efficiency=None)
    loops = [r for r in step_loop_rows if "step_ms" in r and r["check"]["ok"]]
    fastest = min(loops, key=lambda r: r["step_ms"]) if loops else {}
    return dict(
        by=f"E({n})", best=top["strategy"], best_efficiency=top["efficiency"],
        member_strategy=chosen.get("strategy"), member_strategy_by=f"E({n_trainer})",
        member_strategy_efficiency=chosen.get("efficiency"),
        step_loop=fastest.get("loop"), scan_unroll=fastest.get("unroll"),
        efficiencies={r["strategy"]: r["efficiency"] for r in ok if r["members"] == n},
    )  # fmt: skip


def hela_estimates(rows: list, batch: int, init_s: float, predict: dict) -> dict:
    """The HeLa experiment's time per strategy with a measured row: N=7 and N=14 steps and
    compiles as measured, or extrapolated from the largest N measured (listed)."""
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows if "step_ms" in r):
        measured = {r["members"]: r for r in rows if r["strategy"] == strategy and "step_ms" in r}
        step_s, compile_s, extrapolated = {}, {}, []
        for n in sorted(set(HELA["groups"])):
            if n in measured:
                step_s[n], compile_s[n] = measured[n]["step_ms"] / 1e3, measured[n]["compile_s"]
                continue
            largest = max(measured)
            step_s[n] = measured[largest]["step_ms"] / 1e3 * n / largest
            compile_s[n] = estimate_compile_s({k: r["compile_s"] for k, r in measured.items()},
                                              n, 0.0)  # fmt: skip
            extrapolated.append(n)
        seconds = hela_experiment_s(
            step_s, compile_s, batch, per_group_s=init_s + predict.get("compile_s", 0.0),
            eval_s_per_member=predict.get("seconds_per_member", 0.0))  # fmt: skip
        out[strategy] = dict(minutes=seconds / 60, extrapolated_members=extrapolated)
    return out


def row_cap(suite: dict, single: dict) -> float:
    """Seconds a row may be estimated at: the suite's cap, or a multiple of the reference
    row's compile (smoke)."""
    cap = suite["row_cap_s"]
    return cap if cap is not None else suite["row_cap_factor"] * single["compile_s"]


def parse_rows(text: str) -> list:
    """``"1:loop,vmap;7:map"`` -> ``[(1, ("loop", "vmap")), (7, ("map",))]``."""
    known, rows = ("loop", "vmap", "sharded", *HYBRIDS), []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        members, _, names = item.partition(":")
        strategies = tuple(name.strip() for name in names.split(",") if name.strip())
        unknown = [name for name in strategies if name not in known]
        if not members.strip().isdigit() or not strategies or unknown:
            raise ValueError(f"--rows item {item!r}: expected N:strategy[,strategy...] with "
                             f"strategies from {', '.join(known)}")  # fmt: skip
        rows.append((int(members), strategies))
    return rows


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def optimizer_update(root: Path, repeats: int, smoke: bool, timeout: float, xla_flags: str) -> dict:
    """Runs benchmarks/optimizer_update.py in a subprocess, writing its JSON to a temporary
    file (never over the committed CPU results); smoke shrinks its tree to four leaves."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "optimizer_update.json"
        script = root / "benchmarks" / "optimizer_update.py"
        command = [sys.executable, str(script), "--repeats", str(repeats), "--output", str(out),
                   *["--smoke"] * smoke]  # fmt: skip
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = dict(
            os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=path, XLA_FLAGS=xla_flags
        )  # one host device, as in its own runs
        try:
            result = subprocess.run(command, cwd=root, env=env, text=True,
                                    capture_output=True, timeout=timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return dict(error=f"benchmarks/optimizer_update.py ran over {timeout:.0f} s")
        print(result.stdout[-3000:])
        if result.returncode != 0 or not out.exists():
            return dict(error=f"benchmarks/optimizer_update.py exited {result.returncode}: "
                        f"{result.stderr[-1500:]}")  # fmt: skip
        return json.loads(out.read_text())


def auto_sources(backend: str, recommendation: dict, tables: tuple, cpu_results: Path) -> dict:
    """Where each entry of the ``auto`` tables (``(name, table)`` pairs) comes from."""
    out = {}
    for table, current in tables:
        out[table] = {}
        for name, value in current.items():
            measured = name == "cpu" and cpu_results.exists()
            source = (f"measured: {cpu_results.name}" if measured
                      else "unmeasured default (training/placement.py)")  # fmt: skip
            entry = dict(value=value, source=source)
            if name == backend:
                entry["this_run_recommends"] = recommendation.get(table)
            out[table][name] = entry
    return out


class Report:
    """The results JSON, rewritten after every row so a timeout keeps what was measured."""

    def __init__(self, path: Path, **fields):
        self.path, self.data, self.started = path, dict(fields), time.perf_counter()

    def save(self):
        self.data["seconds"] = time.perf_counter() - self.started
        write_atomically(self.path, json.dumps(self.data, indent=2, default=float) + "\n")


def matmul_peak(size: int, dtype: str) -> float:
    """FLOP/s of a square matrix product, best of 3 runs of 10."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    product = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(product(a, a))
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        jax.block_until_ready([product(a, a) for _ in range(10)])
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * size**3 / best
