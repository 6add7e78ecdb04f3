"""What the trainer suite's check can tell: vmap against loop, and loop against itself nudged.

Not a test: a measurement, behind ``trainer_suite.check_against`` (docs/performance.md,
"What the check can tell"). For ResNet50 at 64x64, batch 8, DGrad, in float32 and bfloat16,
after one and after two check steps: how far the first ``vmap`` member ends from the ``loop``
reference, and how far the reference ends from the same program run from initial
parameters one ulp larger. Where the nudge alone moves the reference as far as ``vmap``
differs from it, the difference is rounding amplified by the network, not a wrong member.

    python benchmarks/check_sensitivity.py   # about 5 minutes on 2 CPU cores

(from the repository root). Writes benchmarks/results/check_sensitivity.json.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import trainer_suite  # noqa: E402

from rundir import write_atomically  # noqa: E402

SETTINGS = dict(model="resnet50", image_size=64, batch_size=8, steps_per_epoch=4, row_cap_s=2000)


def measure(dtype: str, check_steps: int) -> dict:
    trainer_suite.SUITES["cpu"].update(
        SETTINGS, dtype=dtype, timing=dict(check_steps=check_steps, steps=1, repeats=1)
    )
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "suite.json"
        trainer_suite.main(["--suite", "cpu", "--rows", "1:loop;2:vmap", "--budget-s", "2000",
                            "--skip", "optimizer", "step_loop", "paper", "ensemble",
                            "--output", str(output)])  # fmt: skip
        rows = json.loads(output.read_text())["efficiency"]
    check = next(r for r in rows if r["strategy"] == "vmap")["check"]
    return dict(dtype=dtype, check_steps=check_steps, **check)


def main() -> int:
    results = [measure(dtype, steps) for dtype in ("float32", "bfloat16") for steps in (1, 2)]
    print("\n| dtype | check steps | vmap: within lr/10 | loss rel. | nudged loop: within lr/10 "
          "| loss rel. | check |\n" + "|---" * 7 + "|")  # fmt: skip
    for r in results:
        nudge = r["nudged_reference"]
        print(f"| {r['dtype']} | {r['check_steps']} | {r['close_fraction']:.3f} | "
              f"{r['loss_relative']:.1e} | {nudge['close_fraction']:.3f} | "
              f"{nudge['loss_relative']:.1e} | {'ok' if r['ok'] else 'DIFFERS'} |")  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "check_sensitivity.json"
    write_atomically(path, json.dumps(dict(
        settings=SETTINGS, machine=platform.machine(), jax=jax.__version__, rows=results,
    ), indent=1))  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
