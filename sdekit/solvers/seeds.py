"""SEEDS: stochastic explicit exponential derivative-free solvers (Gonzalez et al. 2023, "SEEDS: Exponential SDE
Solvers for Fast High-Quality Sampling from Diffusion Models", NeurIPS 2023, arXiv:2305.14267), data prediction.

Notation as in ``sde_samplers.py``: l = log(alpha/sigma), h = l_s - l_t > 0 for a step t -> s, x0 the data
prediction, eta in [0, 1] the noise level of the reverse family (eta = 1: the reverse SDE, SEEDS' setting), and
h' = (1 + eta) h. The exact solution of the family from t to s,

    x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s int_0^h (1 + eta) e^{-(1 + eta)(h - u)} x0(l_t + u) du + N_{t,s},

has Gaussian noise N_{t,s} = sigma_s int e^{-eta(l_s - l)} sqrt(2 eta) dB(l) of variance sigma_s^2 (1 - e^{-2 eta h}).
SEEDS are stochastic Runge-Kutta methods on it (stochastic exponential time differencing): stages at
l_j = l_t + c_j h, each stage an update of the same form over [l_t, l_j] with the outputs already at hand, and no
derivative of the network (the polynomial through the stage outputs is integrated against the exact kernel,
``exp_weights``):

    SEEDS-1: x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-h'}) x0_t + N_{t,s}       (1 NFE; SDE-DPM-Solver-1)
    SEEDS-2: u = stage at c = r (first order);  x_s = ... + alpha_s [b_0 x0_t + b_1 x0(u, t_r)] + N_{t,s}   (2 NFE)
    SEEDS-3: u_1 at c = 1/3 (first order), u_2 at c = 2/3 from x0_t and x0(u_1) (second order),
             x_s from x0_t and x0(u_2) (the paper's scheme "3a", DPM-Solver-3's structure)              (3 NFE)

SEEDS-2's final weights are the paper's default ("2a", solver_type="midpoint": b_1 = (1 - e^{-h'})/(2r)) or the
exact kernel weights of the line through both points ("taylor"); with eta = 0 SEEDS-2 (midpoint, r = 1/2) is
DPM-Solver++(2S) and SEEDS-3 is DPM-Solver-3 in data form.

Noise.  The stage values need the noise N at every stage time, jointly: N is an Ornstein-Uhlenbeck-like process in l,
and its values at the stage times l_t < l_1 < ... < l_s are generated exactly from independent increments of the
row's Brownian path over the sub-intervals, z_j = ``Evaluator.path_noise`` over [t_j, t_{j+1}]:

    N_{j+1} = (sigma_{j+1}/sigma_j) e^{-eta (l_{j+1} - l_j)} N_j + sigma_{j+1} sqrt(1 - e^{-2 eta (l_{j+1} - l_j)}) z_j,

so the stages see the noise that the step adds, the step's own noise has the exact variance, and a finer grid refines
the same path (sample(noise="path"); noise="step" draws them fresh). Strong order 1 (additive noise), as every
sampler of ``sde_samplers.py``; the k of SEEDS-k is the order of the drift (exactly the order with eta = 0).

Pure noise.  A step from alpha_t = 0 (a flow path at t = T, l_t = -inf, h = inf) places every stage at l = -inf,
t = T itself, where the model's output does not depend on the state (x_T carries no information about x0): every
stage output equals x0_t and the step is its limit, SEEDS-1's from pure noise (ratio 0 for eta > 0, sigma_s/sigma_t
for eta = 0; one network call).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .base import Evaluator, SolverError
from .exponential import Schedule
from .registry import register
from .exp_weights import ExpWeights, exp_weights

Tensor = torch.Tensor

__all__ = ["seeds_step"]

_STAGES = {1: [], 2: None, 3: [1.0 / 3.0, 2.0 / 3.0]}  # SEEDS-2: [r]


def _real(name: str, solver: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(v) and lo <= v <= hi) or (lo_open and v == lo):
        raise ValueError(f"{solver} needs {name} in {'(' if lo_open else '['}{lo}, {hi}]; got {value!r}")
    return v


def seeds_step(ev: Evaluator, x: Tensor, sch: Schedule, i: int, cs: List[float], eta: float, s_noise: float,
               midpoint: bool, stages: Optional[list] = None, table: Optional[ExpWeights] = None) -> Tensor:
    """One SEEDS step i with stages at fractions ``cs`` of h (module docstring): len(cs) + 1 network calls.
    ``midpoint``: the last update's two-point weights are SEEDS-2's "2a" ones instead of the kernel's. ``stages``:
    the stages' [(t, alpha, sigma)] if already known (``_stage_times``); ``table``: the solve's ``ExpWeights``
    (``_weight_table``), else the weights are solved here."""
    t, s = sch.times[i], sch.times[i + 1]
    a_s, sig_t, sig_s = sch.alpha[i + 1], sch.sigma[i], sch.sigma[i + 1]
    x0 = ev.x0(x, t)
    if sch.alpha[i] == 0.0:  # from pure noise: every stage sits at t = T (module docstring)
        cs = []
    h = sch.h(i)
    if not cs:
        stages = []
    elif stages is None:
        stages = sch.at_ls([sch.mid(i, c) for c in cs])
    # nodes of the step: (t, alpha, sigma, fraction) for t, the stages and s
    nodes = [(t, sch.alpha[i], sig_t, 0.0)] + [(tj, aj, sj, c) for (tj, aj, sj), c in zip(stages, cs)] \
        + [(s, a_s, sig_s, 1.0)]

    def decay(c0: float, c1: float) -> float:  # e^{-eta (l_1 - l_0)}, 0 * inf = 0 for eta = 0
        return 1.0 if eta == 0.0 else math.exp(-eta * (c1 - c0) * h)

    noise: Optional[Tensor] = None  # N at the current node
    outputs = [x0]
    for j in range(1, len(nodes)):
        tj, aj, sj, c = nodes[j]
        if eta > 0 and s_noise > 0:
            dk = decay(nodes[j - 1][3], c)
            z = ev.path_noise(x, nodes[j - 1][0], tj)
            fresh = (s_noise * sj * math.sqrt(max(1.0 - dk * dk, 0.0))) * z
            noise = fresh if noise is None else (sj / nodes[j - 1][2]) * dk * noise + fresh
        ratio = (sj / sig_t) * decay(0.0, c)
        hc = c * h
        if j == 1:  # first order from x0_t
            pts, us = [x0], [0.0]
        else:  # x0_t and the output of the previous stage, at fraction nodes[j - 1][3] of this sub-step
            pts, us = [x0, outputs[-1]], [0.0, nodes[j - 1][3] / c]
        e = -math.expm1(-(1.0 + eta) * hc)  # 1 - e^{-h'}: the first-order weight (1 when h = inf)
        if len(pts) == 1:
            weights = [e]
        elif midpoint:
            weights = [e * (1.0 - 0.5 / us[1]), e * 0.5 / us[1]]
        else:
            weights = exp_weights(us, hc, eta) if table is None else table(us, hc)
        xj = ratio * x
        for b, m in zip(weights, pts):
            xj = xj + (aj * b) * m
        if noise is not None:
            xj = xj + noise
        if j == len(nodes) - 1:
            return xj
        outputs.append(ev.x0(xj, tj))
    raise AssertionError("unreachable")


def _seeds(ev: Evaluator, x: Tensor, ts: Tensor, order: int, eta, s_noise, r: float = 0.5,
           solver_type: str = "midpoint"):
    name = f"seeds_{order}"
    eta = _real("eta", name, eta, 0.0, 1.0)
    s_noise = _real("s_noise", name, s_noise, 0.0, math.inf)
    if solver_type not in ("midpoint", "taylor"):
        raise ValueError(f"{name} needs solver_type 'midpoint' (the paper's 2a) or 'taylor'; got {solver_type!r}")
    cs = _STAGES[order]
    if cs is None:
        cs = [_real("r", name, r, 0.0, 1.0, lo_open=True)]
        if cs[0] == 1.0:
            raise ValueError(f"{name} needs r in (0, 1): its stage lies inside the step; got {r!r}")
    if float(ts[-1]) > float(ts[0]):
        raise SolverError(f"{name} samples the reverse SDE; an inversion (increasing ts) needs a deterministic solver")
    sch = Schedule(ev.sde, ts)
    stages = _stage_times(sch, cs)
    if eta > 0 and s_noise > 0:  # the path increments every step will use, in order: t -> stages -> s
        times = ts.tolist()
        nodes = [[times[i]] + [st[0] for st in stages[i]] + [times[i + 1]] for i in range(len(times) - 1)]
        ev.plan_path_noise(x, [(ns[j - 1], ns[j]) for ns in nodes for j in range(1, len(ns))])
    midpoint = order == 2 and solver_type == "midpoint"
    table = _weight_table(sch, cs, eta, midpoint)
    for i in range(len(ts) - 1):
        x = seeds_step(ev, x, sch, i, cs, eta, s_noise, midpoint, stages[i], table)
        yield x


def _weight_table(sch: Schedule, cs: List[float], eta: float, midpoint: bool) -> ExpWeights:
    """The kernel weights of every two-point update of the solve (``seeds_step``: the stage j >= 2 at fraction c
    of step i, through x0_t and the previous stage's output at u = c_prev/c, over c h), solved together."""
    table = ExpWeights(eta)
    if not midpoint:
        fractions = [0.0] + list(cs) + [1.0]
        for i in range(len(sch.ts) - 1):
            if sch.alpha[i] == 0.0 or not cs:
                continue
            h = sch.h(i)
            for j in range(2, len(fractions)):
                table.want([0.0, fractions[j - 1] / fractions[j]], fractions[j] * h)
    return table.solve()


def _stage_times(sch: Schedule, cs: List[float]) -> list:
    """Per step, the stages' [(t, alpha, sigma)] at fractions cs of its log-SNR step (none from alpha = 0), all in
    one ``Schedule.at_ls`` call."""
    n = len(sch.ts) - 1
    inner = [i for i in range(n) if sch.alpha[i] != 0.0 and cs]
    flat = sch.at_ls([sch.mid(i, c) for i in inner for c in cs]) if inner else []
    out: list = [[] for _ in range(n)]
    for k, i in enumerate(inner):
        out[i] = flat[k * len(cs):(k + 1) * len(cs)]
    return out


@register("seeds_1", order=1, nfe_per_step=1, stochastic=True, family="sde")
def seeds_1(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0):
    """SEEDS-1 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
    Models"), data prediction, 1 NFE/step: the exact step of the reverse family with x0 held at x0_t,

        x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) x0(x_t, t)
              + s_noise sigma_s sqrt(1 - e^{-2 eta h}) z,

    z the path's increment over the step (SDE-DPM-Solver++(1); eta = 0: DDIM). Strong order 1."""
    return _seeds(ev, x, ts, 1, eta, s_noise)


@register("seeds_2", order=1, nfe_per_step=2, stochastic=True, family="sde")
def seeds_2(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
            solver_type: str = "midpoint"):
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
    Models"), data prediction, 2 NFE/step: with l_r = l_t + r h, h' = (1 + eta) h and N the noise process (module
    docstring, N_r and N_s built from the path's increments over [t, t_r] and [t_r, s]),

        u   = (sigma_r/sigma_t) e^{-eta r h} x_t + alpha_r (1 - e^{-r h'}) x0_t + N_r,
        x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s [b_0 x0_t + b_1 x0(u, t_r)] + N_s,

    b_1 = (1 - e^{-h'})/(2r), b_0 = 1 - e^{-h'} - b_1 (solver_type "midpoint", the paper's 2a) or the exact kernel
    weights of the line through (0, x0_t), (r, x0(u)) ("taylor"). Second order in the drift; strong order 1."""
    return _seeds(ev, x, ts, 2, eta, s_noise, r, solver_type)


@register("seeds_3", order=1, nfe_per_step=3, stochastic=True, family="sde")
def seeds_3(ev: Evaluator, x: Tensor, ts: Tensor, *, eta: float = 1.0, s_noise: float = 1.0):
    """SEEDS-3 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
    Models", scheme 3a), data prediction, 3 NFE/step, stages at l_t + h/3 and l_t + 2h/3:

        u_1 = (sigma_1/sigma_t) e^{-eta h/3} x_t + alpha_1 (1 - e^{-h'/3}) x0_t + N_1,
        u_2 = (sigma_2/sigma_t) e^{-2 eta h/3} x_t + alpha_2 [b'_0 x0_t + b'_1 x0(u_1)] + N_2,
        x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s [b_0 x0_t + b_1 x0(u_2)] + N_s,

    b', b the exact kernel weights (``exp_weights``) of the lines through the outputs used, N the noise process at the
    stage times (module docstring). Third order in the drift (eta = 0: DPM-Solver-3 in data form); strong order 1."""
    return _seeds(ev, x, ts, 3, eta, s_noise)
