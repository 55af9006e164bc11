"""Samplers for the reverse-time SDE and the probability-flow ODE, behind one registry.

``sample(model, x_T, solver=..., steps=...)`` runs any of them; ``available()`` lists the names.
Solver modules register themselves on import: ode, stochastic, exponential, multistep, discrete, backends,
linear_multistep, adaptive_dpm, sde_samplers.
"""
from . import grids
from .base import NonFiniteError, NotApplicableError, RowNoise, Solution, SolverError, StepBudgetError
from .driver import sample
from .registry import SOLVERS, available, get, register

from . import ode, stochastic, backends  # noqa: E402,F401  (registers solvers)
from . import exponential, multistep, discrete, linear_multistep, adaptive_dpm  # noqa: E402,F401
from . import sde_samplers  # noqa: E402,F401
from . import er_sde, seeds  # noqa: E402,F401

__all__ = [
    "sample", "available", "get", "register", "SOLVERS", "grids",
    "Solution", "RowNoise", "SolverError", "NonFiniteError", "StepBudgetError", "NotApplicableError",
]
