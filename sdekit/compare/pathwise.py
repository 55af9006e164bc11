"""Pathwise (strong) error of stochastic solvers: which solvers have a same-path reference, and that reference.

Pathwise (strong) error.  A solver whose noise is the increments of the rows' Brownian paths
(``Evaluator.path_noise``; a row's path is a function of (seed, row, t) alone, ``sdekit.noise.BrownianPath``) solves,
at every step count, one realisation of its SDE; so does one whose per-call draws (``Evaluator.randn_like``) are the
same at every step count (Restart: K jumps per interval, the k-th call giving every row its k-th draw). For those the
reference is the same solver from the same x_T and seed with ``ref_steps`` steps on the log-SNR grid, in float64: as
the steps grow it converges to that solver's strong solution on that path (for eta = 1 the reverse SDE's; order 1,
the noise of a linear SDE being additive: Kloeden & Platen 1992, sec. 10.4). The same solver and not one common
reference, so that a solver's own options (eta, s_noise, restart intervals, the noiseless last step) define the limit
its coarse solves are measured against. Rows report median / p90 / rms / max of e_i = |x_i - x_ref,i| / sqrt(dim)
(``path_median``, ...; the median is robust to the few rows that switch modes under any perturbation); the reference's
own error is estimated by Richardson's rule from a solve with half the steps, |x_N - x_{N/2}| / (2^p - 1),
p = min(order, 1) (with one Gaussian per step no scheme passes strong order 1), in ``meta["pathwise"][solver]``,
and the harness warns unless its median lies ten times below the solver's smallest median error. Which solvers
qualify is probed, not listed (``pathwise_applies``): two short solves (6 and 12 steps, 2 rows) with a noise source
that records the per-call draws; where they differ in number or shape (pc's Langevin corrector, heun_churn's churn,
ddpm, torchsde's grid increments) a finer solve draws other noise, there is no same-path reference, and the rows'
``path_*`` are None with the reason in ``meta["pathwise"][solver]["reason"]``. ``pathwise=False`` skips it all (the
reference costs 1.5 ``ref_steps`` steps per solver, once).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Optional, Sequence

import torch

from ..metrics import error_summary, per_row_error
from ..noise import RowNoise
from ..parameterization import ScoreModel
from ..solvers import SolverError, get, sample
from ..solvers.base import Evaluator
from ..solvers.grids import make_grid
from .rows import CompareRow

Tensor = torch.Tensor

__all__ = ["pathwise_applies", "path_reference", "check_path_references", "PATH_PROBE_STEPS"]

PATH_PROBE_STEPS = (6, 12)  # step counts of the two probe solves of pathwise_applies


class _NoiseProbe(RowNoise):
    """Row noise that records the shapes of its per-call draws and whether a Brownian path was asked for."""

    def __init__(self, n_rows: int):
        super().__init__(0, n_rows)
        self.draws: list = []
        self.paths = 0

    def randn_like(self, x: Tensor) -> Tensor:
        self.draws.append(tuple(x.shape))
        return super().randn_like(x)

    def path(self, T: float, rel_tol: float = 2.0**-12):
        self.paths += 1
        return super().path(T, rel_tol)


def pathwise_applies(model: ScoreModel, solver: str, x: Tensor) -> tuple[bool, str]:
    """(whether a finer solve of ``solver`` with the same seed refines the same noise, why), probed by solving from
    the rows x (two suffice) on ``PATH_PROBE_STEPS`` log-SNR grids with a noise source that records the per-call
    draws: noise from the Brownian paths, or the same per-call draws at both step counts, qualifies."""
    info, seen = get(solver), []
    for k in PATH_PROBE_STEPS:
        probe = _NoiseProbe(x.shape[0])
        ts = make_grid(model.sde, k, "logsnr")
        ts = ts[:-1] if float(model.sde.sigma(ts[-1])) == 0.0 else ts  # the driver's zero-noise jump draws nothing
        try:
            for _ in info.fn(Evaluator(model, probe), x.clone(), ts):
                pass
        except (SolverError, ValueError) as err:
            return False, f"the probe solve failed ({err})"
        seen.append(probe)
    a, b = seen
    if a.draws != b.draws:
        return False, (f"fresh per-call draws ({len(a.draws)} at {PATH_PROBE_STEPS[0]} steps, {len(b.draws)} at "
                       f"{PATH_PROBE_STEPS[1]}, shapes {sorted(set(a.draws) | set(b.draws))}): a finer solve draws "
                       "other noise, so there is no fine solve of the same path to compare with")
    if a.draws:
        return True, (f"{len(a.draws)} per-call draws, the same at every step count"
                       + (", and the rows' Brownian paths" if a.paths else ""))
    return True, "the rows' Brownian paths" if a.paths else "no noise"


def path_reference(model: ScoreModel, x_T: Tensor, seed: int, name: str, ref_steps: int) -> tuple[Optional[Tensor], dict]:
    """The same solver's fine solve of the same rows and seed (module docstring), or None and the reason."""
    applies, why = pathwise_applies(model, name, x_T[:2])
    if not applies:
        return None, {"applies": False, "reason": why}
    x64, half = x_T.to(torch.float64), max(1, ref_steps // 2)
    t0 = time.perf_counter()
    try:
        fine = sample(model, x64, name, ref_steps, grid="logsnr", generator=seed)
        coarse = sample(model, x64, name, half, grid="logsnr", generator=seed)
    except SolverError as err:
        return None, {"applies": False, "reason": f"the reference solve failed: {err}"}
    p = min(float(get(name).order or 1.0), 1.0)
    diff = error_summary(per_row_error(fine.x, coarse.x))
    return fine.x, {
        "applies": True, "noise": why, "order_used": p, "nfe": fine.nfe, "time_s": time.perf_counter() - t0,
        "method": f"{name}, {ref_steps} steps on the logsnr grid, float64, seed {seed}",
        "check": f"{name} with {half} steps", "difference_to_half_steps": diff,
        "error_estimate": {k: v / (2**p - 1) for k, v in diff.items()},
    }


def check_path_references(rows: Sequence[CompareRow], meta: dict) -> None:
    """Record in ``meta["pathwise"]``, and warn unless, each same-path reference's median error lies ten times below
    the solver's smallest median pathwise error."""
    paths = meta.get("pathwise")
    for name, info in (paths.items() if isinstance(paths, dict) else ()):
        if not info.get("applies"):
            continue
        errs = [r.path_median for r in rows if r.solver == name and r.path_median  # 0: the reference's own steps
                and math.isfinite(r.path_median)]
        est = info["error_estimate"]["median"]
        if errs:
            info["below_smallest_error"] = bool(est < min(errs))
            if est * 10 > min(errs):
                warnings.warn(f"the same-path reference of {name} has a median error estimate {est:.2e}, not ten times "
                              f"below its smallest median pathwise error {min(errs):.2e}; raise ref_steps", stacklevel=2)
