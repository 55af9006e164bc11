"""Adaptive ODE solves of the probability-flow ODE, and adapters to external integrators.

core         dopri5, bosh3, adaptive_heun: ``sdekit.solvers.integrate`` on dx/dt = F(x, t) (the tableau, per-row
             error control, a budget in network calls, landing exactly on every time of the grid). The
             driver sees each grid time as soon as the solve reaches it, the Evaluator's step counter follows
             the accepted steps (a NaN error names the true step) and ``Solution.stats`` holds steps,
             accepted and rejected.
torchdiffeq  any ``torchdiffeq.odeint`` method behind the same core interface (same budget, per-row norm,
             exact landing, errors): ``dopri8`` and ``fehlberg2`` by name, any other through
             ``solver="torchdiffeq", method=...`` (fixed-step ones with ``step_size``).
scipy        ``scipy.integrate.solve_ivp`` (RK45, LSODA, ...) on the flattened float64 state.
torchsde     any ``torchsde.sdeint`` method (euler, milstein, srk, reversible_heun) on the reverse SDE,
             written forward in r = -t: dy = -[f y - g^2 score] dr + g dW (additive noise, so Ito and
             Stratonovich agree). Brownian increments on torchsde's step grid come from each row's own
             noise stream, so rows do not depend on the batch size.

Adaptive solves carry a budget ``max_nfe``; exceeding it raises ``StepBudgetError`` (never a hang).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import (Evaluator, RowNoise, StepBudgetError, StepSizeError, check_positive_alpha, check_sampling,
                   refuse)
from .controller import check_tolerances
from .integrate import TABLEAUS, TORCHDIFFEQ_PREFIX, ProbabilityFlow, integrate, solve_steps
from .registry import register

# external adaptive torchdiffeq methods registered by name: (order, network calls per attempted step). torchdiffeq's
# RK step makes one call per row of its tableau's alpha (dopri8: 13, fehlberg2: 2), the last one serving as the next
# step's first.
EXTERNAL_TORCHDIFFEQ = {"dopri8": (8, 13), "fehlberg2": (2, 2)}


class _BudgetedDrift:
    """F(x, t) of the probability-flow ODE that refuses to run past ``max_nfe`` evaluations (scipy)."""

    def __init__(self, ev: Evaluator, max_nfe: int):
        self.ev, self.max_nfe = ev, int(max_nfe)

    def __call__(self, t, x):
        if self.ev.nfe >= self.max_nfe:
            raise StepBudgetError(
                f"the adaptive solve used its budget of {self.max_nfe} network evaluations before reaching "
                f"the end (now at t = {float(t):.6g}); loosen rtol/atol or raise max_nfe"
            )
        # integrators probe outside [t_end, t_start] (initial step-size selection, overshooting stages):
        # hold the time at the edge of [0, T] there; only states inside the interval are returned
        return self.ev.pf_drift(x, t.to(torch.float64).clamp(0.0, self.ev.sde.T))


def _check_budget(ev: Evaluator, max_nfe) -> None:
    if isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1:
        raise refuse(ev, f"needs max_nfe an integer >= 1; got {max_nfe!r}")


def core_ode(ev: Evaluator, x, ts, *, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
             max_nfe: int = 100_000):
    """The probability-flow ODE by the integration core (``sdekit.solvers.integrate``) with an embedded RK
    pair ``method``; every row meets its own rtol/atol; yields the state at every ts as it is reached."""

    def progress(t, nfe, stats):
        ev.step = stats["steps"]  # errors raised by the Evaluator name the true step
        ev.stats.update(stats)

    ev.stats.update(method=method, steps=0, accepted=0, rejected=0)
    run = solve_steps(ProbabilityFlow(ev), x, ts, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe,
                      progress=progress)
    for i, _, y in run:
        if i > 0:
            yield y


for _name, _tab in TABLEAUS.items():
    if _tab.adaptive:
        register(_name, order=_tab.order, nfe_per_step=_tab.stages - _tab.fsal, adaptive=True,
                 method=_name)(core_ode)


@register("torchdiffeq", order=None, nfe_per_step=None, adaptive=True)  # both depend on method=
def torchdiffeq_ode(ev: Evaluator, x, ts, *, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                    max_nfe: int = 100_000, step_size=None):
    """The probability-flow ODE through ``torchdiffeq.odeint(method=...)`` behind the core's interface
    (budget, per-row error norm, landing on every ts); ``step_size`` for its fixed-step methods."""
    _check_budget(ev, max_nfe)
    sol = integrate(ProbabilityFlow(ev), x, ts, method=TORCHDIFFEQ_PREFIX + method, rtol=rtol, atol=atol,
                    max_nfe=max_nfe, step_size=step_size)
    ev.stats.update(sol.stats, method=method)
    for y in (sol.trajectory or [])[1:]:
        yield y


for _name, (_order, _calls) in EXTERNAL_TORCHDIFFEQ.items():
    register(_name, order=_order, nfe_per_step=_calls, adaptive=True, method=_name)(torchdiffeq_ode)


@register("scipy", order=None, nfe_per_step=None, adaptive=True)  # both depend on method=
def scipy_ode(ev: Evaluator, x, ts, *, method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5,
              max_nfe: int = 100_000):
    """The probability-flow ODE through ``scipy.integrate.solve_ivp`` (float64 numpy state on the CPU)."""
    from scipy.integrate import solve_ivp

    check_tolerances(rtol, atol)
    _check_budget(ev, max_nfe)
    shape, dtype, device = x.shape, x.dtype, x.device
    drift = _BudgetedDrift(ev, max_nfe)

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return drift(torch.tensor(t, dtype=torch.float64), xt).reshape(-1).double().cpu().numpy()

    t_eval = ts.cpu().numpy()
    sol = solve_ivp(rhs, (t_eval[0], t_eval[-1]), x.reshape(-1).double().cpu().numpy(), method=method,
                    t_eval=t_eval, rtol=rtol, atol=atol)
    if sol.status != 0:  # the budget is raised from the drift itself; what is left is a step-size failure
        raise StepSizeError(f"scipy solve_ivp({method}) did not reach t = {float(ts[-1]):.6g}: {sol.message}; "
                            "loosen rtol/atol or use solver='dopri5'")
    ev.stats["method"] = method
    for i in range(1, len(ts)):
        yield torch.from_numpy(np.ascontiguousarray(sol.y[:, i])).reshape(shape).to(device=device, dtype=dtype)


# RK45: Dormand-Prince 5(4), FSAL: 6 calls per attempted step. LSODA switches between Adams (orders 1-12) and BDF
# (1-5) with ~1-2 calls per step plus finite-difference Jacobians: no one number.
register("scipy_rk45", order=5, nfe_per_step=6, adaptive=True, method="RK45")(scipy_ode)
register("scipy_lsoda", order=None, nfe_per_step=None, adaptive=True, method="LSODA")(scipy_ode)


class _GridBrownian:
    """Brownian motion of shape (batch, d) on a fixed grid r_0 < ... < r_K, drawn row by row.

    Row i's increments W(r_{k+1}) - W(r_k) ~ N(0, h_k) and space-time Levy areas H_k ~ N(0, h_k / 12)
    (independent of the increments) come from that row's own noise stream, so a row does not depend on the
    batch size. torchsde's fixed-step methods only query intervals between grid points.
    """

    def __init__(self, grid, ev: Evaluator, d: int, dtype, device, levy_area: str):
        self.grid = grid.to(torch.float64).cpu()
        h = (self.grid[1:] - self.grid[:-1]).to(dtype=dtype, device=device)
        k = len(h)
        rows = ev.noise.n_rows if isinstance(ev.noise, RowNoise) else 0
        template = torch.empty(rows, 2 * k * d, dtype=dtype, device=device)
        z = ev.randn_like(template).reshape(-1, 2, k, d).permute(1, 2, 0, 3)  # (2, k, batch, d)
        self.increments = z[0] * h.sqrt()[:, None, None]
        self.areas = z[1] * (h / 12).sqrt()[:, None, None]
        zero = torch.zeros_like(self.increments[:1])
        self.cum = torch.cat([zero, self.increments.cumsum(0)])
        self.levy_area_approximation = levy_area
        self.shape = tuple(self.increments.shape[1:])
        self.dtype, self.device = dtype, device

    def _index(self, r) -> int:
        r = float(r)
        k = int(torch.searchsorted(self.grid, torch.tensor(r, dtype=torch.float64)))
        if k < len(self.grid) and float(self.grid[k]) == r:  # the grid repeats torchsde's own arithmetic
            return k
        for j in (k - 1, k):
            if 0 <= j < len(self.grid) and abs(float(self.grid[j]) - r) <= 1e-9 * max(1.0, abs(r)):
                return j
        raise ValueError(f"torchsde asked for Brownian motion at r = {r}, off the solver grid; use a fixed-step method")

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        a = self._index(ta)
        b = a if tb is None else self._index(tb)
        w = self.cum[b] - self.cum[a] if tb is not None else self.cum[a]
        if not (return_U or return_A):
            return w
        if b != a + 1:
            raise ValueError("Levy areas are only available over one grid step")
        h = float(self.grid[b] - self.grid[a])
        out = (w, self.areas[a] * h) if return_U else (w,)
        if return_A:
            out = out + (torch.zeros(*self.shape, self.shape[-1], dtype=self.dtype, device=self.device),)
        return out


class _ReverseSDE(torch.nn.Module):
    """The reverse SDE in r = -t for torchsde: drift -[f y - g^2 score](-r), diffusion g(-r)."""

    noise_type = "diagonal"

    def __init__(self, ev: Evaluator, shape, sde_type: str):
        super().__init__()
        self.ev, self.shape, self.sde_type = ev, shape, sde_type

    def f(self, r, y):
        t = (-r).to(torch.float64).clamp(0.0, self.ev.sde.T)
        return -self.ev.reverse_drift(y.reshape(self.shape), t).reshape(y.shape)

    def g(self, r, y):
        t = (-r).to(torch.float64).clamp(0.0, self.ev.sde.T)
        return self.ev.sde.diffusion(t).to(y.dtype).expand_as(y)


def _torchsde_steps(rs, dt: float):
    """The times torchsde's fixed-step loop visits: r_0, r_0 + dt, ... (in rs's dtype), clipped at r_K."""
    out, curr, end = [rs[0]], rs[0], rs[-1]
    while curr < end:
        curr = torch.minimum(curr + dt, end)
        out.append(curr)
    return torch.stack(out).to(torch.float64)


# order and calls per grid step depend on method= (euler 1 call per torchsde step, midpoint and heun 2, ...) and on dt:
# torchsde steps dt at a time (the grid's smallest gap by default), so a non-uniform grid costs more calls than steps
@register("torchsde", order=None, nfe_per_step=None, stochastic=True, family="sde")
def torchsde_sde(ev: Evaluator, x, ts, *, method: str = "euler", dt=None):
    """The reverse SDE through ``torchsde.sdeint(method=...)`` with per-row Brownian motion on the
    solver's grid. ``dt`` defaults to the smallest gap of ``ts``; each gap is split into equal steps."""
    import torchsde

    check_sampling(ev, ts)
    check_positive_alpha(ev, ts, "the reverse SDE's f and g are infinite there")
    sde_type = "stratonovich" if method in ("reversible_heun", "midpoint", "heun", "log_ode") else "ito"
    levy = "space-time" if method == "srk" else "none"
    shape = x.shape
    y0 = x.reshape(shape[0], -1)
    rs = -ts
    step = float((ts[:-1] - ts[1:]).min()) if dt is None else float(dt)
    rs_x = rs.to(device=x.device, dtype=x.dtype)
    solver_grid = _torchsde_steps(rs_x, step)
    bm = _GridBrownian(solver_grid, ev, y0.shape[1], x.dtype, x.device, levy)
    out = torchsde.sdeint(_ReverseSDE(ev, shape, sde_type), y0, rs_x,
                          method=method, dt=step, bm=bm)
    ev.stats["method"] = method
    for i in range(1, len(ts)):
        yield out[i].reshape(shape)
