"""The reference endpoints of the deterministic rows: a fine solve of the same probability-flow ODE from the same x_T,
with its own error estimate.

The reference is computed in float64:
  * built-in mixture: classical RK4 on the log-SNR grid with ``ref_steps`` steps; a second RK4 solve
    with half the steps gives the reference's own error estimate by Richardson's rule,
    |x_N - x_{N/2}| / (2^4 - 1), reported as ``meta["reference"]["error_estimate"]``;
  * a user's model (a trained checkpoint, say): dopri5 (sdekit.solvers.integrate) with rtol = atol = ``ref_tol``
    (1e-10), and a second solve at 100 ``ref_tol`` whose distance to the first bounds the error from above.
The harness warns when a reported RMS is not at least ten times the reference's error estimate.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Sequence

import torch

from ..metrics import endpoint_error
from ..parameterization import ScoreModel
from ..solvers import sample
from .rows import ENDPOINT, CompareRow

Tensor = torch.Tensor

__all__ = ["ode_reference", "given_reference", "check_reference"]


def ode_reference(model: ScoreModel, x_T: Tensor, builtin: bool, ref_steps: int,
                  ref_tol: float) -> tuple[Tensor, dict]:
    """(x_ref, info): RK4 on the log-SNR grid for the built-in mixture, dopri5 at ``ref_tol`` for a user's model, in
    float64, each with a second, coarser solve whose distance gives the error estimate (module docstring)."""
    x64 = x_T.to(torch.float64)
    t0 = time.perf_counter()
    if builtin:
        fine = sample(model, x64, "rk4", ref_steps, grid="logsnr")
        coarse = sample(model, x64, "rk4", max(1, ref_steps // 2), grid="logsnr")
        diff = endpoint_error(fine.x, coarse.x)
        info = {"method": f"rk4, {ref_steps} steps on the logsnr grid, float64",
                "error_estimate": diff / 15.0, "difference_to_half_steps": diff,
                "nfe": fine.nfe, "check": f"rk4 with {max(1, ref_steps // 2)} steps"}
    else:
        fine = sample(model, x64, "dopri5", rtol=ref_tol, atol=ref_tol)
        coarse = sample(model, x64, "dopri5", rtol=100 * ref_tol, atol=100 * ref_tol)
        diff = endpoint_error(fine.x, coarse.x)
        info = {"method": f"dopri5 (the integration core), rtol = atol = {ref_tol:g}, float64",
                "error_estimate": diff, "difference_to_looser": diff, "nfe": fine.nfe,
                "check": f"dopri5 at rtol = atol = {100 * ref_tol:g} (an upper bound)"}
    info["time_s"] = time.perf_counter() - t0
    return fine.x, info


def given_reference(reference, x_T: Tensor) -> tuple[Tensor, dict]:
    """(x_ref, info) for a reference endpoint the caller gives (a tensor of x_T's shape)."""
    x_ref = torch.as_tensor(reference)
    if x_ref.shape != x_T.shape:
        raise ValueError(f"reference shape {tuple(x_ref.shape)} must equal x_T shape {tuple(x_T.shape)}")
    return x_ref, {"method": "given by the caller"}


def check_reference(rows: Sequence[CompareRow], meta: dict) -> None:
    """Record in ``meta["reference"]``, and warn unless, the reference's error estimate lies ten times below the
    smallest RMS."""
    ref = meta["reference"]
    est = ref.get("error_estimate")
    errs = [r.error for r in rows if r.metric == ENDPOINT and math.isfinite(r.error)]
    if est is not None and errs:
        ref["below_smallest_error"] = bool(est < min(errs))
        if est * 10 > min(errs):
            warnings.warn(f"the reference's error estimate {est:.2e} is not ten times below the smallest "
                          f"reported error {min(errs):.2e}; raise ref_steps (or lower ref_tol)", stacklevel=2)
