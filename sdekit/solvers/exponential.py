"""Exponential integrators of the probability-flow ODE, stepping in the half log-SNR.

Notation. ``sde.log_snr`` is lambda = log(alpha^2 / sigma^2); these solvers use its half,
l = lambda / 2 = log(alpha / sigma) (DPM-Solver's lambda), and the step h = l(t_{i+1}) - l(t_i) > 0.
With x = alpha x0 + sigma eps the probability-flow ODE has the exact solutions (Lu et al. 2022, 2022b)

    noise form  x_s = (alpha_s/alpha_t) x_t - alpha_s int_{l_t}^{l_s} e^{-l} eps(l) dl
    data form   x_s = (sigma_s/sigma_t) x_t + sigma_s int_{l_t}^{l_s} e^{l} x0(l) dl,

and a Taylor expansion of eps(l) or x0(l) about l_t turns the integrals into phi-functions,
phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1}/(k-1)! du (phi_1(z) = (e^z - 1)/z):

    noise form  x_s = (alpha_s/alpha_t) x_t - sigma_s sum_k h^{k+1} phi_{k+1}(h)  eps^{(k)}(l_t)
    data form   x_s = (sigma_s/sigma_t) x_t + alpha_s sum_k h^{k+1} phi_{k+1}(-h) x0^{(k)}(l_t).

Every solver here is that expansion with the derivatives estimated from extra model calls
(single-step: DPM-Solver-2/3, DPM-Solver++(2S)) or from past model calls (multistep: DPM-Solver++(2M/3M),
UniPC; ``multistep.py``). The multistep solvers share one update (``ms_update``): with previous points at
l_t + r_m h (r_m < 0; r = 1 for the corrector's new point) and D_m = (x0_m - x0_t)/r_m,

    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0_t + alpha_s B(h) sum_m a_m D_m,
    sum_m a_m r_m^{k-1} = k! h phi_{k+1}(-h) / B(h),  k = 1..K        (Zhao et al. 2023, UniPC)

with a = [1/2] when K = 1 (UniPC's choice; ``ms_weights`` also gives the Taylor weight there, and the published
3M weights with k! replaced by 1). B(h) = 1 - e^{-h} ("bh2") makes the K = 1 predictor exactly
DPM-Solver++(2M); for K >= 2 B cancels and the K = 2 predictor is DPM-Solver++(3M).

The noise form is the data form under the symmetry alpha <-> sigma, x0 <-> eps, l -> -l (so h -> -h, while the
ratios r_m are unchanged): with D_m = (eps_m - eps_t)/r_m and C(h) = -B(-h) (e^h - 1 for "bh2", h for "bh1"),

    x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_t - sigma_s C(h) sum_m a_m D_m,
    sum_m a_m r_m^{k-1} = k! h phi_{k+1}(h) / C(h).

``multistep._multistep`` runs both forms by mirroring the schedule; the noise form with K = 1, 2 is the noise-prediction
multistep DPM-Solver(2M/3M) of Lu et al. 2022b (diffusers' ``algorithm_type="dpmsolver"``).

Analytic first step (AFS; Dockhorn et al. 2022, "GENIE"; Zhou et al. 2024, "AMED"): the multistep solvers can
replace the first network call at t_0 by the prediction for data distributed as N(0, I), for which
E[x0 | x] = alpha x/(alpha^2 + sigma^2) and E[eps | x] = sigma x/(alpha^2 + sigma^2) (``gaussian_prediction``).
It saves one NFE and is an approximation: the first step then carries an error of order
(s_1 - s_0)|eps - eps_gauss| (s = sigma/alpha), small only when x_T has forgotten the data
(alpha_T^2 Var(x0) << sigma_T^2, as at T for VP/VE), and it does not shrink faster than the first step.

Both forms stay valid for increasing grids (inversion, h < 0). A step that ends at sigma_s = 0 (t = 0 for VP/VE)
is the limit of every update above: x_s = alpha_s x0(x_t, t) (``x0_jump``).

A step that starts at alpha_t = 0 (flow-matching paths at t = T: l_t = -inf, h = inf, e^{-h} = 0) is the
other limit, and the data form takes it with the same formulas: the exact solution reads
x_s = (sigma_s/sigma_t) x_t + sigma_s int_{-inf}^{l_s} e^l x0(l) dl, and with x0 held at x0_t it is
x_s = (sigma_s/sigma_t) x_t + alpha_s x0(x_t, T) (1 - e^{-h} = 1): DDIM from pure noise, which is what
diffusers' FlowMatch Euler step does on the rectified flow. ``Schedule`` keeps l = -inf there and every
coefficient is written so that its float value is that limit: ratios r_m are measured from the step's end
(r = 1 - (l_s - l_m)/h, so the corrector's point is r = 1 even when h = inf), a history point at l = -inf has
r = -inf and weight 0 (the limit of the weight equations as r -> -inf: the remaining points solve the first
K' equations; ``ms_weights``; UniPC's variant "bh1", B(h) = h, has no finite limit and cannot start there),
midpoints are placed from the step's end (l_s - (1 - r) h, = -inf: t = T), and
phi_k(-inf) = 0. The noise form cannot start there: x_t = sigma_t eps at alpha_t = 0, so eps(x_t, T) = x_t/sigma_t
for every model and (alpha_s/alpha_t) is infinite; start those solvers below T (t_start < sde.T).

An inversion that ends at alpha_s = 0 (l_s = -inf, h = -inf) takes its last step as the data-form step's limit,
x_s = (sigma_s/sigma_t)(x_t - alpha_t x0_t) = sigma_s eps_t (``to_pure_noise``; alpha_s (1 - e^{-h}) alone is 0 * inf),
first order like the first step from alpha = 0: the 2M weight 1/(2r) has no finite limit there.
"""
from __future__ import annotations

import math

import torch

from .base import Evaluator, option, refuse
from .exp_schedule import Schedule, phi
from .registry import register

Tensor = torch.Tensor

__all__ = ["phi", "Schedule", "x0_jump", "to_pure_noise", "dpm_solver_step", "gaussian_prediction", "check_flag",
           "check_finite_start", "ms_weights", "ms_update", "final_order", "check_lower_order_final"]

# -- shared helpers -------------------------------------------------------------------------------------
def _eps_first_order(x: Tensor, eps: Tensor, a_t: float, a_s: float, s_s: float, h: float) -> Tensor:
    """DPM-Solver-1 / DDIM(eta = 0): x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_t."""
    return (a_s / a_t) * x - (s_s * math.expm1(h)) * eps


def _x0_first_order(x: Tensor, x0: Tensor, s_t: float, a_s: float, s_s: float, h: float) -> Tensor:
    """DPM-Solver++(1): x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0_t."""
    return (s_s / s_t) * x - (a_s * math.expm1(-h)) * x0


def gaussian_prediction(x: Tensor, alpha: float, sigma: float, kind: str) -> Tensor:
    """The model output if the data were N(0, I): E[x0 | x] = alpha x/(alpha^2 + sigma^2) ("x0") or
    E[eps | x] = sigma x/(alpha^2 + sigma^2) ("eps"). Used by the analytic first step (AFS, an approximation)."""
    return ((alpha if kind == "x0" else sigma) / (alpha * alpha + sigma * sigma)) * x


def check_finite_start(ev: Evaluator, sch: Schedule, what: str) -> None:
    """``NotApplicableError`` (a ValueError naming the solver, before any network call) if the grid visits
    alpha = 0 (t = T on a flow-matching path), where ``what`` (a noise-form update, whose coefficients divide by
    alpha) is undefined; the data-form solvers start there."""
    if any(a == 0.0 for a in sch.alpha):
        t = float(sch.ts[sch.alpha.index(0.0)])
        raise refuse(ev, f"cannot run on this grid of {ev.sde!r}: it visits alpha = 0 (t = {t:.6g}), where {what} "
                         "divides by alpha: start below it (t_start < that time) or use a data-form solver (ddim, "
                         "dpmpp_2m, dpmpp_3m, unipc_2, unipc_3, dpmpp_2s, euler_ancestral, dpmpp_2m_sde) or one in t "
                         "(euler, heun_t, rk4)")


def check_flag(name: str, value):
    """ValueError unless ``value`` is a bool (solver options such as afs and lower_order_final)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


# -- DDIM ---------------------------------------------------------------------------------------------
def ddim_steps(ev: Evaluator, x: Tensor, ts: Tensor, eta: float):
    """The DDIM update in its general alpha/sigma form (shared by ddim, ddpm and the discrete samplers)."""
    eta = option(ev, "eta (0: deterministic DDIM, 1: DDPM ancestral)", eta, 0.0, 1.0)
    if eta > 0 and float(ts[-1]) > float(ts[0]):
        raise refuse(ev, f"with eta = {eta} draws noise; an inversion (increasing ts) needs eta = 0")
    sch = Schedule(ev.sde, ts)
    lam = [2 * v for v in sch.l]
    for i in range(len(ts) - 1):
        a_t, s_t, a_s, s_s = sch.alpha[i], sch.sigma[i], sch.alpha[i + 1], sch.sigma[i + 1]
        x0 = ev.x0(x, ts[i])
        c = eta * s_s * math.sqrt(-math.expm1(lam[i] - lam[i + 1])) if eta > 0 and s_s > 0 else 0.0
        k = math.sqrt(max(s_s * s_s - c * c, 0.0)) / s_t  # eps = (x - a_t x0)/s_t enters as k x - k a_t x0
        x = torch.add(x * k, x0, alpha=a_s - k * a_t)
        if c > 0:
            x.add_(ev.randn_like(x), alpha=c)
        yield x


@register("ddim", order=1, nfe_per_step=1, stochastic=True, family="exponential")
def ddim(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 0.0):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE, with lambda = log(alpha^2/sigma^2):

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,   c = eta sigma_s sqrt(1 - e^{lambda_t - lambda_s}),

    x0, eps the model's predictions at (x_t, t) and z ~ N(0, I). eta = 0 is the deterministic DDIM
    (= DPM-Solver-1, first order in h); eta = 1 is DDPM's ancestral step (on a DDPM table's own grid);
    0 < eta < 1 interpolates. Noise is drawn only when eta > 0."""
    return ddim_steps(ev, x, ts, eta)


# -- single-step DPM-Solver (noise prediction) -------------------------------------------------------
@register("dpm_solver_1", order=1, nfe_per_step=1, family="exponential")
def dpm_solver_1(ev: Evaluator, x: Tensor, ts: Tensor):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps(x_t, t).
    Equal to deterministic DDIM."""

    check_finite_start(ev, Schedule(ev.sde, ts), "DPM-Solver-1 (noise form)")

    def step(x, sch, i):
        return _eps_first_order(x, ev.eps(x, ts[i]), sch.alpha[i], sch.alpha[i + 1], sch.sigma[i + 1], sch.h(i))

    return _single_steps(ev, x, ts, step)


def x0_jump(ev: Evaluator, x: Tensor, sch: Schedule, i: int) -> Tensor:
    """The step to sigma_s = 0: x_s = alpha_s x0(x_t, t), the limit h -> inf of every update here."""
    return sch.alpha[i + 1] * ev.x0(x, sch.ts[i])


def to_pure_noise(x: Tensor, x0: Tensor, sch: Schedule, i: int) -> Tensor:
    """The step to alpha_s = 0 (t = T on a flow path: the last step of an inversion, h = -inf):
    x_s = (sigma_s/sigma_t)(x_t - alpha_t x0_t) = sigma_s eps_t, the limit of the data-form update (DDIM) as
    alpha_s -> 0. First order, as the first step of a solve from alpha = 0 is: a history extrapolated over an
    infinite step in l has no finite limit in the 2M weights (1/(2r) -> inf)."""
    return (sch.sigma[i + 1] / sch.sigma[i]) * (x - sch.alpha[i] * x0)


def _single_steps(ev: Evaluator, x: Tensor, ts: Tensor, step):
    """Apply ``step(x, sch, i) -> x_{i+1}`` along the grid; a step that ends at sigma = 0 is the x0 jump, one that
    ends at alpha = 0 ``to_pure_noise``."""
    sch = Schedule(ev.sde, ts)
    for i in range(len(ts) - 1):
        if sch.sigma[i + 1] == 0:
            x = x0_jump(ev, x, sch, i)
        elif sch.alpha[i + 1] == 0:
            x = to_pure_noise(x, ev.x0(x, ts[i]), sch, i)
        else:
            x = step(x, sch, i)
        yield x


def dpm_solver_step(ev: Evaluator, x: Tensor, t, a_t: float, a_s: float, s_s: float, h: float, rs: list[float],
                    mids: list[tuple[float, float, float]]) -> tuple[Tensor, Tensor]:
    """One single-step DPM-Solver step from (x_t, t) to half log-SNR l_t + h (Lu et al. 2022, Algorithms 4 and 5),
    returning the solutions of order len(rs) and len(rs) + 1, which share every network call:

      u_1 = (alpha_1/alpha_t) x_t - sigma_1 (e^{r1 h} - 1) eps_t,                     D_1 = eps(u_1, s_1) - eps_t
      order 1:  x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_t  (DPM-Solver-1)
      order 2:  x_s = (order 1) - sigma_s (e^h - 1)/(2 r1) D_1
      order 3:  u_2 = (alpha_2/alpha_t) x_t - sigma_2 (e^{r2 h} - 1) eps_t - sigma_2 (r2/r1) r2 h phi_2(r2 h) D_1,
                D_2 = eps(u_2, s_2) - eps_t,  x_s = (order 1) - sigma_s (h phi_2(h)/r2) D_2
    where s_j is the time with half log-SNR l_t + r_j h and mids[j] = (s_j, alpha_j, sigma_j) (``Schedule.at_ls``).
    rs = [r1]: (1, 2); rs = [r1, r2]: (2 with r1, 3) -- the pairs of adaptive DPM-Solver-12 and -23."""
    eps = ev.eps(x, t)
    t1, a1, s1 = mids[0]
    u1 = _eps_first_order(x, eps, a_t, a1, s1, rs[0] * h)
    d1 = ev.eps(u1, t1) - eps
    base = _eps_first_order(x, eps, a_t, a_s, s_s, h)
    second = base - (s_s * math.expm1(h) / (2 * rs[0])) * d1
    if len(rs) == 1:
        return base, second
    r1, r2 = rs
    t2, a2, s2 = mids[1]
    u2 = _eps_first_order(x, eps, a_t, a2, s2, r2 * h) - (s2 * (r2 / r1) * r2 * h * phi(2, r2 * h)) * d1
    d2 = ev.eps(u2, t2) - eps
    return second, base - (s_s * h * phi(2, h) / r2) * d2


def _singlestep_eps(ev: Evaluator, x: Tensor, ts: Tensor, rs: list[float]):
    """DPM-Solver-2 (rs = [r1]) and DPM-Solver-3 (rs = [r1, r2]) along the grid: the higher-order solution of
    ``dpm_solver_step``."""
    check_finite_start(ev, Schedule(ev.sde, ts), "single-step DPM-Solver (noise form)")

    def step(x, sch, i):
        h = sch.h(i)
        mids = sch.at_ls([sch.l[i] + r * h for r in rs])
        return dpm_solver_step(ev, x, ts[i], sch.alpha[i], sch.alpha[i + 1], sch.sigma[i + 1], h, rs, mids)[1]

    return _single_steps(ev, x, ts, step)


@register("dpm_solver_2", order=2, nfe_per_step=2, family="exponential")
def dpm_solver_2(ev: Evaluator, x: Tensor, ts: Tensor):
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 4 with r1 = 1/2): single-step, noise prediction, 2 NFE/step.

    u = (alpha_m/alpha_t) x_t - sigma_m (e^{h/2} - 1) eps_t at l_m = l_t + h/2;
    x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps(u, t_m)."""
    return _singlestep_eps(ev, x, ts, [0.5])


@register("dpm_solver_3", order=3, nfe_per_step=3, family="exponential")
def dpm_solver_3(ev: Evaluator, x: Tensor, ts: Tensor):
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 5 with r1 = 1/3, r2 = 2/3): single-step, 3 NFE/step;
    see ``_singlestep_eps`` for the update."""
    return _singlestep_eps(ev, x, ts, [1.0 / 3.0, 2.0 / 3.0])


@register("dpmpp_2s", order=2, nfe_per_step=2, family="exponential")
def dpmpp_2s(ev: Evaluator, x: Tensor, ts: Tensor):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = 1/2): single-step, data prediction.

    u = (sigma_m/sigma_t) x_t + alpha_m (1 - e^{-h/2}) x0_t at l_m = l_t + h/2,
    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0(u, t_m)   (D = (1 - 1/(2r)) x0_t + 1/(2r) x0_m, r = 1/2)."""

    def step(x, sch, i):
        s_t, a_s, s_s, h = sch.sigma[i], sch.alpha[i + 1], sch.sigma[i + 1], sch.h(i)
        x0 = ev.x0(x, ts[i])
        tm, am, sm = sch.at_l(sch.mid(i, 0.5))
        u = _x0_first_order(x, x0, s_t, am, sm, 0.5 * h)
        return _x0_first_order(x, ev.x0(u, tm), s_t, a_s, s_s, h)

    return _single_steps(ev, x, ts, step)


# -- the multistep update (the solvers are in ``multistep.py``) ----------------------------------------
WEIGHT_FORMS = ("taylor", "published")
SOLVER_TYPES = ("midpoint", "taylor")


def ms_weights(rs: list[float], h: float, B: float, form: str = "taylor", solver_type: str = "midpoint") -> list[float]:
    """Weights a_m solving sum_m a_m r_m^{k-1} = c_k h phi_{k+1}(-h) / B, k = 1..K, with c_k = k! (the Taylor
    weights; ``form="taylor"``) or c_k = 1 (``form="published"``: the DPM-Solver reference code's and diffusers' 3M,
    which weights the second derivative by half its Taylor coefficient). One point (K = 1): a = [1/2]
    (``solver_type="midpoint"``: DPM-Solver++(2M)'s and UniPC's choice) or its Taylor weight h phi_2(-h)/B
    (``"taylor"``: diffusers' solver_type="heun", k-diffusion's 2M SDE "heun").

    A point with r_m = -inf (at l = -inf, alpha = 0) gets a_m = 0: as r_m -> -inf, a_m -> 0 like r_m^{1-K} and the
    finite points solve the first K' equations (K' of them), which is the limit of the system."""
    K = len(rs)
    if K == 1 and solver_type == "midpoint":
        return [0.5]
    keep = [m for m, r in enumerate(rs) if math.isfinite(r)]
    if not keep:
        return [0.0] * K
    R = torch.tensor([[rs[m] ** (k - 1) for m in keep] for k in range(1, len(keep) + 1)], dtype=torch.float64)
    c = [math.factorial(k) if form == "taylor" else 1 for k in range(1, len(keep) + 1)]
    b = torch.tensor([c[k - 1] * h * phi(k + 1, -h) / B for k in range(1, len(keep) + 1)], dtype=torch.float64)
    a = dict(zip(keep, torch.linalg.solve(R, b).tolist()))
    return [a.get(m, 0.0) for m in range(K)]


def ms_update(x: Tensor, x0_t: Tensor, points: list[tuple[float, Tensor]], l_t: float, l_s: float,
              s_t: float, a_s: float, s_s: float, variant: str, rule: tuple = ("taylor", "midpoint")) -> Tensor:
    """One multistep update from (x_t, l_t) to l_s = l_t + h using x0_t and extra points (l_m, x0_m) (the noise
    form: the same call on the mirrored schedule, with eps for x0):
    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0_t + alpha_s B(h) sum_m a_m (x0_m - x0_t)/r_m,
    a = ``ms_weights(..., *rule)`` (rule = (form, solver_type))."""
    h = l_s - l_t
    x = _x0_first_order(x, x0_t, s_t, a_s, s_s, h)
    if not points:
        return x
    B = h if variant == "bh1" else -math.expm1(-h)
    rs = [1.0 - (l_s - l_m) / h for l_m, _ in points]
    weights = ms_weights(rs, h, B, *rule)
    corr = sum((w / r) * (m - x0_t) for w, r, (_, m) in zip(weights, rs, points))
    return x + (a_s * B) * corr


def check_lower_order_final(value) -> None:
    """ValueError unless ``value`` is a bool or a non-empty tuple/list of orders >= 1 (``final_order``)."""
    if isinstance(value, bool):
        return
    if not isinstance(value, (tuple, list)) or not value or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in value):
        raise ValueError(f"lower_order_final must be True, False or a tuple of the orders (integers >= 1) of the last "
                         f"steps, e.g. (2, 1); got {value!r}")


def final_order(order: int, i: int, n: int, lower_order_final) -> int:
    """The order of step i of n of a multistep solver: ``order``, or with ``lower_order_final=True`` at most n - i (the
    last step first order, the one before at most second), as UniPC and diffusers' multistep schedulers do; or with
    a tuple (c_1, ..., c_k) at most c_j on the j-th of the last k steps (e.g. (2,): only the last step capped, at 2;
    (1,): diffusers' euler_at_final; (1,) * n: every step first order).
    Extrapolating a history across the large last steps of uniform and quadratic grids is what it avoids
    (measured: 20 uniform steps, 3M error 0.79 -> 0.04; for dpmpp_2m_sde on a DDPM table at 10 NFE, uniform
    grid, the sliced-W2 excess 0.53 -> 0.08)."""
    if isinstance(lower_order_final, (tuple, list)):
        back = n - 1 - i  # steps after this one
        k = len(lower_order_final)
        return min(order, lower_order_final[k - 1 - back]) if back < k else order
    return min(order, n - i) if lower_order_final else order
