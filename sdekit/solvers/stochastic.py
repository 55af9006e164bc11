"""Samplers of the reverse-time SDE  dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw_bar.

Steps run from t_i to s = t_{i+1} < t_i. Per step, a = alpha_t / alpha_s and b^2 = sigma_t^2 - a^2 sigma_s^2
are the exact forward transition x_t = a x_s + b z of the SDE from s to t. The last step adds no noise
(it returns the mean of the step, as score_sde does) unless ``noise_last=True``.

The predictors' noise is the step's standardised increment of the row's Brownian path (``Evaluator.path_noise``),
so a solve with more steps is a finer solve of the same path; Langevin corrector and EDM churn noise are fresh
per-call draws (``Evaluator.randn_like``). On a linear SDE the noise is additive, so Euler-Maruyama converges with
strong order 1 (Kloeden & Platen 1992, sec. 10.4), not the 0.5 of multiplicative noise.
"""
from __future__ import annotations

import math

import torch

from .base import Evaluator, check_positive_alpha, check_sampling, option, refuse
from .exponential import Schedule, check_flag
from .registry import register


def _transition(ev: Evaluator, t, s):
    """a = alpha_t / alpha_s and b^2 = sigma_t^2 - a^2 sigma_s^2 for the forward step s -> t."""
    alpha_t, sigma_t, _, _ = ev.sde.schedule(t)
    alpha_s, sigma_s, _, _ = ev.sde.schedule(s)
    a = alpha_t / alpha_s
    b2 = sigma_t**2 - a**2 * sigma_s**2
    return a, max(b2, 0.0)


def _add_noise(ev: Evaluator, mean, std: float, last: bool, noise_last: bool, t, s):
    """mean + std z, z the step's standardised Brownian increment (W(t) - W(s))/sqrt(t - s) of the row's path."""
    if std == 0.0 or (last and not noise_last):
        return mean
    return mean + std * ev.path_noise(mean, t, s)


@register("euler_maruyama", order=1, nfe_per_step=1, stochastic=True, family="sde")
def euler_maruyama(ev: Evaluator, x, ts, *, eta: float = 1.0, noise_last: bool = False):
    """Euler-Maruyama on the reverse family (Song et al. 2021, eq. 6 with eta = 1):
    x_{i+1} = x_i + h [f x_i - (1 + eta^2)/2 g^2 score] + eta g sqrt(|h|) z,  h = t_{i+1} - t_i < 0.
    eta >= 0 (eta = 0: Euler on the probability-flow ODE). Not from alpha = 0 (f and g are infinite there)."""
    eta = option(ev, "eta", eta, 0.0)
    _checks(ev, ts, noise_last)
    if eta > 0:
        ev.plan_path_noise(x, ts if noise_last else ts[:-1])
    n = len(ts) - 1
    times = ts.tolist()  # Python floats: indexing ts makes a tensor per time
    hs = [times[i + 1] - times[i] for i in range(n)]
    stds = [eta * float(ev.sde.diffusion(times[i])) * math.sqrt(abs(hs[i])) for i in range(n)]  # from the grid alone
    for i in range(n):
        mean = x + hs[i] * ev.reverse_drift(x, times[i], eta=eta)
        x = _add_noise(ev, mean, stds[i], i == n - 1, noise_last, times[i], times[i + 1])
        yield x


def _checks(ev: Evaluator, ts, noise_last) -> None:
    """What every sampler here needs: a decreasing grid without alpha = 0, and a bool noise_last."""
    check_flag("noise_last", noise_last)
    check_sampling(ev, ts)
    check_positive_alpha(ev, ts, "the reverse SDE's f and g are infinite there and its step divides by alpha")


def _reverse_diffusion_mean(ev: Evaluator, x, t, s):
    """Mean of the reverse-diffusion predictor (Song et al. 2021, App. E): with the forward step
    x_t = a x_s + b z, x_s = (2 - a) x_t + b^2 score(x_t, t) + b z (VE: a = 1; VP: a = sqrt(1 - beta_i))."""
    a, b2 = _transition(ev, t, s)
    return (2 - a) * x + b2 * ev.score(x, t), math.sqrt(b2)


@register("reverse_diffusion", order=0.5, nfe_per_step=1, stochastic=True, family="sde")
def reverse_diffusion(ev: Evaluator, x, ts, *, noise_last: bool = False):
    """Reverse-diffusion predictor: x_s = (2 - a) x_t + b^2 score(x_t, t) + b z."""
    _checks(ev, ts, noise_last)
    ev.plan_path_noise(x, ts if noise_last else ts[:-1])
    n = len(ts) - 1
    times = ts.tolist()
    for i in range(n):
        mean, std = _reverse_diffusion_mean(ev, x, times[i], times[i + 1])
        x = _add_noise(ev, mean, std, i == n - 1, noise_last, times[i], times[i + 1])
        yield x


def _langevin(ev: Evaluator, x, t, s, snr: float, step_rule: str):
    """One Langevin corrector step at time t (Song et al. 2021, Alg. 5): x <- x + e score + sqrt(2 e) z.

    step_rule "sigma": e = 2 a^2 snr^2 sigma_t^2, the value of score_sde's rule 2 a^2 (snr |z| / |score|)^2
    when |score|^2 ~ dim / sigma_t^2; the same for every row, so rows stay independent and stable near modes.
    step_rule "norm": score_sde's rule with per-row norms |z| and |score| (unstable where score ~ 0 in low dimension).
    """
    a, _ = _transition(ev, t, s)
    score = ev.score(x, t)
    z = ev.randn_like(x)
    if step_rule == "sigma":
        step = 2 * a**2 * (snr * float(ev.sde.sigma(t))) ** 2
        return x + step * score + math.sqrt(2 * step) * z
    if step_rule != "norm":
        raise ValueError(f"unknown step_rule {step_rule!r}; accepted: sigma, norm")
    dims = tuple(range(1, x.ndim))
    g_norm = torch.linalg.vector_norm(score, dim=dims, keepdim=True)
    z_norm = torch.linalg.vector_norm(z, dim=dims, keepdim=True)
    step = 2 * a**2 * (snr * z_norm / g_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + step * score + torch.sqrt(2 * step) * z


@register("pc", order=0.5, nfe_per_step=2, stochastic=True, family="sde")
def pc(ev: Evaluator, x, ts, *, snr: float = 0.16, n_corrector: int = 1, step_rule: str = "sigma",
       noise_last: bool = False):
    """Predictor-corrector (Song et al. 2021, Alg. 1-3): at each t_i, ``n_corrector`` Langevin steps
    with signal-to-noise ``snr`` (see ``_langevin`` for ``step_rule``), then the reverse-diffusion
    predictor to t_{i+1}. snr > 0 (its square sets the step: a negative one is refused, not squared away);
    n_corrector >= 0."""
    snr = option(ev, "snr", snr, 0.0, lo_open=True)
    if not isinstance(n_corrector, int) or isinstance(n_corrector, bool) or n_corrector < 0:
        raise refuse(ev, f"needs n_corrector an integer >= 0; got {n_corrector!r}")
    if step_rule not in ("sigma", "norm"):
        raise refuse(ev, f"needs step_rule 'sigma' or 'norm'; got {step_rule!r}")
    _checks(ev, ts, noise_last)
    ev.plan_path_noise(x, ts if noise_last else ts[:-1])
    n = len(ts) - 1
    times = ts.tolist()
    for i in range(n):
        for _ in range(n_corrector):
            x = _langevin(ev, x, times[i], times[i + 1], snr, step_rule)
        mean, std = _reverse_diffusion_mean(ev, x, times[i], times[i + 1])
        x = _add_noise(ev, mean, std, i == n - 1, noise_last, times[i], times[i + 1])
        yield x


@register("heun_churn", order=1, nfe_per_step=2, stochastic=True, family="sde")
def heun_churn(ev: Evaluator, x, ts, *, s_churn: float = 10.0, s_tmin: float = 0.0,
               s_tmax: float = float("inf"), s_noise: float = 1.0):
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2) in y = x/alpha, s = sigma/alpha (dy/ds = eps):
    gamma_i = min(s_churn/N, sqrt(2) - 1) for s_i in [s_tmin, s_tmax], s^ = (1 + gamma_i) s_i (capped at
    s(t_start), since the SDE has no time beyond it), y^ = y_i + sqrt(s^2 - s_i^2) s_noise z, then one Heun
    step from s^ to s_{i+1} (Euler if s_{i+1} = 0). s_churn, s_tmin, s_noise >= 0, s_tmax >= s_tmin (may be inf)."""
    s_churn, s_tmin, s_noise = (option(ev, k, v, 0.0) for k, v in (("s_churn", s_churn), ("s_tmin", s_tmin),
                                                                  ("s_noise", s_noise)))
    if not (isinstance(s_tmax, (int, float)) and not isinstance(s_tmax, bool) and s_tmax >= s_tmin):
        raise refuse(ev, f"needs s_tmax >= s_tmin = {s_tmin} (inf allowed); got {s_tmax!r}")
    check_sampling(ev, ts)
    check_positive_alpha(ev, ts, "EDM's churn and Heun step work in s = sigma/alpha, infinite there")
    sch = Schedule(ev.sde, ts)
    s = [sg / a if a > 0 else math.inf for a, sg in zip(sch.alpha, sch.sigma)]
    n = len(ts) - 1
    gammas = [min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s_i <= s_tmax else 0.0 for s_i in s[:-1]]
    s_hat = [min(s_i * (1 + g), s[0]) for s_i, g in zip(s[:-1], gammas)]  # s(t_start) caps the churn
    churned = [i for i in range(n) if s_hat[i] > s[i]]
    t_hat, a_hat = list(ts[:-1]), sch.alpha[:-1]
    # the churned times and their alphas, in one call for the whole grid (half log-SNR l = -log s)
    for i, (t, a, _) in zip(churned, sch.at_ls([-math.log(s_hat[i]) for i in churned]) if churned else ()):
        t_hat[i], a_hat[i] = t, a
    for i in range(n):
        y = x / sch.alpha[i]
        if s_hat[i] > s[i]:
            y = y + math.sqrt(s_hat[i] ** 2 - s[i] ** 2) * s_noise * ev.randn_like(y)
        d = ev.eps(y * a_hat[i], t_hat[i])
        ds = s[i + 1] - s_hat[i]
        d2 = ev.eps((y + ds * d) * sch.alpha[i + 1], ts[i + 1])
        x = (y + ds * 0.5 * (d + d2)) * sch.alpha[i + 1]
        yield x
