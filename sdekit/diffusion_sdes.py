"""The built-in diffusion SDEs: VP (DDPM in continuous time), sub-VP, VE, cosine VP and the discrete-time DDPM
schedules as a ``DiscreteVPSDE``, each with closed-form alpha, sigma and t(lambda); ``SDE_NAMES`` and
``sde_from_name`` for the CLI. Every one is a ``sdekit.sde.LinearSDE``; ``sdekit.sde`` re-exports these names.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "linear_beta_schedule", "cosine_beta_schedule",
           "rescale_zero_terminal_snr", "SDE_NAMES", "sde_from_name"]


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
