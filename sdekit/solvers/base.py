"""What every solver shares: the model evaluator, per-row noise, the Solution, and the errors.

A solver is a generator function with one signature (k-diffusion style)::

    def solver(ev: Evaluator, x: Tensor, ts: Tensor, **options) -> Iterator[Tensor]:
        for i in range(len(ts) - 1):
            ...                      # ask ev for score / eps / x0 / drift at (x, ts[i])
            yield x                  # the state at ts[i + 1]

``ts`` is a float64 tensor of decreasing times (t_start ... t_end). The driver (``sample``) owns
progress bars, callbacks, trajectories and NFE accounting; the solver owns only its update rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from ..noise import RowNoise
from ..parameterization import ScoreModel
from ..sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["Solution", "Evaluator", "RowNoise", "SolverError", "NonFiniteError", "StepBudgetError", "StepSizeError",
           "NotApplicableError", "refuse", "option", "check_sampling", "check_positive_alpha"]


class SolverError(RuntimeError):
    """A solve could not complete."""


class NonFiniteError(SolverError, FloatingPointError):
    """The network (or the state) became NaN or Inf during a solve."""


class StepBudgetError(SolverError):
    """An adaptive solve needed more steps than its budget allows."""


class StepSizeError(SolverError):
    """An adaptive solve's step size underflowed (the tolerances cannot be met there)."""


class NotApplicableError(SolverError, ValueError):
    """A solver refused its input before any network call: it does not apply to this path, grid or direction
    (alpha = 0 on a flow path, an inversion with noise, a time where the model cannot give what it needs), or an
    option is out of range. Both a ``SolverError`` and a ``ValueError``; the message names the solver."""


def refuse(ev, why: str) -> NotApplicableError:
    """The ``NotApplicableError`` for the solver running on ``ev`` (its registry name, set by the registry):
    ``raise refuse(ev, "...")``."""
    name = getattr(ev, "solver", None) or "this solver"
    return NotApplicableError(f"solver {name!r} " + why if name != "this solver" else f"{name} " + why)


def option(ev, name: str, value, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """A real solver option in [lo, hi] (open where asked), finite, as a float; else ``refuse`` naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) \
            or (hi_open and v == hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise refuse(ev, f"needs {name} in {lb}{lo}, {hi}{rb} (finite); got {value!r}")
    return v


def check_sampling(ev, ts) -> None:
    """Refuse an increasing grid (inversion) for a solver of the reverse SDE, before any network call."""
    if float(ts[-1]) > float(ts[0]):
        raise refuse(ev, "samples the reverse SDE; an inversion (increasing ts) needs a deterministic solver")


def check_positive_alpha(ev, ts, why: str) -> None:
    """Refuse a grid that visits alpha = 0 (a flow path at t = T), where ``why`` (the solver's step) is undefined."""
    for t in ts.tolist():
        if ev.sde.schedule(t)[0] == 0.0:
            raise refuse(ev, f"cannot start at alpha = 0 (t = {t:.6g} on {ev.sde!r}): {why}; start below that time "
                             "(t_start < it) or use a sampler that starts from pure noise (euler_ancestral, "
                             "dpmpp_2m_sde, sa_solver, ddpm, ddim with eta > 0)")


class NoiseSource(Protocol):
    """What ``Evaluator`` draws noise from: ``RowNoise``, or a stand-in with its ``randn_like`` (an inversion's
    refusal, a pipeline's generator); ``path`` (Brownian paths) is asked only of sources that have it."""

    def randn_like(self, x: Tensor) -> Tensor: ...


@dataclass
class Solution:
    """Result of ``sdekit.sample``: the final state, the cost and the times visited.

    x: state at ts[-1] (or at t = 0 after a final denoising jump); nfe: network evaluations;
    ts: the float64 time grid; trajectory: states at every ts (when asked for); stats: solver-specific
    numbers (e.g. accepted/rejected steps of adaptive solvers); log_prob: each row's log-density in nats
    (``sample(..., log_prob=True)`` only).
    """

    x: Tensor
    nfe: int
    ts: Tensor
    trajectory: Optional[list] = None
    stats: dict = field(default_factory=dict)
    log_prob: Optional[Tensor] = None


class Evaluator:
    """The only way a solver touches the model: counts NFE, checks for NaN/Inf, names step and time.

    Every method takes a scalar float64 time (or a (batch,) tensor) and the state x.
    """

    def __init__(self, model: ScoreModel, noise: Optional[NoiseSource] = None, path: bool = True):
        self.model = model
        self.sde: LinearSDE = model.sde
        self.noise = noise
        self.path = path  # False: path_noise gives fresh per-call draws (``sample(..., noise="step")``)
        self.nfe = 0
        self.step = 0
        self.stats: dict = {}  # solver-specific numbers reported in Solution.stats
        self.solver = ""  # the registry name of the solver running (set by the registry; named in refusals)
        self._defined: dict = {}  # (t, kind) -> None or why the model cannot give kind at t
        self._plan = None  # the solve's planned path increments (``plan_path_noise``)

    # -- model -----------------------------------------------------------------------------
    def require(self, kind: str, times) -> None:
        """Refuse (``NotApplicableError``, before any network call) if the model cannot give ``kind`` at one of
        ``times`` (``ScoreModel.undefined``: e.g. x0 from a velocity network where alpha' = sigma' = 0)."""
        for t in times:
            why = self._why(float(t), kind)
            if why is not None:
                raise refuse(self, f"needs the model's {kind} at t = {float(t):.6g}, {why}")

    def _why(self, t: float, kind: str):
        key = (t, kind)
        if key not in self._defined:
            undefined = getattr(self.model, "undefined", None)  # duck-typed models: no check
            self._defined[key] = None if undefined is None else undefined(kind, t)
        return self._defined[key]

    def _predict(self, x: Tensor, t, kind: str) -> Tensor:
        if isinstance(t, float) or (isinstance(t, Tensor) and t.ndim == 0):
            self.require(kind, (t,))  # a time where the conversion is 0/0: refused before the network call
        out = self.model.predict(x, t, kind)
        self.nfe += 1
        # one reduction instead of isfinite + all: a sum is finite iff every entry is (barring an
        # overflow of the sum itself, which only ever flags outputs beyond 1e38; half types check entries)
        if (not math.isfinite(float(out.sum()))) if out.dtype in (torch.float32, torch.float64) \
                else not bool(torch.isfinite(out).all()):
            tt = float(torch.as_tensor(t).reshape(-1)[0])
            raise NonFiniteError(
                f"the network returned NaN or Inf at step {self.step} (t = {tt:.6g}) while computing {kind}; "
                "check the network, the time grid (t too close to 0?) and the dtype"
            )
        return out

    def score(self, x: Tensor, t) -> Tensor:
        return self._predict(x, t, "score")

    def eps(self, x: Tensor, t) -> Tensor:
        return self._predict(x, t, "eps")

    def x0(self, x: Tensor, t) -> Tensor:
        return self._predict(x, t, "x0")

    def reverse_drift(self, x: Tensor, t, eta: float = 1.0) -> Tensor:
        """f x - (1 + eta^2)/2 g^2 score: eta = 0 is the probability-flow ODE, eta = 1 the reverse SDE."""
        return self.sde.reverse_drift(x, t, self.score(x, t), eta=eta)

    def velocity(self, x: Tensor, t) -> Tensor:
        """The probability-flow velocity dx/dt = alpha' x0 + sigma' eps (= f x - g^2 score / 2), asked of the
        model directly: finite wherever alpha' and sigma' are, alpha(T) = 0 (flow-matching paths) included."""
        return self._predict(x, t, "velocity")

    def pf_drift(self, x: Tensor, t) -> Tensor:
        """The probability-flow ODE's right-hand side, f x - g^2 score / 2, computed as ``velocity``."""
        return self.velocity(x, t)

    # -- noise --------------------------------------------------------------------------
    def _noise(self):
        if self.noise is None:
            raise SolverError("this solver is stochastic and needs noise; pass generator= (a seed or torch.Generator)")
        return self.noise

    def randn_like(self, x: Tensor) -> Tensor:
        """A fresh N(0, I) draw per call (the k-th call of a solve gives each row its k-th draw)."""
        return self._noise().randn_like(x)

    def path_noise(self, x: Tensor, t, s) -> Tensor:
        """(W(t) - W(s)) / sqrt(|t - s|) for the rows' Brownian paths on [0, sde.T] (``sdekit.noise.BrownianPath``):
        an N(0, I) draw that is a function of the path, so a finer grid refines the same path. With path=False a
        fresh per-call draw instead (``randn_like``: one Gaussian per entry, but a new path for every grid)."""
        if not self.path:
            return self.randn_like(x)
        t, s = float(t), float(s)
        if self._plan is not None:
            z = self._plan.get(x, t, s)
            if z is not None:
                return z
        return self._noise().path(self.sde.T).standard(x, t, s)

    def plan_path_noise(self, x: Tensor, pairs) -> None:
        """Declare the (t, s) pairs whose ``path_noise`` the solve will ask for, in order (a list of pairs, or a grid
        tensor ts for its steps (ts[i], ts[i + 1])): their increments are then drawn a block of pairs at a time in
        one vectorised call (``sdekit.noise.PathPlan``), with the same values as one call per step. Nothing to do
        for per-call noise (path=False) or a source without Brownian paths."""
        if self.path and self.noise is not None and hasattr(self.noise, "path"):
            if isinstance(pairs, Tensor):
                times = pairs.tolist()
                pairs = list(zip(times[:-1], times[1:]))
            self._plan = self.noise.path(self.sde.T).plan(x, pairs)

    def brownian(self, x: Tensor, ts) -> Tensor:
        """W at time(s) ts of the rows' Brownian paths (shape x.shape, or (len(ts), *x.shape) for a list)."""
        return self._noise().path(self.sde.T)(x, ts)
