"""What a diffusers scheduler config means to sdekit: every field takes effect or is refused by name.

A config (``scheduler.config``, or a plain dict such as a ``scheduler_config.json``) is read field by field:

  model     the forward process and what the network predicts; they build the ScoreModel:
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas -> the DiscreteVPSDE;
            rescale_betas_zero_snr (zero terminal SNR: alpha(T) = 0, ``DiscreteVPSDE.zero_snr``);
            prediction_type (epsilon | v_prediction | sample); variance_type (learned | learned_range: the
            network returns 2C channels, the first C are the prediction; fixed_*: the ancestral variance of
            DDPM, which sdekit's ``ddpm`` takes as the posterior one, fixed_small); thresholding,
            dynamic_thresholding_ratio, sample_max_value, clip_sample, clip_sample_range -> ThresholdedModel
            (thresholding wins over clip_sample, as in diffusers).
  grid      where the steps go: timestep_spacing, steps_offset, final_sigmas_type, use_karras_sigmas,
            set_alpha_to_one -> ``grid="diffusers"`` options; use_exponential_sigmas, use_beta_sigmas,
            use_lu_lambdas, lambda_min_clipped -> the grid SdekitScheduler takes from diffusers' own scheduler
            (``diffusers_equivalent``, whose ``grid="diffusers"`` does not lay them out, refuses them).
  solver    how diffusers' own scheduler steps (solver_order, algorithm_type, solver_type, lower_order_final,
            euler_at_final, disable_corrector, predict_x0, solver_p, skip_prk_steps, noise_sampler_seed,
            predictor_order, corrector_order, tau_func): superseded by the sdekit
            solver (``diffusers_equivalent`` reads them to name the same algorithm).
  refused   anything else that changes the maths: flow matching (FlowMatch* schedulers, use_flow_sigmas,
            prediction_type="flow_prediction"), interpolation_type="log_linear", EDM-preconditioned and consistency
            schedulers, and every field not named here.

Flow matching (``check_flow_config``): a FlowMatchEulerDiscreteScheduler or FlowMatchHeunDiscreteScheduler config
is the rectified-flow path x_s = (1 - s) x0 + s n with the velocity network v(x, s N) = n - x0:
  model     num_train_timesteps (the network's timestep is s N; the smallest grid time 1/N is the path's eps),
            shift (SD3's time shift: the path is ``TimeShift(RectifiedFlow(), shift)``, whose uniform grids are
            diffusers' shifted sigmas).
  inert     base_shift, max_shift, base_image_seq_len, max_image_seq_len, time_shift_type: read only by dynamic
            shifting, which is off.
  dynamic   use_dynamic_shifting=True with ``mu`` (``from_diffusers(..., mu=)``, the pipeline's calculate_shift for
            the image size): shift = exp(mu) ("exponential") or mu ("linear"); refused without mu.
  refused
            shift_terminal, invert_sigmas, stochastic_sampling, use_karras/exponential/beta_sigmas (grids
            ``diffusers_equivalent`` would not reproduce), and every field not named here. Other flow configs
            (use_flow_sigmas, prediction_type="flow_prediction" on DPM-Solver/UniPC) are refused by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

__all__ = ["DiffusersSpec", "FlowSpec", "read_config", "check_config", "check_flow_config", "is_flow_scheduler",
           "check_scheduler_flow_config", "is_scheduler_flow_config", "PREDICTION_TYPES", "same_setting"]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")

MODEL_FIELDS = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "variance_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "clip_sample",
                "clip_sample_range", "rescale_betas_zero_snr"}
GRID_FIELDS = {"timestep_spacing", "steps_offset", "final_sigmas_type", "use_karras_sigmas", "set_alpha_to_one",
               "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "lambda_min_clipped"}
SOLVER_FIELDS = {"solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
                 "disable_corrector", "predict_x0", "solver_p", "skip_prk_steps", "noise_sampler_seed",
                 "predictor_order", "corrector_order", "tau_func",
                 "solver", "solver_options", "grid_scheduler", "grid_ts"}  # the last four: SdekitScheduler's own
# fields accepted only at the value that leaves the maths unchanged
INERT_DEFAULTS = {
    "interpolation_type": "linear", "sigma_min": None, "sigma_max": None,
    "timestep_type": "discrete", "invert_sigmas": False,
    # flow matching, inert unless use_flow_sigmas
    "use_flow_sigmas": False, "flow_shift": 1.0, "use_dynamic_shifting": False, "time_shift_type": "exponential",
    "shift_terminal": None,
    # EDM-preconditioned schedulers' own fields (SdekitScheduler's, None on a beta table): edm_scheduler reads them
    "sigma_data": None, "sigma_schedule": None, "rho": None,
}
# fields only flow-matching schedulers have: their presence marks a flow config even without its _class_name
FLOW_MARKERS = {"shift", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "stochastic_sampling"}

FLOW_MESSAGE = ("is a flow-matching (rectified-flow) model: x_t = (1 - t) x0 + t n with a velocity network, not a "
                "DDPM beta table, and is refused here rather than read as a DDPM eps model. "
                "sdekit.interop.from_diffusers and SdekitScheduler.from_config read FlowMatchEulerDiscreteScheduler "
                "and FlowMatchHeunDiscreteScheduler configs (sdekit.RectifiedFlow, prediction='velocity')")
FLOW_SCHEDULERS = {"FlowMatchEulerDiscreteScheduler": "euler", "FlowMatchHeunDiscreteScheduler": "heun"}
FLOW_MODEL_FIELDS = {"num_train_timesteps", "shift"}
FLOW_DYNAMIC_FIELDS = {"base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type"}
FLOW_INERT_DEFAULTS = {"use_dynamic_shifting": False, "shift_terminal": None, "invert_sigmas": False,
                       "stochastic_sampling": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                       "use_beta_sigmas": False}
# SdekitScheduler's flow-matching fields (FlowMatchEulerDiscreteScheduler's, at its defaults)
SCHEDULER_FLOW_DEFAULTS = {"shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
                           "base_image_seq_len": 256, "max_image_seq_len": 4096, "time_shift_type": "exponential",
                           "shift_terminal": None, "invert_sigmas": False, "stochastic_sampling": False}
FLOW_GRID_FIELDS = {"shift", "use_dynamic_shifting", "time_shift_type", "shift_terminal", "use_karras_sigmas",
                    "use_exponential_sigmas", "use_beta_sigmas"} | FLOW_DYNAMIC_FIELDS
EDM_MARKERS = {"sigma_data", "sigma_schedule", "rho"}  # fields only EDM-preconditioned schedulers have
_REFUSED_CLASSES = {
    "EDM": "is EDM-preconditioned (time is sigma, c_skip/c_out scalings), not a DDPM beta table: "
           "SdekitScheduler.from_config runs it (sdekit.interop.edm_scheduler); for an sdekit model wrap its "
           "denoiser with sdekit.interop.from_denoiser",
    "LCM": "is a consistency-model scheduler (its boundary scalings are part of the model); not supported",
    "TCD": "is a consistency-model scheduler (its boundary scalings are part of the model); not supported",
    "CMStochastic": "is a consistency-model scheduler (its boundary scalings are part of the model); not supported",
    "IPNDM": "has its own trigonometric noise schedule, not a DDPM beta table; not supported (sdekit's own "
             "solver 'ipndm' runs on any sdekit model)",
    "ScoreSde": "is a continuous-time VE/VP SDE: build sdekit.VESDE / sdekit.VPSDE with its parameters and wrap "
                "the network with sdekit.ScoreModel",
    "KarrasVe": "is a VE (sigma-space) scheduler: wrap the network as a denoiser with sdekit.interop.from_denoiser",
}


@dataclass(frozen=True)
class DiffusersSpec:
    """The model-defining part of a scheduler config, checked. ``threshold`` is None or (ratio, max_value)
    with ratio None for static clipping (``ThresholdedModel``'s arguments)."""

    config: dict
    prediction: str
    learned_variance: bool
    threshold: Optional[tuple]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))


def read_config(scheduler) -> dict:
    """A plain dict of a scheduler's config (a scheduler object, its ``config`` or a dict)."""
    cfg = getattr(scheduler, "config", scheduler)
    if not hasattr(cfg, "items"):
        raise TypeError(f"expected a diffusers scheduler, its config or a dict; got {type(scheduler).__name__}")
    out = dict(cfg.items())
    if "_class_name" not in out and not isinstance(scheduler, dict) and hasattr(scheduler, "config"):
        out["_class_name"] = type(scheduler).__name__
    return out


def same_setting(value, default) -> bool:
    """Whether a config value is the default (None only as None; an int equal to a float default counts)."""
    if value is None or default is None:  # e.g. trained_betas, an array: == would compare elementwise
        return value is default
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value) == default
    return value == default


def positive_number(value) -> bool:
    """A finite int or float > 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def threshold_setting(cfg: dict, problems: list) -> Optional[tuple[Optional[float], float]]:
    """The x0 thresholding a config asks for, as ``ThresholdedModel``'s (ratio, max_value): dynamic thresholding
    (thresholding, dynamic_thresholding_ratio, sample_max_value), which wins over clip_sample as in diffusers, or
    (None, clip_sample_range); None for neither, or where a value is bad (appended to ``problems``)."""
    found = []
    ratio = None
    if cfg.get("thresholding", False):
        ratio, top = cfg.get("dynamic_thresholding_ratio", 0.995), cfg.get("sample_max_value", 1.0)
        if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0):
            found.append(f"dynamic_thresholding_ratio={ratio!r} (accepted: a quantile in [0, 1])")
        if not positive_number(top):
            found.append(f"sample_max_value={top!r} (accepted: a finite number > 0)")
    elif cfg.get("clip_sample", False):
        top = cfg.get("clip_sample_range", 1.0)
        if not positive_number(top):
            found.append(f"clip_sample_range={top!r} (accepted: a finite number > 0)")
    else:
        return None
    problems += found
    return None if found else (None if ratio is None else float(ratio), float(top))


def _has_table(cfg: dict) -> bool:
    """Whether ``cfg`` has beta-table fields (a DDPM scheduler's config)."""
    return bool(set(cfg) & (MODEL_FIELDS - {"num_train_timesteps"}))


def refused_class(name: str) -> Optional[str]:
    """Why diffusers' scheduler class ``name`` is refused (its config is not a DDPM table sdekit honours), or None."""
    return next((why for prefix, why in _REFUSED_CLASSES.items() if name.startswith(prefix)), None)


def check_config(cfg: dict) -> DiffusersSpec:
    """Raise ValueError for every field of ``cfg`` that sdekit cannot honour (naming it, and what is accepted);
    return the model-defining part. Fields starting with "_" (``_class_name``, ``_diffusers_version``) are
    metadata; ``_class_name`` is checked for flow-matching, EDM and consistency schedulers. A SdekitScheduler's
    own config holds the flow-matching fields too: on a DDPM table they must keep their inert defaults."""
    name = str(cfg.get("_class_name") or "")
    own = name == "SdekitScheduler" or _has_table(cfg)  # flow fields beside a beta table: checked one by one
    if name.startswith("FlowMatch") or cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction" \
            or (FLOW_MARKERS & set(cfg) and not own):
        raise ValueError(f"scheduler {name or 'config'} {FLOW_MESSAGE}")
    if not name and any(cfg.get(k) is not None for k in EDM_MARKERS):  # an in-memory config has no _class_name:
        # EDM's own fields mark it
        name = "EDMEulerScheduler/EDMDPMSolverMultistepScheduler config"
    why = refused_class(name)
    if why is not None:
        raise ValueError(f"scheduler {name} {why}")
    problems = []
    for key, value in cfg.items():
        if key.startswith("_") or key in MODEL_FIELDS | GRID_FIELDS | SOLVER_FIELDS:
            continue
        if own and key in SCHEDULER_FLOW_DEFAULTS:
            if key not in FLOW_DYNAMIC_FIELDS and not same_setting(value, SCHEDULER_FLOW_DEFAULTS[key]):
                problems.append(f"{key}={value!r} (a flow-matching setting: it applies with "
                                "prediction_type='flow_prediction' only)")
            continue
        if key in INERT_DEFAULTS:
            if not same_setting(value, INERT_DEFAULTS[key]):
                problems.append(f"{key}={value!r} (accepted: {INERT_DEFAULTS[key]!r} only; the 'diffusers' grid "
                                "does not reproduce it)")
            continue
        problems.append(f"{key}={value!r} (unknown to sdekit)")
    ptype = cfg.get("prediction_type", "epsilon")
    if ptype not in PREDICTION_TYPES:
        problems.append(f"prediction_type={ptype!r} (accepted: {', '.join(PREDICTION_TYPES)})")
    vtype = cfg.get("variance_type")
    if vtype not in VARIANCE_TYPES:
        problems.append(f"variance_type={vtype!r} (accepted: {', '.join(map(str, VARIANCE_TYPES))})")
    threshold = threshold_setting(cfg, problems)
    if problems:
        raise ValueError(f"scheduler config {name or ''} has setting(s) sdekit cannot honour: " + "; ".join(problems))
    return DiffusersSpec(cfg, PREDICTION_TYPES[ptype], vtype in ("learned", "learned_range"), threshold)


@dataclass(frozen=True)
class FlowSpec:
    """A FlowMatch Euler/Heun scheduler config, checked: the path's shift, the network's timestep scale N
    (timestep = s N for the path's noise level s) and which diffusers scheduler it was ("euler" or "heun")."""

    config: dict
    shift: float
    num_train_timesteps: int
    scheduler: str
    dynamic: bool = False  # the shift came from ``mu`` (use_dynamic_shifting): the training sigmas are unshifted


def is_flow_scheduler(cfg: dict) -> bool:
    """True for a FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler config (by ``_class_name``)."""
    return str(cfg.get("_class_name") or "") in FLOW_SCHEDULERS


def check_flow_config(cfg: dict, mu: Optional[float] = None) -> FlowSpec:
    """Raise ValueError for every field of a FlowMatch Euler/Heun config sdekit cannot honour (module docstring),
    naming it; return the FlowSpec. ``mu``: the dynamic shift a pipeline computes for its image size (its
    ``calculate_shift``), required with use_dynamic_shifting=True: the shift is then exp(mu) (time_shift_type
    "exponential") or mu ("linear"), diffusers' time_shift(mu, 1, t) written as SD3's shift."""
    name = str(cfg.get("_class_name") or "")
    if name not in FLOW_SCHEDULERS:
        raise ValueError(f"expected a config of {' or '.join(FLOW_SCHEDULERS)}; got {name or 'a config without _class_name'}")
    problems = []
    dynamic = bool(cfg.get("use_dynamic_shifting", False))
    for key, value in cfg.items():
        if key.startswith("_") or key in FLOW_MODEL_FIELDS or key in FLOW_DYNAMIC_FIELDS:
            continue
        if key == "use_dynamic_shifting" and dynamic and mu is not None:
            continue
        if key in FLOW_INERT_DEFAULTS:
            if not same_setting(value, FLOW_INERT_DEFAULTS[key]):
                why = ("the shift depends on each call's image size: pass mu= (the pipeline's calculate_shift for "
                       "the size you sample), or the config with use_dynamic_shifting=False and shift=exp(mu)"
                       if key == "use_dynamic_shifting" else "a grid or sampler setting sdekit does not reproduce")
                problems.append(f"{key}={value!r} (accepted: {FLOW_INERT_DEFAULTS[key]!r} only; {why})")
            continue
        problems.append(f"{key}={value!r} (unknown to sdekit)")
    shift, n = cfg.get("shift", 1.0), cfg.get("num_train_timesteps", 1000)
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        problems.append(f"shift={shift!r} (accepted: a finite number > 0)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        problems.append(f"num_train_timesteps={n!r} (accepted: an integer >= 2)")
    if mu is not None and not dynamic:
        problems.append(f"mu={mu!r} (the dynamic shift, read only with use_dynamic_shifting=True; this config's "
                        f"shift is {shift!r})")
    elif dynamic and mu is not None:
        kind = cfg.get("time_shift_type", "exponential")
        if not (isinstance(mu, (int, float)) and math.isfinite(mu)) or kind not in ("exponential", "linear") \
                or (kind == "linear" and mu <= 0):
            problems.append(f"mu={mu!r} with time_shift_type={kind!r} (accepted: a finite mu, > 0 for 'linear'; "
                            "time_shift_type 'exponential' or 'linear')")
        else:
            shift = math.exp(mu) if kind == "exponential" else float(mu)
    if problems:
        raise ValueError(f"scheduler config {name} has setting(s) sdekit cannot honour: " + "; ".join(problems))
    return FlowSpec(cfg, float(shift), int(n), FLOW_SCHEDULERS[name], dynamic)


def is_scheduler_flow_config(cfg: dict) -> bool:
    """Whether SdekitScheduler steps ``cfg`` on the rectified-flow path: a FlowMatch Euler/Heun config, or
    prediction_type="flow_prediction" without diffusers' use_flow_sigmas grid (which is refused)."""
    if cfg.get("use_flow_sigmas"):
        return False
    name = str(cfg.get("_class_name") or "")
    return is_flow_scheduler(cfg) or cfg.get("prediction_type") == "flow_prediction" \
        or bool(FLOW_MARKERS & set(cfg) and name != "SdekitScheduler" and not _has_table(cfg))  # in-memory
    # configs have no _class_name: FlowMatch fields without a beta table mark one


def check_scheduler_flow_config(cfg: dict, ddpm_defaults: dict) -> DiffusersSpec:
    """Raise ValueError for every field of a flow-matching config SdekitScheduler cannot honour, naming it; return
    the spec (prediction "velocity"). Taken: num_train_timesteps (timestep = sigma N), the grid fields of
    FlowMatchEulerDiscreteScheduler (shift, use_dynamic_shifting with ``mu`` at set_timesteps, time_shift_type,
    base/max shift and image lengths, shift_terminal, Karras/exponential/beta sigmas: its own set_timesteps lays them
    out). Refused: invert_sigmas, stochastic_sampling, and the beta-table fields (``ddpm_defaults``: SdekitScheduler's
    defaults, which a FlowMatch config leaves alone) at any other value."""
    name = str(cfg.get("_class_name") or "")
    if name and name not in FLOW_SCHEDULERS and name != "SdekitScheduler":
        raise ValueError(f"scheduler {name} is not a FlowMatch Euler/Heun config; SdekitScheduler reads the "
                         "flow-matching grid of those two only (for DPM-Solver/UniPC with use_flow_sigmas, pass a "
                         "FlowMatchEulerDiscreteScheduler config with shift=flow_shift)")
    refused = {"invert_sigmas": "sigmas run from 0 to 1, the path reversed",
               "stochastic_sampling": "FlowMatchEuler's re-noising of x0 with fresh noise each step is its own "
                                      "sampler: run a stochastic sdekit solver (e.g. 'ddpm', 'dpmpp_2m_sde') instead"}
    problems = []
    for key, value in cfg.items():
        if key.startswith("_") or key in SOLVER_FIELDS | FLOW_GRID_FIELDS | {"num_train_timesteps", "prediction_type"}:
            continue
        if key in refused:
            if value:
                problems.append(f"{key}={value!r} ({refused[key]})")
        elif key in ddpm_defaults:
            if not same_setting(value, ddpm_defaults[key]):
                problems.append(f"{key}={value!r} (a DDPM beta-table setting; a flow-matching config has none)")
        else:
            problems.append(f"{key}={value!r} (unknown to sdekit)")
    shift, n = cfg.get("shift", 1.0), cfg.get("num_train_timesteps", 1000)
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        problems.append(f"shift={shift!r} (accepted: a finite number > 0)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        problems.append(f"num_train_timesteps={n!r} (accepted: an integer >= 2)")
    if cfg.get("time_shift_type", "exponential") not in ("exponential", "linear"):
        problems.append(f"time_shift_type={cfg['time_shift_type']!r} (accepted: 'exponential', 'linear')")
    end = cfg.get("shift_terminal")
    if end is not None and not (isinstance(end, (int, float)) and 0.0 < end < 1.0):
        problems.append(f"shift_terminal={end!r} (accepted: None or a number in (0, 1))")
    if cfg.get("prediction_type", "flow_prediction") != "flow_prediction":
        problems.append(f"prediction_type={cfg['prediction_type']!r} (a flow-matching network predicts the velocity: "
                        "'flow_prediction')")
    if sum(bool(cfg.get(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
        problems.append("more than one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
    if problems:
        raise ValueError(f"flow-matching scheduler config {name} has setting(s) sdekit cannot honour: "
                         + "; ".join(problems))
    return DiffusersSpec(cfg, "velocity", False, None)
