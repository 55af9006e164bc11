"""Exact ground truth: a Gaussian mixture with diagonal components under any linear SDE.

p_0 = sum_k w_k N(mu_k, diag(s_k^2)). A linear SDE maps each component to
    N(alpha(t) mu_k, diag(alpha(t)^2 s_k^2 + sigma(t)^2)),
so p_t, its score and its log-density are exact at every t, for built-in and custom SDEs alike:
    log p_t(x) = logsumexp_k [log w_k + log N(x; alpha mu_k, v_k)],  v_k = alpha^2 s_k^2 + sigma^2,
    score(x)   = sum_k r_k(x) (alpha mu_k - x) / v_k,  r_k the posterior responsibilities,
    E[x0 | x]  = sum_k r_k(x) (mu_k + alpha s_k^2 (x - alpha mu_k) / v_k)   (``denoise``).
All of it holds at alpha = 0 (flow paths at t = T: p_T = N(0, sigma^2 I), E[x0 | x] = the data mean) and at
sigma = 0 (t = 0: E[x0 | x] = x).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .parameterization import ScoreModel
from .sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Mixture of diagonal Gaussians over events of shape ``event_shape`` (means[k].shape).

    weights: (K,) positive (normalised here); means: (K, *event_shape); stds: a scalar, (K,) or
    (K, *event_shape), all positive. Parameters are kept in float64; results follow x's dtype.
    """

    def __init__(self, weights, means, stds):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape); got {tuple(means.shape)}")
        K = means.shape[0]
        weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},); got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise ValueError("mixture weights must be finite and positive")
        stds = torch.as_tensor(stds, dtype=torch.float64)
        flat_means = means.reshape(K, -1)
        if stds.ndim == 0:
            stds = stds.expand_as(flat_means)
        elif stds.shape == (K,):
            stds = stds.unsqueeze(1).expand_as(flat_means)
        elif stds.shape == means.shape:
            stds = stds.reshape(K, -1)
        else:
            raise ValueError(
                f"stds must be a scalar, shape (K,) = ({K},) or shape {tuple(means.shape)}; got {tuple(stds.shape)}"
            )
        if not bool(torch.isfinite(stds).all()) or bool((stds <= 0).any()):
            raise ValueError("mixture stds must be finite and positive")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("mixture means must be finite")
        self.event_shape = tuple(means.shape[1:])
        self.dim = flat_means.shape[1]
        self.weights = weights / weights.sum()
        self.means = flat_means.contiguous()
        self.stds = stds.contiguous()

    @classmethod
    def default(cls, dim: int = 2, seed: int = 0) -> "GaussianMixture":
        """A reproducible test mixture: 2 sharp and 2 broad components with uneven weights."""
        gen = torch.Generator().manual_seed(seed)
        means = torch.randn(4, dim, generator=gen, dtype=torch.float64) * 1.5
        stds = torch.tensor([0.05, 0.1, 0.4, 0.6], dtype=torch.float64)
        return cls(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, stds)

    # -- helpers -------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.event_shape))}); got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _component_params(self, x: Tensor, t, sde: Optional[LinearSDE]):
        """Per-row (batch, K, D) means and variances of the components at time t."""
        if sde is None:
            if t is not None and float(torch.as_tensor(t).abs().max()) != 0:
                raise ValueError("a time t > 0 needs an sde")
            return self.means.unsqueeze(0).to(x.device), (self.stds**2).unsqueeze(0).to(x.device)
        t = sde.check_time(t).to(x.device)
        if t.ndim == 1 and t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
        if t.ndim > 1:
            raise ValueError(f"t must be a scalar or a (batch,) tensor; got shape {tuple(t.shape)}")
        a = sde.alpha(t).reshape(-1, 1, 1)
        s = sde.sigma(t).reshape(-1, 1, 1)
        means = a * self.means.to(x.device)
        var = a**2 * self.stds.to(x.device) ** 2 + s**2
        return means, var

    def _component_log_probs(self, xf: Tensor, means: Tensor, var: Tensor) -> Tensor:
        diff = xf.unsqueeze(1) - means  # (B, K, D)
        logn = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return logn + torch.log(self.weights.to(xf.device))

    # -- public ----------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, t=0.0, sde: Optional[LinearSDE] = None) -> Tensor:
        """log p_t(x), shape (batch,), in x's dtype. t = 0 (no sde) is the data density."""
        xf = self._flat(x)
        means, var = self._component_params(x, t, sde)
        return torch.logsumexp(self._component_log_probs(xf, means, var), dim=1).to(x.dtype)

    def score(self, x: Tensor, t=0.0, sde: Optional[LinearSDE] = None) -> Tensor:
        """grad_x log p_t(x), same shape and dtype as x."""
        xf = self._flat(x)
        means, var = self._component_params(x, t, sde)
        resp = torch.softmax(self._component_log_probs(xf, means, var), dim=1).unsqueeze(-1)
        out = (resp * (means - xf.unsqueeze(1)) / var).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def component(self, x: Tensor, t=0.0, sde: Optional[LinearSDE] = None) -> Tensor:
        """The component each row most likely came from at time t: argmax_k r_k(x), with
        r_k(x) proportional to w_k N(x; alpha mu_k, v_k) the posterior responsibility. Shape (batch,), int64."""
        xf = self._flat(x)
        means, var = self._component_params(x, t, sde)
        return self._component_log_probs(xf, means, var).argmax(dim=1)

    def denoise(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """E[x0 | x_t = x] under ``sde``, same shape and dtype as x (finite at alpha = 0 and at sigma = 0)."""
        xf = self._flat(x)
        means, var = self._component_params(x, t, sde)
        resp = torch.softmax(self._component_log_probs(xf, means, var), dim=1).unsqueeze(-1)
        a = sde.alpha(sde.check_time(t)).to(xf.device).reshape(-1, 1, 1)
        post = self.means.to(xf.device) + a * self.stds.to(xf.device) ** 2 * (xf.unsqueeze(1) - means) / var
        return (resp * post).sum(1).reshape(x.shape).to(x.dtype)

    def velocity(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """The exact probability-flow velocity alpha' E[x0 | x] + sigma' E[eps | x], E[eps | x] = -sigma score:
        finite on the whole of [0, T], alpha(T) = 0 included."""
        t = sde.check_time(t).to(x.device)
        da = sde.d_alpha(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        ds = sde.d_sigma(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        s = sde.sigma(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return da * self.denoise(x, t, sde) - ds * s * self.score(x, t, sde)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype=torch.float32) -> Tensor:
        """n exact draws from p_0, shape (n, *event_shape)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k] * z
        return x.reshape(n, *self.event_shape).to(dtype)

    def sample_t(self, n: int, t, sde: LinearSDE, generator: Optional[torch.Generator] = None,
                 dtype=torch.float32) -> Tensor:
        """n exact draws from p_t under ``sde``."""
        x0 = self.sample(n, generator=generator, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return sde.perturb(x0, t, noise).to(dtype)

    def mean(self) -> Tensor:
        return (self.weights.unsqueeze(1) * self.means).sum(0).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        """Full (D, D) covariance of p_0."""
        m = self.mean().reshape(-1)
        second = (self.weights[:, None, None] * (torch.diag_embed(self.stds**2)
                  + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def model(self, sde: LinearSDE, prediction: Optional[str] = None) -> ScoreModel:
        """A ``ScoreModel`` whose network is this mixture's exact prediction under ``sde``: the score, or for a
        path with alpha(T) = 0 (where the score cannot give x0) the velocity; ``prediction`` in
        ("score", "velocity") chooses."""
        if prediction is None:
            prediction = "velocity" if float(sde.alpha(sde.T)) == 0.0 else "score"
        if prediction not in ("score", "velocity"):
            raise ValueError(f"GaussianMixture.model gives prediction 'score' or 'velocity'; got {prediction!r}")
        return ScoreModel(_ExactScore(self, sde, prediction), sde, prediction=prediction)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.weights.numel()}, event_shape={self.event_shape})"


class _ExactScore(torch.nn.Module):
    """net(x, t) = exact score (or velocity) of the mixture at time t (t of shape (batch,))."""

    def __init__(self, gm: GaussianMixture, sde: LinearSDE, prediction: str = "score"):
        super().__init__()
        self.gm, self.sde, self.prediction = gm, sde, prediction

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        # t stays in the caller's dtype: check_time then allows float32 round-off at T
        if t.numel() > 1 and bool((t == t[0]).all()):
            t = t[0]  # one schedule evaluation for the whole batch
        if self.prediction == "velocity":
            return self.gm.velocity(x, t, self.sde)
        return self.gm.score(x, t, self.sde)
