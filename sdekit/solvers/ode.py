"""Fixed-step solvers of the probability-flow ODE  dx/dt = f(t) x - g(t)^2 score(x, t) / 2
= alpha'(t) x0 + sigma'(t) eps (the velocity, asked of the model directly, so alpha(T) = 0 is no special case).

euler   explicit Euler in t (first order),
heun_t  Heun's method in t (second order; diffusers' FlowMatchHeun on the rectified flow),
rk4     classical fourth-order Runge-Kutta in t: each its tableau in ``sdekit.solvers.integrate.TABLEAUS``, run by
        the core's one explicit RK step (``rk_step``).
heun   Karras et al. 2022 ("EDM", Algorithm 1): Heun's method in the variables y = x / alpha,
       s = sigma / alpha, where the ODE reads dy/ds = eps(x, t). Second order.

None of them meets sigma = 0: ``sample`` ends a grid at zero noise with the data-prediction jump, which
is EDM's Euler step to s = 0 (y_s = y - s eps = x0). Every rule here also integrates upwards
(h > 0, increasing ts: inversion).
"""
from __future__ import annotations

import torch

from .base import Evaluator, refuse
from .integrate import TABLEAUS, Coefficients, Tableau, rk_step
from .registry import register


def _explicit_rk(tab: Tableau):
    """The fixed-step solver of one tableau: ``rk_step`` of the integration core on the rows, flattened."""

    def solver(ev: Evaluator, x, ts):
        shape = x.shape
        y = x.reshape(shape[0], -1)
        coef = Coefficients(tab, y)

        def f(t: float, rows):
            return ev.velocity(rows.reshape(shape), t).reshape(rows.shape)

        times = ts.tolist()
        for t0, t1 in zip(times[:-1], times[1:]):
            y, _, _ = rk_step(f, tab, coef, t0, y, t1 - t0, None, t_end=t1)
            yield y.reshape(shape)

    solver.__name__ = tab.name
    solver.__doc__ = f"""{_RULES[tab.name]} On the velocity u = alpha' x0 + sigma' eps = f x - g^2 score / 2
    (``Evaluator.velocity``), finite at alpha = 0 too; the tableau ``TABLEAUS[{tab.name!r}]`` of
    ``sdekit.solvers.integrate`` (order {tab.order}, {tab.stages} network calls per step)."""
    return solver


_RULES = {
    "euler": "Explicit Euler: x_{i+1} = x_i + h u(x_i, t_i), h = t_{i+1} - t_i.",
    "heun_t": "Heun's method (the explicit trapezoid rule) in t: x~ = x_i + h u(x_i, t_i), x_{i+1} = x_i + h (u(x_i, "
              "t_i) + u(x~, t_{i+1})) / 2; on the rectified flow (sigma = t) diffusers' FlowMatchHeunDiscreteScheduler, "
              "its last step to t = 0 (Euler there) being the driver's x0 jump.",
    "rk4": "Classical fourth-order Runge-Kutta: k1 = u(x, t), k2 = u(x + h k1/2, t + h/2), k3 = u(x + h k2/2, t + h/2), "
           "k4 = u(x + h k3, t + h); x_{i+1} = x_i + h (k1 + 2 k2 + 2 k3 + k4) / 6.",
}
for _name in ("euler", "heun_t", "rk4"):
    _tab = TABLEAUS[_name]
    register(_name, order=_tab.order, nfe_per_step=_tab.stages)(_explicit_rk(_tab))


@register("heun", order=2, nfe_per_step=2)
def heun(ev: Evaluator, x, ts):
    """EDM Heun: with y = x/alpha and s = sigma/alpha, d_i = eps(x_i, t_i),
    y~ = y_i + (s_{i+1} - s_i) d_i,  y_{i+1} = y_i + (s_{i+1} - s_i) (d_i + eps(x~, t_{i+1})) / 2;
    in x: x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} (s_{i+1} - s_i) * (mean of the slopes)."""
    sde = ev.sde
    times = ts.tolist()
    if any(sde.schedule(t)[0] == 0.0 for t in times):  # s = sigma/alpha is infinite at pure noise (flow paths at T)
        raise refuse(ev, f"(EDM, in s = sigma/alpha) cannot step through alpha = 0 on {sde!r}: start below it "
                         "(t_start < T) or use heun_t, euler, rk4 or a data-form solver (ddim, dpmpp_2m, unipc_3)")
    for i in range(len(times) - 1):
        a0, s0, _, _ = sde.schedule(times[i])
        a1, s1, _, _ = sde.schedule(times[i + 1])
        ratio, step = a1 / a0, a1 * (s1 / a1 - s0 / a0)
        d = ev.eps(x, times[i])
        x_euler = torch.add(x * ratio, d, alpha=step)
        x = torch.add(x * ratio, d + ev.eps(x_euler, times[i + 1]), alpha=0.5 * step)
        yield x
