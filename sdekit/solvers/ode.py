"""Fixed-step solvers of the probability-flow ODE  dx/dt = f(t) x - g(t)^2 score(x, t) / 2.

euler  explicit Euler in t (first order).
rk4    classical fourth-order Runge-Kutta in t.
heun   Karras et al. 2022 ("EDM", Algorithm 1): Heun's method in the variables y = x / alpha,
       s = sigma / alpha, where the ODE reads dy/ds = eps(x, t); the last step falls back to Euler
       when it ends at s = 0. Second order.
"""
from __future__ import annotations

from .base import Evaluator
from .registry import register


@register("euler", order=1, nfe_per_step=1)
def euler(ev: Evaluator, x, ts):
    """x_{i+1} = x_i + (t_{i+1} - t_i) F(x_i, t_i)."""
    for i in range(len(ts) - 1):
        x = x + float(ts[i + 1] - ts[i]) * ev.pf_drift(x, ts[i])
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
    y~ = y_i + (s_{i+1} - s_i) d_i,  y_{i+1} = y_i + (s_{i+1} - s_i) (d_i + eps(x~, t_{i+1})) / 2."""
    alpha, sigma = ev.sde.alpha(ts), ev.sde.sigma(ts)
    s = sigma / alpha
    for i in range(len(ts) - 1):
        y = x / float(alpha[i])
        ds = float(s[i + 1] - s[i])
        d = ev.eps(x, ts[i])
        y_next = y + ds * d
        if float(s[i + 1]) > 0:
            d2 = ev.eps(y_next * float(alpha[i + 1]), ts[i + 1])
            y_next = y + ds * 0.5 * (d + d2)
        x = y_next * float(alpha[i + 1])
        yield x
