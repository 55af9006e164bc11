"""The pieces that join an sdekit solver to a diffusers pipeline's loop (``SdekitScheduler`` uses them): which
solvers fit a pipeline and whose grid each takes, the one-answer "network" that hands a solver the output the
pipeline computed, the step noise drawn from the pipeline's generator, DDIMScheduler's clipping, and the check that
a solver can start at pure noise.

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
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..parameterization import ScoreModel, ThresholdedModel, threshold_x0
from ..sde import RectifiedFlow
from ..solvers.base import SolverError
from ..solvers.driver import sample
from ..solvers.registry import available, get
from .diffusers_models import EQUIVALENTS
from .edm_scheduler import EDM_EQUIVALENTS

Tensor = torch.Tensor

DIFFUSERS_SOLVER = "diffusers"  # solver= name for diffusers' own algorithm of the grid scheduler and its solver fields
# the solver_type values of diffusers' multistep classes, and the one each takes for another class's
SOLVER_TYPES = {"dpmsolver_multistep": (("midpoint", "heun"), "midpoint"), "unipc_multistep": (("bh1", "bh2"), "bh2"),
                 "deis_multistep": (("logrho",), "logrho")}
DIFFUSERS_SOLVER_FIELDS = ("solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
                           "predict_x0", "disable_corrector")


def eligible_solvers() -> list:
    """Registered solvers that can run inside a pipeline: fixed steps, one network call per step (external
    integrators, which run the whole solve at once, excluded)."""
    return [n for n in available() if not get(n).adaptive and get(n).nfe_per_step == 1
            and not get(n).fn.__module__.endswith(".backends")]


def layout_for(solver: str) -> str:
    if solver.startswith(("dpmpp_", "dpm_solver_")):
        return "dpmsolver_multistep"
    if solver.startswith("unipc_"):
        return "unipc_multistep"
    if solver.startswith("deis_logrho_"):
        return "deis_multistep"
    if solver in ("ddim", "ddpm"):
        return solver
    return "dpmsolver_multistep"


def as_times(grid) -> Tensor:
    """float64 times of a grid: a TunedGrid (its ``ts``), a tensor, an array or a list of floats."""
    grid = getattr(grid, "ts", grid)
    if isinstance(grid, Tensor):
        return grid.detach().to(torch.float64).cpu().reshape(-1)
    return torch.as_tensor(np.asarray(grid, dtype=np.float64)).reshape(-1)


class PipelineOutput:
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


class StepNoise:
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


class DDIMClippedX0(ScoreModel):
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


def velocity_of_a_gaussian(x: Tensor, t: Tensor) -> Tensor:
    """E[n - x0 | x_t] on the rectified-flow path for data N(0, c^2 I), c = 1/2: (t - (1 - t) c^2) x / v_t with
    v_t = (1 - t)^2 c^2 + t^2 (finite at t = 1, where x_t is pure noise)."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (t - (1 - t) * 0.25) * x / ((1 - t) ** 2 * 0.25 + t ** 2)


@functools.lru_cache(maxsize=None)
def pure_noise_problem(solver: str, options: tuple) -> Optional[str]:
    """Why ``solver`` (with ``options``) cannot start at pure noise (alpha = 0: a flow-matching grid's sigma = 1),
    or None: found by solving from t = 1 on the rectified-flow path with an exact Gaussian velocity, with the
    step noise SdekitScheduler uses. The solver's own refusal (noise-form updates divide by alpha) or a
    non-finite result names it."""
    model = ScoreModel(velocity_of_a_gaussian, RectifiedFlow(eps=1e-3), "velocity")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.tensor([1.0, 0.7, 0.4, 0.1], dtype=torch.float64)
    try:
        out = sample(model, x, solver, ts=ts, generator=0, noise="step" if get(solver).stochastic else "path",
                     **dict(options)).x
    except (ValueError, ArithmeticError, SolverError) as err:
        return f"{type(err).__name__}: {err}"
    return None if bool(torch.isfinite(out).all()) else "its states become non-finite"


def check_starts_at_pure_noise(solver: str, options: dict, t0: float):
    """ValueError naming why ``solver`` cannot start at pure noise (alpha = 0 at t0, where a grid starts), and the
    eligible solvers that can."""
    try:
        why = pure_noise_problem(solver, tuple(sorted(options.items())))
    except TypeError:  # unhashable option values: probe uncached
        why = pure_noise_problem.__wrapped__(solver, tuple(sorted(options.items())))
    if why is not None:
        able = [n for n in eligible_solvers() if pure_noise_problem(n, ()) is None]
        raise ValueError(f"solver {solver!r} cannot start at pure noise (alpha = 0 at t = {t0:g}, where "
                         f"this grid starts): {why}. Solvers that can: {', '.join(able)} (or start the grid "
                         "below it)")


def diffusers_algorithm(layout: str, config: dict, steps: int) -> tuple:
    """(sdekit solver, options) that are diffusers' own algorithm of the scheduler class ``layout`` with this
    config's solver fields (solver_order, algorithm_type, solver_type, lower_order_final, ...; absent: that class's
    default) for ``steps`` steps (``diffusers_equivalent``'s mapping: DPMSolverMultistep 1/2 -> ddim/dpmpp_2m/
    dpm_solver_2m, UniPC -> unipc_k, DEIS -> deis_logrho_k, DDIM/Euler -> ddim, DDPM -> ddpm, Heun -> heun; the EDM
    schedulers' ``EDM_EQUIVALENTS``). A setting with no exact sdekit counterpart, or a solver a pipeline cannot run,
    raises ValueError naming it."""
    known = {**EQUIVALENTS, **EDM_EQUIVALENTS}
    if layout not in known:
        raise ValueError(f"solver='diffusers' with grid_scheduler={layout!r}: no exact sdekit equivalent of that "
                         f"scheduler; accepted: {', '.join(known)}")
    try:
        name, options = known[layout](config, steps)
    except ValueError as err:
        raise ValueError(f"solver='diffusers': {err}") from err
    if name not in eligible_solvers():
        raise ValueError(f"solver='diffusers': {layout}'s algorithm is {name!r}, which calls the network "
                         f"{get(name).nfe_per_step} times per step; a pipeline calls it once per timestep")
    return name, options
