"""ER-SDE-Solver: the extended reverse-time SDE and its solvers (Cui et al. 2023, "Elucidating the solution space of
extended reverse-time SDEs for diffusion models", arXiv:2309.06169).

The family.  For x = alpha x0 + sigma eps write y = x/alpha and s = sigma/alpha (the VE coordinates of
``sde_samplers.py``; the paper's lambda). The extended reverse-time SDEs

    dx = [f x - (1 + k(t)^2)/2 g^2 score] dt + k(t) g dw_bar

all have the marginals p_t; in y every one is the VE SDE dy = -(1 + k^2)/2 d(s^2) score_y + k sqrt(d(s^2)) dw_bar
(d(s^2)/dt = g^2/alpha^2), so one solution serves VE (alpha = 1), VP, sub-VP and the flow paths (rectified flow in
its VP form). The paper parametrises the free k by a *noise scale function* Phi(s) with Phi'/Phi = (1 + k^2)/s,
which needs psi(s) = s/Phi(s) non-increasing; Phi(s) = s is the probability-flow ODE, Phi(s) = s^2 the reverse SDE
(k = 1), Phi(s) = s^p the k^2 = p - 1 family, and the paper's choice (its "SDE_5") Phi(s) = s (e^{s^0.3} + 10) is
near the ODE at small s and adds noise at large s.

Exact solution (the paper's Prop. 4 for VE and its VP form, in one line).  From s_a to s_b < s_a,

    y_b = (Phi(s_b)/Phi(s_a)) y_a + Phi(s_b) int_{s_b}^{s_a} Phi'(u)/Phi(u)^2 x0(u) du
          + sqrt(s_b^2 - (s_a Phi(s_b)/Phi(s_a))^2) z,

i.e. in x, with q = psi(s_a)/psi(s_b) in [0, 1] and r = Phi(s_b)/Phi(s_a) = q s_b/s_a,

    x_b = (sigma_b/sigma_a) q x_a + alpha_b [(1 - r) x0_a + sum_{k>=1} I_k x0^{(k)}(s_a)] + sigma_b sqrt(1 - q^2) z,
    I_k = (s_b - s_a)^k/k! + Phi(s_b) int_{s_b}^{s_a} (u - s_a)^{k-1}/(k-1)! du/Phi(u)     (by parts),

x0^{(k)} the derivatives of x0 in s. Phi = s^{1+eta} gives q = e^{-eta h}, r = e^{-(1 + eta) h} (h the step in
l = -log s): ER-SDE-Solver-1 is then SDE-DPM-Solver++(1) (``sa_solver`` with order 1), and with Phi = s it is DDIM.

ER-SDE-Solver-k (the paper's Alg. 1-3) keeps k terms, the derivatives from the last k model outputs (multistep,
1 NFE/step). Here the derivatives are those of the interpolating polynomial in s at s_a: with u_m = (s_m - s_a)/(s_b
- s_a) of the points used, the weights b_m of sum_m b_m x0_m solve sum_m b_m u_m^k/k! = I_k/(s_b - s_a)^k, k < K.
(The official code uses backward divided differences, whose first derivative is that of the midpoint, first order
accurate, so its third-order solver is second order in the drift; this one is the Taylor form.) The integrals of
1/Phi are Gauss-Legendre sums in log s (the integrand s/Phi(s) = psi(s) is bounded and smooth there), computed for
every step before the first network call.

Noise.  z is the step's standardised Brownian increment of the row's path (``Evaluator.path_noise``), so
sample(noise="path") refines one path as the grid refines, and noise="step" draws fresh. The noise is additive in
y: every order converges pathwise with strong order 1 (the one-Gaussian approximation of the stochastic integral,
as in ``sde_samplers.py``); the order k is that of the drift's quadrature (exactly the solver's order on the ODE,
noise_scale="ode").

Pure noise.  A step from alpha_a = 0 (a flow path at t = T: s_a = inf) takes the limit: r = 0, q = psi(inf)/psi(s_b)
(psi(inf) = lim s/Phi(s): 0 for "er_sde", "sde" and powers p > 1, 1 for "ode"), so x_b = (sigma_b/sigma_a) q x_a +
alpha_b x0_a + sigma_b sqrt(1 - q^2) z (DDIM or the DDPM posterior from pure noise), and the point at s = inf drops
out of later steps' histories (its Lagrange weight vanishes as its node runs off). A callable noise scale has no
known limit there and is refused at alpha = 0, by name, before any network call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from .base import Evaluator, SolverError
from .exponential import Schedule, check_flag, final_order
from .registry import register

Tensor = torch.Tensor

__all__ = ["NoiseScale", "NOISE_SCALES", "noise_scale", "er_sde_coefficients"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)  # on [-1, 1]; exact for these smooth integrands


@dataclass(frozen=True)
class NoiseScale:
    """A noise scale function Phi by psi(s) = s/Phi(s) (non-increasing, positive; float64 tensor in and out) and
    psi_inf = lim_{s -> inf} psi(s) (None: unknown, a start at alpha = 0 is then refused)."""

    name: str
    psi: Callable[[Tensor], Tensor]
    psi_inf: Optional[float]


def _power(p: float) -> NoiseScale:
    return NoiseScale(f"s^{p:g}", lambda s: s.pow(1.0 - p), 1.0 if p == 1.0 else 0.0)


NOISE_SCALES = {
    "er_sde": NoiseScale("er_sde", lambda s: 1.0 / (torch.exp(s.pow(0.3)) + 10.0), 0.0),  # the paper's SDE_5
    "ode": _power(1.0),  # Phi = s: the probability-flow ODE
    "sde": _power(2.0),  # Phi = s^2: the reverse SDE (k = 1)
}


def noise_scale(value: Union[str, float, Callable]) -> NoiseScale:
    """A ``NoiseScale`` from a name in NOISE_SCALES, an exponent p >= 1 (Phi = s^p, k^2 = p - 1) or a callable Phi
    (float64 tensor of s > 0 -> Phi(s) > 0 with Phi(s)/s non-decreasing; checked on the grid)."""
    if isinstance(value, str):
        if value not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {', '.join(NOISE_SCALES)}, an exponent p >= 1 or a callable "
                             f"Phi(s); got {value!r}")
        return NOISE_SCALES[value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        p = float(value)
        if not (math.isfinite(p) and p >= 1.0):
            raise ValueError(f"noise_scale as an exponent p (Phi = s^p) needs a finite p >= 1; got {value!r}")
        return _power(p)
    if callable(value):
        fn = value
        return NoiseScale(getattr(fn, "__name__", "callable"), lambda s: s / fn(s), None)
    raise ValueError(f"noise_scale must be a name ({', '.join(NOISE_SCALES)}), an exponent p >= 1 or a callable "
                     f"Phi(s); got {value!r}")


def _psi(ns: NoiseScale, s: Tensor) -> Tensor:
    out = ns.psi(s.to(torch.float64))
    out = torch.as_tensor(out, dtype=torch.float64)
    if out.shape != s.shape or not bool(torch.isfinite(out).all()) or bool((out <= 0).any()):
        raise ValueError(f"noise_scale {ns.name!r} must give a finite Phi(s) > 0 at every s > 0 of the grid")
    return out


def _integrals(ns: NoiseScale, spans: List[tuple], K: int) -> List[List[float]]:
    """For each step (s_a, s_b, psi(s_a), psi(s_b)): J_k = I_k / (s_b - s_a)^k, k = 0..K-1 (module docstring):
    J_0 = 1 - r and, for k >= 1,
    J_k = 1/k! + (s_b/(psi(s_b) d)) int_{log s_b}^{log s_a} v^{k-1}/(k-1)! psi(e^w) dw, v = (e^w - s_a)/d,
    d = s_b - s_a (Gauss-Legendre in w = log s; every step's nodes in one tensor)."""
    out = [[1.0 - (psi_a / psi_b) * (s_b / s_a)] for s_a, s_b, psi_a, psi_b in spans]
    if K == 1 or not spans:
        return out
    lo = torch.tensor([math.log(s_b) for _, s_b, _, _ in spans], dtype=torch.float64)[:, None]
    hi = torch.tensor([math.log(s_a) for s_a, _, _, _ in spans], dtype=torch.float64)[:, None]
    nodes, weights = torch.from_numpy(_NODES), torch.from_numpy(_WEIGHTS)
    w = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    s = torch.exp(w)
    psi = _psi(ns, s)
    s_a = torch.tensor([sp[0] for sp in spans], dtype=torch.float64)[:, None]
    s_b = torch.tensor([sp[1] for sp in spans], dtype=torch.float64)[:, None]
    d = s_b - s_a
    v = (s - s_a) / d
    qw = 0.5 * (hi - lo) * weights
    for k in range(1, K):
        sums = (qw * psi * v.pow(k - 1)).sum(dim=1).tolist()
        for row, (sa, sb, _, psi_b), total in zip(out, spans, sums):
            row.append(1.0 / math.factorial(k) + sb / (psi_b * (sb - sa)) * (total / math.factorial(k - 1)))
    return out


def _weights(us_list: List[List[float]], J_list: List[List[float]]) -> List[List[float]]:
    """For each step, b with sum_m b_m u_m^k/k! = J_k, k < len(us): the quadrature weights of the points at u_m
    (u_0 = 0); the systems of each size solved in one batched call."""
    out: List[List[float]] = [[J[0]] if len(us) == 1 else [] for us, J in zip(us_list, J_list)]
    by_size: dict = {}
    for idx, us in enumerate(us_list):
        if len(us) > 1:
            by_size.setdefault(len(us), []).append(idx)
    for K, idxs in by_size.items():
        V = torch.tensor([[[u**k / math.factorial(k) for k in range(K)] for u in us_list[i]] for i in idxs],
                         dtype=torch.float64)
        rhs = torch.tensor([J_list[i] for i in idxs], dtype=torch.float64)
        for i, b in zip(idxs, torch.linalg.solve(V.transpose(-1, -2), rhs).tolist()):
            out[i] = b
    return out


def er_sde_coefficients(sde, ts: Tensor, order: int, ns: NoiseScale, lower_order_final: bool = True):
    """Per step i: (ratio, [(j, b_j)], noise_std / sigma_b), so that
    x_{i+1} = ratio x_i + alpha_{i+1} sum_j b_j x0_j + s_noise noise_std z, j indexing the grid points whose model
    outputs are used (i, i-1, ...). All of it from the schedule, before any network call, in a few tensor calls for
    the whole grid (psi at every grid point, the Gauss-Legendre sums of every step, the weight systems of each size
    solved together); a noise scale whose psi increases on the grid (negative noise variance) is refused."""
    sch = Schedule(sde, ts)
    n = len(ts) - 1
    s = [sg / a if a > 0 else math.inf for a, sg in zip(sch.alpha, sch.sigma)]
    if s[0] == math.inf and ns.psi_inf is None:
        raise ValueError(f"noise_scale {ns.name!r} (a callable) has no known limit s/Phi(s) as s -> inf, which a start "
                         f"at alpha = 0 (t = {float(ts[0]):.6g}) needs: pass a named noise_scale or an exponent, or "
                         "start below that time")
    finite = [m for m in range(n + 1) if math.isfinite(s[m])]
    psi = dict(zip(finite, _psi(ns, torch.tensor([s[m] for m in finite], dtype=torch.float64)).tolist()))
    steps = []  # (i, q, points used, u's) of the steps from a finite s_a
    out: list = [None] * n
    for i in range(n):
        s_a, s_b = s[i], s[i + 1]
        if s_a == math.inf:
            q = float(ns.psi_inf) / psi[i + 1]  # type: ignore[arg-type]
            out[i] = ((sch.sigma[i + 1] / sch.sigma[i]) * q, [(i, 1.0)], math.sqrt(max(1.0 - q * q, 0.0)))
            continue
        q = psi[i] / psi[i + 1]
        if q > 1.0 + 1e-9:
            raise ValueError(f"noise_scale {ns.name!r} needs s/Phi(s) non-increasing (Phi'/Phi >= 1/s); it increases "
                             f"between s = {s_b:.6g} and {s_a:.6g} (step {i})")
        K = final_order(order, i, n, lower_order_final)
        pts = [j for j in range(i, max(i - K, -1), -1) if math.isfinite(s[j])]  # newest first
        steps.append((i, min(q, 1.0), pts, [(s[j] - s_a) / (s_b - s_a) for j in pts]))
    J = _integrals(ns, [(s[i], s[i + 1], psi[i], psi[i + 1]) for i, _, _, _ in steps],
                   max((len(pts) for _, _, pts, _ in steps), default=1))
    bs = _weights([us for _, _, _, us in steps], [Jk[:len(us)] for Jk, (_, _, _, us) in zip(J, steps)])
    for (i, q, pts, _), b in zip(steps, bs):
        out[i] = ((sch.sigma[i + 1] / sch.sigma[i]) * q, list(zip(pts, b)), math.sqrt(max(1.0 - q * q, 0.0)))
    return sch, out


def _er_sde(ev: Evaluator, x: Tensor, ts: Tensor, order: int, noise_scale_, s_noise, lower_order_final: bool):
    name = f"er_sde_{order}"
    ns = noise_scale(noise_scale_)
    s_noise = float(s_noise) if isinstance(s_noise, (int, float)) and not isinstance(s_noise, bool) else math.nan
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"{name} needs a finite s_noise >= 0")
    check_flag("lower_order_final", lower_order_final)
    if float(ts[-1]) > float(ts[0]):
        raise SolverError(f"{name} samples the reverse SDE; an inversion (increasing ts) needs a deterministic solver")
    sch, coefs = er_sde_coefficients(ev.sde, ts, order, ns, lower_order_final)
    times = sch.times
    if s_noise > 0:
        ev.plan_path_noise(x, [(times[i], times[i + 1]) for i, (_, _, std) in enumerate(coefs) if std > 0])
    outputs: dict = {}
    for i, (ratio, weights, std) in enumerate(coefs):
        outputs[i] = ev.x0(x, times[i])
        for j in [j for j in outputs if j <= i - order]:
            del outputs[j]
        drift = ratio * x
        for j, b in weights:
            drift = drift + (sch.alpha[i + 1] * b) * outputs[j]
        noise_std = s_noise * sch.sigma[i + 1] * std
        x = (drift + noise_std * ev.path_noise(x, times[i], times[i + 1])) if noise_std > 0 else drift
        yield x


def _doc(order: int) -> str:
    how = {1: "the first-order step (the paper's Alg. 1)",
           2: "the last two outputs: one derivative term (Alg. 2; first order on the first step)",
           3: "the last three outputs: two derivative terms (Alg. 3; warm-up with orders 1, 2)"}[order]
    return f"""ER-SDE-Solver-{order} (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDEs
    for diffusion models"), data prediction, multistep, 1 NFE/step, with {how}:

        x_b = (sigma_b/sigma_a) q x_a + alpha_b sum_m b_m x0_m + s_noise sigma_b sqrt(1 - q^2) z,
        q = psi(s_a)/psi(s_b),  psi(s) = s/Phi(s),  s = sigma/alpha,

    the b_m integrating the polynomial in s through the outputs used against the exact kernel (module docstring; b = 1 - r
    for one point). noise_scale: Phi by name ("er_sde": s (e^{{s^0.3}} + 10), the paper's; "ode": s; "sde": s^2), an
    exponent p >= 1 (Phi = s^p) or a callable Phi(s). z: the Brownian path's increment over the step. Strong order 1;
    order {order} in the drift (and on the ODE, noise_scale="ode"). ``lower_order_final``: the last steps use at most
    n - i outputs (``final_order``). Starts at alpha = 0 (flow paths) by the limit (module docstring)."""


def _make(order: int):
    def er_sde(ev: Evaluator, x: Tensor, ts: Tensor, *, noise_scale: Union[str, float, Callable] = "er_sde",
               s_noise: float = 1.0, lower_order_final: bool = True):
        return _er_sde(ev, x, ts, order, noise_scale, s_noise, lower_order_final)

    er_sde.__name__ = f"er_sde_{order}"
    er_sde.__doc__ = _doc(order)
    return er_sde


for _k in (1, 2, 3):
    register(f"er_sde_{_k}", order=1, nfe_per_step=1, stochastic=True, family="sde")(_make(_k))
