"""Ensemble specifications in the paper's notation: ``"SGD(14) + DGrad(7) + Cos#1(7)"``.

An ensemble takes the first ``k`` members (members ``0 .. k-1``) of each named optimizer
group; the plain form ``sgd:14+dgrad:7+cos1:7`` says the same. Names are case-insensitive.

A hyperparameter sweep's group is split into one group per grid point, named canonically
``dgrad[learning_rate=0.0003]`` (``grid_point_group``: values as ``f"{value:g}"``, names in
the score file's order); a term picks a grid point as ``DGrad[learning_rate=3e-4](3)`` or
``dgrad@learning_rate=3e-4:3`` (several hyperparameters comma-separated, in any order; values
compared after canonical formatting).

Which optimizer groups exist is not decided here: the trainer owns the list of optimizers,
and an ensemble is checked against the groups the loaded runs hold (``tables``). What is
kept here is the paper's reporting convention: its display names (``PAPER_NAMES``), the order
of its tables, and its Table 2 rows. A group the paper does not have is shown as its own name.

References:
  Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms to Improve the
  Performance of Convolutional Neural Networks", arXiv 2103.14689, 2021.
"""

import math
import re
from collections.abc import Iterable
from typing import NamedTuple

from rundir import GROUP_NAME, SWEEPABLE, canonical_names, format_hyperparameter

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
# A grid point's group: "dgrad[learning_rate=0.0003,b1=0.9]".
_GRID_POINT_GROUP = re.compile(rf"({GROUP_NAME.pattern})\[([^\[\]]*)\]")


class EnsembleSpecError(ValueError):
    """An ensemble specification that cannot be parsed, or that the runs cannot serve."""


def grid_point_group(optimizer: str, hyperparameters: Iterable[tuple[str, float | str]]) -> str:
    """The group of one grid point of a sweep: ``"dgrad[learning_rate=0.0003]"``.

    ``hyperparameters`` are ``(name, value)`` pairs, named in the grid's canonical order
    (``rundir.SWEEPABLE``) whatever their order; numbers are formatted by
    ``format_hyperparameter``, strings taken as already formatted.

    Example:
      >>> grid_point_group("dgrad", [("learning_rate", 3e-4), ("b1", 0.9)])
      'dgrad[learning_rate=0.0003,b1=0.9]'
    """
    values = dict(hyperparameters)
    pairs = ",".join(
        f"{name}={value if isinstance(value, str) else format_hyperparameter(value)}"
        for name, value in ((name, values[name]) for name in canonical_names(values))
    )
    return f"{optimizer}[{pairs}]"


def split_group(group: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A group's optimizer and grid point: ``"dgrad[learning_rate=0.0003]"`` ->
    ``("dgrad", (("learning_rate", "0.0003"),))``; a plain group has no grid point, ``()``.

    Example:
      >>> split_group("dgrad[learning_rate=0.0003]"), split_group("cos1")
      (('dgrad', (('learning_rate', '0.0003'),)), ('cos1', ()))
    """
    match = _GRID_POINT_GROUP.fullmatch(group)
    if match is None:
        return group, ()
    pairs = tuple(tuple(pair.split("=", 1)) for pair in match.group(2).split(","))
    return match.group(1), pairs


def display_name(group: str) -> str:
    """The paper's name of a group (``"cos1"`` -> ``"Cos#1"``); other groups keep their own.

    A grid point keeps its hyperparameters: ``"dgrad[learning_rate=0.0003]"`` ->
    ``"DGrad[learning_rate=0.0003]"``.
    """
    optimizer, point = split_group(group)
    name = PAPER_NAMES.get(optimizer, optimizer)
    return grid_point_group(name, point) if point else name


def describe_group(group: str) -> str:
    """``"Cos#1 (cos1)"`` for the paper's groups, ``"'rmsprop'"`` for others (in messages)."""
    optimizer, _ = split_group(group)
    return f"{display_name(group)} ({group})" if optimizer in PAPER_NAMES else repr(group)


def paper_order(groups: Iterable[str]) -> list[str]:
    """The groups in the order of the paper's tables; groups it does not have follow, as given.

    A sweep's grid points stay together, in the order given, where their optimizer ranks.
    """
    groups = list(dict.fromkeys(groups))
    rank = {name: position for position, name in enumerate(PAPER_NAMES)}
    first = {}
    for position, name in enumerate(groups):
        first.setdefault(split_group(name)[0], position)

    def key(name: str) -> tuple[int, int, int]:
        optimizer = split_group(name)[0]
        return rank.get(optimizer, len(rank)), first[optimizer], groups.index(name)

    return sorted(groups, key=key)


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


_SPEC_TERM = re.compile(
    r"([a-z][a-z0-9_#-]*)\s*(?:\[([^\[\]]*)\]|@([^:()\[\]]*?))?\s*(?:\(\s*(\d+)\s*\)|:\s*(\d+))"
)
# A "+" right after a number's exponent marker ("1e+3") is part of the number, not a join.
_EXPONENT_END = re.compile(r"[0-9.]e$")


def _split_terms(text: str) -> list[str]:
    """Splits at the ``+`` that join terms: outside ``[...]`` and not in ``1e+3``."""
    terms, depth, start = [], 0, 0
    for position, character in enumerate(text):
        if character == "[":
            depth += 1
        elif character == "]":
            depth -= 1
        elif (
            character == "+"
            and depth == 0
            and _EXPONENT_END.search(text[start:position].rstrip()) is None
        ):
            terms.append(text[start:position])
            start = position + 1
    return [*terms, text[start:]]


def _grid_point(point: str, term: str, text: str) -> tuple[tuple[str, str], ...]:
    """``"learning_rate=3e-4, b1=0.9"`` -> ``(("learning_rate", "0.0003"), ("b1", "0.9"))``."""
    pairs: list[tuple[str, str]] = []
    for item in point.split(","):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or name not in SWEEPABLE:
            raise EnsembleSpecError(
                f"{term!r} in ensemble {text!r}: {item.strip()!r} is not NAME=VALUE with NAME "
                f"one of {list(SWEEPABLE)} (a grid point: "
                "'DGrad[learning_rate=3e-4](3)' or 'dgrad@learning_rate=3e-4:3')"
            )
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise EnsembleSpecError(
                f"{term!r} in ensemble {text!r}: {name}={value!r} is not a finite number"
            )
        if any(name == seen for seen, _ in pairs):
            raise EnsembleSpecError(f"{term!r} in ensemble {text!r} gives {name} twice")
        pairs.append((name, format_hyperparameter(number)))
    return tuple(pairs)


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
    member count. A term may pick a sweep's grid point, ``DGrad[learning_rate=3e-4](3)`` or
    ``dgrad@learning_rate=3e-4:3`` (several hyperparameters comma-separated, in any order);
    the term's group is then ``grid_point_group`` of the values as given (formatted by
    ``format_hyperparameter``), matched to a run's grid point by name and formatted value.

    Example:
      >>> parse_ensemble_spec("SGD(14) + Cos#1(7)").terms
      (('sgd', 14), ('cos1', 7))
      >>> parse_ensemble_spec("DGrad[learning_rate=3e-4](3) + dgrad@learning_rate=1e-3:2").terms
      (('dgrad[learning_rate=0.0003]', 3), ('dgrad[learning_rate=0.001]', 2))
    """
    terms = []
    seen = set()
    for raw_term in _split_terms(text.lower()):
        term = raw_term.strip()
        match = _SPEC_TERM.fullmatch(term)
        if match is None:
            raise EnsembleSpecError(
                f"cannot parse {term!r} in ensemble {text!r}; expected terms like "
                "'DGrad(7)' or 'dgrad:7' (a sweep's grid point: "
                "'DGrad[learning_rate=3e-4](7)' or 'dgrad@learning_rate=3e-4:7') joined by '+'"
            )
        group = optimizer_group(match.group(1))
        point_text = match.group(2) if match.group(2) is not None else match.group(3)
        point = () if point_text is None else _grid_point(point_text, term, text)
        if point:
            group = grid_point_group(group, point)
        count = int(match.group(4) or match.group(5))
        if count < 1:
            raise EnsembleSpecError(f"ensemble {text!r} asks for {count} members of {group}")
        identity = (split_group(group)[0], frozenset(point))
        if identity in seen:
            raise EnsembleSpecError(f"ensemble {text!r} names {display_name(group)} twice")
        seen.add(identity)
        terms.append((group, count))
    return EnsembleSpec(tuple(terms))
