"""Reverse-SDE samplers for any linear SDE, driven by the rows' Brownian paths.

Notation as in ``exponential.py``: l = log(alpha/sigma) (half log-SNR), h = l_s - l_t > 0 for a step t -> s,
x0 the data prediction; y = x/alpha and s = sigma/alpha = e^{-l} are the variance-exploding ("VE") coordinates in
which k-diffusion writes its samplers.

The family.  With eta in [0, 1] (eta = eta_D^2 of the reverse family dx = [f x - (1 + eta_D^2)/2 g^2 score] dt +
eta_D g dw_bar of DESIGN.md; k-diffusion's ``eta``), the reverse SDE in y reads dy/dl = -(1 + eta)(y - x0(y, l)) + noise,
so, with h' = (1 + eta) h, the exact solution is

    x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s int_0^h (1 + eta) e^{-(1 + eta)(h - u)} x0(l_t + u) du
          + sigma_s sqrt(1 - e^{-2 eta h}) z,                                              (Lu et al. 2022b, sec. 5)

and a polynomial through x0 at points u_m = (l_m - l_t)/h, x0(l_t + u h) = sum_k c_k u^k / k!, integrates to
alpha_s sum_k c_k h' phi_{k+1}(-h') (``exp_weights``). Every multistep sampler here (DPM-Solver++(2M/3M) SDE,
SA-Solver's predictor and corrector) is that update with different points.

Noise.  z is the step's standardised Brownian increment (W(t) - W(s))/sqrt(t - s) of the row's path in the SDE's own
time (``Evaluator.path_noise``): for additive noise the one-Gaussian approximation of the stochastic integral errs
by O(h^{3/2}) per step with mean zero, so the schemes converge pathwise (strong order 1 on a linear SDE, whose noise is
additive), and a solve with more steps is a finer solve of the same path. Ancestral samplers put the noise of
[t, s] at the end of the step (k-diffusion's convention); Restart's forward jumps use fresh per-call draws
(``Evaluator.randn_like``), the same number whatever the step count.

Pure noise.  On a flow path (alpha(T) = 0, s_T = inf, l_T = -inf) every sampler here starts at T by its update's
limit, written so that no float is 0 * inf: the ancestral split at s_t = inf is s_up = eta s_s, the Euler/ancestral
step y_t + (s_down - s_t) eps is x0_t + s_down x_t/sigma_t, single-step midpoints l_t + r h lie at t = T itself, and
the exponential weights h' phi_{k+1}(-h') tend to 1/k! (``exp_weights``): the first step is DDIM/DDPM's from pure
noise, x_s = alpha_s x0(x_T) + sigma_s (sqrt(1 - eta^2) eps_T + eta z) in the ancestral case.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .base import Evaluator, option, refuse
from .exp_weights import ExpWeights, exp_weights
from .exponential import Schedule, check_flag, check_lower_order_final, final_order
from .registry import register

Tensor = torch.Tensor

__all__ = ["exp_weights", "ancestral_split"]


def _noise_options(ev: Evaluator, eta, s_noise, top: float = 1.0):
    """eta in [0, top] and s_noise >= 0 (a negative s_noise would flip z, a sign the law cannot show), finite."""
    return option(ev, "eta", eta, 0.0, top), option(ev, "s_noise", s_noise, 0.0)


def _u(l_m: float, l_t: float, l_s: float) -> float:
    """(l_m - l_t)/(l_s - l_t), the position of a point in the step l_t -> l_s: 0 and 1 at the ends exactly (also
    when l_t = -inf), -inf for a point at l = -inf before a finite step."""
    if l_m == l_t:
        return 0.0
    if l_m == l_s:
        return 1.0
    return (l_m - l_t) / (l_s - l_t)


def _noise_and_ratio(sch: Schedule, i: int, eta: float, s_noise: float) -> Tuple[float, float]:
    """s_noise sigma_s sqrt(1 - e^{-2 eta h}) and (sigma_s/sigma_t) e^{-eta h} of step i; eta h = 0 for eta = 0 even
    on a step from alpha = 0 (h = inf)."""
    eh = eta * sch.h(i) if eta > 0 else 0.0
    return s_noise * sch.sigma[i + 1] * math.sqrt(-math.expm1(-2 * eh)), (sch.sigma[i + 1] / sch.sigma[i]) * math.exp(-eh)


def _sde_update(x: Tensor, points: List[Tuple[float, Tensor]], weights, ratio: float, a_s: float,
                noise_std: float, z: Optional[Tensor]) -> Tensor:
    """ratio x_t + alpha_s sum_m b_m x0_m + noise_std z."""
    out = ratio * x
    for b, (_, m) in zip(weights, points):
        out = out + (a_s * b) * m
    return out if z is None or noise_std == 0.0 else out + noise_std * z


def ancestral_split(s_t: float, s_s: float, eta: float) -> Tuple[float, float]:
    """(s_down, s_up) of an ancestral step s_t -> s_s in VE coordinates (k-diffusion's ``get_ancestral_step``):
    s_up = min(s_s, eta s_s sqrt(1 - s_s^2 / s_t^2)), s_down = sqrt(s_s^2 - s_up^2); at s_t = inf (alpha_t = 0)
    s_up = eta s_s: the DDPM posterior's noise from pure noise."""
    if eta == 0.0 or s_s == 0.0:
        return s_s, 0.0
    up = min(s_s, eta * s_s * math.sqrt(max(1.0 - (s_s / s_t) ** 2, 0.0)))
    return math.sqrt(max(s_s * s_s - up * up, 0.0)), up


def _ve(alpha: float, sigma: float) -> float:
    """s = sigma/alpha, infinite at alpha = 0."""
    return sigma / alpha if alpha > 0 else math.inf


def _check_grid(ev: Evaluator, ts: Tensor, name: str = "") -> None:
    """Refuse an inversion (the reverse SDE has no increasing-time form), before any network call."""
    if float(ts[-1]) > float(ts[0]):
        raise refuse(ev, "samples the reverse SDE; an inversion (increasing ts) needs a deterministic solver")


# -- ancestral samplers ----------------------------------------------------------------------------------------
@register("euler_ancestral", order=1, nfe_per_step=1, stochastic=True, family="sde")
def euler_ancestral(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral (Karras et al. 2022's Euler step with DDPM's ancestral noise; k-diffusion's
    ``sample_euler_ancestral``), in VE coordinates y = x/alpha, s = sigma/alpha:

        (s_down, s_up) = ancestral_split(s_t, s_s, eta),  y_s = y_t + (s_down - s_t) eps(x_t, t) + s_noise s_up z,

    x_s = alpha_s y_s; z the step's Brownian increment. eta = 1: the reverse SDE's variance; eta = 0: Euler on the ODE.
    From alpha_t = 0 (a flow path at T, s_t = inf) the step is its limit y_s = x0_t + s_down eps_t with
    eps_t = x_t/sigma_t (y_t + (s_down - s_t) eps = x0 + s_down eps for every alpha_t > 0): DDIM/DDPM from pure noise."""
    def deterministic(x, sch, i, s_t, down):
        if sch.alpha[i] == 0.0:
            return ev.x0(x, sch.times[i]) + (down / sch.sigma[i]) * x
        return x / sch.alpha[i] + (down - s_t) * ev.eps(x, sch.times[i])

    return _ancestral(ev, x, ts, eta, s_noise, "euler_ancestral", deterministic)


def _ancestral(ev: Evaluator, x: Tensor, ts: Tensor, eta, s_noise, name: str, deterministic):
    """The ancestral step shared by euler_ancestral and dpmpp_2s_ancestral: in y = x/alpha, s = sigma/alpha, the deterministic
    part ``deterministic(x, sch, i, s_t, s_down) -> y`` to s_down, then s_noise s_up z (z the path's
    increment over the step), then x_s = alpha_s y_s."""
    eta, s_noise = _noise_options(ev, eta, s_noise)
    _check_grid(ev, ts)
    sch = Schedule(ev.sde, ts)
    if eta > 0:
        ev.plan_path_noise(x, ts)
    times = sch.times
    for i in range(len(ts) - 1):
        a_t, a_s = sch.alpha[i], sch.alpha[i + 1]
        s_t, s_s = _ve(a_t, sch.sigma[i]), sch.sigma[i + 1] / a_s
        down, up = ancestral_split(s_t, s_s, eta)
        y = deterministic(x, sch, i, s_t, down)
        if up > 0:
            y = y + (s_noise * up) * ev.path_noise(x, times[i], times[i + 1])
        x = a_s * y
        yield x


@register("dpmpp_2s_ancestral", order=1, nfe_per_step=2, stochastic=True, family="sde")
def dpmpp_2s_ancestral(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2S) ancestral (Lu et al. 2022b, Alg. 1 with r = 1/2, to the ancestral s_down; k-diffusion's
    ``sample_dpmpp_2s_ancestral``): with l_d = -log s_down, h = l_d - l_t and l_m = l_t + h/2,

        u = (sigma_m/sigma_t) x_t + alpha_m (1 - e^{-h/2}) x0(x_t, t),
        y_s = (s_down/s_t) y_t + (1 - e^{-h}) x0(u, t_m) + s_noise s_up z,   x_s = alpha_s y_s.

    From alpha_t = 0 (h = inf) the midpoint is t = T itself (l_d - h/2 = -inf), u = x_t, and the step is its limit
    y_s = x0_t + s_down x_t/sigma_t ((s_down/s_t) y_t = s_down x_t/sigma_t): euler_ancestral's first step."""
    mids: dict = {}  # step -> (t, alpha, sigma) of its midpoint, for the whole grid in one at_ls call (first step)
    # (called after _ancestral validated eta)

    def deterministic(x, sch, i, s_t, down):
        x0 = ev.x0(x, sch.times[i])
        if sch.alpha[i] == 0.0:
            return x0 + (down / sch.sigma[i]) * x
        if down == 0.0:
            return x0
        h = math.log(s_t / down)
        if not mids:
            mids.update(_midpoints(sch, float(eta)), done=None)
        tm, am, sm = mids[i] if i in mids else sch.at_l(sch.l[i] + 0.5 * h)
        u = (sm / sch.sigma[i]) * x - (am * math.expm1(-0.5 * h)) * x0
        return (down / s_t) * (x / sch.alpha[i]) - math.expm1(-h) * ev.x0(u, tm)

    return _ancestral(ev, x, ts, eta, s_noise, "dpmpp_2s_ancestral", deterministic)


def _midpoints(sch: Schedule, eta: float) -> dict:
    """DPM-Solver++(2S) ancestral's midpoints l_t + h/2 (h = log(s_t/s_down)) of every step that has one."""
    want = {}
    for i in range(len(sch.times) - 1):
        a_t, a_s = sch.alpha[i], sch.alpha[i + 1]
        if a_t == 0.0:
            continue
        s_t, s_s = _ve(a_t, sch.sigma[i]), sch.sigma[i + 1] / a_s
        down, _ = ancestral_split(s_t, s_s, eta)
        if down != 0.0:
            want[i] = sch.l[i] + 0.5 * math.log(s_t / down)
    return dict(zip(want, sch.at_ls(list(want.values())))) if want else {}


@register("dpmpp_sde", order=1, nfe_per_step=2, stochastic=True, family="sde")
def dpmpp_sde(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
    """DPM-Solver++ SDE (Lu et al. 2022b's stochastic second-order single-step solver as k-diffusion's
    ``sample_dpmpp_sde`` writes it): two ancestral DPM-Solver++(1) steps, in VE coordinates,

        stage 1, t -> m (l_m = l_t + r h):  y_2 = (s_d1/s_t) y_t + (1 - s_d1/s_t) x0_t + s_noise s_u1 z_{[t, m]},
        stage 2, t -> s:  D = (1 - 1/(2r)) x0_t + 1/(2r) x0(alpha_m y_2, t_m),
                          y_s = (s_d2/s_t) y_t + (1 - s_d2/s_t) D + s_noise s_u2 z_{[t, s]},

    (s_d, s_u) = ancestral_split of each stage; the z are the path's increments over [m, t] and [s, t] (correlated,
    as with k-diffusion's Brownian tree).

    From alpha_t = 0 (h = inf) stage 1 ends at l_s - (1 - r) h = -inf, t = T itself, so D = x0_t and the step is
    its limit y_s = x0_t + s_d2 x_t/sigma_t + s_noise s_u2 z (euler_ancestral's first step; one network call)."""
    eta, s_noise = _noise_options(ev, eta, s_noise)
    r = option(ev, "r", r, 0.0, 1.0, lo_open=True)
    _check_grid(ev, ts)
    sch = Schedule(ev.sde, ts)
    fac = 1.0 / (2.0 * r)
    n = len(ts) - 1
    # the stage times of every step at once (one t_from_log_snr call), and the path increments the steps will use
    inner = [i for i in range(n) if sch.alpha[i] != 0.0]
    mids = dict(zip(inner, sch.at_ls([sch.l[i] + r * (sch.l[i + 1] - sch.l[i]) for i in inner]))) if inner else {}
    times = sch.times
    if eta > 0:
        ev.plan_path_noise(x, [p for i in range(n) for p in
                               ([(times[i], mids[i][0])] if i in mids else []) + [(times[i], times[i + 1])]])
    for i in range(n):
        a_t, a_s = sch.alpha[i], sch.alpha[i + 1]
        s_t, s_s = _ve(a_t, sch.sigma[i]), sch.sigma[i + 1] / a_s
        x0 = ev.x0(x, times[i])
        if a_t == 0.0:
            d2, u2 = ancestral_split(s_t, s_s, eta)
            y = x0 + (d2 / sch.sigma[i]) * x
            if u2 > 0:
                y = y + (s_noise * u2) * ev.path_noise(x, times[i], times[i + 1])
            x = a_s * y
            yield x
            continue
        y = x / a_t
        tm, am, sm = mids[i]
        d1, u1 = ancestral_split(s_t, sm / am, eta)
        y2 = (d1 / s_t) * y + (1.0 - d1 / s_t) * x0
        if u1 > 0:
            y2 = y2 + (s_noise * u1) * ev.path_noise(x, times[i], tm)
        D = (1.0 - fac) * x0 + fac * ev.x0(am * y2, tm)
        d2, u2 = ancestral_split(s_t, s_s, eta)
        y = (d2 / s_t) * y + (1.0 - d2 / s_t) * D
        if u2 > 0:
            y = y + (s_noise * u2) * ev.path_noise(x, times[i], times[i + 1])
        x = a_s * y
        yield x


# -- multistep exponential SDE integrators ------------------------------------------------------------------
def _multistep_sde(ev: Evaluator, x: Tensor, ts: Tensor, order: int, eta: float, s_noise: float,
                   solver_type: str = "taylor", lower_order_final: bool = True):
    """Multistep data-prediction update of the eta-family (module docstring) through the last ``order`` x0's
    (at most n - i of them at step i of n with ``lower_order_final``, ``final_order``)."""
    eta, s_noise = _noise_options(ev, eta, s_noise)
    if solver_type not in ("taylor", "midpoint"):
        raise refuse(ev, f"needs solver_type 'taylor' or 'midpoint'; got {solver_type!r}")
    check_lower_order_final(lower_order_final)
    sch = Schedule(ev.sde, ts)
    hist: List[Tuple[float, Tensor]] = []
    n = len(ts) - 1
    # everything but the x0's is known from the grid: each step's weights (solved together), ratio and noise scale
    plan = []
    table = ExpWeights(eta)
    for i in range(n):
        k = min(i + 1, order, final_order(order, i, n, lower_order_final))  # the points used, newest (l_t) first
        us = [_u(sch.l[j], sch.l[i], sch.l[i + 1]) for j in range(i, i - k, -1)]
        midpoint = solver_type == "midpoint" and k == 2 and math.isfinite(us[1])
        if not midpoint:
            table.want(us, sch.h(i))
        plan.append((k, us, midpoint) + _noise_and_ratio(sch, i, eta, s_noise))
    table.solve()
    if eta > 0 and s_noise > 0:
        ev.plan_path_noise(x, ts)
    times = sch.times
    for i, (k, us, midpoint, std, ratio) in enumerate(plan):
        x0 = ev.x0(x, times[i])
        hist = (hist + [(sch.l[i], x0)])[-order:]
        pts = hist[::-1][:k]
        if midpoint:
            e = -math.expm1(-(1 + eta) * sch.h(i))
            weights = [e * (1 - 0.5 / us[1]), e * 0.5 / us[1]]  # 1/(2r) with r = -u_prev
        else:
            weights = table(us, sch.h(i))
        z = ev.path_noise(x, times[i], times[i + 1]) if std > 0 else None
        x = _sde_update(x, pts, weights, ratio, sch.alpha[i + 1], std, z)
        yield x


@register("dpmpp_2m_sde", order=1, nfe_per_step=1, stochastic=True, family="sde")
def dpmpp_2m_sde(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "taylor", lower_order_final: bool = True):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2 with the SDE update of sec. 5; k-diffusion's
    ``sample_dpmpp_2m_sde``), 1 NFE/step, with h' = (1 + eta) h and D = (x0_t - x0_prev) h / (l_t - l_prev):

        x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-h'}) x0_t + alpha_s c(h') D
              + s_noise sigma_s sqrt(1 - e^{-2 eta h}) z,

    c = h' phi_2(-h') (solver_type "taylor": k-diffusion's "heun") or (1 - e^{-h'})/2 ("midpoint"). Strong order 1
    (second order in the deterministic part; eta = 0 is DPM-Solver++(2M)). ``lower_order_final``: the last step
    is first order (``final_order``)."""
    _check_grid(ev, ts)
    return _multistep_sde(ev, x, ts, 2, eta, s_noise, solver_type, lower_order_final)


@register("dpmpp_3m_sde", order=1, nfe_per_step=1, stochastic=True, family="sde")
def dpmpp_3m_sde(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                 lower_order_final: bool = True):
    """SDE-DPM-Solver++(3M) (the third-order multistep of Lu et al. 2022b with its SDE update; k-diffusion's
    ``sample_dpmpp_3m_sde``), 1 NFE/step: the family update (module docstring) with the quadratic through the last
    three x0's, i.e. + alpha_s [h h' phi_2(-h') x0' + h^2 h' phi_3(-h') x0''] (the Taylor weight; k-diffusion's
    weights the x0'' term by half of it). Warm-up: first order, then 2M; with ``lower_order_final`` the last two
    steps are second and first order (``final_order``)."""
    _check_grid(ev, ts)
    return _multistep_sde(ev, x, ts, 3, eta, s_noise, lower_order_final=lower_order_final)


@register("sa_solver", order=1, nfe_per_step=1, stochastic=True, family="sde")
def sa_solver(ev: Evaluator, x: Tensor, ts: Tensor, *, tau: float = 1.0, predictor_order: int = 3,
              corrector_order: int = 3, s_noise: float = 1.0, lower_order_final: bool = True):
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models",
    Alg. 1, data prediction), 1 NFE/step. With eta = tau^2 and b_m = ``exp_weights`` of the points used:

        predictor (SA-Predictor, order p):   x~_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s sum_m b_m x0_m
                                              + sigma_s sqrt(1 - e^{-2 eta h}) z       over l_t, l_{t-1}, ... (p points)
        corrector (SA-Corrector, order c):   the same update over l_s (x0(x~_s, s), the next step's own call),
                                              l_t, ... (c points), with the same z.

    The last step is predictor only; with ``lower_order_final`` the predictor of step i of n uses at most n - i
    points (``final_order``; diffusers' SASolverScheduler does the same). tau = 0 gives a deterministic Adams
    (UniPC-like) solver; tau = 1 the reverse SDE."""
    tau, s_noise = _noise_options(ev, tau, s_noise)
    check_flag("lower_order_final", lower_order_final)
    if not all(isinstance(o, int) and not isinstance(o, bool) and 1 <= o <= 4 for o in (predictor_order, corrector_order)):
        raise refuse(ev, f"needs predictor_order and corrector_order integers in 1..4; got {predictor_order!r}, "
                         f"{corrector_order!r}")
    p, c = predictor_order, corrector_order
    _check_grid(ev, ts)
    eta = tau * tau
    sch = Schedule(ev.sde, ts)
    n = len(ts) - 1
    # the weights of every predictor and corrector step are known from the grid: solved together up front
    table = ExpWeights(eta)
    for i in range(n):
        if i > 0 and c > 1:  # the corrector of step i - 1: l_i, then the history before it, newest first
            table.want(_adams_us(sch, i - 1, range(i, i - min(c, 1 + min(i, max(p, c))), -1)), sch.h(i - 1))
        k = min(i + 1, max(p, c), final_order(p, i, n, lower_order_final))
        table.want(_adams_us(sch, i, range(i, i - k, -1)), sch.h(i))
    table.solve()
    scales = [_noise_and_ratio(sch, i, eta, s_noise) for i in range(n)]  # each step's (noise std, ratio)
    hist: List[Tuple[float, Tensor]] = []
    prev = None  # (i, x_i, z_i) of the last predictor step
    if eta > 0:
        ev.plan_path_noise(x, ts)
    times = sch.times
    for i in range(n):
        x0 = ev.x0(x, times[i])
        if prev is not None and c > 1:  # correct the step that led here, using x0 at the predicted state
            j, x_j, z_j = prev
            pts = ([(sch.l[i], x0)] + hist[::-1])[:c]
            x = _adams_step(sch, j, x_j, pts, eta, s_noise, z_j, table, scales)  # x0 at the predicted state: no NFE
        hist = (hist + [(sch.l[i], x0)])[-max(p, c):]
        z = ev.path_noise(x, times[i], times[i + 1]) if eta > 0 else None
        prev = (i, x, z)
        x = _adams_step(sch, i, x, hist[::-1][:final_order(p, i, n, lower_order_final)], eta, s_noise, z, table,
                        scales)
        yield x


def _adams_us(sch: Schedule, i: int, points) -> List[float]:
    """The positions u of the grid points ``points`` (indices) in step i."""
    return [_u(sch.l[m], sch.l[i], sch.l[i + 1]) for m in points]


def _adams_step(sch: Schedule, i: int, x: Tensor, pts, eta: float, s_noise: float, z,
                table: Optional[ExpWeights] = None, scales: Optional[list] = None) -> Tensor:
    h = sch.h(i)
    us = [_u(l_m, sch.l[i], sch.l[i + 1]) for l_m, _ in pts]
    weights = exp_weights(us, h, eta) if table is None else table(us, h)
    std, ratio = _noise_and_ratio(sch, i, eta, s_noise) if scales is None else scales[i]
    return _sde_update(x, pts, weights, ratio, sch.alpha[i + 1], std, z)


# -- Restart ------------------------------------------------------------------------------------------------
def _heun(ev: Evaluator, x: Tensor, t: float, s: float, a_t: float, sig_t: float, a_s: float, sig_s: float) -> Tensor:
    """One Heun step of the probability-flow ODE in y = x/alpha, s = sigma/alpha (dy/ds = eps). From alpha_t = 0
    (s_t = inf) its limit: the Euler step y_s = x0_t + s_s x_t/sigma_t, i.e. DDIM from pure noise (the trapezoid
    over an infinite interval has no limit)."""
    if a_t == 0.0:
        return a_s * ev.x0(x, t) + (sig_s / sig_t) * x
    s_t, s_s = sig_t / a_t, sig_s / a_s
    d = ev.eps(x, t)
    y = x / a_t + (s_s - s_t) * d
    if s_s > 0:
        y = x / a_t + (s_s - s_t) * 0.5 * (d + ev.eps(a_s * y, s))
    return a_s * y


def _restart_intervals(sde, restarts) -> list:
    if restarts is None:  # the paper's single interval, in EDM's sigma = sigma/alpha: [0.06, 0.30], N = 3, K = 2
        lam = torch.tensor([-2 * math.log(0.06), -2 * math.log(0.30)], dtype=torch.float64)
        lo, hi = sde.t_from_log_snr(lam).tolist()
        return [(3, 2, lo, hi)]
    out = []
    for item in restarts:
        if len(item) != 4:
            raise ValueError(f"each restart interval is (N, K, t_min, t_max); got {item!r}")
        N, K, lo, hi = int(item[0]), int(item[1]), float(item[2]), float(item[3])
        if N < 1 or K < 0 or not (0 < lo < hi <= sde.T):
            raise ValueError(f"restart interval needs N >= 1, K >= 0 and 0 < t_min < t_max <= T; got {item!r}")
        out.append((N, K, lo, hi))
    return out


@register("restart", order=2, nfe_per_step=2, stochastic=True, family="sde")
def restart(ev: Evaluator, x: Tensor, ts: Tensor, *, restarts=None, s_noise: float = 1.0):
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Alg. 1): Heun
    steps of the probability-flow ODE along ts; on reaching t_min of an interval (N, K, t_min, t_max) (snapped to
    the first grid time <= t_min, as in the paper) it K times jumps forward by the SDE's exact transition

        x_{t_max} = (alpha_max/alpha_min) x_{t_min} + s_noise sqrt(sigma_max^2 - (alpha_max sigma_min/alpha_min)^2) z

    and solves the ODE back to t_min with N Heun steps (uniform in log-SNR). ``restarts``: a list of
    (N, K, t_min, t_max) in the SDE's time; default one interval, EDM sigma in [0.06, 0.30], N = 3, K = 2.
    Network calls: 2 per main step plus 2 N K per interval (counted in NFE). A step from alpha = 0 (a flow path at
    T) is Euler's (``_heun``), one call."""
    _check_grid(ev, ts)
    s_noise = option(ev, "s_noise", s_noise, 0.0)
    sde = ev.sde
    intervals = _restart_intervals(sde, restarts)
    sch = Schedule(sde, ts)
    times = ts.tolist()
    pending = sorted(intervals, key=lambda it: -it[2])
    for i in range(len(times) - 1):
        x = _heun(ev, x, times[i], times[i + 1], sch.alpha[i], sch.sigma[i], sch.alpha[i + 1], sch.sigma[i + 1])
        while pending and times[i + 1] <= pending[0][2]:
            N, K, _, hi = pending.pop(0)
            lo = times[i + 1]
            if hi <= lo:
                continue
            sub = torch.tensor([hi, lo], dtype=torch.float64)
            lam = sde.log_snr(sub)
            grid = sde.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), N + 1, dtype=torch.float64))
            grid[0], grid[-1] = hi, lo
            gs = Schedule(sde, grid)
            a_lo, s_lo, a_hi, s_hi = sch.alpha[i + 1], sch.sigma[i + 1], gs.alpha[0], gs.sigma[0]
            jump = math.sqrt(max(s_hi**2 - (a_hi * s_lo / a_lo) ** 2, 0.0))
            for _ in range(K):
                x = (a_hi / a_lo) * x + (s_noise * jump) * ev.randn_like(x)
                for k in range(N):
                    x = _heun(ev, x, float(grid[k]), float(grid[k + 1]), gs.alpha[k], gs.sigma[k], gs.alpha[k + 1],
                              gs.sigma[k + 1])
        yield x
