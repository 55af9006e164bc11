"""Log-likelihoods through the probability-flow ODE, with exact or Hutchinson divergence, and bits/dim.

The probability-flow ODE dx/dt = F(x, t) = drift(x, t) - g(t)^2 score(x, t) / 2 carries p_t into p_s.
Along a trajectory the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", thm. 1)
gives d/dt log p_t(x_t) = -div F(x_t, t), hence

    log p_{t0}(x) = log p_T(x_T) + int_{t0}^{T} div F(x_t, t) dt,     x_{t0} = x.

We solve the augmented ODE d/dt [x, a] = [F(x, t), div F(x, t)] forward from t0 to T with torchdiffeq
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", appendix D.2) on the data's device
and dtype (only the scalar time is a CPU float64). The last adaptive step ends exactly on T (no
interpolation past it) and the step size is controlled row by row. div F is either the exact trace of
the Jacobian dF/dx (one vector-Jacobian product per coordinate, all of them in one vmap-vectorised
backward pass; no Python loop over rows) or Hutchinson's estimator E_v[v^T (dF/dx) v] with K probes v
(Rademacher or Gaussian) drawn once per solve; the K probes ride in one solve as K accumulators, so
each probe yields its own integral and the spread across probes gives a per-row standard error.

``integrate="quadrature"`` splits the two: the trajectory alone (one forward pass per stage) on a
uniform log-SNR grid, then each row's exact divergence integrated along it by adaptive quadrature
(``sdekit.quadrature``), evaluated only where that row's integrand needs it.

Bits per dimension, in one convention. The model sees x = lo + a v with v = u + delta in [0, 2^bits)^D,
u in {0, ..., 2^bits - 1}^D the integer levels, delta in [0, 1)^D the dequantisation offset and
a = (hi - lo) / 2^bits. A change of variables gives log p_V(v) = log p_X(x) + D log a, and by Jensen
log P(u) = log int p_V(u + delta) d delta >= E_delta[log p_V(u + delta)], so

    bpd = -(E_delta[log p_X(lo + a (u + delta))] + D log a) / (D log 2)

is an upper bound on the discrete code length -log2 P(u) / D, and is >= 0 whenever the expectation is
taken. ``dequantize=True, repeats=R`` estimates it with R uniform draws of delta. For continuous data
bpd = -(log p_X(x) + D log data_scale) / (D log 2), where the data y relate to the model's x by
x = data_scale * y + shift (data_scale = 1 by default).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .noise import RowNoise
from .quadrature import adaptive_boole, boole, grid_size
from .sde import DiscreteVPSDE

Tensor = torch.Tensor

__all__ = [
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "StepBudgetExceeded",
    "NegativeBPDWarning",
    "DIVERGENCES",
    "INTEGRATORS",
    "NOISES",
    "JACOBIAN_BACKENDS",
]

DIVERGENCES = ("exact", "hutchinson")
INTEGRATORS = ("augmented", "quadrature")
NOISES = ("rademacher", "gaussian")
JACOBIAN_BACKENDS = ("auto", "func", "autograd", "loop")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")

# Drift evaluations one step may cost (dopri8 has 13 stages); bounds the count for any method.
_EVALS_PER_STEP = 16
# integrate="quadrature": a panel is halved before any divergence evaluation when Boole's rule on the
# trajectory's own velocity misses its displacement by more than this fraction of its path length.
_TRAJECTORY_SPLIT_TOL = 3e-3
# Elements of the (chunk, batch, D) cotangent block built per vectorised pass in exact mode.
_MAX_BLOCK_ELEMENTS = 2**25


class StepBudgetExceeded(RuntimeError):
    """The ODE solve needed more steps than ``max_steps`` allows."""


class NegativeBPDWarning(UserWarning):
    """A negative bits/dim on discrete data: the density was evaluated without (enough) dequantisation."""


@dataclass
class LikelihoodResult:
    """What ``log_likelihood`` returns.

    log_prob: (batch,) log p_{t_start}(x) in nats, the model-space density (averaged over the
        dequantisation draws when ``dequantize=True``); equals prior + delta.
    bpd:      (batch,) bits per dimension under the data convention given (see ``bits_per_dim``).
    nfe:      drift evaluations (network calls) made by the solve.
    prior:    (batch,) log p_T(z), the prior term (averaged over dequantisation draws).
    delta:    (batch,) int_{t_start}^{t_end} div F dt (Hutchinson: mean over probes; averaged over draws).
    z:        latent x_{t_end}; shape (batch, ...) or (repeats, batch, ...) when repeats > 1.
    stderr:   (batch,) Hutchinson standard error of delta across probes (NaN for one probe);
              None for the exact divergence.
    """

    log_prob: Tensor
    bpd: Tensor
    nfe: int
    prior: Tensor
    delta: Tensor
    z: Tensor
    stderr: Optional[Tensor] = None
    divergence: str = "exact"
    probes: int = 0
    backend: str = ""
    info: dict = field(default_factory=dict)


# -- bits per dimension ------------------------------------------------------------------------
def _data_scale(bits: Optional[int], data_range: Sequence[float], data_scale: Optional[float]) -> float:
    if bits is not None:
        if data_scale is not None:
            raise ValueError("give either bits (discrete data, scale = (hi - lo) / 2^bits) or data_scale, not both")
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise ValueError(f"bits must be a positive integer (e.g. 8 for 256 levels); got {bits!r}")
        lo, hi = _check_range(data_range)
        return (hi - lo) / 2**bits
    if data_scale is None:
        return 1.0
    data_scale = float(data_scale)
    if not (data_scale > 0 and math.isfinite(data_scale)):
        raise ValueError(f"data_scale must be a finite positive number; got {data_scale}")
    return data_scale


def _check_range(data_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi); got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be a finite pair with lo < hi; got {data_range!r}")
    return lo, hi


def bits_per_dim(log_prob: Tensor, dim: int, *, bits: Optional[int] = None,
                 data_range: Sequence[float] = (-1.0, 1.0), data_scale: Optional[float] = None,
                 warn: bool = True) -> Tensor:
    """Bits per dimension from a model-space log-density (nats), D = ``dim`` coordinates.

    Discrete data (``bits`` given): the model's x = lo + a (u + delta), a = (hi - lo) / 2^bits, so
    log p(u + delta) = log p(x) + D log a and bpd = -(log p(x) + D log a) / (D log 2). A density
    uniform on [lo, hi]^D gives exactly ``bits``. Continuous data: x = data_scale * y + shift and
    bpd = -(log p(x) + D log data_scale) / (D log 2). With ``bits`` given a negative value is
    impossible for a dequantised likelihood, so it raises a ``NegativeBPDWarning`` (unless warn=False).
    """
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    a = _data_scale(bits, data_range, data_scale)
    bpd = -(log_prob + dim * math.log(a)) / (dim * math.log(2.0))
    if warn and bits is not None and bpd.numel() and bool((bpd < 0).any()):
        warnings.warn(
            f"negative bits/dim (min {float(bpd.min()):.4g}) on {bits}-bit data: a density evaluated at "
            "the quantised points themselves is not a likelihood of discrete data; pass dequantize=True "
            "(uniform dequantisation, repeats=R draws) to get the variational bound, which is >= 0",
            NegativeBPDWarning, stacklevel=2,
        )
    return bpd


# -- divergence ----------------------------------------------------------------------------------
class _Drift:
    """F(x, t) of the probability-flow ODE for ``model`` (anything with .sde and .score(x, t))."""

    def __init__(self, model):
        self.model = model
        self.sde = model.sde
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        out = self.sde.probability_flow_drift(x, t, self.model.score(x, t))
        if out.shape != x.shape:
            raise ValueError(
                f"the probability-flow drift has shape {tuple(out.shape)}; expected x's shape {tuple(x.shape)}"
            )
        return out


def _vjp_chunks(backend: str, drift: _Drift, x: Tensor, t: Tensor, K: int, chunk: int, make_cot, reduce):
    """F(x, t) and [reduce(a, b, cot, g) for each chunk [a, b) of the K cotangents], where cot = make_cot(a, b)
    has shape (b - a, *x.shape) and g[k] = cot[k]^T dF/dx. One forward pass; each chunk is one
    vectorised backward pass, so at most ``chunk`` cotangents (and their products) exist at a time."""
    results = []
    if backend == "func":
        out, vjp_fn = torch.func.vjp(lambda y: drift(y, t), x)
        for a in range(0, K, chunk):
            b = min(a + chunk, K)
            cot = make_cot(a, b)
            results.append(reduce(a, b, cot, torch.func.vmap(vjp_fn)(cot)[0]))
        return out, results
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = drift(xr, t)
        for a in range(0, K, chunk):
            b = min(a + chunk, K)
            cot = make_cot(a, b)
            last = b == K
            if backend == "autograd" and b - a == 1:  # a plain backward pass, no vmap machinery
                g = torch.autograd.grad(out, xr, cot[0], retain_graph=not last)[0].unsqueeze(0)
            elif backend == "autograd":
                g = torch.autograd.grad(out, xr, cot, retain_graph=not last, is_grads_batched=True)[0]
            else:  # loop over cotangents, one backward pass each (any autograd-capable net)
                g = torch.stack([torch.autograd.grad(out, xr, cot[k], retain_graph=not (last and k == b - a - 1))[0]
                                 for k in range(b - a)])
            results.append(reduce(a, b, cot, g.detach()))
    return out.detach(), results


class _Augmented:
    """Right-hand side of d/ds [x, acc] = [F, div F] dt/ds for torchdiffeq (s = t, or lambda with
    ``time_map``); with ``divergence=None`` the right-hand side of dx/ds alone (a trajectory)."""

    def __init__(self, drift: _Drift, x_shape, divergence: Optional[str], probes: Optional[Tensor], backend: str,
                 chunk_size: Optional[int], max_nfe: int, t_bounds: tuple[float, float], time_map=None):
        self.drift = drift
        self.time_map = time_map
        self.divergence = divergence
        self.probes = probes  # (K, *x_shape) for Hutchinson
        self.backend = backend
        self.D = math.prod(x_shape[1:])
        self.event = tuple(x_shape[1:])
        self.max_nfe = max_nfe
        self.t_lo, self.t_hi = t_bounds
        self.last_t = t_bounds[0]
        self.on_time = None  # progress hook: called with each evaluation's time t
        self.basis = None
        self.chunk_size = chunk_size
        self.K = self.D if divergence == "exact" else (0 if probes is None else probes.shape[0])

    def _chunk(self, B: int) -> int:
        chunk = self.chunk_size
        if chunk is None:
            chunk = max(1, _MAX_BLOCK_ELEMENTS // max(1, B * self.D))
        return max(1, min(int(chunk), self.K))

    def _basis(self, x: Tensor, a: int, b: int) -> Tensor:
        """Rows a..b-1 of the identity as cotangents, shape (b - a, *x.shape): e_i in every batch row."""
        B = x.shape[0]
        if self.basis is not None and self.basis[0] == (a, b, B):
            return self.basis[1]
        cot = torch.zeros(b - a, B, self.D, dtype=x.dtype, device=x.device)
        idx = torch.arange(b - a, device=x.device)
        cot[idx, :, a + idx] = 1  # contiguous on purpose: stride-0 cotangents slow the vmapped backward
        cot = cot.reshape(b - a, *x.shape)
        if b - a == self.D:  # one chunk covers the basis: keep it for the next evaluation
            self.basis = ((a, b, B), cot)
        return cot

    def _div(self, backend: str, x: Tensor, t: Tensor):
        B = x.shape[0]
        if self.divergence == "exact":
            def trace_part(a, b, cot, g):  # sum_{i in [a, b)} (e_i^T dF/dx)_i, per row
                return torch.diagonal(g.reshape(b - a, B, self.D)[:, :, a:b], dim1=0, dim2=2).sum(-1)

            out, parts = _vjp_chunks(backend, self.drift, x, t, self.D, self._chunk(B),
                                     lambda a, b: self._basis(x, a, b), trace_part)
            return out, torch.stack(parts).sum(0)

        def quad_form(a, b, cot, g):  # v_k^T (dF/dx) v_k, per probe and row
            return (g * cot).reshape(b - a, B, self.D).sum(-1)

        out, parts = _vjp_chunks(backend, self.drift, x, t, self.K, self._chunk(B),
                                 lambda a, b: self.probes[a:b], quad_form)
        return out, torch.cat(parts)  # (K, B)

    def divergence_at(self, x: Tensor, t: Tensor):
        """F(x, t) and its divergence at time t (a scalar, or one time per row), picking the Jacobian
        backend on the first call when it is "auto"."""
        if self.backend == "auto":
            nfe = self.drift.nfe
            for candidate in ("autograd", "func", "loop"):
                try:
                    out, div = self._div(candidate, x, t)
                except (RuntimeError, NotImplementedError):
                    if candidate == "loop":
                        raise
                    self.drift.nfe = nfe  # the failed attempt is retried, not a new evaluation
                    continue
                self.backend = candidate
                return out, div
        return self._div(self.backend, x, t)

    def __call__(self, s: Tensor, state):
        # Time is a float64 scalar on the CPU (the SDE's schedule arithmetic, whatever x's device: MPS
        # has no float64, and a custom SDE's cached quadrature grid lives on the CPU).
        s = s.detach().to(device="cpu", dtype=torch.float64)
        if self.time_map is None:
            t, dtds = s, None
        else:
            t, dtds = self.time_map(s)
        if self.drift.nfe >= self.max_nfe:
            raise StepBudgetExceeded(
                f"the solve used {self.drift.nfe} drift evaluations (the budget for max_steps), stopping near "
                f"t = {float(t):.6g} of [{self.t_lo:.6g}, {self.t_hi:.6g}]; raise max_steps, loosen rtol/atol "
                "or start later (t_start)"
            )
        self.last_t = float(t)
        if self.on_time is not None:
            self.on_time(self.last_t)
        tt = t.clamp(self.t_lo, self.t_hi)
        if self.divergence is None:
            out = self.drift(state, tt)
            _check_finite(out, None, t)
            return out if dtds is None else out * dtds.to(out.dtype)
        out, div = self.divergence_at(state[0], tt)
        _check_finite(out, div, t)
        if dtds is not None:
            out, div = out * dtds.to(out.dtype), div * dtds.to(div.dtype)
        return out, div


def _check_finite(out: Tensor, div: Optional[Tensor], t) -> None:
    if not (bool(torch.isfinite(out).all()) and (div is None or bool(torch.isfinite(div).all()))):
        where = f"t = {float(t):.6g}" if torch.as_tensor(t).numel() == 1 else \
            f"times in [{float(torch.as_tensor(t).min()):.6g}, {float(torch.as_tensor(t).max()):.6g}]"
        raise FloatingPointError(
            f"the probability-flow drift or its divergence is not finite at {where}; check the "
            "model (a score that blows up near t = 0 needs a larger t_start)"
        )


def _row_norm(state) -> Tensor:
    """Error norm of the augmented state, row by row: max over rows of max(RMS of the row's x, RMS of
    its accumulators). Each row's error is held to rtol/atol as if it were solved alone, instead of
    being averaged with the other rows (torchdiffeq's default RMS over the whole batch), so the accuracy
    of a row does not depend on the batch it is in."""
    if isinstance(state, Tensor):  # a trajectory alone
        return state.reshape(state.shape[0], -1).pow(2).mean(1).max().sqrt()
    x, acc = state
    n = acc.shape[-1]
    rx = x.reshape(n, -1).pow(2).mean(1)
    ra = acc.reshape(-1, n).pow(2).mean(0)
    return torch.maximum(rx, ra).max().sqrt()


class _LogSNRMap:
    """s = lambda(t) as the integration variable: t(lambda) and dt/dlambda = -sigma^2 / g^2.

    For a linear SDE sigma' = f sigma + g^2 / (2 sigma), so dlambda/dt = 2 (f - sigma'/sigma) = -g^2 / sigma^2.
    """

    def __init__(self, sde, t_lo: float, t_hi: float):
        self.sde, self.t_lo, self.t_hi = sde, t_lo, t_hi
        lam = sde.log_snr(torch.tensor([t_lo, t_hi], dtype=torch.float64))
        self.log_snr_bounds = (float(lam[0]), float(lam[1]))  # lambda(t_lo) > lambda(t_hi)

    def __call__(self, s: Tensor):
        # torchdiffeq's first-step heuristic may probe beyond the interval: clamp into it
        lam_hi, lam_lo = self.log_snr_bounds
        t = self.sde.t_from_log_snr(s.clamp(lam_lo, lam_hi)).clamp(self.t_lo, self.t_hi)
        return t, -(self.sde.sigma(t) / self.sde.diffusion(t)) ** 2


# -- trajectory + quadrature ---------------------------------------------------------------------
def _solve_by_quadrature(rhs: _Augmented, xs: Tensor, ts: Tensor, quad_map, odeint_kwargs: dict, quad_tol: float,
                         quad_panels: int, quad_depth: int, progress: bool = False):
    """Solve dx/ds = F dt/ds alone (no divergence; s is ``rhs``'s time variable, t or lambda) with output
    at the M + 1 points of a uniform grid in the quadrature variable (lambda when ``quad_map`` is given,
    else t), then integrate div F along it row by row with ``adaptive_boole``. Returns (z, delta, info).

    The exact divergence costs D vector-Jacobian products per evaluation and the drift one forward pass,
    so the trajectory takes as many cheap steps as its tolerance needs, while each row's divergence is
    evaluated only at the grid points its own integrand needs (smooth rows: the 4 * panels + 1 coarsest
    points; rows with sharp features: more, where the features are). The grid points come from the
    solver's dense output (dopri5: 4th-order interpolation between accepted steps). The trajectory on
    the grid also tells where the divergence may change fast: a panel whose 5 nodes do not resolve the
    trajectory's velocity is halved before any divergence evaluation (``must_split`` below).
    """
    from torchdiffeq import odeint

    M = grid_size(quad_panels, quad_depth)
    t_lo, t_hi = rhs.t_lo, rhs.t_hi
    if quad_map is None:  # quadrature in t
        grid = torch.linspace(t_lo, t_hi, M + 1, dtype=torch.float64)
        t_grid, dtds = grid.clone(), torch.ones_like(grid)
    else:  # in lambda = log-SNR: the divergence is a sum of sigmoids there (one per data scale)
        grid = torch.linspace(*quad_map.log_snr_bounds, M + 1, dtype=torch.float64)
        t_grid, dtds = quad_map(grid)
    t_grid = t_grid.clamp(t_lo, t_hi)
    t_grid[0], t_grid[-1] = t_lo, t_hi
    # output times in the solve's own variable (a solve in lambda implies quadrature in lambda)
    out_s = t_grid if rhs.time_map is None else grid
    out_s = out_s.to(dtype=ts.dtype, device=ts.device)
    out_s[0], out_s[-1] = ts[0], ts[1]
    traj_rhs = _Augmented(rhs.drift, xs.shape, None, None, rhs.backend, None, rhs.max_nfe, (t_lo, t_hi),
                          time_map=rhs.time_map)
    traj_rhs.on_time = rhs.on_time
    try:
        with torch.no_grad():
            traj = odeint(traj_rhs, xs, out_s, **odeint_kwargs)  # (M + 1, N, ...)
    finally:
        rhs.last_t = traj_rhs.last_t
    N = xs.shape[0]

    bar = tqdm(desc="divergence evaluations per row", unit="eval", disable=not progress, leave=False,
               bar_format="{desc}: {n:.1f} [{elapsed}]")

    def evaluate(node: Tensor, row: Tensor) -> Tensor:
        node_c, row_c = node.cpu(), row.to(xs.device)
        bar.update(node.numel() / N)
        out = []
        for a in range(0, node.numel(), N):  # the caller's batch size bounds the memory of one pass
            n_sl, r_sl = node_c[a:a + N], row_c[a:a + N]
            t = t_grid[n_sl]
            _, div = rhs.divergence_at(traj[n_sl.to(xs.device), r_sl], t)
            _check_finite(div, None, t)
            out.append(div * dtds[n_sl].to(device=div.device, dtype=div.dtype))
        return torch.cat(out)

    step = float(grid[1] - grid[0])
    flat = traj.reshape(M + 1, N, -1)
    five = torch.arange(5, device=xs.device)

    def must_split(row: Tensor, start: Tensor, width: int) -> Tensor:
        """Panels on which the trajectory itself is not resolved: Boole's rule on the velocity at the
        panel's 5 nodes (central differences on the grid) misses the displacement x(b) - x(a) by more
        than _TRAJECTORY_SPLIT_TOL of the panel's path-length scale. Costs no model evaluation."""
        node = start[:, None].to(xs.device) + five * (width // 4)  # (P, 5)
        r = row[:, None].to(xs.device)
        lo, hi = (node - 1).clamp(0, M), (node + 1).clamp(0, M)
        v = (flat[hi, r] - flat[lo, r]) / ((hi - lo) * step).unsqueeze(-1).to(flat.dtype)  # (P, 5, D)
        w = width * step
        boole_v = boole(v, w)
        dx = flat[node[:, 4], row.to(xs.device)] - flat[node[:, 0], row.to(xs.device)]
        scale = abs(w) * v.norm(dim=-1).amax(1)
        return ((boole_v - dx).norm(dim=-1) > _TRAJECTORY_SPLIT_TOL * scale).cpu()

    with torch.no_grad(), bar:
        q = adaptive_boole(evaluate, N, step, quad_panels, quad_depth, quad_tol, dtype=xs.dtype, device=xs.device,
                           must_split=must_split if _TRAJECTORY_SPLIT_TOL is not None else None)
        bar.refresh()
    unresolved = int(q.unresolved.sum())
    if unresolved:
        warnings.warn(
            f"{unresolved} of {N} rows reached the quadrature grid's resolution (quad_depth={quad_depth}) without "
            f"meeting quad_tol={quad_tol}; raise quad_depth or quad_panels for them", RuntimeWarning, stacklevel=3,
        )
    info = {"integrate": "quadrature", "grid_points": M + 1, "quad_tol": quad_tol,
            "quadrature_variable": "t" if quad_map is None else "log_snr",
            "divergence_evals_per_row": float(q.evals.double().mean()),
            "quadrature_error_estimate": q.error, "unresolved_rows": unresolved}
    return traj[-1], q.integral, info


# -- validation ----------------------------------------------------------------------------------
TIME_VARIABLES = ("auto", "t", "log_snr")


def _resolve_time_variable(name: str, sde, t0: float, t1: float, prefer_lambda: bool = False) -> bool:
    """True to integrate in lambda = log-SNR, False for t. "auto" takes lambda for a DiscreteVPSDE, or
    for any SDE that has it when ``prefer_lambda``."""
    if name not in TIME_VARIABLES:
        raise ValueError(f"unknown time_variable {name!r}; accepted: {', '.join(TIME_VARIABLES)}")
    if name == "t":
        return False
    if name == "auto" and not prefer_lambda and not isinstance(sde, DiscreteVPSDE):
        # Measured on Gaussian mixtures (VP, sub-VP, VE, cosine, EDM, 16-D): t needs no more steps than
        # lambda for smooth schedules. A DDPM table's f(t) is piecewise constant, so in t dopri5 fights a
        # kink per table step (thousands of steps at rtol 1e-6); in lambda the drift is smooth.
        return False
    usable = callable(getattr(sde, "log_snr", None)) and callable(getattr(sde, "t_from_log_snr", None)) \
        and callable(getattr(sde, "sigma", None))
    if usable:
        lam = sde.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
        usable = bool(torch.isfinite(lam).all()) and float(lam[0]) > float(lam[1])
    if name == "log_snr" and not usable:
        raise ValueError(
            "time_variable='log_snr' needs a LinearSDE (log_snr and t_from_log_snr) with finite lambda at "
            f"t_start and t_end (t_start = {t0} > 0 when sigma(0) = 0); use time_variable='t'"
        )
    return usable


def _check_model(model):
    if not (hasattr(model, "sde") and callable(getattr(model, "score", None))):
        raise TypeError(
            f"model must be a sdekit.ScoreModel (or any object with .sde and .score(x, t)); got {type(model).__name__}"
        )
    if not callable(getattr(model.sde, "probability_flow_drift", None)):
        raise TypeError("model.sde must be a sdekit.SDE (it needs probability_flow_drift(x, t, score))")


def _check_x(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, ...); got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (float32 or float64); got dtype {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"x has dtype {x.dtype}; log_likelihood accepts float32 or float64 only: in half precision the ODE "
            "state, its error control and the divergence accumulate rounding errors (bfloat16 likelihoods come out "
            "~0.7 nats wrong). Pass x.float() and a float32 model (model.net.float()); autocast inside the network "
            "is fine as long as it returns float32"
        )
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(
            f"x must have shape (batch, *event_shape) with batch >= 1 and a non-empty event; got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        more = "..." if len(bad) > 10 else ""
        raise ValueError(f"x contains NaN or Inf (rows {bad[:10]}{more}); only finite values are accepted")
    return x


def _check_network(model, x: Tensor, t: float) -> None:
    """One forward and backward pass on x's first row at time t, before the solve: the score must be a
    float32/float64 tensor that depends on x through autograd. A network that detaches its output,
    runs under torch.no_grad or goes through numpy has a zero Jacobian as far as autograd can tell, so
    every divergence estimate (exact, Hutchinson, quadrature) would silently keep only the SDE's own
    linear drift and give a wrong likelihood."""
    x1 = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model.score(x1, torch.tensor(t, dtype=torch.float64))
        if not isinstance(out, Tensor):
            raise TypeError(f"model.score returned a {type(out).__name__}; it must return a tensor shaped like x")
        if out.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"the model returns {out.dtype} for {x.dtype} input; log_likelihood needs float32 or "
                             "float64 scores (half precision gives wrong likelihoods): run the network in float32")
        grad = None
        if out.requires_grad:
            grad = torch.autograd.grad(out, x1, torch.ones_like(out), allow_unused=True)[0]
    if grad is None:
        cause = "its output does not require grad" if not out.requires_grad else "its autograd graph does not reach x"
        raise ValueError(
            f"the model's output does not depend on x through autograd ({cause}), so the divergence of the "
            "probability-flow drift, and with it the likelihood, would be silently wrong. The network must compute "
            "its output from x with differentiable torch operations: no .detach(), no torch.no_grad() or "
            "inference_mode inside it, no round trip through numpy or .item()"
        )


def _check_times(sde, t_start, t_end) -> tuple[float, float]:
    t_start = sde.eps if t_start is None else t_start
    t_end = sde.T if t_end is None else t_end
    try:
        t_start, t_end = float(t_start), float(t_end)
    except (TypeError, ValueError):
        raise ValueError(f"t_start and t_end must be numbers; got {t_start!r}, {t_end!r}") from None
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not (math.isfinite(v) and 0.0 <= v <= sde.T):
            raise ValueError(f"{name} must lie in [0, T] = [0, {sde.T}] for {type(sde).__name__}; got {v}")
    if not t_start < t_end:
        raise ValueError(f"t_start must be smaller than t_end (the ODE runs forward from data to prior); "
                         f"got t_start={t_start}, t_end={t_end}")
    return t_start, t_end


def _check_options(divergence, probes, noise, method, rtol, atol, max_steps, repeats, backend, options):
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; accepted: {', '.join(DIVERGENCES)}")
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; accepted: {', '.join(NOISES)}")
    if backend not in JACOBIAN_BACKENDS:
        raise ValueError(f"unknown jacobian backend {backend!r}; accepted: {', '.join(JACOBIAN_BACKENDS)}")
    if isinstance(probes, bool) or int(probes) != probes or probes < 1:
        raise ValueError(f"probes must be a positive integer; got {probes!r}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer; got {repeats!r}")
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (float(v) > 0 and math.isfinite(float(v))):
            raise ValueError(f"{name} must be a finite positive number; got {v!r}")
    if method not in ADAPTIVE_METHODS + FIXED_METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: adaptive {', '.join(ADAPTIVE_METHODS)}; "
                         f"fixed-step (need options={{'step_size': h}}) {', '.join(FIXED_METHODS)}")
    if method in FIXED_METHODS and not options.get("step_size"):
        raise ValueError(f"fixed-step method {method!r} needs options={{'step_size': h}} (h > 0)")


def _check_quadrature(integrate, divergence, quad_tol, quad_panels, quad_depth):
    if integrate not in INTEGRATORS:
        raise ValueError(f"unknown integrate {integrate!r}; accepted: {', '.join(INTEGRATORS)}")
    if integrate == "quadrature":
        if divergence != "exact":
            raise ValueError("integrate='quadrature' is for divergence='exact' (it saves expensive trace "
                             "evaluations); a Hutchinson estimate costs about one drift evaluation anyway")
        if not (float(quad_tol) > 0 and math.isfinite(float(quad_tol))):
            raise ValueError(f"quad_tol must be a finite positive number; got {quad_tol!r}")
        for name, v, lo in (("quad_panels", quad_panels, 1), ("quad_depth", quad_depth, 0)):
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")


# -- main entry ----------------------------------------------------------------------------------
def log_likelihood(
    model,
    x: Tensor,
    *,
    divergence: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    seed: Optional[int] = 0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    prior_log_prob: Optional[Callable[[Tensor], Tensor]] = None,
    max_steps: int = 10_000,
    bits: Optional[int] = None,
    data_range: Sequence[float] = (-1.0, 1.0),
    data_scale: Optional[float] = None,
    dequantize: bool = False,
    repeats: int = 1,
    chunk_size: Optional[int] = None,
    jacobian: str = "auto",
    time_variable: str = "auto",
    options: Optional[dict] = None,
    row_offset: int = 0,
    integrate: str = "augmented",
    quad_tol: float = 0.1,
    quad_panels: int = 8,
    quad_depth: int = 4,
    progress: bool = False,
) -> LikelihoodResult:
    """log p_{t_start}(x) by the probability-flow ODE:  log p_T(x_T) + int_{t_start}^{t_end} div F dt.

    model: a ``ScoreModel`` (or any object with ``.sde`` and ``.score(x, t)``); F(x, t) =
        ``model.sde.probability_flow_drift(x, t, model.score(x, t))``, so a general ``SDE`` works too.
    x: (batch, ...) float32 or float64 data in model space; the solve stays on x's device and dtype.
    divergence: "exact" (trace of dF/dx, vectorised over the D coordinates) or "hutchinson" with
        ``probes`` = K probes of kind ``noise`` ("rademacher" or "gaussian") drawn once from ``seed``,
        per row: row i's probes (and dequantisation draws) come from (seed, row_offset + i) alone, so a
        shard of rows [a, b) reproduces with ``row_offset=a`` (see ``sdekit.distributed``).
    method, rtol, atol, options: torchdiffeq ``odeint`` settings (adaptive methods by default; a
        fixed-step method needs options={"step_size": h}).
    t_start, t_end: integration interval, default [sde.eps, sde.T]; must satisfy 0 <= t_start < t_end <= T.
    prior_log_prob: z -> (batch,) log-density of x_{t_end}; default ``model.sde.prior_log_prob``. (The SDE
        prior is only approximately p_T; pass the exact p_T when comparing against ground truth.)
    max_steps: step budget; past it a ``StepBudgetExceeded`` error is raised (never a hang).
    bits, data_range, data_scale, dequantize, repeats: bits/dim convention (module docstring): with
        ``bits`` the data are x = lo + (hi - lo)(u + delta)/2^bits; ``dequantize=True`` expects x on the
        level grid (delta = 0) and averages over ``repeats`` uniform draws of delta.
    chunk_size: how many basis vectors (or probes) one vectorised vector-Jacobian pass handles.
    time_variable: integrate in "t" or in "log_snr" lambda (d/dlambda = dt/dlambda d/dt with
        dt/dlambda = -sigma^2/g^2; LinearSDE only); "auto" picks lambda for a DiscreteVPSDE (piecewise
        schedule, smooth in lambda) and t otherwise. Adaptive steps are controlled row by row (each
        row's x and accumulators held to rtol/atol), so a row's accuracy does not depend on its batch.
    jacobian: how the vector-Jacobian products are batched: "autograd" (one backward pass vectorised
        over all cotangents, ``torch.autograd.grad(is_grads_batched=True)``, i.e. vmap of the backward),
        "func" (``torch.func.vjp`` + ``torch.func.vmap``), "loop" (one backward pass per cotangent; any
        autograd-capable net) or "auto": the first of autograd, func, loop that the net supports.
    integrate: "augmented" solves [x, log-density] as one ODE (the divergence at every stage of every
        step); "quadrature" (exact divergence only) solves x alone (in ``time_variable``) with output
        on a uniform grid of M + 1 = 4 quad_panels 2^quad_depth + 1 points in lambda (in t for an SDE
        without a log-SNR), then integrates each row's divergence along it by adaptive Boole
        quadrature (``sdekit.quadrature``), refined only where that row's integrand needs it, to
        ``quad_tol`` on the sum of |Boole - Simpson| (usually conservative: measured mean errors are
        1-2 orders smaller). Panels on which the trajectory's own velocity is not resolved are halved
        before any divergence evaluation, so a sharp feature that falls between the first nodes is
        caught when the trajectory shows it. Pays off when the divergence costs many drift evaluations
        (the exact trace: D vector-Jacobian products) and is smooth along the trajectory (analytic or
        exact-score models); on a trained net whose divergence oscillates in t it refines to the
        grid's resolution and is slower than "augmented". The divergence is read off interpolated
        trajectory points, so rtol/atol need to be tighter than for "augmented" at the same accuracy.
        Holds the (M + 1, batch, ...) grid trajectory in memory. ``info`` then reports
        divergence_evals_per_row and a per-row quadrature_error_estimate.
    progress: show a progress bar (tqdm) of the solve's position in [t_start, t_end] with its NFE, and
        for integrate="quadrature" a counter of the divergence evaluations per row.

    No gradient flows back to x or the model. Returns a ``LikelihoodResult``.
    """
    from torchdiffeq import odeint

    _check_model(model)
    x = _check_x(x)
    options = dict(options or {})
    _check_options(divergence, probes, noise, method, rtol, atol, max_steps, repeats, jacobian, options)
    _check_quadrature(integrate, divergence, quad_tol, quad_panels, quad_depth)
    sde = model.sde
    t0, t1 = _check_times(sde, t_start, t_end)
    scale = _data_scale(bits, data_range, data_scale)
    if (dequantize or repeats > 1) and bits is None:
        raise ValueError("dequantize / repeats need the bit depth of the data: pass bits (e.g. bits=8)")
    if repeats > 1 and not dequantize:
        raise ValueError("repeats > 1 only makes sense with dequantize=True")
    prior_fn = sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    if not callable(prior_fn):
        raise TypeError("prior_log_prob must be a callable z -> (batch,) log-density")

    x = x.detach()
    B, event = x.shape[0], tuple(x.shape[1:])
    D = math.prod(event)
    device, dtype = x.device, x.dtype
    # probe and dequantisation noise per row (seed, row_offset + i): a row's estimate does not depend on
    # the batch it is solved in beyond the shared step sizes (see sdekit.distributed for fixed chunks)
    rows = RowNoise(seed, B, row_offset)

    if bits is not None:
        lo, hi = _check_range(data_range)
        if dequantize:
            levels = (x - lo) / scale
            nearest = levels.round()
            if bool(((levels - nearest).abs() > 1e-3).any()) or bool((nearest < 0).any()) \
                    or bool((nearest > 2**bits - 1).any()):
                raise ValueError(
                    f"dequantize=True expects x on the {bits}-bit level grid x = lo + (hi - lo) u / 2^bits with "
                    f"integer u in [0, {2**bits - 1}] and (lo, hi) = ({lo}, {hi}); x is not (a [0, 1] -> u/255 "
                    "scaling, say, is another convention)"
                )
            x_grid = lo + scale * nearest
            delta_u = rows.draw(lambda g: torch.rand((repeats, *event), generator=g, dtype=torch.float64))
            delta_u = delta_u.transpose(0, 1).to(device=device, dtype=dtype)  # (repeats, B, *event)
            xs = (x_grid.unsqueeze(0) + scale * delta_u).reshape(repeats * B, *event)
        else:
            tol = 1e-6 * (hi - lo)
            if bool((x < lo - tol).any()) or bool((x > hi + tol).any()):
                raise ValueError(f"with bits={bits} the data must lie in data_range = [{lo}, {hi}]; "
                                 f"got values in [{float(x.min())}, {float(x.max())}]")
            xs = x
    else:
        xs = x
    N = xs.shape[0]

    probe_t = None
    if divergence == "hutchinson":
        per_row = (N // B, probes, *event)  # (repeats, probes, ...) for each data row
        if noise == "rademacher":
            draw = lambda g: torch.randint(0, 2, per_row, generator=g).to(torch.float64) * 2 - 1  # noqa: E731
        else:
            draw = lambda g: torch.randn(per_row, generator=g, dtype=torch.float64)  # noqa: E731
        # (B, repeats, probes, ...) -> (probes, repeats * B, ...), matching xs's (repeat, row) order
        probe_t = rows.draw(draw).permute(2, 1, 0, *range(3, 3 + len(event))).reshape(probes, N, *event)
        probe_t = probe_t.to(device=device, dtype=dtype)

    adaptive = method in ADAPTIVE_METHODS
    if adaptive:
        max_nfe = max_steps * _EVALS_PER_STEP + _EVALS_PER_STEP
        options.setdefault("max_num_steps", int(max_steps))
        options.setdefault("norm", _row_norm)
    else:
        n_steps = math.ceil((t1 - t0) / float(options["step_size"]))
        if n_steps > max_steps:
            raise StepBudgetExceeded(
                f"step_size={options['step_size']} over [{t0}, {t1}] needs {n_steps} steps > max_steps={max_steps}"
            )
        max_nfe = (n_steps + 1) * _EVALS_PER_STEP

    _check_network(model, xs, t0)
    quadrature = integrate == "quadrature"
    use_lambda = _resolve_time_variable(time_variable, sde, t0, t1)
    time_map = _LogSNRMap(sde, t0, t1) if use_lambda else None
    # the divergence along a trajectory is a sum of sigmoids in lambda (one per data scale): quadrature
    # is done in lambda whenever the SDE has it, whatever variable the trajectory is solved in
    quad_map = None
    if quadrature and _resolve_time_variable("auto", sde, t0, t1, prefer_lambda=True):
        quad_map = time_map or _LogSNRMap(sde, t0, t1)
    drift = _Drift(model)
    rhs = _Augmented(drift, xs.shape, divergence, probe_t, jacobian, chunk_size, max_nfe, (t0, t1),
                     time_map=time_map)
    acc0 = xs.new_zeros((N,) if divergence == "exact" else (probes, N))
    tdtype = torch.float32 if device.type == "mps" else torch.float64
    if use_lambda:
        lam = sde.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
        ts = lam.to(dtype=tdtype, device=device)
    else:
        ts = torch.tensor([t0, t1], dtype=tdtype, device=device)
    if adaptive and "step_t" not in options and "jump_t" not in options:
        # End a step exactly on t_end: torchdiffeq otherwise steps past it and interpolates back, which
        # would evaluate the drift beyond T (the clamp above then feeds it the wrong time).
        options["step_t"] = ts[1:].clone()
    solver_kwargs = dict(rtol=rtol, atol=atol, method=method, options=options)
    extra_info = {"integrate": "augmented"}
    bar = tqdm(total=1000, desc=f"log-likelihood ({'trajectory' if quadrature else divergence})", disable=not progress,
               leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    if progress:  # position in [t0, t1] in thousandths, never moving back (stages and rejected steps revisit)
        def on_time(t: float):
            done = int(1000 * min(max((t - t0) / (t1 - t0), 0.0), 1.0))
            if done > bar.n:
                bar.set_postfix_str(f"t={t:.4g} NFE {drift.nfe}", refresh=False)
                bar.update(done - bar.n)

        rhs.on_time = on_time
    try:
        with bar:
            if quadrature:
                z, acc, extra_info = _solve_by_quadrature(rhs, xs, ts, quad_map, solver_kwargs, quad_tol,
                                                          quad_panels, quad_depth, progress)
            else:
                with torch.no_grad():
                    sol = odeint(rhs, (xs, acc0), ts, **solver_kwargs)
                z, acc = sol[0][-1], sol[1][-1]
            if progress:  # the final state, whatever tqdm's display interval let through
                bar.set_postfix_str(f"t={t1:.4g} NFE {drift.nfe}", refresh=False)
                bar.update(bar.total - bar.n)
                bar.refresh()
    except AssertionError as err:  # torchdiffeq reports budget and step underflow with assert
        msg = str(err)
        if "max_num_steps" in msg or "underflow" in msg:
            raise StepBudgetExceeded(
                f"the adaptive solve ({method}, rtol={rtol}, atol={atol}) did not reach t_end = {t1} within "
                f"max_steps={max_steps} steps (torchdiffeq: {msg}); it stopped near t = {rhs.last_t:.6g} after "
                f"{drift.nfe} drift evaluations. Raise max_steps, loosen rtol/atol or start later (t_start)"
            ) from None
        raise

    prior = prior_fn(z)
    if not isinstance(prior, Tensor) or prior.shape != (N,):
        raise ValueError(f"prior_log_prob must return a (batch,) = ({N},) tensor; "
                         f"got {getattr(prior, 'shape', type(prior).__name__)}")
    prior = prior.to(dtype)
    stderr = None
    if divergence == "exact":
        delta_all = acc
    else:
        delta_all = acc.mean(0)
        if probes > 1:
            stderr = acc.std(0, unbiased=True) / math.sqrt(probes)
        else:
            stderr = torch.full_like(delta_all, float("nan"))

    R = N // B
    prior = prior.reshape(R, B)
    delta = delta_all.reshape(R, B)
    log_prob = (prior + delta).mean(0)
    if stderr is not None:
        stderr = stderr.reshape(R, B).pow(2).sum(0).sqrt() / R
    z = z.reshape(R, B, *event)
    bpd = bits_per_dim(log_prob, D, bits=bits, data_range=data_range, data_scale=data_scale, warn=False)
    if bits is not None and bool((bpd < 0).any()):
        warnings.warn(
            f"negative bits/dim (min {float(bpd.min()):.4g}) on {bits}-bit data"
            + ("" if dequantize else "; the density was evaluated at the quantised points themselves: pass "
               "dequantize=True (uniform dequantisation) for the variational bound, which is >= 0")
            + ("; with dequantisation this means the model's density is not normalised or the solve is inaccurate"
               if dequantize else ""),
            NegativeBPDWarning, stacklevel=2,
        )
    return LikelihoodResult(
        log_prob=log_prob,
        bpd=bpd,
        nfe=drift.nfe,
        prior=prior.mean(0),
        delta=delta.mean(0),
        z=z[0] if R == 1 else z,
        stderr=stderr,
        divergence=divergence,
        probes=probes if divergence == "hutchinson" else 0,
        backend=rhs.backend,
        info={"t_start": t0, "t_end": t1, "method": method, "rtol": rtol, "atol": atol,
              "time_variable": "log_snr" if use_lambda else "t",
              "repeats": R, "scale": scale, **extra_info},
    )
