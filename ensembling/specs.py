"""Ensemble specifications in the paper's notation: ``"SGD(14) + DGrad(7) + Cos#1(7)"``.

An ensemble takes the first ``k`` members (members ``0 .. k-1``) of each named optimizer
group; the plain form ``sgd:14+dgrad:7+cos1:7`` says the same. Names are case-insensitive.

Which optimizer groups exist is not decided here: the trainer owns the list of optimizers,
and an ensemble is checked against the groups the loaded runs hold (``tables``). What is
kept here is the paper's reporting convention: its display names (``PAPER_NAMES``), the order
of its tables, and its Table 2 rows. A group the paper does not have is shown as its own name.

References:
  Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms to Improve the
  Performance of Convolutional Neural Networks", arXiv 2103.14689, 2021.
"""

import re
from collections.abc import Iterable
from typing import NamedTuple

# The paper's display names, in the order of its tables.
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
# A group name as the trainer writes it (config.json's "optimizers", the score file's name):
# lower case, starting with a letter.
GROUP_NAME = re.compile(r"[a-z][a-z0-9_-]*")


class EnsembleSpecError(ValueError):
    """An ensemble specification that cannot be parsed, or that the runs cannot serve."""


def display_name(group: str) -> str:
    """The paper's name of a group (``"cos1"`` -> ``"Cos#1"``); other groups keep their own."""
    return PAPER_NAMES.get(group, group)


def describe_group(group: str) -> str:
    """``"Cos#1 (cos1)"`` for the paper's groups, ``"'rmsprop'"`` for others (in messages)."""
    return f"{PAPER_NAMES[group]} ({group})" if group in PAPER_NAMES else repr(group)


def paper_order(groups: Iterable[str]) -> list[str]:
    """The groups in the order of the paper's tables; groups it does not have follow, as given."""
    groups = list(dict.fromkeys(groups))
    rank = {name: position for position, name in enumerate(PAPER_NAMES)}
    return sorted(groups, key=lambda name: (rank.get(name, len(rank)), groups.index(name)))


class EnsembleSpec(NamedTuple):
    """An ensemble: the first ``count`` members of each named optimizer group.

    Attributes:
      terms: ``(optimizer, count)`` pairs, optimizer as a group name (``"cos1"``).
    """

    terms: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        """The paper's notation, e.g. ``"SGD(14) + DGrad(7)"``."""
        return " + ".join(f"{display_name(name)}({count})" for name, count in self.terms)

    @property
    def size(self) -> int:
        """The number of members asked for."""
        return sum(count for _, count in self.terms)


_SPEC_TERM = re.compile(r"([a-z][a-z0-9_#-]*)\s*(?:\(\s*(\d+)\s*\)|:\s*(\d+))")


def optimizer_group(name: str) -> str:
    """Maps a name in either notation (``"Cos#1"``, ``"cos1"``) to its group name.

    Only the spelling is checked here; whether a run holds the group is checked against the
    loaded runs (``evaluate_ensemble``, ``table2``).

    Raises:
      EnsembleSpecError: if the name cannot be a group name.
    """
    group = name.strip().lower().replace("#", "")
    if GROUP_NAME.fullmatch(group) is None:
        raise EnsembleSpecError(
            f"{name!r} is not an optimizer group name; expected a letter followed by letters, "
            "digits, '_' or '-' (the paper's '#' is dropped: 'Cos#1' is cos1)"
        )
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
            raise EnsembleSpecError(f"ensemble {text!r} names {display_name(group)} twice")
        terms.append((group, count))
    return EnsembleSpec(tuple(terms))
