"""``SdekitScheduler``: any one-call-per-step sdekit solver inside an unmodified diffusers pipeline.

    pipe.scheduler = SdekitScheduler.from_config(pipe.scheduler.config, solver="unipc_3")
    image = pipe(num_inference_steps=10).images

How it works. A pipeline owns the loop: for each timestep it calls the network once and hands the output to
``step``. An sdekit solver is a generator that owns its loop too: each ``next()`` asks the evaluator for one
prediction at (x_i, t_i) and yields x_{i+1}. The two are joined by giving the solver a ``ScoreModel`` whose
"network" is the output the pipeline just computed: ``step(model_output, t_i, x_i)`` loads that output and
resumes the generator once; the solver's single request at (x_i, t_i) is answered with it (converted to x0,
eps or score by the usual ``ScoreModel``, thresholded by ``ThresholdedModel`` when the config asks), and the
state it yields is ``prev_sample``. A solver that asks twice in one step, at another state, or not at all (e.g.
``afs=True``) is stopped with ``SolverError``: only solvers with one network call per step at the current state
fit a pipeline (``eligible_solvers()``). UniPC's corrector reuses the next step's call, so it fits.

The sample the pipeline hands over may differ from the last ``prev_sample`` (inpainting blends, callbacks that edit
latents): it is copied into the solver's state tensor before the generator resumes, so the step starts from it and
the solver keeps its history of model outputs, as diffusers' multistep schedulers do (the network's output was
computed there; the pipeline-output net checks that the solver asks at exactly that state). Stochastic solvers run
with ``noise="step"``: each step's Gaussians are drawn from the generator the pipeline passes to ``step``.

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

import functools
import inspect
import math
from typing import Any, Optional, Union

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..parameterization import ScoreModel, ThresholdedModel, threshold_x0
from ..sde import DiscreteVPSDE, LinearSDE, RectifiedFlow
from ..solvers.base import Evaluator, SolverError
from ..solvers.discrete import _CLASS_NAMES, SCHEDULERS, diffusers_grid
from ..solvers.driver import sample
from ..solvers.exponential import unipc_steps
from ..solvers.grids import check_grid
from ..solvers.registry import available, get
from .diffusers_config import (SCHEDULER_FLOW_DEFAULTS, check_config, check_scheduler_flow_config,
                               is_scheduler_flow_config, read_config)
from .diffusers_models import _EQUIVALENTS, sde_from_scheduler, times_from_sigmas

Tensor = torch.Tensor

__all__ = ["SdekitScheduler", "eligible_solvers"]

DIFFUSERS_SOLVER = "diffusers"  # solver= name for diffusers' own algorithm of the grid scheduler and its solver fields
# the solver_type values of diffusers' multistep classes, and the one each takes for another class's
_SOLVER_TYPES = {"dpmsolver_multistep": (("midpoint", "heun"), "midpoint"), "unipc_multistep": (("bh1", "bh2"), "bh2"),
                 "deis_multistep": (("logrho",), "logrho")}
DIFFUSERS_SOLVER_FIELDS = ("solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
                           "predict_x0", "disable_corrector")


def eligible_solvers() -> list:
    """Registered solvers that can run inside a pipeline: fixed steps, one network call per step (external
    integrators, which run the whole solve at once, excluded)."""
    return [n for n in available() if not get(n).adaptive and get(n).nfe_per_step == 1
            and not get(n).fn.__module__.endswith(".backends")]


def _layout_for(solver: str) -> str:
    if solver.startswith(("dpmpp_", "dpm_solver_")):
        return "dpmsolver_multistep"
    if solver.startswith("unipc_"):
        return "unipc_multistep"
    if solver.startswith("deis_logrho_"):
        return "deis_multistep"
    if solver in ("ddim", "ddpm"):
        return solver
    return "dpmsolver_multistep"


def _as_times(grid) -> Tensor:
    """float64 times of a grid: a TunedGrid (its ``ts``), a tensor, an array or a list of floats."""
    grid = getattr(grid, "ts", grid)
    if isinstance(grid, Tensor):
        return grid.detach().to(torch.float64).cpu().reshape(-1)
    return torch.as_tensor(np.asarray(grid, dtype=np.float64)).reshape(-1)


class _PipelineOutput:
    """net(x, t) of a solver inside a pipeline: answers exactly one request per step, at the loaded state and
    time, with the network output the pipeline computed."""

    def __init__(self, solver: str):
        self.solver = solver
        self.pending: Optional[tuple[Tensor, Tensor, float]] = None  # (x, output, t) until the solver asks

    def load(self, x: Tensor, out: Tensor, t: float):
        self.pending = (x, out, t)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.pending is None:
            raise SolverError(f"solver {self.solver!r} asks the network twice in one step; a pipeline calls it once "
                              f"per timestep (eligible solvers: {', '.join(eligible_solvers())})")
        px, out, pt = self.pending
        tt = float(t.reshape(-1)[0])
        if abs(tt - pt) > 1e-6 * max(1.0, abs(pt)) or (x is not px and not torch.equal(x, px)):
            raise SolverError(f"solver {self.solver!r} asks the network at t = {tt:.6g} away from the pipeline's "
                              f"current sample and timestep (t = {pt:.6g}); only solvers that evaluate at the state "
                              "they returned can run in a pipeline")
        self.pending = None
        return out

    def check_consumed(self):
        if self.pending is not None:
            self.pending = None
            raise SolverError(f"solver {self.solver!r} did not use the network output of this step (afs=True?); a "
                              "pipeline calls the network at every timestep")


class _StepNoise:
    """Noise for stochastic solvers: drawn with the generator the pipeline passes to ``step`` (as diffusers'
    schedulers do), so the draws follow the pipeline's seed, not sdekit's per-row streams; ``given`` (DDIM's
    ``variance_noise``) is used instead of the step's draw."""

    generator = None
    given: Optional[Tensor] = None

    def randn_like(self, x: Tensor) -> Tensor:
        if self.given is not None:
            z, self.given = self.given, None
            return z.to(device=x.device, dtype=x.dtype).expand_as(x)
        return randn_tensor(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)


class _DDIMClippedX0(ScoreModel):
    """DDIMScheduler's thresholding: the step takes the thresholded x0 c(x0) but keeps the network's eps,

        x_s = alpha_s c(x0) + sqrt(sigma_s^2 - c_s^2) eps + c_s z,   eps = (x_t - alpha_t x0)/sigma_t,

    (c_s: ddim's noise level for ``eta``). sdekit's ddim steps as x_s = k x_t + (alpha_s - k alpha_t) X + c_s z with
    k = sqrt(sigma_s^2 - c_s^2)/sigma_t and X its x0; so this model answers X = (alpha_s c(x0) - k alpha_t x0) /
    (alpha_s - k alpha_t) at each time t of ``ts`` (s the next one), which makes that step DDIMScheduler's."""

    def __init__(self, model: ScoreModel, threshold: tuple, ts: Tensor, eta: float):
        super().__init__(model.net, model.sde, model.prediction)
        self.model, self.clip = model, ThresholdedModel(model, *threshold)
        a, s = model.sde.alpha(ts).tolist(), model.sde.sigma(ts).tolist()
        self.ts, self.coef = ts, []
        for i in range(len(ts) - 1):
            c = eta * s[i + 1] * math.sqrt(-math.expm1(2 * math.log(a[i] * s[i + 1] / (s[i] * a[i + 1])))) \
                if eta > 0 and s[i + 1] > 0 else 0.0
            k = math.sqrt(max(s[i + 1] ** 2 - c * c, 0.0)) / s[i]
            self.coef.append((a[i + 1], k * a[i]))

    def predict(self, x: Tensor, t, kind: str) -> Tensor:
        if kind != "x0":
            raise SolverError(f"ddim asked for {kind}; DDIM's clipping is defined on its x0 step only")
        raw = self.model.predict(x, t, "x0")
        clipped = threshold_x0(raw, self.clip.ratio, self.clip.max_value)
        d = (self.ts[:-1] - float(torch.as_tensor(t).reshape(-1)[0])).abs()
        if d.numel() == 0 or float(d.min()) > 1e-12 * max(1.0, float(self.ts[0])):
            return clipped  # the x0 jump from the last grid time (sigma = 0 next): x_s = alpha_s c(x0)
        a_s, ka = self.coef[int(d.argmin())]
        return (a_s * clipped - ka * raw) / (a_s - ka)


def _velocity_of_a_gaussian(x: Tensor, t: Tensor) -> Tensor:
    """E[n - x0 | x_t] on the rectified-flow path for data N(0, c^2 I), c = 1/2: (t - (1 - t) c^2) x / v_t with
    v_t = (1 - t)^2 c^2 + t^2 (finite at t = 1, where x_t is pure noise)."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (t - (1 - t) * 0.25) * x / ((1 - t) ** 2 * 0.25 + t ** 2)


@functools.lru_cache(maxsize=None)
def _pure_noise_problem(solver: str, options: tuple) -> Optional[str]:
    """Why ``solver`` (with ``options``) cannot start at pure noise (alpha = 0: a flow-matching grid's sigma = 1),
    or None: found by solving from t = 1 on the rectified-flow path with an exact Gaussian velocity, with the
    step noise SdekitScheduler uses. The solver's own refusal (noise-form updates divide by alpha) or a
    non-finite result names it."""
    model = ScoreModel(_velocity_of_a_gaussian, RectifiedFlow(eps=1e-3), "velocity")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.tensor([1.0, 0.7, 0.4, 0.1], dtype=torch.float64)
    try:
        out = sample(model, x, solver, ts=ts, generator=0, noise="step" if get(solver).stochastic else "path",
                     **dict(options)).x
    except (ValueError, ArithmeticError, SolverError) as err:
        return f"{type(err).__name__}: {err}"
    return None if bool(torch.isfinite(out).all()) else "its states become non-finite"


def _ddpm_defaults() -> dict:
    """SdekitScheduler's beta-table and grid fields at their defaults (what a flow-matching config leaves alone)."""
    params = inspect.signature(SdekitScheduler.__init__).parameters
    own = {"self", "solver", "solver_options", "grid_scheduler", "grid_ts", "prediction_type", *DIFFUSERS_SOLVER_FIELDS}
    return {k: p.default for k, p in params.items() if k not in own and k not in SCHEDULER_FLOW_DEFAULTS}


class SdekitScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that steps with an sdekit solver (module docstring).

    Config: the model fields of the pipeline's scheduler (beta table, prediction_type, variance_type,
    thresholding / clip_sample; refused settings raise, see ``sdekit.interop.diffusers_config``), the grid fields
    (timestep_spacing, steps_offset, final_sigmas_type, use_karras_sigmas, set_alpha_to_one), and
    solver: a name from ``eligible_solvers()``; solver_options: its keyword options (e.g.
      {"lower_order_final": False}, {"eta": 1.0} for ddim); or "diffusers": diffusers' own algorithm of
      ``grid_scheduler`` (from_config takes it from the scheduler's class when it is named) with the config's
      solver fields solver_order, algorithm_type, solver_type, lower_order_final, euler_at_final, predict_x0,
      disable_corrector (None: that class's default; fields the config leaves at their defaults take that class's,
      e.g. DDIMScheduler's clip_sample=True), picked at set_timesteps for the step count as
      ``diffusers_equivalent`` does; settings with no exact sdekit counterpart are refused there by name. With
      another solver those fields are kept in the config (switching back to diffusers' class restores them) and
      have no effect;
    grid_scheduler: whose timesteps to lay out (ddim, ddpm, dpmsolver_multistep, unipc_multistep, deis_multistep,
      euler, heun; default from the solver);
    grid_ts: a fixed sdekit grid, times t_0 > ... > t_K on ``self.sde`` (e.g. ``sdekit.tune(...).ts`` or
      ``make_grid(sched.sde, K, "karras")``): ``set_timesteps(K)`` then lays out exactly these K steps, one network
      call each, and the pipeline takes the steps ``sdekit.sample(model, x_T, solver, ts=grid_ts)`` takes (a grid
      ending at sigma = 0 ends with its x0 jump). Tune on ``from_diffusers(net, sched)`` (this scheduler), whose
      model has the same time.

    Flow matching (prediction_type="flow_prediction", set by ``from_config`` on a FlowMatchEulerDiscreteScheduler or
    FlowMatchHeunDiscreteScheduler config): the network's output is the velocity d x/d sigma = n - x0 on sdekit's
    ``RectifiedFlow`` (``self.sde``) whose time is diffusers' sigma, x_t = (1 - t) x0 + t n; the grid is the sigmas
    of FlowMatchEulerDiscreteScheduler's own set_timesteps for the config (shift, use_dynamic_shifting with ``mu``
    passed to set_timesteps as SD3/Flux pipelines do, time_shift_type, shift_terminal, Karras/exponential/beta
    sigmas, custom ``sigmas``/``timesteps``), timesteps = sigma N, and ``self.sigmas`` holds those flow sigmas
    (not sigma/alpha). ``euler`` then is FlowMatchEulerDiscreteScheduler's step. A solver that cannot start at pure
    noise (sigma = 1: noise-form and Adams-in-sigma/alpha updates divide by alpha) is refused at set_timesteps,
    naming why; it runs on grids that start below it (image-to-image).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler",
                                                                  "FlowMatchHeunDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Optional[Union[np.ndarray, list]] = None,
                 prediction_type: str = "epsilon", variance_type: Optional[str] = None, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, clip_sample: bool = False,
                 clip_sample_range: float = 1.0, rescale_betas_zero_snr: bool = False,
                 timestep_spacing: Optional[str] = None, steps_offset: int = 0, final_sigmas_type: str = "zero",
                 use_karras_sigmas: bool = False, set_alpha_to_one: bool = True, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, lambda_min_clipped: float = -math.inf,
                 shift: float = 1.0, use_dynamic_shifting: bool = False, base_shift: float = 0.5,
                 max_shift: float = 1.15, base_image_seq_len: int = 256, max_image_seq_len: int = 4096,
                 time_shift_type: str = "exponential", shift_terminal: Optional[float] = None,
                 invert_sigmas: bool = False, stochastic_sampling: bool = False,
                 solver: str = "dpmpp_2m", solver_options: Optional[dict] = None,
                 grid_scheduler: Optional[str] = None, grid_ts: Optional[list] = None,
                 solver_order: Optional[int] = None, algorithm_type: Optional[str] = None,
                 solver_type: Optional[str] = None, lower_order_final: Optional[bool] = None,
                 euler_at_final: Optional[bool] = None, predict_x0: Optional[bool] = None,
                 disable_corrector: Optional[list] = None):
        if solver == DIFFUSERS_SOLVER and grid_scheduler in _CLASS_NAMES.values():
            # diffusers' own algorithm: the fields left at their defaults take that scheduler's defaults (what its
            # from_config gives them; e.g. DDIMScheduler's clip_sample=True), so the algorithm is that class's
            self.register_to_config(**self._class_defaults(str(grid_scheduler)))
            kinds = _SOLVER_TYPES.get(str(grid_scheduler))
            if kinds is not None and self.config["solver_type"] not in (None, *kinds[0]):
                # another multistep class's solver_type, as each of diffusers' classes maps the others' to its own
                self.register_to_config(solver_type=kinds[1])
            set_alpha_to_one, final_sigmas_type = self.config["set_alpha_to_one"], self.config["final_sigmas_type"]
            use_karras_sigmas, steps_offset = self.config["use_karras_sigmas"], self.config["steps_offset"]
            timestep_spacing = self.config["timestep_spacing"]
        self.flow = prediction_type == "flow_prediction"
        if self.flow:
            self.spec = check_scheduler_flow_config(dict(self.config), _ddpm_defaults())
            self.sde: LinearSDE = RectifiedFlow(eps=1.0 / num_train_timesteps)
            if grid_scheduler is not None:
                raise ValueError(f"grid_scheduler={grid_scheduler!r}: a flow-matching config's grid is "
                                 "FlowMatchEulerDiscreteScheduler's (its shift and sigma options)")
        else:
            self.spec = check_config({**self.config, "_class_name": "SdekitScheduler"})
            # the table of the class whose grid is laid out: DPMSolverMultistep, UniPC and Euler hold a zero-SNR
            # table's last abar at 2^-24 (sde_from_scheduler), DDIM, DDPM and DEIS at 0
            layout_class = {v: k for k, v in _CLASS_NAMES.items()}.get(grid_scheduler or _layout_for(solver), "")
            self.sde = sde_from_scheduler({**self.config, "_class_name": layout_class})
        self._name, self._options = solver, dict(solver_options or {})  # solver="diffusers": set by set_timesteps
        if solver == DIFFUSERS_SOLVER:
            if grid_scheduler is None:
                raise ValueError("solver='diffusers' (diffusers' own algorithm) needs grid_scheduler=, the scheduler "
                                 f"whose algorithm to run ({', '.join(_EQUIVALENTS)}): a pipeline's in-memory "
                                 "config does not name its class (a saved one, or the scheduler object, does)")
            if solver_options:
                raise ValueError("solver='diffusers' takes its options from the config's solver fields (solver_order, "
                                 "algorithm_type, solver_type, lower_order_final, ...); drop solver_options")
            self.solver = None
        else:
            self.solver = self._check_solver(solver, self._options)
        self._fixed_ts: Optional[Tensor] = None
        if grid_ts is not None:
            self._fixed_ts = check_grid(self.sde, _as_times(grid_ts))
            if not bool((self._fixed_ts[1:] < self._fixed_ts[:-1]).all()):
                raise ValueError("grid_ts must be decreasing (noise to data): t_0 > ... > t_K")
            self.register_to_config(grid_ts=self._fixed_ts.tolist())  # a plain list: the config stays JSON
        layout = grid_scheduler or _layout_for(solver)
        if layout not in SCHEDULERS:
            raise ValueError(f"unknown grid_scheduler {layout!r}; accepted: {', '.join(SCHEDULERS)}")
        final = ("zero" if set_alpha_to_one else "sigma_min") if layout in ("ddim", "ddpm") else \
            "sigma_min" if layout == "deis_multistep" else final_sigmas_type  # DEIS's only end in diffusers
        self.grid_options = {"scheduler": layout, "final_sigmas_type": final, "karras": bool(use_karras_sigmas),
                             "steps_offset": int(steps_offset), "spacing": timestep_spacing}
        if layout == "dpmsolver_singlestep":
            self.grid_options.pop("spacing")
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self.ts: Optional[Tensor] = None
        self.timesteps: Optional[Tensor] = None
        self.sigmas: Optional[Tensor] = None
        self._begin_index: Optional[int] = None
        self._reset()

    def _class_defaults(self, layout: str) -> dict:
        """The defaults of diffusers' scheduler class for ``layout`` for the fields this config left at
        SdekitScheduler's defaults (``_use_default_values``) and that class has."""
        import diffusers

        cls = getattr(diffusers, {v: k for k, v in _CLASS_NAMES.items()}[layout])
        theirs = inspect.signature(cls.__init__).parameters
        mine = set(inspect.signature(SdekitScheduler.__init__).parameters) - {"self", "solver", "solver_options",
                                                                             "grid_scheduler", "grid_ts"}
        return {k: theirs[k].default for k in self.config.get("_use_default_values", ())
                if k in theirs and k in mine and theirs[k].default is not inspect.Parameter.empty}

    @staticmethod
    def _check_solver(solver: str, options: dict):
        ok = eligible_solvers()
        if solver not in ok:
            get(solver)  # an unknown name lists every solver
            raise ValueError(f"solver {solver!r} makes {get(solver).nfe_per_step} network calls per step or chooses "
                             f"its own steps; a pipeline calls the network once per timestep: {', '.join(ok)}")
        info = get(solver)
        unknown = set(options) - set(info.options)
        if unknown:
            raise ValueError(f"solver {solver!r} got unknown option(s) {sorted(unknown)}; accepted: "
                             f"{', '.join(f'{k}={v!r}' for k, v in info.options.items()) or 'none'}")
        if options.get("afs", False):
            raise ValueError("afs=True skips the first network call, but a pipeline calls the network at every timestep")
        return info

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``, but every field of ``config`` (and of kwargs) is checked first: one that
        would change the maths and that sdekit does not honour raises ValueError instead of being dropped. ``config``
        may be the scheduler itself; with ``solver="diffusers"`` its class (or a saved config's ``_class_name``) is
        the grid scheduler whose algorithm runs."""
        if config is not None:
            given = read_config(config)
            cfg = {**given, **kwargs}
            if is_scheduler_flow_config(given) or kwargs.get("prediction_type") == "flow_prediction":
                kwargs = {**kwargs, "prediction_type": kwargs.get("prediction_type", "flow_prediction")}
                check_scheduler_flow_config({**cfg, **kwargs}, _ddpm_defaults())
            else:
                check_config(cfg)
            source = _CLASS_NAMES.get(str(given.get("_class_name") or ""))
            if kwargs.get("solver", given.get("solver")) == DIFFUSERS_SOLVER and source is not None \
                    and kwargs.get("grid_scheduler", given.get("grid_scheduler")) is None:
                kwargs["grid_scheduler"] = source  # diffusers' own algorithm: the one of the scheduler given
            if isinstance(config, ConfigMixin):  # a scheduler object: its config (diffusers reads it as a path)
                config = given
        if kwargs.get("grid_ts") is not None:
            kwargs["grid_ts"] = _as_times(kwargs["grid_ts"]).tolist()
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- the grid ----------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, timesteps=None, sigmas=None,
                      mu: Optional[float] = None):
        """The grid for ``num_inference_steps`` steps (diffusers' layout, module docstring), or explicit integer
        ``timesteps``, descending, one per network call, the end (t = 0 or the first table step) appended as
        final_sigmas_type says (DDPMScheduler's and DPMSolverMultistepScheduler's convention), or diffusers
        ``sigmas`` (sigma/alpha), descending, whose last is the end (EulerDiscreteScheduler's: K + 1 sigmas for K
        network calls, usually ending at 0). Flow-matching configs: what
        FlowMatchEulerDiscreteScheduler.set_timesteps takes (``mu``: the dynamic shift; ``sigmas`` are shifted as
        there). With ``grid_ts``: that grid, and ``num_inference_steps`` must be its number of steps."""
        taus = None
        if self._fixed_ts is not None:
            ts = self._fixed_grid(num_inference_steps, timesteps, sigmas, mu)
        elif self.flow:
            ts, taus = self._flow_grid(num_inference_steps, timesteps, sigmas, mu)
        else:
            if mu is not None:
                raise ValueError("mu is the dynamic shift of flow-matching configs; this scheduler steps a DDPM table")
            ts = self._table_grid(num_inference_steps, timesteps, sigmas)
        if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"the grid must be strictly decreasing with at least one step; got {ts.tolist()}")
        if self.config["solver"] == DIFFUSERS_SOLVER:
            self._use_diffusers_algorithm(int(num_inference_steps) if num_inference_steps is not None else len(ts) - 1)
        self._check_start(ts)
        self.ts = ts
        self._final_corrector = self._wants_final_corrector(num_inference_steps, ts)
        self._targets = self._ddim_targets(num_inference_steps, ts) if taus is None else None
        calls = ts if self._final_corrector else ts[:-1]
        if taus is None:
            tau = calls * self._table.N - 1 if not self.flow else calls * self.config["num_train_timesteps"]
            integral = not self.flow and bool(((tau - tau.round()).abs() < 1e-9).all())
            taus = tau.round().to(torch.int64) if integral else tau.to(torch.float32)
        self.timesteps = taus.to(device)
        self.sigmas = (ts if self.flow else self.sde.sigma(ts) / self.sde.alpha(ts)).to(torch.float32)
        self.num_inference_steps = len(self.timesteps)
        self._begin_index = None
        self._reset()

    def _use_diffusers_algorithm(self, steps: int):
        """solver="diffusers": the sdekit solver and options that are the algorithm of ``grid_scheduler`` with this
        config's solver fields (solver_order, algorithm_type, solver_type, lower_order_final, ...; None: that class's
        default) for ``steps`` steps (``diffusers_equivalent``'s mapping: DPMSolverMultistep 1/2 -> ddim/dpmpp_2m/
        dpm_solver_2m, UniPC -> unipc_k, DEIS -> deis_logrho_k, DDIM/Euler -> ddim, DDPM -> ddpm, Heun -> heun).
        A setting with no exact sdekit counterpart raises ValueError naming it."""
        layout = str(self.grid_options["scheduler"])
        if layout not in _EQUIVALENTS:
            raise ValueError(f"solver='diffusers' with grid_scheduler={layout!r}: no exact sdekit equivalent of that "
                             f"scheduler; accepted: {', '.join(_EQUIVALENTS)}")
        cfg = {k: v for k, v in self.config.items() if not (k in DIFFUSERS_SOLVER_FIELDS and v is None)}
        cfg["final_sigmas_type"] = self.grid_options["final_sigmas_type"]
        try:
            name, options = _EQUIVALENTS[layout](cfg, steps)
        except ValueError as err:
            raise ValueError(f"solver='diffusers': {err}") from err
        if name not in eligible_solvers():
            raise ValueError(f"solver='diffusers': {layout}'s algorithm is {name!r}, which calls the network "
                             f"{get(name).nfe_per_step} times per step; a pipeline calls it once per timestep")
        self._name, self._options = name, dict(options)
        self.solver = self._check_solver(name, self._options)

    def _ddim_targets(self, num_inference_steps, ts: Tensor) -> Optional[Tensor]:
        """Where DDIMScheduler and DDPMScheduler step to from each timestep tau: tau - N // K (prev_timestep), the end
        of the grid below 0. That is the next timestep for 'leading' spacing (and 'trailing' when K divides N), but
        not otherwise (e.g. 'trailing' with 6 steps: 999 -> 833 while the next call is at 832; 'linspace'): then
        ``ddim``/``ddpm`` take each step from its own timestep to that target, as those schedulers do, and the next
        step starts from the next timestep. None where the targets are the grid."""
        if self._name not in ("ddim", "ddpm") or self.grid_options["scheduler"] not in ("ddim", "ddpm") \
                or num_inference_steps is None or self._fixed_ts is None and self._from_diffusers(num_inference_steps) \
                or self._fixed_ts is not None or self.flow:
            return None
        table, calls = self._table, ts[:-1]
        tau = (calls * table.N - 1).round()
        prev = tau - table.N // int(num_inference_steps)
        targets = torch.where(prev >= 0, table.step_time(prev.clamp(min=0)), ts[-1].expand_as(prev))
        return None if bool(torch.equal(targets, ts[1:])) else targets

    def _wants_final_corrector(self, num_inference_steps, ts: Tensor) -> bool:
        """UniPC's final corrector (``solver_options["final_corrector"]``; by default where diffusers' UniPC grid
        ends with a zero-length step, which sdekit's grid drops: Karras or sigma-option grids with
        final_sigmas_type="sigma_min"). The network is then called once more, at the grid's last time, and that
        output corrects the last step, as in diffusers, so the pipeline gets num_inference_steps timesteps."""
        if not self._name.startswith("unipc_"):
            return False
        given = self._options.get("final_corrector")
        if given is not None:
            return bool(given)
        dropped = num_inference_steps is not None and self._fixed_ts is None and len(ts) - 1 < int(num_inference_steps)
        return bool(dropped and self.grid_options["scheduler"] == "unipc_multistep" and not self.flow
                    and float(self.sde.sigma(ts[-1])) > 0.0)

    def _table_grid(self, num_inference_steps, timesteps, sigmas) -> Tensor:
        given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of num_inference_steps, timesteps, sigmas")
        if num_inference_steps is not None and self._from_diffusers(int(num_inference_steps)):
            return self._diffusers_sigmas_grid(int(num_inference_steps))
        if num_inference_steps is not None:
            return diffusers_grid(self._table, int(num_inference_steps), **self.grid_options)
        if sigmas is not None:  # EulerDiscreteScheduler's convention: the last sigma is the end, not a call
            return times_from_sigmas(self._table, sigmas)
        calls = self._table.step_time(torch.as_tensor(timesteps, dtype=torch.float64))
        end = 0.0 if self.grid_options["final_sigmas_type"] == "zero" else float(self._table.step_time(0))
        return torch.cat([calls, torch.tensor([end], dtype=torch.float64)]) if float(calls[-1]) > end else calls

    def _flow_grid(self, num_inference_steps, timesteps, sigmas, mu) -> tuple[Tensor, Tensor]:
        """FlowMatchEulerDiscreteScheduler's sigmas (the times, float64 of its float32 values) and timesteps for this
        config and these arguments; its own checks (mu with dynamic shifting, lengths) apply."""
        import diffusers

        cls = diffusers.FlowMatchEulerDiscreteScheduler
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        ref: Any = cls(**{k: v for k, v in self.config.items() if k in accepted})
        ref.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps)
        ts = ref.sigmas.to(torch.float64).cpu()
        check_grid(self.sde, ts)
        return ts, ref.timesteps.to(torch.float32)

    def _fixed_grid(self, num_inference_steps, timesteps, sigmas, mu) -> Tensor:
        assert self._fixed_ts is not None
        steps = len(self._fixed_ts) - 1
        if timesteps is not None or sigmas is not None:
            raise ValueError("this scheduler's grid is grid_ts; set_timesteps takes num_inference_steps only (drop "
                             "grid_ts to pass timesteps or sigmas)")
        if num_inference_steps is not None and int(num_inference_steps) != steps:
            raise ValueError(f"grid_ts has {steps} steps (network calls); the pipeline asked for "
                             f"num_inference_steps={num_inference_steps}: pass num_inference_steps={steps}")
        return self._fixed_ts.clone()

    def _check_start(self, ts: Tensor):
        """A grid that starts at pure noise (alpha = 0) needs a solver that can step from there."""
        if float(self.sde.alpha(ts[:1])) != 0.0:
            return
        if not self.flow and self.spec.prediction in ("eps", "score"):
            raise ValueError(f"this grid starts at t = {float(ts[0]):g} (timestep {self._table.N - 1}), where the "
                             "zero-SNR table (rescale_betas_zero_snr) has alpha = 0: x is pure noise there, so an "
                             f"{self.config['prediction_type']!r} network's output determines no x0 (diffusers' "
                             "DDIMScheduler returns NaN there). Use prediction_type='v_prediction' (what zero-SNR models "
                             "are trained with) or a grid that starts below the last timestep (timestep_spacing="
                             "'leading')")
        solver, options = self._name, dict(self._options)
        try:
            why = _pure_noise_problem(solver, tuple(sorted(options.items())))
        except TypeError:  # unhashable option values: probe uncached
            why = _pure_noise_problem.__wrapped__(solver, tuple(sorted(options.items())))
        if why is not None:
            able = [n for n in eligible_solvers() if _pure_noise_problem(n, ()) is None]
            raise ValueError(f"solver {solver!r} cannot start at pure noise (alpha = 0 at t = {float(ts[0]):g}, where "
                             f"this grid starts): {why}. Solvers that can: {', '.join(able)} (or start the grid "
                             "below it)")

    def _from_diffusers(self, steps: int) -> bool:
        """Whether the grid comes from diffusers' own scheduler: sigma families ``grid="diffusers"`` does not lay
        out, or as many steps as the table has (diffusers then drops the repeated rounded timesteps)."""
        cfg = self.config
        return bool(cfg["use_exponential_sigmas"] or cfg["use_beta_sigmas"] or cfg["use_lu_lambdas"]
                    or math.isfinite(cfg["lambda_min_clipped"])
                    or (SCHEDULERS[str(self.grid_options["scheduler"])][0] == "k+1" and steps >= self._table.N))

    def _diffusers_sigmas_grid(self, steps: int) -> Tensor:
        """The times of the sigmas diffusers' ``grid_scheduler`` class sets for this config (``times_from_sigmas``;
        a repeated final sigma, diffusers' zero-length last step, is dropped as in ``grid="diffusers"``)."""
        import diffusers

        layout = str(self.grid_options["scheduler"])
        name = {v: k for k, v in _CLASS_NAMES.items()}[layout]
        cls = getattr(diffusers, name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        cfg = {k: v for k, v in self.config.items() if k in accepted and not k.startswith("_") and v is not None}
        if "final_sigmas_type" in accepted:
            cfg["final_sigmas_type"] = self.grid_options["final_sigmas_type"]
        try:
            ref = cls(**cfg)
            ref.set_timesteps(steps)
        except (ValueError, ImportError) as err:  # e.g. beta sigmas need scipy
            raise ValueError(f"{name} cannot lay out {steps} steps for this config: {err}") from err
        ts = times_from_sigmas(self._table, ref.sigmas) if getattr(ref, "sigmas", None) is not None else \
            torch.cat([self._table.step_time(torch.as_tensor(ref.timesteps, dtype=torch.float64)),
                       torch.zeros(1, dtype=torch.float64)])
        tau = ts * self._table.N - 1  # float32 sigmas of table steps: snap to the exact step times
        ts = torch.where((tau - tau.round()).abs() < 1e-3, self._table.step_time(tau.round()), ts)
        ts = torch.where(ts < self._table.step_time(0) / 2, torch.zeros_like(ts), ts)
        keep = torch.cat([torch.ones(1, dtype=torch.bool), ts[1:] < ts[:-1]])
        return ts[keep]

    @property
    def _table(self) -> DiscreteVPSDE:
        """The DDPM table (a flow-matching scheduler has none)."""
        if not isinstance(self.sde, DiscreteVPSDE):
            raise AttributeError("a flow-matching SdekitScheduler has no beta table (betas, alphas, alphas_cumprod)")
        return self.sde

    def _reset(self):
        self._final_corrector = getattr(self, "_final_corrector", False)
        self._targets = getattr(self, "_targets", None)  # Optional[Tensor]
        self._run = None  # (solver generator, pipeline-output net, evaluator, noise) once stepping starts
        self._step_index = None
        self._returned = None
        self._x = None
        self._eta = None

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start at timesteps[begin_index] (image-to-image pipelines); the solver then runs on the rest of the grid."""
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the network takes the VP state."""
        return sample

    def _row_times(self, timesteps, batch: int) -> Tensor:
        tau = torch.as_tensor(timesteps, dtype=torch.float64).cpu().reshape(-1)
        if not self.flow:
            t = self._table.step_time(tau)
        else:  # the grid's sigma where the timestep is on the grid (custom timesteps need not be sigma N)
            t = tau / self.config["num_train_timesteps"]
            if self.timesteps is not None and self.ts is not None:
                d = (tau[:, None] - self.timesteps.to(torch.float64).cpu()[None]).abs()
                hit = d.min(dim=1)
                t = torch.where(hit.values < 1e-4, self.ts[hit.indices], t)
        return t.expand(batch) if t.numel() == 1 else t

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) n at the times of ``timesteps`` (t = (timestep + 1)/N; flow matching: t the
        grid's sigma of the timestep, else timestep/N, so x_t = (1 - t) x0 + t n)."""
        return self.sde.perturb(original_samples, self._row_times(timesteps, original_samples.shape[0]), noise)

    def scale_noise(self, sample: Tensor, timestep, noise: Optional[Tensor] = None) -> Tensor:
        """FlowMatchEulerDiscreteScheduler's name and argument order for ``add_noise`` (its image-to-image
        pipelines call it): x_t = alpha(t) sample + sigma(t) noise."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target v = alpha(t) n - sigma(t) x0 (Salimans & Ho 2022) at ``timesteps``."""
        t = self._row_times(timesteps, sample.shape[0])
        shape = (-1,) + (1,) * (sample.ndim - 1)
        a, s = (f(t).reshape(shape).to(sample.device, sample.dtype) for f in (self.sde.alpha, self.sde.sigma))
        return a * noise - s * sample

    @property
    def alphas_cumprod(self) -> Tensor:
        """abar_n of the beta table (float32, as diffusers' schedulers hold it)."""
        return self._table.alphas_cumprod.to(torch.float32)

    @property
    def betas(self) -> Tensor:
        return self._table.betas.to(torch.float32)

    @property
    def alphas(self) -> Tensor:
        return (1 - self._table.betas).to(torch.float32)

    def __len__(self):
        return self.config.num_train_timesteps

    # -- stepping ----------------------------------------------------------------------------------------
    def _start(self, timestep, sample: Tensor, eta: Optional[float], clipped: Optional[bool]) -> int:
        assert self.ts is not None and self.timesteps is not None  # step checks that set_timesteps ran
        if self._begin_index is not None:
            index = self._begin_index
        else:
            hits = (self.timesteps.to(torch.float64).cpu() - float(timestep)).abs() < 1e-4
            if not bool(hits.any()):
                raise ValueError(f"timestep {float(timestep)} is not on the grid {self.timesteps.tolist()}")
            index = int(hits.nonzero()[0])
        ts = self.ts[index:]
        jump = float(self.sde.sigma(ts[-1])) == 0.0
        run_ts = ts[:-1] if jump else ts
        options = self._solver_options(eta)
        net, ev, noise = self._evaluator(run_ts, options, clipped)
        if self._final_corrector:  # the last pipeline call feeds the final corrector: step the unmerged states
            ev.solver = self._name
            options["final_corrector"] = True
            assert self.solver is not None  # resolved by set_timesteps
            gen = unipc_steps(ev, self._x, run_ts, int(self.solver.order) - 1, **options)
        else:
            assert self.solver is not None
            gen = self.solver.fn(ev, self._x, run_ts, **options) if len(run_ts) > 1 else None
        self._run = (gen, net, ev, noise)
        self._eta = eta
        return index

    def _evaluator(self, run_ts: Tensor, options: dict, clipped: Optional[bool]):
        """The pipeline-output net, the evaluator of the model on it (thresholded as the config says) and its noise."""
        net = _PipelineOutput(self._name)
        model = ScoreModel(net, self.sde, self.spec.prediction)
        if self.spec.threshold is not None:
            if self._name == "ddim" and not clipped:
                model = _DDIMClippedX0(model, self.spec.threshold, run_ts, float(options.get("eta", 0.0)))
            else:
                model = ThresholdedModel(model, *self.spec.threshold)
        noise = _StepNoise()
        # noise="step" (path=False): each step's noise is one draw from the pipeline's generator, as diffusers'
        return net, Evaluator(model, noise, path=False), noise

    def _target_run(self, i: int, clipped: Optional[bool]):
        """DDIMScheduler's step i as a solve of its own, from ts[i] to its target (``_ddim_targets``)."""
        assert self._targets is not None and self.ts is not None
        pair = torch.stack([self.ts[i], self._targets[i]])
        jump = float(self.sde.sigma(pair[1])) == 0.0
        options = self._solver_options(self._eta)
        net, ev, noise = self._evaluator(pair[:1] if jump else pair, options, clipped)
        assert self.solver is not None
        return (None if jump else self.solver.fn(ev, self._x, pair, **options)), net, ev, noise

    def _solver_options(self, eta: Optional[float]) -> dict:
        """solver_options, with the pipeline's ``eta`` as ddim's eta (DDIM's eta in diffusers' step) unless
        solver_options fixes it; another solver refuses a non-zero eta (pipelines pass eta=0.0 by default)."""
        options = dict(self._options)
        if eta is None:
            return options
        eta = float(eta)
        if self._name == "ddim":
            if "eta" in options and float(options["eta"]) != eta:
                raise ValueError(f"the pipeline passes eta={eta} but solver_options fixes eta={options['eta']}; "
                                 "drop eta from solver_options to take the pipeline's")
            options["eta"] = eta
        elif eta != 0.0:
            raise ValueError(f"eta={eta} is DDIM's noise level (diffusers' DDIMScheduler.step); solver "
                             f"{self._name!r} does not take it: use solver='ddim' or set the solver's own "
                             f"options in solver_options ({', '.join(self.solver.options) if self.solver else 'none'})")
        return options

    def step(self, model_output: Tensor, timestep, sample: Tensor, eta: Optional[float] = None,
             use_clipped_model_output: Optional[bool] = None, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[Tensor] = None, return_dict: bool = True):
        """One solver step from ``sample`` at ``timestep`` with the network output the pipeline computed there.

        The signature is DDIMScheduler.step's (a torch.Generator as the fourth positional argument is taken as
        ``generator``, DDPMScheduler.step's order). ``sample`` may differ from the previous step's
        ``prev_sample`` (inpainting blends, callbacks that edit latents): the solver steps from it and keeps its
        history of model outputs, as diffusers' multistep schedulers do (a corrector, UniPC's or SA-Solver's,
        then corrects the previous step from its own state, as diffusers' UniPC does).
        ``eta``: DDIM's eta (solver ddim; others accept 0 only). ``use_clipped_model_output`` (ddim with
        thresholding or clip_sample): False/None keeps the network's eps beside the clipped x0, as
        DDIMScheduler; True derives eps from the clipped x0 (what every other solver does).
        ``variance_noise``: the step's noise instead of a draw from ``generator``."""
        if isinstance(eta, torch.Generator):  # DDPMScheduler.step(model_output, timestep, sample, generator)
            generator, eta = eta, None
        if self.ts is None:
            raise ValueError("call set_timesteps before step")
        assert self.timesteps is not None  # set with ts by set_timesteps
        work = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        if self._run is None:
            self._x = sample.to(work, copy=True)  # the solver's state never aliases the pipeline's tensors
            self._step_index = self._start(timestep, sample, eta, use_clipped_model_output)
        else:
            if (eta is not None or self._eta is not None) and eta != self._eta:
                raise ValueError(f"eta changed from {self._eta} to {eta} during the solve")
            if sample is not self._returned and not torch.equal(sample, self._returned):
                self._x.copy_(sample)  # the solver resumes from its state tensor: step from the given sample
        i = self._step_index
        if i >= len(self.timesteps):
            raise ValueError(f"step called {i + 1} times on a grid of {len(self.timesteps)} timesteps")
        if abs(float(timestep) - float(self.timesteps[i])) > 1e-4:
            raise ValueError(f"step got timestep {float(timestep)}; the next on the grid is {float(self.timesteps[i])}")
        out = model_output
        if self.spec.learned_variance and out.shape[1] == 2 * sample.shape[1]:
            out = out[:, : sample.shape[1]]
        if self._targets is not None:
            self._run = self._target_run(i, use_clipped_model_output)
        gen, net, ev, noise = self._run
        noise.generator, noise.given = generator, variance_noise
        t = float(self.ts[i])
        net.load(self._x, out.to(work), t)
        end = self.ts[-1] if self._targets is None else self._targets[i]
        if (i == len(self.timesteps) - 1 or self._targets is not None) and float(self.sde.sigma(end)) == 0.0:
            x = float(self.sde.alpha(end)) * ev.x0(self._x, t)  # the x0 jump to sigma = 0
        else:
            x = next(gen)
        net.check_consumed()
        self._x, self._step_index = x, i + 1
        if self._step_index == len(self.timesteps) and gen is not None:
            gen.close()
        self._returned = x.to(sample.dtype, copy=True)
        if not return_dict:
            return (self._returned,)
        return SchedulerOutput(prev_sample=self._returned)
