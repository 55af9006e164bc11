"""Schedules from the literature: a closed form that needs no model, and a search over one model's trajectory.

kl_optimal (a named grid: ``sample(..., grid="kl_optimal")``). Align Your Steps (Sabour, Fidler & Kreis 2024,
Theorem 3.1) finds the schedule that minimises the KL divergence between p_{t_end} and the output of DDIM when the
data are Gaussian. Derivation, in sdekit's terms: write s = sigma/alpha = exp(-lambda/2) (the VE-equivalent noise
level; ``karras`` uses the same s) and let the data be N(0, c^2 I) (``sigma_data`` = c, default 1: unit-variance
data). Then x0(x, s) = x c^2 / (c^2 + s^2) and DDIM, which holds x0 fixed over a step, maps the rescaled state
y = x/alpha from s to s' by y' = x0 + (s'/s)(y - x0), a gain of (c^2 + s s') / (c^2 + s^2) on y. The true marginal
of y has std sqrt(c^2 + s^2), so relative to it one step scales the std by

    (c^2 + s s') / sqrt((c^2 + s^2)(c^2 + s'^2)) = cos(theta - theta'),    theta = atan(s / c),

and N steps from an exact start scale it by rho = prod_i cos(theta_i - theta_{i+1}) <= 1, the output being
N(0, rho^2 v) against the true N(0, v): KL = d/2 (1/rho^2 - 1 + 2 log rho), decreasing in rho. log cos is concave and
the steps' sum theta_0 - theta_N is fixed, so by Jensen the product is largest, and the KL smallest, when every
step has the same angle:

    theta_i = theta_max + (i/N) (theta_min - theta_max),   s_i = c tan(theta_i),   lambda_i = -2 log s_i

(ComfyUI's ``kl_optimal`` scheduler, with c = 1, in sigma = s). theta is the angle of (alpha c, sigma) in the plane
of signal and noise, finite at both ends: theta = pi/2 at alpha = 0 (the flow-matching paths at T, where lambda and s
are infinite) and 0 at sigma = 0, so the grid starts at t_start and ends at t_end on every SDE and path as it is;
a grid ending at sigma = 0 keeps ``grids.py``'s convention (steps - 1 intervals to sde.eps, then the x0 jump).
``ddim_gaussian_kl`` evaluates the objective for any grid (the tests minimise it numerically).

gits. GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML): sampling
trajectories of the probability-flow ODE are regular enough that one fine teacher solve from a few prior draws tells
where a coarse grid's steps cost least. With fine times tau_0 = t_start > ... > tau_M = t_end (``fine`` intervals
of ``fine_grid``) and the teacher's states X_k at tau_k (rk4 with ``substeps`` steps per fine interval)::

    C[k, j] = mean_rows |Phi(X_k; tau_k -> tau_j) - X_j| / sqrt(dim)      k < j (one step of ``solver``)
    D[m, j] = min_k D[m - 1, k] + C[k, j],   D[0, 0] = 0                     (dynamic programming)

and the grid is the path 0 -> M of ``steps`` steps with the least total cost D[steps, M]. Phi is one step of
``cost_solver`` (default: the solver itself; for a multistep solver its first, start-up-order step, since a step of a
path in the search has no history). Network calls: the teacher's; a one-call-per-step Phi reuses the teacher's
evaluations at the fine times (cached), so only multi-stage ones pay more (``Schedule.nfe`` counts every call).

Selection. The sum of local errors is not the endpoint error (it ignores how errors propagate and a multistep
solver's history). Measured on VP mixtures (2-D and 16-D, 3 unseen seeds, NFE 4-10), the DP grid alone was 1.0-2.4x
the best named grid's median error for dpmpp_2m (quadratic usually best). So the searched grid is kept only where it
wins: it and the ``candidates`` grids are run with ``solver`` from the teacher's x_T and scored against the teacher's
endpoint by tune's balanced objective (log q50 + log q90)/2 of the per-row errors; the best is returned and named in
``Schedule.info["chosen"]`` (``candidates=()``: the DP grid alone). Cost: ``steps`` calls per candidate.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..sde import LinearSDE
from ..validate import integer, real
from .grids import register

Tensor = torch.Tensor

__all__ = ["kl_optimal", "ddim_gaussian_kl", "angle", "Schedule", "gits", "gits_schedule", "CANDIDATES"]

CANDIDATES = ("uniform", "quadratic", "logsnr", "karras", "kl_optimal")  # the grids a searched grid must beat


# -- kl_optimal ---------------------------------------------------------------------------------------
def angle(sde: LinearSDE, t, sigma_data: float = 1.0) -> Tensor:
    """theta(t) = atan(s / c), s = sigma/alpha: pi/2 where alpha = 0, 0 where sigma = 0 (module docstring)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.atan2(sde.sigma(t), sigma_data * sde.alpha(t))


@register("kl_optimal")
def kl_optimal(sde: LinearSDE, steps: int, t_start: float, t_end: float, sigma_data: float = 1.0, **_) -> Tensor:
    """Steps of equal angle theta = atan(sigma / (alpha c)): the DDIM-KL optimum for N(0, c^2) data (module
    docstring; Sabour et al. 2024, Theorem 3.1)."""
    c = real("sigma_data", sigma_data, 0.0, lo_open=True)
    th = angle(sde, torch.tensor([t_start, t_end], dtype=torch.float64), c)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)[1:-1]
    inner = th[0] + u * (th[1] - th[0])  # strictly inside (0, pi/2): finite lambda
    lam = -2.0 * (math.log(c) + torch.log(torch.tan(inner)))
    lo, hi = sorted((float(sde.log_snr(t_start)), float(sde.log_snr(t_end))))
    ts = sde.t_from_log_snr(lam.clamp(lo, hi)) if inner.numel() else inner
    return torch.cat([torch.tensor([t_start], dtype=torch.float64), ts, torch.tensor([t_end], dtype=torch.float64)])


def ddim_gaussian_kl(sde: LinearSDE, ts, sigma_data: float = 1.0) -> float:
    """KL(p_{t_end} || DDIM's output) per dimension for N(0, c^2) data, DDIM started from the exact p_{ts[0]} (Align
    Your Steps' Gaussian objective): 1/2 (1/rho^2 - 1 + 2 log rho), rho = prod_i cos(theta_i - theta_{i+1})."""
    th = angle(sde, torch.as_tensor(ts, dtype=torch.float64), sigma_data)
    rho = float(torch.cos(th[:-1] - th[1:]).prod())
    return 0.5 * (1.0 / rho**2 - 1.0 + 2.0 * math.log(rho))


# -- GITS ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """A grid searched for one model and solver, and what it cost.

    ts: float64 times t_start > ... > t_end (pass as ``sample(..., ts=ts)``); nfe: network calls spent (each a batch
    of ``n`` rows); fine_ts: the fine times the search chose from; cost: the searched objective of ``ts`` (GITS: the
    sum of its steps' local errors on the teacher); method / solver / steps / seed: what was asked."""

    ts: Tensor
    nfe: int
    method: str
    solver: str
    steps: int
    cost: float
    fine_ts: Tensor
    seed: Optional[int] = None
    info: dict = field(default_factory=dict)


class CachedNet:
    """The model's network, remembering its outputs at the ``times`` given (one state per time), so that steps
    started from a teacher state reuse the teacher's evaluation there; counts the calls that reach the network."""

    def __init__(self, net, times: Sequence[float]):
        self.net, self.times, self.calls = net, set(float(t) for t in times), 0
        self.memo: dict = {}

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        key = float(t[0]) if t.numel() and bool((t == t[0]).all()) else None
        hit = self.memo.get(key) if key is not None else None
        if hit is not None and hit[0].shape == x.shape and torch.equal(hit[0], x):
            return hit[1]
        self.calls += 1
        out = self.net(x, t)
        if key in self.times:
            self.memo[key] = (x.detach().clone(), out.detach().clone())
        return out


def refine_angle(sde: LinearSDE, ts: Tensor, k: int) -> Tensor:
    """``ts`` with k - 1 points inserted in each interval, equally spaced in the angle theta (finite at alpha = 0)."""
    th = angle(sde, ts)
    u = torch.arange(k, dtype=torch.float64) / k
    inner = (th[:-1, None] + u[None, 1:] * (th[1:, None] - th[:-1, None])).reshape(-1)
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(0.0))
    t_inner = sde.t_from_log_snr((-2.0 * torch.log(torch.tan(inner))).clamp(lo, hi)).reshape(-1, k - 1)
    rows = torch.cat([ts[:-1, None], t_inner], dim=1).reshape(-1)
    return torch.cat([rows, ts[-1:]])


def check_search(model, solver: str, steps, n, shape, fine, substeps) -> tuple:
    from ..parameterization import ScoreModel

    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    _check_solver(solver)
    steps, n = integer("steps", steps, 1), integer("n", n, 1)
    fine, substeps = integer("fine", fine, 2), integer("substeps", substeps, 1)
    if shape is None or isinstance(shape, (str, bytes)) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must give one row's shape, e.g. shape=(2,) or (1, 8, 8); got {shape!r}")
    return steps, n, fine, substeps


def check_grid_names(names: Sequence[str], candidates: Sequence[str]) -> None:
    """Refuse a string for ``candidates`` and any of ``names`` that is not a named grid with free ends."""
    from .grids import GRIDS

    if isinstance(candidates, str):
        raise ValueError(f"candidates must be a sequence of grid names (or ()); got the string {candidates!r}")
    for name in names:
        if name not in GRIDS or GRIDS[name].own_ends:
            ok = ", ".join(g for g, info in GRIDS.items() if not info.own_ends)
            raise ValueError(f"unknown or fixed-end grid {name!r} for a searched grid; accepted: {ok}")


def _check_solver(solver: str) -> None:
    from .registry import get

    info = get(solver)
    if info.adaptive or (info.stochastic and info.options.get("eta", None) != 0):
        raise ValueError(f"a searched grid needs a deterministic fixed-step solver; {solver!r} is "
                         f"{'adaptive' if info.adaptive else 'stochastic'}")


def seed_of(generator) -> int:
    if isinstance(generator, bool) or not isinstance(generator, (int, torch.Generator, type(None))):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None; got {type(generator).__name__}")
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(generator.initial_seed()) if isinstance(generator, torch.Generator) else int(generator)


def search_ends(sde: LinearSDE, t_start, t_end, steps: int) -> tuple[float, float, float, bool]:
    """(t_start, t_end, the searched low end, whether a final sigma = 0 jump follows it)."""
    t_start = float(sde.T if t_start is None else t_start)
    t_end = float(sde.eps if t_end is None else t_end)
    sde.check_time(torch.tensor([t_start, t_end], dtype=torch.float64))
    if not t_start > t_end:
        raise ValueError(f"a searched grid samples: t_start must exceed t_end; got {t_start} and {t_end}")
    zero_end = float(sde.sigma(t_end)) == 0.0
    if zero_end and steps < 2:
        raise ValueError("a grid that ends at sigma = 0 spends its last step on the jump to t = 0: searching it "
                         f"needs steps >= 2; got {steps}")
    return t_start, t_end, (sde.eps if zero_end else t_end), zero_end


def search_span(sde: LinearSDE, t_start, t_end, steps: int, fine: int) -> tuple[float, float, float, bool, int]:
    """``search_ends`` and the number of searched intervals (steps, less the final jump), at most ``fine``."""
    t_start, t_end, t_low, zero_end = search_ends(sde, t_start, t_end, steps)
    hops = steps - 1 if zero_end else steps
    if hops > fine:
        raise ValueError(f"steps = {steps} needs at least as many fine intervals; got fine = {fine}")
    return t_start, t_end, t_low, zero_end, hops


def teacher(model, tau: Tensor, shape: tuple, seed: int, substeps: int) -> tuple:
    """(the model on a network that counts its calls and remembers them at the fine times ``tau``, x_T, the teacher's
    states at ``tau``, its endpoint, its network calls): rk4 with ``substeps`` steps per fine interval (equal in
    angle) from ``shape`` prior draws of ``seed``."""
    from .driver import sample

    dtype, device = model.net_dtype_device()
    x_T = model.sde.prior_sample(shape, generator=torch.Generator().manual_seed(seed)).to(
        dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float32, device=device)
    cached = copy.copy(model)  # the same model (any ScoreModel subclass) on the caching network
    cached.net = CachedNet(model.net, tau.tolist())
    ts = refine_angle(model.sde, tau, substeps) if substeps > 1 else tau
    out = sample(cached, x_T, "rk4", ts=ts, trajectory=True)
    assert out.trajectory is not None
    return cached, x_T, out.trajectory[::substeps], out.x, out.nfe


def _dp(cost: Tensor, steps: int) -> tuple[list, float]:
    """The path 0 -> M of exactly ``steps`` steps (k < j) with the least sum of cost[k, j]."""
    big = torch.full_like(cost, math.inf)
    c = torch.where(torch.ones_like(cost, dtype=torch.bool).triu(1), cost, big)
    m = cost.shape[0]
    best = torch.full((m,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + c  # [k, j]
        best, arg = total.min(dim=0)
        back.append(arg)
    path = [m - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(best[m - 1])


def gits_schedule(
    model,
    solver: str,
    steps: int,
    *,
    shape: Sequence[int],
    n: int = 64,
    generator: Union[int, torch.Generator, None] = 0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    fine: int = 60,
    fine_grid: str = "logsnr",
    substeps: int = 4,
    cost_solver: Optional[str] = None,
    candidates: Sequence[str] = CANDIDATES,
    **solver_options,
) -> Schedule:
    """GITS (module docstring): the ``steps``-step grid of least summed local error along one teacher solve of ``n``
    prior draws (``generator``: an int seed or a torch.Generator's initial seed; None draws one, reported in
    ``Schedule.seed``), chosen among the times of ``fine`` intervals of ``fine_grid``, then kept only if it beats
    the ``candidates`` named grids on that draw.

    shape: one row's shape. The teacher is rk4 with ``substeps`` steps per fine interval (equal in angle); t_start /
    t_end as in ``sample`` (a grid to sigma = 0 searches steps - 1 intervals down to sde.eps, then jumps).
    cost_solver: the one-step map of the local errors (default ``solver``). solver_options go to the solver."""
    from .driver import sample
    from .grids import make_grid

    steps, n, fine, substeps = check_search(model, solver, steps, n, shape, fine, substeps)
    check_grid_names([fine_grid, *candidates], candidates)
    if cost_solver is not None:
        _check_solver(cost_solver)
    sde = model.sde
    t_start, t_end, t_low, zero_end, hops = search_span(sde, t_start, t_end, steps, fine)
    seed = seed_of(generator)
    with torch.no_grad():
        tau = make_grid(sde, fine, fine_grid, t_start, t_low)
        cached, x_T, xs, x_ref, teacher_nfe = teacher(model, tau, (n, *shape), seed, substeps)
        net = cached.net
        if zero_end:  # the reference ends as every grid to sigma = 0 does: the x0 jump from sde.eps
            x_ref = sample(cached, x_ref, "ddim", ts=torch.tensor([t_low, t_end], dtype=torch.float64)).x
        cost = torch.full((fine + 1, fine + 1), math.inf, dtype=torch.float64)
        for k in range(fine):
            for j in range(k + 1, fine + 1):
                x = sample(cached, xs[k], cost_solver or solver, ts=tau[[k, j]], **solver_options).x
                d = (x - xs[j]).reshape(n, -1)
                cost[k, j] = float((d.norm(dim=1) / math.sqrt(d.shape[1])).mean())
        path, total = _dp(cost, hops)
        ts = tau[path]
        if zero_end:
            ts = torch.cat([ts, torch.tensor([t_end], dtype=torch.float64)])
        grids = {"gits": ts, **{g: make_grid(sde, steps, g, t_start, t_end) for g in candidates}}
        scores = {g: score_grid(cached, x_T, x_ref, solver, g_ts, solver_options) for g, g_ts in grids.items()}
    chosen = min(scores, key=lambda g: scores[g]["objective"])
    return Schedule(ts=grids[chosen], nfe=net.calls, method="gits", solver=solver, steps=steps, cost=total,
                    fine_ts=tau, seed=seed, info={
                        "chosen": chosen, "scores": scores, "teacher_nfe": teacher_nfe, "fine": fine,
                        "fine_grid": fine_grid, "substeps": substeps, "n": n, "path": path,
                        "cost_solver": cost_solver or solver})


def score_grid(model, x_T: Tensor, x_ref: Tensor, solver: str, ts: Tensor, options: dict) -> dict:
    """Median, 90th percentile and tune's balanced objective of the per-row errors of one solve."""
    from .base import SolverError
    from .driver import sample
    from ..metrics import per_row_error as row_errors

    try:
        e = row_errors(sample(model, x_T, solver, ts=ts, **options).x, x_ref)
    except SolverError:  # a grid the solver cannot take scores as infinitely bad
        return {"median": math.inf, "p90": math.inf, "objective": math.inf}
    q50, q90 = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()
    objective = 0.5 * (math.log(q50 + 1e-300) + math.log(q90 + 1e-300)) if math.isfinite(q90) else math.inf
    return {"median": q50, "p90": q90, "objective": objective}


def gits(model, solver: str, steps: int, *, shape: Sequence[int], n: int = 64,
         generator: Union[int, torch.Generator, None] = 0, **kwargs) -> Tensor:
    """The GITS grid alone: ``gits_schedule(model, solver, steps, shape=shape, n=n, generator=generator,
    **kwargs).ts`` (pass it as ``sample(..., ts=...)``)."""
    return gits_schedule(model, solver, steps, shape=shape, n=n, generator=generator, **kwargs).ts
