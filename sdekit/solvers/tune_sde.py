"""Time grids tuned for stochastic samplers: the law of the samples against a converged reference law.

``tune`` fits a deterministic solver's grid to each row's endpoint; a reverse-SDE sampler has no per-row target
(its rows end wherever their noise takes them), only a law. ``tune_stochastic`` therefore scores a grid by a
distance between sample sets, from prior draws alone (no data):

    x_T^(1..n) ~ prior                                   (``sde.prior_sample``; fixed seed)
    Y = {converged probability-flow ODE solves of x_T}   (rk4, ``ref_steps`` log-SNR steps from t_start to t_end:
                                                          the model's own law at t_end, up to the prior's mismatch)
    X(ts) = {solve(x_T, solver, ts, generator=seed)}      (the sampler on grid ts, noise from a fixed seed)
    J(ts) = SW2(X(ts), Y) = sqrt(mean_j W2^2(<X, theta_j>, <Y, theta_j>))     (``metrics.sliced_w2``, ``n_proj``
                                                          fixed directions theta_j; each 1-D W2 by sorting)

Common random numbers: the prior rows, the directions and the sampler's noise seed are fixed while ts varies, and
the default ``noise="path"`` makes each row's noise the increments of one Brownian path, queried at the grid's
times, so J is a smooth function of the grid and differences between grids are not buried in the sampling noise
(which is what limits a fresh-noise comparison at n of a few thousand). The price is that J can fit this draw's
finite-sample noise; a second, independent draw (prior rows, noise seed and reference, seed + 7919) scores the tuned
grid against the start grid, and the tuned grid is kept only if it wins there.

Parameterisation (as in ``tune``): the nodes inside the window [lambda(t_start), lambda(t_low)] of log-SNR sit at
z_i = sum_{j<=i} w_j / sum_j w_j, w = exp(theta), so every theta is a strictly monotone grid; t_low = t_end, or
sde.eps for a grid that ends at sigma = 0 (the last step is then the data-prediction jump to t_end, as the named
grids lay it out). The first node stays at t_start (N - 1 free shapes for N steps) unless ``free_start=True``: then
one more weight is free and the first node may sit below t_start, and the sampler starts there from the prior draw,
as diffusers' "leading" spacing does (its first timestep is T - T/N, not T). The reference always starts at
t_start, so the optimiser weighs the step saved against the mismatch of taking a prior draw for the law at t_1.
On a path with alpha(t_start) = 0 (flow matching at T) the first node stays at t_start and the others live in a
finite window below it (``tune``'s construction); a free start is refused there.

theta starts at the best named grid (``start_grids``) on the calibration draw and is refined by Powell's
derivative-free method (scipy) within ``max_evals`` solves. The cost, in network calls (each a batch of n rows,
references included), is returned in ``TunedGrid.nfe``.

Not implemented: the KL upper bound of Align Your Steps (Sabour et al. 2024, "Align Your Steps: Optimizing
Sampling Schedules in Diffusion Models"; Girsanov for the discretised reverse SDE), which needs draws of the data;
the sliced W2 above needs only the prior and the model.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..metrics import random_directions, sliced_w2_sorted, sorted_projections
from ..noise import BrownianPath
from ..parameterization import ScoreModel
from .base import SolverError
from .driver import sample
from .grids import GRIDS, make_grid
from .registry import get
from .tune import START_GRIDS, TunedGrid

Tensor = torch.Tensor

__all__ = ["tune_stochastic"]

VALIDATION_OFFSET = 7919  # the validation draw's seed is the calibration seed plus this
# steps shorter than this fraction of t share the Brownian path's noise (``driver._warn_if_finer_than_the_path``)
PATH_REL_TOL = float(inspect.signature(BrownianPath).parameters["rel_tol"].default)


class _LawProblem:
    """One draw: prior rows, the sampler's noise seed and the sorted projections of the reference law."""

    def __init__(self, model: ScoreModel, solver: str, x_T: Tensor, noise_seed: int, dirs: Tensor, ref_steps: int,
                 t_start: float, t_end: float, options: dict):
        self.model, self.solver, self.x_T, self.noise_seed, self.dirs = model, solver, x_T, noise_seed, dirs
        self.options = options
        ref = sample(model, x_T, "rk4", ref_steps, grid="logsnr", t_start=t_start, t_end=t_end)
        self.ref = sorted_projections(ref.x, dirs)
        self.nfe = ref.nfe

    def sw2(self, ts: Tensor) -> float:
        try:
            sol = sample(self.model, self.x_T, self.solver, ts=ts, generator=self.noise_seed, **self.options)
        except SolverError:  # a grid that makes the sampler blow up scores as infinitely bad
            return math.inf
        self.nfe += sol.nfe
        if not bool(torch.isfinite(sol.x).all()):
            return math.inf
        return sliced_w2_sorted(sorted_projections(sol.x, self.dirs), self.ref)


class _Window:
    """The map theta -> grid of the module docstring: window nodes at z = cumsum(w) / sum(w) in log-SNR, with the
    first node fixed at t_start (``lead``: a fixed node at z = 0, or t_start itself outside the window when
    alpha(t_start) = 0) or free (``free_start``), and a last jump to t_end when sigma(t_end) = 0."""

    def __init__(self, sde, starts, t_start: float, t_end: float, free_start: bool):
        self.sde, self.t_start, self.t_end = sde, t_start, t_end
        self.zero_end = float(sde.sigma(t_end)) == 0
        self.noise_start = float(sde.alpha(t_start)) == 0
        self.free_start = free_start
        t_low = sde.eps if self.zero_end else t_end
        self.lam1 = float(sde.log_snr(t_low))
        if self.noise_start:  # tune's window: lambda_w = -lambda(t_low), lowered below every start's first node
            self.lam0 = min([-abs(self.lam1)] + [float(sde.log_snr(ts[1])) - 1.0 for ts in starts])
        else:
            self.lam0 = float(sde.log_snr(t_start))
        self.fixed_first = not (free_start or self.noise_start)  # a node pinned at z = 0

    def grid(self, theta: np.ndarray) -> Tensor:
        w = np.exp(theta - theta.max())
        z = np.cumsum(w) / w.sum()
        if self.fixed_first:
            z = np.concatenate([[0.0], z])
        ts = self.sde.t_from_log_snr(torch.as_tensor(self.lam0 + z * (self.lam1 - self.lam0), dtype=torch.float64))
        ts = ts.clone()
        if self.fixed_first:
            ts[0] = self.t_start
        ts[-1] = self.sde.eps if self.zero_end else self.t_end
        ts = torch.minimum(ts, torch.tensor(self.t_start, dtype=torch.float64))
        head = [self.t_start] if self.noise_start else []
        tail = [self.t_end] if self.zero_end else []
        return torch.cat([torch.tensor(head, dtype=torch.float64), ts, torch.tensor(tail, dtype=torch.float64)])

    def theta(self, ts: Tensor) -> np.ndarray:
        """The theta of a named grid (of the same step count); with a free start, the first gap is small (1e-3 of
        the window) rather than zero, so the optimiser can move it."""
        nodes = ts[1 if self.noise_start else 0: -1 if self.zero_end else None]
        z = ((self.sde.log_snr(nodes) - self.lam0) / (self.lam1 - self.lam0)).numpy()
        z = np.clip(z, 0.0, 1.0)
        if self.free_start:
            z = np.concatenate([[0.0], z])  # the start grid's first node sits at z = 0: a gap, not a node
            gaps = np.diff(z)
            gaps[0] = 1e-3
            return np.log(np.maximum(gaps, 1e-12))
        z = z if self.fixed_first else np.concatenate([[0.0], z])
        return np.log(np.maximum(np.diff(z), 1e-12))


def _check(model, solver, steps, n, n_proj, max_evals, ref_steps, shape, generator, start_grids, free_start, dtype):
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a registered sampler's name; got {type(solver).__name__}")
    info = get(solver)
    if info.adaptive or not info.stochastic:
        raise ValueError(f"tune_stochastic needs a fixed-step stochastic sampler; {solver!r} is "
                         f"{'adaptive' if info.adaptive else 'deterministic'} (use sdekit.tune for an ODE solver)")
    for name, value, lo, why in (("steps", steps, 2, "one step has no grid to tune"),
                                 ("n", n, 64, "a sliced W2 of fewer rows is noise"),
                                 ("n_proj", n_proj, 1, "directions of the sliced W2"),
                                 ("max_evals", max_evals, 0, "solves spent by the optimiser"),
                                 ("ref_steps", ref_steps, 2, "rk4 steps of the reference solve")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo} ({why}); got {value!r}")
    if shape is None or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ValueError(f"shape must give one row's shape, e.g. shape=(2,) or (1, 8, 8); got {shape!r}")
    if isinstance(generator, bool) or not isinstance(generator, (numbers.Integral, torch.Generator)):
        raise TypeError(f"generator must be an int seed or a torch.Generator (its initial seed); got "
                        f"{type(generator).__name__}")
    if isinstance(start_grids, str) or not len(start_grids):
        raise ValueError(f"start_grids must be a non-empty sequence of grid names, e.g. {START_GRIDS}; "
                         f"got {start_grids!r}")
    unknown = [g for g in start_grids if g not in GRIDS or GRIDS[g].own_ends]
    if unknown:
        raise ValueError(f"unknown start grid(s) {unknown}; accepted: {', '.join(START_GRIDS)}")
    if not isinstance(free_start, bool):
        raise TypeError(f"free_start must be True or False; got {free_start!r}")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")


def tune_stochastic(
    model: ScoreModel,
    solver: str,
    steps: int,
    *,
    shape: Optional[Sequence[int]] = None,
    n: int = 2048,
    generator: Union[int, torch.Generator] = 0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    free_start: bool = False,
    max_evals: Optional[int] = None,
    ref_steps: int = 200,
    n_proj: int = 64,
    start_grids: Sequence[str] = START_GRIDS,
    dtype: Optional[torch.dtype] = None,
    **solver_options,
) -> TunedGrid:
    """Tune a ``steps``-step grid for the stochastic sampler ``solver`` on ``model`` (see the module docstring).

    shape: one row's shape (draws are (n, *shape)). generator: an int seed (or a torch.Generator: its initial
    seed) for the calibration draw's prior rows and sampler noise; the validation draw uses seed + 7919.
    t_start / t_end: as in ``sample`` (defaults sde.T, sde.eps). free_start: let the first node move below t_start
    (the sampler then starts there from the prior draw). max_evals: solves spent by Powell (default 20 per step).
    ref_steps: rk4 log-SNR steps of the reference solves. n_proj: directions of the sliced W2. start_grids: named
    grids to start from (the best on the calibration draw is used). dtype: of the solves (default float64, or the
    network's float32). solver_options go to the sampler (``noise=``, ``eta=``, ...).

    Returns a ``TunedGrid`` (objective "sw2"; calibration / validation: {"tuned": {"sw2"}, "start": {"sw2"}});
    ``ts`` is the start grid when the tuned one did not win on the validation draw (``improved`` False)."""
    shape = tuple(shape) if shape is not None else None
    max_evals = 20 * int(steps) if max_evals is None and isinstance(steps, numbers.Integral) else max_evals
    _check(model, solver, steps, n, n_proj, max_evals, ref_steps, shape, generator, start_grids, free_start, dtype)
    assert shape is not None and max_evals is not None
    sde = model.sde
    t_start = float(sde.T if t_start is None else t_start)
    t_end = float(sde.eps if t_end is None else t_end)
    if free_start and float(sde.alpha(t_start)) == 0:
        raise ValueError("free_start needs a finite log-SNR at t_start; at alpha(t_start) = 0 (flow matching at T) "
                         "the first node stays at t_start (the named grids already place the next one)")
    starts = {g: make_grid(sde, int(steps), g, t_start, t_end) for g in start_grids}  # refuses bad ends, early
    seed = int(generator.initial_seed()) if isinstance(generator, torch.Generator) else int(generator)
    params = list(model.net.parameters()) if isinstance(model.net, torch.nn.Module) else []
    dtype = dtype or (params[0].dtype if params and params[0].dtype == torch.float32 else torch.float64)
    device = params[0].device if params else torch.device("cpu")
    dim = int(np.prod(shape))
    with torch.no_grad():
        problems = []
        for s in (seed, seed + VALIDATION_OFFSET):
            x_T = sde.prior_sample((int(n), *shape), generator=torch.Generator().manual_seed(s))
            dirs = random_directions(dim, int(n_proj), s + 1).to(device)
            problems.append(_LawProblem(model, solver, x_T.to(dtype=dtype, device=device), s, dirs, int(ref_steps),
                                        t_start, t_end, solver_options))
        return _optimise(sde, solver, int(steps), problems[0], problems[1], starts, t_start, t_end, free_start,
                         int(max_evals), seed)


def _optimise(sde, solver, steps, cal, val, starts, t_start, t_end, free_start, max_evals, seed) -> TunedGrid:
    from scipy.optimize import minimize

    window = _Window(sde, starts.values(), t_start, t_end, free_start)
    start_scores = {g: cal.sw2(ts) for g, ts in starts.items()}
    start = min(start_scores, key=start_scores.__getitem__)
    evals = [0]

    def loss(theta):
        evals[0] += 1
        ts = window.grid(theta)
        gaps = ts[:-1] - ts[1:]
        if not bool((gaps > PATH_REL_TOL * ts[:-1]).all()):  # steps the Brownian path cannot resolve: refused
            return 1e6
        value = cal.sw2(ts)
        return value if math.isfinite(value) else 1e6

    tuned_ts, best = starts[start], start_scores[start]
    if max_evals > 0 and math.isfinite(best):
        res = minimize(loss, window.theta(starts[start]), method="Powell",
                       options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-4})
        if res.fun < best:
            tuned_ts, best = window.grid(res.x), float(res.fun)
    v_tuned, v_start = val.sw2(tuned_ts), val.sw2(starts[start])
    improved = v_tuned < v_start
    return TunedGrid(
        ts=tuned_ts if improved else starts[start], solver=solver, steps=steps, start_grid=start, improved=improved,
        nfe=cal.nfe + val.nfe, evals=evals[0] + len(starts), objective="sw2",
        calibration={"tuned": {"sw2": best}, "start": {"sw2": start_scores[start]}},
        validation={"tuned": {"sw2": v_tuned}, "start": {"sw2": v_start}}, seed=seed,
    )
