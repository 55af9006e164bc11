"""Accuracy against cost: every solver, several step counts, one high-precision reference.

``compare`` solves the probability-flow ODE of one model from one seeded x_T with each solver, grid and step count
and measures each endpoint against a reference solve of the same ODE from the same x_T, row by row; stochastic
solvers are measured by the law of their samples against exact draws, and pathwise against a fine solve of the
same noise. One job per module:

  harness     ``compare`` and its settings (``Problem``, ``Plan``, ``References``): validate, build, run, report
  fitted      the grids fitted per model, solver and steps (tuned, gits, ays) and their one-time cost
  reference   the ODE reference endpoints and their own error estimate
  law         sliced W2 over its floor with a standard error, and mode weights, against exact draws
  pathwise    which stochastic solvers have a same-path reference, and that reference
  rows        ``CompareRow``, one solve's numbers
  results     ``CompareResults``: leaderboard, tables, JSON/CSV files
  plot        the picture: which solver at which NFE budget

The per-row error and the sliced W2 themselves are ``sdekit.metrics``.
"""
from ..metrics import endpoint_error, error_summary, per_row_error, sliced_w2
from ..sde import SDE_NAMES
from .harness import (DEFAULT_GRIDS, DEFAULT_NFE, DEFAULT_TOLERANCES, TUNE_SEED_OFFSET, Plan, Problem, References,
                      compare, default_solvers, make_sde)
from .law import FLOOR_PAIRS, LAW_SETS, LawReference, exact_law, flipped_fraction
from .pathwise import PATH_PROBE_STEPS, pathwise_applies
from .results import CompareResults, Leaderboard, LeaderboardEntry
from .rows import ENDPOINT, FITTED, LAW_STATISTICS, SEARCHED, SLICED, STATISTICS, TUNED, CompareRow

__all__ = ["compare", "Problem", "Plan", "References", "CompareResults", "CompareRow", "Leaderboard",
           "LeaderboardEntry", "endpoint_error", "per_row_error", "error_summary", "flipped_fraction", "sliced_w2",
           "LawReference", "exact_law", "pathwise_applies", "default_solvers", "make_sde", "SDE_NAMES", "STATISTICS",
           "LAW_STATISTICS", "TUNED", "SEARCHED", "FITTED", "SLICED", "ENDPOINT", "DEFAULT_NFE", "DEFAULT_GRIDS",
           "DEFAULT_TOLERANCES", "TUNE_SEED_OFFSET", "LAW_SETS", "FLOOR_PAIRS", "PATH_PROBE_STEPS"]
