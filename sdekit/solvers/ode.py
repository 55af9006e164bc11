"""Fixed-step solvers of the probability-flow ODE  dx/dt = f(t) x - g(t)^2 score(x, t) / 2
= alpha'(t) x0 + sigma'(t) eps (the velocity, asked of the model directly, so alpha(T) = 0 is no special case).

euler   explicit Euler in t (first order).
heun_t  Heun's method in t (second order; diffusers' FlowMatchHeun on the rectified flow).
rk4     classical fourth-order Runge-Kutta in t.
heun   Karras et al. 2022 ("EDM", Algorithm 1): Heun's method in the variables y = x / alpha,
       s = sigma / alpha, where the ODE reads dy/ds = eps(x, t). Second order.

None of them meets sigma = 0: ``sample`` ends a grid at zero noise with the data-prediction jump, which
is EDM's Euler step to s = 0 (y_s = y - s eps = x0). Every rule here also integrates upwards
(h > 0, increasing ts: inversion).
"""
from __future__ import annotations

import torch

from .base import Evaluator, refuse
from .registry import register


@register("euler", order=1, nfe_per_step=1)
def euler(ev: Evaluator, x, ts):
    """x_{i+1} = x_i + h u(x_i, t_i), h = t_{i+1} - t_i, with the probability-flow velocity
    u = alpha' x0 + sigma' eps = f x - g^2 score / 2 (``Evaluator.velocity``), finite at alpha = 0 too."""
    times = ts.tolist()
    for i in range(len(times) - 1):
        x = torch.add(x, ev.velocity(x, times[i]), alpha=times[i + 1] - times[i])
        yield x


@register("heun_t", order=2, nfe_per_step=2)
def heun_t(ev: Evaluator, x, ts):
    """Heun's method (the explicit trapezoid rule) in t on the velocity u = alpha' x0 + sigma' eps:
    x~ = x_i + h u(x_i, t_i),  x_{i+1} = x_i + h (u(x_i, t_i) + u(x~, t_{i+1})) / 2.
    On the rectified flow (sigma = t) this is diffusers' FlowMatchHeunDiscreteScheduler; its last step to
    t = 0, Euler there, is the driver's x0 jump (x - t u = x0 on that path)."""
    times = ts.tolist()
    for i in range(len(times) - 1):
        h = times[i + 1] - times[i]
        d = ev.velocity(x, times[i])
        x = torch.add(x, d + ev.velocity(torch.add(x, d, alpha=h), times[i + 1]), alpha=0.5 * h)
        yield x


@register("rk4", order=4, nfe_per_step=4)
def rk4(ev: Evaluator, x, ts):
    """k1 = F(x, t), k2 = F(x + h k1/2, t + h/2), k3 = F(x + h k2/2, t + h/2), k4 = F(x + h k3, t + h);
    x_{i+1} = x_i + h (k1 + 2 k2 + 2 k3 + k4) / 6."""
    for i in range(len(ts) - 1):
        t, h = ts[i], float(ts[i + 1] - ts[i])
        k1 = ev.pf_drift(x, t)
        k2 = ev.pf_drift(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = ev.pf_drift(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = ev.pf_drift(x + h * k3, ts[i + 1])
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        yield x


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
