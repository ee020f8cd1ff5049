"""Argument checks shared by the public functions: one-line ``ValueError`` messages naming the argument."""

from __future__ import annotations

import numbers


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats are refused)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value, *, allow_none: bool = False, open_low: bool = False) -> float | None:
    """``value`` as a float in [0, 1] (or (0, 1] with ``open_low``); None passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (0 < value <= 1 if open_low else 0 <= value <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)
