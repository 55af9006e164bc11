"""Log-likelihoods through the probability-flow ODE, with exact or Hutchinson divergence, and bits/dim.

The probability-flow ODE dx/dt = F(x, t) = drift(x, t) - g(t)^2 score(x, t) / 2 carries p_t into p_s.
Along a trajectory the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", thm. 1)
gives d/dt log p_t(x_t) = -div F(x_t, t), hence

    log p_{t_data}(x) = log p_{t_prior}(x_{t_prior}) + int_{t_data}^{t_prior} div F(x_t, t) dt,   x_{t_data} = x.

This module brings the terms; the solve is sdekit's one integration core (``sdekit.solvers.integrate``:
tableau, per-row step control, budget in network calls, exact landing on t_prior, save times, the
``SolverError`` family). ``integrate="augmented"`` solves d/ds [x, a] = [F, div F] dt/ds forward from
t_data to t_prior (Song et al. 2021, "Score-Based Generative Modeling through SDEs", appendix D.2), s = t
or the log-SNR lambda; every row's x and accumulators are held to rtol/atol, as if solved alone. div F is
either the exact trace of dF/dx (one vector-Jacobian product per coordinate, all in one vmap-vectorised
backward pass) or Hutchinson's estimator E_v[v^T (dF/dx) v] with K probes v (Rademacher or Gaussian)
drawn once per solve; the K probes ride in one solve as K accumulators, so the spread across probes
gives a per-row standard error. ``integrate="quadrature"`` solves the trajectory alone with values
saved on a uniform log-SNR grid, then integrates each row's exact divergence along it by adaptive
quadrature (``sdekit.quadrature``), evaluated only where that row's integrand needs it.

Settings travel as one frozen ``LikelihoodConfig`` (checked once, on creation); ``log_likelihood(model, x,
config)`` or ``log_likelihood(model, x, rtol=..., ...)`` with its field names as keywords.

Bits per dimension (post-processing, ``bits_per_dim``) and dequantisation (pre-processing, one convention
shared with ``sdekit.data.dequantize`` and the CLI). A value x of discrete data stands for the bin of width
a centred on it, [x - a/2, x + a/2); with ``bits`` the levels are x = lo + a (u + 1/2), u in
{0, ..., 2^bits - 1}, a = (hi - lo) / 2^bits, so the bins tile [lo, hi]. Dequantising draws
v = x + a (delta - 1/2), delta ~ U[0, 1)^D; by Jensen log P(u) >= E_delta[log p(v)] + D log a, so

    bpd = -(E_delta[log p_X(v)] + D log a) / (D log 2)

bounds the code length -log2 P(u) / D and is >= 0 when the expectation is taken (``dequantize=True,
repeats=R``: R draws). The bin width is (hi - lo) / 2^bits, or ``data_scale`` for data whose levels
are not a power of two (the digits: a = 1/8). For continuous data bpd = -(log p_X(x) + D log data_scale)
/ (D log 2), the data y relating to the model's x by x = data_scale * y + shift (data_scale = 1 by default).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .data import dequantize as dequantize_bins
from .noise import RowNoise
from .parameterization import ThresholdedModel
from .quadrature import adaptive_boole, boole, grid_size
from .sde import DiscreteVPSDE, LinearSDE
from .solvers.base import NonFiniteError, SolverError
from .solvers.integrate import EXTERNAL_METHODS, TABLEAUS, integrate

Tensor = torch.Tensor

__all__ = [
    "log_likelihood",
    "sample_log_prob",
    "LikelihoodConfig",
    "LikelihoodResult",
    "bits_per_dim",
    "dequantize",
    "AugmentedTerm",
    "Drift",
    "LogSNRMap",
    "NegativeBPDWarning",
    "DIVERGENCES",
    "INTEGRATORS",
    "NOISES",
    "JACOBIAN_BACKENDS",
    "TIME_VARIABLES",
    "MAX_BLOCK_ELEMENTS",
    "ADAPTIVE_METHODS",
]

DIVERGENCES = ("exact", "hutchinson")
INTEGRATORS = ("augmented", "quadrature")
NOISES = ("rademacher", "gaussian")
JACOBIAN_BACKENDS = ("auto", "func", "autograd", "loop")
TIME_VARIABLES = ("auto", "t", "log_snr")
# torchdiffeq's fixed-grid methods: without step_size they would take one step per interval, silently
_FIXED_EXTERNAL = ("heun3", "explicit_adams", "implicit_adams")
# the methods that choose their own steps (no step_size needed): the CLI offers only these
ADAPTIVE_METHODS = tuple(n for n, t in TABLEAUS.items() if t.adaptive) + \
    tuple(m for m in EXTERNAL_METHODS if m not in _FIXED_EXTERNAL)

# integrate="quadrature": a panel is halved before any divergence evaluation when Boole's rule on the
# trajectory's own velocity misses its displacement by more than this fraction of its path length.
_TRAJECTORY_SPLIT_TOL = 3e-3
# Elements of the (chunk, batch, D) cotangent block built per vectorised pass in exact mode.
MAX_BLOCK_ELEMENTS = _MAX_BLOCK_ELEMENTS = 2**25
# integrate="quadrature": the trajectory is stored at all 4 quad_panels 2^quad_depth + 1 grid points, so the grid is
# bounded (quad_depth=40 asked for 281 TB): at most 2^18 + 1 points (2 MiB per stored float64 coordinate, 1 GiB for a
# batch of 8 rows of 64 coordinates), panels <= 4096, depth <= 16. Checked whatever ``integrate`` is.
_MAX_QUAD_POINTS = 2**18
_MAX_QUAD_PANELS = 4096
_MAX_QUAD_DEPTH = 16


class NegativeBPDWarning(UserWarning):
    """A negative bits/dim on discrete data: the density was evaluated without (enough) dequantisation."""


# -- settings ------------------------------------------------------------------------------------------
def _positive_int(name: str, v, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")


def _bounded_int(name: str, v, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]; got {v!r}")


def _positive(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite positive number; got {v!r}")


@dataclass(frozen=True)
class LikelihoodConfig:
    """Every setting of ``log_likelihood``, checked once when made (the CLI builds one; entry points take it).

    divergence: "exact" (trace of dF/dx, vectorised over the D coordinates) or "hutchinson" with ``probes``
        = K probes of kind ``noise`` ("rademacher" or "gaussian") drawn from ``seed`` per row: row i's probes
        (and dequantisation draws) come from (seed, row_offset + i) alone.
    method, rtol, atol, max_nfe, step_size: the integration core's settings (``sdekit.solvers.integrate``):
        a built-in tableau (dopri5, bosh3, adaptive_heun; euler, midpoint, rk4 with ``step_size``) or a
        torchdiffeq method by name (dopri8, fehlberg2, ...); max_nfe: the budget in network calls
        (``StepBudgetError`` past it, never a hang).
    t_data, t_prior: x's time (default sde.eps) and the prior's (default sde.T), 0 <= t_data < t_prior <= T;
        the result is log p_{t_data}(x). (Not ``sample``'s t_start / t_end, whose solve runs the other way.)
    time_variable: integrate in "t" or in "log_snr" lambda (dt/dlambda = -sigma^2/g^2; LinearSDE only);
        "auto" picks lambda for a DiscreteVPSDE (piecewise schedule, smooth in lambda) and t otherwise.
    jacobian: how the vector-Jacobian products are batched: "autograd" (one backward pass vectorised over
        all cotangents, ``is_grads_batched=True``), "func" (``torch.func.vjp`` + ``vmap``), "loop" (one
        backward pass per cotangent; any autograd-capable net) or "auto" (the first of those that works).
    chunk_size: how many basis vectors (or probes) one vectorised vector-Jacobian pass handles.
    integrate: "augmented" solves [x, log-density] as one ODE; "quadrature" (exact divergence only) solves
        x alone, saved on a uniform grid of 4 quad_panels 2^quad_depth + 1 points in lambda (in t for an SDE
        without a log-SNR), then integrates each row's divergence by adaptive Boole quadrature to quad_tol
        (see ``_solve_by_quadrature``). Pays off when the exact trace is expensive and smooth along the
        trajectory; rtol/atol need to be tighter than for "augmented" at the same accuracy.
    bits, data_range, data_scale, dequantize, repeats: the bits/dim convention (module docstring);
        ``dequantize=True`` expects x on the level grid and averages over ``repeats`` uniform draws.
    """

    divergence: str = "exact"
    probes: int = 1
    noise: str = "rademacher"
    seed: Optional[int] = 0
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_nfe: int = 100_000
    step_size: Optional[float] = None
    t_data: Optional[float] = None
    t_prior: Optional[float] = None
    time_variable: str = "auto"
    jacobian: str = "auto"
    chunk_size: Optional[int] = None
    integrate: str = "augmented"
    quad_tol: float = 0.1
    quad_panels: int = 8
    quad_depth: int = 4
    bits: Optional[int] = None
    data_range: tuple = (-1.0, 1.0)
    data_scale: Optional[float] = None
    dequantize: bool = False
    repeats: int = 1
    create_graph: bool = False

    def __post_init__(self):
        for name, value, accepted in (("divergence", self.divergence, DIVERGENCES), ("noise", self.noise, NOISES),
                                      ("jacobian backend", self.jacobian, JACOBIAN_BACKENDS),
                                      ("time_variable", self.time_variable, TIME_VARIABLES),
                                      ("integrate", self.integrate, INTEGRATORS)):
            if value not in accepted:
                raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
        _positive_int("probes", self.probes)
        _positive_int("repeats", self.repeats)
        _positive_int("max_nfe", self.max_nfe)
        _positive("rtol", self.rtol)
        _positive("atol", self.atol)
        self._check_method()
        self._check_quadrature()
        object.__setattr__(self, "data_range", _check_range(self.data_range))
        _data_scale(self.bits, self.data_range, self.data_scale)
        if self.dequantize and self.bits is None and self.data_scale is None:
            raise ValueError("dequantize needs the bin width of the data: pass bits (e.g. bits=8) or data_scale")
        if self.repeats > 1 and not self.dequantize:
            raise ValueError("repeats > 1 only makes sense with dequantize=True")
        if not isinstance(self.create_graph, bool):
            raise ValueError(f"create_graph must be True or False; got {self.create_graph!r}")
        if self.create_graph and (self.integrate != "augmented" or self.method not in TABLEAUS):
            raise ValueError("create_graph=True differentiates through the steps of the augmented solve: it needs "
                             "integrate='augmented' and a built-in method "
                             f"({', '.join(TABLEAUS)}); got integrate={self.integrate!r}, method={self.method!r}")

    def _check_method(self):
        fixed = [n for n, t in TABLEAUS.items() if not t.adaptive] + list(_FIXED_EXTERNAL)
        if self.method not in TABLEAUS and self.method not in EXTERNAL_METHODS:
            raise ValueError(f"unknown method {self.method!r}; accepted: adaptive {', '.join(ADAPTIVE_METHODS)}; "
                             f"fixed-step (need step_size=h) {', '.join(fixed)}")
        if self.step_size is not None:
            _positive("step_size", self.step_size)
        elif self.method in fixed:
            raise ValueError(f"fixed-step method {self.method!r} needs step_size=h (h > 0); or an adaptive method: "
                             f"{', '.join(ADAPTIVE_METHODS)}")

    def _check_quadrature(self):
        if self.integrate == "quadrature" and self.divergence != "exact":
            raise ValueError("integrate='quadrature' is for divergence='exact' (it saves expensive trace "
                             "evaluations); a Hutchinson estimate costs about one drift evaluation anyway")
        _positive("quad_tol", self.quad_tol)
        _bounded_int("quad_panels", self.quad_panels, 1, _MAX_QUAD_PANELS)
        _bounded_int("quad_depth", self.quad_depth, 0, _MAX_QUAD_DEPTH)
        points = grid_size(self.quad_panels, self.quad_depth) + 1
        if points > _MAX_QUAD_POINTS + 1:
            raise ValueError(
                f"the quadrature grid 4 * quad_panels * 2^quad_depth + 1 = {points} points is too large: the "
                f"trajectory is stored at every point (points x batch x dim values); at most {_MAX_QUAD_POINTS + 1} "
                f"(e.g. quad_panels={self.quad_panels} with quad_depth <= "
                f"{max(0, int(math.log2(_MAX_QUAD_POINTS / (4 * self.quad_panels))))})")

    @classmethod
    def make(cls, config: Optional["LikelihoodConfig"] = None, **settings) -> "LikelihoodConfig":
        """``config`` (or the defaults) with ``settings`` replaced; unknown names are refused with the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            hint = ""
            if {"t_start", "t_end"} & set(unknown):
                hint = ("; the likelihood's interval is t_data (x's time, default sde.eps) to t_prior (the "
                        "prior's, default sde.T)")
            if "max_steps" in unknown:
                hint += "; the budget is max_nfe (network calls)"
            if "options" in unknown:
                hint += "; a fixed step is step_size=h"
            raise TypeError(f"unknown likelihood setting(s) {unknown}{hint}; accepted: {', '.join(sorted(names))}")
        base = cls() if config is None else config
        return dataclasses.replace(base, **settings) if settings else base


@dataclass
class LikelihoodResult:
    """What ``log_likelihood`` returns.

    log_prob: (batch,) log p_{t_data}(x) in nats, the model-space density (averaged over the
        dequantisation draws when ``dequantize=True``); equals prior + delta.
    bpd:      (batch,) bits per dimension under the data convention given (see ``bits_per_dim``).
    nfe:      drift evaluations (network calls) made by the solve.
    prior:    (batch,) log p_{t_prior}(z), the prior term (averaged over dequantisation draws).
    delta:    (batch,) int_{t_data}^{t_prior} div F dt (Hutchinson: mean over probes; averaged over draws).
    z:        latent x_{t_prior}; shape (batch, ...) or (repeats, batch, ...) when repeats > 1.
    stderr:   (batch,) Hutchinson standard error of delta across probes (NaN for one probe);
              None for the exact divergence.
    per_draw: (repeats, batch) log p of each dequantisation draw (probes averaged); log_prob is its mean
              over draws. With repeats >= 2 its spread over draws gives the estimator's error per row.
    stats:    the solve's numbers (steps, accepted, rejected, method, times, ...), as ``Solution.stats``.
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
    stats: dict = field(default_factory=dict)
    per_draw: Optional[Tensor] = None

    @property
    def info(self) -> dict:
        """The former name of ``stats``."""
        return self.stats


# -- bits per dimension and dequantisation (post- and pre-processing) ------------------------------------
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

    Discrete data (``bits`` given, or ``data_scale`` = the bin width a): log P(bin) ~ log p(x) + D log a, so
    bpd = -(log p(x) + D log a) / (D log 2), a = (hi - lo) / 2^bits. A density uniform on [lo, hi]^D gives
    exactly ``bits``. Continuous data: x = data_scale * y + shift and bpd = -(log p(x) + D log data_scale) /
    (D log 2). With ``bits`` given a negative value is impossible for a dequantised likelihood, so it raises
    a ``NegativeBPDWarning`` (unless warn=False).
    """
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    a = _data_scale(bits, data_range, data_scale)
    bpd = -(log_prob + dim * math.log(a)) / (dim * math.log(2.0))
    if warn and bits is not None:
        _warn_negative(bpd, f"{bits}-bit data", dequantized=False)
    return bpd


def _warn_negative(bpd: Tensor, what: str, dequantized: bool) -> None:
    if not (bpd.numel() and bool((bpd < 0).any())):
        return
    hint = ("; with dequantisation this means the model's density is not normalised or the solve is inaccurate"
            if dequantized else "; the density was evaluated at the quantised points themselves, which is not a "
            "likelihood of discrete data: pass dequantize=True (uniform dequantisation, repeats=R draws) for the "
            "variational bound, which is >= 0")
    warnings.warn(f"negative bits/dim (min {float(bpd.min()):.4g}) on {what}{hint}", NegativeBPDWarning,
                  stacklevel=3)


def dequantize(x: Tensor, cfg: LikelihoodConfig, rows: RowNoise) -> Tensor:
    """The model-space points to solve from: x itself, or ``cfg.repeats`` dequantised copies (repeat-major,
    (repeats * batch, ...)) v = x + a (delta - 1/2), delta ~ U[0, 1)^D from each row's own stream, a the
    bin width. With ``bits`` x must be on the level grid lo + a (u + 1/2); without dequantisation it must
    lie in data_range."""
    if cfg.bits is None and not cfg.dequantize:
        return x
    a = _data_scale(cfg.bits, cfg.data_range, cfg.data_scale)
    lo, hi = cfg.data_range
    if cfg.bits is not None:
        levels = (x - lo) / a - 0.5
        nearest = levels.round()
        if not cfg.dequantize:
            tol = 1e-6 * (hi - lo)
            if bool((x < lo - tol).any()) or bool((x > hi + tol).any()):
                raise ValueError(f"with bits={cfg.bits} the data must lie in data_range = [{lo}, {hi}]; "
                                 f"got values in [{float(x.min())}, {float(x.max())}]")
            return x
        if bool(((levels - nearest).abs() > 1e-3).any()) or bool((nearest < 0).any()) \
                or bool((nearest > 2**cfg.bits - 1).any()):
            raise ValueError(
                f"dequantize=True expects x on the {cfg.bits}-bit level grid x = lo + (hi - lo)(u + 1/2) / 2^bits "
                f"(bin centres) with integer u in [0, {2**cfg.bits - 1}] and (lo, hi) = ({lo}, {hi}); x is not "
                "(a [0, 1] -> u/255 scaling, say, is another convention)")
        x = lo + a * (nearest + 0.5)
    event = tuple(x.shape[1:])
    delta = rows.draw(lambda g: torch.rand((cfg.repeats, *event), generator=g, dtype=torch.float64))
    delta = delta.transpose(0, 1).to(device=x.device, dtype=x.dtype)  # (repeats, B, *event)
    return dequantize_bins(x.unsqueeze(0), a, offsets=delta).reshape(cfg.repeats * x.shape[0], *event)


# -- the terms -----------------------------------------------------------------------------------------
class Drift:
    """F(x, t) of the probability-flow ODE for ``model`` (anything with .sde and .score(x, t)); counts calls."""

    def __init__(self, model):
        self.model = model
        self.sde = model.sde
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        # the velocity is the probability-flow drift; asked for directly it stays finite at alpha = 0 (flow paths
        # at t = T), where the score alone (-x / sigma^2 for every model) cannot give it
        # (a general, non-linear SDE has no alpha and sigma: its drift comes from the score)
        linear = isinstance(self.sde, LinearSDE) and hasattr(self.model, "predict")
        out = self.model.predict(x, t, "velocity") if linear \
            else self.sde.probability_flow_drift(x, t, self.model.score(x, t))
        if out.shape != x.shape:
            raise ValueError(
                f"the probability-flow drift has shape {tuple(out.shape)}; expected x's shape {tuple(x.shape)}"
            )
        return out


# -- divergence ----------------------------------------------------------------------------------
def _vjp_chunks(backend: str, drift: Drift, x: Tensor, t: Tensor, K: int, chunk: int, make_cot, reduce,
                create_graph: bool = False):
    """F(x, t) and [reduce(a, b, cot, g) for each chunk [a, b) of the K cotangents], where cot = make_cot(a, b)
    has shape (b - a, *x.shape) and g[k] = cot[k]^T dF/dx. One forward pass; each chunk is one
    vectorised backward pass, so at most ``chunk`` cotangents (and their products) exist at a time.
    ``create_graph``: F and the products stay in the autograd graph (of x, when x carries one, and of the
    network's parameters), so a result built from them can be differentiated again."""
    results = []
    if create_graph:
        return _vjp_chunks_graph(backend, drift, x, t, K, chunk, make_cot, reduce)
    if backend == "func":
        out, vjp_fn = torch.func.vjp(lambda y: drift(y, t), x)  # type: ignore[misc]
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


def _vjp_chunks_graph(backend: str, drift: Drift, x: Tensor, t: Tensor, K: int, chunk: int, make_cot, reduce):
    """``_vjp_chunks`` with ``create_graph=True``: x is used as it is when it carries a graph (a stage of a
    differentiable solve), else as a fresh leaf; backward passes are taken with create_graph and nothing is
    detached. Backends "autograd" (vectorised) and "loop"; "func" runs as "autograd"."""
    results = []
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        out = drift(xr, t)
        for a in range(0, K, chunk):
            b = min(a + chunk, K)
            cot = make_cot(a, b)
            if backend == "loop":
                g = torch.stack([torch.autograd.grad(out, xr, cot[k], create_graph=True)[0] for k in range(b - a)])
            elif b - a == 1:
                g = torch.autograd.grad(out, xr, cot[0], create_graph=True)[0].unsqueeze(0)
            else:
                g = torch.autograd.grad(out, xr, cot, create_graph=True, is_grads_batched=True)[0]
            results.append(reduce(a, b, cot, g))
    return out, results


class AugmentedTerm:
    """The term d/ds [x, acc] = [F, div F] dt/ds for the integration core (s = t, or lambda with ``time_map``);
    with ``divergence=None`` the term dx/ds alone (a trajectory). acc is (batch,) for the exact divergence
    and (batch, K) for K Hutchinson probes (``probes``: (K, *x_shape)). ``divergence_at`` gives F and its
    divergence at any (x, t) (the quadrature mode asks for it along a saved trajectory)."""

    def __init__(self, drift: Drift, x_shape, divergence: Optional[str], probes: Optional[Tensor], backend: str,
                 chunk_size: Optional[int], t_bounds: tuple[float, float], time_map=None):
        self.drift = drift
        self.time_map = time_map
        self.divergence = divergence
        self.probes = probes
        self.backend = backend
        self.D = math.prod(x_shape[1:])
        self.t_lo, self.t_hi = t_bounds
        self.basis: Any = None
        self.chunk_size = chunk_size
        self.K = self.D if divergence == "exact" else (0 if probes is None else probes.shape[0])
        self.create_graph = False  # True: F and div F stay differentiable (log_likelihood(create_graph=True))

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
                                     lambda a, b: self._basis(x, a, b), trace_part, self.create_graph)
            return out, torch.stack(parts).sum(0)

        def quad_form(a, b, cot, g):  # v_k^T (dF/dx) v_k, per probe and row
            return (g * cot).reshape(b - a, B, self.D).sum(-1)

        probes = self.probes
        if probes is None:
            raise ValueError("the Hutchinson divergence needs probes of shape (K, *x.shape)")
        out, parts = _vjp_chunks(backend, self.drift, x, t, self.K, self._chunk(B),
                                 lambda a, b: probes[a:b], quad_form, self.create_graph)
        return out, torch.cat(parts)  # (K, B)

    def divergence_at(self, x: Tensor, t: Tensor):
        """F(x, t) and its divergence ((batch,), or (K, batch) for Hutchinson) at time t (a scalar, or one time
        per row), picking the Jacobian backend on the first call when it is "auto": a backend that cannot
        transform the net raises RuntimeError or NotImplementedError; out-of-memory and solver errors do not
        count as that and propagate."""
        if self.backend == "auto":
            nfe = self.drift.nfe
            for candidate in ("autograd", "func", "loop"):
                try:
                    out, div = self._div(candidate, x, t)
                except (_OutOfMemory, SolverError):
                    raise
                except (RuntimeError, NotImplementedError):
                    if candidate == "loop":
                        raise
                    self.drift.nfe = nfe  # the failed attempt is retried, not a new evaluation
                    continue
                self.backend = candidate
                return out, div
        return self._div(self.backend, x, t)

    def time(self, s: Tensor):
        """(t, dt/ds or None) for the solve variable s, t held in [t_lo, t_hi]."""
        # Time is a float64 scalar on the CPU (the SDE's schedule arithmetic, whatever x's device: MPS has no
        # float64, and a custom SDE's cached quadrature grid lives on the CPU).
        s = s.detach().to(device="cpu", dtype=torch.float64)
        if self.time_map is None:
            return s.clamp(self.t_lo, self.t_hi), None
        return self.time_map(s)

    def __call__(self, s: Tensor, state):
        t, dtds = self.time(s)
        if self.divergence is None:
            out = self.drift(state, t)
            _check_finite(out, None, t)
            return out if dtds is None else out * dtds.to(out.dtype)
        out, div = self.divergence_at(state[0], t)
        _check_finite(out, div, t)
        if dtds is not None:
            out, div = out * dtds.to(out.dtype), div * dtds.to(div.dtype)
        return out, (div if div.ndim == 1 else div.T)


_OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _check_finite(out: Tensor, div: Optional[Tensor], t) -> None:
    if not (bool(torch.isfinite(out).all()) and (div is None or bool(torch.isfinite(div).all()))):
        where = f"t = {float(t):.6g}" if torch.as_tensor(t).numel() == 1 else \
            f"times in [{float(torch.as_tensor(t).min()):.6g}, {float(torch.as_tensor(t).max()):.6g}]"
        raise NonFiniteError(
            f"the probability-flow drift or its divergence is not finite at {where}; check the "
            "model (a score that blows up near t = 0 needs a larger t_data)"
        )


class LogSNRMap:
    """s = lambda(t) as the integration variable: t(lambda) and dt/dlambda = -sigma^2 / g^2.

    For a linear SDE sigma' = f sigma + g^2 / (2 sigma), so dlambda/dt = 2 (f - sigma'/sigma) = -g^2 / sigma^2.
    """

    def __init__(self, sde, t_lo: float, t_hi: float):
        self.sde, self.t_lo, self.t_hi = sde, t_lo, t_hi
        lam = sde.log_snr(torch.tensor([t_lo, t_hi], dtype=torch.float64))
        self.log_snr_bounds = (float(lam[0]), float(lam[1]))  # lambda(t_lo) > lambda(t_hi)

    def __call__(self, s: Tensor):
        lam_hi, lam_lo = self.log_snr_bounds  # stages of a landing step stay inside; clamp anyway
        t = self.sde.t_from_log_snr(s.clamp(lam_lo, lam_hi)).clamp(self.t_lo, self.t_hi)
        return t, -(self.sde.sigma(t) / self.sde.diffusion(t)) ** 2


class _Augmented(AugmentedTerm):
    """The former signature (with an unused budget), kept for benchmarks/likelihood_floor.py until it moves to
    ``AugmentedTerm``."""

    def __init__(self, drift, x_shape, divergence, probes, backend, chunk_size, max_nfe, t_bounds, time_map=None):
        super().__init__(drift, x_shape, divergence, probes, backend, chunk_size, t_bounds, time_map)


_Drift, _LogSNRMap = Drift, LogSNRMap  # the former names (benchmarks/likelihood_floor.py)


# -- the solves ------------------------------------------------------------------------------------------
def _solve_augmented(term: AugmentedTerm, xs: Tensor, cfg: LikelihoodConfig, s_bounds: list, progress):
    """[x, acc] from s_bounds[0] to s_bounds[1] by the core. Returns (z, acc, stats)."""
    N = xs.shape[0]
    acc0 = xs.new_zeros((N,) if cfg.divergence == "exact" else (N, cfg.probes))
    term.create_graph = cfg.create_graph
    with torch.enable_grad() if cfg.create_graph else torch.no_grad(), warnings.catch_warnings():
        # the core reads its error norm with float() (a step-size decision, not differentiated), which torch
        # flags for a tensor in a graph
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        sol = integrate(term, (xs, acc0), s_bounds, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                        max_nfe=cfg.max_nfe, step_size=cfg.step_size, progress=progress)
    z, acc = sol.x
    return z, acc, {"integrate": "augmented", **sol.stats}


def _quadrature_grid(term: AugmentedTerm, quad_map, M: int, s_bounds: list):
    """(grid in the quadrature variable, t on it, dt/d(quadrature variable), the save times in the solve's)."""
    t_lo, t_hi = term.t_lo, term.t_hi
    if quad_map is None:  # quadrature in t
        grid = torch.linspace(t_lo, t_hi, M + 1, dtype=torch.float64)
        t_grid, dtds = grid.clone(), torch.ones_like(grid)
    else:  # in lambda = log-SNR: the divergence is a sum of sigmoids there (one per data scale)
        lam_lo_t, lam_hi_t = quad_map.log_snr_bounds
        grid = torch.linspace(lam_lo_t, lam_hi_t, M + 1, dtype=torch.float64)
        t_grid, dtds = quad_map(grid)
    t_grid = t_grid.clamp(t_lo, t_hi)
    t_grid[0], t_grid[-1] = t_lo, t_hi
    save = (t_grid if term.time_map is None else grid).clone()  # a solve in lambda implies quadrature in lambda
    save[0], save[-1] = s_bounds[0], s_bounds[1]
    return grid, t_grid, dtds, save


def _solve_by_quadrature(term: AugmentedTerm, xs: Tensor, cfg: LikelihoodConfig, s_bounds: list, quad_map, progress,
                         show: bool):
    """Solve dx/ds = F dt/ds alone (no divergence; s is ``term``'s time variable, t or lambda) saved at the
    M + 1 points of a uniform grid in the quadrature variable (lambda when ``quad_map`` is given, else t),
    then integrate div F along it row by row with ``adaptive_boole``. Returns (z, delta, stats).

    The exact divergence costs D vector-Jacobian products per evaluation and the drift one forward pass,
    so the trajectory takes as many cheap steps as its tolerance needs, while each row's divergence is
    evaluated only at the grid points its own integrand needs (smooth rows: the 4 * panels + 1 coarsest
    points; rows with sharp features: more, where the features are). The grid points come from the core's
    dense output (dopri5: 4th-order interpolation inside accepted steps). The trajectory on the grid also
    tells where the divergence may change fast: a panel whose 5 nodes do not resolve the trajectory's
    velocity is halved before any divergence evaluation (``_must_split``). Holds the (M + 1, batch, ...)
    trajectory in memory.
    """
    M = grid_size(cfg.quad_panels, cfg.quad_depth)
    grid, t_grid, dtds, save = _quadrature_grid(term, quad_map, M, s_bounds)
    path = AugmentedTerm(term.drift, xs.shape, None, None, term.backend, None, (term.t_lo, term.t_hi),
                         time_map=term.time_map)
    with torch.no_grad():
        sol = integrate(path, xs, s_bounds, save_ts=save, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                        max_nfe=cfg.max_nfe, step_size=cfg.step_size, progress=progress)
    traj = torch.stack(sol.trajectory or [])  # (M + 1, N, ...)
    N = xs.shape[0]
    bar = tqdm(desc="divergence evaluations per row", unit="eval", disable=not show, leave=False,
               bar_format="{desc}: {n:.1f} [{elapsed}]")

    def evaluate(node: Tensor, row: Tensor) -> Tensor:
        node_c, row_c = node.cpu(), row.to(xs.device)
        bar.update(node.numel() / N)
        out = []
        for a in range(0, node.numel(), N):  # the caller's batch size bounds the memory of one pass
            n_sl, r_sl = node_c[a:a + N], row_c[a:a + N]
            t = t_grid[n_sl]
            _, div = term.divergence_at(traj[n_sl.to(xs.device), r_sl], t)
            _check_finite(div, None, t)
            out.append(div * dtds[n_sl].to(device=div.device, dtype=div.dtype))
        return torch.cat(out)

    step = float(grid[1] - grid[0])
    with torch.no_grad(), bar:
        q = adaptive_boole(evaluate, N, step, cfg.quad_panels, cfg.quad_depth, cfg.quad_tol, dtype=xs.dtype,
                           device=xs.device, must_split=_must_split(traj.reshape(M + 1, N, -1), step))
        bar.refresh()
    unresolved = int(q.unresolved.sum())
    if unresolved:
        warnings.warn(
            f"{unresolved} of {N} rows reached the quadrature grid's resolution (quad_depth={cfg.quad_depth}) "
            f"without meeting quad_tol={cfg.quad_tol}; raise quad_depth or quad_panels for them", RuntimeWarning,
            stacklevel=3,
        )
    stats = {**sol.stats, "integrate": "quadrature", "grid_points": M + 1, "quad_tol": cfg.quad_tol,
             "quadrature_variable": "t" if quad_map is None else "log_snr",
             "divergence_evals_per_row": float(q.evals.double().mean()),
             "quadrature_error_estimate": q.error, "unresolved_rows": unresolved}
    return traj[-1], q.integral, stats


def _must_split(flat: Tensor, step: float):
    """Panels on which the trajectory flat (M + 1, N, D) itself is not resolved: Boole's rule on the velocity
    at the panel's 5 nodes (central differences on the grid) misses the displacement x(b) - x(a) by more
    than _TRAJECTORY_SPLIT_TOL of the panel's path-length scale. Costs no model evaluation."""
    M = flat.shape[0] - 1
    five = torch.arange(5, device=flat.device)

    def must_split(row: Tensor, start: Tensor, width: int) -> Tensor:
        node = start[:, None].to(flat.device) + five * (width // 4)  # (P, 5)
        r = row[:, None].to(flat.device)
        lo, hi = (node - 1).clamp(0, M), (node + 1).clamp(0, M)
        v = (flat[hi, r] - flat[lo, r]) / ((hi - lo) * step).unsqueeze(-1).to(flat.dtype)  # (P, 5, D)
        w = width * step
        dx = flat[node[:, 4], row.to(flat.device)] - flat[node[:, 0], row.to(flat.device)]
        scale = abs(w) * v.norm(dim=-1).amax(1)
        return ((boole(v, w) - dx).norm(dim=-1) > _TRAJECTORY_SPLIT_TOL * scale).cpu()

    return must_split


def _resolve_time_variable(name: str, sde, t0: float, t1: float, prefer_lambda: bool = False) -> bool:
    """True to integrate in lambda = log-SNR, False for t. "auto" takes lambda for a DiscreteVPSDE, or
    for any SDE that has it when ``prefer_lambda``."""
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
            f"t_data and t_prior (t_data = {t0} > 0 when sigma(0) = 0); use time_variable='t'"
        )
    return usable


# -- validation ----------------------------------------------------------------------------------
def _check_model(model):
    """A model log_likelihood can integrate; a ``ThresholdedModel`` is refused by name (see below)."""
    if isinstance(model, ThresholdedModel):
        # clipping x0 makes the drift a non-smooth function of x whose divergence is not that of any density's
        # flow: ~170 nats per 8x8 image away from the unthresholded model's value, with no error raised
        raise ValueError(
            f"the model is a ThresholdedModel ({model!r}): its x0 prediction is clipped or thresholded, a sampling "
            "heuristic that is not a density model, so its likelihood would be silently wrong. Score the model it "
            "wraps instead: pass model.model, or build it with from_diffusers(unet, scheduler, threshold=False) "
            "(diffusers' schedulers clip by default: clip_sample=True)")
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



def _check_times(sde, t_data, t_prior) -> tuple[float, float]:
    t_data = sde.eps if t_data is None else t_data
    t_prior = sde.T if t_prior is None else t_prior
    try:
        t_data, t_prior = float(t_data), float(t_prior)
    except (TypeError, ValueError):
        raise ValueError(f"t_data and t_prior must be numbers; got {t_data!r}, {t_prior!r}") from None
    for name, v in (("t_data", t_data), ("t_prior", t_prior)):
        if not (math.isfinite(v) and 0.0 <= v <= sde.T):
            raise ValueError(f"{name} must lie in [0, T] = [0, {sde.T}] for {type(sde).__name__}; got {v}")
    if not t_data < t_prior:
        raise ValueError(f"t_data must be smaller than t_prior (the ODE runs forward from data to prior); "
                         f"got t_data={t_data}, t_prior={t_prior}")
    return t_data, t_prior


def _probes(cfg: LikelihoodConfig, rows: RowNoise, N: int, event: tuple, like: Tensor) -> Optional[Tensor]:
    """Hutchinson probes (K, N, *event) matching the (repeat, row) order of the solved points; per row
    (seed, row_offset + i), so a row's estimate does not depend on its batch beyond the shared steps."""
    if cfg.divergence != "hutchinson":
        return None
    per_row = (N // rows.n_rows, cfg.probes, *event)  # (repeats, probes, ...) for each data row
    if cfg.noise == "rademacher":
        def draw(g):
            return torch.randint(0, 2, per_row, generator=g).to(torch.float64) * 2 - 1
    else:
        def draw(g):
            return torch.randn(per_row, generator=g, dtype=torch.float64)
    probes = rows.draw(draw).permute(2, 1, 0, *range(3, 3 + len(event))).reshape(cfg.probes, N, *event)
    return probes.to(device=like.device, dtype=like.dtype)


def _build(model, xs: Tensor, cfg: LikelihoodConfig, rows: RowNoise, t0: float, t1: float):
    """(the augmented term, the quadrature's log-SNR map or None, the solve's interval in its variable)."""
    sde = model.sde
    use_lambda = _resolve_time_variable(cfg.time_variable, sde, t0, t1)
    time_map = LogSNRMap(sde, t0, t1) if use_lambda else None
    # the divergence along a trajectory is a sum of sigmoids in lambda (one per data scale): quadrature is done
    # in lambda whenever the SDE has it, whatever variable the trajectory is solved in
    quad_map = None
    if cfg.integrate == "quadrature" and _resolve_time_variable("auto", sde, t0, t1, prefer_lambda=True):
        quad_map = time_map or LogSNRMap(sde, t0, t1)
    term = AugmentedTerm(Drift(model), xs.shape, cfg.divergence, _probes(cfg, rows, xs.shape[0], tuple(xs.shape[1:]), xs),
                         cfg.jacobian, cfg.chunk_size, (t0, t1), time_map=time_map)
    s_bounds = list(time_map.log_snr_bounds) if time_map is not None else [t0, t1]
    return term, quad_map, s_bounds


class _Progress:
    """A tqdm bar of the solve's position in [t_data, t_prior] (thousandths, never moving back) with its NFE."""

    def __init__(self, term: AugmentedTerm, cfg: LikelihoodConfig, show: bool, reverse: bool = False):
        self.term, self.show, self.reverse = term, show, reverse
        what = "trajectory" if cfg.integrate == "quadrature" else cfg.divergence
        self.bar = tqdm(total=1000, desc=f"log-likelihood ({what})", disable=not show, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def __call__(self, s: float, nfe: int, stats: dict) -> None:
        t = float(self.term.time(torch.tensor(s, dtype=torch.float64))[0])
        lo, hi = self.term.t_lo, self.term.t_hi
        done = int(1000 * min(max((hi - t if self.reverse else t - lo) / (hi - lo), 0.0), 1.0))
        if done > self.bar.n:
            self.bar.set_postfix_str(f"t={t:.4g} NFE {self.term.drift.nfe}", refresh=False)
            self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if self.show and kind is None:  # the final state, whatever tqdm's display interval let through
            end = self.term.t_lo if self.reverse else self.term.t_hi
            self.bar.set_postfix_str(f"t={end:.4g} NFE {self.term.drift.nfe}", refresh=False)
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.refresh()
        self.bar.close()


def _reduce(cfg: LikelihoodConfig, B: int, z: Tensor, acc: Tensor, prior_fn, dtype) -> dict:
    """Prior + divergence integral per solved point, averaged over the R dequantisation draws of each row."""
    N = z.shape[0]
    prior = prior_fn(z)
    if not isinstance(prior, Tensor) or prior.shape != (N,):
        raise ValueError(f"prior_log_prob must return a (batch,) = ({N},) tensor; "
                         f"got {getattr(prior, 'shape', type(prior).__name__)}")
    R = N // B
    stderr = None
    per_draw = prior.to(dtype) + (acc.mean(1) if acc.ndim == 2 else acc)
    if cfg.divergence == "hutchinson":  # acc: (N, K)
        stderr = acc.std(1, unbiased=True) / math.sqrt(cfg.probes) if cfg.probes > 1 else \
            torch.full_like(acc[:, 0], float("nan"))
        stderr = stderr.reshape(R, B).pow(2).sum(0).sqrt() / R
        acc = acc.mean(1)
    prior, delta = prior.to(dtype).reshape(R, B), acc.reshape(R, B)
    z = z.reshape(R, B, *z.shape[1:])
    return dict(log_prob=(prior + delta).mean(0), prior=prior.mean(0), delta=delta.mean(0),
                z=z[0] if R == 1 else z, stderr=stderr, per_draw=per_draw.reshape(R, B))


# -- main entry ----------------------------------------------------------------------------------
def _prepare(model, x, cfg: LikelihoodConfig, prior_log_prob, row_offset: int):
    """The checks shared by ``log_likelihood`` and ``sample_log_prob``: (x, t_data, t_prior, prior, per-row noise)."""
    _check_model(model)
    x = _check_x(x)
    if not cfg.create_graph:
        x = x.detach()
    t0, t1 = _check_times(model.sde, cfg.t_data, cfg.t_prior)
    prior_fn = model.sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    if not callable(prior_fn):
        raise TypeError("prior_log_prob must be a callable z -> (batch,) log-density")
    return x, t0, t1, prior_fn, RowNoise(cfg.seed, x.shape[0], row_offset)


def log_likelihood(model, x: Tensor, config: Optional[LikelihoodConfig] = None, *,
                   prior_log_prob: Optional[Callable[[Tensor], Tensor]] = None, row_offset: int = 0,
                   progress: bool = False, **settings) -> LikelihoodResult:
    """log p_{t_data}(x) = log p_{t_prior}(x_{t_prior}) + int_{t_data}^{t_prior} div F dt by the probability-flow ODE.

    model: a ``ScoreModel`` (or any object with ``.sde`` and ``.score(x, t)``); F(x, t) =
        ``model.sde.probability_flow_drift(x, t, model.score(x, t))``, so a general ``SDE`` works too.
    x: (batch, ...) float32 or float64 data in model space; the solve stays on x's device and dtype.
    config: a ``LikelihoodConfig``; ``settings`` (its field names as keywords) replace its fields.
    prior_log_prob: z -> (batch,) log-density of x_{t_prior}; default ``model.sde.prior_log_prob`` (only
        approximately p_T: pass the exact p_T when comparing against ground truth).
    row_offset: row i draws its probes and dequantisation offsets from (seed, row_offset + i), so a shard of
        rows [a, b) reproduces with ``row_offset=a`` (see ``sdekit.distributed``).
    progress: a progress bar of the solve's position with its NFE (and, for quadrature, a counter of the
        divergence evaluations per row).

    Errors of the solve are ``SolverError``s (``StepBudgetError`` past max_nfe, ``NonFiniteError`` for a
    drift or divergence that is not finite).

    Gradients: by default none flows back to x or the model. With ``create_graph=True`` the solve is
    recorded by autograd (every stage of every accepted and rejected step, and the vector-Jacobian products
    of the divergence with create_graph), so ``log_prob`` (and ``bpd``) can be differentiated with respect
    to x and to the network's parameters: the exact derivative of the computed value, step sizes held
    fixed (discretise-then-differentiate). Memory grows with the number of steps; use small batches.
    """
    cfg = LikelihoodConfig.make(config, **settings)
    x, t0, t1, prior_fn, rows = _prepare(model, x, cfg, prior_log_prob, row_offset)
    xs = dequantize(x, cfg, rows)
    _check_network(model, xs, t0)
    term, quad_map, s_bounds = _build(model, xs, cfg, rows, t0, t1)
    with _Progress(term, cfg, progress) as bar:
        if cfg.integrate == "quadrature":
            z, acc, stats = _solve_by_quadrature(term, xs, cfg, s_bounds, quad_map, bar, progress)
        else:
            z, acc, stats = _solve_augmented(term, xs, cfg, s_bounds, bar)
    out = _reduce(cfg, x.shape[0], z, acc, prior_fn, x.dtype)
    D = math.prod(x.shape[1:])
    bpd = bits_per_dim(out["log_prob"], D, bits=cfg.bits, data_range=cfg.data_range, data_scale=cfg.data_scale,
                       warn=False)
    if cfg.bits is not None or cfg.dequantize:
        _warn_negative(bpd, f"{cfg.bits}-bit data" if cfg.bits else "discrete data", cfg.dequantize)
    stats.update(t_data=t0, t_prior=t1, rtol=cfg.rtol, atol=cfg.atol, repeats=xs.shape[0] // x.shape[0],
                 time_variable="log_snr" if term.time_map is not None else "t",
                 scale=_data_scale(cfg.bits, cfg.data_range, cfg.data_scale))
    return LikelihoodResult(bpd=bpd, nfe=term.drift.nfe, divergence=cfg.divergence, backend=term.backend,
                            probes=cfg.probes if cfg.divergence == "hutchinson" else 0, stats=stats, **out)


def sample_log_prob(model, x_T: Tensor, config: Optional[LikelihoodConfig] = None, *,
                    prior_log_prob: Optional[Callable[[Tensor], Tensor]] = None, row_offset: int = 0,
                    progress: bool = False, **settings) -> tuple[Tensor, Tensor, dict]:
    """Generate by the probability-flow ODE and return each sample's log-density from the same solve.

    The augmented ODE d/ds [x, a] = [F, div F] dt/ds runs backwards, from x_T at t_prior to t_data with
    a(t_prior) = 0 (s = t or the log-SNR, as in ``log_likelihood``), so a(t_data) = -int_{t_data}^{t_prior}
    div F dt and, by the instantaneous change of variables (Chen et al. 2018),

        log p_{t_data}(x_{t_data}) = log p_{t_prior}(x_T) - a(t_data).

    Returns (x_0, log_prob, stats): x_0 = x_{t_data} (batch, ...), log_prob (batch,) in nats under the
    prior ``prior_log_prob`` (default ``model.sde.prior_log_prob``: pass the exact p_T of a ground-truth
    model), stats the solve's numbers plus nfe, prior (batch,), delta = int div F dt (batch,) and stderr
    (Hutchinson's per-row standard error, or None). The settings are ``LikelihoodConfig``'s (divergence,
    probes, method, rtol, atol, time_variable, create_graph, ...); dequantisation and bits do not apply.
    ``sdekit.sample(..., log_prob=True)`` calls this.
    """
    cfg = LikelihoodConfig.make(config, **settings)
    if cfg.dequantize or cfg.integrate != "augmented":
        raise ValueError("sample_log_prob solves the augmented ODE of generated samples: dequantize and "
                         "integrate='quadrature' do not apply")
    x_T, t0, t1, prior_fn, rows = _prepare(model, x_T, cfg, prior_log_prob, row_offset)
    _check_network(model, x_T, t1)
    term, _, s_bounds = _build(model, x_T, cfg, rows, t0, t1)
    with _Progress(term, cfg, progress, reverse=True) as bar:
        x0, acc, stats = _solve_augmented(term, x_T, cfg, s_bounds[::-1], bar)
    out = _reduce(cfg, x_T.shape[0], x_T, -acc, prior_fn, x_T.dtype)
    stats.update(nfe=term.drift.nfe, prior=out["prior"], delta=out["delta"], stderr=out["stderr"], t_data=t0,
                 t_prior=t1, time_variable="log_snr" if term.time_map is not None else "t")
    return x0, out["log_prob"], stats
