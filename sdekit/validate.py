"""User-input checks shared by the library and the ``sdekit`` command.

One rule per kind of value, written once: the API calls ``integer`` / ``real`` / ``fraction`` on its
arguments and raises ``ValueError`` naming the argument, the accepted range and what it got; the CLI
wraps the same checks as argparse types (``arg``), so ``sdekit train --ema-decay 2`` and
``Trainer(..., ema_decay=2)`` are refused by the same line with the same words. Booleans are not
integers here (``True`` is not a step count), and a float is an integer only if it is one exactly
(``steps=3.0`` is 3, ``steps=1.5`` is refused, never truncated). Every range is closed unless an
``open`` end is named; every real must be finite unless ``finite=False``.

This module imports nothing of the package.
"""
from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable, Optional

__all__ = ["integer", "real", "fraction", "arg", "INT64"]

INT64 = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed and int64 tensors hold


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "any value"


def integer(name: str, value: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi] (either end may be None); ValueError otherwise, naming ``name``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(float(value)) and float(value).is_integer()
    if ok:
        v = int(value)
        if (lo is None or v >= lo) and (hi is None or v <= hi):
            return v
    raise ValueError(f"{name} must be an integer {_range(lo, hi)}; got {value!r}")


def real(name: str, value: Any, lo: Optional[float] = None, hi: Optional[float] = None, *,
         lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> float:
    """``value`` as a float in the range given (``lo_open``/``hi_open`` exclude an end), finite unless
    ``finite=False`` (NaN is always refused); ValueError otherwise, naming ``name``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if (not math.isnan(v) and (math.isfinite(v) or not finite)
                and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi))):
            return v
    what = "a finite number" if finite else "a number"
    raise ValueError(f"{name} must be {what} {_range(lo, hi, lo_open, hi_open)}; got {value!r}")


def fraction(name: str, value: Any) -> float:
    """A probability or decay rate: a float in [0, 1]."""
    return real(name, value, 0.0, 1.0)


def arg(check: Callable[..., Any], name: str, parse: Callable[[str], Any] = float, **limits) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses the text with ``parse`` and applies ``check(name, value, **limits)``;
    a failure becomes argparse's "argument --x: ..." usage error (exit code 2)."""

    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if parse is int else 'a number'}; "
                                             f"got {text!r}") from None
        try:
            return check(name, value, **limits)
        except ValueError as err:  # argparse prefixes "argument <name>: "; say the name once
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{name} ")) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert
