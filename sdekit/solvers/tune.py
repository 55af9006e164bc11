"""Time grids tuned to one model and one solver, from prior draws alone.

At 4-20 network calls most of a solver's error is decided by where its few steps go, and the best
place depends on the model (its score's roughness along t) and on the solver (its local error
constant). ``tune`` places the steps for that pair by minimising the solver's *global* endpoint error
(as LD3, Tong et al. 2024, does; unlike Align Your Steps' KL bound or GITS' local-error dynamic
programme, this sees the multistep warm-up and the error cancellations of the actual solver):

    x_T^(1..n) ~ prior          (no data; ``sde.prior_sample``)
    x_ref = a converged solve of the same probability-flow ODE (rk4, ``ref_steps`` log-SNR steps)
    e_i(ts) = |solve(x_T^(i), ts) - x_ref^(i)| / sqrt(dim)                     (per-row error)
    J(ts) = (log q50(e) + log q90(e)) / 2                                      (``objective="balanced"``)

The objective is robust on purpose: a few rows start near a boundary between basins of the flow and
end elsewhere under any perturbation; they dominate an RMS, and a grid tuned on the RMS of one batch
fits those rows and not the model (measured: 0.016 RMS on the calibration rows, 0.146 on fresh ones,
untuned 0.151). Quantiles ignore them.

Parameterisation: ``grid_params`` (theta: the log-increments of a grid in normalised log-SNR; phi: a free
start). theta starts at the best of the named grids (uniform, quadratic, logsnr, karras) on the calibration draw
and is refined by the method asked for (below).

Methods (``method=``; ``METHODS`` maps each name to a function of a ``Setup`` returning a ``Candidate``, and a new
method is one entry there). "powell": Powell's derivative-free method (scipy) on theta within ``max_evals`` solves.
"gradient": Adam on theta through the solver (``grad_grid``: LD3's idea, Tong et al. 2024), exact gradients through
the network's inputs and the solver's coefficients, K forward calls and one backward pass per update. "start": a
named grid's shape kept, its first time alone chosen (golden section). "auto" (default): gradient where the network
is differentiable in x and t (checked against a difference quotient in t) and the solver is a fixed linear
combination of its calls (every deterministic fixed-step solver here) and alpha(T) > 0; Powell otherwise. Measured
(``benchmarks/grad_tune.py``): gradient reaches Powell's fresh-draw error or better with about a quarter of its
network calls.

The free start (``free_start=True``, implied by "start"): the grid's first time t_s <= t_start is a parameter too
(``grid_params``), while x_T stays the prior draw at t_start and the reference still starts there: diffusers'
"leading" spacing, weighed honestly (the prior is then used as an approximation of the marginal at t_s).

Generalisation. A second, independent prior draw of ``n`` rows (with its own reference) scores the
tuned grid against the starting grid; the tuned grid is kept only if it wins there on the objective and is no
worse on the median nor on the 90th percentile, so a tuned grid is never worse than the best named grid on fresh
draws of the problem it was tuned for (up to that draw's noise). A third draw (``TunedGrid.fresh``) only reports:
calibration, validation and fresh errors of the candidate and of the start grid are all returned, so over-fitting
shows. The cost is counted in network calls (each a batch of ``n`` rows; ``ref_nfe`` of them for the references),
backward passes and seconds, and returned.

Caching. A result is cached per model and settings only when the model's content can be fingerprinted: an
``nn.Module`` network, whose parameters and buffers are hashed (with the SDE's tensors and numbers and the
prediction type) on every call, so a model whose weights changed (a training step, ``load_state_dict``, an
edit through ``.data``) is tuned anew. A plain-function network is never cached (its behaviour cannot be
fingerprinted). Every call returns its own copy: editing a returned ``TunedGrid.ts`` leaves the cache intact.
Tuning runs under ``torch.no_grad()``, but for the gradient method's own backward passes.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..metrics import error_summary, keeps, objective_score, per_row_error
from ..parameterization import ScoreModel
from .base import NotApplicableError, SolverError
from .driver import sample
from ..fingerprint import model_fingerprint
from .grid_params import PHI_MAX, GridParams
from .grids import GRIDS, make_grid
from .registry import available, get

Tensor = torch.Tensor

__all__ = ["TunedGrid", "tune", "tune_grid", "OBJECTIVES", "METHODS", "GridParams", "Setup", "Candidate"]

OBJECTIVES = ("balanced", "median", "p90")
START_GRIDS = ("uniform", "quadratic", "logsnr", "karras")
_CACHE: "weakref.WeakKeyDictionary[ScoreModel, dict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TunedGrid:
    """A tuned time grid and what it cost.

    ts: float64 times t_start > ... > t_end (pass as ``sample(..., ts=ts)``); start_grid: the named grid
    tuning started from (and ``ts`` equals it when tuning did not win on the validation draw);
    nfe: network calls spent tuning (each a batch of ``n`` rows, references included);
    calibration / validation / fresh: {"tuned": {...}, "start": {...}} per-row error quantiles of the optimiser's
    candidate and of the start grid on each draw (the fresh draw, a third independent one, only reports: nothing is
    chosen on it); seed: the calibration draw's seed (the validation and fresh draws' are derived from it);
    method: "powell", "gradient" or "start"; backward: backward passes through the solver (gradient only);
    seconds: wall time of the tuning; ref_nfe: the part of ``nfe`` spent on the three reference solves."""

    ts: Tensor
    solver: str
    steps: int
    start_grid: str
    improved: bool
    nfe: int
    evals: int
    objective: str
    calibration: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    seed: Optional[int] = None
    fresh: dict = field(default_factory=dict)
    method: str = "powell"
    backward: int = 0
    seconds: float = 0.0
    ref_nfe: int = 0


class _Problem:
    """One draw of prior rows with its reference endpoints; scores grids by the objective."""

    def __init__(self, model: ScoreModel, solver: str, x_T: Tensor, ref_steps: int, options: dict,
                 t_start: float, t_end: float):
        self.model, self.solver, self.x_T, self.options = model, solver, x_T, options
        ref = sample(model, x_T, "rk4", ref_steps, grid="logsnr", t_start=t_start, t_end=t_end)
        self.x_ref, self.nfe, self.ref_nfe = ref.x, ref.nfe, ref.nfe

    def errors(self, ts: Tensor) -> Tensor:
        try:
            sol = sample(self.model, self.x_T, self.solver, ts=ts, **self.options)
        except SolverError:  # a grid that makes the solver blow up scores as infinitely bad
            return torch.full((self.x_T.shape[0],), math.inf, dtype=torch.float64)
        self.nfe += sol.nfe
        return per_row_error(sol.x, self.x_ref)


def _strictly_decreasing(ts: Tensor) -> bool:
    return bool((ts[1:] < ts[:-1]).all())


def _prior_draw(model: ScoreModel, shape, n: int, seed: int, dtype, device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.sde.prior_sample((n, *shape), generator=g).to(dtype=dtype, device=device)


def _check(model, solver, steps, n, objective, max_evals, shape, sde, t_end, method="auto"):
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    info = get(solver)
    stochastic = info.stochastic and info.options.get("eta", None) != 0
    if info.adaptive or (stochastic and method not in STOCHASTIC_METHODS):
        raise ValueError(f"tune needs a deterministic fixed-step solver; {solver!r} is "
                         f"{'adaptive' if info.adaptive else 'stochastic'}")
    if int(steps) != steps or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (one step has no grid to tune); got {steps!r}")
    if int(n) != n or n < 10:
        raise ValueError(f"n must be an integer >= 10 (quantiles of fewer rows are noise); got {n!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
    if int(max_evals) != max_evals or max_evals < 0:
        raise ValueError(f"max_evals must be an integer >= 0; got {max_evals!r}")
    if t_end is not None and float(sde.sigma(float(t_end))) == 0 and steps < 3:
        raise ValueError("a grid that ends at sigma = 0 spends its last step on the jump to t = 0: tuning it "
                         f"needs steps >= 3; got {steps}")
    if shape is None or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must give one row's shape, e.g. shape=(2,) or (1, 8, 8); got {shape!r}")


def _check_more(generator, ref_steps, start_grids, dtype) -> None:
    if isinstance(generator, bool) or not isinstance(generator, (numbers.Integral, torch.Generator, type(None))):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None (a fresh seed, reported in "
                        f"TunedGrid.seed); got {type(generator).__name__}")
    if isinstance(ref_steps, bool) or not isinstance(ref_steps, int) or ref_steps < 2:
        raise ValueError(f"ref_steps must be an integer >= 2 (rk4 steps of the reference solve); got {ref_steps!r}")
    if isinstance(start_grids, str) or not len(start_grids):
        raise ValueError(f"start_grids must be a non-empty sequence of grid names, e.g. {START_GRIDS}; "
                         f"got {start_grids!r}")
    unknown = [g for g in start_grids if g not in GRIDS]
    if unknown:
        raise ValueError(f"unknown start grid(s) {unknown}; accepted: {', '.join(GRIDS)}")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")


def _seed_of(generator) -> int:
    if generator is None:  # a fresh seed, drawn from torch's global generator (so torch.manual_seed fixes it)
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(generator) if not isinstance(generator, torch.Generator) else int(generator.initial_seed())


@dataclass
class Setup:
    """What a tuning method gets (``METHODS``): the calibration draw, the start grid and its parameters, the
    objective and the budget. A method returns a ``Candidate``."""

    model: ScoreModel
    solver: str
    steps: int
    options: dict
    cal: "_Problem"
    objective: str
    start: str  # the named grid tuning starts from (the best on the calibration draw)
    start_ts: Tensor
    start_score: float
    params: GridParams
    max_evals: int
    lr: float


@dataclass
class Candidate:
    """A method's result: the grid (start_ts when nothing better was found), the objective evaluations or updates
    it spent, and its backward passes."""

    ts: Tensor
    evals: int
    backward: int = 0


def _powell(s: Setup) -> Candidate:
    """Powell's derivative-free method (scipy) on the grid parameters, within ``max_evals`` solves."""
    from scipy.optimize import minimize

    evals = [0]

    def loss(p):
        evals[0] += 1
        ts = s.params.ts(s.params.project(np.asarray(p)))
        if not _strictly_decreasing(ts):  # increments below float resolution: not a grid
            return 1e6
        value = objective_score(s.cal.errors(ts), s.objective)
        return value if math.isfinite(value) else 1e6

    if s.max_evals == 0:
        return Candidate(s.start_ts, 0)
    p0 = s.params.p_of(s.start_ts)
    bounds = [(0.0, PHI_MAX)] + [(None, None)] * (len(p0) - 1) if s.params.free_start else None
    res = minimize(loss, p0, method="Powell", bounds=bounds,
                   options={"maxfev": s.max_evals, "xtol": 1e-3, "ftol": 1e-4})
    ok = res.fun < s.start_score
    return Candidate(s.params.ts(s.params.project(res.x)) if ok else s.start_ts, evals[0])


def _gradient(s: Setup) -> Candidate:
    """Adam through the solver (``grad_grid.fit``) for ``max_evals`` updates; with free_start from the start that
    ``_start`` finds for the start grid (a one-parameter search first: the start's landscape has local minima)."""
    from . import grad_grid

    if s.max_evals == 0:
        return Candidate(s.start_ts, 0)
    ts0, evals, score0 = s.start_ts, 0, s.start_score
    if s.params.free_start:
        first = _start(s, iters=10)
        ts0, evals = first.ts, first.evals
        score0 = objective_score(s.cal.errors(ts0), s.objective)
    phi = s.params.phi_of(ts0) if s.params.free_start else 0.0
    res = grad_grid.fit(s.model, s.solver, s.options, s.cal.x_T, s.cal.x_ref, s.params, s.params.p_of(ts0, phi),
                        s.max_evals, s.lr, select=lambda e: objective_score(e, s.objective))
    s.cal.nfe += res.nfe
    best = res.ts if res.loss < score0 else ts0
    return Candidate(best if objective_score(s.cal.errors(best), s.objective) < s.start_score else s.start_ts,
                     evals + res.iters, res.backward)


def _start(s: Setup, iters: Optional[int] = None) -> Candidate:
    """The start grid's shape kept, its start time alone chosen (``grad_grid.start_search``)."""
    from . import grad_grid

    def build(phi: float) -> Tensor:
        return make_grid(s.model.sde, s.steps, s.start, s.params.t_of(phi), s.params.t_end)

    def score(ts: Tensor) -> float:
        return objective_score(s.cal.errors(ts), s.objective)

    iters = max(0, s.max_evals - 3) if iters is None else iters
    phi, value, evals = grad_grid.start_search(score, build, iters=iters)
    return Candidate(build(phi) if value < s.start_score else s.start_ts, evals)


# Tuning methods by name: each takes a Setup and returns a Candidate; ``tune`` does the rest (draws, start grid,
# validation and fresh scores, the keep rule, caching). A new method is one entry here.
METHODS: dict[str, Callable[[Setup], Candidate]] = {"powell": _powell, "gradient": _gradient, "start": _start}
DEFAULT_BUDGET: dict[str, Callable[[int], int]] = {
    "powell": lambda steps: 50 * steps,  # solves (module docstring)
    "gradient": lambda steps: 60,  # Adam updates, each a solve and its backward pass
    "start": lambda steps: 23,  # golden-section solves
}
DEFAULT_LR = {"gradient": 0.1}
STOCHASTIC_METHODS: set = set()  # methods that tune stochastic solvers (the others refuse them before any work)


def _pick_method(method: str, model: ScoreModel, solver: str, shape, options, dtype, device) -> str:
    """"auto": gradient where the network is differentiable in x and t and the solver has a tape (both checked
    on two rows) and the path has alpha(T) > 0, else Powell. An explicit "gradient" that cannot run is refused."""
    if method not in ("auto", *METHODS):
        raise ValueError(f"unknown method {method!r}; accepted: auto, {', '.join(METHODS)}")
    if method not in ("auto", "gradient"):
        return method
    if method == "auto" and float(model.sde.alpha(model.sde.T)) == 0.0:
        return "powell"  # measured: from pure noise (flow paths) gradient steps barely move the grid; Powell does
    from . import grad_grid

    why = None
    if not grad_grid.is_differentiable(model, shape, dtype, device):
        why = "the network's data prediction has no finite gradient in x and t (no autograd graph through it)"
    else:
        try:
            x = _prior_draw(model, shape, 2, 0, dtype, device)
            grad_grid.check_tape(model, solver, options, x, make_grid(model.sde, 4, "logsnr"))
        except (NotApplicableError, SolverError) as e:
            why = str(e)
    if why is None:
        return "gradient"
    if method == "gradient":
        raise NotApplicableError(f"method='gradient' cannot tune {solver!r} on this model: {why}; use "
                                 "method='powell' (derivative-free)")
    return "powell"


def tune(
    model: ScoreModel,
    solver: str,
    steps: int,
    *,
    shape: Optional[Sequence[int]] = None,
    n: Optional[int] = None,
    generator: Union[int, torch.Generator, None] = 0,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    objective: str = "balanced",
    max_evals: Optional[int] = None,
    ref_steps: int = 500,
    start_grids: Sequence[str] = START_GRIDS,
    dtype: Optional[torch.dtype] = None,
    cache: bool = True,
    method: str = "auto",
    free_start: bool = False,
    lr: Optional[float] = None,
    **solver_options,
) -> TunedGrid:
    """Tune a ``steps``-step time grid for ``model`` and ``solver`` (see the module docstring).

    shape: one row's shape (the prior draws are (n, *shape)); generator: an int seed (or a torch.Generator: its
    initial seed; or None: a fresh seed from torch's global generator, returned in ``TunedGrid.seed``); the
    calibration draw uses it, the validation and fresh draws independent streams derived from it. t_start / t_end:
    as in ``sample`` (defaults sde.T and sde.eps); the prior draws are taken at t_start. objective: "balanced"
    (median and 90th percentile), "median" or "p90". method: "powell" (derivative-free), "gradient" (Adam through
    the solver, ``grad_grid``), "start" (a named grid's start time alone) or "auto" (default): gradient where the
    network is differentiable in x and t and the solver is a fixed linear combination of its calls (every
    deterministic fixed-step solver here), Powell otherwise: measured on 2-D and 16-D mixtures it reaches
    Powell's error with a small fraction of its network calls (``benchmarks/grad_tune.py``). free_start: the grid's
    first time is tuned too, anywhere in [t(lambda = lam0 + PHI_MAX (lam1 - lam0)), t_start], with x_T still the
    prior draw (diffusers' "leading" spacing; the reference still starts at t_start); "start" implies it.
    max_evals: the optimiser's budget: Powell's solves (default 50 per step: about one line search of ~15 solves
    per free point per sweep; measured on 16-D mixtures, 20 steps of unipc_3 reached 0.26x the best named grid's
    median with 300 solves and 0.18x with 1000), gradient's Adam updates (default 60) or the start search's solves
    (default 23). lr: Adam's step (default 0.1; gradient only). ref_steps: rk4 log-SNR steps of the reference.
    start_grids: the named grids tuning may start from. dtype: of the solves, float32 or float64 (default: the
    network's parameters' dtype, float32 for a half-precision network, float64 for a function).
    cache: reuse an earlier result for the same model content and settings (module docstring).
    solver_options go to the solver.

    The tuned grid is kept only if it beats the start grid on the validation draw on the objective and is no worse
    there on the median nor on the 90th percentile (``TunedGrid.improved``); else the start grid is returned.

    A stochastic sampler (euler_ancestral, dpmpp_2m_sde, er_sde_k, ...) has no per-row endpoint to compare: it is
    tuned by ``tune_sde.tune_stochastic`` on the sliced W2 between its samples and a converged reference law from the
    same prior draws (objective "sw2", method Powell; n defaults to 2048 there, 256 here; not cached)."""
    if isinstance(solver, str) and solver in available() and _stochastic(solver, solver_options):
        return _tune_stochastic(model, solver, steps, shape=shape, n=n, generator=generator, t_start=t_start,
                                t_end=t_end, objective=objective, max_evals=max_evals, ref_steps=ref_steps,
                                start_grids=start_grids, dtype=dtype, method=method, free_start=free_start,
                                lr=lr, **solver_options)
    n = 256 if n is None else n
    shape = tuple(shape) if shape is not None else None
    if method not in ("auto", *METHODS):
        raise ValueError(f"unknown method {method!r}; accepted: auto, {', '.join(METHODS)}")
    if not isinstance(free_start, bool):
        raise TypeError(f"free_start must be True or False; got {free_start!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    _check(model, solver, steps, n, objective, max_evals if max_evals is not None else 0, shape,
           getattr(model, "sde", None), t_end, method)
    _check_more(generator, ref_steps, start_grids, dtype)
    sde = model.sde
    t_start = float(sde.T if t_start is None else t_start)
    t_end = float(sde.eps if t_end is None else t_end)
    net_dtype, device = model.net_dtype_device()
    dtype = dtype or (net_dtype if net_dtype in (torch.float32, torch.float64) else torch.float32)
    assert shape is not None  # _check refuses None
    seed = _seed_of(generator)
    fingerprint = model_fingerprint(model) if cache else None
    # keyed by the method asked for: "auto" picks the same method for the same model content and solver
    key = (fingerprint, solver, int(steps), shape, int(n), seed, t_start, t_end, objective, max_evals,
           int(ref_steps), tuple(start_grids), str(dtype), tuple(sorted(solver_options.items())), method,
           free_start, lr)
    cached = _CACHE.setdefault(model, {}) if fingerprint is not None else {}
    if key in cached:
        return copy.deepcopy(cached[key])
    t0 = time.perf_counter()
    method = _pick_method(method, model, solver, shape, solver_options, dtype, device)
    free_start = free_start or method == "start"
    max_evals = DEFAULT_BUDGET[method](int(steps)) if max_evals is None else int(max_evals)
    lr = float(lr if lr is not None else DEFAULT_LR.get(method, 0.0))
    with torch.no_grad():
        result = _tune(model, solver, int(steps), shape, int(n), seed, t_start, t_end, objective, max_evals,
                       ref_steps, start_grids, dtype, solver_options, method, free_start, lr)
    result = dataclasses.replace(result, seconds=time.perf_counter() - t0)
    for old in [k for k in cached if k[0] != fingerprint]:  # results for older weights are never asked for again
        del cached[old]
    cached[key] = result
    return copy.deepcopy(result)


def _stochastic(solver: str, options: dict) -> bool:
    info = get(solver)
    return info.stochastic and not info.adaptive and options.get("eta", info.options.get("eta", None)) != 0


def _tune_stochastic(model, solver, steps, *, shape, n, generator, t_start, t_end, objective, max_evals, ref_steps,
                     start_grids, dtype, method, free_start, lr, **solver_options) -> TunedGrid:
    """tune's front door for stochastic samplers: ``tune_sde.tune_stochastic`` with the settings that apply there."""
    from .tune_sde import tune_stochastic  # tune_sde builds on this module

    if method not in ("auto", "powell"):
        raise NotApplicableError(f"method={method!r} tunes deterministic solvers; {solver!r} is stochastic and is "
                                 "tuned on the sliced W2 by Powell (method='auto' or 'powell')")
    if objective not in ("balanced", "sw2") or lr is not None:
        raise ValueError(f"{solver!r} is stochastic: its grid is tuned on the sliced W2 to the reference law "
                         "(objective='sw2'); per-row objectives and lr do not apply")
    kw = {} if n is None else {"n": n}
    return tune_stochastic(model, solver, steps, shape=shape, generator=_seed_of(generator),
                           t_start=t_start, t_end=t_end, free_start=free_start, max_evals=max_evals,
                           ref_steps=ref_steps, start_grids=start_grids, dtype=dtype, **kw, **solver_options)


def _tune(model, solver, steps, shape, n, seed, t_start, t_end, objective, max_evals, ref_steps, start_grids,
          dtype, solver_options, method, free_start, lr) -> TunedGrid:
    device = model.net_dtype_device()[1]
    draws = [_Problem(model, solver, _prior_draw(model, shape, n, seed + k * 7919, dtype, device), ref_steps,
                      solver_options, t_start, t_end) for k in range(3)]
    cal, val, fresh = draws
    sde = model.sde
    starts = {g: make_grid(sde, steps, g, t_start, t_end) for g in start_grids}
    start_scores = {g: objective_score(cal.errors(ts), objective) for g, ts in starts.items()}
    start = min(start_scores, key=start_scores.__getitem__)
    params = GridParams(sde, steps, t_start, t_end, free_start, list(starts.values()))
    setup = Setup(model, solver, steps, solver_options, cal, objective, start, starts[start], start_scores[start],
                  params, max_evals, lr)
    if method == "gradient":
        with torch.enable_grad():
            cand = METHODS[method](setup)
    else:
        cand = METHODS[method](setup)
    errs = [{"tuned": d.errors(cand.ts), "start": d.errors(starts[start])} for d in draws]
    improved = not torch.equal(cand.ts, starts[start]) and keeps(errs[1]["tuned"], errs[1]["start"], objective)
    cal_e, val_e, fresh_e = ({k: error_summary(e) for k, e in d.items()} for d in errs)
    return TunedGrid(
        ts=cand.ts if improved else starts[start], solver=solver, steps=steps, start_grid=start,
        improved=improved, nfe=sum(d.nfe for d in draws), evals=cand.evals + len(starts), objective=objective,
        calibration=cal_e, validation=val_e, seed=seed, fresh=fresh_e, method=method, backward=cand.backward,
        ref_nfe=sum(d.ref_nfe for d in draws),
    )


def tune_grid(model: ScoreModel, solver: str, steps: int, *, n: int = 256,
              generator: Union[int, torch.Generator] = 0, **kwargs) -> Tensor:
    """The tuned grid alone: ``tune(model, solver, steps, n=n, generator=generator, **kwargs).ts``."""
    return tune(model, solver, steps, n=n, generator=generator, **kwargs).ts
