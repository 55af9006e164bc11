"""User-input checks shared by the library and the ``sdekit`` command.

One rule per kind of value, written once: the API calls ``integer`` / ``real`` / ``fraction`` / ``choice`` on its
arguments and raises ``ValueError`` naming the argument, the accepted range and what it got; the CLI
wraps the same checks as argparse types (``arg``), so ``sdekit train --ema-decay 2`` and
``Trainer(..., ema_decay=2)`` are refused by the same line with the same words. Booleans are not
integers here (``True`` is not a step count), and a float is an integer only if it is one exactly
(``steps=3.0`` is 3, ``steps=1.5`` is refused, never truncated). Every range is closed unless an
``open`` end is named; every real must be finite unless ``finite=False``.

Output paths (``writable_file``, ``writable_dir``) are checked the same way before any work: the
location is probed by creating (and removing) a file there, so a missing directory, a read-only file
system or a path that names the wrong kind of thing is refused in the first second, not after the solve.

This module imports nothing of the package.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
import tempfile
from typing import Any, Callable, Optional

__all__ = ["integer", "real", "fraction", "choice", "arg", "writable_file", "writable_dir", "INT64", "THREADS", "ROWS"]

INT64 = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed and int64 tensors hold
THREADS = (1, 1024)  # torch.set_num_threads: below 1 is an error, far above the cores crashes OpenMP
ROWS = (1, 1 << 20)  # rows (--n, --batch) a command draws or scores


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


def choice(name: str, value: Any, accepted) -> Any:
    """``value`` if it is one of ``accepted``; ValueError "unknown <name> <value>; accepted: ..." otherwise."""
    if isinstance(value, str) and value in accepted:
        return value
    raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


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


def _probe(directory: str, name: str, path: str) -> None:
    """Create and remove a file in ``directory``; ValueError naming ``name`` and ``path`` if that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdekit-probe-", dir=directory)
    except OSError as err:
        raise ValueError(f"{name} {path!r} cannot be written: {err.strerror or err} ({directory})") from None
    os.close(fd)
    os.unlink(probe)


def writable_file(path: str, name: str, suffixes=None) -> str:
    """``path`` if a file can be written there: refused (ValueError naming ``name``) when it names a directory,
    its directory is missing, its extension is not in ``suffixes`` (without the dot; None: any), or a probe
    file cannot be created beside it (an existing file must also open for appending; it is not changed)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise ValueError(f"{name} {path!r}: directory {parent!r} does not exist")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if suffixes is not None and ext and ext not in suffixes:
        raise ValueError(f"{name} {path!r}: cannot write .{ext} files; accepted: {', '.join(sorted(suffixes))}")
    if os.path.lexists(path):
        try:  # O_NONBLOCK: a FIFO without a reader is refused instead of blocking
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0)))
        except OSError as err:
            raise ValueError(f"{name} {path!r} cannot be written: {err.strerror or err}") from None
    _probe(parent, name, path)
    return path


def writable_dir(path: str, name: str, whole: bool = False) -> str:
    """``path`` if it is a directory that files can be written into, or can be created as one: refused
    (ValueError naming ``name``) when it or an ancestor is not a directory, or when a probe file cannot be
    created in it (or in its nearest existing ancestor). ``whole=True``: a directory written as a whole
    beside it and renamed into place (a checkpoint), so the probe goes to its parent. Nothing is created."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a file; give a directory")
    here = os.path.abspath(path)
    if whole:
        here = os.path.dirname(here)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise ValueError(f"{name} {path!r}: {here!r} is not a directory")
    _probe(here, name, path)
    return path
