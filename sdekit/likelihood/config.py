"""The likelihood's settings: ``LikelihoodConfig``, one frozen object checked once, on creation.

Also the data convention's bin width (``bin_width``), which the settings check and ``sdekit.likelihood.bpd``
applies: a value x of discrete data stands for the bin [x - a/2, x + a/2) with a = (hi - lo) / 2^bits, or
a = ``data_scale`` for data whose levels are not a power of two.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .quadrature import grid_size
from ..solvers.integrate import EXTERNAL_METHODS, TABLEAUS
from ..validate import choice, integer, real

__all__ = ["LikelihoodConfig", "bin_width", "check_range", "DIVERGENCES", "INTEGRATORS", "NOISES",
           "JACOBIAN_BACKENDS", "TIME_VARIABLES", "ADAPTIVE_METHODS", "FIXED_STEP_METHODS"]

DIVERGENCES = ("exact", "hutchinson")
INTEGRATORS = ("augmented", "quadrature")
NOISES = ("rademacher", "gaussian")
JACOBIAN_BACKENDS = ("auto", "func", "autograd", "loop")
TIME_VARIABLES = ("auto", "t", "log_snr")
# torchdiffeq's fixed-grid methods: without step_size they would take one step per interval, silently
_FIXED_EXTERNAL = ("heun3", "explicit_adams", "implicit_adams")
FIXED_STEP_METHODS = tuple(n for n, t in TABLEAUS.items() if not t.adaptive) + _FIXED_EXTERNAL
# the methods that choose their own steps (no step_size needed): the CLI offers only these
ADAPTIVE_METHODS = tuple(n for n, t in TABLEAUS.items() if t.adaptive) + \
    tuple(m for m in EXTERNAL_METHODS if m not in _FIXED_EXTERNAL)
# integrate="quadrature": the trajectory is stored at all 4 quad_panels 2^quad_depth + 1 grid points, so the grid is
# bounded (quad_depth=40 asked for 281 TB): at most 2^18 + 1 points (2 MiB per stored float64 coordinate, 1 GiB for a
# batch of 8 rows of 64 coordinates), panels <= 4096, depth <= 16. Checked whatever ``integrate`` is.
MAX_QUAD_POINTS = 2**18
MAX_QUAD_PANELS = 4096
MAX_QUAD_DEPTH = 16


def check_range(data_range) -> tuple[float, float]:
    """``data_range`` as a finite pair (lo, hi) with lo < hi; ValueError otherwise."""
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi); got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be a finite pair with lo < hi; got {data_range!r}")
    return lo, hi


def bin_width(bits: Optional[int], data_range: Sequence[float], data_scale: Optional[float]) -> float:
    """The bin width a of the data: (hi - lo) / 2^bits with ``bits``, else ``data_scale`` (default 1)."""
    if bits is not None:
        if data_scale is not None:
            raise ValueError("give either bits (discrete data, scale = (hi - lo) / 2^bits) or data_scale, not both")
        bits = integer("bits", bits, 1)
        lo, hi = check_range(data_range)
        return (hi - lo) / 2**bits
    if data_scale is None:
        return 1.0
    return real("data_scale", data_scale, 0.0, lo_open=True)


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
        (see ``sdekit.likelihood.solve.solve_by_quadrature``). Pays off when the exact trace is expensive and
        smooth along the trajectory; rtol/atol need to be tighter than for "augmented" at the same accuracy.
    bits, data_range, data_scale, dequantize, repeats: the bits/dim convention (``sdekit.likelihood.bpd``);
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
            choice(name, value, accepted)
        for name in ("probes", "repeats", "max_nfe"):
            self._set(name, integer(name, getattr(self, name), 1))
        for name in ("rtol", "atol"):
            self._set(name, real(name, getattr(self, name), 0.0, lo_open=True))
        if self.chunk_size is not None:
            self._set("chunk_size", integer("chunk_size", self.chunk_size, 1))
        self._check_method()
        self._check_quadrature()
        self._check_data()
        if not isinstance(self.create_graph, bool):
            raise ValueError(f"create_graph must be True or False; got {self.create_graph!r}")
        if self.create_graph and (self.integrate != "augmented" or self.method not in TABLEAUS):
            raise ValueError("create_graph=True differentiates through the steps of the augmented solve: it needs "
                             "integrate='augmented' and a built-in method "
                             f"({', '.join(TABLEAUS)}); got integrate={self.integrate!r}, method={self.method!r}")

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def _check_method(self):
        if self.method not in TABLEAUS and self.method not in EXTERNAL_METHODS:
            raise ValueError(f"unknown method {self.method!r}; accepted: adaptive {', '.join(ADAPTIVE_METHODS)}; "
                             f"fixed-step (need step_size=h) {', '.join(FIXED_STEP_METHODS)}")
        if self.step_size is not None:
            self._set("step_size", real("step_size", self.step_size, 0.0, lo_open=True))
        elif self.method in FIXED_STEP_METHODS:
            raise ValueError(f"fixed-step method {self.method!r} needs step_size=h (h > 0); or an adaptive method: "
                             f"{', '.join(ADAPTIVE_METHODS)}")

    def _check_quadrature(self):
        if self.integrate == "quadrature" and self.divergence != "exact":
            raise ValueError("integrate='quadrature' is for divergence='exact' (it saves expensive trace "
                             "evaluations); a Hutchinson estimate costs about one drift evaluation anyway")
        self._set("quad_tol", real("quad_tol", self.quad_tol, 0.0, lo_open=True))
        self._set("quad_panels", integer("quad_panels", self.quad_panels, 1, MAX_QUAD_PANELS))
        self._set("quad_depth", integer("quad_depth", self.quad_depth, 0, MAX_QUAD_DEPTH))
        points = grid_size(self.quad_panels, self.quad_depth) + 1
        if points > MAX_QUAD_POINTS + 1:
            raise ValueError(
                f"the quadrature grid 4 * quad_panels * 2^quad_depth + 1 = {points} points is too large: the "
                f"trajectory is stored at every point (points x batch x dim values); at most {MAX_QUAD_POINTS + 1} "
                f"(e.g. quad_panels={self.quad_panels} with quad_depth <= "
                f"{max(0, int(math.log2(MAX_QUAD_POINTS / (4 * self.quad_panels))))})")

    def _check_data(self):
        self._set("data_range", check_range(self.data_range))
        bin_width(self.bits, self.data_range, self.data_scale)
        if self.dequantize and self.bits is None and self.data_scale is None:
            raise ValueError("dequantize needs the bin width of the data: pass bits (e.g. bits=8) or data_scale")
        if self.repeats > 1 and not self.dequantize:
            raise ValueError("repeats > 1 only makes sense with dequantize=True")

    @property
    def bin_width(self) -> float:
        """The data's bin width a (``bin_width``): 1 for continuous data without ``data_scale``."""
        return bin_width(self.bits, self.data_range, self.data_scale)

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
