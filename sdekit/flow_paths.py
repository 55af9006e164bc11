"""Flow-matching probability paths as linear SDEs: affine Gaussian paths x_t = alpha(t) x0 + sigma(t) eps
that end at pure noise, alpha(T) = 0 and sigma(T) = 1.

``AffinePath`` (the base: f and g from alpha, sigma and their derivatives), ``RectifiedFlow`` / ``CondOT``,
``PolynomialPath``, ``CosinePath``, SD3's ``time_shift`` and the ``TimeShift`` path, and the names the CLI and
checkpoints use (``PATH_NAMES``, ``path_from_name``). Every path is a ``sdekit.sde.LinearSDE``, so every
solver, likelihood and training loss runs on it unchanged; ``sdekit.sde`` re-exports these names.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .sde import LinearSDE, as_time

Tensor = torch.Tensor

__all__ = ["AffinePath", "RectifiedFlow", "CondOT", "PolynomialPath", "CosinePath", "TimeShift", "time_shift",
           "PATH_NAMES", "path_from_name"]


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
    u = as_time(t) / T
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

    # the base through its public, validated methods (tau lies in [0, T]: the checks pass and clamp nothing)
    def _log_alpha(self, t):
        return self.base.log_alpha(self._tau(t))

    def _sigma(self, t):
        return self.base.alpha_sigma(self._tau(t))[1]

    def _log_sigma(self, t):
        return self.base.log_sigma(self._tau(t))

    def f(self, t):
        return self.base.f(self._tau(t)) * self._dtau(t)

    def _dtau(self, t):
        return self.shift / (1 + (self.shift - 1) * t / self.T) ** 2

    def _d_alpha(self, t):
        return self.base.d_alpha(self._tau(t)) * self._dtau(t)

    def _d_sigma(self, t):
        return self.base.d_sigma(self._tau(t)) * self._dtau(t)

    def _t_from_log_snr(self, lam):
        w = self.base.t_from_log_snr(lam) / self.T  # lam lies in this path's range, which is the base's
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
