"""Grids fitted to the model, one per solver and step count, with their one-time cost: ``tune``'s (grid "tuned"),
GITS's (grid "gits", ``sdekit.solvers.schedules.gits_schedule``) and Align Your Steps' (grid "ays",
``sdekit.solvers.ays.ays_schedule``). Each is built from prior draws of its own seed (``seed + TUNE_SEED_OFFSET``,
never the compared x_T); its rows carry the network calls it spent (``tune_nfe``, each a batch of the builder's n
rows) and its wall time in seconds (``learn_s``). ``kl_optimal`` needs no model and no fitting: a named grid."""
from __future__ import annotations

import time
from typing import Optional

from ..solvers.ays import ays_schedule
from ..solvers.schedules import gits_schedule
from ..solvers.tune import tune
from .rows import FITTED, SEARCHED, TUNED

__all__ = ["fitted_grid", "check_fitted_options", "TUNE_SEED_OFFSET", "describe"]

TUNE_SEED_OFFSET = 1_000_003  # fitting draws use seed + this: independent of the compared x_T
_BUILDERS = {"gits": gits_schedule, "ays": ays_schedule}


def check_fitted_options(options: Optional[dict]) -> dict:
    """``Plan.search_options``: {"gits": {...}, "ays": {...}} keywords for the searched grids' builders."""
    options = dict(options or {})
    bad = sorted(set(options) - set(SEARCHED))
    if bad or any(not isinstance(v, dict) for v in options.values()):
        raise ValueError(f"search_options maps {' / '.join(SEARCHED)} to a dict of keywords for its builder; got "
                         f"{options!r}")
    return options


def fitted_grid(model, solver: str, grid: str, steps: int, shape: tuple, seed: int, tune_options: dict,
                search_options: dict) -> tuple:
    """(ts, network calls, seconds) of the ``grid`` ("tuned", "gits" or "ays") fitted for ``solver`` at ``steps``."""
    assert grid in FITTED
    t0 = time.perf_counter()
    if grid == TUNED:
        tuned = tune(model, solver, steps, shape=shape, generator=seed + TUNE_SEED_OFFSET, **tune_options)
        return tuned.ts, int(tuned.nfe), time.perf_counter() - t0
    if grid == "gits":
        found = gits_schedule(model, solver, steps, shape=shape, generator=seed + TUNE_SEED_OFFSET,
                              **search_options.get(grid, {}))
    else:
        found = ays_schedule(model, steps, shape=shape, solver=solver, generator=seed + TUNE_SEED_OFFSET,
                             **search_options.get(grid, {}))
    return found.ts, int(found.nfe), time.perf_counter() - t0


def describe(grids, seed: int, tune_options: dict, search_options: dict) -> dict:
    """``meta`` entries for the fitted grids among ``grids``."""
    out: dict = {}
    note = ("fitted on prior draws of their own seed, never the compared x_T; one-step runs and stochastic solvers "
            "are not fitted; each row's tune_nfe and learn_s are its fitting cost (network calls, seconds)")
    if TUNED in grids:
        out["tuning"] = {"method": "sdekit.solvers.tune.tune", "seed": seed + TUNE_SEED_OFFSET, **tune_options,
                         "note": note}
    for g in SEARCHED:
        if g in grids:
            fn = _BUILDERS[g]
            out[g] = {"method": f"{fn.__module__}.{fn.__name__}", "seed": seed + TUNE_SEED_OFFSET,
                      **search_options.get(g, {}), "note": note}
    return out
