"""Time grids tuned by gradient descent through the solver (LD3's idea: Tong et al. 2024, "Learning to
Discretize Denoising Diffusion ODEs"), and the free start below T (diffusers' "leading" spacing).

The solver as a tape. Every deterministic fixed-step solver here is linear in its inputs with coefficients that
depend on the grid alone: each network call k is made at a state that is a fixed combination of x_T and the
earlier outputs, and the end state is one too,

    m_k = x0(s_k . [x_T, m_0 .. m_{k-1}], tau_k),      x_N = f . [x_T, m_0 .. m_{K-1}],

with K calls at times tau_k. ``tape`` reads (tau, S, f) off the registered solver run on coefficient rows (a
model call returns the next basis row, converted to the kind the solver asks for: the conversions are affine in
the state and the output), through the driver's own steps, so the zero-noise jump and UniPC's corrector are in it.
A solver that is not of this form (an adaptive or a stochastic one) is refused, and the tape is checked against
``sample`` on a few rows before it is used.

Gradient. The grid is ``tune``'s parameter vector theta (log-increments in normalised log-SNR; every theta a
strictly monotone grid), plus, with ``free_start``, phi in [0, PHI_MAX]: the start's normalised log-SNR,
lambda(t_s) = lambda(t_start) + phi (lambda(t_end) - lambda(t_start)), phi = 0 being t_start itself. The loss
reaches (theta, phi) through the network's time inputs tau and through the coefficients (S, f). Both are smooth
functions of the grid computed in float64 Python, so their Jacobian is taken by forward differences of the tape
(P + 1 tapes of a K-call solve on (K + 1)-wide rows: no network call), and autograd does the rest through the
network: per update K forward calls on the n calibration rows and one backward pass.

Loss (robust to the few rows near a boundary between basins, which dominate an RMS):

    L = (mean{log e_r : q30(e) <= e_r <= q70(e)} + log mean{e_r : q80(e) <= e_r <= q95(e)}) / 2,

a differentiable stand-in for tune's balanced objective (log q50 + log q90) / 2. Adam (projected onto phi's box)
for ``iters`` updates with a cosine-decayed step; the iterate with the lowest loss is the candidate.

The leading start. With ``free_start`` the grid may start at t_s < t_start while x_T is still the prior draw
(N(0, sigma(T)^2) on VP): the solve treats it as a draw at t_s, as diffusers' "leading" spacing does, and the
reference is still the converged solve from t_start, so the gain in truncation error is weighed against the error
of that approximation. ``start_search`` keeps a named grid's shape and chooses its start alone (golden section on
phi, one parameter, about 25 solves).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..metrics import per_row_error
from ..parameterization import ScoreModel, convert
from .base import Evaluator, NotApplicableError
from .driver import sample, solver_states
from .registry import get
from .grid_params import PHI_MAX, GridParams

Tensor = torch.Tensor

__all__ = ["Tape", "tape", "replay", "check_tape", "robust_loss", "is_differentiable", "fit", "start_search"]

_FD = 1e-6  # forward-difference step in theta / phi


# -- the tape ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tape:
    """A solver's run on one grid: call times tau (K,), call states S (K, K + 1) and end state f (K + 1,) over the
    basis [x_T, m_0 .. m_{K-1}] (m_k the model's data prediction at call k), float64."""

    tau: Tensor
    S: Tensor
    f: Tensor

    def flat(self) -> Tensor:
        return torch.cat([self.tau, self.S.reshape(-1), self.f])

    @staticmethod
    def unflat(v: Tensor, K: int) -> "Tape":
        return Tape(v[:K], v[K: K + K * (K + 1)].reshape(K, K + 1), v[K + K * (K + 1):])


class _Symbolic(Evaluator):
    """An evaluator whose states are coefficient rows; the k-th call returns m_k's basis row as the kind asked."""

    def __init__(self, model: ScoreModel, width: int):
        super().__init__(model)
        self.width = width
        self.times: List[float] = []
        self.states: List[Tensor] = []

    def _predict(self, x: Tensor, t, kind: str) -> Tensor:
        if isinstance(t, Tensor) and t.ndim > 0:
            raise NotApplicableError(f"solver {self.solver!r} calls the model at per-row times; it has no tape")
        tf = float(t)  # (no ``require`` check: ``check_tape`` ran ``sample`` on the start grid, which makes it)
        k = self.nfe
        if x.shape != (1, self.width) or k + 1 >= self.width:
            raise NotApplicableError(f"solver {self.solver!r} is not a fixed linear combination of its model calls")
        self.times.append(tf)
        self.states.append(x.detach().reshape(-1).clone())
        m = torch.zeros_like(x)
        m[0, k + 1] = 1.0
        self.nfe += 1
        return convert(m, "x0", kind, x, tf, self.sde)

    def randn_like(self, x: Tensor) -> Tensor:
        raise NotApplicableError(f"solver {self.solver!r} draws noise; gradient tuning needs a deterministic solver")


def tape(model: ScoreModel, solver: str, ts: Tensor, options: Optional[dict] = None) -> Tape:
    """The tape (module docstring) of ``solver`` with ``options`` on the grid ``ts``."""
    info = get(solver)
    if info.adaptive or info.nfe_per_step is None:
        raise NotApplicableError(f"solver {solver!r} chooses its own steps; it has no tape")
    width = int(math.ceil(info.nfe_per_step)) * (len(ts) - 1) + 3  # + the jump, + UniPC's final call, + x_T
    ev = _Symbolic(model, width)
    x_T = torch.zeros(1, width, dtype=torch.float64)
    x_T[0, 0] = 1.0
    x = x_T
    jump = float(model.sde.sigma(ts[-1])) == 0.0 and float(ts[-1]) < float(ts[0])
    with torch.no_grad():
        for x in solver_states(info, ev, x_T, ts, jump, dict(options or {})):  # noqa: B007 (the last state)
            pass
    K = ev.nfe
    if K == 0:
        raise NotApplicableError(f"solver {solver!r} made no model call on this grid")
    S = torch.stack(ev.states)[:, : K + 1]
    if bool(x[0, K + 1:].abs().gt(0).any()):
        raise NotApplicableError(f"solver {solver!r} is not a fixed linear combination of its model calls")
    return Tape(torch.tensor(ev.times, dtype=torch.float64), S, x[0, : K + 1].clone())


def replay(model: ScoreModel, x_T: Tensor, tp: Tape) -> Tensor:
    """x_N of the tape from x_T (differentiable in x_T, the network and the tape's tensors)."""
    rows, dtype = x_T.shape[0], x_T.dtype
    ms: List[Tensor] = []

    def combine(c: Tensor) -> Tensor:
        x = c[0].to(dtype) * x_T
        for j, m in enumerate(ms):
            x = x + c[j + 1].to(dtype) * m
        return x

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad")  # the SDE's range checks
        for k in range(len(tp.tau)):
            ms.append(model.predict(combine(tp.S[k]), tp.tau[k].expand(rows).to(dtype), "x0"))
    return combine(tp.f)


def is_differentiable(model: ScoreModel, shape: Sequence[int], dtype, device) -> bool:
    """Whether the network's data prediction has finite gradients in x and t, and its t-gradient agrees with a
    central difference in t (a network that detaches or rounds its time input has none that does); three calls
    on two rows."""
    sde = model.sde
    x = sde.prior_sample((2, *shape), generator=torch.Generator().manual_seed(0)).to(dtype=dtype, device=device)
    x.requires_grad_(True)
    t0, h = 0.5 * (sde.T + sde.eps), 1e-4 * (sde.T - sde.eps)
    t = torch.full((2,), t0, dtype=dtype, device=device, requires_grad=True)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Converting a tensor with requires_grad")
            out = model.predict(x, t, "x0")
            gx, gt = torch.autograd.grad(out.sum(), (x, t), allow_unused=True)
        with torch.no_grad():
            fd = (model.predict(x, t0 + h, "x0").sum() - model.predict(x, t0 - h, "x0").sum()) / (2 * h)
    except (RuntimeError, TypeError):  # no graph at all (a network run under no_grad, numpy inside)
        return False
    if gx is None or gt is None or not bool(torch.isfinite(gx).all()) or not bool(torch.isfinite(gt).all()):
        return False
    tol = 1e-2 if dtype == torch.float32 else 1e-4
    return abs(float(gt.sum()) - float(fd)) <= tol * (abs(float(fd)) + 1e-3 * float(out.detach().abs().mean()) + 1e-12)


# -- the parameters (grid_params.GridParams) and their Jacobian ----------------------------------------------------
def _jacobian(fn: Callable[[np.ndarray], Tensor], p: np.ndarray, v0: Tensor) -> Tensor:
    """d fn / d p by forward differences (error O(_FD) relative, far below what Adam needs; P tapes)."""
    cols = []
    for i in range(len(p)):
        e = np.zeros_like(p)
        e[i] = _FD
        cols.append((fn(p + e) - v0) / _FD)
    return torch.stack(cols, 1)


# -- loss and fit -----------------------------------------------------------------------------------------
def robust_loss(e: Tensor) -> Tensor:
    """(trimmed mean of log e over [q30, q70] + log mean of e over [q80, q95]) / 2 (module docstring)."""
    s = torch.sort(e).values
    n = s.numel()
    body = s[int(0.3 * n): max(int(0.7 * n), int(0.3 * n) + 1)]
    tail = s[int(0.8 * n): max(int(0.95 * n), int(0.8 * n) + 1)]
    return 0.5 * (torch.log(body + 1e-30).mean() + torch.log(tail.mean() + 1e-30))


@dataclass
class FitResult:
    ts: Tensor
    loss0: float
    loss: float
    iters: int
    nfe: int
    backward: int


def fit(model: ScoreModel, solver: str, options: dict, x_T: Tensor, x_ref: Tensor, params: GridParams,
        p0: np.ndarray, iters: int, lr: float, select: Optional[Callable[[Tensor], float]] = None) -> FitResult:
    """Projected Adam on the grid parameters from p0 (module docstring); the grid seen with the lowest
    ``select(per-row errors)`` (default: the loss), and that value at p0 and there."""
    p = p0.astype(np.float64).copy()
    m1, m2 = np.zeros_like(p), np.zeros_like(p)
    scale = np.ones_like(p)
    if params.free_start:
        scale[0] = 0.1  # phi moves in normalised log-SNR, theta in log-increments: a tenth of the step
    best: tuple = (math.inf, params.ts(p))
    loss0, nfe, back, done = math.inf, 0, 0, 0

    def flat(q: np.ndarray) -> Tensor:
        return tape(model, solver, params.ts(q), options).flat()

    for k in range(iters):
        ts = params.ts(p)
        if not bool((ts[1:] < ts[:-1]).all()):
            break
        tp0 = tape(model, solver, ts, options)
        K, v0 = len(tp0.tau), tp0.flat()
        J = _jacobian(flat, p, v0)
        leaf = torch.zeros(len(p), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            lin = v0 + J @ leaf  # value v0, gradient J
            fixed = J.abs().sum(1).eq(0)  # entries the grid cannot move (a start at alpha = 0): no gradient asked
            tp = Tape.unflat(torch.where(fixed, v0, lin), K)
            e = per_row_error(replay(model, x_T, tp), x_ref)
            loss = robust_loss(e)
            nfe += K
            if not bool(torch.isfinite(loss)):
                break
            (grad,) = torch.autograd.grad(loss, leaf)
        back += 1
        done = k + 1
        value = float(loss) if select is None else select(e.detach())
        loss0 = value if k == 0 else loss0
        if value < best[0]:
            best = (value, ts)
        g = grad.numpy()
        if not np.isfinite(g).all():
            break
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        step = lr * 0.5 * (1 + math.cos(math.pi * k / iters))
        p = params.project(p - step * scale * (m1 / (1 - 0.9 ** (k + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (k + 1))) + 1e-8))
    return FitResult(best[1], loss0, best[0], done, nfe, back)


def check_tape(model: ScoreModel, solver: str, options: dict, x_T: Tensor, ts: Tensor) -> None:
    """Refuse (NotApplicableError) a solver whose tape does not reproduce ``sample`` on x_T."""
    with torch.no_grad():
        want = sample(model, x_T, solver, ts=ts, **options).x
        got = replay(model, x_T, tape(model, solver, ts, options))
    tol = 1e-6 if x_T.dtype == torch.float64 else 1e-3
    err = float(per_row_error(got, want).max())
    scale = float(per_row_error(want, torch.zeros_like(want)).max()) + 1.0
    if not err <= tol * scale:
        raise NotApplicableError(f"solver {solver!r} with options {options} is not a fixed linear combination of its "
                                 f"model calls (its tape differs from sample by {err:.3g}); tune it with "
                                 "method='powell'")


def start_search(score: Callable[[Tensor], float], build: Callable[[float], Tensor], iters: int = 20) -> tuple:
    """Golden-section search of phi in [0, PHI_MAX] for the lowest ``score(build(phi))``; (phi, value, evals).
    phi = 0 (the start itself) is scored first and kept unless beaten."""
    g = (math.sqrt(5) - 1) / 2
    a, b = 0.0, PHI_MAX
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = score(build(c)), score(build(d))
    best = min([(score(build(0.0)), 0.0), (fc, c), (fd, d)])
    evals = 3
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = score(build(c))
            best = min(best, (fc, c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = score(build(d))
            best = min(best, (fd, d))
        evals += 1
    return best[1], best[0], evals
