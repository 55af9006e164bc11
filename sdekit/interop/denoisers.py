"""k-diffusion / EDM denoisers as sdekit models.

A denoiser D(x, sigma) estimates x0 from x = x0 + sigma n (Karras et al. 2022).
``from_denoiser(D, sde)`` wraps it for any linear SDE as an x0-prediction ``net(x, t)`` through the
scale-invariance x_t / alpha = x0 + (sigma/alpha) n:  x0_hat = D(x_t / alpha(t), sigma(t) / alpha(t)).
With alpha = 1 (``VESDE`` or ``EDMSDE``) that is simply D(x, sigma(t)).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..parameterization import ScoreModel
from ..sde import LinearSDE, broadcast_to

Tensor = torch.Tensor

__all__ = ["EDMSDE", "DenoiserNet", "from_denoiser"]


class EDMSDE(LinearSDE):
    """The EDM / k-diffusion forward process (Karras et al. 2022): x_t = x0 + t n, i.e. time is sigma.

    alpha = 1, sigma(t) = t, f = 0, g = sqrt(2 t) (so int_0^t g^2 = t^2); t in [0, sigma_max];
    lambda = -2 log t, t(lambda) = exp(-lambda/2). eps = sigma_min. The prior is N(0, sigma_max^2 I),
    as in EDM (the data variance is negligible beside sigma_max^2).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, T: Optional[float] = None,
                 eps: Optional[float] = None):
        T = sigma_max if T is None else T
        eps = sigma_min if eps is None else eps
        super().__init__(T=T, eps=eps)

    def f(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return torch.sqrt(2 * t)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return t.clone()

    def _t_from_log_snr(self, lam):
        return torch.exp(-lam / 2)

    def prior_std(self) -> float:
        return self.T

    def __repr__(self):
        return f"EDMSDE(sigma_min={self.eps}, sigma_max={self.T})"


class DenoiserNet(torch.nn.Module):
    """net(x, t) = D(x / alpha(t), sigma(t) / alpha(t)): an x0-prediction network for ``sde``."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE):
        super().__init__()
        self.denoiser = denoiser
        self.sde = sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = self.sde.check_time(t)
        a, s = self.sde.alpha(t), self.sde.sigma(t)
        sigma = (s / a).to(device=x.device, dtype=x.dtype)
        return self.denoiser(x / broadcast_to(a, x), sigma)


def from_denoiser(denoiser: Callable[[Tensor, Tensor], Tensor], sde: Optional[LinearSDE] = None) -> ScoreModel:
    """A k-diffusion-style denoiser D(x, sigma) (sigma of shape (batch,)) as a ScoreModel (x0 prediction).
    ``sde`` defaults to ``EDMSDE()``."""
    sde = EDMSDE() if sde is None else sde
    return ScoreModel(DenoiserNet(denoiser, sde), sde, prediction="x0")
