"""The paper's figures of the optimizers themselves: Figure 1, the cyclic factors of Cos#1
and Cos#2.

Here rather than in ``optax_dgrad``, which needs only jax and optax, or in ``ensembling``,
whose figures are of trained ensembles. ``ensemble.py`` writes Figure 1 beside its plots
(``cyclic_factors.png``), as README.md shows it; to draw it alone::

  python optimizer_figures.py docs/figures/cyclic_factors.png [--steps 60] [--period 30]

matplotlib's object API on the Agg canvas, as ``ensembling.plots``: no pyplot, no global
backend switch.
"""

import argparse
from pathlib import Path

import numpy as np


def cyclic_factors(n_steps: int = 60, period: int = 30) -> tuple[np.ndarray, ...]:
    """The paper's Figure 1 data: steps ``t = 1 .. n_steps``, Cos#1's ``c_t``, Cos#2's ``a_t``.

    Computed by ``optax_dgrad.cos1_coefficient`` and ``cos2_coefficient``.
    """
    import jax.numpy as jnp

    from optax_dgrad import cos1_coefficient, cos2_coefficient

    steps = jnp.arange(1, n_steps + 1)
    return (
        np.asarray(steps),
        np.asarray(cos1_coefficient(steps, period=period)),
        np.asarray(cos2_coefficient(steps, period=period)),
    )


def plot_cyclic_factors(path: str | Path, n_steps: int = 60, period: int = 30) -> Path:
    """The paper's Figure 1: ``c_t`` and ``a_t`` over ``t = 1 .. n_steps``, written to
    ``path`` (a PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, cos1_factor, cos2_factor = cyclic_factors(n_steps, period)
    figure = Figure(figsize=(4.4, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot(steps, cos1_factor, label="$c_t$ (Cos#1, eq. 15)")
    axis.plot(steps, cos2_factor, label="$a_t$ (Cos#2, eq. 17)")
    axis.set(xlabel="step t", title=f"cyclic factors, period {period}")
    axis.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2)
    figure.savefig(path, dpi=90)
    return Path(path)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description="Draws the paper's Figure 1, the cyclic "
                                     "factors of Cos#1 and Cos#2, as a PNG.")  # fmt: skip
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--steps", type=int, default=60, help="steps t = 1 .. STEPS drawn")
    parser.add_argument("--period", type=int, default=30, help="the cycle's period in steps")
    args = parser.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--period", args.period)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if not args.output.parent.is_dir():
        parser.error(f"cannot write {args.output}: {args.output.parent} is not a directory")
    return plot_cyclic_factors(args.output, args.steps, args.period)


if __name__ == "__main__":
    print(main())
