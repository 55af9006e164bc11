"""DDPM ancestral sampling, the DDPM ``table`` grid, and diffusers' timestep spacings as grids.

On a ``DiscreteVPSDE`` step n (0-based) sits at t_n = (n + 1)/N with alpha(t_n)^2 = abar_n. The published
samplers visit a subset tau_K > ... > tau_1 of the table's steps and finish with abar = 1 (t = 0):

    DDIM (Song et al. 2021, eq. 12), prev = the next visited step:
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
        s = eta sqrt((1 - abar_prev)/(1 - abar_n)) sqrt(1 - abar_n/abar_prev)
    DDPM (Ho et al. 2020, eq. 6-7) = DDIM with eta = 1: posterior mean and variance
        beta~_n = (1 - abar_prev)/(1 - abar_n) beta_n,  beta_n = 1 - abar_n/abar_prev.

With lambda = log(abar/(1 - abar)) these are exactly the general update of ``ddim`` (s = c), so nothing
is re-derived here: the grids put the published time steps into a time grid and ``ddim``/``ddpm`` run
the shared update. The grids end at t = 0 (sigma = 0, abar_prev = 1), where ``sample`` takes the jump
x <- x0(x, t_1) with no noise, the published last step of DDPM and DDIM (diffusers' ``set_alpha_to_one``).

Grid ``table``: ``grid_options={"spacing": "leading" | "trailing" | "linspace"}`` (DDIM's spacings)::

    sample(model, x_T, "ddpm", steps=1000, grid="table", generator=seed)   # DDPM, 1000 NFE
    sample(model, x_T, "ddim", steps=50, grid="table")                     # DDIM, 50 NFE, eta=0

Grid ``diffusers``: the sigmas of a diffusers scheduler after ``set_timesteps(steps)``, as times of the
DiscreteVPSDE built from the same betas (its N is num_train_timesteps). Options, defaults as in diffusers:

    scheduler          ddim | ddpm | dpmsolver_multistep | dpmsolver_singlestep | unipc_multistep |
                       deis_multistep | euler | heun  (or the class name, e.g. "UniPCMultistepScheduler")
    spacing            linspace | leading | trailing  (timestep_spacing; ddim/ddpm default leading, the
                       others linspace; dpmsolver_singlestep has linspace only)
    final_sigmas_type  zero | sigma_min  (zero: the last step goes to t = 0, the x0 jump; sigma_min: to
                       t = 1/N; deis_multistep defaults to sigma_min, the only end it has in diffusers)
    karras             use_karras_sigmas: Karras et al.'s rho = 7 sigmas between the schedule's ends
    steps_offset       added to leading timesteps

``grid_options_from(scheduler)`` reads these from a diffusers scheduler object. ``steps`` = diffusers'
``num_inference_steps`` = the number of intervals, so the NFE of one-call solvers equals diffusers'.
How the times come out: an integer timestep tau is the time (tau + 1)/N exactly; a fractional one
(euler/heun ``linspace``) and a Karras sigma s are the time where sigma/alpha = s (diffusers interpolates
its sigma linearly in tau; DiscreteVPSDE interpolates log alpha, so the time is found from s, and a network
is called at that time, where diffusers calls it at a rounded or fractional timestep). Two differences:
a final sigma equal to the one before it (Karras sigmas or ``deis_multistep`` with ``sigma_min``; diffusers
then takes an empty step h = 0 that costs one call and changes nothing) is dropped, so that grid has
steps - 1 intervals; and DDIM in diffusers steps to tau - N // K whatever the spacing, which is the next
visited step only for ``leading``/``trailing``, so DDIM ``linspace`` is reproduced as the grid of visited
steps, not diffusers' DDIM update on it. Not covered: ``lambda_min_clipped``, exponential/beta/Lu-lambda
sigmas, flow sigmas, ``interpolation_type="log_linear"``, ``set_alpha_to_one=False`` other than as
``final_sigmas_type="sigma_min"``.

Which sdekit solver is which diffusers scheduler on such a grid (with the same eps network): DDIM -> ``ddim``,
DDPM -> ``ddpm``, Euler -> ``ddim`` (Euler in sigma/alpha is DDIM; sdekit's ``euler`` is Euler in t),
Heun -> ``heun``, DPMSolverMultistep (dpmsolver++, 2M, midpoint) -> ``dpmpp_2m``, UniPC (bh2, order p) ->
``unipc_p``. diffusers lowers the order of the last steps differently from sdekit's ``lower_order_final``
(which caps step i of n at order n - i on the grid the solver sees, i.e. without the final jump): see
``DIFFUSERS_ORDERS`` for the options that reproduce each.
"""
from __future__ import annotations

import numpy as np
import torch

from ..sde import DiscreteVPSDE
from . import grids
from .base import Evaluator
from .exponential import ddim_steps
from .registry import register

Tensor = torch.Tensor

__all__ = ["table_steps", "table_grid", "diffusers_grid", "diffusers_timesteps", "grid_options_from",
           "SCHEDULERS", "CLASS_NAMES", "DIFFUSERS_ORDERS", "ddpm"]

SPACINGS = ("leading", "trailing", "linspace")

# scheduler -> (how its timesteps are spaced, default spacing, default final sigma, karras offered, spacings)
#   "k+1": K + 1 points with the last (0) dropped (the multistep family); "k": K points (DDIM, Euler)
SCHEDULERS = {
    "ddim": ("k", "leading", "zero", False, SPACINGS),
    "ddpm": ("k", "leading", "zero", False, SPACINGS),
    "euler": ("k", "linspace", "zero", True, SPACINGS),
    "heun": ("k", "linspace", "zero", True, SPACINGS),
    "dpmsolver_multistep": ("k+1", "linspace", "zero", True, SPACINGS),
    "unipc_multistep": ("k+1", "linspace", "zero", True, SPACINGS),
    "deis_multistep": ("k+1", "linspace", "sigma_min", True, SPACINGS),
    "dpmsolver_singlestep": ("k+1", "linspace", "zero", True, ("linspace",)),
}
CLASS_NAMES = {  # diffusers' scheduler class name -> its short name here
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "EulerDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "heun", "DPMSolverMultistepScheduler": "dpmsolver_multistep",
    "UniPCMultistepScheduler": "unipc_multistep", "DEISMultistepScheduler": "deis_multistep",
    "DPMSolverSinglestepScheduler": "dpmsolver_singlestep",
}

# sdekit options that reproduce diffusers' order choices on the ``diffusers`` grid (measured in tests):
# DPMSolverMultistep 2M: final "zero" -> lower_order_final=False (diffusers' only lowered step is the jump);
#   "sigma_min" -> lower_order_final = (steps < 15). UniPC: "sigma_min" -> lower_order_final=True (both cap
#   step i at order K - i); "zero" -> lower_order_final=False reproduces unipc_2; unipc_3 has no option
#   (diffusers caps the step before the jump at order 2, sdekit either at 1 or not at all).
DIFFUSERS_ORDERS = {
    ("dpmsolver_multistep", "zero"): lambda steps: {"lower_order_final": False},
    ("dpmsolver_multistep", "sigma_min"): lambda steps: {"lower_order_final": steps < 15},
    ("unipc_multistep", "sigma_min"): lambda steps: {"lower_order_final": True},
    ("unipc_multistep", "zero"): lambda steps: {"lower_order_final": False},  # exact for order 2 only
}


def _scheduler_name(name: str) -> str:
    name = CLASS_NAMES.get(name, name)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown diffusers scheduler {name!r}; accepted: {', '.join(SCHEDULERS)} "
                         f"(or {', '.join(CLASS_NAMES)})")
    return name


def diffusers_timesteps(scheduler: str, n_train: int, steps: int, spacing: str | None = None,
                        steps_offset: int = 0) -> np.ndarray:
    """diffusers' ``timesteps`` (descending, float64, fractional for euler/heun ``linspace``) before any
    Karras conversion, for ``steps`` inference steps of an N = ``n_train`` table."""
    name = _scheduler_name(scheduler)
    count, default, _, _, spacings = SCHEDULERS[name]
    spacing = default if spacing is None else spacing
    if spacing not in spacings:
        raise ValueError(f"unknown spacing {spacing!r} for {name}; accepted: {', '.join(spacings)}")
    k, N = int(steps), int(n_train)
    if k != steps or not 1 <= k <= N - (count == "k+1"):
        raise ValueError(f"steps must be an integer in [1, {N - (count == 'k+1')}] for {name} on N = {N}; got {steps!r}")
    m = k + 1 if count == "k+1" else k  # points laid out before the drop
    if spacing == "linspace":
        tau = np.linspace(0, N - 1, m)
        if name not in ("euler", "heun"):
            tau = tau.round()
        tau = tau[::-1]
    elif spacing == "leading":
        tau = (np.arange(0, m) * (N // m)).round()[::-1] + steps_offset
    else:
        tau = np.arange(N, 0, -N / k).round() - 1
    if count == "k+1" and spacing != "trailing":
        tau = tau[:-1]
    # a fresh array: a reversed view of one element keeps its negative stride through ascontiguousarray, which
    # torch.from_numpy refuses (steps=1 gave diffusers' [999] as such a view)
    return np.array(tau, dtype=np.float64, copy=True)


def _karras(s_max: float, s_min: float, k: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, k)
    return (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


@grids.register("diffusers", own_ends=True)
def diffusers_grid(sde: DiscreteVPSDE, steps: int, scheduler: str = "dpmsolver_multistep",
                   spacing: str | None = None, final_sigmas_type: str | None = None, karras: bool = False,
                   steps_offset: int = 0) -> Tensor:
    """The times of a diffusers scheduler's sigmas after ``set_timesteps(steps)`` (see the module docstring)."""
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"the 'diffusers' grid needs a DiscreteVPSDE (the scheduler's beta table); "
                         f"got {type(sde).__name__}")
    name = _scheduler_name(scheduler)
    _, _, final_default, karras_offered, _ = SCHEDULERS[name]
    final = final_default if final_sigmas_type is None else final_sigmas_type
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min'; got {final!r}")
    if karras and not karras_offered:
        raise ValueError(f"{name} has no Karras sigmas in diffusers; karras=True is accepted by: "
                         + ", ".join(n for n, v in SCHEDULERS.items() if v[3]))
    tau = diffusers_timesteps(name, sde.N, steps, spacing, steps_offset)
    if tau.min() < 0 or tau.max() > sde.N - 1:
        raise ValueError(f"{name} timesteps {tau.tolist()} leave the table [0, {sde.N - 1}] (steps_offset?)")
    if karras and sde.zero_snr:
        raise ValueError("Karras sigmas run from sigma/alpha at the table's end, which is infinite on a zero-SNR table "
                         "(rescale_betas_zero_snr); diffusers' DPMSolverMultistep/UniPC/Euler hold abar there at 2^-24 "
                         "(sdekit.interop.sde_from_scheduler does so for their configs)")
    abar = sde.alphas_cumprod.numpy()
    with np.errstate(divide="ignore"):  # a zero-SNR table's last sigma/alpha is infinite
        table = np.sqrt((1 - abar) / abar)  # diffusers' sigma = sigma/alpha at each table step
    if karras:
        ends = (table[-1], table[0]) if name not in ("euler", "heun") else tuple(np.interp(tau[[0, -1]], np.arange(sde.N), table))
        s = torch.from_numpy(_karras(ends[0], ends[1], int(steps)))
        ts = sde.t_from_log_snr(-2 * torch.log(s))
    elif np.all(tau == np.round(tau)):
        ts = sde.step_time(torch.from_numpy(tau))
    else:
        s = torch.from_numpy(np.interp(tau, np.arange(sde.N), table))
        ts = sde.t_from_log_snr(-2 * torch.log(s))
    last = 0.0 if final == "zero" else float(sde.step_time(0))
    if abs(float(ts[-1]) - last) > 1e-12:
        ts = torch.cat([ts, torch.tensor([last], dtype=torch.float64)])
    return ts


def grid_options_from(scheduler) -> dict:
    """``grid_options`` for ``grid="diffusers"`` read from a diffusers scheduler object's config; raises for
    settings the grid does not reproduce."""
    cfg, name = scheduler.config, _scheduler_name(type(scheduler).__name__)
    unsupported = [k for k in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")
                   if cfg.get(k, False)]
    if cfg.get("interpolation_type", "linear") != "linear":
        unsupported.append(f"interpolation_type={cfg['interpolation_type']!r}")
    if np.isfinite(cfg.get("lambda_min_clipped", -np.inf)):
        unsupported.append(f"lambda_min_clipped={cfg['lambda_min_clipped']}")
    if unsupported:
        raise ValueError(f"the 'diffusers' grid does not reproduce {', '.join(unsupported)}")
    final = cfg.get("final_sigmas_type", SCHEDULERS[name][2])
    if name in ("ddim", "ddpm"):
        final = "zero" if cfg.get("set_alpha_to_one", True) else "sigma_min"
    out = {"scheduler": name, "final_sigmas_type": final, "karras": bool(cfg.get("use_karras_sigmas", False)),
           "steps_offset": int(cfg.get("steps_offset", 0))}
    if name != "dpmsolver_singlestep":
        out["spacing"] = cfg.get("timestep_spacing", SCHEDULERS[name][1])
    return out


def table_steps(n_train: int, steps: int, spacing: str = "leading") -> list:
    """The 0-based table steps tau visited by a ``steps``-step sampler on an N = ``n_train`` table, descending."""
    if int(steps) != steps or not (1 <= steps <= n_train):
        raise ValueError(f"steps must be an integer in [1, N] = [1, {n_train}]; got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")
    tau = [int(v) for v in diffusers_timesteps("ddim", n_train, steps, spacing)]
    if len(set(tau)) != steps or tau != sorted(tau, reverse=True):
        raise ValueError(f"spacing {spacing!r} repeats table steps for steps={steps} of N={n_train}")
    return tau


@grids.register("table", own_ends=True)
def table_grid(sde: DiscreteVPSDE, steps: int, spacing: str = "leading", **_) -> Tensor:
    """Grid of a published discrete sampler: t_tau = (tau + 1)/N for the visited steps, then t = 0.

    ``steps`` intervals = ``steps`` network calls (the last one the jump to t = 0)."""
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"the 'table' grid needs a DiscreteVPSDE (a DDPM beta table); got {type(sde).__name__}")
    tau = torch.tensor(table_steps(sde.N, steps, spacing), dtype=torch.float64)
    return torch.cat([sde.step_time(tau), torch.zeros(1, dtype=torch.float64)])


@register("ddpm", order=1, nfe_per_step=1, stochastic=True, family="discrete")
def ddpm(ev: Evaluator, x: Tensor, ts: Tensor):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; skipped steps as in Nichol & Dhariwal 2021):
    x_prev ~ N(mu(x_n, x0), beta~_n I), beta~_n = (1 - abar_prev)/(1 - abar_n) (1 - abar_n/abar_prev), which
    is ``ddim`` with eta = 1. On ``grid="table"`` this is the published sampler; on any other grid of any
    linear SDE it is the same posterior step (lambda in place of the table)."""
    return ddim_steps(ev, x, ts, 1.0)
