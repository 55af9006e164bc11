"""What the subcommands share: checked argparse types, the flags' upper bounds, a checkpoint's sample shape."""
from __future__ import annotations

import argparse

from ..solvers.grids import MAX_STEPS
from ..validate import INT64, ROWS, THREADS, arg, integer, real

__all__ = ["int_arg", "real_arg", "SEED", "THREADS_ARG", "MAX_ROWS", "int_list", "name_list", "event_shape"]

MAX_ROWS = ROWS[1]  # --n of sample and compare
MAX_SCALE = 1e3  # --guidance (both signs), --shift


def int_arg(name: str, lo=None, hi=None):
    """An argparse type: an integer in [lo, hi] (``sdekit.validate.integer``), a usage error otherwise."""
    return arg(integer, name, int, lo=lo, hi=hi)


def real_arg(name: str, lo=None, hi=None, **kw):
    """An argparse type: a finite number in the range given (``sdekit.validate.real``)."""
    return arg(real, name, float, lo=lo, hi=hi, **kw)


SEED = int_arg("--seed", *INT64)
THREADS_ARG = int_arg("--threads", *THREADS)


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers (NFE budgets, step counts), each at most MAX_STEPS."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers up to {MAX_STEPS}, e.g. "
                                         f"5,10,20; got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """Comma-separated names (solvers, grids)."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
    return names


def event_shape(config: dict, where) -> tuple:
    """The shape of one sample, from what a checkpoint records about its data and net."""
    data, net = config.get("data") or {}, config["net"]
    if "shape" in data:
        return tuple(data["shape"])
    if net.get("type") == "MLP":
        return (int(net["dim"]),)
    if data.get("name") == "digits":
        return (1, 8, 8)
    raise ValueError(f"checkpoint {where} does not record the shape of its data")
