"""EDM-preconditioned diffusers schedulers (EDMEulerScheduler, EDMDPMSolverMultistepScheduler) in ``SdekitScheduler``.

EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Table 1): the
pipeline's sample is x = x0 + sigma n, which is ``EDMSDE`` (time is sigma) with sigma_min, sigma_max of the config,
so the sample is the sdekit state as it is. The network F is called on c_in(sigma) x at the timestep c_noise(sigma)
and the denoiser is

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),      c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = +- sigma sd / sqrt(sigma^2 + sd^2),              c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma)/4

(sd = sigma_data; c_out's sign: + for prediction_type "epsilon", EDM's F, - for "v_prediction", as diffusers'
``precondition_outputs``). sdekit's solvers step the x0 prediction D on EDMSDE. The grid is diffusers' for
``num_inference_steps`` K: sigma_schedule "karras" (sigma_i = (smax^(1/rho) + i/(K-1) (smin^(1/rho) - smax^(1/rho)))^rho,
Karras et al. eq. 5) or "exponential" (log-uniform from sigma_max to sigma_min), in diffusers' float32, then the
final sigma: 0 ("zero": the last step is sdekit's x0 jump) or sigma_min ("sigma_min": diffusers' last step goes
from sigma_min to sigma_min and moves nothing; sdekit's solve ends at sigma_min and that call returns the sample,
or feeds UniPC's final corrector). ``init_noise_sigma`` is diffusers' sqrt(sigma_max^2 + 1).

Config fields: model (sigma_min, sigma_max, sigma_data, rho, prediction_type, num_train_timesteps: the length of
diffusers' training grid, read by nothing here), grid (sigma_schedule, final_sigmas_type), x0 thresholding
(thresholding, dynamic_thresholding_ratio, sample_max_value: EDMDPMSolverMultistep's), and the solver fields of
EDMDPMSolverMultistep (solver_order, algorithm_type, solver_type, lower_order_final, euler_at_final) that
``solver="diffusers"`` reads (``EDM_EQUIVALENTS``). Refused by name: prediction_type "sample" (diffusers' EDM
schedulers raise for it at their first step), any beta-table or flow-matching setting, and every unknown field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..sde import LinearSDE
from .denoisers import EDMSDE
from .diffusers_config import positive_number, same_setting, threshold_setting

Tensor = torch.Tensor

__all__ = ["EDMSpec", "EDM_CLASSES", "EDM_DEFAULTS", "EDM_EQUIVALENTS", "is_edm_config", "check_edm_config",
           "edm_sigmas", "edm_grid", "c_noise", "c_in", "EDMPreconditioned", "precondition", "edm_equivalent"]

EDM_CLASSES = {"EDMEulerScheduler": "edm_euler", "EDMDPMSolverMultistepScheduler": "edm_dpmsolver_multistep"}
EDM_DEFAULTS = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "sigma_schedule": "karras", "rho": 7.0}
EDM_ONLY = ("sigma_data", "sigma_schedule", "rho")  # fields no beta-table or flow-matching scheduler has
EDM_PREDICTIONS = {"epsilon": 1.0, "v_prediction": -1.0}  # the sign of c_out
EDM_FIELDS = {"sigma_min", "sigma_max", "sigma_data", "sigma_schedule", "rho", "num_train_timesteps",
              "prediction_type", "final_sigmas_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
              "solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
              "solver", "solver_options", "grid_scheduler", "grid_ts"}  # the last four: SdekitScheduler's own


@dataclass(frozen=True)
class EDMSpec:
    """An EDM scheduler config, checked (module docstring). ``sign``: c_out's sign; ``threshold``: None or
    ``ThresholdedModel``'s (ratio, max_value); ``layout``: whose grid (edm_euler or edm_dpmsolver_multistep)."""

    sigma_min: float
    sigma_max: float
    sigma_data: float
    schedule: str
    rho: float
    sign: float
    final: str
    threshold: Optional[tuple]
    layout: str = "edm_euler"

    def sde(self) -> EDMSDE:
        return EDMSDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)


def is_edm_config(cfg: dict) -> bool:
    """Whether ``cfg`` is an EDM scheduler's: its ``_class_name``, an EDM grid_scheduler, or a field only EDM
    schedulers have (sigma_data, sigma_schedule, rho) set (an in-memory config names no class)."""
    return str(cfg.get("_class_name") or "") in EDM_CLASSES or cfg.get("grid_scheduler") in EDM_CLASSES.values() \
        or any(cfg.get(k) is not None for k in EDM_ONLY)


def _value_problems(cfg: dict) -> list:
    problems = []
    lo, hi = cfg["sigma_min"], cfg["sigma_max"]
    if not (positive_number(lo) and positive_number(hi) and lo < hi):
        problems.append(f"sigma_min={lo!r}, sigma_max={hi!r} (accepted: 0 < sigma_min < sigma_max, finite)")
    for key in ("sigma_data", "rho"):
        if not positive_number(cfg[key]):
            problems.append(f"{key}={cfg[key]!r} (accepted: a finite number > 0)")
    if cfg["sigma_schedule"] not in ("karras", "exponential"):
        problems.append(f"sigma_schedule={cfg['sigma_schedule']!r} (accepted: 'karras', 'exponential')")
    ptype = cfg.get("prediction_type", "epsilon")
    if ptype == "sample":
        problems.append("prediction_type='sample' (diffusers' EDM schedulers raise for it at their first step: "
                        "precondition_outputs takes 'epsilon' or 'v_prediction'; a network that returns x0 itself is "
                        "a denoiser: wrap it with sdekit.interop.from_denoiser)")
    elif ptype not in EDM_PREDICTIONS:
        problems.append(f"prediction_type={ptype!r} (accepted: {', '.join(EDM_PREDICTIONS)})")
    if cfg.get("final_sigmas_type", "zero") not in ("zero", "sigma_min"):
        problems.append(f"final_sigmas_type={cfg['final_sigmas_type']!r} (accepted: 'zero', 'sigma_min')")
    return problems


def check_edm_config(cfg: dict, defaults: dict) -> EDMSpec:
    """Raise ValueError for every field of an EDM config sdekit cannot honour (module docstring), naming it; return
    the EDMSpec. ``defaults``: SdekitScheduler's beta-table, grid and flow-matching fields at their defaults,
    which an EDM config leaves alone (an EDM scheduler has no beta table)."""
    name = str(cfg.get("_class_name") or "")
    cfg = {**cfg, **{k: v for k, v in EDM_DEFAULTS.items() if cfg.get(k) is None}}
    problems = []
    for key, value in cfg.items():
        if key.startswith("_") or key in EDM_FIELDS:
            continue
        if key in defaults:
            if not same_setting(value, defaults[key]):
                problems.append(f"{key}={value!r} (a beta-table or flow-matching setting; an EDM scheduler has none)")
        else:
            problems.append(f"{key}={value!r} (unknown to sdekit)")
    problems += _value_problems(cfg)
    threshold = threshold_setting(cfg, problems)
    # whose grid: the class's; an in-memory config names none, and only EDMDPMSolverMultistep's has solver fields
    layout = cfg.get("grid_scheduler") or EDM_CLASSES.get(name) or (
        "edm_dpmsolver_multistep" if cfg.get("solver_order") is not None else "edm_euler")
    if layout not in EDM_CLASSES.values():
        problems.append(f"grid_scheduler={layout!r} (an EDM config's grid is {' or '.join(EDM_CLASSES.values())})")
    if problems:
        raise ValueError(f"EDM scheduler config {name} has setting(s) sdekit cannot honour: " + "; ".join(problems))
    return EDMSpec(float(cfg["sigma_min"]), float(cfg["sigma_max"]), float(cfg["sigma_data"]), cfg["sigma_schedule"],
                   float(cfg["rho"]), EDM_PREDICTIONS[cfg.get("prediction_type", "epsilon")],
                   cfg.get("final_sigmas_type", "zero"), threshold, layout)


# -- the grid --------------------------------------------------------------------------------------------
def edm_sigmas(spec: EDMSpec, steps: Optional[int] = None, ramp=None) -> Tensor:
    """diffusers' K + 1 float32 sigmas for ``steps`` = K (module docstring), or for ``ramp``, positions in [0, 1]
    along the schedule (EDMEulerScheduler's ``set_timesteps(sigmas=...)`` takes these). The arithmetic is diffusers':
    EDMEuler's ramp in float64, EDMDPMSolverMultistep's in float32, EDMEuler's sigma_min end the last schedule
    sigma, EDMDPMSolverMultistep's the config's sigma_min."""
    euler = spec.layout == "edm_euler"
    dtype = torch.float64 if euler else torch.float32
    if ramp is None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {steps!r}")
        ramp = torch.linspace(0, 1, steps, dtype=dtype)
    else:
        ramp = torch.as_tensor(ramp).to(dtype).reshape(-1)
        if ramp.numel() < 1 or not bool(((ramp >= 0) & (ramp <= 1)).all()):
            raise ValueError("EDM sigmas= are positions in [0, 1] along the sigma schedule (EDMEulerScheduler's "
                             f"convention); got {ramp.tolist()}. For explicit sigmas pass grid_ts= (times are sigmas)")
    if spec.schedule == "karras":
        hi, lo = spec.sigma_max ** (1 / spec.rho), spec.sigma_min ** (1 / spec.rho)
        sig = ((hi + ramp * (lo - hi)) ** spec.rho).to(torch.float32)
    else:
        sig = torch.linspace(math.log(spec.sigma_min), math.log(spec.sigma_max), len(ramp)).exp().flip(0)
    end = (sig[-1] if euler else torch.tensor(spec.sigma_min, dtype=torch.float32)) if spec.final == "sigma_min" \
        else torch.zeros((), dtype=torch.float32)
    return torch.cat([sig, end.reshape(1)])


def edm_grid(spec: EDMSpec, sde: LinearSDE, steps, timesteps, sigmas) -> tuple[Tensor, Tensor]:
    """(ts, sigmas): sdekit's float64 times (the sigmas the solve visits) and diffusers' float32 sigmas for
    num_inference_steps or EDMEuler's ramp ``sigmas``. A last step from sigma_min to sigma_min (final "sigma_min")
    is left out of ts: the pipeline's call there returns the sample (``SdekitScheduler.step``)."""
    if timesteps is not None:
        raise ValueError("an EDM scheduler's timesteps are c_noise(sigma) = log(sigma)/4 of its sigma schedule; "
                         "set_timesteps takes num_inference_steps (or EDMEuler's sigmas= ramp, or grid_ts=) only")
    if (steps is None) == (sigmas is None):
        raise ValueError("pass exactly one of num_inference_steps, sigmas")
    sig = edm_sigmas(spec, None if steps is None else int(steps), sigmas)
    ts = sig.to(torch.float64).clamp(max=sde.T)  # float32 rounding may put sigma_max a few ulps above T
    if len(ts) > 1 and ts[-1] > 0 and abs(math.log(float(ts[-1]) / float(ts[-2]))) < 1e-5:
        ts = ts[:-1]  # the zero-length last step
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"the EDM sigmas must be strictly decreasing; got {sig.tolist()}")
    return ts, sig


def c_noise(sigma: Tensor) -> Tensor:
    """The network's timestep log(sigma)/4 (float32, as diffusers' precondition_noise)."""
    return 0.25 * torch.log(torch.as_tensor(sigma, dtype=torch.float32))


def c_in(spec: EDMSpec, sigma) -> Tensor:
    """The input scaling 1/sqrt(sigma^2 + sigma_data^2)."""
    return 1 / ((sigma ** 2 + spec.sigma_data ** 2) ** 0.5)


def precondition(spec: EDMSpec, x: Tensor, t, out: Tensor) -> Tensor:
    """D = c_skip(sigma) x + c_out(sigma) F for the network output F at sigma = t (per row or scalar), in x's dtype
    (as diffusers' float32 coefficients)."""
    s = torch.as_tensor(t).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    sd = spec.sigma_data
    c_skip = sd ** 2 / (s ** 2 + sd ** 2)
    c_out = spec.sign * s * sd / (s ** 2 + sd ** 2) ** 0.5
    return c_skip * x + c_out * out


class EDMPreconditioned:
    """net(x, sigma) = D = c_skip x + c_out F: the x0 prediction from the network output F that ``net`` returns
    (the pipeline's, ``PipelineOutput``)."""

    def __init__(self, net, spec: EDMSpec):
        self.net, self.spec = net, spec

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return precondition(self.spec, x, t, self.net(x, t))


def edm_equivalent(spec: EDMSpec, config: dict, steps: int) -> dict:
    """``sdekit.sample`` keywords that run an EDM scheduler's algorithm (``EDM_EQUIVALENTS``) on its grid for
    ``steps`` steps: the solver, its options and ts, the sigmas the solve visits (ending at 0, sdekit's x0 jump,
    or at sigma_min, diffusers' zero-length last step left out)."""
    solver, options = EDM_EQUIVALENTS[spec.layout](config, steps)
    ts, _ = edm_grid(spec, spec.sde(), steps, None, None)
    if len(ts) < 2:
        raise ValueError(f"{steps} step(s) on this EDM grid move nothing (its only step goes from sigma_min to "
                         "sigma_min); use final_sigmas_type='zero' or more steps")
    return {"solver": solver, "ts": ts, **options}


# -- diffusers' EDM algorithms as sdekit solvers -----------------------------------------------------------
def _edm_dpmsolver(cfg: dict, steps: int) -> tuple:
    """EDMDPMSolverMultistep: order 1 is DPM-Solver++(1) = ddim (sde-dpmsolver++: the posterior step, ddpm); order 2
    dpmpp_2m (midpoint, or "heun": the Taylor weight), with sde-dpmsolver++ dpmpp_2m_sde at eta 1; order 3 dpmpp_3m
    in diffusers' published form. Its lowered orders touch only the last step, which is the x0 jump ("zero") or the
    zero-length step ("sigma_min"), and, below 15 steps, the step before it (at most second order), so every other
    real step after the warm-up keeps its order."""
    order = int(cfg.get("solver_order", 2))
    algo = cfg.get("algorithm_type", "dpmsolver++")
    algo = "dpmsolver++" if algo == "deis" else algo  # as diffusers maps it
    kind = cfg.get("solver_type", "midpoint")
    kind = "midpoint" if kind in ("logrho", "bh1", "bh2") else kind
    if algo not in ("dpmsolver++", "sde-dpmsolver++") or kind not in ("midpoint", "heun") or order not in (1, 2, 3) \
            or (algo, order) == ("sde-dpmsolver++", 3):
        raise ValueError("EDMDPMSolverMultistepScheduler has an sdekit equivalent for algorithm_type 'dpmsolver++' "
                         "(solver_order 1, 2 or 3) or 'sde-dpmsolver++' (solver_order 1 or 2: diffusers has no "
                         f"third-order SDE update), solver_type 'midpoint' or 'heun'; got {algo}, {kind}, order {order}")
    sde, weight = algo == "sde-dpmsolver++", "taylor" if kind == "heun" else "midpoint"
    if order == 1:
        return ("ddpm" if sde else "ddim"), {}
    if sde:
        return "dpmpp_2m_sde", {"eta": 1.0, "solver_type": weight, "lower_order_final": False}
    if order == 2:
        return "dpmpp_2m", {"solver_type": weight, "lower_order_final": False}
    lower = bool(cfg.get("lower_order_final", True)) and steps < 15  # diffusers' lower_order_second
    return "dpmpp_3m", {"form": "published", "lower_order_final": (2,) if lower else False}


EDM_EQUIVALENTS = {  # EDM layout -> (cfg, steps) -> (sdekit solver, options)
    # Euler in sigma on x = x0 + sigma n: x' = x + (sigma' - sigma) (x - D)/sigma = (sigma'/sigma) x + (1 - sigma'/sigma) D,
    # which is DDIM's update with alpha = 1
    "edm_euler": lambda cfg, steps: ("ddim", {}),
    "edm_dpmsolver_multistep": _edm_dpmsolver,
}


CHURN = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}  # EDMEulerScheduler.step's, no churn


def check_no_churn(churn: dict) -> None:
    """EDMEulerScheduler.step's churn arguments: accepted at s_churn = 0 (no churn, its default: the other three then
    do nothing); churn (Karras et al. 2022, Algorithm 2's noise injection) is sdekit's ``heun_churn`` sampler, not a
    step option. Any other keyword is refused as TypeError."""
    unknown = sorted(set(churn) - set(CHURN))
    if unknown:
        raise TypeError(f"step() got unexpected keyword argument(s) {unknown}")
    if float(churn.get("s_churn", 0.0)) != 0.0:
        raise ValueError(f"s_churn={churn['s_churn']}: EDMEulerScheduler's churn is not a step option here; sdekit's "
                         "stochastic samplers (solver='heun_churn' for EDM's, 'euler_ancestral', ...) take the noise")
