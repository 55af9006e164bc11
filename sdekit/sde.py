"""Forward SDEs as objects.

General SDE:  dx = F(x, t) dt + G(t) dw,  t in [0, T].

Linear SDE:   dx = f(t) x dt + g(t) dw, with Gaussian transition
              x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),
              alpha(t) = exp(int_0^t f),  sigma(t)^2 = alpha(t)^2 (sigma(0)^2 + int_0^t g^2 / alpha^2),
              log-SNR lambda(t) = log(alpha^2 / sigma^2), strictly decreasing in t.

Reverse-time family (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 6 and 13):
              dx = [F(x, t) - (1 + eta^2)/2 G(t)^2 score(x, t)] dt + eta G(t) dw_bar;
eta = 1 is the reverse SDE, eta = 0 the probability-flow ODE.

This module imports nothing else of the package. All time arithmetic happens in float64; every
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
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "rescale_zero_terminal_snr",
    "broadcast_to",
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


def _as_time(t) -> Tensor:
    """Times as a float64 tensor (keeps the device of a tensor input)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _is_scalar(t) -> bool:
    """A time for the float fast paths; a 0-d tensor that requires grad takes the tensor paths (keeps its graph)."""
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
        if _is_scalar(t):
            return torch.tensor(self._check_scalar(t), dtype=torch.float64,
                                device=t.device if isinstance(t, Tensor) else None)
        tol = _tolerance(t)
        t = _as_time(t)
        if t.numel():
            lo, hi = (float(v) for v in torch.aminmax(t))
            if not (lo >= -tol and hi <= self.T * (1 + tol) + tol):  # NaN fails both comparisons
                raise ValueError(
                    f"time must lie in [0, T] = [0, {self.T}] for {type(self).__name__}; got values in [{lo}, {hi}]"
                )
        return t.clamp(0.0, self.T)

    def _check_scalar(self, t) -> float:
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
        v = self._check_scalar(t)
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
        if _is_scalar(t):
            return self.schedule(t)[2] * x
        return broadcast_to(self.f(self.check_time(t)), x) * x

    def diffusion(self, t) -> Tensor:
        if _is_scalar(t):
            return torch.tensor(self.schedule(t)[3], dtype=torch.float64)
        return self.g(self.check_time(t))

    def reverse_drift(self, x: Tensor, t, score: Tensor, eta: float = 1.0) -> Tensor:
        if _is_scalar(t):
            _, _, f, g = self.schedule(t)
            return f * x - 0.5 * (1.0 + eta**2) * g * g * score
        return super().reverse_drift(x, t, score, eta)

    # -- schedule (public, validated) --------------------------------------------------------
    def alpha(self, t) -> Tensor:
        if _is_scalar(t):
            return torch.tensor(self.schedule(t)[0], dtype=torch.float64)
        return torch.exp(self._log_alpha(self.check_time(t)))

    def log_alpha(self, t) -> Tensor:
        return self._log_alpha(self.check_time(t))

    def sigma(self, t) -> Tensor:
        if _is_scalar(t):
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
        v = self._check_scalar(t)
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
        lam = _as_time(lam)
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

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and std of x_t | x_0: (alpha(t) x0, sigma(t) broadcast to x0)."""
        t = self.check_time(t)
        a = broadcast_to(torch.exp(self._log_alpha(t)), x0)
        s = broadcast_to(self._sigma(t), x0)
        return a * x0, s.expand_as(x0)

    def perturb(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        t = self.check_time(t)
        return broadcast_to(torch.exp(self._log_alpha(t)), x0) * x0 + broadcast_to(self._sigma(t), x0) * noise

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


class VPSDE(LinearSDE):
    """Variance preserving SDE (Song et al. 2021; DDPM in continuous time).

    beta(t) = b0 + t (b1 - b0);  f = -beta/2;  g = sqrt(beta);
    log alpha = -B(t)/2 with B(t) = b0 t + (b1 - b0) t^2 / 2;  sigma^2 = 1 - alpha^2;
    lambda = -log(expm1(B));  t(lambda) solves B(t) = softplus(-lambda).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        if not (0 < beta_min <= beta_max):
            raise ValueError(f"VPSDE needs 0 < beta_min <= beta_max; got beta_min={beta_min}, beta_max={beta_max}")
        super().__init__(T=T, eps=eps)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _B(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_from_B(self, B: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))

    def _log_alpha(self, t):
        return -0.5 * self._B(t)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def _t_from_log_snr(self, lam):
        return self._t_from_B(torch.nn.functional.softplus(-lam))

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 11): same f as VP, g^2 = beta (1 - exp(-2 B(t))).

    alpha = exp(-B/2);  sigma = 1 - exp(-B) (a standard deviation, not a variance).
    With u = exp(-B): e^lambda = u / (1 - u)^2, so u = 2 e^lambda / (2 e^lambda + 1 + sqrt(4 e^lambda + 1)).
    """

    def g(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self._B(t)))

    def _sigma(self, t):
        return -torch.expm1(-self._B(t))

    def _t_from_log_snr(self, lam):
        # u = 2 e^lam / (2 e^lam + 1 + sqrt(4 e^lam + 1)); B = -log u, computed in log space.
        e = torch.exp(lam)
        log_u = math.log(2.0) + lam - torch.log(2 * e + 1 + torch.sqrt(4 * e + 1))
        return self._t_from_B(-log_u)

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class VESDE(LinearSDE):
    """Variance exploding SDE (Song & Ermon 2019; Song et al. 2021).

    g(t) = sigma_min r^t sqrt(2 log r), r = sigma_max / sigma_min;  f = 0;  alpha = 1.
    sigma(t)^2 = int_0^t g^2 = sigma_min^2 (r^{2t} - 1): the marginal consistent with g, so sigma(0) = 0.
    The published convention sigma(t) = sigma_min r^t ignores the sigma_min^2 that is not produced by
    g; the two differ by less than sigma_min^2 in variance. t(lambda) = log1p(e^-lambda / sigma_min^2) / (2 log r).
    The prior is N(0, sigma(T)^2 I), as published (data variance is negligible beside sigma_max^2).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
        super().__init__(T=T, eps=eps)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_r = math.log(self.sigma_max / self.sigma_min) / self.T

    def f(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return self.sigma_min * torch.exp(self._log_r * t) * math.sqrt(2 * self._log_r)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_r * t))

    def _t_from_log_snr(self, lam):
        return torch.log1p(torch.exp(-lam) / self.sigma_min**2) / (2 * self._log_r)

    def prior_std(self) -> float:
        return float(self._sigma(torch.tensor(self.T, dtype=torch.float64)))

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, eps={self.eps})"


class CosineVPSDE(LinearSDE):
    """VP SDE with the cosine schedule of improved DDPM (Nichol & Dhariwal 2021).

    alpha(t)^2 = cos^2(phi(t)) / cos^2(phi(0)),  phi(t) = (t + s)/(1 + s) * pi/2;  sigma^2 = 1 - alpha^2;
    beta(t) = -d log alpha^2 / dt = pi/(1 + s) tan(phi(t));  f = -beta/2;  g = sqrt(beta).
    T defaults to 0.9946 (as in DPM-Solver) so that lambda(T) stays finite and beta bounded.
    t(lambda): alpha^2 = sigmoid(lambda), t = (1 + s) 2/pi arccos(alpha cos phi(0)) - s.
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946, eps: float = 1e-3):
        if not (s > 0):
            raise ValueError(f"CosineVPSDE needs s > 0; got {s}")
        if not (0 < T < 1):
            raise ValueError(f"CosineVPSDE needs 0 < T < 1 (alpha(1) = 0); got {T}")
        super().__init__(T=T, eps=eps)
        self.s = float(s)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))
        self._tan0 = math.tan(self.s / (1 + self.s) * math.pi / 2)

    def _phi(self, t):
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def beta(self, t):
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))

    def _log_alpha(self, t):
        # cos(phi0 + d) / cos(phi0) = 1 - 2 sin^2(d/2) - tan(phi0) sin(d) with d = phi(t) - phi(0) = t pi/(2(1 + s)):
        # exactly 1 at t = 0 on every device and torch release, never above 1, and no cancellation for small t
        # (log cos(phi(t)) - log cos(phi(0)) rounds to +1e-20 at t = 0 on some releases: sigma(0) = NaN).
        d = t * (math.pi / (2 * (1 + self.s)))
        return torch.log1p(-(2 * torch.sin(0.5 * d) ** 2 + self._tan0 * torch.sin(d))).clamp(max=0.0)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def _t_from_log_snr(self, lam):
        alpha = torch.sqrt(torch.sigmoid(lam))
        return (1 + self.s) * 2 / math.pi * torch.arccos(alpha * math.exp(self._log_cos0)) - self.s

    def __repr__(self):
        return f"CosineVPSDE(s={self.s}, T={self.T}, eps={self.eps})"


def linear_beta_schedule(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The DDPM table (Ho et al. 2020): betas evenly spaced from beta_start to beta_end, float64."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def cosine_beta_schedule(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The improved-DDPM table (Nichol & Dhariwal 2021): beta_n = 1 - abar(n+1)/abar(n), clipped."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas) -> Tensor:
    """A beta table rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", Algorithm 1; diffusers' ``rescale_betas_zero_snr``), in float64: sqrt(abar) is shifted so
    its last entry is 0 and scaled so its first keeps its value, then betas = 1 - abar_n/abar_{n-1}. The last beta
    is exactly 1 (abar_{N-1} = 0: x at the last step is pure noise)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if betas.numel() < 2:
        raise ValueError("rescale_zero_terminal_snr needs at least two betas")
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = float(root[0]), float(root[-1])
    if not first > last:
        raise ValueError("rescale_zero_terminal_snr needs a decreasing abar (first > last)")
    abar = ((root - last) * (first / (first - last))) ** 2
    return 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


class DiscreteVPSDE(LinearSDE):
    """A DDPM beta table placed on continuous time.

    Step n (0-based, n = 0..N-1) sits at t_n = (n + 1)/N with alpha(t_n)^2 = abar_n = prod_{i<=n} (1 - beta_i)
    exactly; log alpha is piecewise linear in t between the steps (and from log alpha(0) = 0 to t_0),
    so f(t) is piecewise constant and g^2 = -2 f keeps sigma^2 = 1 - alpha^2. T = 1, eps = t_0 = 1/N.

    Zero terminal SNR (a last beta of exactly 1, as ``rescale_zero_terminal_snr`` gives): abar_{N-1} = 0, so
    alpha(T) = 0 and x_T is pure noise, as on the flow-matching paths (``AffinePath``). On the last segment
    [(N-1)/N, 1] alpha is then linear in t, alpha = alpha_{N-2} (1 - w) with w = t N - (N - 1), so that
    alpha' = -N alpha_{N-2} stays finite while f = -N/(1 - w) and g^2 = -2 f are infinite at T and
    lambda(T) = -inf; every other segment is unchanged. ``zero_snr`` says which kind of table this is.
    """

    def __init__(self, betas, eps: Optional[float] = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("DiscreteVPSDE needs at least one beta")
        head = betas[:-1]
        if not bool(torch.isfinite(betas).all()) or bool((betas <= 0).any()) or bool((head >= 1).any()) \
                or float(betas[-1]) > 1 or (betas.numel() == 1 and float(betas[-1]) >= 1):
            raise ValueError("DiscreteVPSDE betas must all lie in the open interval (0, 1), except the last, which may "
                             "be exactly 1 (zero terminal SNR, rescale_zero_terminal_snr) when there are at least two")
        self.N = betas.numel()
        super().__init__(T=1.0, eps=1.0 / self.N if eps is None else eps)
        self.betas = betas
        self.zero_snr = float(betas[-1]) == 1.0
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        if self.zero_snr:
            self.alphas_cumprod[-1] = 0.0
        # knots of the piecewise-linear log alpha: t = 0, 1/N, ..., 1 (the last -inf for a zero-SNR table)
        self._knots_t = torch.arange(self.N + 1, dtype=torch.float64) / self.N
        self._knots_la = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(self.alphas_cumprod)])

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVPSDE":
        return cls(linear_beta_schedule(n, beta_start, beta_end))

    @classmethod
    def cosine(cls, n: int = 1000, s: float = 0.008) -> "DiscreteVPSDE":
        return cls(cosine_beta_schedule(n, s))

    def step_time(self, n) -> Tensor:
        """t_n = (n + 1)/N for 0-based step index n."""
        return (torch.as_tensor(n, dtype=torch.float64) + 1) / self.N

    def _segment(self, t: Tensor) -> Tensor:
        return (t * self.N).floor().long().clamp(0, self.N - 1)

    def _last(self, k: Tensor) -> Tensor:
        """Whether segment k is a zero-SNR table's last one (alpha linear in t down to 0)."""
        return k == self.N - 1 if self.zero_snr else torch.zeros_like(k, dtype=torch.bool)

    def f(self, t):
        k = self._segment(t)
        slope = (self._knots_la[k + 1] - self._knots_la[k]) * self.N
        if not self.zero_snr:
            return slope
        w = t * self.N - k
        return torch.where(self._last(k), -self.N / (1 - w), slope)

    def g(self, t):
        return torch.sqrt(-2 * self.f(t))

    def _log_alpha(self, t):
        k = self._segment(t)
        w = t * self.N - k
        if self.zero_snr:  # the last segment: log alpha = log alpha_{N-2} + log(1 - w), -inf at T
            lin = self._knots_la[k] + w * torch.where(self._last(k), 0.0, self._knots_la[k + 1] - self._knots_la[k])
            return torch.where(self._last(k), self._knots_la[k] + torch.log1p(-w.clamp(max=1.0)), lin).clamp(max=0.0)
        # knots are <= 0 and log alpha(0) = 0 exactly; the clamp keeps rounding from lifting alpha above 1
        return (self._knots_la[k] + w * (self._knots_la[k + 1] - self._knots_la[k])).clamp(max=0.0)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def d_alpha(self, t) -> Tensor:
        """alpha'(t) = f alpha; on a zero-SNR table's last segment -N alpha_{N-2}, finite at T."""
        t = self.check_time(t)
        out = self.f(t) * torch.exp(self._log_alpha(t))
        if not self.zero_snr:
            return out
        k = self._segment(t)
        return torch.where(self._last(k), -self.N * torch.exp(self._knots_la[k]), out)

    def d_sigma(self, t) -> Tensor:
        """sigma'(t); on a zero-SNR table -alpha alpha'/sigma (sigma^2 = 1 - alpha^2), finite at T."""
        if not self.zero_snr:
            return super().d_sigma(t)
        t = self.check_time(t)
        return -torch.exp(self._log_alpha(t)) * self.d_alpha(t) / self._sigma(t)

    def _t_from_log_snr(self, lam):
        # alpha^2 = sigmoid(lambda); log alpha is decreasing and piecewise linear in t: invert exactly.
        la = 0.5 * torch.nn.functional.logsigmoid(lam)
        neg = -self._knots_la  # increasing (+inf last on a zero-SNR table)
        k = (torch.searchsorted(neg, (-la).contiguous(), right=True) - 1).clamp(0, self.N - 1)
        if self.zero_snr:
            last = self._last(k)
            w_lin = (-la - neg[k]) / torch.where(last, 1.0, neg[k + 1] - neg[k])
            w = torch.where(last, -torch.expm1(la - self._knots_la[k]), w_lin)
        else:
            w = (-la - neg[k]) / (neg[k + 1] - neg[k])
        return (k + w) / self.N

    def __repr__(self):
        return f"DiscreteVPSDE(N={self.N}, eps={self.eps}{', zero_snr=True' if self.zero_snr else ''})"


SDE_NAMES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE}


def sde_from_name(name: str, **kwargs) -> LinearSDE:
    """A built-in SDE by short name (vp, subvp, ve, cosine), with its keyword arguments."""
    if name not in SDE_NAMES:
        raise ValueError(f"unknown sde {name!r}; accepted: {', '.join(SDE_NAMES)}")
    return SDE_NAMES[name](**kwargs)


# -- flow matching: affine Gaussian paths with alpha(T) = 0 ---------------------------------------------
class AffinePath(LinearSDE):
    """A Gaussian probability path x_t = alpha(t) x0 + sigma(t) eps given by closed forms, as a LinearSDE.

    The paths of flow matching (Lipman et al. 2023; Liu et al. 2023, "rectified flow"; the schedulers of
    facebookresearch/flow_matching, whose time runs the other way: t_fm = 1 - t here) end at pure noise,
    alpha(T) = 0 and sigma(T) = 1, so the prior N(0, I) is exactly p_T. f and g follow from alpha, sigma:

        f = alpha'/alpha,   g^2 = d sigma^2/dt - 2 f sigma^2 = 2 sigma (sigma' - f sigma),

    both infinite at t = T (f -> -inf, g -> inf); lambda(T) = -inf. The velocity (the probability-flow
    drift, ``prediction="velocity"``) u = alpha' x0 + sigma' eps stays finite there, and the solvers that
    work in x0 reach t = T exactly (``sdekit.solvers.exponential``). A subclass gives ``_log_alpha``,
    ``_sigma``, ``_d_alpha`` and ``_d_sigma`` (float64 tensors in and out); ``_t_from_log_snr`` defaults to
    bisection on the strictly decreasing lambda.
    """

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        super().__init__(T=T, eps=eps)

    def _d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def f(self, t):
        return self._d_alpha(t) / torch.exp(self._log_alpha(t))

    def g(self, t):
        s = self._sigma(t)
        return torch.sqrt((2 * s * (self._d_sigma(t) - self.f(t) * s)).clamp(min=0.0))

    def d_alpha(self, t) -> Tensor:
        return self._d_alpha(self.check_time(t))

    def d_sigma(self, t) -> Tensor:
        return self._d_sigma(self.check_time(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = 2 * (self._log_alpha(mid) - self._log_sigma(mid)) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def config(self) -> dict:
        """Keyword arguments that rebuild this path (for checkpoints)."""
        return {"eps": self.eps}

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({kw})"


class RectifiedFlow(AffinePath):
    """The rectified-flow / conditional optimal-transport path (Liu et al. 2023; Lipman et al. 2023;
    Stable Diffusion 3, Flux): x_t = (1 - t) x0 + t eps on [0, 1].

    alpha = 1 - t, sigma = t, velocity u = eps - x0;  f = -1/(1 - t), g^2 = 2t/(1 - t);
    lambda = 2 log((1 - t)/t),  t(lambda) = sigmoid(-lambda/2).
    """

    def __init__(self, eps: float = 1e-3):
        super().__init__(T=1.0, eps=eps)

    def _log_alpha(self, t):
        return torch.log1p(-t)

    def _sigma(self, t):
        return t.clone()

    def _d_alpha(self, t):
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t):
        return torch.ones_like(t)

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * lam)


class CondOT(RectifiedFlow):
    """facebookresearch/flow_matching's ``CondOTScheduler``: the same path as ``RectifiedFlow``."""


class PolynomialPath(AffinePath):
    """flow_matching's ``PolynomialConvexScheduler(n)`` in sdekit's time: alpha = (1 - t)^n, sigma = 1 - alpha.

    alpha' = -n (1 - t)^{n-1} = -sigma';  t(lambda) = 1 - sigmoid(lambda/2)^{1/n}.

    At t = T with n > 1, alpha' = sigma' = 0: the velocity u = alpha' x0 + sigma' eps is 0 for every x, so a velocity
    network's output there determines no x0, eps or score (det = alpha sigma' - sigma alpha' = 0; the limit t -> T
    needs the network below T). Solvers in t on the velocity (euler, heun_t, rk4, dopri5) start at T; solvers that
    need x0, eps or the score refuse t = T by name before any network call and run from t_start < T (1 - 1e-3:
    alpha = 1e-6 there, so x_T ~ N(0, I) is still exact to that level).
    """

    def __init__(self, n: float = 2.0, eps: float = 1e-3):
        if not (n > 0 and math.isfinite(n)):
            raise ValueError(f"PolynomialPath needs a finite exponent n > 0; got {n}")
        super().__init__(T=1.0, eps=eps)
        self.n = float(n)

    def _log_alpha(self, t):
        return self.n * torch.log1p(-t)

    def _sigma(self, t):
        return -torch.expm1(self._log_alpha(t))

    def f(self, t):
        return -self.n / (1 - t)  # alpha'/alpha without 0/0 at t = T

    def _d_alpha(self, t):
        return -self.n * (1 - t) ** (self.n - 1)

    def _d_sigma(self, t):
        return -self._d_alpha(t)

    def _t_from_log_snr(self, lam):
        return -torch.expm1(torch.nn.functional.logsigmoid(0.5 * lam) / self.n)

    def config(self):
        return {"n": self.n, "eps": self.eps}


class CosinePath(AffinePath):
    """flow_matching's ``CosineScheduler`` in sdekit's time: alpha = cos(pi t/2), sigma = sin(pi t/2)
    (variance preserving, with alpha(1) = 0 exactly: alpha is computed as sin(pi (1 - t)/2)).

    alpha' = -pi/2 sigma, sigma' = pi/2 alpha;  t(lambda) = 2/pi atan(e^{-lambda/2}).
    """

    def __init__(self, eps: float = 1e-3):
        super().__init__(T=1.0, eps=eps)

    def _log_alpha(self, t):
        return torch.log(torch.sin(0.5 * math.pi * (1 - t)))

    def _sigma(self, t):
        return torch.sin(0.5 * math.pi * t)

    def _d_alpha(self, t):
        return -0.5 * math.pi * self._sigma(t)

    def _d_sigma(self, t):
        return 0.5 * math.pi * torch.exp(self._log_alpha(t))

    def _t_from_log_snr(self, lam):
        return (2 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


def time_shift(t, shift: float, T: float = 1.0):
    """SD3's time shift (Esser et al. 2024, eq. 23): tau(t) = T shift u / (1 + (shift - 1) u), u = t/T.

    Monotone from [0, T] onto itself; on the rectified flow it multiplies sigma/alpha by ``shift``
    (lambda drops by 2 log shift). Applied to a grid it gives diffusers' ``FlowMatch*`` sigmas with ``shift``."""
    u = _as_time(t) / T
    return T * shift * u / (1 + (shift - 1) * u)


class TimeShift(AffinePath):
    """A path run on shifted time: alpha~(t) = alpha(tau(t)), sigma~(t) = sigma(tau(t)), tau = ``time_shift``.

    A network trained on ``base`` reads tau(t) as its time, so a sampling-time shift is a grid
    (``ts=time_shift(ts, shift)`` on ``base``); this class is for training and sampling in the shifted time
    itself. alpha~' = alpha'(tau) tau',  tau' = shift / (1 + (shift - 1) t/T)^2;
    t(lambda) = tau^{-1}(t_base(lambda)),  tau^{-1}(v) = T w / (shift - (shift - 1) w), w = v/T.
    """

    def __init__(self, base: LinearSDE, shift: float = 3.0, eps: Optional[float] = None):
        if not (shift > 0 and math.isfinite(shift)):
            raise ValueError(f"TimeShift needs a finite shift > 0; got {shift}")
        if not isinstance(base, LinearSDE):
            raise TypeError(f"TimeShift needs a LinearSDE base; got {type(base).__name__}")
        super().__init__(T=base.T, eps=base.eps if eps is None else eps)
        self.base, self.shift = base, float(shift)

    def _tau(self, t):
        return time_shift(t, self.shift, self.T).clamp(0.0, self.T)

    def _log_alpha(self, t):
        return self.base._log_alpha(self._tau(t))

    def _sigma(self, t):
        return self.base._sigma(self._tau(t))

    def _log_sigma(self, t):
        return self.base._log_sigma(self._tau(t))

    def f(self, t):
        return self.base.f(self._tau(t)) * self._dtau(t)

    def _dtau(self, t):
        return self.shift / (1 + (self.shift - 1) * t / self.T) ** 2

    def _d_alpha(self, t):
        return self.base.d_alpha(self._tau(t)) * self._dtau(t)

    def _d_sigma(self, t):
        return self.base.d_sigma(self._tau(t)) * self._dtau(t)

    def _t_from_log_snr(self, lam):
        w = self.base._t_from_log_snr(lam) / self.T
        return self.T * w / (self.shift - (self.shift - 1) * w)

    def config(self):
        return {"base": repr(self.base), "shift": self.shift, "eps": self.eps}

    def __repr__(self):
        return f"TimeShift({self.base!r}, shift={self.shift}, eps={self.eps})"


PATH_NAMES = {"rectified_flow": RectifiedFlow, "cond_ot": CondOT, "polynomial": PolynomialPath, "cosine": CosinePath}


def path_from_name(name: str, shift: Optional[float] = None, **kwargs) -> LinearSDE:
    """A flow-matching path by short name (rectified_flow, cond_ot, polynomial, cosine), optionally time-shifted."""
    if name not in PATH_NAMES:
        raise ValueError(f"unknown path {name!r}; accepted: {', '.join(PATH_NAMES)}")
    path = PATH_NAMES[name](**kwargs)
    return path if shift is None or shift == 1 else TimeShift(path, shift)
