"""What a command line offers, read from its ``--help`` text as a user reads it."""

from __future__ import annotations

import argparse
import re

# An argument's line in argparse's help: two spaces, then "-h, --help", "--out OUT" or "run".
_INVOCATION = re.compile(r"^  (\S.*?)(?:\s{2,}|$)")


def help_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string ("-h", "--help") and positional name the help text lists."""
    names, in_arguments = [], False
    for line in parser.format_help().splitlines():
        if line and not line[0].isspace():  # a section heading: "options:", an epilog line
            in_arguments = line in ("positional arguments:", "options:", "optional arguments:")
            continue
        match = _INVOCATION.match(line)
        if in_arguments and match:
            for part in match.group(1).split(", "):
                names.append(part.split(" ")[0])
    return names
