"""Checks of user-given options (training settings, hyper-parameters, knockout settings), made before any work.

Each failed check is one `OptionError` naming the option, what was expected and what was given; the command
line and the grid spec rename the option to the flag or field the user wrote (``--epochs``, ``train.epochs``).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


class OptionError(ValueError):
    """An option has the wrong type or value: `name`, what was `expected`, what was given (`got`)."""

    def __init__(self, name: str, expected: str, got: Any):
        super().__init__(f"{name}: expected {expected}, got {got!r}")
        self.name, self.expected, self.got = name, expected, got

    def renamed(self, name: str) -> "OptionError":
        return OptionError(name, self.expected, self.got)

    def within(self, prefix: str) -> "OptionError":
        """The same error for the option `prefix.name`."""
        return self.renamed(f"{prefix}.{self.name}")


def is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(name: str, value: Any, least: int) -> int:
    if not is_int(value) or value < least:
        raise OptionError(name, f"an integer >= {least}", value)
    return int(value)


def number(name: str, value: Any, least: float, above: bool = False) -> float:
    if not is_number(value) or value < least or (above and value == least):
        raise OptionError(name, f"a number {'>' if above else '>='} {least:g}", value)
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(name, "true or false", value)
    return value


def like(name: str, value: Any, examples: list) -> Any:
    """`value` checked against the type of `examples` (a default, then the values of a search grid), and
    normalised to it: an integer given for a float becomes a float (``1`` and ``1.0`` are the same setting)."""
    kinds = {type(x) for x in examples if x is not None}
    if not kinds:
        return value
    if kinds <= {bool}:
        if isinstance(value, bool):
            return value
        wanted = "true or false"
    elif kinds <= {int}:
        if is_int(value):
            return int(value)
        wanted = "an integer"
    elif kinds <= {int, float}:
        if is_number(value):
            return float(value) if float in kinds else value
        wanted = "a finite number"
    elif kinds <= {str}:
        if isinstance(value, str):
            return value
        wanted = "a string"
    elif all(isinstance(value, kind) for kind in kinds):
        return value
    else:
        wanted = " or ".join(sorted(kind.__name__ for kind in kinds))
    raise OptionError(name, f"{wanted} (like {examples[0]!r})", value)
