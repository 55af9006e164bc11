"""Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, "DPM-Solver", Sec. 4.2 and Algorithm 6 in App. C):
step-size control in the half log-SNR l = log(alpha/sigma) with an embedded pair of single-step solvers.

One attempt from (x_t, l_t) with step h computes, from the same network calls (``dpm_solver_step``),
x_low = DPM-Solver-(k-1) and x_high = DPM-Solver-k (k = 2: r1 = 1/2, 2 NFE; k = 3: r1 = 1/3, r2 = 2/3, 3 NFE),
and the per-row error norm

    E = max over rows b of  RMS_{entries of b} (x_high - x_low) / (atol + rtol max(|x_high|, |x_t|)).

E <= 1 accepts x_high (local extrapolation); either way the next step is h min(5, max(0.2, 0.9 E^{-1/k})): the
``StepController`` of the integration core (``sdekit.solvers.controller``) with factor_max 5, shrinking after an
accepted step too.
Each row meets its own tolerance: the max over rows lets no row hide behind the batch mean.

The solve visits every time of the grid ``ts`` exactly (the step is shortened to land on it) and yields the
state there; an interval that ends at sigma = 0 is the ``x0_jump``. The step size carries over from one
interval to the next; the first is ``h_init``. A solve that would need more than ``max_nfe`` network calls
raises ``StepBudgetError``. Accepted and rejected attempts are counted in ``Solution.stats``. Increasing
grids (inversion) step with h < 0.
"""
from __future__ import annotations

import math

import torch

from .base import Evaluator
from .controller import StepController, check_tolerances, row_error_ratio
from .exponential import Schedule, check_finite_start, dpm_solver_step, x0_jump
from .registry import register

Tensor = torch.Tensor

__all__ = ["row_error_norm"]

_PAIRS = {2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}  # higher order k: the r's of DPM-Solver-k


def row_error_norm(err: Tensor, x: Tensor, x_prev: Tensor, rtol, atol) -> float:
    """max over rows of the RMS over that row's entries of err / (atol + rtol max(|x|, |x_prev|)); NaN -> inf.
    The integration core's per-row norm (``sdekit.solvers.integrate.row_error_ratio``) on flattened rows."""
    B = err.shape[0]
    flat = err.reshape(B, -1)
    return row_error_ratio(flat, x_prev.reshape(B, -1), x.reshape(B, -1), rtol, atol, [(0, flat.shape[1])])


def _controller(order: int, rtol, atol, max_nfe, h_init) -> StepController:
    """Algorithm 6's controller: factor in [0.2, 5], shrinking after an accepted step too."""
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, torch.Tensor):
            raise ValueError(f"{name} must be a finite number >= 0; got a tensor")
    check_tolerances(rtol, atol)
    if not (isinstance(h_init, (int, float)) and math.isfinite(h_init) and h_init > 0):
        raise ValueError(f"h_init must be a finite number > 0 (a step in half log-SNR); got {h_init!r}")
    return StepController(rtol, atol, order, max_nfe, factor_max=5.0, accepted_factor_min=0.2)


def _adaptive(ev: Evaluator, x: Tensor, ts: Tensor, order: int, rtol: float, atol: float, max_nfe: int,
              h_init: float):
    control = _controller(order, rtol, atol, max_nfe, h_init)
    rs = _PAIRS[order]
    sch = Schedule(ev.sde, ts)
    check_finite_start(ev, sch, f"adaptive DPM-Solver-{order - 1}{order} (noise form)")
    stats = ev.stats
    stats.update(accepted=0, rejected=0)
    h_try = float(h_init)
    for i in range(len(ts) - 1):
        if sch.sigma[i + 1] == 0:
            x = x0_jump(ev, x, sch, i)
        else:
            x, h_try = _interval(ev, x, ts, sch, i, rs, control, h_try)
        yield x


def _interval(ev: Evaluator, x: Tensor, ts: Tensor, sch: Schedule, i: int, rs: list, control: StepController,
              h_try: float) -> tuple[Tensor, float]:
    """Adaptive steps from ts[i] to ts[i + 1] (landing there); returns the state and the next proposal."""
    order, stats = len(rs) + 1, ev.stats
    t, a_t, l_t, l_end = ts[i], sch.alpha[i], sch.l[i], sch.l[i + 1]
    sign = 1.0 if l_end > l_t else -1.0
    while True:
        remaining = l_end - l_t
        landing = h_try >= abs(remaining) * (1 - 1e-10)
        h = float(remaining) if landing else sign * h_try
        control.reserve(ev.nfe, order, lambda: (
            f"adaptive DPM-Solver-{order - 1}{order} on its way to t = {float(ts[i + 1]):.6g} "
            f"({stats['accepted']} steps accepted, {stats['rejected']} rejected)"))
        points = sch.at_ls([l_t + r * h for r in rs] + ([] if landing else [l_t + h]))
        t_s, a_s, s_s = (ts[i + 1], sch.alpha[i + 1], sch.sigma[i + 1]) if landing else points[-1]
        low, high = dpm_solver_step(ev, x, t, a_t, a_s, s_s, h, rs, points)
        accepted, h_try = control.adapt(h_try, h, row_error_norm(high - low, high, x, control.rtol, control.atol),
                                        landing)
        if not accepted:
            stats["rejected"] += 1
            continue
        stats["accepted"] += 1
        x, t, a_t, l_t = high, t_s, a_s, l_t + h  # type: ignore[assignment]
        if landing:
            return x, h_try


def _register(order):
    def dpm_adaptive(ev: Evaluator, x: Tensor, ts: Tensor, *, rtol: float = 0.05, atol: float = 0.0078,
                     max_nfe: int = 10_000, h_init: float = 0.05):
        return _adaptive(ev, x, ts, order, rtol, atol, max_nfe, h_init)

    dpm_adaptive.__name__ = f"dpm_adaptive_{order - 1}{order}"
    dpm_adaptive.__doc__ = f"""Adaptive DPM-Solver-{order - 1}{order} (Lu et al. 2022, Sec. 4.2, Algorithm 6): the
    embedded pair DPM-Solver-{order - 1} / DPM-Solver-{order} ({order} NFE per attempt) with step-size control in
    the half log-SNR; see the module docstring. rtol, atol: per-entry tolerances, every row meeting its own
    (the defaults are the paper's 0.05 and 0.0078 for images in [-1, 1]); max_nfe: the budget (StepBudgetError
    past it); h_init: the first step in half log-SNR. Yields the state at every grid time."""
    register(f"dpm_adaptive_{order - 1}{order}", order=order, nfe_per_step=order, adaptive=True)(dpm_adaptive)


for _k in (2, 3):
    _register(_k)
