"""``SdekitScheduler``: any one-call-per-step sdekit solver inside an unmodified diffusers pipeline.

    pipe.scheduler = SdekitScheduler.from_config(pipe.scheduler.config, solver="unipc_3")
    image = pipe(num_inference_steps=10).images

How a solver's generator is joined to the pipeline's loop: ``sdekit.interop.pipeline_step``.

Where the grid comes from (diffusers' layouts, sigma options, the network's timesteps):
``sdekit.interop.scheduler_grids``.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional, Union

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput

from ..parameterization import ScoreModel, ThresholdedModel
from ..sde import LinearSDE, RectifiedFlow
from ..solvers.base import Evaluator
from ..solvers.discrete import CLASS_NAMES
from ..solvers.multistep import unipc_steps
from ..solvers.grids import check_grid
from ..solvers.driver import with_jump_options
from ..solvers.registry import get
from .diffusers_config import (SCHEDULER_FLOW_DEFAULTS, DiffusersSpec, check_config, check_scheduler_flow_config,
                               is_scheduler_flow_config, read_config, refused_class)
from .edm_scheduler import (EDM_CLASSES, EDM_DEFAULTS, EDMPreconditioned, c_noise, check_edm_config, check_no_churn,
                            edm_grid, is_edm_config)
from .scheduler_noise import ForwardProcessMixin
from .diffusers_models import EQUIVALENTS, sde_from_scheduler, zero_snr_clamp_note
from .scheduler_grids import ddim_step_targets, fixed_grid, flow_grid, from_diffusers, table_grid, table_layout
from .pipeline_step import (DIFFUSERS_SOLVER, DIFFUSERS_SOLVER_FIELDS, SOLVER_TYPES, DDIMClippedX0, PipelineOutput,
                            StepNoise, as_times, check_starts_at_pure_noise, diffusers_algorithm,
                            eligible_solvers, layout_for)

Tensor = torch.Tensor

__all__ = ["SdekitScheduler", "eligible_solvers"]


def _ddpm_defaults() -> dict:
    """SdekitScheduler's beta-table and grid fields at their defaults (what a flow-matching config leaves alone)."""
    params = inspect.signature(SdekitScheduler.__init__).parameters
    own = {"self", "solver", "solver_options", "grid_scheduler", "grid_ts", "prediction_type", *DIFFUSERS_SOLVER_FIELDS}
    return {k: p.default for k, p in params.items() if k not in own and k not in SCHEDULER_FLOW_DEFAULTS}


def _all_defaults() -> dict:
    """Every SdekitScheduler field at its default (what an EDM config leaves alone outside its own fields)."""
    params = inspect.signature(SdekitScheduler.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


class SdekitScheduler(ForwardProcessMixin, SchedulerMixin, ConfigMixin):
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

    Flow matching (prediction_type="flow_prediction", set by ``from_config`` on a FlowMatch config): the network's
    output is the velocity n - x0 on ``RectifiedFlow`` whose time is diffusers' sigma; the grid is the sigmas of
    FlowMatchEulerDiscreteScheduler.set_timesteps for the config (shift, dynamic shifting with ``mu``, custom
    sigmas); ``euler`` is then its step; solvers that cannot start at pure noise are refused (docs/interop.md).

    EDM (an EDMEuler / EDMDPMSolverMultistep config: sigma_min, sigma_max, sigma_data, sigma_schedule, rho): the
    sample is the state of ``EDMSDE``, the grid and timesteps are that scheduler's, the network output is
    preconditioned to the x0 prediction (``sdekit.interop.edm_scheduler``).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers if refused_class(e.name) is None] + [
        "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", *EDM_CLASSES]
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
                 invert_sigmas: bool = False, stochastic_sampling: bool = False, sigma_min: Optional[float] = None,
                 sigma_max: Optional[float] = None, sigma_data: Optional[float] = None,
                 sigma_schedule: Optional[str] = None, rho: Optional[float] = None,
                 solver: str = "dpmpp_2m", solver_options: Optional[dict] = None,
                 grid_scheduler: Optional[str] = None, grid_ts: Optional[list] = None,
                 solver_order: Optional[int] = None, algorithm_type: Optional[str] = None,
                 solver_type: Optional[str] = None, lower_order_final: Optional[bool] = None,
                 euler_at_final: Optional[bool] = None, predict_x0: Optional[bool] = None,
                 disable_corrector: Optional[list] = None):
        if solver == DIFFUSERS_SOLVER and grid_scheduler in (*CLASS_NAMES.values(), *EDM_CLASSES.values()):
            # diffusers' own algorithm: the fields left at their defaults take that scheduler's defaults (what its
            # from_config gives them; e.g. DDIMScheduler's clip_sample=True), so the algorithm is that class's
            self.register_to_config(**self._class_defaults(str(grid_scheduler)))
            kinds = SOLVER_TYPES.get(str(grid_scheduler))
            if kinds is not None and self.config["solver_type"] not in (None, *kinds[0]):
                # another multistep class's solver_type, as each of diffusers' classes maps the others' to its own
                self.register_to_config(solver_type=kinds[1])
            set_alpha_to_one, final_sigmas_type = self.config["set_alpha_to_one"], self.config["final_sigmas_type"]
            use_karras_sigmas, steps_offset = self.config["use_karras_sigmas"], self.config["steps_offset"]
            timestep_spacing = self.config["timestep_spacing"]
        self._build_model(solver, grid_scheduler)
        self._name, self._options = solver, dict(solver_options or {})  # solver="diffusers": set by set_timesteps
        if solver == DIFFUSERS_SOLVER:
            if grid_scheduler is None and self.edm is None:  # an EDM config's algorithm: its layout's (EDMSpec)
                raise ValueError("solver='diffusers' (diffusers' own algorithm) needs grid_scheduler=, the scheduler "
                                 f"whose algorithm to run ({', '.join(EQUIVALENTS)}): a pipeline's in-memory "
                                 "config does not name its class (a saved one, or the scheduler object, does)")
            if solver_options:
                raise ValueError("solver='diffusers' takes its options from the config's solver fields (solver_order, "
                                 "algorithm_type, solver_type, lower_order_final, ...); drop solver_options")
            self.solver = None
        else:
            self.solver = self._check_solver(solver, self._options)
        self._fixed_ts: Optional[Tensor] = None
        if grid_ts is not None:
            self._fixed_ts = check_grid(self.sde, as_times(grid_ts))
            if not bool((self._fixed_ts[1:] < self._fixed_ts[:-1]).all()):
                raise ValueError("grid_ts must be decreasing (noise to data): t_0 > ... > t_K")
            self.register_to_config(grid_ts=self._fixed_ts.tolist())  # a plain list: the config stays JSON
        if self.edm is not None:
            self.grid_options: dict = {"scheduler": self.edm.layout, "final_sigmas_type": self.edm.final}
        else:
            self.grid_options = table_layout(grid_scheduler or layout_for(solver), final_sigmas_type,
                                                   use_karras_sigmas, steps_offset, timestep_spacing, set_alpha_to_one)
        self.init_noise_sigma = 1.0 if self.edm is None else (self.edm.sigma_max ** 2 + 1) ** 0.5
        self.num_inference_steps: Optional[int] = None
        self.ts: Optional[Tensor] = None
        self.timesteps: Optional[Tensor] = None
        self.sigmas: Optional[Tensor] = None
        self._begin_index: Optional[int] = None
        self._reset()

    def _build_model(self, solver: str, grid_scheduler: Optional[str]):
        """self.flow, self.edm, self.spec and self.sde for the config: a flow-matching path (prediction_type
        "flow_prediction"), an EDM process (``is_edm_config``) or a DDPM table."""
        cfg = dict(self.config)
        self.flow, self.edm = cfg["prediction_type"] == "flow_prediction", None
        self.sde: LinearSDE
        if self.flow:
            self.spec = check_scheduler_flow_config(cfg, _ddpm_defaults())
            self.sde = RectifiedFlow(eps=1.0 / cfg["num_train_timesteps"])
            if grid_scheduler is not None:
                raise ValueError(f"grid_scheduler={grid_scheduler!r}: a flow-matching config's grid is "
                                 "FlowMatchEulerDiscreteScheduler's (its shift and sigma options)")
        elif is_edm_config(cfg):
            self.edm = check_edm_config(cfg, _all_defaults())
            self.register_to_config(**{k: v for k, v in EDM_DEFAULTS.items() if cfg.get(k) is None})
            self.spec = DiffusersSpec(dict(self.config), "x0", False, self.edm.threshold)
            self.sde = self.edm.sde()
        else:
            self.spec = check_config({**cfg, "_class_name": "SdekitScheduler"})
            # the table of the class whose grid is laid out: DPMSolverMultistep, UniPC and Euler hold a zero-SNR
            # table's last abar at 2^-24 (sde_from_scheduler), DDIM, DDPM and DEIS at 0
            layout_class = {v: k for k, v in CLASS_NAMES.items()}.get(grid_scheduler or layout_for(solver), "")
            self.sde = sde_from_scheduler({**cfg, "_class_name": layout_class})

    def _class_defaults(self, layout: str) -> dict:
        """The defaults of diffusers' scheduler class for ``layout`` for the fields this config left at
        SdekitScheduler's defaults (``_use_default_values``) and that class has."""
        import diffusers

        cls = getattr(diffusers, {v: k for k, v in (*CLASS_NAMES.items(), *EDM_CLASSES.items())}[layout])
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
            source = CLASS_NAMES.get(str(given.get("_class_name") or ""))
            if is_scheduler_flow_config(given) or kwargs.get("prediction_type") == "flow_prediction":
                kwargs = {**kwargs, "prediction_type": kwargs.get("prediction_type", "flow_prediction")}
                check_scheduler_flow_config({**cfg, **kwargs}, _ddpm_defaults())
            elif is_edm_config(cfg):
                source = check_edm_config(cfg, _all_defaults()).layout  # an EDM config's grid is its class's
            else:
                check_config(cfg)
            if (kwargs.get("solver", given.get("solver")) == DIFFUSERS_SOLVER or source in EDM_CLASSES.values()) \
                    and source is not None and kwargs.get("grid_scheduler", given.get("grid_scheduler")) is None:
                kwargs["grid_scheduler"] = source  # diffusers' own algorithm: the one of the scheduler given
            if isinstance(config, ConfigMixin):  # a scheduler object: its config (diffusers reads it as a path)
                config = given
        if kwargs.get("grid_ts") is not None:
            kwargs["grid_ts"] = as_times(kwargs["grid_ts"]).tolist()
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
        taus, diffusers_sigmas = None, None
        if self._fixed_ts is not None:
            ts = fixed_grid(self._fixed_ts, num_inference_steps, timesteps, sigmas)
        elif self.flow:
            ts, taus = flow_grid(self.config, self.sde, num_inference_steps, timesteps, sigmas, mu)
        elif self.edm is not None:
            if mu is not None:
                raise ValueError("mu is the dynamic shift of flow-matching configs; this scheduler steps an EDM process")
            ts, diffusers_sigmas = edm_grid(self.edm, self.sde, num_inference_steps, timesteps, sigmas)
            taus = c_noise(diffusers_sigmas[:-1])
        else:
            if mu is not None:
                raise ValueError("mu is the dynamic shift of flow-matching configs; this scheduler steps a DDPM table")
            ts = table_grid(self.config, self.grid_options, self._table, num_inference_steps, timesteps, sigmas)
        if len(ts) < (1 if self.edm is not None else 2) or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"the grid must be strictly decreasing with at least one step; got {ts.tolist()}")
        if self.config["solver"] == DIFFUSERS_SOLVER:
            self._use_diffusers_algorithm(int(num_inference_steps) if num_inference_steps is not None else len(ts) - 1)
        self._check_start(ts)
        self.ts = ts
        self._final_corrector = self._wants_final_corrector(num_inference_steps, ts)
        self._targets = self._ddim_targets(num_inference_steps, ts) if taus is None else None
        calls = ts if self._final_corrector else ts[:-1]
        if taus is None and self.edm is not None:  # grid_ts
            taus = c_noise(calls)
        if taus is None:
            tau = calls * self._table.N - 1 if not self.flow else calls * self.config["num_train_timesteps"]
            integral = not self.flow and bool(((tau - tau.round()).abs() < 1e-9).all())
            taus = tau.round().to(torch.int64) if integral else tau.to(torch.float32)
        self.timesteps = taus.to(device)
        self.sigmas = (ts if self.flow or self.edm is not None else self.sde.sigma(ts) / self.sde.alpha(ts)).to(
            torch.float32) if diffusers_sigmas is None else diffusers_sigmas
        self.num_inference_steps = len(self.timesteps)
        self._begin_index = None
        self._reset()

    def _use_diffusers_algorithm(self, steps: int):
        """solver="diffusers": run ``diffusers_algorithm`` of ``grid_scheduler`` with this config."""
        cfg = {k: v for k, v in self.config.items() if not (k in DIFFUSERS_SOLVER_FIELDS and v is None)}
        cfg["final_sigmas_type"] = self.grid_options["final_sigmas_type"]
        name, options = diffusers_algorithm(str(self.grid_options["scheduler"]), cfg, steps)
        self._name, self._options = name, dict(options)
        self.solver = self._check_solver(name, self._options)

    def _ddim_targets(self, num_inference_steps, ts: Tensor) -> Optional[Tensor]:
        """``ddim_step_targets`` where the grid is a ddim/ddpm layout of num_inference_steps; else None."""
        if self._name not in ("ddim", "ddpm") or self.grid_options["scheduler"] not in ("ddim", "ddpm") or self.flow \
                or num_inference_steps is None or self._fixed_ts is not None \
                or from_diffusers(self.config, self.grid_options, self._table, num_inference_steps):
            return None
        return ddim_step_targets(self._table, ts, int(num_inference_steps))

    def _wants_final_corrector(self, num_inference_steps, ts: Tensor) -> bool:
        """UniPC's final corrector (one more call at the grid's end): as solver_options says, else where diffusers'
        UniPC grid ends with the zero-length step sdekit's drops (Karras/sigma options with "sigma_min"), and on an
        EDM grid ending at sigma_min, whose last step is zero-length too."""
        if not self._name.startswith("unipc_"):
            return False
        given = self._options.get("final_corrector")
        if given is not None:
            return bool(given)
        dropped = num_inference_steps is not None and self._fixed_ts is None and len(ts) - 1 < int(num_inference_steps)
        return bool(dropped and len(ts) > 1 and self.grid_options["scheduler"] in ("unipc_multistep", *EDM_CLASSES.values())
                    and not self.flow and float(self.sde.sigma(ts[-1])) > 0.0)

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
                             f"'leading'){zero_snr_clamp_note(self.grid_options['scheduler'], self._table)}")
        check_starts_at_pure_noise(self._name, self._options, float(ts[0]))

    @property
    def compatibles(self):  # a flow config's: FlowMatch only (a beta-table class adds a DDPM table, refused); an
        # EDM config's: EDM only; a table's: no EDM class (its config holds no sigma_data, sigma_schedule, rho)
        kind = "FlowMatch" if self.flow else "EDM" if self.edm is not None else ""
        return [c for c in self._get_compatibles() if c.__name__.startswith(kind)
                and (kind or c.__name__ not in EDM_CLASSES)]

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
        options = with_jump_options(get(self._name), self._solver_options(eta), jump)
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
        net = PipelineOutput(self._name)
        model = ScoreModel(net if self.edm is None else EDMPreconditioned(net, self.edm), self.sde, self.spec.prediction)
        if self.spec.threshold is not None:
            if self._name == "ddim" and not clipped and self.edm is None:
                model = DDIMClippedX0(model, self.spec.threshold, run_ts, float(options.get("eta", 0.0)))
            else:
                model = ThresholdedModel(model, *self.spec.threshold)
        noise = StepNoise()
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

    def _advance(self, i: int, out: Tensor, generator, variance_noise) -> Tensor:
        """The state after step i, from the network output ``out`` at the current state."""
        assert self.ts is not None and self.timesteps is not None and self._run is not None
        if i >= len(self.ts) - 1 and not self._final_corrector and self._targets is None:
            return self._x  # an EDM grid's last step, from sigma_min to sigma_min (final "sigma_min"), moves nothing
        gen, net, ev, noise = self._run
        noise.generator, noise.given = generator, variance_noise
        t = float(self.ts[i])
        net.load(self._x, out, t)
        end = self.ts[-1] if self._targets is None else self._targets[i]
        if (i == len(self.timesteps) - 1 or self._targets is not None) and float(self.sde.sigma(end)) == 0.0:
            x = float(self.sde.alpha(end)) * ev.x0(self._x, t)  # the x0 jump to sigma = 0
        else:
            x = next(gen)
        net.check_consumed()
        return x

    def step(self, model_output: Tensor, timestep, sample: Tensor, eta: Optional[float] = None,
             use_clipped_model_output: Optional[bool] = None, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[Tensor] = None, return_dict: bool = True, **churn):
        """One solver step from ``sample`` at ``timestep`` with the network output the pipeline computed there.

        The signature is DDIMScheduler.step's (a torch.Generator as the fourth positional argument is taken as
        ``generator``, DDPMScheduler.step's order). ``sample`` may differ from the previous step's
        ``prev_sample`` (inpainting blends, callbacks that edit latents): the solver steps from it and keeps its
        history of model outputs, as diffusers' multistep schedulers do (a corrector, UniPC's or SA-Solver's,
        then corrects the previous step from its own state, as diffusers' UniPC does).
        ``eta``: DDIM's eta (solver ddim; others accept 0 only). ``use_clipped_model_output`` (ddim with
        thresholding or clip_sample): False/None keeps the network's eps beside the clipped x0, as
        DDIMScheduler; True derives eps from the clipped x0 (what every other solver does).
        ``variance_noise``: the step's noise instead of a draw from ``generator``. ``churn``: EDMEulerScheduler's
        s_churn, s_tmin, s_tmax, s_noise, accepted without churn (s_churn = 0, its default) only."""
        check_no_churn(churn)
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
        gen = self._run[0]
        x = self._advance(i, out.to(work), generator, variance_noise)
        self._x, self._step_index = x, i + 1
        if self._step_index == len(self.timesteps) and gen is not None:
            gen.close()
        self._returned = x.to(sample.dtype, copy=True)
        if not return_dict:
            return (self._returned,)
        return SchedulerOutput(prev_sample=self._returned)
