"""DDPM ancestral sampling and DDIM on a discrete beta table: special cases of ``exponential.ddim``.

On a ``DiscreteVPSDE`` step n (0-based) sits at t_n = (n + 1)/N with alpha(t_n)^2 = abar_n. The published
samplers visit a subset tau_K > ... > tau_1 of the table's steps and finish with abar = 1 (t = 0):

    DDIM (Song et al. 2021, eq. 12), prev = the next visited step:
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
        s = eta sqrt((1 - abar_prev)/(1 - abar_n)) sqrt(1 - abar_n/abar_prev)
    DDPM (Ho et al. 2020, eq. 6-7) = DDIM with eta = 1: posterior mean and variance
        beta~_n = (1 - abar_prev)/(1 - abar_n) beta_n,  beta_n = 1 - abar_n/abar_prev.

With lambda = log(abar/(1 - abar)) these are exactly the general update of ``ddim`` (s = c), so nothing
is re-derived here: the ``table`` grid puts the published time steps into a grid and ``ddim``/``ddpm``
run the shared update. The grid ends at t = 0 (sigma = 0, abar_prev = 1), where the update is the jump
x <- x0(x, t_1) with no noise, which is the published last step of both DDPM and DDIM
(diffusers' ``set_alpha_to_one=True``). So::

    sample(model, x_T, "ddpm", steps=1000, grid="table", generator=seed)   # DDPM, 1000 NFE
    sample(model, x_T, "ddim", steps=50, grid="table")                     # DDIM, 50 NFE, eta=0

Spacings: "leading" (DDIM: tau = 0, N//K, 2 N//K, ...), "trailing" (round(N - i N/K) - 1),
"linspace" (round(linspace(0, N - 1, K))); choose with ``grid_options={"spacing": ...}``.
"""
from __future__ import annotations

import torch

from ..sde import DiscreteVPSDE
from . import grids
from .base import Evaluator
from .exponential import _ddim_steps
from .registry import register

Tensor = torch.Tensor

__all__ = ["table_steps", "table_grid", "ddpm"]

SPACINGS = ("leading", "trailing", "linspace")


def table_steps(n_train: int, steps: int, spacing: str = "leading") -> list:
    """The 0-based table steps tau visited by a ``steps``-step sampler on an N = ``n_train`` table, descending."""
    if int(steps) != steps or not (1 <= steps <= n_train):
        raise ValueError(f"steps must be an integer in [1, N] = [1, {n_train}]; got {steps!r}")
    steps = int(steps)
    if spacing == "leading":
        ratio = n_train // steps
        tau = [k * ratio for k in range(steps)]
    elif spacing == "trailing":
        ratio = n_train / steps
        tau = [int(round(n_train - k * ratio)) - 1 for k in range(steps)][::-1]
    elif spacing == "linspace":
        tau = torch.linspace(0, n_train - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")
    tau = sorted(set(tau), reverse=True)
    if len(tau) != steps:
        raise ValueError(f"spacing {spacing!r} repeats table steps for steps={steps} of N={n_train}")
    return tau


def table_grid(sde: DiscreteVPSDE, steps: int, t_start=None, t_end=None, spacing: str = "leading", **_) -> Tensor:
    """Grid of a published discrete sampler: t_tau = (tau + 1)/N for the visited steps, then t = 0.

    ``steps`` intervals = ``steps`` network calls. The times come from the table alone: t_start and
    t_end (which ``make_grid`` always passes) are ignored."""
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"the 'table' grid needs a DiscreteVPSDE (a DDPM beta table); got {type(sde).__name__}")
    tau = torch.tensor(table_steps(sde.N, steps, spacing), dtype=torch.float64)
    return torch.cat([sde.step_time(tau), torch.zeros(1, dtype=torch.float64)])


if "table" not in grids.GRIDS:
    grids.GRIDS["table"] = table_grid


@register("ddpm", order=1, nfe_per_step=1, stochastic=True, family="discrete")
def ddpm(ev: Evaluator, x: Tensor, ts: Tensor):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; skipped steps as in Nichol & Dhariwal 2021):
    x_prev ~ N(mu(x_n, x0), beta~_n I), beta~_n = (1 - abar_prev)/(1 - abar_n) (1 - abar_n/abar_prev), which
    is ``ddim`` with eta = 1. On ``grid="table"`` this is the published sampler; on any other grid of any
    linear SDE it is the same posterior step (lambda in place of the table)."""
    return _ddim_steps(ev, x, ts, 1.0)
