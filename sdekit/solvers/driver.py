"""``sample``: the one front door to every registered solver.

It builds the time grid, the evaluator and the per-row noise, runs the solver's generator with a
progress bar and callbacks, checks every state for NaN/Inf, and returns a ``Solution``.

The end at zero noise. A grid whose last time has sigma = 0 (t = 0 on VP/VE, what ``grid="table"``,
``t_end=0`` and ``denoise=True`` give) is never handed to a solver whole: the solver runs on the grid
without its last point, and the driver takes the last step as the data-prediction jump

    x_s = alpha_s x0(x_t, t),   s = ts[-1] (sigma_s = 0), t = ts[-2],

the limit of every exponential integrator's step as sigma_s -> 0 (h -> inf), Euler's step in
s = sigma/alpha to s = 0, DDIM/DDPM's published last step (abar_prev = 1) and diffusers'
``final_sigmas_type="zero"`` step. So no solver evaluates the network at sigma = 0 and none has a
special case for it; the jump's network call is counted in NFE and it is the last step of the
trajectory, the callback and the progress bar.

Inversion. An increasing grid (t_start < t_end) integrates the probability-flow ODE from data towards
noise with any deterministic solver; it cannot start at sigma = 0 (the network is undefined there: start
at sde.eps and take x_eps ~ x_0). A solver that draws noise raises ``SolverError`` there.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from ..noise import BrownianPath
from ..parameterization import ScoreModel
from ..sde import LinearSDE
from .base import Evaluator, NoiseSource, NonFiniteError, RowNoise, Solution, SolverError
from .grids import make_grid
from .registry import SolverInfo, get

if TYPE_CHECKING:
    from .learned import LearnedSolver

Tensor = torch.Tensor

__all__ = ["sample", "NOISE_KINDS"]

NOISE_KINDS = ("path", "step")  # sample(noise=...)


def sample(
    model: ScoreModel,
    x_T: Tensor,
    solver: Union[str, "LearnedSolver"] = "dpmpp_2m",
    steps: Optional[int] = None,
    *,
    ts=None,
    grid: str = "logsnr",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    generator: Union[int, torch.Generator, None] = None,
    row_offset: int = 0,
    noise: str = "path",
    denoise: bool = False,
    progress: bool = False,
    callback: Optional[Callable[[int, float, Tensor], None]] = None,
    trajectory: bool = False,
    grid_options: Optional[dict] = None,
    check_states: bool = False,
    log_prob: bool = False,
    likelihood: Optional[dict] = None,
    grad: bool = False,
    **options,
) -> Solution:
    """Solve the reverse-time SDE or probability-flow ODE of ``model.sde`` from x_T at t_start to t_end.

    model: a ``ScoreModel`` (any network and prediction type) on a ``LinearSDE``.
    x_T: the starting state, batch first, any shape. The solve runs in x_T's dtype when that is float32 or
      float64; a half-precision x_T (float16, bfloat16) is solved in float32 and ``Solution.x`` is float32 (a
      half-precision network still gets what its wrapper casts to: ``from_diffusers`` casts to the U-Net's dtype).
    solver: a name from ``sdekit.solvers.available()``; options go to the solver as keywords. Or a
      ``LearnedSolver`` (``sdekit.learn_solver``), which runs on its own grid (no steps=, ts=, t_start=, t_end=).
    steps / ts: number of intervals of the named ``grid`` (``solvers.grids.GRIDS``) between t_start
      (default sde.T) and t_end (default sde.eps), or an explicit strictly monotone tensor of times.
      t_end may be 0 (see the zero-noise end in the module docstring); t_start < t_end (or an increasing
      ts) inverts: data -> noise, deterministic solvers only. Adaptive solvers need neither (they default
      to one output interval, or two when the grid ends at sigma = 0: down to sde.eps, then the jump).
    generator: an int seed or a torch.Generator; noise is drawn per row, so a row's sample depends on
      the seed and its row index (plus ``row_offset``), never on the batch size.
    noise: what a reverse-SDE sampler's step noise is. "path" (default): the step's increment of the row's
      Brownian path (``sdekit.noise.BrownianPath``), so more steps with the same seed give a finer solve of the
      same path; it costs about log2(h / 2^-12) Gaussians per entry and step (h the step's relative length).
      "step": a fresh Gaussian per entry and step (what k-diffusion's ancestral samplers and diffusers do), about
      torch.randn's cost, but a grid of other steps sees another path. Per-call noise (Langevin correctors,
      churn, Restart's jumps) is fresh in both.
    denoise: end at t = 0 with the jump x <- x0(x, t_end) (one more network call and step); nothing to
      add when the grid already ends at t = 0.
    callback: called as callback(i, t, x) after each step; trajectory=True keeps every state.
    check_states: also check the state for NaN/Inf after every step (network outputs are always
      checked, with the step and time named; the final state is always checked).
    log_prob: generate by the augmented probability-flow ODE with an adaptive ``solver`` (dopri5, bosh3, ...)
      and return each sample's log-density from the same solve in ``Solution.log_prob``
      (``sdekit.likelihood.sample_log_prob``; ``likelihood``: its LikelihoodConfig settings, e.g. rtol,
      divergence, prior_log_prob).
    grad: record the autograd graph of the solve (differentiable sampling, gradients with respect to x_T or the
      network's weights). By default the solve runs under ``torch.no_grad()``: no graph is kept, whatever the
      network's parameters ask for, so memory stays at one step's activations. A network that needs autograd
      inside its own call (classifier guidance) turns it on there with ``torch.enable_grad()``.
    """
    if log_prob:
        if not isinstance(solver, str):  # a LearnedSolver cannot solve the augmented ODE: refused by name
            solver.check_log_prob()
        if grad:
            raise ValueError("log_prob=True keeps the graph through the likelihood's own setting: pass "
                             "likelihood={'create_graph': True} instead of grad=True")
        return _sample_with_log_prob(model, x_T, solver, t_start, t_end, progress, likelihood, steps, ts, options)
    if isinstance(solver, str):
        info = get(solver)
    else:  # a LearnedSolver (sdekit.learn_solver): its own entry and its own grid
        info, ts = solver.entry(steps, ts, t_start, t_end)
        steps = t_start = t_end = None
    sde = _check_inputs(info, model, x_T, options)
    if not isinstance(grad, bool):
        raise TypeError(f"grad must be True or False; got {grad!r}")
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}; got {noise!r}")
    if info.adaptive and steps is None and ts is None:
        low = sde.eps if t_end is None else min(float(t_end), sde.T if t_start is None else float(t_start))
        steps = 2 if float(sde.sigma(low)) == 0.0 and low < sde.eps else 1
    grid_ts = make_grid(sde, steps, grid, t_start, t_end, ts, **(grid_options or {}))
    inverting = bool(grid_ts[-1] > grid_ts[0])
    if inverting and denoise:
        raise ValueError("denoise=True ends a sampling solve at t = 0; it does not apply to an increasing "
                         "(inversion) grid")
    if inverting and float(sde.sigma(grid_ts[0])) == 0.0:
        raise ValueError(f"an inversion cannot start at sigma = 0 (t = {float(grid_ts[0])}), where the network is "
                         f"undefined; start at t_start = sde.eps = {sde.eps} with x_eps ~ x_0")
    if denoise and float(grid_ts[-1]) != 0.0:
        grid_ts = torch.cat([grid_ts, grid_ts.new_zeros(1)])
    jump = not inverting and (denoise or float(sde.sigma(grid_ts[-1])) == 0.0)

    if info.stochastic and noise == "path" and not inverting:
        _warn_if_finer_than_the_path(grid_ts, info.name)
    source: Optional[NoiseSource]
    if inverting:
        source = _NoNoise(info.name)
    else:
        source = RowNoise(generator, x_T.shape[0], row_offset) if (info.stochastic or generator is not None) else None
    ev = Evaluator(model, source, path=noise == "path")
    # the solve starts from a copy: the caller's x_T is never handed to the network (ScoreModel refuses a
    # network that modifies its input in place, but only after the call)
    x_start = x_T.to(_state_dtype(x_T.dtype), copy=True)
    with torch.enable_grad() if grad else torch.no_grad():
        x, states = _run(info, ev, x_start, grid_ts, jump, options, progress, callback, trajectory, check_states)
    if not bool(torch.isfinite(x).all()):  # network outputs are checked per call; the state once more here
        raise NonFiniteError(f"the state became NaN or Inf during the solve with solver {solver!r}; "
                             "pass check_states=True to find the step")
    return Solution(x=x, nfe=ev.nfe, ts=grid_ts, trajectory=states, stats=dict(ev.stats))


def _warn_if_finer_than_the_path(grid_ts: Tensor, solver: str) -> None:
    """The Brownian path's increments are independent with the right variance only while no two times share a
    leaf of its tree (``noise.BrownianPath``: steps longer than rel_tol t, rel_tol = 2^-12 by default; a log-SNR
    grid of about 5000 steps on the VP SDE). Finer grids get a warning, with the remedy."""
    rel_tol = _path_rel_tol()
    times = grid_ts.tolist()  # Python floats: the same float64 arithmetic as on the tensor, without a tensor per op
    fine = sum(abs(a - b) < rel_tol * max(a, b) for a, b in zip(times[:-1], times[1:]))
    if fine:
        warnings.warn(f"{fine} step(s) of this {len(grid_ts) - 1}-step grid are shorter than the Brownian path's "
                      f"resolution ({rel_tol:.3g} t): if {solver!r} follows the path (noise='path'), those steps' "
                      "increments may share noise, and then their variance is wrong; use noise='step' or fewer steps",
                      stacklevel=3)


@functools.lru_cache(maxsize=None)
def _path_rel_tol() -> float:
    """The Brownian path's default resolution (``BrownianPath``'s rel_tol), read once."""
    return inspect.signature(BrownianPath).parameters["rel_tol"].default


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a solve runs in: x_T's when float32/float64, else float32 (half types lose the solve: measured
    errors up to 1.7 in float16 against 3e-6 in float32 on one problem)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_inputs(info: SolverInfo, model, x_T, options) -> LinearSDE:
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    sde = model.sde
    if not isinstance(sde, LinearSDE):
        raise TypeError("sample needs a LinearSDE; use solvers.backends for a general SDE")
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError("x_T must be a tensor with a leading batch dimension")
    if not x_T.is_floating_point():
        raise ValueError(f"x_T must be a floating-point tensor (float32 or float64; half types are solved in "
                         f"float32); got {x_T.dtype}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or Inf")
    unknown = set(options) - set(info.options)
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in info.options.items()) or "none"
        raise ValueError(f"solver {info.name!r} got unknown option(s) {sorted(unknown)}; accepted: {accepted}")
    return sde


def with_jump_options(info: SolverInfo, options: dict, jump: bool) -> dict:
    """A grid that ends with the x0 jump is denoised by the jump: a sampler whose last step drops its noise
    (``noise_last=False``, score_sde's convention) keeps it on the step before the jump unless told otherwise."""
    if jump and "noise_last" in info.options and "noise_last" not in options:
        return {**options, "noise_last": True}
    return options


def solver_states(info: SolverInfo, ev: Evaluator, x: Tensor, grid_ts: Tensor, jump: bool, options):
    """The states at grid_ts[1:]: the solver's on the grid without its zero-noise end, then the jump."""
    run_ts = grid_ts[:-1] if jump else grid_ts
    options = with_jump_options(info, options, jump)
    if len(run_ts) > 1:
        run = info.fn(ev, x, run_ts, **options)
        try:
            for i in range(len(run_ts) - 1):
                try:
                    x = next(run)
                except StopIteration as stop:
                    raise RuntimeError(f"solver {info.name!r} stopped after {i} of {len(run_ts) - 1} steps") from stop
                yield x
        finally:
            run.close()
    if jump:
        x = float(ev.sde.alpha(grid_ts[-1])) * ev.x0(x, run_ts[-1])
        yield x


def _run(info, ev, x_start, grid_ts, jump, options, progress, callback, trajectory, check_states):
    """Drive the steps: step index and time for the evaluator, checks, trajectory, callback, progress."""
    x = x_start  # returned as is when there are no steps
    states = [x] if trajectory else None
    times = grid_ts.tolist()  # python floats once, not a tensor->float conversion per step
    n = len(times) - 1
    with tqdm(total=n, desc=info.name, disable=not progress, leave=False) as bar:
        ev.step = 0
        for i, x in enumerate(solver_states(info, ev, x_start, grid_ts, jump, options)):
            t = times[i + 1]
            if check_states and not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"the state became NaN or Inf at step {i} (t = {t:.6g}) with solver {info.name!r}")
            if states is not None:
                states.append(x)
            if callback is not None:
                callback(i, t, x)
            if progress:  # a disabled tqdm still formats its postfix: skip the work
                bar.update(1)
                bar.set_postfix(nfe=ev.nfe, t=f"{t:.4g}", refresh=False)
            ev.step = i + 1
    return x, states


class _NoNoise:
    """Noise source of an inversion: the probability-flow ODE has none, so a solver asking for it is refused."""

    def __init__(self, solver: str):
        self.solver = solver

    def randn_like(self, x: Tensor) -> Tensor:
        raise SolverError(f"solver {self.solver!r} draws noise, but an inversion (increasing ts) integrates the "
                          "probability-flow ODE: use a deterministic solver (e.g. ddim with eta=0, heun, dpmpp_2m)")

    def path(self, T: float, rel_tol: float = 0.0):
        raise SolverError(f"solver {self.solver!r} follows a Brownian path, but an inversion (increasing ts) "
                          "integrates the probability-flow ODE: use a deterministic solver")


def _sample_with_log_prob(model, x_T, solver, t_start, t_end, progress, likelihood, steps, ts, options) -> Solution:
    """``sample(..., log_prob=True)``: the augmented probability-flow solve of ``likelihood.sample_log_prob``."""
    if steps is not None or ts is not None or options:
        raise ValueError("log_prob=True solves the augmented ODE adaptively: steps=, ts= and solver options do not "
                         "apply (pass tolerances in likelihood={'rtol': ...})")
    # local import: the likelihood builds on solvers.integrate, so solvers may not import it at module level
    from ..likelihood import sample_log_prob

    settings = dict(likelihood or {})
    prior = settings.pop("prior_log_prob", None)
    if isinstance(x_T, Tensor) and x_T.is_floating_point():
        x_T = x_T.to(_state_dtype(x_T.dtype))
    x0, lp, st = sample_log_prob(model, x_T, prior_log_prob=prior, progress=progress, method=solver,
                                 t_prior=t_start, t_data=t_end, **settings)
    return Solution(x=x0, nfe=int(st["nfe"]), ts=torch.tensor([st["t_prior"], st["t_data"]], dtype=torch.float64),
                    stats=st, log_prob=lp)
