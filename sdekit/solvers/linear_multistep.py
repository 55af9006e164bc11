"""Linear multistep solvers on the noise prediction: Adams-Bashforth in s = sigma/alpha (iPNDM, LMS) and the
exponential integrator with eps extrapolated in t (DEIS-tAB).

In y = x/alpha and s = sigma/alpha the probability-flow ODE reads dy/ds = eps(alpha y, t(s)) (Karras et al.
2022, eq. 4 with the scaling removed; Zhang & Chen 2023, eq. 13), so one step is exactly

    y_{i+1} = y_i + int_{s_i}^{s_{i+1}} eps ds,   i.e.   x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j c_ij eps_{i-j},

once eps is replaced by the polynomial through the last k outputs eps_i, eps_{i-1}, ...:
c_ij = int_{s_i}^{s_{i+1}} ell_j ds, ell_j the Lagrange basis through the k nodes. The solvers differ only in
the variable of the polynomial and in how c_ij is obtained (``_eps_multistep`` runs them all):

  ipndm    polynomial in the step index: the constant Adams-Bashforth weights times (s_{i+1} - s_i)
  ipndm_v  polynomial in s: variable-step Adams-Bashforth (= lms with order 4)
  lms      polynomial in s, any order (k-diffusion's and diffusers' LMS)
  deis_k   polynomial in t (DEIS "tAB"): c_ij = int_{l_i}^{l_{i+1}} ell_j(t(l)) (-e^{-l}) dl with l = log(alpha/sigma)
           = -log s, by Gauss-Legendre quadrature in l (float64)
  deis_logrho_k  polynomial in log rho = log s = -l (DEIS "rhoAB" in log rho, diffusers' DEISMultistepScheduler):
           c_ij = int_{l_i}^{l_{i+1}} ell_j(l) (-e^{-l}) dl, ell_j the Lagrange basis in l, by the same quadrature

Each starts with k = 1 (DDIM) and raises k by one per step up to its order. Every update is valid for
increasing grids (inversion: s grows) and for a last step to s = 0 (the polynomial integrated down to s = 0;
DEIS, an exponential integrator, ends there with ``x0_jump`` like the other exponential solvers).
``afs=True`` replaces the first network call by ``gaussian_prediction`` (analytic first step, an approximation;
see exponential.py).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Sequence

import numpy as np
import torch

from .base import Evaluator, refuse
from .exponential import Schedule, check_finite_start, check_flag, gaussian_prediction, x0_jump
from .registry import register

Tensor = torch.Tensor

__all__ = ["lagrange_integrals", "ADAMS_BASHFORTH"]

# constant-step Adams-Bashforth weights, newest output first (Hairer, Norsett & Wanner, Table III.1.1)
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int):
    u, w = np.polynomial.legendre.leggauss(n)
    return u.tolist(), w.tolist()


def _gauss_points(a: float, b: float, n: int):
    """Gauss-Legendre points and weights for int_a^b (a > b allowed: the weights are then negative)."""
    u, w = _gauss_legendre(n)
    half, mid = 0.5 * (b - a), 0.5 * (a + b)
    return torch.tensor([mid + half * v for v in u], dtype=torch.float64), torch.tensor(w, dtype=torch.float64) * half


def lagrange_integrals(nodes: Sequence[float], points: Tensor, weights: Tensor) -> List[float]:
    """sum_q weights_q ell_j(points_q) for each Lagrange basis polynomial ell_j through ``nodes``: the weights of
    the interpolating polynomial under a quadrature rule (exact for the Adams-Bashforth integrals)."""
    out = []
    for j, nj in enumerate(nodes):
        ell = torch.ones_like(points)
        for m, nm in enumerate(nodes):
            if m != j:
                ell = ell * (points - nm) / (nj - nm)
        out.append(float((weights * ell).sum()))
    return out


# -- the weights c_ij of each rule: (sch, s, times, i, k) -> [c_i0, ..., c_i,k-1], newest output first --------
def _fixed_ab(sch: Schedule, s, times, i: int, k: int) -> List[float]:
    return [(s[i + 1] - s[i]) * c for c in ADAMS_BASHFORTH[k]]


def _ab_in_s(sch: Schedule, s, times, i: int, k: int) -> List[float]:
    points, weights = _gauss_points(s[i], s[i + 1], 4)  # exact up to degree 7
    return lagrange_integrals([s[i - j] for j in range(k)], points, weights)


def _tab_in_t(sch: Schedule, s, times, i: int, k: int, quadrature: int = 16) -> List[float]:
    if k == 1:  # int ds, exactly
        return [s[i + 1] - s[i]]
    lq, wq = _gauss_points(sch.l[i], sch.l[i + 1], quadrature)
    tq = sch.sde.t_from_log_snr(2 * lq)
    return lagrange_integrals([times[i - j] for j in range(k)], tq, -torch.exp(-lq) * wq)


def _ab_in_log_rho(sch: Schedule, s, times, i: int, k: int, quadrature: int = 16) -> List[float]:
    if k == 1:  # int ds, exactly
        return [s[i + 1] - s[i]]
    lq, wq = _gauss_points(sch.l[i], sch.l[i + 1], quadrature)
    return lagrange_integrals([sch.l[i - j] for j in range(k)], lq, -torch.exp(-lq) * wq)


def _eps_multistep(ev: Evaluator, x: Tensor, ts: Tensor, order: int, weights: Callable, *, afs: bool,
                   lower_order_final: bool = False, jump_at_zero: bool = False):
    """x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j c_ij eps_{i-j}, with k = min(order, i + 1) outputs
    (and k <= n - i with ``lower_order_final``); ``weights`` gives c_ij (module docstring)."""
    check_flag("afs", afs)
    check_flag("lower_order_final", lower_order_final)
    sch = Schedule(ev.sde, ts)
    check_finite_start(ev, sch, "an Adams step in s = sigma/alpha")
    s = [sg / a for a, sg in zip(sch.alpha, sch.sigma)]
    times = ts.tolist()
    n = len(times) - 1
    hist: List[Tensor] = []  # eps_i, eps_{i-1}, ... newest first
    for i in range(n):
        if jump_at_zero and sch.sigma[i + 1] == 0:
            x = x0_jump(ev, x, sch, i)
            yield x
            continue
        if afs and i == 0:
            eps = gaussian_prediction(x, sch.alpha[0], sch.sigma[0], "eps")
        else:
            eps = ev.eps(x, times[i])
        hist.insert(0, eps)
        del hist[order:]
        k = min(len(hist), n - i) if lower_order_final else len(hist)
        c = weights(sch, s, times, i, k)
        a_s = sch.alpha[i + 1]
        x = (a_s / sch.alpha[i]) * x + sum((a_s * cj) * e for cj, e in zip(c, hist))
        yield x


def _check_ab_order(ev: Evaluator, order):
    if not isinstance(order, int) or isinstance(order, bool) or order not in ADAMS_BASHFORTH:
        raise refuse(ev, f"needs a valid order (order must be one of {sorted(ADAMS_BASHFORTH)}); got {order!r}")


@register("ipndm", order=2, nfe_per_step=1)
def ipndm(ev: Evaluator, x: Tensor, ts: Tensor, *, afs: bool = False):
    """iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", Sec. 4 and
    App.; used by Zhou et al. 2024, "AMED"): Adams-Bashforth with the constant-step weights on dy/ds = eps,
        x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} (s_{i+1} - s_i) sum_j b_kj eps_{i-j},
    b_k = [1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24 with k = min(i + 1, 4), 1 NFE/step.
    Order 4 only on a grid uniform in s = sigma/alpha; the constant weights ignore the step ratios, so on any
    other smooth grid (logsnr, karras, quadratic) the global order is 2 (measured), which is what the
    registry says; ipndm_v keeps order 4 on every grid. afs=True: analytic first step (an approximation)."""
    return _eps_multistep(ev, x, ts, 4, _fixed_ab, afs=afs)


@register("ipndm_v", order=4, nfe_per_step=1)
def ipndm_v(ev: Evaluator, x: Tensor, ts: Tensor, *, afs: bool = False):
    """iPNDM with variable-step Adams-Bashforth weights (Zhou et al. 2024, "AMED", App.; Zhang & Chen 2023):
        x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j c_ij eps_{i-j},  c_ij = int_{s_i}^{s_{i+1}} ell_j(s) ds,
    ell_j the Lagrange basis in s through s_i, ..., s_{i-k+1}, k = min(i + 1, 4); 1 NFE/step, order 4 on any
    smooth grid. The weights are the exact Lagrange integrals, so this is the same method as ``lms`` with
    order 4. afs=True: analytic first step (an approximation)."""
    return _eps_multistep(ev, x, ts, 4, _ab_in_s, afs=afs)


@register("lms", order=4, nfe_per_step=1)
def lms(ev: Evaluator, x: Tensor, ts: Tensor, *, order: int = 4, afs: bool = False):
    """Linear multistep (variable-step Adams-Bashforth) in s = sigma/alpha on dy/ds = eps, as k-diffusion's
    ``sample_lms`` and diffusers' LMSDiscreteScheduler (Karras et al. 2022's sigma variable):
        x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j c_ij eps_{i-j},  c_ij = int_{s_i}^{s_{i+1}} ell_j(s) ds,
    ell_j the Lagrange basis in s through the last k = min(i + 1, order) nodes; 1 NFE/step, global order
    ``order`` (1..4; the registry records the default). afs=True: analytic first step (an approximation)."""
    _check_ab_order(ev, order)
    return _eps_multistep(ev, x, ts, order, _ab_in_s, afs=afs)


def _deis(order):
    def deis(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final: bool = True, afs: bool = False):
        return _eps_multistep(ev, x, ts, order, _tab_in_t, afs=afs, lower_order_final=lower_order_final,
                              jump_at_zero=True)

    deis.__name__ = f"deis_{order}"
    deis.__doc__ = f"""DEIS-tAB with {order} points (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
    Exponential Integrator", eq. 14-15; the paper's tAB{order - 1}. Not diffusers' DEISMultistepScheduler, which
    extrapolates in log rho: that is ``deis_logrho_{order}``): the exponential integrator in s = sigma/alpha with eps
    extrapolated by the polynomial in t through the last k = min(i + 1, {order}) outputs,
        x_{{i+1}} = (alpha_{{i+1}}/alpha_i) x_i + alpha_{{i+1}} sum_j c_ij eps_{{i-j}},
        c_ij = int_{{t_i}}^{{t_{{i+1}}}} ell_j(t) ds(t) = int_{{l_i}}^{{l_{{i+1}}}} ell_j(t(l)) (-e^{{-l}}) dl,
    by 16-point Gauss-Legendre in l = log(alpha/sigma) in float64; 1 NFE/step, global order {order}.
    ``lower_order_final``: step i uses at most n - i points (as the exponential multistep solvers here; needs
    False for the asymptotic order). afs=True: analytic first step (an approximation)."""
    return deis


for _k in (2, 3, 4):
    register(f"deis_{_k}", order=_k, nfe_per_step=1, family="exponential")(_deis(_k))


def _deis_logrho(order):
    def deis_logrho(ev: Evaluator, x: Tensor, ts: Tensor, *, lower_order_final: bool = True, afs: bool = False):
        return _eps_multistep(ev, x, ts, order, _ab_in_log_rho, afs=afs, lower_order_final=lower_order_final,
                              jump_at_zero=True)

    deis_logrho.__name__ = f"deis_logrho_{order}"
    deis_logrho.__doc__ = f"""DEIS with eps extrapolated in log rho (Zhang & Chen 2023, "Fast Sampling of Diffusion
    Models with Exponential Integrator", Sec. 4: the exponential integrator of eq. 13 in rho = sigma/alpha, with the
    polynomial taken in log rho; diffusers' DEISMultistepScheduler, solver_type="logrho", solver_order={order}):
        x_{{i+1}} = (alpha_{{i+1}}/alpha_i) x_i + alpha_{{i+1}} sum_j c_ij eps_{{i-j}},
        c_ij = int_{{rho_i}}^{{rho_{{i+1}}}} ell_j(log rho) d rho = int_{{l_i}}^{{l_{{i+1}}}} ell_j(l) (-e^{{-l}}) dl,
    ell_j the Lagrange basis through the last k = min(i + 1, {order}) nodes l = log(alpha/sigma) = -log rho, by
    16-point Gauss-Legendre in l (float64; diffusers writes the same integrals in closed form); 1 NFE/step, global
    order {order}. ``deis_{order}`` is the other DEIS of the paper (tAB: the polynomial in t); the two agree to the
    order of the method, not per step. ``lower_order_final``: step i uses at most n - i points (diffusers lowers the
    last two steps below 15 steps only: pass ``lower_order_final=steps < 15`` to take its steps). afs=True: analytic
    first step (an approximation)."""
    return deis_logrho


for _k in (2, 3):
    register(f"deis_logrho_{_k}", order=_k, nfe_per_step=1, family="exponential")(_deis_logrho(_k))
