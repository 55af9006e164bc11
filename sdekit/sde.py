"""Forward SDEs as objects.

General SDE:  dx = F(x, t) dt + G(t) dw,  t in [0, T].

Linear SDE:   dx = f(t) x dt + g(t) dw, with Gaussian transition
              x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),
              alpha(t) = exp(int_0^t f),  sigma(t)^2 = alpha(t)^2 (sigma(0)^2 + int_0^t g^2 / alpha^2),
              log-SNR lambda(t) = log(alpha^2 / sigma^2), strictly decreasing in t.

Reverse-time family (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 6 and 13):
              dx = [F(x, t) - (1 + eta^2)/2 G(t)^2 score(x, t)] dt + eta G(t) dw_bar;
eta = 1 is the reverse SDE, eta = 0 the probability-flow ODE.

This module defines the abstractions, ``SDE`` and ``LinearSDE`` (with the numerical schedule of a custom SDE).
The built-ins are LinearSDEs in their own modules, re-exported here: the diffusion SDEs (VP, sub-VP, VE, cosine,
discrete DDPM) in ``sdekit.diffusion_sdes``, the flow-matching paths (affine Gaussian paths ending at pure
noise: rectified flow, cosine, polynomial, time-shifted) in ``sdekit.flow_paths``. This module imports nothing
else of the package (but those re-exports). All time arithmetic happens in float64; every
schedule function takes a float or a tensor of times and returns a float64 tensor of the same
shape. Times outside [0, T] raise ``ValueError``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = [
    "SDE",
    "LinearSDE",
    "broadcast_to",
    "as_time",
    "is_scalar_time",
    # re-exported from sdekit.diffusion_sdes and sdekit.flow_paths (the end of this module)
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "rescale_zero_terminal_snr",
    "SDE_NAMES",
    "sde_from_name",
    "AffinePath",
    "RectifiedFlow",
    "CondOT",
    "PolynomialPath",
    "CosinePath",
    "TimeShift",
    "time_shift",
    "PATH_NAMES",
    "path_from_name",
]

_TIME_TOL = 1e-9
_MAX_LOG = math.log(torch.finfo(torch.float64).max)  # 709.78: exp() above it overflows


def as_time(t) -> Tensor:
    """Times (a number, a sequence or a tensor) as a float64 tensor (keeps the device of a tensor input)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def is_scalar_time(t) -> bool:
    """A single time for the memoised float fast paths (a Python number or a 0-d tensor); a 0-d tensor that requires
    grad takes the tensor paths, which keep its graph."""
    return isinstance(t, (float, int)) or (isinstance(t, Tensor) and t.ndim == 0 and not t.requires_grad)


def _tolerance(t) -> float:
    """Times that went through float32 (e.g. handed to a network) may round just past T."""
    if isinstance(t, Tensor) and t.is_floating_point():
        return max(_TIME_TOL, float(torch.finfo(t.dtype).eps))
    return _TIME_TOL


def broadcast_to(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-row coefficient of shape () or (batch,) so it broadcasts against x (batch, ...),
    and cast it to x's dtype and device."""
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"time tensor must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(coef.shape)}"
        )
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


class SDE:
    """A forward SDE dx = drift(x, t) dt + diffusion(t) dw on [0, T].

    Subclasses give ``drift(x, t)`` and ``diffusion(t)``. ``eps`` is the smallest time that samplers
    and likelihoods use by default (the score is ill-conditioned at t = 0).
    """

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"T must be a finite positive number; got {T}")
        if not (0 <= eps < T):
            raise ValueError(f"eps must satisfy 0 <= eps < T = {T}; got {eps}")
        self.T = float(T)
        self.eps = float(eps)

    # -- validation -------------------------------------------------------------------------
    def check_time(self, t) -> Tensor:
        """Return t as float64, raising ValueError if any entry lies outside [0, T] or is not finite."""
        if is_scalar_time(t):
            return torch.tensor(self.check_scalar_time(t), dtype=torch.float64,
                                device=t.device if isinstance(t, Tensor) else None)
        tol = _tolerance(t)
        t = as_time(t)
        if t.numel():
            lo, hi = (float(v) for v in torch.aminmax(t))
            if not (lo >= -tol and hi <= self.T * (1 + tol) + tol):  # NaN fails both comparisons
                raise ValueError(
                    f"time must lie in [0, T] = [0, {self.T}] for {type(self).__name__}; got values in [{lo}, {hi}]"
                )
        return t.clamp(0.0, self.T)

    def check_scalar_time(self, t) -> float:
        """A scalar time as a Python float in [0, T] (ValueError outside, NaN included)."""
        v, tol = float(t), _tolerance(t)
        if not (-tol <= v <= self.T * (1 + tol) + tol):
            raise ValueError(f"time must lie in [0, T] = [0, {self.T}] for {type(self).__name__}; got {v}")
        return min(max(v, 0.0), self.T)

    # -- the SDE ----------------------------------------------------------------------------
    def drift(self, x: Tensor, t) -> Tensor:
        raise NotImplementedError

    def diffusion(self, t) -> Tensor:
        raise NotImplementedError

    def reverse_drift(self, x: Tensor, t, score: Tensor, eta: float = 1.0) -> Tensor:
        """Drift of the reverse-time family: F(x, t) - (1 + eta^2)/2 G(t)^2 score."""
        g2 = broadcast_to(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - 0.5 * (1.0 + eta**2) * g2 * score

    def probability_flow_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE: F(x, t) - G(t)^2 score / 2."""
        return self.reverse_drift(x, t, score, eta=0.0)

    # -- prior ------------------------------------------------------------------------------
    def prior_std(self) -> float:
        raise NotImplementedError

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std()

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(-1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, eps={self.eps})"


def _coerce(fn, name: str):
    """``fn(self, t)`` whose result is a float64 tensor of t's shape on t's device, whatever number or tensor
    ``fn`` returns (a TypeError naming the method for anything else)."""

    def coerced(self, t):
        out = fn(self, t)
        if isinstance(out, Tensor) and out.dtype == torch.float64 and isinstance(t, Tensor) and out.shape == t.shape:
            return out  # the built-ins' case: no copy
        like = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        try:
            out = torch.as_tensor(out, dtype=torch.float64, device=like.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{type(self).__name__}.{name}(t) must return a number or a tensor; got "
                            f"{type(out).__name__}") from err
        try:
            return out.expand(like.shape) if out.shape != like.shape else out
        except RuntimeError as err:
            raise ValueError(f"{type(self).__name__}.{name}(t) returned shape {tuple(out.shape)} for t of shape "
                             f"{tuple(like.shape)}; it must return a scalar or t's shape") from err

    coerced._coerced = True  # type: ignore[attr-defined]
    coerced.__name__, coerced.__doc__, coerced.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
    return coerced


# Gauss-Legendre nodes on [0, 1] for the numerical schedule of custom SDEs (degree-15 exact).
_GL_X_NP, _GL_W_NP = np.polynomial.legendre.leggauss(8)
_GL_X = torch.tensor((_GL_X_NP + 1) / 2, dtype=torch.float64)
_GL_W = torch.tensor(_GL_W_NP / 2, dtype=torch.float64)


class LinearSDE(SDE):
    """dx = f(t) x dt + g(t) dw with closed-form Gaussian marginals.

    A custom SDE subclasses this and gives only ``f(t)`` and ``g(t)`` (float64 tensor in; out a tensor of t's
    shape, or a Python number or 0-d tensor for a constant: every result is made a float64 tensor of t's
    shape). alpha, sigma, lambda and t(lambda) are then derived numerically: the integrals
    int f and int g^2/alpha^2 by composite 8-point Gauss-Legendre quadrature on a cached grid of
    ``n_grid`` intervals, and t(lambda) by bisection on the monotone lambda. Built-in SDEs override
    ``_log_alpha``, ``_sigma`` and ``_t_from_log_snr`` with closed forms.
    """

    n_grid: int = 512
    _grid_cache = None  # (nodes, int f, int g^2/alpha^2), built on first use

    def __init_subclass__(cls, **kwargs):
        """A subclass's own ``f`` and ``g`` may return a Python number, a tensor of another dtype or a 0-d tensor
        for every t: they are wrapped to return a float64 tensor of t's shape (``_coerce``)."""
        super().__init_subclass__(**kwargs)
        for name in ("f", "g"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_coerced", False):
                setattr(cls, name, _coerce(fn, name))

    # -- what a subclass gives ---------------------------------------------------------------
    def f(self, t: Tensor) -> Tensor:
        raise NotImplementedError("a LinearSDE subclass must define f(t)")

    def g(self, t: Tensor) -> Tensor:
        raise NotImplementedError("a LinearSDE subclass must define g(t)")

    def sigma0(self) -> float:
        """sigma(0): zero unless the SDE starts from already-noised data."""
        return 0.0

    # -- scalar times: validated once, memoised as Python floats (the solvers' hot path) ------
    def schedule(self, t) -> tuple[float, float, float, float]:
        """(alpha, sigma, f, g) at one time, as Python floats. Memoised per time, so a solver that
        revisits its grid (and a custom SDE's quadrature) pays once per distinct time."""
        v = self.check_scalar_time(t)
        memo = self.__dict__.setdefault("_schedule_memo", {})
        hit = memo.get(v)
        if hit is None:
            tt = torch.tensor(v, dtype=torch.float64)
            hit = (math.exp(float(self._log_alpha(tt))), float(self._sigma(tt)), float(self.f(tt)), float(self.g(tt)))
            if len(memo) >= 65536:
                memo.clear()
            memo[v] = hit
        return hit

    # -- SDE interface -----------------------------------------------------------------------
    def drift(self, x: Tensor, t) -> Tensor:
        if is_scalar_time(t):
            return self.schedule(t)[2] * x
        return broadcast_to(self.f(self.check_time(t)), x) * x

    def diffusion(self, t) -> Tensor:
        if is_scalar_time(t):
            return torch.tensor(self.schedule(t)[3], dtype=torch.float64)
        return self.g(self.check_time(t))

    def reverse_drift(self, x: Tensor, t, score: Tensor, eta: float = 1.0) -> Tensor:
        if is_scalar_time(t):
            _, _, f, g = self.schedule(t)
            return f * x - 0.5 * (1.0 + eta**2) * g * g * score
        return super().reverse_drift(x, t, score, eta)

    # -- schedule (public, validated) --------------------------------------------------------
    def alpha(self, t) -> Tensor:
        if is_scalar_time(t):
            return torch.tensor(self.schedule(t)[0], dtype=torch.float64)
        return torch.exp(self._log_alpha(self.check_time(t)))

    def log_alpha(self, t) -> Tensor:
        return self._log_alpha(self.check_time(t))

    def log_sigma(self, t) -> Tensor:
        """log sigma(t), -inf where sigma = 0 (finite where sigma underflows a float64)."""
        return self._log_sigma(self.check_time(t))

    def sigma(self, t) -> Tensor:
        if is_scalar_time(t):
            return torch.tensor(self.schedule(t)[1], dtype=torch.float64)
        return self._sigma(self.check_time(t))

    def d_alpha(self, t) -> Tensor:
        """alpha'(t) = f(t) alpha(t)."""
        t = self.check_time(t)
        return self.f(t) * torch.exp(self._log_alpha(t))

    def d_sigma(self, t) -> Tensor:
        """sigma'(t) = f sigma + g^2 / (2 sigma) (from d sigma^2/dt = 2 f sigma^2 + g^2)."""
        t = self.check_time(t)
        s = self._sigma(t)
        return self.f(t) * s + self.g(t) ** 2 / (2 * s)

    def rates(self, t) -> tuple[float, float]:
        """(alpha'(t), sigma'(t)) at one time as Python floats, memoised like ``schedule``."""
        v = self.check_scalar_time(t)
        memo = self.__dict__.setdefault("_rates_memo", {})
        hit = memo.get(v)
        if hit is None:
            tt = torch.tensor(v, dtype=torch.float64)
            hit = (float(self.d_alpha(tt)), float(self.d_sigma(tt)))
            if len(memo) >= 65536:
                memo.clear()
            memo[v] = hit
        return hit

    def log_snr(self, t) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        t = self.check_time(t)
        return 2 * (self._log_alpha(t) - self._log_sigma(t))

    def t_from_log_snr(self, lam) -> Tensor:
        """The inverse of lambda(t). lambda outside [lambda(T), lambda(0)] raises ValueError."""
        lam = as_time(lam)
        lo = float(self.log_snr(self.T))
        hi = float(self.log_snr(0.0))
        if lam.numel() and (
            bool(torch.isnan(lam).any())
            or float(lam.min()) < lo - 1e-9 * max(1.0, abs(lo))
            or float(lam.max()) > hi + 1e-9 * max(1.0, abs(hi))
        ):
            raise ValueError(
                f"log-SNR must lie in [lambda(T), lambda(0)] = [{lo}, {hi}]; "
                f"got values in [{float(lam.min())}, {float(lam.max())}]"
            )
        return self._t_from_log_snr(lam.clamp(lo, hi)).clamp(0.0, self.T)

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) as float64 tensors of t's shape, t validated once."""
        t = self.check_time(t)
        return torch.exp(self._log_alpha(t)), self._sigma(t)

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and std of x_t | x_0: (alpha(t) x0, sigma(t) broadcast to x0)."""
        a, s = (broadcast_to(c, x0) for c in self.alpha_sigma(t))
        return a * x0, s.expand_as(x0)

    def perturb(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        a, s = (broadcast_to(c, x0) for c in self.alpha_sigma(t))
        return a * x0 + s * noise

    def prior_std(self) -> float:
        """Std of the prior at T assuming unit-variance data: sqrt(alpha(T)^2 + sigma(T)^2)."""
        T = torch.tensor(self.T, dtype=torch.float64)
        return float(torch.sqrt(torch.exp(2 * self._log_alpha(T)) + self._sigma(T) ** 2))

    # -- numerical schedule for custom SDEs ---------------------------------------------------
    # Everything is kept in log space: log alpha = int f directly, and
    #     log sigma(t) = log alpha(t) + 1/2 log(sigma0^2 + int_0^t g^2 exp(-2 log alpha)),
    # whose integral is accumulated by log-sum-exp over the quadrature nodes. A schedule whose alpha
    # spans hundreds of orders of magnitude (f = -2000 on [0, 1]: alpha(1) = e^-2000) then still gives
    # finite sigma and lambda; an alpha above float64's range (int f > 709.78) is refused by name.
    def _grid(self):
        """Cached nodes t_k, cumulative int_0^{t_k} f and log(sigma0^2 + int_0^{t_k} g^2/alpha^2)."""
        if self._grid_cache is None:
            nodes = torch.linspace(0.0, self.T, self.n_grid + 1, dtype=torch.float64)
            a, b = nodes[:-1], nodes[1:]
            F_inc = self._gl(self.f, a, b)
            F = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(F_inc, 0)])
            self._check_log_alpha(F, nodes)
            self._grid_cache = (nodes, F, None)
            logS_inc = self._log_gl(self._log_s_integrand, a, b)
            log_s0 = torch.tensor([2 * math.log(abs(self.sigma0())) if self.sigma0() else -math.inf],
                                  dtype=torch.float64)
            logS = torch.logcumsumexp(torch.cat([log_s0, logS_inc]), 0)
            if bool(torch.isnan(logS).any()) or bool((logS == math.inf).any()):
                raise ValueError(f"{type(self).__name__}: int_0^t g(s)^2 / alpha(s)^2 ds is not finite on [0, T] = "
                                 f"[0, {self.T}]; check g(t) (it must be finite; g^2 / alpha^2 must not overflow)")
            self._grid_cache = (nodes, F, logS)
        return self._grid_cache

    def _check_log_alpha(self, F: Tensor, nodes: Tensor) -> None:
        if not bool(torch.isfinite(F).all()):
            bad = nodes[1:][~torch.isfinite(F[1:])][0]
            raise ValueError(f"{type(self).__name__}: int_0^t f is not finite at t = {float(bad):.6g}; f(t) must be "
                             "finite on [0, T]")
        if float(F.max()) > _MAX_LOG:
            k = int(torch.argmax((F > _MAX_LOG).to(torch.int8)))
            raise ValueError(
                f"{type(self).__name__}: alpha(t) = exp(int_0^t f) overflows float64 (int f = {float(F[k]):.6g} > "
                f"{_MAX_LOG:.2f} at t = {float(nodes[k]):.6g}); such a schedule has no representable marginal "
                "mean: scale f down or shorten T")

    @staticmethod
    def _gl(fn, a: Tensor, b: Tensor) -> Tensor:
        """int_a^b fn elementwise by 8-point Gauss-Legendre."""
        h = (b - a).unsqueeze(-1)
        s = a.unsqueeze(-1) + h * _GL_X
        return (fn(s.reshape(-1)).reshape(s.shape) * _GL_W).sum(-1) * h.squeeze(-1)

    @staticmethod
    def _log_gl(log_fn, a: Tensor, b: Tensor) -> Tensor:
        """log int_a^b exp(log_fn) elementwise by 8-point Gauss-Legendre, summed by log-sum-exp
        (-inf for an empty interval)."""
        h = (b - a).unsqueeze(-1)
        s = a.unsqueeze(-1) + h * _GL_X
        terms = log_fn(s.reshape(-1)).reshape(s.shape) + torch.log(_GL_W)
        return torch.logsumexp(terms, -1) + torch.log(h.squeeze(-1))

    def _log_s_integrand(self, s: Tensor) -> Tensor:
        """log(g^2 / alpha^2) = 2 log|g| - 2 log alpha."""
        return 2 * torch.log(self.g(s).abs()) - 2 * self._log_alpha(s)

    def _locate(self, t: Tensor):
        nodes = self._grid()[0]
        k = torch.searchsorted(nodes, t.contiguous(), right=True) - 1
        return k.clamp(0, self.n_grid - 1), nodes

    def _log_alpha(self, t: Tensor) -> Tensor:
        _, F, _ = self._grid()
        k, nodes = self._locate(t)
        flat_t, flat_k = t.reshape(-1), k.reshape(-1)
        out = F[flat_k] + self._gl(self.f, nodes[flat_k], flat_t)
        return out.reshape(t.shape)

    def _log_sigma(self, t: Tensor) -> Tensor:
        """log sigma(t); -inf where sigma = 0. A subclass with a closed-form ``_sigma`` gets its log;
        otherwise log alpha(t) + 1/2 log(sigma0^2 + int_0^t g^2 / alpha^2) from the cached grid."""
        if type(self)._sigma is not LinearSDE._sigma:
            return torch.log(self._sigma(t))
        _, _, logS = self._grid()
        k, nodes = self._locate(t)
        flat_t, flat_k = t.reshape(-1), k.reshape(-1)
        log_s = torch.logaddexp(logS[flat_k], self._log_gl(self._log_s_integrand, nodes[flat_k], flat_t))
        return (self._log_alpha(flat_t) + 0.5 * log_s).reshape(t.shape)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_sigma(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Bisection on the strictly decreasing lambda(t), bracketed on the cached grid."""
        nodes = self._grid()[0]
        lam_nodes = 2 * (self._log_alpha(nodes) - self._log_sigma(nodes))
        flat = lam.reshape(-1)
        # lambda decreasing: count the nodes with lambda >= target
        k = (lam_nodes.unsqueeze(0) >= flat.unsqueeze(1)).sum(1) - 1
        k = k.clamp(0, self.n_grid - 1)
        lo, hi = nodes[k].clone(), nodes[k + 1].clone()
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lm = 2 * (self._log_alpha(mid) - self._log_sigma(mid))
            above = lm > flat
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).reshape(lam.shape)


# The built-in SDEs and the flow-matching paths, each in its own module on top of LinearSDE (imported last:
# they import this module).
from .diffusion_sdes import (  # noqa: E402
    SDE_NAMES,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteVPSDE,
    SubVPSDE,
    cosine_beta_schedule,
    linear_beta_schedule,
    rescale_zero_terminal_snr,
    sde_from_name,
)
from .flow_paths import (  # noqa: E402
    PATH_NAMES,
    AffinePath,
    CondOT,
    CosinePath,
    PolynomialPath,
    RectifiedFlow,
    TimeShift,
    path_from_name,
    time_shift,
)
