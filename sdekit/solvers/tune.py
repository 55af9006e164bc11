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

Parameterisation. The grid lives in the normalised log-SNR z = (lambda(t) - lambda(t_start)) /
(lambda(t_end) - lambda(t_start)) in [0, 1]: z_i = sum_{j<i} w_j / sum_j w_j with w_j = exp(theta_j), so
every theta is a valid, strictly monotone grid with both ends fixed (N steps, N - 1 free shapes).
theta starts at the best of the named grids (uniform, quadratic, logsnr, karras) on the calibration
draw and is refined by the method asked for (below).

A start at pure noise (alpha(t_start) = 0, lambda = -inf: the flow-matching paths at T) has no finite z. There
the first node stays at t_start and the other N nodes live in a finite window [lambda_w, lambda(t_end)]:
z_i = sum_{j<=i} w_j / sum_j w_j, i = 1..N (N weights, N - 1 free shapes, z_N = 1), so the first interior node
may sit anywhere in the window and every theta is again a valid grid that starts exactly at t_start.
lambda_w = -lambda(t_end) (the named grids' mirror point t_max, ``grids.py``), lowered below every start
grid's first interior node. A low end at sigma = 0 keeps the named grids' convention (below).

Methods (``method=``; ``METHODS`` maps each name to a function of a ``Setup`` returning a ``Candidate``, and a new
method is one entry there). "powell": Powell's derivative-free method (scipy) on theta within ``max_evals`` solves.
"gradient": Adam on theta through the solver (``grad_grid``: LD3's idea, Tong et al. 2024), exact gradients through
the network's inputs and the solver's coefficients, K forward calls and one backward pass per update. "start": a
named grid's shape kept, its first time alone chosen (golden section). "auto" (default): gradient where the network
is differentiable in x and t (checked against a difference quotient in t) and the solver is a fixed linear
combination of its calls (every deterministic fixed-step solver here) and alpha(T) > 0; Powell otherwise. Measured
(``benchmarks/grad_tune.py``): gradient reaches Powell's fresh-draw error or better with about a quarter of its
network calls.

The free start (``free_start=True``, implied by "start"): the grid's first time t_s <= t_start is a parameter too,
phi in [0, PHI_MAX] with lambda(t_s) = lam0 + phi (lam1 - lam0), while x_T stays the prior draw at t_start and the
reference still starts there: diffusers' "leading" spacing, whose first step starts below T, weighed honestly
(the prior is then used as an approximation of the marginal at t_s).

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
import hashlib
import math
import numbers
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..metrics import error_summary, per_row_error
from ..parameterization import ScoreModel
from .base import NotApplicableError, SolverError
from .driver import sample
from .grids import GRIDS, make_grid
from .registry import get

Tensor = torch.Tensor

__all__ = ["TunedGrid", "tune", "tune_grid", "OBJECTIVES", "METHODS", "GridParams", "Setup", "Candidate"]

OBJECTIVES = ("balanced", "median", "p90")
START_GRIDS = ("uniform", "quadratic", "logsnr", "karras")
PHI_MAX = 0.35  # free_start's lowest start: 35% of the way from lambda(t_start) to lambda(t_end) in log-SNR
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


def _score(e: Tensor, objective: str) -> float:
    """The objective (module docstring) of per-row errors e; inf where e has a non-finite entry."""
    s = error_summary(e)
    tiny = 1e-300  # an exact solve (error 0) must not give log(0)
    if math.isnan(s["median"]):
        return math.inf
    if objective == "median":
        return math.log(s["median"] + tiny)
    if objective == "p90":
        return math.log(s["p90"] + tiny)
    return 0.5 * (math.log(s["median"] + tiny) + math.log(s["p90"] + tiny))


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


def _z_of(sde, ts: Tensor, lam0: float, lam1: float, noise_start: bool = False, free_end: bool = False) -> np.ndarray:
    """Normalised log-SNR of the nodes ``_grid_of`` places (ts without its alpha = 0 start and sigma = 0 end)."""
    ts = ts[1 if noise_start else 0: -1 if free_end else None]
    return ((sde.log_snr(ts) - lam0) / (lam1 - lam0)).numpy()


def _grid_of(theta: np.ndarray, sde, lam0: float, lam1: float, t_start: float, t_end: float,
             noise_start: bool = False, free_end: bool = False) -> Tensor:
    """The grid of the increments w = exp(theta), z = cumsum(w)/sum(w) in the window [lam0, lam1]: t_start at
    z = 0 (or, with ``noise_start``, at alpha = 0 before the nodes), t_end at z = 1 (or, with ``free_end``, at
    sigma = 0 after the nodes, the last increment being the gap from the last node to the window's top)."""
    w = np.exp(theta - theta.max())
    z = np.cumsum(w) / w.sum()
    z = z[:-1] if free_end else z
    z = z if noise_start else np.concatenate([[0.0], z])
    ts = sde.t_from_log_snr(torch.as_tensor(lam0 + z * (lam1 - lam0), dtype=torch.float64))
    if free_end:  # no node past the window's top (t = sde.eps on a grid to sigma = 0), even by rounding
        ts = torch.maximum(ts, sde.t_from_log_snr(torch.tensor([lam1], dtype=torch.float64)))
    ts = torch.cat([ts.new_full((int(noise_start),), t_start), ts, ts.new_full((int(free_end),), t_end)])
    ts[0], ts[-1] = t_start, t_end
    return ts


def _theta_of(z: np.ndarray, noise_start: bool = False, free_end: bool = False) -> np.ndarray:
    """The inverse of ``_grid_of``: log-increments of [0 (with ``noise_start``), z, 1 (with ``free_end``)]."""
    z = np.concatenate([[0.0] * noise_start, z, [1.0] * free_end])
    return np.log(np.maximum(np.diff(z), 1e-12))


def _window(sde, starts, t_start: float, t_low: float, noise_start: bool):
    """(lam0, lam1): the log-SNR range the free nodes are normalised to (module docstring)."""
    lam1 = float(sde.log_snr(t_low))
    if not noise_start:
        return float(sde.log_snr(t_start)), lam1
    firsts = [float(sde.log_snr(ts[1])) for ts in starts]
    return min([-abs(lam1)] + [v - 1.0 for v in firsts]), lam1


def _strictly_decreasing(ts: Tensor) -> bool:
    return bool((ts[1:] < ts[:-1]).all())


def _prior_draw(model: ScoreModel, shape, n: int, seed: int, dtype, device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.sde.prior_sample((n, *shape), generator=g).to(dtype=dtype, device=device)


def _net_dtype_device(model: ScoreModel):
    params = list(model.net.parameters()) if isinstance(model.net, torch.nn.Module) else []
    if params:
        return params[0].dtype, params[0].device
    return torch.float64, torch.device("cpu")


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


def model_fingerprint(model: ScoreModel) -> Optional[str]:
    """A hash of what the model computes: the network's parameters and buffers, the tensors and numbers held
    by its modules and by the objects they hold (a mixture, a schedule), the SDE's, and the prediction type;
    None for a network that is not an ``nn.Module``."""
    if not isinstance(model.net, torch.nn.Module):
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((type(model).__name__, model.prediction, getattr(model, "ratio", None),
                   getattr(model, "max_value", None))).encode())
    for name, t in model.net.state_dict(keep_vars=True).items():
        _hash_tensor(h, name, t)
    for mod in model.net.modules():
        _hash_fields(h, mod, depth=1)
    _hash_fields(h, model.sde, depth=1)
    return h.hexdigest()


def _hash_fields(h, obj, depth: int) -> None:
    """Hash the tensors among ``obj``'s attributes, its numbers too unless it is a module (whose counters and
    flags are not what it computes), and (``depth`` levels down) those of the plain objects it holds (a mixture,
    a schedule); modules' parameters and buffers are in the state dict, submodules are walked apart."""
    h.update(type(obj).__name__.encode())
    module = isinstance(obj, torch.nn.Module)
    for name, v in sorted(vars(obj).items()):
        if isinstance(v, Tensor):
            _hash_tensor(h, name, v)
        elif isinstance(v, (numbers.Number, str, type(None))):
            if not module:
                h.update(repr((name, v)).encode())
        elif isinstance(v, (list, tuple)) and all(isinstance(u, (numbers.Number, str)) for u in v):
            if not module:
                h.update(repr((name, v)).encode())
        elif depth > 0 and hasattr(v, "__dict__") and not isinstance(v, (torch.nn.Module, type)) \
                and not callable(v):
            _hash_fields(h, v, depth - 1)


def _hash_tensor(h, name: str, t: Tensor) -> None:
    t = t.detach()
    h.update(repr((name, str(t.dtype), tuple(t.shape))).encode())
    h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())


class GridParams:
    """Grid parameters p = [phi (only with ``free_start``)] + theta -> a grid (module docstring: theta as above;
    phi in [0, PHI_MAX] the start's normalised log-SNR, lambda(t_s) = lam0 + phi (lam1 - lam0), phi = 0 being
    t_start itself)."""

    def __init__(self, sde, steps: int, t_start: float, t_end: float, free_start: bool, starts: Sequence[Tensor]):
        self.sde, self.steps, self.t_start, self.t_end, self.free_start = sde, steps, t_start, t_end, free_start
        self.zero_end = float(sde.sigma(t_end)) == 0  # the grids' convention: steps - 1 intervals to eps, then 0
        self.noise_start = float(sde.alpha(t_start)) == 0  # lambda(t_start) = -inf: the first node stays put
        if free_start and self.noise_start:
            raise ValueError(f"free_start needs alpha(t_start) > 0 (a start in log-SNR); t_start = {t_start} has "
                             f"alpha = 0 on {sde!r}: pass a t_start below it")
        t_low = sde.eps if self.zero_end else t_end
        self.lam0, self.lam1 = _window(sde, starts, t_start, t_low, self.noise_start)

    def p_of(self, ts: Tensor, phi: float = 0.0) -> np.ndarray:
        """The parameters of a grid that starts at ``t_of(phi)``."""
        lam0 = self.lam0 + phi * (self.lam1 - self.lam0)
        theta = _theta_of(_z_of(self.sde, ts, lam0, self.lam1, self.noise_start, self.zero_end),
                          self.noise_start, self.zero_end)
        return np.concatenate([[phi], theta]) if self.free_start else theta

    def t_of(self, phi: float) -> float:
        """The start time at phi."""
        if phi == 0:
            return self.t_start
        lam = torch.tensor([self.lam0 + phi * (self.lam1 - self.lam0)], dtype=torch.float64)
        return float(self.sde.t_from_log_snr(lam))

    def phi_of(self, ts: Tensor) -> float:
        """phi of a grid's start (0 at t_start)."""
        if float(ts[0]) == self.t_start:
            return 0.0
        return (float(self.sde.log_snr(ts[0])) - self.lam0) / (self.lam1 - self.lam0)

    def ts(self, p: np.ndarray) -> Tensor:
        if not self.free_start:
            return _grid_of(p, self.sde, self.lam0, self.lam1, self.t_start, self.t_end, self.noise_start,
                            self.zero_end)
        phi = float(p[0])
        return _grid_of(p[1:], self.sde, self.lam0 + phi * (self.lam1 - self.lam0), self.lam1, self.t_of(phi),
                        self.t_end, False, self.zero_end)

    def project(self, p: np.ndarray) -> np.ndarray:
        if self.free_start:
            p = p.copy()
            p[0] = min(max(float(p[0]), 0.0), PHI_MAX)
        return p


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
        value = _score(s.cal.errors(ts), s.objective)
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
        score0 = _score(s.cal.errors(ts0), s.objective)
    phi = s.params.phi_of(ts0) if s.params.free_start else 0.0
    res = grad_grid.fit(s.model, s.solver, s.options, s.cal.x_T, s.cal.x_ref, s.params, s.params.p_of(ts0, phi),
                        s.max_evals, s.lr, select=lambda e: _score(e, s.objective))
    s.cal.nfe += res.nfe
    best = res.ts if res.loss < score0 else ts0
    return Candidate(best if _score(s.cal.errors(best), s.objective) < s.start_score else s.start_ts,
                     evals + res.iters, res.backward)


def _start(s: Setup, iters: Optional[int] = None) -> Candidate:
    """The start grid's shape kept, its start time alone chosen (``grad_grid.start_search``)."""
    from . import grad_grid

    def build(phi: float) -> Tensor:
        return make_grid(s.model.sde, s.steps, s.start, s.params.t_of(phi), s.params.t_end)

    def score(ts: Tensor) -> float:
        return _score(s.cal.errors(ts), s.objective)

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
    n: int = 256,
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
    there on the median nor on the 90th percentile (``TunedGrid.improved``); else the start grid is returned."""
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
    net_dtype, device = _net_dtype_device(model)
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


def _wins(tuned: Tensor, start: Tensor, objective: str) -> bool:
    """The keep rule: better on the objective, no worse on the median nor on the 90th percentile."""
    st, ss = error_summary(tuned), error_summary(start)
    return _score(tuned, objective) < _score(start, objective) and st["median"] <= ss["median"] \
        and st["p90"] <= ss["p90"]


def _tune(model, solver, steps, shape, n, seed, t_start, t_end, objective, max_evals, ref_steps, start_grids,
          dtype, solver_options, method, free_start, lr) -> TunedGrid:
    device = _net_dtype_device(model)[1]
    draws = [_Problem(model, solver, _prior_draw(model, shape, n, seed + k * 7919, dtype, device), ref_steps,
                      solver_options, t_start, t_end) for k in range(3)]
    cal, val, fresh = draws
    sde = model.sde
    starts = {g: make_grid(sde, steps, g, t_start, t_end) for g in start_grids}
    start_scores = {g: _score(cal.errors(ts), objective) for g, ts in starts.items()}
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
    improved = not torch.equal(cand.ts, starts[start]) and _wins(errs[1]["tuned"], errs[1]["start"], objective)
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
