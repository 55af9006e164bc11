"""One row of a comparison (``CompareRow``) and the names its columns are known by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["CompareRow", "ENDPOINT", "SLICED", "TUNED", "SEARCHED", "FITTED", "LEARNED", "KINDS", "STATISTICS",
           "LAW_STATISTICS", "LABELS", "csv_values", "grid_label", "fmt"]

ENDPOINT = "endpoint_rmse"  # the metric of deterministic rows (all statistics of e_i are kept)
SLICED = "sliced_w2"  # the metric of stochastic rows (``sdekit.compare.law``)
TUNED = "tuned"  # the grid name that asks for a grid tuned to the model and solver
SEARCHED = ("gits", "ays")  # grids searched per model and solver (``solvers.schedules.gits``, ``solvers.ays``)
FITTED = (TUNED, *SEARCHED)  # grids fitted to the model, with a one-time cost
LEARNED = "learned"  # the grid label of a learned solver's row (``sdekit.learn_solver``: its own grid)
KINDS = ("untuned", *FITTED, LEARNED)  # the leaderboard's kinds, in order ("untuned": named grids, no model calls)
STATISTICS = {"median": "median", "p90": "p90", "rms": "error", "max": "max"}  # statistic -> CompareRow field
LAW_STATISTICS = {"excess": "excess", "path_median": "path_median", "mode_err": "mode_err"}  # of stochastic rows
LABELS = {"median": "median", "p90": "90th percentile", "rms": "RMS", "max": "maximum",
          "excess": "sliced W2 to exact samples minus its floor", "path_median": "median pathwise error",
          "mode_err": "mode-weight error"}


@dataclass
class CompareRow:
    """One solve: solver, grid ("tuned", "gits" or "ays" for a grid fitted to the model, "adaptive" with tol), steps,
    nfe (counted),
    error (the RMS of the per-row errors e_i; for metric "sliced_w2" the sliced W2 to exact samples instead),
    time_s (wall time of the solve), metric ("endpoint_rmse" or "sliced_w2"), tol (adaptive solvers only),
    median / p90 / max of e_i, flipped (fraction of rows ending in another mixture component than the
    reference; ground truth only), tune_nfe and learn_s (a fitted grid's rows: the network calls spent fitting it and
    the seconds it took; on a learned solver's row, grid "learned": the forward network calls of its learning, each a
    batch of its n rows, and its seconds; both one-time costs).

    Stochastic rows (metric "sliced_w2"; None on the others): excess (error minus the floor) and excess_se (its
    standard error), mode_err (mode-weight total variation), and path_median / path_p90 / path_rms / path_max of
    the per-row error against the fine same-path reference (None where no such reference exists)."""

    solver: str
    grid: str
    steps: Optional[int]
    nfe: int
    error: float
    time_s: float
    metric: str = ENDPOINT
    tol: Optional[float] = None
    median: Optional[float] = None
    p90: Optional[float] = None
    max: Optional[float] = None
    flipped: Optional[float] = None
    tune_nfe: Optional[int] = None
    learn_s: Optional[float] = None
    excess: Optional[float] = None
    excess_se: Optional[float] = None
    mode_err: Optional[float] = None
    path_median: Optional[float] = None
    path_p90: Optional[float] = None
    path_rms: Optional[float] = None
    path_max: Optional[float] = None

    @property
    def rms(self) -> float:
        return self.error

    @property
    def tuned(self) -> bool:
        return self.grid == TUNED

    @property
    def learned(self) -> bool:
        return self.grid == LEARNED

    @property
    def kind(self) -> str:
        """The leaderboard's kind: "untuned" (a named grid), the fitted grid's name, or "learned"."""
        return self.grid if self.grid in FITTED or self.grid == LEARNED else "untuned"

    def statistic(self, name: str) -> float:
        """The value of one statistic (median, p90, rms, max; for stochastic rows excess, path_median, mode_err);
        NaN where it does not apply."""
        column = STATISTICS.get(name) or LAW_STATISTICS.get(name)
        if column is None:
            raise ValueError(f"unknown statistic {name!r}; accepted: {', '.join([*STATISTICS, *LAW_STATISTICS])}")
        value = getattr(self, column)
        return float("nan") if value is None else float(value)


_CSV_TYPES = {"steps": int, "nfe": int, "tune_nfe": int, "solver": str, "grid": str, "metric": str}


def csv_values(line: dict) -> dict[str, Any]:
    """A ``to_csv`` line's fields, typed as its column (empty -> None)."""
    return {k: None if v == "" else _CSV_TYPES.get(k, float)(v) for k, v in line.items()}


def grid_label(r: CompareRow) -> str:
    """The grid, or "tol=1e-05" for an adaptive row."""
    return r.grid if r.tol is None else f"tol={r.tol:.0e}"


def fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec``, "-" for None."""
    return "-" if value is None else format(value, spec)
