"""Ensemble specifications in the paper's notation: ``"SGD(14) + DGrad(7) + Cos#1(7)"``.

An ensemble takes the first ``k`` members (members ``0 .. k-1``) of each named optimizer
group; the plain form ``sgd:14+dgrad:7+cos1:7`` says the same. Names are case-insensitive.

References:
  Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms to Improve the
  Performance of Convolutional Neural Networks", arXiv 2103.14689, 2021.
"""

import re
from typing import NamedTuple

OPTIMIZERS = ("sgd", "adam", "amsgrad", "diffgrad", "dgrad", "cos1", "cos2")
PAPER_NAMES = {
    "sgd": "SGD",
    "adam": "Adam",
    "amsgrad": "AMSGrad",
    "diffgrad": "diffGrad",
    "dgrad": "DGrad",
    "cos1": "Cos#1",
    "cos2": "Cos#2",
}
# The rows of the paper's Table 2, in its order.
PAPER_TABLE2_ENSEMBLES = (
    "Adam(7)",
    "diffGrad(7)",
    "DGrad(7)",
    "Cos#1(7)",
    "Cos#2(7)",
    "DGrad(7) + Cos#1(7)",
    "DGrad(7) + Cos#1(7) + Cos#2(7)",
    "DGrad(7) + Cos#1(7) + diffGrad(7)",
    "DGrad(14)",
    "DGrad(14) + Cos#1(7)",
    "SGD(14)",
    "SGD(7)",
    "SGD(7) + DGrad(7)",
    "SGD(14) + DGrad(7) + Cos#1(7)",
    "SGD(14) + DGrad(7) + Cos#1(7) + diffGrad(7)",
)


class EnsembleSpecError(ValueError):
    """An ensemble specification that cannot be parsed, or that the runs cannot serve."""


class EnsembleSpec(NamedTuple):
    """An ensemble: the first ``count`` members of each named optimizer group.

    Attributes:
      terms: ``(optimizer, count)`` pairs, optimizer as a group name (``"cos1"``).
    """

    terms: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        """The paper's notation, e.g. ``"SGD(14) + DGrad(7)"``."""
        return " + ".join(f"{PAPER_NAMES[name]}({count})" for name, count in self.terms)

    @property
    def size(self) -> int:
        """The number of members asked for."""
        return sum(count for _, count in self.terms)


_SPEC_TERM = re.compile(r"([a-z][a-z0-9#]*)\s*(?:\(\s*(\d+)\s*\)|:\s*(\d+))")


def optimizer_group(name: str) -> str:
    """Maps a name in either notation (``"Cos#1"``, ``"cos1"``) to its group name.

    Raises:
      EnsembleSpecError: if the name is not one of the seven optimizers.
    """
    group = name.strip().lower().replace("#", "")
    if group not in OPTIMIZERS:
        known = ", ".join(f"{PAPER_NAMES[g]} ({g})" for g in OPTIMIZERS)
        raise EnsembleSpecError(f"unknown optimizer {name!r}; expected one of {known}")
    return group


def parse_ensemble_spec(text: str) -> EnsembleSpec:
    """Parses ``"SGD(14) + DGrad(7) + Cos#1(7)"`` or ``"sgd:14+dgrad:7+cos1:7"``.

    Case-insensitive; terms are joined by ``+``; every term names a group once and a positive
    member count.

    Example:
      >>> parse_ensemble_spec("SGD(14) + Cos#1(7)").terms
      (('sgd', 14), ('cos1', 7))
    """
    terms = []
    for raw_term in text.split("+"):
        match = _SPEC_TERM.fullmatch(raw_term.strip().lower())
        if match is None:
            raise EnsembleSpecError(
                f"cannot parse {raw_term.strip()!r} in ensemble {text!r}; expected terms like "
                "'DGrad(7)' or 'dgrad:7' joined by '+'"
            )
        group = optimizer_group(match.group(1))
        count = int(match.group(2) or match.group(3))
        if count < 1:
            raise EnsembleSpecError(f"ensemble {text!r} asks for {count} members of {group}")
        if any(group == seen for seen, _ in terms):
            raise EnsembleSpecError(f"ensemble {text!r} names {PAPER_NAMES[group]} twice")
        terms.append((group, count))
    return EnsembleSpec(tuple(terms))
