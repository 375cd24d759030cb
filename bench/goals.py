"""What every bench's goal table and ``--check`` share: whether a figure meets its goal, and the exit."""
from __future__ import annotations

import operator
from typing import Sequence

_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def met(value: float, op: str, limit: float) -> bool:
    """``value op limit`` for a goal written as (figure, op, limit)."""
    return _COMPARE[op](value, limit)


def exit_status(missed: Sequence[str], check: bool) -> int:
    """1 (after naming them) when ``--check`` was given and goals were missed, else 0."""
    if check and missed:
        print("missed: %s" % ", ".join(missed))
        return 1
    return 0
