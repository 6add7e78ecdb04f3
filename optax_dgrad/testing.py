"""Test utilities: a float64 NumPy reference of the optimizers, written from the formulas.

Used by the project's tests and by ``benchmarks/optimizer_update.py``; independent of the
JAX implementation it checks (see :mod:`optax_dgrad._src.numpy_reference`).
"""

from optax_dgrad._src.numpy_reference import NAMES, cyclic_decay, reference_directions

__all__ = ["NAMES", "cyclic_decay", "reference_directions"]
