"""Solvers learned per model: a non-stationary multistep family in data-prediction form, fitted from prior draws.

At 4-6 network calls a fixed solver's error is mostly truncation error that no placement of its steps removes;
a solver whose every coefficient is fitted to one model removes much of it (Bespoke Solvers, Shaul et al. 2024;
BNS, "Bespoke Non-Stationary Solvers", Shaul et al. 2024; S4S, Frankel et al. 2025; LD3, Tong et al. 2024, for
the grid by back-propagation through the solver). ``learn_solver`` fits the family

    m_j = x0(x_j, t_j)                                          (the model's data prediction, 1 call per step)
    x_{i+1} = a_i x_i + sum_{j<=i} b_ij m_j,   i = 0..N-1     (x_0 = x_T at t_0 = T, x_N at t_N = sde.eps)

with N = ``nfe`` network calls, scalar a_i and b_ij shared by every entry of every row, and the times t_1 > ... >
t_{N-1} learned too: N + N(N+1)/2 + (N - 1) parameters (24 at N = 5). Every linear solver that calls the model once
per step, at its state and grid time, is a point of this family, since x_T = (x_i - sum_j B_ij m_j)/A_i below:
DDIM/DPM-Solver++(1) (a_i = sigma_{i+1}/sigma_i, b_ii = alpha_{i+1}(1 - e^{-h_i})), DPM-Solver++(2M/3M), UniPC (its
corrector folds in), DEIS, iPNDM, Euler in t (eps = (x - alpha x0)/sigma folds into a_i and b_ij). The starting
point is such a solver, read off exactly: ``_probe`` runs the registered solver on coefficient rows over [x_T, m_0,
..., m_{N-1}] (a model call returns the next basis row), so x_{i+1} = A_{i+1} x_T + sum_j B_{i+1,j} m_j and a_i =
A_{i+1}/A_i, b_ij = B_{i+1,j} - a_i B_ij. Learning starts there: the learned solver before its first update
reproduces the init on its grid to rounding.

Parametrisation (what Adam moves; all zero-centred at the init): a_i = a_i^0 (1 + u_i); b_ij = b_ij^0 +
c_i v_ij with c_i = max_j |b_ij^0| (the step's own scale); the times by softmax increments in normalised log-SNR,
z_k = sum_{j<k} w_j / sum_j w_j, w = exp(theta), lambda(t_k) = lambda(T) + z_k (lambda(eps) - lambda(T)) (every
theta a strictly decreasing grid with fixed ends; ``tune``'s parametrisation), theta^0 the init grid's. The
gradient reaches the times through the network's time input (t = t(lambda), d t/d lambda = 1/lambda'(t)).

Objective (no data; ``tune``'s draws): x_T^(1..n) from the prior, x_ref = a converged solve of the same
probability-flow ODE (rk4, ``ref_steps`` log-SNR steps), e_r = |x_N^(r) - x_ref^(r)| / sqrt(dim), and

    L = (mean_r log e_r + log mean{e_r : q80(e) <= e_r <= q95(e)}) / 2,

the log of the geometric mean (the body) plus the log of the upper tail that p90 sees, with the top 5% left out:
not ruled by the few rows near a boundary between basins that dominate an RMS (measured on a 16-D mixture at
NFE 5: the geometric mean alone lowers the median 3x but raises p90 over the init's). Full-batch Adam for
``steps`` updates at ``lr`` (cosine decay); the iterate with the lowest L is kept.

Generalisation. A second, independent prior draw (with its own reference) scores the learned solver against its
init; the learned one is returned only if it wins there on tune's balanced objective (log q50(e) + log q90(e))/2
and is no worse on the median nor on p90, else the init is (``LearnedSolver.improved`` says which), so it is never
worse than its init on fresh draws (up to that draw's noise). The cost is counted in forward network calls (each a
batch of ``n`` rows, references included; every training update also back-propagates through its N calls) and
seconds.

Identity. A ``LearnedSolver`` carries the fingerprint of its model (``fingerprint.model_fingerprint``: a hash of the network's
tensors, the SDE and the prediction type, plus the tensors of plain objects its modules hold: ``_identity``);
``sample`` and ``LearnedSolver.load`` refuse another model with ``WrongModelError``. It saves as a small
safetensors file (ts, a, b and the facts as metadata).

Ends of the grid. The grid starts at sde.T. On the flow-matching paths (RectifiedFlow, CondOT, CosinePath, a
zero-SNR table: alpha(T) = 0, lambda(T) = -inf) the first step starts at pure noise, where the data-form step is
exact (x_1 = sigma_1 x_T + alpha_1 m_0 for DDIM/DPM-Solver++: ``exponential.py``), so any init that runs from
alpha = 0 (dpmpp_2m, dpmpp_3m, unipc_*, ddim, euler) is read off as above and the family contains it; an init that
refuses alpha = 0 (ipndm, deis_*) is refused by name, and a path on which the network at T determines nothing
(PolynomialPath, alpha'(T) = sigma'(T) = 0) is refused with the solvers' own error. Where a grid end has an infinite
log-SNR, the times are parametrised as above in phi = sigmoid(-lambda/2) = sigma/(alpha + sigma) (in [0, 1], = t
on the rectified flow) instead of lambda. ``denoise=True`` ends at t = 0 (sigma = 0) as ``sample(...,
denoise=True)`` and ``grid="table"`` do: the last of the ``nfe`` calls is the driver's data-prediction jump
x_N = alpha(0) x0(x_{N-1}, t_{N-1}) from t_{N-1} = sde.eps, fixed (not learned); the N - 1 steps before it are the
family above (its reference: rk4 down to eps/1000, then the jump). An SDE with sigma(0) > 0 (VE) has no zero-noise
end and is refused by name there.

The first call's time. With ``free_start=True`` the first model call's time is a parameter too (x_T stays the
prior draw): z_0 = s >= 0 in the normalised log-SNR coordinate (projected to [0, 0.5] after each update) and the
interior z_k = s + (1 - s) z_k', so s = 0 is the init exactly; s > 0 evaluates the network at (x_T, t_0 < T), the
lever of diffusers' "leading" spacing (issue 24: its UniPC/DEIS leading runs were the peers' best at NFE <= 6). It
needs a finite log-SNR at T (alpha(T) > 0) and is refused by name elsewhere. One more parameter.

Scope: probability-flow ODE (deterministic). ``sample(..., log_prob=True)`` integrates the augmented ODE with an
adaptive solver and cannot take a learned solver: refused by name (``LearnedSolver.check_log_prob``).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..parameterization import ScoreModel, convert
from .base import Evaluator, NotApplicableError
from .driver import sample
from .grids import make_grid
from .registry import SolverInfo, get
from ..metrics import per_row_error as row_errors
from ..fingerprint import model_fingerprint
from .tune import START_GRIDS

Tensor = torch.Tensor

__all__ = ["LearnedSolver", "learn_solver", "WrongModelError"]

FORMAT = "sdekit.learned_solver/1"


class WrongModelError(NotApplicableError):
    """A learned solver was handed a model other than the one it was learned for (another fingerprint)."""


def _identity(model: ScoreModel) -> Optional[str]:
    """``sdekit.fingerprint.model_fingerprint`` plus the tensors and numbers of the plain objects the network's modules hold (a
    mixture, a schedule), which that hash does not see today (two mixtures of one shape hash alike there)."""
    base = model_fingerprint(model)
    if base is None:
        return None
    h = hashlib.blake2b(base.encode(), digest_size=16)
    assert isinstance(model.net, torch.nn.Module)  # a fingerprint means a module
    for mod in model.net.modules():
        for name, held in sorted(vars(mod).items()):
            if name.startswith("_") or not hasattr(held, "__dict__") or callable(held) \
                    or isinstance(held, (torch.nn.Module, type)):
                continue
            for key, v in sorted(vars(held).items()):
                if isinstance(v, Tensor):
                    v = v.detach().cpu().contiguous()
                    h.update(repr((name, key, str(v.dtype), tuple(v.shape))).encode())
                    h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
                elif isinstance(v, (numbers.Number, str, tuple)):
                    h.update(repr((name, key, v)).encode())
    return h.hexdigest()


def _summary(e: Tensor) -> dict:
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()
    return {"median": q[0], "p90": q[1], "rms": float(e.pow(2).mean().sqrt())}


def _balanced(e: Tensor) -> float:
    """tune's balanced objective: (log q50 + log q90) / 2 (inf for a non-finite error)."""
    if not bool(torch.isfinite(e).all()):
        return math.inf
    s = _summary(e)
    return 0.5 * (math.log(s["median"] + 1e-300) + math.log(s["p90"] + 1e-300))


def _wins(learned: Tensor, init: Tensor) -> bool:
    """Kept only if better on the balanced objective and no worse on the median nor on p90."""
    if not bool(torch.isfinite(learned).all()):
        return False
    sl, si = _summary(learned), _summary(init)
    return _balanced(learned) < _balanced(init) and sl["median"] <= si["median"] and sl["p90"] <= si["p90"]


@dataclass(eq=False)
class LearnedSolver:
    """A solver of the family in the module docstring, tied to one model. Run it as
    ``sdekit.sample(model, x_T, solver=learned)`` (on its own grid ``ts``; any batch size and row shape).

    ts: float64 times t_0 = T > ... > t_N = eps; a: (N,) and b: (N, N) lower-triangular float64 coefficients;
    init: the registered solver it started from, start_grid: that solver's grid; improved: whether learning won on
    the validation draw (else a, b, ts are the init's); fingerprint: the model's (None: a plain-function network,
    which cannot be checked or saved); cost: {"nfe": forward network calls, "backward": calls back-propagated,
    "seconds": wall time, "steps": Adam updates}; calibration / validation: per-row error quantiles of the
    learned solver and its init on each draw; denoise: the grid ends at t = 0 (ts[-1] = 0, sigma = 0) and the last
    call is the driver's data-prediction jump from ts[-2] (a, b hold the N - 1 steps before it)."""

    ts: Tensor
    a: Tensor
    b: Tensor
    init: str
    start_grid: str
    improved: bool
    fingerprint: Optional[str]
    cost: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    seed: Optional[int] = None
    denoise: bool = False
    free_start: bool = False

    @property
    def nfe(self) -> int:
        """Network calls per solve (= steps; with denoise, the final jump included)."""
        return int(self.a.numel()) + int(self.denoise)

    @property
    def num_parameters(self) -> int:
        """Learned numbers: M a's, M(M+1)/2 b's and M - 1 interior times, M = len(a) (nfe, or nfe - 1 before the
        fixed final jump of a denoising solver)."""
        n = int(self.a.numel())
        return n + n * (n + 1) // 2 + n - 1 + int(self.free_start)

    @property
    def name(self) -> str:
        return f"learned[{self.init}, nfe={self.nfe}]"

    def __repr__(self) -> str:
        return (f"LearnedSolver(init={self.init!r}, start_grid={self.start_grid!r}, nfe={self.nfe}, "
                f"parameters={self.num_parameters}, improved={self.improved}"
                f"{', denoise=True' if self.denoise else ''})")

    # -- running ----------------------------------------------------------------------------------
    def entry(self, steps=None, ts=None, t_start=None, t_end=None) -> tuple[SolverInfo, Tensor]:
        """(registry-like entry, time grid) for ``sample``: the solver runs on its own grid only."""
        if steps is not None and steps != self.nfe:
            raise ValueError(f"{self.name} takes its {self.nfe} steps on its own grid; got steps={steps!r}")
        if ts is not None or t_start is not None or t_end is not None:
            raise ValueError(f"{self.name} runs on its own learned grid (LearnedSolver.ts): drop ts=, t_start=, t_end=")
        info = SolverInfo(self.name, self._run, stochastic=False, order=1, nfe_per_step=1, adaptive=False,
                          family="learned", options={})
        return info, self.ts.clone()

    def _run(self, ev: Evaluator, x: Tensor, ts: Tensor):
        ev.solver = self.name
        self.check_model(ev.model)
        if not torch.equal(ts, self.ts[:-1] if self.denoise else self.ts):  # the driver takes a zero end's jump
            raise NotApplicableError(f"solver {self.name!r} runs on its own grid LearnedSolver.ts; got another grid")
        return _steps(ev, x, ts, self.a.tolist(), self.b.tolist())

    def check_log_prob(self) -> None:
        """``sample(..., log_prob=True)`` integrates the augmented probability-flow ODE adaptively: a learned
        solver cannot run it (its coefficients are fitted to the endpoint, not to the divergence integral)."""
        raise ValueError(f"log_prob=True solves the augmented ODE with an adaptive solver (dopri5, bosh3, ...); the "
                         f"learned solver {self.name} cannot: sample with it, then score the samples with "
                         "sdekit.likelihood (e.g. log_prob(model, x))")

    def check_model(self, model) -> None:
        """``WrongModelError`` unless ``model`` has this solver's fingerprint (not checked when it has none)."""
        if self.fingerprint is None:
            return
        got = _identity(model) if isinstance(model, ScoreModel) else None
        if got != self.fingerprint:
            raise WrongModelError(f"{self.name} was learned for the model with fingerprint {self.fingerprint}; "
                                  f"this model's is {got} (another network, weights, SDE or prediction type): "
                                  "learn a solver for it with sdekit.learn_solver")

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write a safetensors file: ts, a, b (float64) and the facts (fingerprint, init, cost, errors) as metadata."""
        from safetensors.torch import save_file

        if self.fingerprint is None:
            raise ValueError("this learned solver's model is a plain function, which has no fingerprint: saving it "
                             "could not tie it to its model (wrap the network in a torch.nn.Module)")
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "init": self.init, "start_grid": self.start_grid,
                "improved": json.dumps(self.improved), "seed": json.dumps(self.seed),
                "denoise": json.dumps(self.denoise), "free_start": json.dumps(self.free_start),
                "cost": json.dumps(self.cost), "calibration": json.dumps(self.calibration),
                "validation": json.dumps(self.validation)}
        save_file({"ts": self.ts.contiguous(), "a": self.a.contiguous(), "b": self.b.contiguous()}, path,
                  metadata=meta)

    @classmethod
    def load(cls, path: str, model: ScoreModel) -> "LearnedSolver":
        """Read a file written by ``save``; ``WrongModelError`` if ``model`` is not the one it was learned for."""
        from safetensors import safe_open

        try:
            fh = safe_open(path, framework="pt")
        except Exception as err:  # safetensors' own error types differ across versions
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        with fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a sdekit learned solver (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r})")
            tensors = {k: fh.get_tensor(k) for k in ("ts", "a", "b")}
        solver = cls(tensors["ts"], tensors["a"], tensors["b"], meta["init"], meta["start_grid"],
                     json.loads(meta["improved"]), meta["fingerprint"], json.loads(meta["cost"]),
                     json.loads(meta["calibration"]), json.loads(meta["validation"]), json.loads(meta["seed"]),
                     json.loads(meta.get("denoise", "false")), json.loads(meta.get("free_start", "false")))
        solver.check_model(model)
        return solver


def _steps(ev, x: Tensor, ts: Tensor, a: Sequence[float], b: Sequence[Sequence[float]]):
    """x_{i+1} = a_i x_i + sum_{j<=i} b_ij x0(x_j, t_j), yielding each state."""
    hist = []
    for i in range(len(a)):
        hist.append(ev.x0(x, ts[i]))
        x = x * a[i]
        for j in range(i + 1):
            x = x.add(hist[j], alpha=b[i][j])
        yield x


def _solve(ev, x: Tensor, ts: Tensor, a, b, denoise: bool) -> Tensor:
    """The endpoint of ``_steps`` on the run grid, then (denoise) the driver's jump x = alpha(0) x0(x, ts[-2])."""
    run_ts = ts[:-1] if denoise else ts
    for state in _steps(ev, x, run_ts, a.tolist(), b.tolist()):
        x = state
    if denoise:
        x = float(ev.sde.alpha(ts[-1])) * ev.x0(x, run_ts[-1])
    return x


# -- the init, read off a registered solver -----------------------------------------------------------
class _Probe(Evaluator):
    """An evaluator for a symbolic run: states are coefficient rows over [x_T, m_0, ..., m_{N-1}] and the k-th
    model call, at (state_k, t_k), returns m_k's basis row converted to the kind asked for."""

    def __init__(self, model: ScoreModel, ts: Tensor, init: str):
        super().__init__(model)
        self.times, self.init, self.state = ts.tolist(), init, torch.zeros(0)

    def _predict(self, x: Tensor, t, kind: str) -> Tensor:
        k = self.nfe
        if k >= len(self.times) - 1 or float(t) != self.times[k] or not torch.equal(x, self.state):
            raise NotApplicableError(f"init {self.init!r} calls the model away from its states and grid times, "
                                     "outside this family; use dpmpp_2m, dpmpp_3m, unipc_2, ddim, ipndm, deis_2, ...")
        m = torch.zeros_like(x)
        m[:, k + 1] = 1.0
        self.nfe += 1
        return convert(m, "x0", kind, x, float(t), self.sde)


def _probe(model: ScoreModel, init: str, ts: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) of the registered solver ``init`` on the grid ``ts`` (module docstring)."""
    info = get(init)
    if (info.stochastic and info.options.get("eta") != 0) or info.adaptive or info.nfe_per_step != 1:
        raise NotApplicableError(f"init {init!r} must be a deterministic fixed-step solver with one network call per "
                                 "step (e.g. dpmpp_2m, ddim, ipndm)")
    n = len(ts) - 1
    ev = _Probe(model, ts, init)
    x = torch.zeros(1, n + 1, dtype=torch.float64)
    x[0, 0] = 1.0
    states = [x]
    ev.state = x.clone()
    run = info.fn(ev, x.clone(), ts)
    for _ in range(n):
        nxt = next(run).clone()
        states.append(nxt)
        ev.state = nxt.clone()
    run.close()
    if ev.nfe != n:
        raise NotApplicableError(f"init {init!r} made {ev.nfe} network calls in {n} steps; it needs one per step")
    S = torch.cat(states)  # (n + 1, n + 1)
    a = S[1:, 0] / S[:-1, 0]
    b = S[1:, 1:] - a[:, None] * S[:-1, 1:]
    return a, torch.tril(b)


# -- learning -----------------------------------------------------------------------------------------
def _dtype_device(model: ScoreModel):
    params = list(model.net.parameters()) if isinstance(model.net, torch.nn.Module) else []
    if params and params[0].is_floating_point():
        dt = params[0].dtype
        return (dt if dt in (torch.float32, torch.float64) else torch.float32), params[0].device
    return torch.float64, torch.device("cpu")


class _Draw:
    """Prior rows and their converged reference endpoints (rk4 on the log-SNR grid to sde.eps; with denoise, to
    eps/1000 and then the jump to t = 0, whose own error is O(sigma(eps/1000)^2))."""

    def __init__(self, model, shape, n, seed, dtype, device, ref_steps, denoise=False):
        g = torch.Generator().manual_seed(seed)
        sde = model.sde
        self.x_T = sde.prior_sample((n, *shape), generator=g).to(dtype=dtype, device=device)
        if denoise:
            ts = make_grid(sde, ref_steps, "logsnr", t_end=sde.eps * 1e-3)
            sol = sample(model, self.x_T, "rk4", ts=torch.cat([ts, ts.new_zeros(1)]))
        else:
            sol = sample(model, self.x_T, "rk4", ref_steps, grid="logsnr")
        self.x_ref, self.nfe, self.denoise = sol.x, sol.nfe, denoise

    def errors(self, model, ts, a, b) -> Tensor:
        ev = Evaluator(model)
        with torch.no_grad():
            x = _solve(ev, self.x_T.clone(), ts, a, b, self.denoise)
        self.nfe += ev.nfe
        e = row_errors(x, self.x_ref)
        return torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))


class _Times:
    """The interior times as a differentiable function of theta (softmax increments in a normalised coordinate c:
    log-SNR, or phi = sigmoid(-lambda/2) where an end's log-SNR is infinite), exactly the init grid at theta^0."""

    def __init__(self, sde, ts: Tensor):
        self.sde, self.ts0 = sde, ts
        lam = sde.log_snr(ts)
        self.phi = not bool(torch.isfinite(lam[[0, -1]]).all())
        c = torch.sigmoid(-0.5 * lam) if self.phi else lam
        self.c0, self.c1 = float(c[0]), float(c[-1])
        z = (c - self.c0) / (self.c1 - self.c0)
        self.theta0 = torch.log(torch.diff(z).clamp_min(1e-12))
        self._ref = self._t(self.theta0).detach()

    def _t(self, theta: Tensor) -> Tensor:
        w = torch.softmax(theta, 0)
        c = self.c0 + torch.cumsum(w, 0)[:-1] * (self.c1 - self.c0)
        c_d = c.detach()
        lam = 2 * (torch.log1p(-c_d) - torch.log(c_d)) if self.phi else c_d  # lambda = -2 logit(phi)
        t = self.sde.t_from_log_snr(lam)
        slope = 2 * (self.sde.d_alpha(t) / self.sde.alpha(t) - self.sde.d_sigma(t) / self.sde.sigma(t))
        if self.phi:
            slope = slope * (-0.5 * c_d * (1 - c_d))  # d phi / dt = (d phi / d lambda) lambda'(t)
        return t + (c - c_d) / slope  # value t(c), derivative 1/c'(t)

    def __call__(self, theta: Tensor, start: Optional[Tensor] = None) -> Tensor:
        """The grid; ``start`` (>= 0, a free first time): the first call at z_0 = start in the normalised
        coordinate, below T (diffusers' "leading" spacing) and the interior times at start + z_k (1 - start)."""
        if start is None:
            inner = self.ts0[1:-1] + (self._t(theta) - self._ref)  # exactly ts0 at theta^0
            return torch.cat([self.ts0[:1], inner, self.ts0[-1:]])
        w = torch.softmax(theta, 0)
        z = torch.cat([start.reshape(1), start + torch.cumsum(w, 0)[:-1] * (1 - start)])
        ref = self.ts0[:-1]
        pts = ref + (self._at(z) - self._at(torch.cat([torch.zeros(1, dtype=z.dtype), torch.cumsum(
            torch.softmax(self.theta0, 0), 0)[:-1]])))  # exactly ts0 at (theta^0, 0)
        return torch.cat([pts, self.ts0[-1:]])

    def _at(self, z: Tensor) -> Tensor:
        """t at normalised coordinates z (finite log-SNR ends only), differentiable in z."""
        c = self.c0 + z * (self.c1 - self.c0)
        c_d = c.detach()
        t = self.sde.t_from_log_snr(c_d)
        slope = 2 * (self.sde.d_alpha(t) / self.sde.alpha(t) - self.sde.d_sigma(t) / self.sde.sigma(t))
        return t + (c - c_d) / slope


def _check(model, nfe, init, shape, n, steps, lr, ref_steps, generator, grid, denoise, free_start):
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ValueError(f"nfe must be an integer >= 2; got {nfe!r}")
    names = (init,) if isinstance(init, str) else tuple(init) if isinstance(init, (tuple, list)) else None
    if not names or not all(isinstance(nm, str) for nm in names):
        raise TypeError(f"init must be a solver name or a non-empty list of names; got {init!r}")
    for nm in names:
        get(nm)
    if shape is None or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must give one row's shape, e.g. shape=(2,) or (1, 8, 8); got {shape!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"n must be an integer >= 10 (quantiles of fewer rows are noise); got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0 (Adam updates); got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0; got {lr!r}")
    if isinstance(ref_steps, bool) or not isinstance(ref_steps, int) or ref_steps < 2:
        raise ValueError(f"ref_steps must be an integer >= 2 (rk4 steps of the reference solve); got {ref_steps!r}")
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be an int seed; got {generator!r}")
    if not (grid is None or isinstance(grid, (str, Tensor))):
        raise TypeError(f"grid must be None (the best named grid), a grid name or a tensor of times; got {grid!r}")
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be True or False; got {denoise!r}")
    if not isinstance(free_start, bool):
        raise TypeError(f"free_start must be True or False; got {free_start!r}")
    sde = model.sde
    if free_start and float(sde.alpha(sde.T)) == 0.0:
        raise NotApplicableError(f"free_start=True moves the first call below T in log-SNR, which is -inf at T on "
                                 f"this {sde!r} (alpha(T) = 0): learn with free_start=False")
    if denoise and float(sde.sigma(0.0)) != 0.0:
        raise NotApplicableError(f"denoise=True ends at t = 0 with sigma = 0, but this {sde!r} has sigma(0) = "
                                 f"{float(sde.sigma(0.0)):.3g} > 0 (no zero-noise end): learn to sde.eps "
                                 "(denoise=False) and sample with sample(..., denoise=True) for a final jump")


def learn_solver(
    model: ScoreModel,
    nfe: int,
    *,
    init: Union[str, Sequence[str]] = "dpmpp_2m",
    shape: Optional[Sequence[int]] = None,
    n: int = 256,
    generator: int = 0,
    steps: int = 300,
    lr: float = 0.01,
    grid: Union[str, Tensor, None] = None,
    ref_steps: int = 500,
    denoise: bool = False,
    free_start: bool = False,
    tries: int = 1,
) -> LearnedSolver:
    """Learn an ``nfe``-call solver for ``model`` (module docstring), starting at the registered solver ``init``.

    init: a registered solver, or several: each is read off on each start grid and the (solver, grid) pair with the
    best balanced error on the calibration draw starts learning (names in the list that cannot run on this SDE are
    skipped; all refused: the first refusal is raised); shape: one row's shape (prior draws are (n, *shape));
    generator: the calibration draw's seed (the validation draw's is generator + 7919); steps, lr: Adam updates and
    learning rate (lr = 0 or steps = 0: no learning, the init is returned); grid: the init's grid: None picks the
    best of tune's named start grids on the calibration draw, or a grid name, or a tensor of nfe + 1 decreasing
    times from sde.T to sde.eps (with denoise, to 0); ref_steps: rk4 steps of the reference solves; denoise: end at
    t = 0, the last call being the data-prediction jump from sde.eps (module docstring; needs sigma(0) = 0);
    free_start: learn the time of the first call too (x_T stays the prior draw; the first call may be made below T,
    diffusers' "leading" lever; needs alpha(T) > 0: one more parameter); tries: learn from the best ``tries``
    (solver, grid) starts on the calibration draw and keep the one that ends best there (cost x tries); the held-out
    draw then compares it with the best start's init (which is returned if it loses)."""
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"tries must be an integer >= 1; got {tries!r}")
    _check(model, nfe, init, shape, n, steps, lr, ref_steps, generator, grid, denoise, free_start)
    assert shape is not None  # checked above
    t0 = time.perf_counter()
    sde = model.sde
    dtype, device = _dtype_device(model)
    starts = _start_grids(sde, nfe, grid, denoise)
    # refuses an init outside the family (or one that cannot start at alpha = 0) by name
    names = (init,) if isinstance(init, str) else tuple(init)
    inits, refused = {}, []
    for nm in names:
        try:
            inits.update({(nm, g): (ts, *_probe(model, nm, ts[:-1] if denoise else ts)) for g, ts in starts.items()})
        except NotApplicableError as err:
            if len(names) == 1:
                raise
            refused.append(err)
    if not inits:
        raise refused[0]
    cal = _Draw(model, tuple(shape), n, generator, dtype, device, ref_steps, denoise)
    val = _Draw(model, tuple(shape), n, generator + 7919, dtype, device, ref_steps, denoise)
    scores = {g: _balanced(cal.errors(model, *v)) for g, v in inits.items()}
    ranked = sorted(scores, key=scores.__getitem__)
    ts0, a0, b0 = inits[ranked[0]]
    fits, back = [], 0
    for pair in ranked[:tries]:  # learn from the best `tries` starts; keep the best on the calibration draw
        fit = _fit(model, cal, *inits[pair], steps, float(lr), dtype, free_start) if steps and lr else (
            *inits[pair], 0)
        back += fit[3]
        fits.append((_balanced(cal.errors(model, *fit[:3])), pair, fit[:3]))
    _, learned_from, (ts1, a1, b1) = min(fits, key=lambda f: f[0])
    e_cal = {"learned": cal.errors(model, ts1, a1, b1), "init": cal.errors(model, ts0, a0, b0)}
    e_val = {"learned": val.errors(model, ts1, a1, b1), "init": val.errors(model, ts0, a0, b0)}
    improved = _wins(e_val["learned"], e_val["init"])
    ts, a, b = (ts1, a1, b1) if improved else (ts0, a0, b0)
    chosen, start_grid = learned_from if improved else ranked[0]
    cost = {"nfe": cal.nfe + val.nfe, "backward": back, "steps": steps, "seconds": time.perf_counter() - t0}
    return LearnedSolver(ts, a, b, chosen, start_grid, improved, _identity(model), cost,
                         {k: _summary(e) for k, e in e_cal.items()}, {k: _summary(e) for k, e in e_val.items()},
                         generator, denoise, free_start)


def _start_grids(sde, nfe: int, grid, denoise: bool) -> dict:
    end = 0.0 if denoise else sde.eps
    if isinstance(grid, Tensor):
        ts = make_grid(sde, ts=grid)
        if len(ts) != nfe + 1 or float(ts[0]) != sde.T or float(ts[-1]) != end or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"grid must hold nfe + 1 = {nfe + 1} decreasing times from sde.T = {sde.T} to "
                             f"{'0 (denoise)' if denoise else f'sde.eps = {sde.eps}'}; got {grid.tolist()}")
        return {"custom": ts}
    names = START_GRIDS if grid is None else (grid,)
    return {g: make_grid(sde, nfe, g, t_end=end if denoise else None) for g in names}


def _objective(e: Tensor) -> Tensor:
    """(mean_r log e_r + log mean of e between its 80th and 95th percentiles) / 2: the body and the upper tail
    (what p90 sees), the top 5% (rows near basin boundaries) left out."""
    s = torch.sort(e).values
    n = s.numel()
    tail = s[int(0.8 * n): max(int(0.95 * n), int(0.8 * n) + 1)]
    return 0.5 * (torch.log(e + 1e-30).mean() + torch.log(tail.mean() + 1e-30))


def _adam(leaves, grads, moments, k: int, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """One Adam update (Kingma & Ba 2015) in place (torch.optim's import alone costs seconds)."""
    with torch.no_grad():
        for p, g, (m, s) in zip(leaves, grads, moments):
            m.mul_(b1).add_(g, alpha=1 - b1)
            s.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(lr * (m / (1 - b1**k)) / ((s / (1 - b2**k)).sqrt() + eps))


def _fit(model, cal: _Draw, ts0: Tensor, a0: Tensor, b0: Tensor, steps: int, lr: float, dtype,
         free_start: bool = False):
    """Adam on (theta, u, v[, start]) from zero offsets; returns the lowest-loss (ts, a, b) and the backward call
    count. free_start: the first time is learned too (start >= 0, projected after each update)."""
    N, denoise = len(a0), cal.denoise
    run0 = ts0[:-1] if denoise else ts0
    times = _Times(model.sde, run0)
    alpha_end = float(model.sde.alpha(ts0[-1]))
    theta = times.theta0.clone().requires_grad_(True)
    u = torch.zeros(N, dtype=torch.float64, requires_grad=True)
    v = torch.zeros(N, N, dtype=torch.float64, requires_grad=True)
    mask = torch.tril(torch.ones(N, N, dtype=torch.float64))
    scale = b0.abs().amax(1).clamp_min(1e-12)[:, None]
    start = torch.zeros((), dtype=torch.float64, requires_grad=True)
    leaves = [theta, u, v] + ([start] if free_start else [])
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in leaves]
    rows = cal.x_T.shape[0]

    def params():
        ts = times(theta, start) if free_start else times(theta)
        return (torch.cat([ts, ts0[-1:]]) if denoise else ts), a0 * (1 + u), b0 + scale * v * mask

    best = (math.inf, ts0, a0, b0)
    for k in range(steps):
        ts, a, b = params()
        x = cal.x_T
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Converting a tensor with requires_grad")  # sde's range checks
            hist = []
            for i in range(N):
                t = ts[i].expand(rows).to(dtype)
                hist.append(model.predict(x, t, "x0"))
                x = a[i].to(dtype) * x + sum(b[i, j].to(dtype) * hist[j] for j in range(i + 1))
            if denoise:  # the driver's jump from the last run time
                x = alpha_end * model.predict(x, ts[N].expand(rows).to(dtype), "x0")
            e = row_errors(x, cal.x_ref)
            loss = _objective(e)
        cal.nfe += N + denoise
        if not torch.isfinite(loss):
            break
        if float(loss) < best[0]:
            best = (float(loss), *(p.detach().clone() for p in (ts, a, b)))
        grads = torch.autograd.grad(loss, leaves)
        _adam(leaves, grads, moments, k + 1, 0.5 * lr * (1 + math.cos(math.pi * k / steps)))
        with torch.no_grad():
            start.clamp_(0.0, 0.5)
    _, ts, a, b = best
    back = steps * (N + denoise)
    if not bool((ts[1:] < ts[:-1]).all()):  # increments under float resolution: keep the init
        return ts0, a0, b0, back
    return ts, a, b, back

