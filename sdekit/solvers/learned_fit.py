"""Learning a ``LearnedSolver`` (``learn_solver``): the init solver's coefficients read off exactly (``_probe``), the
calibration and held-out draws with their converged references, the learned times, and Adam through the solver;
the maths is in ``sdekit.solvers.learned``'s docstring."""
from __future__ import annotations

import math
import time
import warnings
from typing import Optional, Sequence, Union

import torch

from ..metrics import error_summary, keeps, objective_score
from ..metrics import per_row_error as row_errors
from ..parameterization import ScoreModel, convert
from .base import Evaluator, NotApplicableError
from .driver import sample
from .grids import make_grid
from .learned import LearnedSolver, model_identity, solve_learned
from .registry import get
from .tune import START_GRIDS

Tensor = torch.Tensor

__all__ = ["learn_solver"]


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
            x = solve_learned(ev, self.x_T.clone(), ts, a, b, self.denoise)
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
    scores = {g: objective_score(cal.errors(model, *v)) for g, v in inits.items()}
    ranked = sorted(scores, key=scores.__getitem__)
    ts0, a0, b0 = inits[ranked[0]]
    fits, back = [], 0
    for pair in ranked[:tries]:  # learn from the best `tries` starts; keep the best on the calibration draw
        fit = _fit(model, cal, *inits[pair], steps, float(lr), dtype, free_start) if steps and lr else (
            *inits[pair], 0)
        back += fit[3]
        fits.append((objective_score(cal.errors(model, *fit[:3])), pair, fit[:3]))
    _, learned_from, (ts1, a1, b1) = min(fits, key=lambda f: f[0])
    e_cal = {"learned": cal.errors(model, ts1, a1, b1), "init": cal.errors(model, ts0, a0, b0)}
    e_val = {"learned": val.errors(model, ts1, a1, b1), "init": val.errors(model, ts0, a0, b0)}
    improved = keeps(e_val["learned"], e_val["init"])
    ts, a, b = (ts1, a1, b1) if improved else (ts0, a0, b0)
    chosen, start_grid = learned_from if improved else ranked[0]
    cost = {"nfe": cal.nfe + val.nfe, "backward": back, "steps": steps, "seconds": time.perf_counter() - t0}
    return LearnedSolver(ts, a, b, chosen, start_grid, improved, model_identity(model), cost,
                         {k: error_summary(e) for k, e in e_cal.items()}, {k: error_summary(e) for k, e in e_val.items()},
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

