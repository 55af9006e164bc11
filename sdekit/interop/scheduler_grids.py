"""Where a diffusers-configured ``SdekitScheduler`` puts its grid: a DDPM table's times for num_inference_steps,
custom timesteps or sigmas (``grid="diffusers"``, or diffusers' own class for the sigma families sdekit does not lay
out), and FlowMatchEulerDiscreteScheduler's sigmas for flow-matching configs.

The grid is ``grid="diffusers"`` laid out as the diffusers scheduler ``grid_scheduler`` would (default: the
one whose algorithm the solver is: dpmsolver_multistep for dpmpp_*/dpm_solver_*m, unipc_multistep for unipc_*,
ddim, ddpm; dpmsolver_multistep otherwise), with the config's timestep_spacing, steps_offset,
final_sigmas_type (set_alpha_to_one for the ddim/ddpm layouts) and use_karras_sigmas; exponential, beta and
Lu-lambda sigmas, lambda_min_clipped and as many steps as the table has are the sigmas of diffusers' own
``grid_scheduler`` class for the config (the network then gets the fractional timestep of each sigma, where
diffusers rounds it; a repeated sigma, diffusers' zero-length step, is dropped). A grid that ends at
sigma = 0 ends with sdekit's x0 jump from the last timestep, as ``sdekit.sample`` does. The network sees the
timestep t N - 1 of each grid time: diffusers' integer timesteps on integer grids, fractional ones for Karras
sigmas (where diffusers rounds them). The state is the VP state (init_noise_sigma = 1, scale_model_input is
the identity); half-precision pipelines are stepped in float32 and handed back in their dtype.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch

from ..sde import DiscreteVPSDE
from ..solvers.discrete import CLASS_NAMES, SCHEDULERS, diffusers_grid
from ..solvers.grids import check_grid
from .diffusers_models import times_from_sigmas

Tensor = torch.Tensor


def table_grid(config, grid_options: dict, table: DiscreteVPSDE, num_inference_steps, timesteps, sigmas) -> Tensor:
    """The times of a DDPM-table scheduler's grid for one of num_inference_steps, timesteps or sigmas."""
    given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of num_inference_steps, timesteps, sigmas")
    if num_inference_steps is not None and from_diffusers(config, grid_options, table, int(num_inference_steps)):
        return diffusers_sigmas_grid(config, grid_options, table, int(num_inference_steps))
    if num_inference_steps is not None:
        return diffusers_grid(table, int(num_inference_steps), **grid_options)
    if sigmas is not None:  # EulerDiscreteScheduler's convention: the last sigma is the end, not a call
        return times_from_sigmas(table, sigmas)
    calls = table.step_time(torch.as_tensor(timesteps, dtype=torch.float64))
    end = 0.0 if grid_options["final_sigmas_type"] == "zero" else float(table.step_time(0))
    return torch.cat([calls, torch.tensor([end], dtype=torch.float64)]) if float(calls[-1]) > end else calls


def flow_grid(config, sde, num_inference_steps, timesteps, sigmas, mu) -> tuple[Tensor, Tensor]:
    """FlowMatchEulerDiscreteScheduler's sigmas (the times, float64 of its float32 values) and timesteps for this
    config and these arguments; its own checks (mu with dynamic shifting, lengths) apply."""
    import diffusers

    cls = diffusers.FlowMatchEulerDiscreteScheduler
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    ref: Any = cls(**{k: v for k, v in config.items() if k in accepted})
    ref.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps)
    ts = ref.sigmas.to(torch.float64).cpu()
    check_grid(sde, ts)
    return ts, ref.timesteps.to(torch.float32)


def from_diffusers(config, grid_options: dict, table: DiscreteVPSDE, steps) -> bool:
    """Whether the grid comes from diffusers' own scheduler: sigma families ``grid="diffusers"`` does not lay
    out, or as many steps as the table has (diffusers then drops the repeated rounded timesteps)."""
    return bool(config["use_exponential_sigmas"] or config["use_beta_sigmas"] or config["use_lu_lambdas"]
                or math.isfinite(config["lambda_min_clipped"])
                or (SCHEDULERS[str(grid_options["scheduler"])][0] == "k+1" and steps >= table.N))


def diffusers_sigmas_grid(config, grid_options: dict, table: DiscreteVPSDE, steps: int) -> Tensor:
    """The times of the sigmas diffusers' ``grid_scheduler`` class sets for this config (``times_from_sigmas``;
    a repeated final sigma, diffusers' zero-length last step, is dropped as in ``grid="diffusers"``)."""
    import diffusers

    layout = str(grid_options["scheduler"])
    name = {v: k for k, v in CLASS_NAMES.items()}[layout]
    cls = getattr(diffusers, name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    cfg = {k: v for k, v in config.items() if k in accepted and not k.startswith("_") and v is not None}
    if "final_sigmas_type" in accepted:
        cfg["final_sigmas_type"] = grid_options["final_sigmas_type"]
    try:
        ref = cls(**cfg)
        ref.set_timesteps(steps)
    except (ValueError, ImportError) as err:  # e.g. beta sigmas need scipy
        raise ValueError(f"{name} cannot lay out {steps} steps for this config: {err}") from err
    ts = times_from_sigmas(table, ref.sigmas) if getattr(ref, "sigmas", None) is not None else \
        torch.cat([table.step_time(torch.as_tensor(ref.timesteps, dtype=torch.float64)),
                   torch.zeros(1, dtype=torch.float64)])
    tau = ts * table.N - 1  # float32 sigmas of table steps: snap to the exact step times
    ts = torch.where((tau - tau.round()).abs() < 1e-3, table.step_time(tau.round()), ts)
    ts = torch.where(ts < table.step_time(0) / 2, torch.zeros_like(ts), ts)
    keep = torch.cat([torch.ones(1, dtype=torch.bool), ts[1:] < ts[:-1]])
    return ts[keep]



def table_layout(layout: str, final_sigmas_type, use_karras_sigmas, steps_offset, timestep_spacing,
                  set_alpha_to_one) -> dict:
    """``grid="diffusers"`` options of a DDPM-table grid laid out as diffusers' ``layout`` class."""
    if layout not in SCHEDULERS:
        raise ValueError(f"unknown grid_scheduler {layout!r}; accepted: {', '.join(SCHEDULERS)} (EDM configs: "
                         "edm_euler, edm_dpmsolver_multistep)")
    final = ("zero" if set_alpha_to_one else "sigma_min") if layout in ("ddim", "ddpm") else \
        "sigma_min" if layout == "deis_multistep" else final_sigmas_type  # DEIS's only end in diffusers
    options = {"scheduler": layout, "final_sigmas_type": final, "karras": bool(use_karras_sigmas),
               "steps_offset": int(steps_offset), "spacing": timestep_spacing}
    if layout == "dpmsolver_singlestep":
        options.pop("spacing")
    return options


def ddim_step_targets(table: DiscreteVPSDE, ts: Tensor, num_inference_steps: int) -> Optional[Tensor]:
    """Where DDIMScheduler and DDPMScheduler step to from each timestep tau: tau - N // K (prev_timestep), the end
    of the grid below 0. That is the next timestep for 'leading' spacing (and 'trailing' when K divides N), but
    not otherwise (e.g. 'trailing' with 6 steps: 999 -> 833 while the next call is at 832; 'linspace'): then
    ``ddim``/``ddpm`` take each step from its own timestep to that target, as those schedulers do, and the next
    step starts from the next timestep. None where the targets are the grid."""
    calls = ts[:-1]
    tau = (calls * table.N - 1).round()
    prev = tau - table.N // int(num_inference_steps)
    targets = torch.where(prev >= 0, table.step_time(prev.clamp(min=0)), ts[-1].expand_as(prev))
    return None if bool(torch.equal(targets, ts[1:])) else targets


def fixed_grid(fixed_ts: Tensor, num_inference_steps, timesteps, sigmas) -> Tensor:
    """A copy of the scheduler's ``grid_ts`` when set_timesteps asks for its number of steps; else ValueError."""
    steps = len(fixed_ts) - 1
    if timesteps is not None or sigmas is not None:
        raise ValueError("this scheduler's grid is grid_ts; set_timesteps takes num_inference_steps only (drop "
                         "grid_ts to pass timesteps or sigmas)")
    if num_inference_steps is not None and int(num_inference_steps) != steps:
        raise ValueError(f"grid_ts has {steps} steps (network calls); the pipeline asked for "
                         f"num_inference_steps={num_inference_steps}: pass num_inference_steps={steps}")
    return fixed_ts.clone()
