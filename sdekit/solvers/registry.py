"""The solver registry: a name -> (generator function, facts about it).

A new solver plugs in by decorating its generator function::

    @register("my_solver", order=2, nfe_per_step=2)
    def my_solver(ev, x, ts, *, my_option=1.0):
        ...
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["SolverInfo", "register", "get", "available", "SOLVERS"]


@dataclass(frozen=True)
class SolverInfo:
    """name; fn (generator function); stochastic (draws noise); order (of the global error, in steps);
    nfe_per_step (network calls per step of the grid, for budgeting; for an adaptive solver per attempted step);
    adaptive (chooses its own steps); family (ode | sde | exponential | discrete | backend); options (keyword
    options and defaults). order and nfe_per_step are None where they are not one number: they depend on an option
    (``method=`` of the torchdiffeq, scipy and torchsde adapters) or vary along the solve (LSODA switches between
    Adams and BDF of orders 1-12; torchsde's own steps are ``dt`` long, not the grid's)."""

    name: str
    fn: Callable
    stochastic: bool
    order: Optional[float]
    nfe_per_step: Optional[float]
    adaptive: bool
    family: str
    options: dict


SOLVERS: dict[str, SolverInfo] = {}


def register(name: str, *, order: Optional[float], nfe_per_step: Optional[float] = 1, stochastic: bool = False,
             adaptive: bool = False, family: str = "ode", **fixed_options):
    """Decorator registering a solver generator under ``name``; ``fixed_options`` are bound to the
    function (so one update rule can be registered under several names, e.g. ddim and ddpm)."""

    def deco(fn):
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        params = inspect.signature(fn).parameters
        options = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
        options.update(fixed_options)
        bound = _named(fn if not fixed_options else _bind(fn, fixed_options), name)
        SOLVERS[name] = SolverInfo(name, bound, stochastic, order, nfe_per_step, adaptive, family, options)
        return fn

    return deco


def _bind(fn, fixed):
    def bound(ev, x, ts, **options):
        return fn(ev, x, ts, **{**fixed, **options})

    bound.__name__ = fn.__name__
    bound.__doc__ = fn.__doc__
    return bound


def _named(fn, name: str):
    """``fn`` that first tells the evaluator the solver's registry name (so that refusals name it)."""

    def named(ev, x, ts, **options):
        try:
            ev.solver = name
        except AttributeError:  # a stand-in evaluator without attributes
            pass
        return fn(ev, x, ts, **options)

    named.__name__ = fn.__name__
    named.__doc__ = fn.__doc__
    return named


def get(name: str) -> SolverInfo:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(available())}")
    return SOLVERS[name]


def available(family: str | None = None) -> list[str]:
    """Every registered solver name (optionally of one family), sorted."""
    return sorted(n for n, s in SOLVERS.items() if family is None or s.family == family)
