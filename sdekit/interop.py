"""Plugging networks from other libraries into sdekit (imported lazily: neither is a dependency).

diffusers: ``from_diffusers(unet, scheduler)`` wraps a ``UNet2DModel`` as ``net(x, t)`` and builds a
``DiscreteVPSDE`` from the ``DDPMScheduler``'s beta table. Step n (0-based) sits at t_n = (n + 1)/N
in sdekit's DiscreteVPSDE, so the wrapper feeds the UNet the (fractional) timestep n = t N - 1; at
the grid times it gets exactly the integers it was trained on. The scheduler's ``prediction_type``
maps to the adapter: "epsilon" -> eps, "v_prediction" -> v, "sample" -> x0.

k-diffusion / EDM: a denoiser D(x, sigma) estimates x0 from x = x0 + sigma n (Karras et al. 2022).
``from_denoiser(D, sde)`` wraps it for any linear SDE as an x0-prediction ``net(x, t)`` through the
scale-invariance x_t / alpha = x0 + (sigma/alpha) n:  x0_hat = D(x_t / alpha(t), sigma(t) / alpha(t)).
With alpha = 1 (``VESDE`` or ``EDMSDE``) that is simply D(x, sigma(t)).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .parameterization import ScoreModel
from .sde import DiscreteVPSDE, LinearSDE, broadcast_to, cosine_beta_schedule

Tensor = torch.Tensor

__all__ = ["EDMSDE", "DenoiserNet", "from_denoiser", "DiffusersUNet", "sde_from_scheduler", "from_diffusers"]


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


class DiffusersUNet(torch.nn.Module):
    """A diffusers ``UNet2DModel`` as net(x, t): timestep = t N - 1 (float; integer on the DDPM grid).

    ``class_labels`` (optional, (batch,)) is passed through for class-conditional UNets."""

    def __init__(self, unet, num_train_timesteps: int, class_labels: Optional[Tensor] = None):
        super().__init__()
        self.unet = unet
        self.N = int(num_train_timesteps)
        self.class_labels = class_labels

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        timestep = (t.to(torch.float64) * self.N - 1).to(torch.float32).to(x.device)
        kwargs = {} if self.class_labels is None else {"class_labels": self.class_labels}
        return self.unet(x, timestep, **kwargs).sample


def _scheduler_config(scheduler) -> dict:
    cfg = getattr(scheduler, "config", scheduler)
    return dict(cfg)


def sde_from_scheduler(scheduler) -> DiscreteVPSDE:
    """A ``DiscreteVPSDE`` with the beta table of a diffusers DDPM/DDIM scheduler (or its config dict).

    The table is recomputed in float64 from the config ("linear", "scaled_linear",
    "squaredcos_cap_v2", or ``trained_betas``); any other schedule falls back to ``scheduler.betas``.
    """
    cfg = _scheduler_config(scheduler)
    n = int(cfg.get("num_train_timesteps", 1000))
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    elif kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = cosine_beta_schedule(n)
    elif hasattr(scheduler, "betas"):
        betas = torch.as_tensor(scheduler.betas, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r}; accepted: linear, scaled_linear, "
                         "squaredcos_cap_v2, or trained_betas")
    return DiscreteVPSDE(betas)


_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def from_diffusers(unet, scheduler, class_labels: Optional[Tensor] = None) -> ScoreModel:
    """ScoreModel for a diffusers ``UNet2DModel`` trained with ``scheduler`` (DDPMScheduler or its config)."""
    cfg = _scheduler_config(scheduler)
    ptype = cfg.get("prediction_type", "epsilon")
    if ptype not in _PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {ptype!r}; accepted: {', '.join(_PREDICTION_TYPES)}")
    sde = sde_from_scheduler(scheduler)
    return ScoreModel(DiffusersUNet(unet, sde.N, class_labels), sde, prediction=_PREDICTION_TYPES[ptype])
