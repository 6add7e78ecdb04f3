"""benchmarks/trainer.py: its formulas against hand-computed values, and its smoke runs.

The smoke runs are the rehearsal of the GPU suite that a session with an H200 runs once:
each runs the script in a subprocess with TensorFlow Datasets, array_record, dill and
importlib_resources made unimportable (the device machine's image has none of them) and
checks that the results JSON holds every number the real run must record.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import trainer_support as ts  # noqa: E402

BLOCKED = ("tensorflow_datasets", "array_record", "dill", "importlib_resources")


def test_ensemble_efficiency_and_mfu():
    assert ts.ensemble_efficiency(4, 0.1, 0.2) == pytest.approx(2.0)
    assert ts.ensemble_efficiency(1, 0.3, 0.3) == pytest.approx(1.0)
    # 1000 images/s x 2e10 FLOP/image = 2e13 FLOP/s of a 1e14 peak
    assert ts.mfu(1000.0, 2e10, 1e14) == pytest.approx(0.2)
    assert ts.mfu(1000.0, None, 1e14) is None and ts.mfu(1000.0, 2e10, None) is None


def test_hela_experiment_time():
    # 862 images in 5 folds: test folds 173, 173, 172, 172, 172
    assert ts.hela_fold_train_sizes() == [689, 689, 690, 690, 690]
    # batch 30: 22 + 22 + 23 + 23 + 23 = 113 steps per epoch over the folds, x 20 epochs
    # 14 members: 20 s compile + 2260 x 0.2 s = 472 s; 7 members: 10 + 2260 x 0.1 = 236 s
    step_s, compile_s = {7: 0.1, 14: 0.2}, {7: 10.0, 14: 20.0}
    assert ts.hela_experiment_s(step_s, compile_s, 30) == pytest.approx(2 * 472 + 4 * 236)
    # per-group overhead 5 s (6 groups) and 0.5 s of predictions per member and fold (56 x 5)
    total = ts.hela_experiment_s(step_s, compile_s, 30, per_group_s=5.0, eval_s_per_member=0.5)
    assert total == pytest.approx(1888 + 30 + 140)


def test_compile_estimates_and_skipping():
    assert ts.estimate_compile_s({1: 10.0}, 7, 0.0) == pytest.approx(10.0)
    assert ts.estimate_compile_s({1: 10.0, 2: 14.0}, 7, 0.0) == pytest.approx(34.0)
    assert ts.estimate_compile_s({1: 10.0, 2: 9.0}, 7, 0.0) == pytest.approx(9.0)
    assert ts.estimate_compile_s({1: 12.0, 2: 15.0, 4: 15.0}, 14, 0.0) == pytest.approx(15.0)
    assert ts.estimate_compile_s({}, 7, 20.0) == pytest.approx(20.0)
    assert ts.skip_reason(10.0, 100.0, 20.0, 50.0) is None
    assert "per-row cap" in ts.skip_reason(60.0, 100.0, 0.0, 50.0)
    assert "budget" in ts.skip_reason(40.0, 50.0, 20.0, 100.0)


def test_memory_and_cost_readers():
    assert ts.peak_delta_bytes({"bytes_in_use": 100, "peak_bytes_in_use": 500},
                               {"bytes_in_use": 120, "peak_bytes_in_use": 900}) == 800.0
    # the process peak was set before this row: not isolated
    assert ts.peak_delta_bytes({"bytes_in_use": 100, "peak_bytes_in_use": 900},
                               {"bytes_in_use": 120, "peak_bytes_in_use": 900}) is None
    assert ts.peak_delta_bytes(None, None) is None  # CPU: no memory_stats

    class Compiled:
        def __init__(self, cost):
            self.cost = cost

        def cost_analysis(self):
            if isinstance(self.cost, Exception):
                raise self.cost
            return self.cost

    assert ts.xla_flops(Compiled({"flops": 6.0})) == 6.0  # newer jax: a dict
    assert ts.xla_flops(Compiled([{"flops": 6.0}])) == 6.0  # older jax: a list of dicts
    assert ts.xla_flops(Compiled(NotImplementedError())) is None
    assert ts.xla_flops(Compiled({})) is None


def test_parse_rows_and_recommendation():
    assert ts.parse_rows("1:loop,vmap; 7:map") == [(1, ("loop", "vmap")), (7, ("map",))]
    with pytest.raises(ValueError, match="'7:scan'"):
        ts.parse_rows("7:scan")

    def row(strategy, members, efficiency, ok=True):
        return dict(strategy=strategy, members=members, efficiency=efficiency,
                    benchmark_only=strategy in ts.HYBRIDS, check=dict(ok=ok))

    rows = [row("loop", 7, 1.1), row("vmap", 7, 1.6, ok=False), row("map", 7, 1.4),
            row("vmap", 2, 3.0), dict(strategy="loop", members=14, skipped="cap")]
    loops = [dict(loop="python", unroll=None, step_ms=10.0, check=dict(ok=True)),
             dict(loop="scan", unroll=1, step_ms=9.0, check=dict(ok=True))]
    chosen = ts.recommend(rows, loops)
    # vmap's check failed; map is best but benchmark-only, so the trainer gets loop
    assert (chosen["by"], chosen["best"], chosen["member_strategy"]) == ("E(7)", "map", "loop")
    assert (chosen["step_loop"], chosen["scan_unroll"]) == ("scan", 1)
    # The H200's rows: loop measured at N=1 only, vmap at 7 slower than one by one.
    gpu = ts.recommend([row("loop", 1, 1.0), row("vmap", 7, 0.43), row("vmap", 14, 0.45)], [])
    assert (gpu["by"], gpu["best"], gpu["member_strategy"]) == ("E(7)", "vmap", "loop")


def test_check_against_the_reference_and_its_nudge():
    import numpy as np
    import trainer_suite

    lr = 1e-3
    bench = type("Bench", (), {"config": type("Config", (), dict(learning_rate=lr,
                                                                 dtype="float32"))})  # fmt: skip
    ref_params, ref_losses = {"w": np.zeros((1, 8), np.float32)}, np.array([2.0])
    # One entry of eight a tenth of lr or more away, one a twentieth: 7/8 within lr/10.
    moved = {"w": np.array([[0, lr / 20, 0, lr, 0, 0, 0, 0]], np.float32)}
    seen = trainer_suite.differences(ref_params, ref_losses, moved, np.array([2.002]), lr)
    assert seen["close_fraction"] == pytest.approx(7 / 8)
    assert seen["max_param_difference"] == pytest.approx(lr)
    assert seen["loss_relative"] == pytest.approx(1e-3)

    def check(params, losses, nudged_close, nudged_loss):
        nudged = dict(close_fraction=nudged_close, loss_relative=nudged_loss)
        reference = trainer_suite.Reference(ref_params, ref_losses, nudged)
        return trainer_suite.check_against(reference, params, losses, 1, bench)["ok"]

    everywhere = {"w": np.full((1, 8), lr, np.float32)}  # what wrong data or keys do
    assert check(ref_params, ref_losses, 1.0, 0.0)
    assert not check(everywhere, ref_losses, 1.0, 0.0)
    assert not check(ref_params, np.array([2.002]), 1.0, 0.0)  # loss off by 1e-3 > 1e-4
    assert not check({"w": np.full((1, 8), 3 * lr, np.float32)}, ref_losses, 0.0, 1.0)
    # Where a one-ulp nudge moves half the parameters, the check cannot tell, and passes.
    assert check(everywhere, np.array([2.002]), 0.5, 1e-3)
    assert trainer_suite.check_against(None, ref_params, ref_losses, 1, bench)["ok"]


def _smoke(tmp_path, *args):
    """Runs the script with the device image's missing packages unimportable; returns the JSON
    and the modules that something tried to import."""
    stubs, log = tmp_path / "blocked", tmp_path / "imports.log"
    for name in BLOCKED:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(
            f"import os\nopen(os.environ['BLOCKED_IMPORT_LOG'], 'a').write('{name}\\n')\n"
            f"raise ImportError('{name} is not on the device image')\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not conftest's 8 devices
    env.update(PYTHONPATH=os.pathsep.join([str(stubs), env.get("PYTHONPATH", "")]),
               BLOCKED_IMPORT_LOG=str(log))
    output = tmp_path / "trainer.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trainer.py"), "--smoke", "--output",
         str(output), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text()), log.read_text() if log.exists() else ""


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _measured(report, strategy, members):
    rows = [r for r in report["efficiency"]
            if (r["strategy"], r["members"]) == (strategy, members)]
    assert len(rows) == 1 and "step_ms" in rows[0], rows
    return rows[0]


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path):
    report, imported = _smoke(tmp_path, "--suite", "gpu", "--rows", "1:loop;3:map-vmap2;20000:loop",
                              "--unrolls", "1")
    assert imported == ""  # nothing even tried to import a missing package
    assert report["smoke"] and "meaningless" in report["note"]
    for key in ("backend", "device", "jax", "jaxlib", "budget_s", "init_s", "seconds"):
        assert report[key] is not None, key
    assert _finite(report["peaks"]["matmul_measured_flops"])
    single, hybrid = _measured(report, "loop", 1), _measured(report, "map-vmap2", 3)
    assert single["efficiency"] == 1.0 and hybrid["benchmark_only"]
    for row in (single, hybrid):
        assert row["check"]["ok"], row["check"]
        for key in ("step_ms", "efficiency", "compile_s", "images_per_s", "mfu_matmul",
                    "images_per_s_per_member", "compiled_mb_per_member"):
            assert _finite(row[key]), (row["strategy"], key, row[key])
        assert "device_peak_delta_mb_per_member" in row and "mfu_datasheet" in row
    assert _finite(single["xla_flops_per_image"]) and single["xla_flops_per_image"] > 0
    skipped = [r for r in report["efficiency"] if r["members"] == 20000]
    assert "per-row cap" in skipped[0]["skipped"]
    loops = {(r["loop"], r["unroll"]): r for r in report["step_loop"]}
    assert all(_finite(loops[key]["step_ms"]) for key in (("python", None), ("scan", 1)))
    paper = report["paper"]
    assert _finite(paper["predict"]["compile_s"])
    assert _finite(paper["predict"]["seconds_per_member"])
    assert all(_finite(e["minutes"]) for e in paper["hela_experiment"].values())
    assert report["recommendation"]["member_strategy"] == "loop"  # the only trainer strategy run
    assert report["auto_table"]["member_strategy"]["gpu"]["source"]
    rows = report["optimizer_update"]["rows"]
    assert [r["optimizer"] for r in rows] == ["adam", "diffgrad", "dgrad", "cos1", "cos2"]
    assert all(_finite(r["vs_adam"]) for r in rows)
    # The whole ensemble as one program: six optimizers' members, one per call, then under
    # vmap in chunks and all at once.
    whole = report["whole_ensemble"]
    assert [(r["members"], r["strategy"], r["chunk"], r["slots"]) for r in whole] == [
        (6, "loop", 1, 6), (6, "vmap", 2, 6), (6, "vmap", None, 6)
    ]
    for row in whole:
        assert row["finite_losses"] and len(row["groups"]) == 6
        assert all(_finite(row[key]) for key in ("compile_s", "step_ms", "efficiency"))


@pytest.mark.slow
def test_cpu_suite_smoke(tmp_path):
    report, imported = _smoke(tmp_path, "--suite", "cpu", "--rows", "1:loop;2:sharded",
                              "--skip", "optimizer", "step_loop")
    assert imported == ""
    assert report["devices"] == 2  # the CPU suite's two host devices
    sharded = _measured(report, "sharded", 2)
    assert sharded["check"]["ok"] and _finite(sharded["efficiency"])
    # --smoke shrinks the paper-protocol row too: the tiny model, not ResNet50 at 224 px.
    assert (report["paper_settings"]["model"], report["paper_settings"]["image_size"]) == (
        "resnet_tiny",
        8,
    )
    (paper_row,) = report["paper"]["rows"]  # the separate paper-protocol row
    assert _finite(paper_row["xla_flops_per_image"]) and _finite(paper_row["mfu_matmul"])
    assert paper_row["mfu_datasheet"] is None  # no data-sheet peak for a CPU


def test_ensemble_statistics_smoke(tmp_path):
    output = tmp_path / "statistics.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ensemble_statistics.py"), "--members", "14",
         "--folds", "2", "--images", "60", "--classes", "3", "--bootstrap", "50",
         "--out", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    timings = json.loads(output.read_text())
    assert "total:" in result.stdout and timings
