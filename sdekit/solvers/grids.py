"""Time grids: decreasing float64 times t_start = ts[0] > ... > ts[-1] = t_end.

uniform    t_i evenly spaced.
quadratic  t_i = t_end + (t_start - t_end) (1 - i/N)^2: dense near t_end (Song et al. 2021, DDIM).
logsnr     lambda(t_i) evenly spaced between lambda(t_start) and lambda(t_end) (DPM-Solver's "logSNR").
karras     rho-spaced noise levels in the VE-equivalent s = sigma/alpha = exp(-lambda/2)
           (Karras et al. 2022, eq. 5): s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho.
explicit   any user tensor, checked to be strictly decreasing and inside [0, T].
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["GRIDS", "make_grid", "check_grid", "uniform", "quadratic", "logsnr", "karras"]


def uniform(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def quadratic(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_end + (t_start - t_end) * u**2


def logsnr(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    lam = torch.linspace(float(sde.log_snr(t_start)), float(sde.log_snr(t_end)), steps + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), t_start, t_end)


def karras(sde: LinearSDE, steps: int, t_start: float, t_end: float, rho: float = 7.0, **_) -> Tensor:
    s_max = torch.exp(-0.5 * sde.log_snr(t_start))
    s_min = torch.exp(-0.5 * sde.log_snr(t_end))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-2 * torch.log(s)), t_start, t_end)


def _pin_ends(ts: Tensor, t_start: float, t_end: float) -> Tensor:
    ts = ts.clone()
    ts[0], ts[-1] = t_start, t_end
    return ts


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform,
    "quadratic": quadratic,
    "logsnr": logsnr,
    "karras": karras,
}


def check_grid(sde: LinearSDE, ts) -> Tensor:
    """Validate an explicit grid: 1-D, at least two times, strictly decreasing, inside [0, T]."""
    ts = torch.as_tensor(ts).to(torch.float64).flatten().cpu()
    if ts.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 times (1 step); got {ts.numel()}")
    sde.check_time(ts)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("a time grid must be strictly decreasing (sampling runs from t_start down to t_end)")
    return ts


def make_grid(sde: LinearSDE, steps: Optional[int] = None, grid: str = "logsnr",
              t_start: Optional[float] = None, t_end: Optional[float] = None, ts=None, **grid_options) -> Tensor:
    """The time grid for a solve: either ``ts`` (explicit) or ``steps`` intervals of a named ``grid``."""
    if ts is not None:
        if steps is not None:
            raise ValueError("give either steps= or ts=, not both")
        return check_grid(sde, ts)
    if steps is None or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; accepted: {', '.join(GRIDS)} (or pass ts=)")
    t_start = sde.T if t_start is None else float(t_start)
    t_end = sde.eps if t_end is None else float(t_end)
    sde.check_time(torch.tensor([t_start, t_end], dtype=torch.float64))
    if not t_start > t_end:
        raise ValueError(f"t_start must be greater than t_end; got t_start={t_start}, t_end={t_end}")
    return check_grid(sde, GRIDS[grid](sde, int(steps), t_start, t_end, **grid_options))
