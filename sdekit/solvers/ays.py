"""Align Your Steps: a grid that minimises a KL upper bound of the discretised reverse SDE (Sabour, Fidler & Kreis
2024, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models").

The bound. Write s = sigma/alpha (the VE-equivalent noise level; ``karras`` and ``kl_optimal`` use it too) and
y = x/alpha, so that y_s = x0 + s eps. The reverse SDE dy = -2 (D(y, s) - y)/s ds + sqrt(2 s) dW (D: the model's x0
prediction) and the same SDE with D replaced, on each step s_i -> s_{i+1}, by the solver's model P_i(s) of it (a
first-order solver: D(y_{s_i}, s_i), held fixed) have path laws whose KL divergence is, by Girsanov's theorem, at most

    KLUB = sum_i int_{s_{i+1}}^{s_i} (1/s^3) E ||D(y_s, s) - P_i(s)||^2 ds / dim       (per dimension)

the expectation over data x0 and noise eps, with y_s = x0 + s eps for every s of the step (``coupling="forward"``:
one eps per row, the paper's estimator). sdekit's version needs no data: ``n`` prior draws are carried to t_end by a
converged solve of the model's probability-flow ODE (rk4, ``substeps`` steps per fine interval; its network calls
are counted) and x0 is its endpoint. ``coupling="ode"`` (the default) takes y_s instead on that solve's trajectory,
the path a deterministic solver follows: there D changes little at small s, where the forward coupling's
D(x0 + s eps) - D(x0 + s_i eps) stays of order s - s_i, and the weight 1/s^3 then crowds the grid at small noise
(measured on VP mixtures with dpmpp_2m and ddim at 4-10 steps: forward-coupled grids lost to the logsnr start in
most cells, ODE-coupled ones won in most). The integral runs in the angle theta = atan(s) (finite at alpha = 0, where
s is infinite: ds/s^3 = cos(theta)/sin(theta)^3 dtheta) by the trapezoid rule over the ``fine`` intervals of
``fine_grid``; along the ODE the denoiser at the fine times is the teacher's own evaluation (cached), so the bound
costs no network call beyond the teacher's.

The solver's model of D. AYS states the bound for the first-order step (DDIM, Euler: P_i = D(y_{s_i}, s_i), held
fixed). ``extrapolate=True`` takes P_i as the linear extrapolation in lambda = -2 log s through the step's start and
the previous grid point (the model a second-order multistep step makes of D; the first step is first-order), so the
bound charges D's curvature, not its slope. Measured as above it gave worse dpmpp_2m grids than the first-order
bound, so it is off by default.

The search (the paper's iterative refinement): from the ``start`` grid (its times snapped to the fine grid), each
interior time in turn is moved to the fine time between its two neighbours that minimises the KLUB terms it enters
(two steps; three when P extrapolates); sweeps repeat until one changes nothing (early stopping) or ``max_sweeps``.
A grid ending at sigma = 0 is searched down to sde.eps and ends with the x0 jump (``grids.py``'s convention).
``ays_interpolate`` carries a grid to another step count by the paper's log-linear interpolation of s.

Gaussian data, N(0, c^2 I). E||D(y_s) - D(y_{s_i})||^2 is closed-form: c^2 (cos phi(s) - cos phi(s_i))^2 along the ODE
(phi = atan(s/c); y_s / sqrt(c^2 + s^2) is constant on it), c^2 (a(s) - a(s_i))^2 + (s a(s) - s_i a(s_i))^2 with
a(s) = c^2/(c^2 + s^2) for the forward coupling. The small-step limit of the bound places points with density
proportional to c^2 / ((c^2 + s^2)^(3/2) s^(1/2)) (ODE) or c^2 / ((c^2 + s^2) s^(3/2)) (forward): far more of them at
small s than ``kl_optimal``'s equal angles (density c/(c^2 + s^2)), which minimise another objective, the KL of
DDIM's *output* (``schedules.ddim_gaussian_kl``). The KLUB optimum is not ``kl_optimal``; the tests check the search
against the bound's own optimum, found by quadrature, and that the two optima differ.

Selection. The bound is not the endpoint error of a deterministic solve. As GITS does (``schedules.gits_schedule``),
the searched grid and the ``candidates`` named grids are run with ``solver`` from the draw's x_T and scored against
the converged endpoint by tune's balanced objective; the best is returned and named in ``info["chosen"]``
(``candidates=()``: the searched grid alone). Measured (``benchmarks/schedules.py --peers``: VP mixtures at seeds
9301-9302, 2-D and 16-D, dpmpp_2m, NFE 4-10, 500 fresh rows): the searched grid alone had a lower median error than
logsnr in 17 of 20 cells, but its 90th percentile was 1.8-2x logsnr's and 4-5x the best named grid's (median over
cells), and the selection kept a named grid in all 20 (quadratic in 18). A likely cause: the weight cos/sin^3 vanishes
as alpha -> 0, so the bound barely charges the first, high-noise steps, where the rows near basin boundaries are
decided.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import torch

from ..sde import LinearSDE
from ..validate import integer
from .schedules import (CANDIDATES, Schedule, angle, check_grid_names, check_search, score_grid, search_span, seed_of,
                        teacher)

Tensor = torch.Tensor

__all__ = ["ays", "ays_schedule", "ays_interpolate", "KLUB"]


class KLUB:
    """The bound of the module docstring on one fine grid: ``D`` (fine + 1, n, dim) the x0 predictions at the fine
    times ``tau`` on y = x0 + s eps, ``extrapolate`` the solver's model of D over a step. ``cost(path)`` sums the
    steps of a path of fine indices; ``step(j, k, i)`` is one step j -> k after i (None: the first step)."""

    def __init__(self, sde: LinearSDE, tau: Tensor, D: Tensor, extrapolate: bool):
        th = angle(sde, tau)
        self.theta, self.D, self.extrapolate = th, D.reshape(D.shape[0], D.shape[1], -1), extrapolate
        self.weight = torch.cos(th) / torch.sin(th) ** 3  # ds/s^3 = cos/sin^3 dtheta; 0 at alpha = 0
        self.lam = -2.0 * torch.log(torch.tan(th))  # -inf at alpha = 0
        self.memo: dict = {}

    def step(self, j: int, k: int, i: Optional[int]) -> float:
        key = (j, k, i if self.extrapolate else None)
        if key not in self.memo:
            self.memo[key] = self._step(*key)
        return self.memo[key]

    def _step(self, j: int, k: int, i: Optional[int]) -> float:
        D = self.D[j:k + 1]
        P = self.D[j].expand_as(D)
        lam = self.lam
        if i is not None and bool(torch.isfinite(lam[i])):
            slope = (self.D[j] - self.D[i]) / float(lam[j] - lam[i])
            P = P + (lam[j:k + 1] - lam[j]).to(D.dtype)[:, None, None] * slope
        err = ((D - P) ** 2).mean(dim=(1, 2))  # per row and dimension
        f = self.weight[j:k + 1].to(D.dtype) * err
        h = (self.theta[j:k + 1].diff()).abs().to(D.dtype)
        return float((0.5 * h * (f[1:] + f[:-1])).sum())

    def cost(self, path: Sequence[int]) -> float:
        return sum(self.step(path[m], path[m + 1], path[m - 1] if m else None) for m in range(len(path) - 1))

    def refine(self, path: list, max_sweeps: int) -> tuple[list, int]:
        """Coordinate search: each interior index to its best fine index between its neighbours; sweeps until one
        moves nothing (returns the path and the sweeps made)."""
        path = list(path)
        for sweep in range(1, max_sweeps + 1):
            moved = False
            for m in range(1, len(path) - 1):
                best = min(range(path[m - 1] + 1, path[m + 1]), key=lambda q: (self._around(path, m, q), q != path[m]))
                moved |= best != path[m]
                path[m] = best
            if not moved:
                return path, sweep
        return path, max_sweeps

    def _around(self, path: list, m: int, q: int) -> float:
        p = path[:m] + [q] + path[m + 1:]
        last = min(len(p) - 1, m + (2 if self.extrapolate else 1))
        return sum(self.step(p[r], p[r + 1], p[r - 1] if r else None) for r in range(max(0, m - 1), last))


def _denoised(model, x0: Tensor, tau: Tensor, seed: int) -> Tensor:
    """D(alpha x0 + sigma eps, t) at every fine time, one eps per row (``tau.numel()`` network calls)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(x0)
    out = []
    for t in tau.tolist():
        a, s = float(model.sde.alpha(t)), float(model.sde.sigma(t))
        out.append(model.x0(a * x0 + s * eps, t).to(torch.float64))
    return torch.stack(out)


def ays_schedule(
    model,
    steps: int,
    *,
    shape: Sequence[int],
    solver: str = "dpmpp_2m",
    n: int = 64,
    generator: Union[int, torch.Generator, None] = 0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    start: str = "logsnr",
    coupling: str = "ode",
    fine: int = 100,
    fine_grid: str = "logsnr",
    substeps: int = 2,
    max_sweeps: int = 30,
    extrapolate: bool = False,
    candidates: Sequence[str] = CANDIDATES,
    **solver_options,
) -> Schedule:
    """The Align Your Steps grid (module docstring) of ``steps`` steps for ``model`` and ``solver``: ``n`` prior
    draws (``generator``: an int seed or a torch.Generator's initial seed; None draws one, reported in
    ``Schedule.seed``) carried by rk4 with ``substeps`` steps per fine interval (``fine`` intervals of
    ``fine_grid``); the bound with ``coupling`` "ode" or "forward"; the search from the ``start`` grid, at most
    ``max_sweeps`` sweeps; then kept only if it beats the ``candidates`` on that draw. extrapolate: P_i linear in
    lambda (module docstring). Returns a ``Schedule`` (``ts``, ``nfe`` every network call, ``cost`` the bound of the
    searched grid; info: the start's bound, sweeps, the searched grid, seconds, scores, chosen)."""
    from .driver import sample
    from .grids import make_grid

    t0 = time.perf_counter()
    steps, n, fine, substeps = check_search(model, solver, steps, n, shape, fine, substeps)
    max_sweeps = integer("max_sweeps", max_sweeps, 0)
    if coupling not in ("ode", "forward"):
        raise ValueError(f"coupling must be 'ode' or 'forward'; got {coupling!r}")
    check_grid_names([fine_grid, start, *candidates], candidates)
    sde = model.sde
    t_start, t_end, t_low, zero_end, hops = search_span(sde, t_start, t_end, steps, fine)
    seed = seed_of(generator)
    with torch.no_grad():
        tau = make_grid(sde, fine, fine_grid, t_start, t_low)
        model, x_T, traj, x_ref, _ = teacher(model, tau, (n, *shape), seed, substeps)
        D = _denoised(model, x_ref, tau, seed + 1) if coupling == "forward" else torch.stack(
            [model.x0(traj[k], t).to(torch.float64) for k, t in enumerate(tau.tolist())])  # cached: no new calls
        bound = KLUB(sde, tau, D, bool(extrapolate))
        first = _snap(tau, make_grid(sde, hops, start, t_start, t_low))
        path, sweeps = bound.refine(first, max_sweeps)
        ts = tau[path]
        if zero_end:
            ts = torch.cat([ts, torch.tensor([t_end], dtype=torch.float64)])
            x_ref = sample(model, x_ref, "ddim", ts=torch.tensor([t_low, t_end], dtype=torch.float64)).x
        grids = {"ays": ts, **{g: make_grid(sde, steps, g, t_start, t_end) for g in candidates}}
        scores = {g: score_grid(model, x_T, x_ref, solver, g_ts, solver_options) for g, g_ts in grids.items()}
    chosen = min(scores, key=lambda g: scores[g]["objective"])
    return Schedule(ts=grids[chosen], nfe=model.net.calls, method="ays", solver=solver, steps=steps,
                    cost=bound.cost(path), fine_ts=tau, seed=seed, info={
                        "chosen": chosen, "scores": scores, "start": start, "start_cost": bound.cost(first),
                        "sweeps": sweeps, "coupling": coupling, "extrapolate": bool(extrapolate), "searched_ts": ts,
                        "fine": fine, "fine_grid": fine_grid, "substeps": substeps, "n": n, "path": path,
                        "seconds": time.perf_counter() - t0})


def _snap(tau: Tensor, ts: Tensor) -> list:
    """Indices into the decreasing fine times ``tau`` nearest (in angle order) to ``ts``, strictly increasing, with
    both ends fixed."""
    m = tau.numel() - 1
    idx = [0]
    for r, t in enumerate(ts[1:-1].tolist(), start=1):
        near = int((tau - t).abs().argmin())
        idx.append(min(max(near, idx[-1] + 1), m - (ts.numel() - 1 - r)))
    return idx + [m]


def ays(model, steps: int, *, shape: Sequence[int], solver: str = "dpmpp_2m", n: int = 64,
        generator: Union[int, torch.Generator, None] = 0, **kwargs) -> Tensor:
    """The AYS grid alone: ``ays_schedule(model, steps, shape=shape, solver=solver, n=n, generator=generator,
    **kwargs).ts`` (pass it as ``sample(..., ts=...)``)."""
    return ays_schedule(model, steps, shape=shape, solver=solver, n=n, generator=generator, **kwargs).ts


def ays_interpolate(sde: LinearSDE, ts, steps: int) -> Tensor:
    """A grid of ``steps`` steps from ``ts`` by AYS's log-linear interpolation: log s (s = sigma/alpha) as a
    piecewise-linear function of the position i/N in ts, read at j/steps (the ends kept; an end where s is 0 or
    infinite is kept as it is and the interpolation runs between the finite times)."""
    steps = integer("steps", steps, 1)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    logs = -0.5 * sde.log_snr(ts)
    u = torch.linspace(0.0, 1.0, ts.numel(), dtype=torch.float64)
    keep = torch.isfinite(logs)
    if int(keep.sum()) < 2:
        raise ValueError("ays_interpolate needs at least two times of finite sigma/alpha in ts")
    uk, lk = u[keep], logs[keep]
    v = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)[1:-1].clamp(float(uk[0]), float(uk[-1]))
    pos = torch.searchsorted(uk, v, right=True).clamp(1, uk.numel() - 1)
    w = (v - uk[pos - 1]) / (uk[pos] - uk[pos - 1])
    inner = sde.t_from_log_snr(-2.0 * (lk[pos - 1] + w * (lk[pos] - lk[pos - 1])))
    return torch.cat([ts[:1], inner, ts[-1:]])
