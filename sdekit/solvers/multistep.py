"""Multistep exponential integrators of the probability-flow ODE: DPM-Solver++(2M/3M), DPM-Solver(2M/3M) in noise
form (and its SDE variant), UniPC; the update they share, ``ms_update``, and the notation are ``exponential.py``'s.

Options that select the published variants (the forms diffusers' DPMSolverMultistepScheduler and
UniPCMultistepScheduler implement, ``sdekit.interop.diffusers_equivalent``):

- ``solver_type`` (two-point steps): "midpoint", a = 1/2 (DPM-Solver++(2M) as published; diffusers' default), or
  "taylor", the exact weight h phi_2(-h)/B(h) of the line through both points (diffusers' solver_type="heun"). Both
  are second order; they differ by O(h^3) per step.
- ``form`` (three-point steps, 3M): "taylor", the Taylor weights (third order), or "published", the DPM-Solver
  reference code's and diffusers' update, which weights the second-derivative term by half its Taylor coefficient
  (h phi_3(-h) D2 with D2 = h^2 x0''/2), so that it is second order.
- ``lower_order_final``: True, False, or a tuple of the orders of the last steps (``final_order``): diffusers'
  lower_order_final/euler_at_final on a grid whose last step is taken apart (the x0 jump to sigma = 0, or a
  dropped zero-length step).

SDE-DPM-Solver-2M in noise form (Lu et al. 2022b, sec. 5; diffusers' algorithm_type="sde-dpmsolver"). With eta in
[0, 1] the reverse family dx = [f x + (1 + eta)/2 g^2 eps/sigma] dt + sqrt(eta) g dw_bar has, for eps a polynomial in
l, the exact solution

    x_s = (alpha_s/alpha_t) x_t + (1 + eta) [x_s^ODE - (alpha_s/alpha_t) x_t] + sqrt(eta) sigma_s sqrt(e^{2h} - 1) z,

x_s^ODE the noise-form multistep update of the probability-flow ODE (eta = 0), z ~ N(0, I): in noise form the
linear part does not depend on eta, only the eps integral is scaled by 1 + eta (the variance is
alpha_s^2 eta (s_t^2 - s_s^2), s = sigma/alpha).
"""
from __future__ import annotations

import math

import torch

from .base import Evaluator, option, refuse
from .exponential import (SOLVER_TYPES, WEIGHT_FORMS, Schedule, check_finite_start, check_flag,
                          check_lower_order_final, final_order, gaussian_prediction, ms_update, to_pure_noise)
from .registry import register

Tensor = torch.Tensor

__all__ = ["unipc_steps", "unipc_final_corrector"]


def _check_rule(ev: Evaluator, form: str, solver_type: str) -> tuple:
    if form not in WEIGHT_FORMS:
        raise refuse(ev, f"needs form in {WEIGHT_FORMS}; got {form!r}")
    if solver_type not in SOLVER_TYPES:
        raise refuse(ev, f"needs solver_type in {SOLVER_TYPES}; got {solver_type!r}")
    return form, solver_type


def _check_skips(ev: Evaluator, disable_corrector) -> frozenset:
    if not isinstance(disable_corrector, (tuple, list, set, frozenset)) or not all(
            isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in disable_corrector):
        raise refuse(ev, f"needs disable_corrector a collection of step indices (integers >= 0); got "
                         f"{disable_corrector!r}")
    return frozenset(disable_corrector)


def _frame(ev: Evaluator, ts: Tensor, variant: str, corrector: bool, lower_order_final, noise: bool, afs: bool,
           final_corrector: bool):
    """Checks, then (sch, kind, alpha, sigma, l) of the solve: the noise form runs as the data form on the mirrored
    schedule (alpha <-> sigma, l -> -l; ``exponential.py``'s docstring)."""
    if variant not in ("bh1", "bh2"):
        raise refuse(ev, f"needs variant 'bh1' or 'bh2'; got {variant!r}")
    check_lower_order_final(lower_order_final)
    for name, flag in (("afs", afs), ("corrector", corrector), ("final_corrector", final_corrector)):
        check_flag(name, flag)
    if final_corrector and not corrector:
        raise refuse(ev, "with final_corrector=True needs corrector=True (the final call feeds the corrector)")
    sch = Schedule(ev.sde, ts)
    if final_corrector and (sch.sigma[-1] == 0 or sch.alpha[-1] == 0):
        raise refuse(ev, f"with final_corrector=True needs a grid whose last time has 0 < alpha, sigma (t = "
                         f"{float(ts[-1]):.6g} has none): the final call evaluates the network there")
    if noise:
        check_finite_start(ev, sch, "the noise-form multistep update")
        return sch, "eps", sch.sigma, sch.alpha, [-v for v in sch.l]
    if variant == "bh1" and corrector and sch.alpha[0] == 0.0:
        raise refuse(ev, f"with variant 'bh1' cannot start at alpha = 0 (t = {float(ts[0]):.6g} on {ev.sde!r}): "
                         "B(h) = h is infinite on the first step, so its corrector has no finite limit; use "
                         "variant='bh2' or start below that time")
    return sch, "x0", sch.alpha, sch.sigma, sch.l


def _multistep(ev: Evaluator, x: Tensor, ts: Tensor, order: int, variant: str, corrector: bool,
               lower_order_final, noise: bool = False, afs: bool = False, final_corrector: bool = False,
               rule: tuple = ("taylor", "midpoint"), disable_corrector: frozenset = frozenset(), sde: tuple = ()):
    """Multistep predictor (order p uses the last p model outputs) with an optional UniC corrector.

    History: the model outputs m_j (x0, or eps when ``noise``) at the half log-SNRs l_j already visited. Step i
    predicts x_{i+1} from x_i, m_i and the previous p - 1 outputs (fewer during warm-up); with ``corrector`` the
    next step first evaluates m_{i+1} at the predicted x_{i+1}, then redoes step i with (l_{i+1}, m_{i+1}) as an
    extra point (UniC: no extra network call; m_{i+1} stays in the history), unless i is in ``disable_corrector``.
    The last step is predictor only. ``lower_order_final``: lower orders on the last steps (``final_order``).
    ``noise``: the noise form. ``afs``: m_0 = gaussian_prediction (no network call at t_0; an approximation).
    ``final_corrector``: after the last predictor step, one more network call at (x_n, t_n) corrects it too, and
    that corrected state is yielded as well (n + 1 states in all; the orders of ``lower_order_final`` count it as a
    step): diffusers' UniPC on grids that end with a zero-length step (Karras sigmas with
    final_sigmas_type="sigma_min"), whose call feeds this corrector. ``rule``: the weights' (form, solver_type).
    ``sde``: (eta, s_noise) of the noise-form SDE update (module docstring; noise form only)."""
    sch, kind, alpha, sigma, lam = _frame(ev, ts, variant, corrector, lower_order_final, noise, afs, final_corrector)
    eta, s_noise = sde if sde else (0.0, 0.0)
    if eta > 0 and s_noise > 0:
        ev.plan_path_noise(x, ts)

    def update(j, x_j, m_j, pts, k):  # the multistep update from t_j to t_k
        return ms_update(x_j, m_j, pts, lam[j], lam[k], sigma[j], alpha[k], sigma[k], variant, rule)

    def output(x, i):
        return gaussian_prediction(x, sch.alpha[0], sch.sigma[0], kind) if afs and i == 0 else \
            ev.x0(x, ts[i]) if kind == "x0" else ev.eps(x, ts[i])

    n = len(ts) - 1
    hist: list[tuple[float, Tensor]] = []  # (l_j, m_j), oldest first
    last = None  # (j, x_j, points used by the predictor) of the previous step, for the corrector
    for i in range(n):
        m = output(x, i)
        x_eval = x
        if corrector and last is not None and last[0] not in disable_corrector:
            x = update(last[0], last[1], hist[-1][1], last[2] + [(lam[i], m)], i)
        hist.append((lam[i], m))
        if sch.sigma[i + 1] == 0:  # x0_jump, from the output at hand
            x = sch.alpha[i + 1] * (m if kind == "x0" else (x_eval - sch.sigma[i] * m) / sch.alpha[i])
            yield x
            continue
        if sch.alpha[i + 1] == 0:  # an inversion's last step, to pure noise
            x = to_pure_noise(x, m, sch, i)
            yield x
            continue
        p = final_order(min(order, len(hist)), i, n + final_corrector, lower_order_final)
        pts = hist[len(hist) - p:-1][::-1]  # the p - 1 most recent previous points, newest first
        last = (i, x, pts)
        x_new = update(i, x, m, pts, i + 1)
        x = _sde_step(ev, x, x_new, sch, i, eta, s_noise) if eta > 0 else x_new
        del hist[: max(0, len(hist) - order)]
        yield x
    if final_corrector and last is not None:
        m = output(x, n)
        yield x if last[0] in disable_corrector else update(last[0], last[1], hist[-1][1], last[2] + [(lam[n], m)], n)


def _sde_step(ev: Evaluator, x: Tensor, x_ode: Tensor, sch: Schedule, i: int, eta: float, s_noise: float) -> Tensor:
    """The noise-form SDE step from the ODE step x_ode (module docstring):
    base + (1 + eta)(x_ode - base) + s_noise sqrt(eta) sigma_s sqrt(e^{2h} - 1) z, base = (alpha_s/alpha_t) x_t."""
    base = (sch.alpha[i + 1] / sch.alpha[i]) * x
    out = torch.add(base, x_ode - base, alpha=1.0 + eta)
    std = s_noise * math.sqrt(eta) * sch.sigma[i + 1] * math.sqrt(math.expm1(2 * sch.h(i)))
    return out.add_(ev.path_noise(x, sch.times[i], sch.times[i + 1]), alpha=std) if std > 0 else out


def unipc_final_corrector(steps, n: int):
    """The states of a ``_multistep(..., final_corrector=True)`` run on n intervals as ``sample`` takes them, one per
    interval: the last predictor state is dropped for its correction (so the last step makes two network calls)."""
    for i, x in enumerate(steps):
        if i != n - 1:
            yield x


@register("dpmpp_2m", order=2, nfe_per_step=1, family="exponential")
def dpmpp_2m(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final=True, afs: bool = False,
             solver_type: str = "midpoint"):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction, 1 NFE/step.

    With r = h_{i-1}/h_i: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1},
    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D; the first step is DPM-Solver++(1).
    solver_type="taylor": the weight 1/2 of D becomes the exact h phi_2(-h)/(1 - e^{-h}) (diffusers' "heun"; also
    second order). afs=True: analytic first step (one NFE fewer; an approximation, see ``exponential.py``)."""
    return _multistep(ev, x, ts, 2, "bh2", False, lower_order_final, afs=afs, rule=_check_rule(ev, "taylor",
                                                                                                solver_type))


@register("dpmpp_3m", order=3, nfe_per_step=1, family="exponential")
def dpmpp_3m(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final=True, afs: bool = False,
             form: str = "taylor", solver_type: str = "midpoint"):
    """DPM-Solver++(3M) (Lu et al. 2022b; multistep third order, data prediction, 1 NFE/step):
    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} [h phi_1(-h) x0_i + h^2 phi_2(-h) D1 + h^3 phi_3(-h) D2]
    with D1, D2 the first and second l-derivatives at l_i of the quadratic through the last three x0's;
    warm-up: DPM-Solver++(1), then (2M) with ``solver_type``.

    form="published": the update of the DPM-Solver reference code and diffusers (algorithm_type="dpmsolver++",
    solver_order=3), which weights the D2 term by half (its "D2" is h^2 x0''/2 with coefficient h phi_3(-h)) and is
    second order; the default "taylor" is the exact Taylor form, third order.
    afs=True: analytic first step (one NFE fewer; an approximation, see ``exponential.py``)."""
    return _multistep(ev, x, ts, 3, "bh2", False, lower_order_final, afs=afs, rule=_check_rule(ev, form, solver_type))


@register("dpm_solver_2m", order=2, nfe_per_step=1, family="exponential")
def dpm_solver_2m(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final=True, afs: bool = False,
                  solver_type: str = "midpoint"):
    """Multistep DPM-Solver-2M in noise form (Lu et al. 2022b, Appendix; diffusers' DPMSolverMultistep with
    algorithm_type="dpmsolver"), 1 NFE/step. With r = h_{i-1}/h_i and D = (eps_i - eps_{i-1})/r:
        x_{i+1} = (alpha_{i+1}/alpha_i) x_i - sigma_{i+1} (e^{h_i} - 1) eps_i - sigma_{i+1} (e^{h_i} - 1)/2 D;
    the first step is DPM-Solver-1 (= DDIM). solver_type="taylor": (e^h - 1)/2 becomes h phi_2(h) (diffusers'
    "heun"). afs=True: analytic first step (an approximation)."""
    return _multistep(ev, x, ts, 2, "bh2", False, lower_order_final, noise=True, afs=afs,
                      rule=_check_rule(ev, "taylor", solver_type))


@register("dpm_solver_3m", order=3, nfe_per_step=1, family="exponential")
def dpm_solver_3m(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final=True, afs: bool = False,
                  form: str = "taylor", solver_type: str = "midpoint"):
    """Multistep DPM-Solver-3M in noise form (Lu et al. 2022b, Appendix), 1 NFE/step:
        x_{i+1} = (alpha_{i+1}/alpha_i) x_i - sigma_{i+1} [h phi_1(h) eps_i + h^2 phi_2(h) D1 + h^3 phi_3(h) D2],
    D1, D2 the first and second l-derivatives at l_i of the quadratic through the last three eps's; warm-up:
    DPM-Solver-1, then 2M with ``solver_type``. form="published": the D2 term at half its Taylor weight, as the
    reference code and diffusers (algorithm_type="dpmsolver", solver_order=3), second order; the default "taylor"
    is third order. afs=True: analytic first step."""
    return _multistep(ev, x, ts, 3, "bh2", False, lower_order_final, noise=True, afs=afs,
                      rule=_check_rule(ev, form, solver_type))


@register("dpm_solver_2m_sde", order=1, nfe_per_step=1, stochastic=True, family="sde")
def dpm_solver_2m_sde(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
                      solver_type: str = "midpoint", lower_order_final=True):
    """SDE-DPM-Solver-2M in noise form (Lu et al. 2022b, sec. 5; diffusers' algorithm_type="sde-dpmsolver"), 1 NFE/step:

        x_s = (alpha_s/alpha_t) x_t - (1 + eta) sigma_s [(e^h - 1) eps_t + c(h) D] + s_noise sqrt(eta) sigma_s
              sqrt(e^{2h} - 1) z,

    D = (eps_t - eps_prev) h/(l_t - l_prev), c = (e^h - 1)/2 ("midpoint") or h phi_2(h) ("taylor": diffusers'
    "heun"); the first step (and the last ones with ``lower_order_final``) first order; z the step's Brownian
    increment. eta = 0 is dpm_solver_2m. Strong order 1 (second order in the deterministic part). The noise form
    divides by alpha: it cannot start at alpha = 0, nor run an inversion."""
    eta, s_noise = option(ev, "eta", eta, 0.0, 1.0), option(ev, "s_noise", s_noise, 0.0)
    if float(ts[-1]) > float(ts[0]):
        raise refuse(ev, "samples the reverse SDE; an inversion (increasing ts) needs a deterministic solver")
    return _multistep(ev, x, ts, 2, "bh2", False, lower_order_final, noise=True,
                      rule=_check_rule(ev, "taylor", solver_type), sde=(eta, s_noise))


def unipc_steps(ev: Evaluator, x: Tensor, ts: Tensor, order: int, *, variant: str = "bh2", corrector: bool = True,
                lower_order_final=True, afs: bool = False, final_corrector: bool = False, predict_x0: bool = True,
                disable_corrector=()):
    """UniPC-``order``'s states on ``ts``; with ``final_corrector`` one more, the corrected last state (a pipeline
    calls the network once more for it: ``SdekitScheduler`` steps this generator)."""
    check_flag("predict_x0", predict_x0)
    return _multistep(ev, x, ts, order, variant, corrector, lower_order_final, noise=not predict_x0, afs=afs,
                      final_corrector=final_corrector, disable_corrector=_check_skips(ev, disable_corrector))


def _unipc(order):
    def unipc(ev: Evaluator, x: Tensor, ts: Tensor, *, variant: str = "bh2", corrector: bool = True,
              lower_order_final=True, afs: bool = False, final_corrector: bool = False, predict_x0: bool = True,
              disable_corrector=()):
        steps = unipc_steps(ev, x, ts, order, variant=variant, corrector=corrector, lower_order_final=lower_order_final,
                            afs=afs, final_corrector=final_corrector, predict_x0=predict_x0,
                            disable_corrector=disable_corrector)
        return unipc_final_corrector(steps, len(ts) - 1) if final_corrector is True else steps

    unipc.__doc__ = f"""UniPC-{order} (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), data
    prediction, 1 NFE/step: predictor UniP-{order} from the last {order} outputs, then corrector UniC that reuses the
    next step's network call (order +1). With r_m = (l_m - l_i)/h and D_m = (x0_m - x0_i)/r_m:
        x_{{i+1}} = (sigma_{{i+1}}/sigma_i) x_i + alpha_{{i+1}} (1 - e^{{-h}}) x0_i + alpha_{{i+1}} B(h) sum_m a_m D_m,
        sum_m a_m r_m^{{k-1}} = k! h phi_{{k+1}}(-h)/B(h)  (a = [1/2] for a single point),
    B(h) = h ("bh1") or 1 - e^{{-h}} ("bh2"){"; UniP-1 is DDIM" if order == 1 else ""}. corrector=False gives UniP
    alone; disable_corrector: the steps (0-based) whose correction is skipped. predict_x0=False: the noise form
    (eps for x0, the mirrored schedule, C(h) = e^h - 1 or h), which cannot start at alpha = 0. afs=True: analytic
    first step (one NFE fewer; an approximation). final_corrector=True: one more network call at the end of the
    grid corrects the last step too (n + 1 NFE for n steps; the orders of lower_order_final count it as a step), as
    diffusers' UniPC does with its zero-length last step (Karras sigmas, final_sigmas_type="sigma_min")."""
    return unipc


for _p in (1, 2, 3):
    register(f"unipc_{_p}", order=_p + 1, nfe_per_step=1, family="exponential")(_unipc(_p))
