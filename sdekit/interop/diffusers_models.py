"""diffusers U-Nets as sdekit models, and diffusers' samplers as sdekit solves.

``from_diffusers(unet, scheduler, **conditioning)`` wraps a ``UNet2DModel`` or ``UNet2DConditionModel`` as
``net(x, t)`` on a ``DiscreteVPSDE`` built in float64 from the scheduler's beta table. Step n (0-based) sits at
t_n = (n + 1)/N, so the wrapper feeds the U-Net the (fractional) timestep n = t N - 1: at the grid times it gets
exactly the integers it was trained on. Every field of the scheduler config takes effect or is refused
(``diffusers_config``). A FlowMatchEulerDiscreteScheduler or FlowMatchHeunDiscreteScheduler instead gives the rectified-flow path
(``TimeShift(RectifiedFlow(eps=1/N), shift)`` for shift != 1) with prediction "velocity": the network (a U-Net or
a transformer, any module called as ``net(x, timestep=..., **conditioning)``) gets timestep s N for the path's
noise level s = sigma(t), and its output d x/ds = n - x0 is scaled by ds/dt to sdekit's velocity dx/dt.
Conditioning is any keyword of the U-Net's forward (``encoder_hidden_states``,
``added_cond_kwargs``, ``class_labels``, ``timestep_cond``, ...), each tensor batch-first or with batch 1
(broadcast); ``guidance_scale=s`` adds classifier-free guidance, out = uncond + s (cond - uncond), with the
unconditional inputs given as ``negative_<keyword>`` (e.g. ``negative_encoder_hidden_states``, the empty or
negative prompt's embedding); keywords without a negative counterpart are shared by both halves.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import numpy as np
import torch

from ..parameterization import ClassifierFreeGuidance, ScoreModel, ThresholdedModel, expand_batch, map_tensors
from ..sde import (DiscreteVPSDE, LinearSDE, RectifiedFlow, TimeShift, cosine_beta_schedule,
                   rescale_zero_terminal_snr, time_shift)
from ..solvers.discrete import CLASS_NAMES, diffusers_timesteps, grid_options_from
from .diffusers_config import FlowSpec, check_config, check_flow_config, is_flow_scheduler, read_config
from .edm_scheduler import EDM_FIELDS, EDMSpec, c_in, check_edm_config, edm_equivalent, is_edm_config, precondition

Tensor = torch.Tensor

# diffusers' schedulers that hold a zero-SNR table's last abar at 2^-24 rather than 0
CLAMPED_ZERO_SNR = {"DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                    "EulerAncestralDiscreteScheduler"}
ZERO_SNR_CLAMP = 2.0 ** -24

__all__ = ["DiffusersUNet", "DiffusersFlowNet", "DiffusersEDMNet", "sde_from_scheduler", "flow_path_from_scheduler",
           "from_diffusers", "diffusers_equivalent", "times_from_sigmas"]


def sde_from_scheduler(scheduler) -> DiscreteVPSDE:
    """A ``DiscreteVPSDE`` with the beta table of a diffusers scheduler (or its config dict), in float64.

    The table is recomputed in float64 from the config ("linear", "scaled_linear", "squaredcos_cap_v2",
    "sigmoid", or ``trained_betas``), not taken from diffusers' float32 tensors, so the SDE's ends and every
    time computed from it are exact; any other schedule falls back to ``scheduler.betas``.

    ``rescale_betas_zero_snr=True``: the table is ``rescale_zero_terminal_snr``'s, whose last abar is 0 (alpha(T) = 0,
    ``DiscreteVPSDE.zero_snr``), as DDIM and DDPM hold it. DPMSolverMultistep, UniPC and the Euler schedulers set
    that last abar to 2^-24 instead ("close to 0 without being 0 so first sigma is not inf"): for a config of one of
    those classes (its ``_class_name``) the table keeps their 2^-24, so that their algorithms are reproduced, where
    2^-24 < abar_{N-1} (e.g. "scaled_linear" tables, abar_{N-1} = 2.0e-7); where it is not ("linear" 1e-4 to 0.02:
    abar_{N-1} = 4.2e-9) diffusers' abar rises at its last step, a noise level no diffusion has, and the table keeps
    abar_N = 0."""
    cfg = read_config(scheduler)
    n = int(cfg.get("num_train_timesteps", 1000))
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(np.asarray(cfg["trained_betas"], dtype=np.float64))
    elif kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = cosine_beta_schedule(n)
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (b1 - b0) + b0
    elif hasattr(scheduler, "betas"):
        betas = torch.as_tensor(scheduler.betas, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r}; accepted: linear, scaled_linear, "
                         "squaredcos_cap_v2, sigmoid, or trained_betas")
    if cfg.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
        before = float(torch.prod(1 - betas[:-1]))  # abar_{N-1}
        if str(cfg.get("_class_name") or "") in CLAMPED_ZERO_SNR and ZERO_SNR_CLAMP < before:
            betas[-1] = 1 - ZERO_SNR_CLAMP / before
    return DiscreteVPSDE(betas)


def zero_snr_clamp_note(layout: str, table: DiscreteVPSDE) -> str:
    """Why a zero-SNR table laid out as ``layout`` keeps alpha(T) = 0 where diffusers' class holds the last abar at
    2^-24 (a sentence to append to a refusal; '' where the layout holds no clamp or the table takes it)."""
    name = {v: k for k, v in CLASS_NAMES.items()}.get(str(layout), "")
    before = float(table.alphas_cumprod[-2])
    if name not in CLAMPED_ZERO_SNR or before >= ZERO_SNR_CLAMP:
        return ""
    return (f". {name} holds the last abar at 2^-24 instead of 0, but this table's next-to-last abar is {before:.3g}, "
            "below it: the table would rise at its last step, which no SDE's alpha does, so sdekit keeps 0 (Stable "
            "Diffusion's scaled_linear table, whose next-to-last abar is above 2^-24, takes the 2^-24 start)")


class DiffusersUNet(torch.nn.Module):
    """A diffusers U-Net as net(x, t[, cond]): timestep = t N - 1 (float; integer on the DDPM grid).

    ``conditioning``: keyword arguments of the U-Net's forward, used when ``cond`` is not given (tensors of
    batch 1 are broadcast to x's batch). ``learned_variance``: the U-Net returns 2C channels (variance_type
    "learned"/"learned_range"); the first C are the prediction. x and floating conditioning tensors are cast
    to the U-Net's dtype, the output back to x's (so float64 solver states drive a float32 U-Net)."""

    def __init__(self, unet, num_train_timesteps: int, conditioning: Optional[dict] = None,
                 learned_variance: bool = False):
        super().__init__()
        self.unet = unet
        self.N = int(num_train_timesteps)
        self.conditioning = dict(conditioning or {})
        self.learned_variance = bool(learned_variance)

    def timestep(self, t: Tensor) -> Tensor:
        """The network's timestep at sdekit time t (float64): t N - 1, the DDPM step index."""
        return t * self.N - 1

    def forward(self, x: Tensor, t: Tensor, cond: Optional[dict] = None) -> Tensor:
        dtype = getattr(self.unet, "dtype", x.dtype)
        timestep = self.timestep(t.to(torch.float64)).to(torch.float32).to(x.device)
        kwargs = expand_batch(self.conditioning if cond is None else cond, x.shape[0], "conditioning")
        kwargs = map_tensors(lambda v: v.to(dtype) if v.is_floating_point() else v, kwargs)
        if "return_dict" in inspect.signature(self.unet.forward).parameters:
            kwargs["return_dict"] = False
        out = self.unet(x.to(dtype), timestep=timestep, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        c = x.shape[1]
        if self.learned_variance:
            if out.shape[1] != 2 * c:
                raise ValueError(f"variance_type is learned: the U-Net must return 2 x {c} channels; got {out.shape[1]}")
            out = out[:, :c]
        elif out.ndim == x.ndim and out.shape[1] == 2 * c:
            raise ValueError(f"the U-Net returns 2 x {c} channels (a learned variance?) but the scheduler's "
                             "variance_type is not 'learned' or 'learned_range'")
        return out.to(x.dtype)


class DiffusersFlowNet(DiffusersUNet):
    """A FlowMatch-trained diffusers network as sdekit's velocity net(x, t[, cond]) on ``path`` (a RectifiedFlow,
    possibly time-shifted): timestep = s N with s = path.sigma(t) the diffusers sigma, and the output, the velocity
    d x/ds = n - x0 in the network's own time s, times ds/dt = path.d_sigma(t) (1 unshifted, the shift's tau'(t)
    otherwise), which is sdekit's velocity dx/dt = alpha' x0 + sigma' n."""

    def __init__(self, unet, num_train_timesteps: int, path: LinearSDE, conditioning: Optional[dict] = None):
        super().__init__(unet, num_train_timesteps, conditioning)
        self.path = path

    def timestep(self, t: Tensor) -> Tensor:
        return self.path.sigma(t) * self.N

    def forward(self, x: Tensor, t: Tensor, cond: Optional[dict] = None) -> Tensor:
        rate = self.path.d_sigma(t.to(torch.float64)).to(x.dtype).to(x.device)
        return super().forward(x, t, cond) * rate.reshape(-1, *([1] * (x.ndim - 1)))


class DiffusersEDMNet(DiffusersUNet):
    """A network trained with an EDM scheduler (EDMEuler / EDMDPMSolverMultistep) as sdekit's x0 prediction on
    ``EDMSDE`` (time is sigma): D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), F the network called on c_in x
    with timestep c_noise = log(sigma)/4 (``sdekit.interop.edm_scheduler``)."""

    def __init__(self, unet, spec: EDMSpec, conditioning: Optional[dict] = None):
        super().__init__(unet, 1, conditioning)
        self.spec = spec

    def timestep(self, t: Tensor) -> Tensor:
        return 0.25 * torch.log(t)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[dict] = None) -> Tensor:
        s = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return precondition(self.spec, x, t, super().forward(x * c_in(self.spec, s), t, cond))


def _edm_spec(cfg: dict) -> EDMSpec:
    """The EDM spec of an EDM scheduler's config, or of an EDM SdekitScheduler's (its other fields inert)."""
    if cfg.get("_class_name") == "SdekitScheduler":
        cfg = {k: v for k, v in cfg.items() if k in EDM_FIELDS or k.startswith("_")}
    return check_edm_config(cfg, {})


def flow_path_from_scheduler(spec: FlowSpec) -> LinearSDE:
    """The path of a FlowMatch config: RectifiedFlow with eps = 1/N, inside a TimeShift when shift != 1, whose
    uniform grids to t = 0 are then diffusers' sigmas. diffusers shifts its smallest training sigma tau(1/N) once
    more when it sets the inference steps (sigmas = tau(linspace(1, tau(1/N), n))), so the shifted path's eps,
    its smallest grid time, is tau(1/N)."""
    base = RectifiedFlow(eps=1.0 / spec.num_train_timesteps)
    if spec.shift == 1.0:
        return base
    if spec.dynamic:  # diffusers shifts the unshifted training sigmas once: sigmas = tau(linspace(1, 1/N, n))
        return TimeShift(base, spec.shift, eps=base.eps)
    return TimeShift(base, spec.shift, eps=float(time_shift(base.eps, spec.shift)))


def _split_conditioning(unet, conditioning: dict, guidance_scale):
    """(cond, uncond) keyword dicts; uncond is None without guidance."""
    params = list(inspect.signature(unet.forward).parameters)
    first = params[0] if params else None  # the noisy input: sample (U-Nets), hidden_states (transformers)
    accepted = [k for k in params if k not in ("self", first, "timestep", "return_dict")]
    negative = {k[len("negative_"):]: v for k, v in conditioning.items() if k.startswith("negative_")}
    cond = {k: v for k, v in conditioning.items() if not k.startswith("negative_")}
    unknown = sorted((set(cond) | set(negative)) - set(accepted))
    if unknown:
        raise ValueError(f"{type(unet).__name__} takes no conditioning {unknown}; accepted: {', '.join(accepted)} "
                         "(and negative_<name> for the unconditional half of classifier-free guidance)")
    if guidance_scale is None:
        if negative:
            raise ValueError(f"negative_{sorted(negative)[0]} is the unconditional input of classifier-free guidance: "
                             "pass guidance_scale too")
        return cond, None
    if not negative:
        raise ValueError("guidance_scale needs the unconditional inputs: pass negative_<name> for at least one "
                         "conditioning keyword (e.g. negative_encoder_hidden_states = the empty or negative prompt's "
                         "embedding, negative_class_labels = the null class)")
    missing = sorted(set(negative) - set(cond))
    if missing:
        raise ValueError(f"negative_{missing[0]} given without {missing[0]}")
    return cond, {**cond, **negative}


def from_diffusers(unet, scheduler, *, guidance_scale: Optional[float] = None, threshold: bool = True,
                   mu: Optional[float] = None, **conditioning) -> ScoreModel:
    """ScoreModel for a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` trained with ``scheduler`` (a
    scheduler, its config or a dict).

    conditioning: keywords of the U-Net's forward (``encoder_hidden_states=``, ``added_cond_kwargs=``,
      ``class_labels=``, ...), tensors batch-first or batch 1; ``negative_<name>`` the unconditional inputs.
    guidance_scale: classifier-free guidance in diffusers' convention (out = uncond + s (cond - uncond)),
      one batched U-Net call of 2B rows per evaluation.
    threshold: apply the config's ``thresholding`` / ``clip_sample`` to the x0 prediction (``ThresholdedModel``);
      False keeps the network's own prediction (what a likelihood needs).
    A FlowMatchEuler/HeunDiscreteScheduler gives the rectified-flow path and prediction "velocity" (module
    docstring; the network may be any module called as net(x, timestep=..., **conditioning)); ``mu``: its dynamic
    shift (use_dynamic_shifting=True), as the pipeline computes it for the image size. A flow-matching
    ``SdekitScheduler`` gives the unshifted RectifiedFlow whose time is diffusers' sigma, the scheduler's own time
    (its shift lives in its grid), so a grid tuned on this model is that scheduler's ``grid_ts``.
    Raises ValueError for config settings sdekit cannot honour (``diffusers_config``)."""
    cfg = read_config(scheduler)
    if is_flow_scheduler(cfg):
        return _flow_model(unet, check_flow_config(cfg, mu), conditioning, guidance_scale)
    if cfg.get("_class_name") == "SdekitScheduler" and cfg.get("prediction_type") == "flow_prediction":
        n = int(cfg.get("num_train_timesteps", 1000))
        return _flow_model(unet, FlowSpec(cfg, 1.0, n, "euler"), conditioning, guidance_scale)
    if mu is not None:
        raise ValueError("mu is the dynamic shift of flow-matching configs; this scheduler has a DDPM beta table")
    if is_edm_config(cfg):
        return _edm_model(unet, _edm_spec(cfg), conditioning, guidance_scale, threshold)
    spec = check_config(cfg)
    sde = sde_from_scheduler(scheduler)
    cond, uncond = _split_conditioning(unet, conditioning, guidance_scale)
    net: torch.nn.Module
    if uncond is None:
        net = DiffusersUNet(unet, sde.N, cond, spec.learned_variance)
    else:
        assert guidance_scale is not None  # _split_conditioning returns an uncond only with guidance
        net = ClassifierFreeGuidance.from_scale(DiffusersUNet(unet, sde.N, None, spec.learned_variance), cond, uncond,
                                                guidance_scale)
    model = ScoreModel(net, sde, prediction=spec.prediction)
    if threshold and spec.threshold is not None:
        model = ThresholdedModel(model, *spec.threshold)
    return model


def _edm_model(unet, spec: EDMSpec, conditioning: dict, guidance_scale, threshold: bool) -> ScoreModel:
    """x0 prediction on EDMSDE (``DiffusersEDMNet``); guidance on F is guidance on D (D is affine in F)."""
    cond, uncond = _split_conditioning(unet, conditioning, guidance_scale)
    net: torch.nn.Module = DiffusersEDMNet(unet, spec, cond)
    if uncond is not None:
        assert guidance_scale is not None  # _split_conditioning returns an uncond only with guidance
        net = ClassifierFreeGuidance.from_scale(DiffusersEDMNet(unet, spec), cond, uncond, guidance_scale)
    model = ScoreModel(net, spec.sde(), prediction="x0")
    if threshold and spec.threshold is not None:
        model = ThresholdedModel(model, *spec.threshold)
    return model


def _flow_model(unet, spec: FlowSpec, conditioning: dict, guidance_scale) -> ScoreModel:
    path = flow_path_from_scheduler(spec)
    cond, uncond = _split_conditioning(unet, conditioning, guidance_scale)
    net: torch.nn.Module
    if uncond is None:
        net = DiffusersFlowNet(unet, spec.num_train_timesteps, path, cond)
    else:
        assert guidance_scale is not None  # _split_conditioning returns an uncond only with guidance
        net = ClassifierFreeGuidance.from_scale(DiffusersFlowNet(unet, spec.num_train_timesteps, path), cond, uncond,
                                                guidance_scale)
    return ScoreModel(net, path, prediction="velocity")


def times_from_sigmas(sde: DiscreteVPSDE, sigmas) -> Tensor:
    """sdekit times of diffusers sigmas s = sigma/alpha (float32 in diffusers), as float64.

    s = 0 is t = 0. A float32 sigma rounded past the table's ends (sigma_max by up to a few float32 ulps) is
    taken as the end rather than refused by ``t_from_log_snr``'s float64 tolerance; beyond that it raises."""
    s = torch.as_tensor(sigmas).to(torch.float64).flatten()
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"sigmas must be finite and >= 0; got {s.tolist()}")
    lam = -2 * torch.log(s.clamp_min(1e-300))
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(0.0))
    tol = 8 * 2.0 ** -23  # relative float32 rounding of s, a few ulps, in lambda = -2 log s
    if bool((lam < lo - tol).any()):
        raise ValueError(f"sigma {float(s.max())} exceeds the table's largest, {math.exp(-lo / 2)}")
    t = sde.t_from_log_snr(lam.clamp(lo, hi))
    return torch.where(s == 0, torch.zeros_like(t), t)


# -- diffusers' schedulers as sdekit solves ------------------------------------------------------------------
DPM_SOLVERS = {("dpmsolver++", 2): "dpmpp_2m", ("dpmsolver++", 3): "dpmpp_3m", ("dpmsolver", 2): "dpm_solver_2m",
               ("dpmsolver", 3): "dpm_solver_3m", ("sde-dpmsolver++", 2): "dpmpp_2m_sde",
               ("sde-dpmsolver", 2): "dpm_solver_2m_sde"}


def _dpmsolver(cfg, steps):
    """DPMSolverMultistepScheduler: dpmsolver++ / dpmsolver (orders 1-3: 3M in its published form) and
    sde-dpmsolver++ / sde-dpmsolver (orders 1-2), solver_type midpoint or heun (sdekit's "taylor": the exact weight),
    lower_order_final and euler_at_final as the orders of the last steps sdekit takes (``final_order``)."""
    order, algo = int(cfg.get("solver_order", 2)), cfg.get("algorithm_type", "dpmsolver++")
    kind, final = cfg.get("solver_type", "midpoint"), cfg.get("final_sigmas_type", "zero")
    if (algo, max(order, 2)) not in DPM_SOLVERS or kind not in ("midpoint", "heun") or order not in (1, 2, 3):
        why = "diffusers' third-order sde-dpmsolver++ update weights D2 by (1 - e^{-2h} - 2h)/(2h)^2 - 1/2, which " \
              "tends to -1 (not 0) as h -> 0, so it is not a consistent third-order step (measured: first order); " \
              "diffusers' own tests skip it" if (algo, order) == ("sde-dpmsolver++", 3) else \
              "diffusers has no third-order sde-dpmsolver update" if (algo, order) == ("sde-dpmsolver", 3) else ""
        raise ValueError("DPMSolverMultistepScheduler has an sdekit equivalent for algorithm_type dpmsolver++ or "
                         "dpmsolver (solver_order 1, 2 or 3), sde-dpmsolver++ or sde-dpmsolver (solver_order 1 or 2), "
                         f"solver_type 'midpoint' or 'heun'; got {algo}, {kind}, order {order}" + (f" ({why})" if why
                                                                                                   else ""))
    lower = bool(cfg.get("lower_order_final", True)) and steps < 15
    # Karras (and the other sigma families) with "sigma_min": diffusers' grid ends with a zero-length step (sigma_min
    # twice), taken at order 1 and changing nothing; sdekit drops it, as it takes the jump to sigma = 0 ("zero") apart
    # from the solve: the last step sdekit's solver takes is then diffusers' second-to-last (at most 2 if lower)
    apart = final == "zero" or any(cfg.get(k, False) for k in (
        "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"))
    caps = (2,) if apart and lower else True if lower else (1,) if cfg.get("euler_at_final", False) and not apart \
        else False
    options = {"lower_order_final": (1,) * steps if order == 1 else caps,
               "solver_type": "taylor" if kind == "heun" else "midpoint"}
    if order == 3:
        options["form"] = "published"  # the D2 term at half its Taylor weight, as diffusers' update
    return DPM_SOLVERS[(algo, max(order, 2))], options


def _unipc(cfg, steps):
    """UniPCMultistepScheduler: UniPC-1/2/3, bh1/bh2, predict_x0 (noise form when False), lower_order_final,
    disable_corrector; its 3M-style order cap before the jump to sigma = 0 as the orders of the last steps."""
    order, final = int(cfg.get("solver_order", 2)), cfg.get("final_sigmas_type", "zero")
    predict_x0, lower = bool(cfg.get("predict_x0", True)), bool(cfg.get("lower_order_final", True))
    why = "solver_p (another scheduler as the predictor) has no sdekit counterpart" if cfg.get("solver_p") is not None \
        else f"solver_order {order} (1, 2 or 3)" if order not in (1, 2, 3) else \
        "predict_x0=False with final_sigmas_type='zero': diffusers' noise-form step to sigma = 0 is 0 * inf (its loop " \
        "returns NaN); use final_sigmas_type='sigma_min'" if final == "zero" and not predict_x0 else \
        "lower_order_final=False with final_sigmas_type='zero': diffusers' last step to sigma = 0 extrapolates its " \
        "history over an infinite step (its loop returns inf, or fails at order 3); use final_sigmas_type=" \
        "'sigma_min'" if final == "zero" and not lower and order > 1 else \
        "solver_type='bh1' with final_sigmas_type='zero': B(h) = h is infinite on the step to sigma = 0 (diffusers' " \
        "loop returns NaN); use 'bh2' or final_sigmas_type='sigma_min'" if final == "zero" and \
        cfg.get("solver_type", "bh2") == "bh1" else None
    if why is not None:
        raise ValueError(f"UniPCMultistepScheduler has no sdekit equivalent for {why}")
    # diffusers caps step i of n at n - i; the jump to sigma = 0 ("zero") is taken apart from sdekit's solve, so on
    # the steps it sees that is "the last step at most 2" ((2,)); with "sigma_min" sdekit's own lower_order_final
    options = {"variant": cfg.get("solver_type", "bh2"), "lower_order_final": ((2,) if final == "zero" else lower),
               "predict_x0": predict_x0}
    if cfg.get("disable_corrector"):
        options["disable_corrector"] = tuple(int(j) for j in cfg["disable_corrector"])
    if final == "sigma_min" and cfg.get("use_karras_sigmas", False):
        # diffusers' Karras grid ends with a zero-length step (sigma_min twice), whose call feeds the final corrector
        options["final_corrector"] = True
    return f"unipc_{order}", options


def _deis(cfg, steps):
    order = int(cfg.get("solver_order", 2))
    if cfg.get("algorithm_type", "deis") != "deis" or cfg.get("solver_type", "logrho") != "logrho" \
            or order not in (1, 2, 3):
        raise ValueError("DEISMultistepScheduler has an sdekit equivalent for algorithm_type='deis', "
                         f"solver_type='logrho', solver_order 1, 2 or 3; got {cfg.get('algorithm_type')}, "
                         f"{cfg.get('solver_type')}, order {order}")
    if order == 1:
        return "ddim", {}
    lower = bool(cfg.get("lower_order_final", True)) and steps < 15
    if cfg.get("use_karras_sigmas", False):
        # diffusers' Karras grid ends with a zero-length step (sigma_min twice): sdekit drops it, so the last real
        # step is diffusers' second-to-last, which diffusers takes at order <= 2
        if lower and order == 3:
            raise ValueError("DEISMultistepScheduler with Karras sigmas, solver_order=3 and fewer than 15 steps takes "
                             "its last real step at order 2 (the zero-length step after it at order 1), which no "
                             "sdekit option reproduces; use 15 or more steps, solver_order=2 or lower_order_final=False")
        lower = False
    return f"deis_logrho_{order}", {"lower_order_final": lower}


EQUIVALENTS = {  # scheduler name (grid_options_from) -> (cfg, steps) -> (sdekit solver, options)
    "ddim": lambda cfg, steps: ("ddim", {}),
    "ddpm": lambda cfg, steps: ("ddpm", {}),
    "euler": lambda cfg, steps: ("ddim", {}),
    "heun": lambda cfg, steps: ("heun", {}),
    "dpmsolver_multistep": _dpmsolver,
    "unipc_multistep": _unipc,
    "deis_multistep": _deis,
}


def diffusers_equivalent(scheduler, steps: int, mu: Optional[float] = None) -> dict:
    """Keywords for ``sdekit.sample`` that run the same algorithm as ``scheduler`` (a diffusers scheduler
    object) with ``steps`` inference steps: solver, steps, ``grid="diffusers"`` with the scheduler's timestep
    spacing, offset, final sigma and Karras sigmas, and the order options that reproduce its order lowering::

        model = from_diffusers(unet, sched)
        x = sdekit.sample(model, x_T, **diffusers_equivalent(sched, 20)).x

    Same algorithm, same grid: the deterministic ones agree with diffusers' own loop to float32 rounding.
    DDPM is the same update with sdekit's own noise (equal in distribution, not per draw); Euler is DDIM
    (Euler in sigma/alpha) on the sdekit (VP) state, which diffusers scales by 1/alpha. Raises ValueError for
    a scheduler or setting with no exact sdekit counterpart. ``mu``: a flow-matching config's dynamic shift (as for
    ``from_diffusers``; the model must be built with the same mu)."""
    cfg = read_config(scheduler)
    if is_flow_scheduler(cfg):
        return _flow_equivalent(check_flow_config(cfg, mu), steps)
    if is_edm_config(cfg):
        return edm_equivalent(_edm_spec(cfg), cfg, int(steps))
    check_config(cfg)
    opts = grid_options_from(scheduler)
    name = opts["scheduler"]
    if name not in EQUIVALENTS:
        raise ValueError(f"no exact sdekit equivalent of {type(scheduler).__name__}; accepted: DDIM, DDPM, Euler, Heun, "
                         "DPMSolverMultistep (2M), UniPCMultistep, DEISMultistep (sample with grid='diffusers' for the "
                         "others' grids)")
    if name in ("ddim", "ddpm"):
        tau = diffusers_timesteps(name, int(cfg.get("num_train_timesteps", 1000)), steps, opts.get("spacing"),
                                  opts["steps_offset"])
        stride = int(cfg.get("num_train_timesteps", 1000)) // int(steps)
        if not bool(np.all(tau[:-1] - stride == tau[1:])):
            raise ValueError(f"{type(scheduler).__name__} steps from each timestep tau to tau - N // K = tau - {stride}, "
                             f"which with timestep_spacing={opts.get('spacing')!r} and {steps} steps is not the next "
                             "timestep, so no sdekit grid holds its steps; SdekitScheduler(solver='ddim') takes them")
    solver, options = EQUIVALENTS[name](cfg, steps)
    return {"solver": solver, "steps": int(steps), "grid": "diffusers", "grid_options": opts, **options}


def _flow_equivalent(spec: FlowSpec, steps: int) -> dict:
    """FlowMatch Euler/Heun with ``steps`` steps: sigmas tau(linspace(1, tau(1/N), steps)) and 0, i.e. the uniform
    grid to t = 0 on ``flow_path_from_scheduler``'s path (steps - 1 intervals down to its eps, then the x0 jump,
    which is diffusers' last Euler step to sigma = 0 on this path). Euler in sigma is ``ddim`` (first order in any
    time variable that gives the same alpha, sigma at the nodes); Heun in sigma is ``heun_t`` when shift = 1."""
    if spec.scheduler == "heun" and spec.shift != 1.0:
        raise ValueError(f"FlowMatchHeunDiscreteScheduler with shift={spec.shift}: Heun's method in diffusers' sigma "
                         "is not Heun's method in the shifted path's time, so no sdekit solver on this model takes the "
                         "same steps (equal at shift=1; any sdekit solver samples the same ODE)")
    solver = "ddim" if spec.scheduler == "euler" else "heun_t"
    return {"solver": solver, "steps": int(steps), "grid": "uniform", "t_end": 0.0}
