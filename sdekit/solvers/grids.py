"""Time grids: strictly monotone float64 times ts[0] = t_start, ..., ts[-1] = t_end.

Sampling runs down (t_start > t_end); inversion (data -> noise) runs up (t_start < t_end). A named grid is
built from the high time down to the low one and reversed for inversion, so an inversion visits exactly
the times of the sampling solve with the same options, in the opposite order.

uniform    t_i evenly spaced.
quadratic  t_i = t_lo + (t_hi - t_lo) (1 - i/N)^2: dense near t_lo (Song et al. 2021, DDIM).
logsnr     lambda(t_i) evenly spaced between lambda(t_hi) and lambda(t_lo) (DPM-Solver's "logSNR").
karras     rho-spaced noise levels in the VE-equivalent s = sigma/alpha = exp(-lambda/2)
           (Karras et al. 2022, eq. 5): s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho.
explicit   any user tensor, checked to be strictly monotone and inside [0, T].

Grids that end at zero noise. When the low end has sigma = 0 (t_end = 0 on VP and VE SDEs), log-SNR
is infinite there and the network is not defined. Such a grid is, as diffusers' ``final_sigmas_type="zero"``
(and Euler's ``linspace`` spacing) lays it out: ``steps - 1`` intervals of the named grid between t_hi and
the smallest positive time t_min = sde.eps, then the last point t = 0. The last interval is not integrated:
``sample`` ends every solver there with the data-prediction jump x_0 = alpha(0) x0(x, t_min)
(one network call, counted). With steps = 1 the grid is [t_start, 0]: the jump alone.

Grids that start at pure noise. When the high end has alpha = 0 (t = T on the flow-matching paths), lambda
is -inf there and sigma/alpha infinite, so the grids spaced in lambda (logsnr, karras: ``log_snr=True``) place,
as diffusers' FlowMatch schedulers do with sigma_max = 1, the first point at t_hi and the other ``steps - 1``
intervals of the named grid between t_max and t_lo, where t_max mirrors t_min: lambda(t_max) = -lambda(sde.eps)
(t_max = 1 - eps on the rectified flow). The first interval is integrated by the solver (the data-form solvers
take it exactly: ``exponential.py``). Grids in t (uniform, quadratic) start at t_hi as they are.

New grids plug in with ``register``; ``own_ends=True`` marks grids that fix their own end times from
``steps`` and their options alone (the DDPM ``table`` and the ``diffusers`` spacings of ``discrete.py``).
A grid's options are the keyword parameters of its function after the fixed ones; any other name in
``grid_options`` is refused. ``steps`` is at most ``MAX_STEPS`` (a longer grid: pass it as ``ts=``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sde import LinearSDE
from ..validate import integer, real

Tensor = torch.Tensor

__all__ = ["GRIDS", "GridInfo", "register", "make_grid", "check_grid", "uniform", "quadratic", "logsnr", "karras",
           "MAX_STEPS"]

MAX_STEPS = 100_000  # a named grid's largest step count: far beyond any useful solve, small enough to fail fast


@dataclass(frozen=True)
class GridInfo:
    """name; fn(sde, steps, t_start, t_end, **options) -> decreasing float64 times from t_start to t_end
    (``own_ends``: fn(sde, steps, **options), the grid choosing its own end times)."""

    name: str
    fn: Callable[..., Tensor]
    own_ends: bool = False
    log_snr: bool = False  # spaced in lambda: needs a finite lambda at both ends
    options: tuple = ()  # the names grid_options may give (keyword parameters of fn after the fixed ones)


def _option_names(fn: Callable, own_ends: bool) -> tuple:
    fixed = 2 if own_ends else 4  # (sde, steps) or (sde, steps, t_start, t_end)
    params = list(inspect.signature(fn).parameters.values())[fixed:]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


GRIDS: dict[str, GridInfo] = {}


def register(name: str, *, own_ends: bool = False, log_snr: bool = False):
    """Decorator registering a grid function under ``name`` (see ``GridInfo`` for its signature)."""

    def deco(fn):
        if name in GRIDS:
            raise ValueError(f"grid {name!r} is already registered")
        GRIDS[name] = GridInfo(name, fn, own_ends, log_snr, _option_names(fn, own_ends))
        return fn

    return deco


@register("uniform")
def uniform(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@register("quadratic")
def quadratic(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_end + (t_start - t_end) * u**2


@register("logsnr", log_snr=True)
def logsnr(sde: LinearSDE, steps: int, t_start: float, t_end: float, **_) -> Tensor:
    lam = torch.linspace(float(sde.log_snr(t_start)), float(sde.log_snr(t_end)), steps + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), t_start, t_end)


@register("karras", log_snr=True)
def karras(sde: LinearSDE, steps: int, t_start: float, t_end: float, rho: float = 7.0, **_) -> Tensor:
    rho = real("rho", rho, 0.0, lo_open=True)
    s_max = torch.exp(-0.5 * sde.log_snr(t_start))
    s_min = torch.exp(-0.5 * sde.log_snr(t_end))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-2 * torch.log(s)), t_start, t_end)


def _pin_ends(ts: Tensor, t_start: float, t_end: float) -> Tensor:
    ts = ts.clone()
    ts[0], ts[-1] = t_start, t_end
    return ts


def check_grid(sde: LinearSDE, ts) -> Tensor:
    """Validate an explicit grid: 1-D, at least two times, strictly monotone, inside [0, T]."""
    # a list of Python floats stays float64 (torch.as_tensor alone would round it through float32)
    ts = (ts if isinstance(ts, Tensor) else torch.as_tensor(ts, dtype=torch.float64)).to(torch.float64).cpu()
    if ts.ndim != 1:
        raise ValueError(f"a time grid must be a 1-D sequence of times; got shape {tuple(ts.shape)}")
    if ts.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 times (1 step); got {ts.numel()}")
    sde.check_time(ts)
    d = ts[1:] - ts[:-1]
    if not (bool((d < 0).all()) or bool((d > 0).all())):
        raise ValueError("a time grid must be strictly monotone: strictly decreasing (sampling, t_start > t_end) "
                         "or strictly increasing (inversion, data -> noise)")
    return ts


def _zero_noise(sde: LinearSDE, t: float) -> bool:
    return float(sde.sigma(t)) == 0.0


def _noise_start(info: GridInfo, sde: LinearSDE, steps: int, hi: float, lo: float, **grid_options):
    """A grid spaced in lambda that starts at alpha = 0: [t_hi] + steps - 1 intervals from t_max down to t_lo
    (module docstring); None when the grid needs no such start."""
    if not (info.log_snr and float(sde.alpha(hi)) == 0.0):
        return None
    t_max = float(sde.t_from_log_snr(-sde.log_snr(sde.eps)))
    if not lo < t_max < hi:
        raise ValueError(f"grid {info.name!r} starts at alpha = 0 (t = {hi}) and places its other intervals from "
                         f"t_max = {t_max:.6g} (lambda(t_max) = -lambda(sde.eps)), which must lie strictly between "
                         f"{lo} and {hi}; use a grid in t (uniform, quadratic) or pass ts=")
    if steps == 1:
        return torch.tensor([hi, lo], dtype=torch.float64)
    return torch.cat([torch.tensor([hi], dtype=torch.float64), info.fn(sde, steps - 1, t_max, lo, **grid_options)])


def _named(info: GridInfo, sde: LinearSDE, steps: int, hi: float, lo: float, **grid_options) -> Tensor:
    out = _noise_start(info, sde, steps, hi, lo, **grid_options)
    return info.fn(sde, steps, hi, lo, **grid_options) if out is None else out


def make_grid(sde: LinearSDE, steps: Optional[int] = None, grid: str = "logsnr",
              t_start: Optional[float] = None, t_end: Optional[float] = None, ts=None, **grid_options) -> Tensor:
    """The time grid for a solve: either ``ts`` (explicit) or ``steps`` intervals of a named ``grid``.

    t_start defaults to sde.T and t_end to sde.eps; t_start < t_end gives the reversed (inversion) grid.
    A low end with sigma = 0 follows the zero-noise convention of the module docstring."""
    if ts is not None:
        if steps is not None:
            raise ValueError("give either steps= or ts=, not both")
        if grid_options:
            raise ValueError(f"grid_options {sorted(grid_options)} apply to a named grid, not to explicit ts=")
        return check_grid(sde, ts)
    steps = integer("steps", steps, 1)
    try:  # a named grid is a function of its arguments and the SDE: memoised per SDE, like ``sde.schedule``
        key = (grid, steps, t_start, t_end, tuple(sorted(grid_options.items())))
        hit = sde.__dict__.get("_grid_memo", {}).get("grids", {}).get(key)
    except TypeError:  # an unhashable option value: computed each time
        key, hit = None, None
    if hit is not None:
        return hit.clone()
    out = _make_named_grid(sde, steps, grid, t_start, t_end, **grid_options)
    if key is not None:
        # a dict on the SDE (``tune``'s fingerprint of the SDE skips dicts: memo state is not model content)
        memo = sde.__dict__.setdefault("_grid_memo", {"times": 0, "grids": {}})
        if memo["times"] + out.numel() > 2**16:  # bounded: at most 2^16 times kept per SDE
            memo["grids"].clear()
            memo["times"] = 0
        memo["times"] += out.numel()
        memo["grids"][key] = out.clone()
    return out


def _make_named_grid(sde: LinearSDE, steps: int, grid: str, t_start: Optional[float], t_end: Optional[float],
                     **grid_options) -> Tensor:
    if steps > MAX_STEPS:
        raise ValueError(f"steps = {steps} is over sdekit.solvers.grids.MAX_STEPS = {MAX_STEPS}; pass a longer grid "
                         "as ts= if it is really wanted")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; accepted: {', '.join(GRIDS)} (or pass ts=)")
    info = GRIDS[grid]
    unknown = sorted(set(grid_options) - set(info.options))
    if unknown:
        raise ValueError(f"grid {grid!r} got unknown option(s) {unknown}; accepted: {', '.join(info.options) or 'none'}")
    if info.own_ends:
        if t_start is not None or t_end is not None:
            raise ValueError(f"grid {grid!r} sets its own end times; drop t_start/t_end (or flip the grid "
                             "it returns and pass it as ts= to invert)")
        return check_grid(sde, info.fn(sde, steps, **grid_options))
    t_start = sde.T if t_start is None else float(t_start)
    t_end = sde.eps if t_end is None else float(t_end)
    sde.check_time(torch.tensor([t_start, t_end], dtype=torch.float64))
    if t_start == t_end:
        raise ValueError(f"t_start must differ from t_end (t_start > t_end samples, t_start < t_end inverts); "
                         f"got both {t_start}")
    hi, lo = max(t_start, t_end), min(t_start, t_end)
    if _zero_noise(sde, lo) and steps > 1:
        t_min = sde.eps
        if not lo < t_min < hi:
            raise ValueError(f"a grid ending at sigma = 0 (t = {lo}) places its first steps - 1 intervals down to "
                             f"sde.eps, which must lie strictly between {lo} and {hi}; got sde.eps = {t_min}")
        body = _named(info, sde, steps - 1, hi, t_min, **grid_options)
        out = torch.cat([body, torch.tensor([lo], dtype=torch.float64)])
    elif _zero_noise(sde, lo):
        out = torch.tensor([hi, lo], dtype=torch.float64)
    else:
        out = _named(info, sde, steps, hi, lo, **grid_options)
    out = check_grid(sde, out)
    return out.flip(0) if t_start < t_end else out


from . import schedules  # noqa: E402,F401  (registers the model-free schedules: kl_optimal)
