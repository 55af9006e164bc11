"""One integration core: what is solved (a term), how it steps (a tableau and a controller), what is kept
(save times), for sampling and likelihood alike.

    integrate(term, y0, ts, method="dopri5", rtol=1e-5, atol=1e-5, max_nfe=100_000, save_ts=None)

term    a callable ``term(t, y) -> dy/dt`` (t a float64 0-d CPU tensor, y a batch-first tensor or a tuple of
        them) and optionally ``groups``, the error-norm groups of a tuple state (see below). Two terms live
        here: ``ProbabilityFlow`` (dx/dt = F(x, t) through an ``Evaluator``); the likelihood builds the
        augmented [F, div F] term on top of its divergence estimators (``sdekit.likelihood``).
method  an explicit Runge-Kutta tableau (``TABLEAUS``: dopri5, bosh3, adaptive_heun with an embedded error
        estimate; euler, midpoint, heun_t, rk4 fixed-step), run by one explicit RK step (``rk_step``).
ts      the times the solve steps onto exactly: ts[0] is the start, ts[-1] the end, the step is shortened
        to land on every one of them (the end above all: no stage is evaluated past it).
save_ts the times whose values are returned (default ts), anywhere in [ts[0], ts[-1]]: between step
        ends they come from the method's dense output (dopri5: Shampine's quartic through y0, y_{1/2}, y1
        and both end slopes; others: the cubic Hermite through y0, y1 and the end slopes).

Step-size control (Hairer, Norsett and Wanner, "Solving ODEs I", II.4) is ``StepController``
(``sdekit.solvers.controller``): a step from (t, y) with size h gives y1 and the embedded difference
e = h sum_i (b_i - b^_i) k_i; it is accepted when every row meets its own tolerance (rtol and atol may be numbers
or (batch,) tensors), and the next step is h min(10, max(0.2, 0.9 E^{-1/p})) (no shrink after an accepted step), p
the tableau's order; the first step comes from Hairer's starting-step algorithm (one extra evaluation). Rejected and
accepted steps are counted; a step that would take the solve past ``max_nfe`` evaluations raises
``StepBudgetError`` before it is taken.

With ``step_size=h`` (or a tableau without an error estimate) the steps are fixed: ceil(|interval| / h)
steps per interval of ts, the last one shortened to land. Errors are ``SolverError`` subclasses.

``method="torchdiffeq:<name>"`` runs any torchdiffeq method behind the same interface (same budget,
per-row norm, exact landing and errors; save times interpolated by torchdiffeq).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional, Union

import torch

from .base import NonFiniteError, Solution, StepSizeError
from .controller import StepController, check_tolerances

Tensor = torch.Tensor
State = Union[Tensor, tuple]

__all__ = ["Tableau", "TABLEAUS", "Coefficients", "integrate", "solve_steps", "rk_step", "ProbabilityFlow", "METHODS",
           "EXTERNAL_METHODS"]


# -- tableaux ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method as data: k_i = f(t + c_i h, y + h sum_{j<i} a_ij k_j),
    y1 = y + h sum_i b_i k_i, error estimate h sum_i e_i k_i with e = b - b^ (the embedded weights).

    order: of y1; fsal: the last stage is f(t + h, y1), so it is the next step's first; mid: weights of
    y_{1/2} = y + h sum_i mid_i k_i for dense output (None: cubic Hermite). Checks itself on creation:
    lower-triangular a with row sums c (consistency), sum b = 1, sum e = 0, and the FSAL claim.
    """

    name: str
    order: int
    c: tuple
    a: tuple
    b: tuple
    e: Optional[tuple] = None
    mid: Optional[tuple] = None

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name!r}: a must be strictly lower triangular with {s} rows")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau {self.name!r}: row {i} of a sums to {sum(row)}, not c = {self.c[i]}")
        if abs(sum(self.b) - 1) > 1e-12:
            raise ValueError(f"tableau {self.name!r}: the weights b sum to {sum(self.b)}, not 1")
        for name, w, total in (("e", self.e, 0.0), ("mid", self.mid, 0.5)):
            if w is not None and (len(w) != s or abs(sum(w) - total) > 1e-12):
                raise ValueError(f"tableau {self.name!r}: {name} needs {s} entries summing to {total}")

    @property
    def fsal(self) -> bool:
        return len(self.c) > 1 and self.c[-1] == 1 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0

    @property
    def adaptive(self) -> bool:
        return self.e is not None

    @property
    def stages(self) -> int:
        return len(self.c)


def _f(*xs) -> tuple:
    return tuple(float(Fraction(x)) for x in xs)


def _diff(b, b_hat) -> tuple:
    return tuple(float(Fraction(x) - Fraction(y)) for x, y in zip(b, b_hat))


_DP_B = ("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0)
TABLEAUS: dict[str, Tableau] = {t.name: t for t in (
    # Dormand and Prince 1980, "A family of embedded Runge-Kutta formulae", RK5(4)7M; dense midpoint weights
    # from Shampine 1986, "Some practical Runge-Kutta formulas" (Math. Comp. 46), giving a 4th-order interpolant.
    Tableau("dopri5", 5, _f(0, "1/5", "3/10", "4/5", "8/9", 1, 1),
            ((), _f("1/5"), _f("3/40", "9/40"), _f("44/45", "-56/15", "32/9"),
             _f("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
             _f("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"), _f(*_DP_B[:6])),
            _f(*_DP_B),
            _diff(_DP_B, ("5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40")),
            _f("6025192743/60171106304", 0, "51252292925/130801643196", "-2691868925/90256659456",
               "187940372067/3189068634112", "-1776094331/39487288512", "11237099/470086768")),
    # Bogacki and Shampine 1989, "A 3(2) pair of Runge-Kutta formulas" (Appl. Math. Lett. 2), FSAL.
    Tableau("bosh3", 3, _f(0, "1/2", "3/4", 1), ((), _f("1/2"), _f(0, "3/4"), _f("2/9", "1/3", "4/9")),
            _f("2/9", "1/3", "4/9", 0), _diff(("2/9", "1/3", "4/9", 0), ("7/24", "1/4", "1/3", "1/8"))),
    # Heun's method with Euler embedded (order 2(1)), the end slope kept as the next first stage.
    Tableau("adaptive_heun", 2, _f(0, 1, 1), ((), _f(1), _f("1/2", "1/2")), _f("1/2", "1/2", 0),
            _diff(("1/2", "1/2", 0), (1, 0, 0))),
    Tableau("euler", 1, _f(0), ((),), _f(1)),
    Tableau("midpoint", 2, _f(0, "1/2"), ((), _f("1/2")), _f(0, 1)),
    # Heun's method, the explicit trapezoid rule (the fixed-step solver heun_t; adaptive_heun embeds Euler in it).
    Tableau("heun_t", 2, _f(0, 1), ((), _f(1)), _f("1/2", "1/2")),
    Tableau("rk4", 4, _f(0, "1/2", "1/2", 1), ((), _f("1/2"), _f(0, "1/2"), _f(0, 0, 1)),
            _f("1/6", "1/3", "1/3", "1/6")),
)}
TORCHDIFFEQ_PREFIX = "torchdiffeq:"
METHODS = tuple(TABLEAUS)
# torchdiffeq methods also accepted by bare name (run as "torchdiffeq:<name>")
EXTERNAL_METHODS = ("dopri8", "fehlberg2", "heun3", "explicit_adams", "implicit_adams")


# -- state packing -----------------------------------------------------------------------------------------
class _Packing:
    """A tensor or tuple of batch-first tensors <-> one (batch, width) tensor; ``bounds``: column ranges."""

    def __init__(self, y0: State):
        self.tuple = isinstance(y0, tuple)
        parts = y0 if self.tuple else (y0,)
        self.B = parts[0].shape[0]
        self.shapes = [p.shape for p in parts]
        widths = [math.prod(s[1:]) for s in self.shapes]
        edges = [0]
        for w in widths:
            edges.append(edges[-1] + w)
        self.bounds = list(zip(edges[:-1], edges[1:]))

    def pack(self, y: State) -> Tensor:
        if isinstance(y, Tensor):
            return y.reshape(self.B, -1)
        return torch.cat([p.reshape(self.B, -1) for p in y], 1)

    def unpack(self, flat: Tensor) -> State:
        if not self.tuple:
            return flat.reshape(self.shapes[0])
        return tuple(flat[:, a:b].reshape(s) for (a, b), s in zip(self.bounds, self.shapes))


def _per_row(v, B: int, like: Tensor):
    if not isinstance(v, Tensor):
        return float(v)
    v = v.to(device=like.device, dtype=like.dtype)
    if v.numel() == 1:
        return v.reshape(1, 1)
    if v.shape != (B,):
        raise ValueError(f"a tolerance tensor must have shape (batch,) = ({B},); got {tuple(v.shape)}")
    return v.reshape(B, 1)


# -- one explicit RK step ---------------------------------------------------------------------------------
class Coefficients:
    """The tableau's weights as tensors on the state's device and dtype (made once per solve)."""

    def __init__(self, tab: Tableau, like: Tensor):
        def t(w):
            return None if w is None else torch.tensor(w, dtype=like.dtype, device=like.device)

        self.a = [t(row) for row in tab.a]
        self.b, self.e, self.mid = t(tab.b), t(tab.e), t(tab.mid)


def _combine(w: Tensor, K: Tensor, n: int) -> Tensor:
    """sum_{j<n} w_j K[j] for K of shape (stages, batch, width), as one matrix product."""
    return (w[:n] @ K[:n].reshape(n, -1)).reshape(K.shape[1:])


def rk_step(f: Callable[[float, Tensor], Tensor], tab: Tableau, coef: Coefficients, t: float, y: Tensor,
            h: float, k1: Optional[Tensor], t_end: Optional[float] = None):
    """One explicit RK step of ``tab`` from (t, y) with size h; y: (batch, width).

    Returns (y1, error or None, K) with K the (stages, batch, width) stage slopes; ``k1`` = f(t, y) when
    already known (FSAL); ``t_end``: the step's end time, given to the stages with c_i = 1 exactly (t + h may
    differ from it in the last bit). Evaluations: stages, less one when k1 is given."""
    K = y.new_empty((tab.stages, *y.shape))
    K[0] = f(t, y) if k1 is None else k1
    for i in range(1, tab.stages):
        ti = t_end if t_end is not None and tab.c[i] == 1 else t + tab.c[i] * h
        K[i] = f(ti, torch.add(y, _combine(coef.a[i], K, i), alpha=h))
    y1 = torch.add(y, _combine(coef.b, K, tab.stages), alpha=h)
    err = None if coef.e is None else h * _combine(coef.e, K, tab.stages)
    return y1, err, K


def _dense(tab: Tableau, coef: Coefficients, y0: Tensor, y1: Tensor, K: Tensor, f1: Tensor, h: float,
           theta: float) -> Tensor:
    """y(t + theta h) inside an accepted step. With mid weights: the quartic p with p(0) = y0, p(1) = y1,
    p(1/2) = y_mid, p'(0) = h f0, p'(1) = h f1; otherwise the cubic Hermite through y0, y1, h f0, h f1."""
    f0 = K[0]
    if coef.mid is None:
        d = y1 - y0
        return y0 + theta * (h * f0) + theta**2 * (3 * d - h * (2 * f0 + f1)) + theta**3 * (h * (f0 + f1) - 2 * d)
    y_mid = torch.add(y0, _combine(coef.mid, K, tab.stages), alpha=h)
    # p = y0 + th h f0 + c2 th^2 + c3 th^3 + c4 th^4: three linear conditions on (c2, c3, c4), solved once
    d, m, g = y1 - y0 - h * f0, 16 * (y_mid - y0) - 8 * h * f0, h * (f1 - f0)
    c2 = -5 * d + m + g
    c3 = 14 * d - 2 * m - 3 * g
    c4 = -8 * d + m + 2 * g
    return y0 + theta * (h * f0) + theta**2 * (c2 + theta * (c3 + theta * c4))


# -- the loop -----------------------------------------------------------------------------------------------
class _Counted:
    """The term on packed states, counting evaluations (network calls) against the controller's budget."""

    def __init__(self, term, packing: _Packing, control: StepController, stats: dict):
        self.term, self.packing, self.control, self.stats = term, packing, control, stats
        self.nfe = 0

    def __call__(self, t: float, y: Tensor) -> Tensor:
        self.nfe += 1
        out = self.term(torch.tensor(t, dtype=torch.float64), self.packing.unpack(y))
        return self.packing.pack(out)

    def reserve(self, n: int, t: float, t_end: float) -> None:
        s = self.stats
        self.control.reserve(self.nfe, n, lambda: (
            f"the solve at t = {t:.6g} (ending at {t_end:.6g}; {s['accepted']} steps accepted, {s['rejected']} "
            "rejected)"))


def _times(ts, save_ts) -> tuple[list, list]:
    land = [float(v) for v in torch.as_tensor(ts, dtype=torch.float64).reshape(-1).tolist()]
    if len(land) < 2:
        raise ValueError(f"ts needs at least a start and an end time; got {land}")
    diffs = [b - a for a, b in zip(land[:-1], land[1:])]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)) or not all(map(math.isfinite, land)):
        raise ValueError("ts must be finite and strictly monotone (increasing or decreasing)")
    save = land if save_ts is None else [float(v) for v in
                                         torch.as_tensor(save_ts, dtype=torch.float64).reshape(-1).tolist()]
    sign = 1.0 if land[-1] > land[0] else -1.0
    if any(sign * (b - a) < 0 for a, b in zip(save[:-1], save[1:])):
        raise ValueError("save_ts must run in the direction of ts")
    if save and (sign * (save[0] - land[0]) < 0 or sign * (save[-1] - land[-1]) > 0):
        raise ValueError(f"save_ts must lie within [{land[0]}, {land[-1]}]")
    return land, save


def _resolve(method: str) -> Tableau:
    if method in TABLEAUS:
        return TABLEAUS[method]
    raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS + EXTERNAL_METHODS)} or "
                     f"'{TORCHDIFFEQ_PREFIX}<name>' for any torchdiffeq method")


def solve_steps(term, y0: State, ts, *, method: str = "dopri5", rtol=1e-5, atol=1e-5, max_nfe: int = 100_000,
                save_ts=None, step_size: Optional[float] = None, progress: Optional[Callable] = None):
    """The core as a generator: yields (i, t, y) for save_ts[i] as soon as the solve has passed it, and
    returns the ``Solution`` (x: final state, nfe, ts: save times, trajectory: None, stats) at the end.
    ``progress(t, nfe, stats)`` is called after every accepted step."""
    tab = _resolve(method)
    check_tolerances(rtol, atol)
    if step_size is not None and not (isinstance(step_size, (int, float)) and 0 < step_size < math.inf):
        raise ValueError(f"step_size must be a finite number > 0; got {step_size!r}")
    if step_size is None and not tab.adaptive:
        raise ValueError(f"method {method!r} has no error estimate: give step_size=h")
    land, save = _times(ts, save_ts)
    packing = _Packing(y0)
    y = packing.pack(y0)
    stats = {"method": method, "steps": 0, "accepted": 0, "rejected": 0}
    control = StepController(_per_row(rtol, packing.B, y), _per_row(atol, packing.B, y), tab.order, max_nfe)
    f = _Counted(term, packing, control, stats)
    loop = _Loop(f, tab, Coefficients(tab, y), packing, save, control, step_size, progress)
    y = yield from loop.run(land, y)
    stats["nfe"] = f.nfe
    return Solution(x=packing.unpack(y), nfe=f.nfe,  # type: ignore[arg-type]  # x: a tuple for a tuple state
                    ts=torch.tensor(save, dtype=torch.float64), stats=stats)


class _Loop:
    """The step loop, written once: step, control, land on every ts, emit save times on the way."""

    def __init__(self, f: _Counted, tab: Tableau, coef: Coefficients, packing: _Packing, save: list,
                 control: StepController, step_size, progress):
        self.f, self.tab, self.coef, self.packing = f, tab, coef, packing
        self.save, self.next_save = save, 0
        self.control, self.step_size, self.progress = control, step_size, progress
        self.stats = f.stats
        self.sign = 1.0

    def run(self, land: list, y: Tensor):
        self.sign = 1.0 if land[-1] > land[0] else -1.0
        k1, h = None, None
        yield from self._emit(land[0], land[0], y, None, None, 0.0)
        for t0, t1 in zip(land[:-1], land[1:]):
            if self.step_size is not None:
                y, k1 = yield from self._fixed(t0, t1, y, k1)
                continue
            if k1 is None:
                k1 = self.f(t0, y)
            if h is None:
                h = self.control.initial_step(self.f, t0, y, k1, t1 - t0, self.packing.bounds)
            y, k1, h = yield from self._adaptive(t0, t1, y, k1, h)
        return y

    def _fixed(self, t0: float, t1: float, y: Tensor, k1):
        n = max(1, math.ceil(abs(t1 - t0) / self.step_size * (1 - 1e-12)))
        self.f.reserve(n * (self.tab.stages - (k1 is not None and self.tab.fsal)), t0, t1)
        h = math.copysign(self.step_size, t1 - t0)
        for i in range(n):
            t, t_next = t0 + i * h, (t1 if i == n - 1 else t0 + (i + 1) * h)
            y_new, _, K = rk_step(self.f, self.tab, self.coef, t, y, t_next - t, k1)
            k1 = K[-1] if self.tab.fsal else None
            y = yield from self._accept(t, t_next, y, y_new, K, k1)
        return y, k1

    def _adaptive(self, t: float, t_end: float, y: Tensor, k1: Tensor, h: float):
        tab, stats, control = self.tab, self.stats, self.control
        sign = math.copysign(1.0, t_end - t)
        while sign * (t_end - t) > 0:
            landing = h >= abs(t_end - t) * (1 - 1e-10)
            t_next = t_end if landing else t + sign * h
            self.f.reserve(tab.stages - 1, t, t_end)
            y_new, err, K = rk_step(self.f, tab, self.coef, t, y, t_next - t, k1)
            accepted, h = control.adapt(h, t_next - t, control.error(err, y, y_new, self.packing.bounds), landing)
            if accepted:
                k1_new = K[-1] if tab.fsal else self.f(t_next, y_new)
                y = yield from self._accept(t, t_next, y, y_new, K, k1_new)
                t, k1 = t_next, k1_new
            else:
                stats["rejected"] += 1
                if t + sign * h == t:
                    self._underflow(t, h, y_new)
        return y, k1, h

    def _underflow(self, t: float, h: float, y_new: Tensor):
        if not bool(torch.isfinite(y_new).all()):
            raise NonFiniteError(f"the state becomes NaN or Inf after t = {t:.6g} however small the step "
                                 f"({self.tab.name}, h = {h:.3g}); check the term near that time")
        raise StepSizeError(f"the step size underflowed at t = {t:.6g} (h = {h:.3g}) with {self.tab.name}: the "
                            "solution varies too fast for these tolerances there; loosen rtol/atol")

    def _accept(self, t: float, t_next: float, y: Tensor, y_new: Tensor, K: Tensor, f1):
        stats = self.stats
        stats["steps"] += 1
        stats["accepted"] += 1
        if self.progress is not None:  # before the values are handed on: a consumer may stop at the last one
            self.progress(t_next, self.f.nfe, stats)
        yield from self._emit(t, t_next, y, y_new, K, f1)
        return y_new

    def _emit(self, t: float, t_next: float, y: Tensor, y_new, K, f1):
        """Yield every save time in (t, t_next] (or at t_next = t at the start): the step's end exactly,
        interior points from the dense output (f1 = f(t_next, y_new), evaluated here if not yet known)."""
        save, sign = self.save, self.sign
        while self.next_save < len(save) and sign * (save[self.next_save] - t_next) <= 0:
            s = save[self.next_save]
            if s == t_next:
                value = y if y_new is None else y_new
            else:
                if f1 is None:
                    f1 = self.f(t_next, y_new)
                value = _dense(self.tab, self.coef, y, y_new, K, f1, t_next - t, (s - t) / (t_next - t))
            yield self.next_save, s, self.packing.unpack(value)
            self.next_save += 1


# -- front doors -------------------------------------------------------------------------------------------
def integrate(term, y0: State, ts, *, method: str = "dopri5", rtol=1e-5, atol=1e-5, max_nfe: int = 100_000,
              save_ts=None, step_size: Optional[float] = None, progress: Optional[Callable] = None) -> Solution:
    """Solve dy/dt = term(t, y) from ts[0] to ts[-1] (landing on every ts), keeping the values at save_ts.

    Returns a ``Solution``: x the final state, trajectory the values at save_ts (a list), ts the save
    times (float64), nfe the term evaluations, stats {method, steps, accepted, rejected, nfe}. See the
    module docstring for the controller; ``method="torchdiffeq:<name>"`` runs torchdiffeq instead.
    """
    if method.startswith(TORCHDIFFEQ_PREFIX) or method in EXTERNAL_METHODS:
        return _torchdiffeq(term, y0, ts, method.removeprefix(TORCHDIFFEQ_PREFIX), rtol, atol, max_nfe, save_ts,
                            step_size, progress)
    run = solve_steps(term, y0, ts, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe, save_ts=save_ts,
                      step_size=step_size, progress=progress)
    values = []
    while True:
        try:
            values.append(next(run)[2])
        except StopIteration as stop:
            sol: Solution = stop.value
            sol.trajectory = values
            return sol


def _torchdiffeq(term, y0, ts, name, rtol, atol, max_nfe, save_ts, step_size, progress) -> Solution:
    """Any torchdiffeq method behind the same interface: budget, per-row norm, exact landing, errors."""
    import torchdiffeq

    check_tolerances(rtol, atol)
    land, save = _times(ts, save_ts)
    packing = _Packing(y0)
    stats: dict[str, Any] = {"method": f"{TORCHDIFFEQ_PREFIX}{name}", "steps": None, "accepted": None,
                             "rejected": None}
    y = packing.pack(y0)
    rt, at = _per_row(rtol, packing.B, y), _per_row(atol, packing.B, y)
    control = StepController(rt, at, 1, max_nfe)  # the budget; torchdiffeq controls its own steps
    f = _Counted(term, packing, control, {"accepted": "?", "rejected": "?"})  # torchdiffeq does not say

    def rhs(t, yy):
        f.reserve(1, float(t), land[-1])
        out = f(float(t), yy)
        if progress is not None:
            progress(float(t), f.nfe, stats)
        return out

    unit = StepController(0.0, 1.0, 1, max_nfe)

    def norm(e):  # torchdiffeq hands e / (atol + rtol max|y|) for scalar tolerances: the row norm of it
        return torch.as_tensor(unit.error(e, torch.zeros_like(e), torch.zeros_like(e), packing.bounds), dtype=e.dtype)

    options: dict[str, Any] = {"step_size": float(step_size)} if step_size is not None else \
        {"step_t": torch.tensor(land[1:], dtype=y.dtype), "norm": norm}
    if isinstance(rt, Tensor) or isinstance(at, Tensor):
        raise ValueError("per-row tolerance tensors need a built-in method (e.g. dopri5), not torchdiffeq")
    times = [land[0]] + [v for v in save if v != land[0]]
    if times[-1] != land[-1]:
        times.append(land[-1])
    try:
        out = torchdiffeq.odeint(rhs, y, torch.tensor(times, dtype=y.dtype), method=name, rtol=rt, atol=at,
                                 options=options)
    except AssertionError as err:  # torchdiffeq's own checks (step underflow, unknown option) are asserts
        raise StepSizeError(f"torchdiffeq ({name}) stopped: {err}; loosen rtol/atol or use a built-in method") \
            from err
    index = {v: i for i, v in enumerate(times)}
    values = [packing.unpack(out[index[s]]) for s in save]
    return Solution(x=packing.unpack(out[-1]), nfe=f.nfe,  # type: ignore[arg-type]  # a tuple for a tuple state
                    ts=torch.tensor(save, dtype=torch.float64),
                    trajectory=values, stats={**stats, "nfe": f.nfe})


# -- terms -------------------------------------------------------------------------------------------------
class ProbabilityFlow:
    """dx/dt = F(x, t) = f(t) x - g(t)^2 score(x, t) / 2 through an ``Evaluator`` (which counts and checks the
    network calls). Stages may probe times just outside [0, T] (none do on a landing step): t is held in it."""

    def __init__(self, ev):
        self.ev = ev

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        return self.ev.pf_drift(x, t.clamp(0.0, self.ev.sde.T))

