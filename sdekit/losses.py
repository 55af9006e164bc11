"""Denoising score matching (Vincent 2011; Song et al. 2021) for every prediction type.

For data x0, time t and noise eps ~ N(0, I), x_t = alpha(t) x0 + sigma(t) eps (``sde.perturb``).
The network's output (score, eps, v or x0, per ``ScoreModel.prediction``) is an affine function of
its implied noise estimate eps_hat (``sdekit.convert``), and the target of each kind is
    score: -eps / sigma    eps: eps    v: alpha eps - sigma x0    x0: x0.
Every weighting below is a function w(t) times the eps-space error ||eps_hat - eps||^2 (averaged
over the D features of a row, then over the batch), which is why the prediction type changes the
network's job but not the objective:

"simple"      w = 1, t ~ U[eps, T]. The DDPM "L_simple" (Ho et al. 2020). For a score model this is
              lambda(t) = sigma^2 in score space, the weighting of Song et al. 2021; for an x0 model
              it is (alpha/sigma)^2 = SNR in x0 space.
"likelihood"  the bound of Song, Durkan, Murray & Ermon 2021 ("Maximum likelihood training of
              score-based diffusion models", Thm 1), which weights score matching by g(t)^2:
                  J = 1/2 int_eps^T g^2 E||s_theta - grad log p(x_t|x0)||^2 dt
                    = 1/2 int_eps^T (g^2 / sigma^2) E||eps_hat - eps||^2 dt.
              For a linear SDE, d sigma^2/dt = 2 f sigma^2 + g^2, so g^2/sigma^2 = -d lambda/dt with
              lambda = log(alpha^2/sigma^2) the log-SNR. Importance sampling t with density
              p(t) proportional to g^2/sigma^2 is therefore *uniform sampling of lambda* on
              [lambda(T), lambda(eps)], mapped back with ``sde.t_from_log_snr``, and the unbiased
              estimator is (Z/2) ||eps_hat - eps||^2 with Z = lambda(eps) - lambda(T): a constant
              weight, hence far lower variance than the uniform-t estimator
              ((T - eps)/2) (g^2/sigma^2) ||eps_hat - eps||^2 (``importance=False``).
              Per feature: D * loss is J for one row, the theta-dependent part of the bound on
              -log p_eps(x0) in nats.
"min_snr"     Min-SNR-gamma (Hang et al. 2023, "Efficient diffusion training via Min-SNR weighting
              strategy"): w = min(SNR, gamma) / SNR in eps space, SNR = alpha^2/sigma^2 = exp(lambda),
              t ~ U[eps, T]; gamma = 5 by default. (The same as min(SNR, gamma) in x0 space.)
"native"      w chosen so the loss is the plain MSE in the network's own output space,
              ||out - target||^2: w = 1 (eps), 1/sigma^2 (score), (alpha^2 + sigma^2)^2/alpha^2 (v),
              sigma^2/alpha^2 (x0), (det/alpha)^2 (velocity), t ~ U[eps, T].
"flow_matching"  conditional flow matching (Lipman et al. 2023; Liu et al. 2023): the MSE in velocity
              space ||u_hat - u||^2 with u = alpha' x0 + sigma' eps (eps - x0 on the rectified flow),
              whatever the network predicts. In eps space w = (det/alpha)^2 with det = alpha sigma' -
              sigma alpha' (u_hat - u = (det/alpha)(eps_hat - eps)), infinite at alpha = 0; so the error is
              taken in velocity space directly, finite up to t = T. For a velocity network it is "native".

Time sampling (``time_sampling``): "uniform" (above), or "logit_normal" (Esser et al. 2024, "Scaling
rectified flow transformers", Sec. 3.1): t = eps + (T - eps) sigmoid(m + s n), n ~ N(0, 1), with
(m, s) = ``logit_normal`` (default (0, 1)); it changes which times are trained on, not w(t).
"""
from __future__ import annotations

from typing import Optional

import torch

from .parameterization import ScoreModel, convert
from .sde import LinearSDE, broadcast_to
from .validate import choice

Tensor = torch.Tensor

WEIGHTINGS = ("simple", "likelihood", "min_snr", "native", "flow_matching")
TIME_SAMPLINGS = ("uniform", "logit_normal")

__all__ = ["WEIGHTINGS", "TIME_SAMPLINGS", "dsm_loss", "flow_matching_loss", "sample_time", "loss_weight",
           "dsm_target"]


def _check_weighting(weighting: str) -> str:
    return choice("weighting", weighting, WEIGHTINGS)


def _check_time_sampling(time_sampling: str) -> str:
    return choice("time_sampling", time_sampling, TIME_SAMPLINGS)


def sample_time(sde: LinearSDE, n: int, weighting: str = "simple", importance: Optional[bool] = None,
                generator: Optional[torch.Generator] = None, device=None, time_sampling: str = "uniform",
                logit_normal=(0.0, 1.0)) -> Tensor:
    """n training times (float64). Uniform on [sde.eps, T], except for weighting "likelihood" with
    importance sampling (the default there), where lambda = log-SNR is uniform on [lambda(T), lambda(eps)],
    and for time_sampling="logit_normal": t = eps + (T - eps) sigmoid(m + s n), (m, s) = logit_normal."""
    _check_weighting(weighting)
    _check_time_sampling(time_sampling)
    if time_sampling == "logit_normal":
        if weighting == "likelihood" and (importance is None or importance):
            raise ValueError("time_sampling='logit_normal' draws its own times; it cannot be combined with the "
                             "importance sampling of weighting='likelihood' (pass importance=False)")
        m, scale = (float(v) for v in logit_normal)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        t = sde.eps + (sde.T - sde.eps) * torch.sigmoid(m + scale * z)
        return t if device is None else t.to(device)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if weighting == "likelihood" and (importance is None or importance):
        lo, hi = sde.log_snr(sde.T), sde.log_snr(sde.eps)
        lam = hi - u * (hi - lo)
        t = sde.t_from_log_snr(lam).clamp(sde.eps, sde.T)
    else:
        t = sde.eps + u * (sde.T - sde.eps)
    return t if device is None else t.to(device)


def loss_weight(sde: LinearSDE, t: Tensor, weighting: str = "simple", prediction: str = "eps",
                importance: Optional[bool] = None, gamma: float = 5.0) -> Tensor:
    """w(t) (float64, shape of t) multiplying the eps-space squared error; see the module docstring."""
    _check_weighting(weighting)
    t = sde.check_time(t)
    if weighting == "simple":
        return torch.ones_like(t)
    if weighting == "flow_matching" or (weighting == "native" and prediction == "velocity"):
        a = sde.alpha(t)
        det = a * sde.d_sigma(t) - sde.sigma(t) * sde.d_alpha(t)
        return (det / a) ** 2
    lam = sde.log_snr(t)
    if weighting == "likelihood":
        if importance is None or importance:
            z = sde.log_snr(sde.eps) - sde.log_snr(sde.T)
            return torch.full_like(t, 0.5) * z
        g2 = sde.diffusion(t) ** 2
        return 0.5 * (sde.T - sde.eps) * g2 / sde.sigma(t) ** 2
    if weighting == "min_snr":
        snr = torch.exp(lam)
        return torch.clamp(snr, max=gamma) / snr
    # native: ||out - target||^2 = c^2 ||eps_hat - eps||^2 with eps_hat - eps = (out - target) / c
    a, s = sde.alpha(t), sde.sigma(t)
    if prediction == "eps":
        return torch.ones_like(t)
    if prediction == "score":
        return 1 / s**2
    if prediction == "x0":
        return (s / a) ** 2
    if prediction == "v":
        return (a**2 + s**2) ** 2 / a**2
    raise ValueError(f"unknown prediction {prediction!r}")


def dsm_target(kind: str, x0: Tensor, noise: Tensor, t, sde: LinearSDE) -> Tensor:
    """The regression target of a prediction kind at x_t = alpha x0 + sigma noise."""
    a, s = broadcast_to(sde.alpha(t), x0), broadcast_to(sde.sigma(t), x0)
    if kind == "velocity":
        return broadcast_to(sde.d_alpha(t), x0) * x0 + broadcast_to(sde.d_sigma(t), x0) * noise
    return {"eps": lambda: noise, "x0": lambda: x0, "score": lambda: -noise / s,
            "v": lambda: a * noise - s * x0}[kind]()


def dsm_loss(model: ScoreModel, x0: Tensor, weighting: str = "simple", y: Optional[Tensor] = None,
             t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None, importance: Optional[bool] = None,
             gamma: float = 5.0, reduction: str = "mean", time_sampling: str = "uniform",
             logit_normal=(0.0, 1.0)) -> Tensor:
    """Denoising score-matching loss of ``model`` on a batch x0 (see the module docstring).

    t (batch,) and noise (x0's shape) are drawn with ``generator`` unless given. y: class labels
    passed to the network as net(x, t, y) (None: the network is called as net(x, t)).
    reduction: "mean" (a scalar), or "none" (per-row losses, shape (batch,)).
    time_sampling, logit_normal: how t is drawn when not given (``sample_time``).
    weighting="flow_matching" is the flow-matching loss, taken in velocity space (module docstring).
    """
    _check_weighting(weighting)
    sde = model.sde
    n = x0.shape[0]
    if t is None:
        t = sample_time(sde, n, weighting, importance, generator, time_sampling=time_sampling,
                        logit_normal=logit_normal)
    t = sde.check_time(t)  # a scalar t stays scalar for the schedule (one evaluation per batch)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    xt = sde.perturb(x0, t, noise)
    # a copy: a network that edits its t in place (t *= 999) must not change the t of the conversion below
    tt = (t.expand(n) if t.ndim == 0 else t).to(device=x0.device, dtype=x0.dtype).clone()
    out = model.net(xt, tt) if y is None else model.net(xt, tt, y)
    if out.shape != x0.shape:
        raise ValueError(f"network returned shape {tuple(out.shape)}; expected {tuple(x0.shape)}")
    if weighting == "flow_matching":  # in velocity space: finite at alpha = 0, where (det/alpha)^2 is not
        u_hat = convert(out, model.prediction, "velocity", xt, t, sde)
        per_row = (u_hat - dsm_target("velocity", x0, noise, t, sde)).pow(2).reshape(n, -1).mean(1)
    else:
        eps_hat = convert(out, model.prediction, "eps", xt, t, sde)
        err = (eps_hat - noise).pow(2).reshape(n, -1).mean(1)
        w = loss_weight(sde, t, weighting, model.prediction, importance, gamma).to(device=err.device,
                                                                                  dtype=err.dtype)
        per_row = w * err
    if reduction == "none":
        return per_row
    if reduction == "mean":
        return per_row.mean()
    raise ValueError(f"unknown reduction {reduction!r}; accepted: mean, none")


def flow_matching_loss(model: ScoreModel, x0: Tensor, time_sampling: str = "uniform", **kwargs) -> Tensor:
    """The conditional flow-matching loss E ||u_hat(x_t, t) - (alpha' x0 + sigma' eps)||^2 (per feature):
    ``dsm_loss(model, x0, "flow_matching", time_sampling=..., **kwargs)``."""
    return dsm_loss(model, x0, "flow_matching", time_sampling=time_sampling, **kwargs)
