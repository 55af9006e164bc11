"""The terms the integration core solves: the probability-flow drift F and the augmented [F, div F].

The probability-flow ODE dx/dt = F(x, t) = drift(x, t) - g(t)^2 score(x, t) / 2 carries p_t into p_s, and
along a trajectory d/dt log p_t(x_t) = -div F(x_t, t) (Chen et al. 2018, "Neural ODEs", thm. 1), so the
augmented state [x, a] with d/ds [x, a] = [F, div F] dt/ds accumulates the log-density change (Song et al.
2021, appendix D.2). s is t, or the log-SNR lambda through ``LogSNRMap`` (dt/dlambda = -sigma^2 / g^2).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..sde import DiscreteVPSDE, LinearSDE
from ..solvers.base import NonFiniteError
from .divergence import Divergence

Tensor = torch.Tensor

__all__ = ["Drift", "AugmentedTerm", "LogSNRMap", "check_finite", "use_log_snr"]


class Drift:
    """F(x, t) of the probability-flow ODE for ``model`` (anything with .sde and .score(x, t)); counts calls."""

    def __init__(self, model):
        self.model = model
        self.sde = model.sde
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        # the velocity is the probability-flow drift; asked for directly it stays finite at alpha = 0 (flow paths
        # at t = T), where the score alone (-x / sigma^2 for every model) cannot give it
        # (a general, non-linear SDE has no alpha and sigma: its drift comes from the score)
        linear = isinstance(self.sde, LinearSDE) and hasattr(self.model, "predict")
        out = self.model.predict(x, t, "velocity") if linear \
            else self.sde.probability_flow_drift(x, t, self.model.score(x, t))
        if out.shape != x.shape:
            raise ValueError(
                f"the probability-flow drift has shape {tuple(out.shape)}; expected x's shape {tuple(x.shape)}"
            )
        return out


class LogSNRMap:
    """s = lambda(t) as the integration variable: t(lambda) and dt/dlambda = -sigma^2 / g^2.

    For a linear SDE sigma' = f sigma + g^2 / (2 sigma), so dlambda/dt = 2 (f - sigma'/sigma) = -g^2 / sigma^2.
    """

    def __init__(self, sde, t_lo: float, t_hi: float):
        self.sde, self.t_lo, self.t_hi = sde, t_lo, t_hi
        lam = sde.log_snr(torch.tensor([t_lo, t_hi], dtype=torch.float64))
        self.log_snr_bounds = (float(lam[0]), float(lam[1]))  # lambda(t_lo) > lambda(t_hi)

    def __call__(self, s: Tensor):
        lam_hi, lam_lo = self.log_snr_bounds  # stages of a landing step stay inside; clamp anyway
        t = self.sde.t_from_log_snr(s.clamp(lam_lo, lam_hi)).clamp(self.t_lo, self.t_hi)
        return t, -(self.sde.sigma(t) / self.sde.diffusion(t)) ** 2


def check_finite(out: Tensor, div: Optional[Tensor], t) -> None:
    """``NonFiniteError`` naming the time(s) when the drift or its divergence has a NaN or Inf."""
    if not (bool(torch.isfinite(out).all()) and (div is None or bool(torch.isfinite(div).all()))):
        where = f"t = {float(t):.6g}" if torch.as_tensor(t).numel() == 1 else \
            f"times in [{float(torch.as_tensor(t).min()):.6g}, {float(torch.as_tensor(t).max()):.6g}]"
        raise NonFiniteError(
            f"the probability-flow drift or its divergence is not finite at {where}; check the "
            "model (a score that blows up near t = 0 needs a larger t_data)"
        )


class AugmentedTerm:
    """The term d/ds [x, acc] = [F, div F] dt/ds for the integration core (s = t, or lambda with ``time_map``);
    with ``divergence=None`` the term dx/ds alone (a trajectory). acc is (batch,) for the exact divergence
    and (batch, K) for K Hutchinson probes (``probes``: (K, *x_shape)). ``divergence_at`` gives F and its
    divergence at any (x, t) (the quadrature mode asks for it along a saved trajectory)."""

    def __init__(self, drift: Drift, x_shape, divergence: Optional[str], probes: Optional[Tensor], backend: str,
                 chunk_size: Optional[int], t_bounds: tuple[float, float], time_map=None):
        self.drift = drift
        self.time_map = time_map
        self.divergence = divergence
        self.t_lo, self.t_hi = t_bounds
        self.estimator = None if divergence is None else \
            Divergence(divergence, probes, backend, chunk_size, math.prod(x_shape[1:]))
        self._backend = backend

    @property
    def backend(self) -> str:
        """The Jacobian backend in use ("auto" until the first divergence evaluation resolves it)."""
        return self._backend if self.estimator is None else self.estimator.backend

    @property
    def create_graph(self) -> bool:
        """True: F and div F stay differentiable (log_likelihood(create_graph=True))."""
        return self.estimator is not None and self.estimator.create_graph

    @create_graph.setter
    def create_graph(self, value: bool) -> None:
        if self.estimator is not None:
            self.estimator.create_graph = bool(value)

    def divergence_at(self, x: Tensor, t: Tensor):
        """F(x, t) and its divergence ((batch,), or (K, batch) for Hutchinson) at time t (a scalar, or one time
        per row)."""
        if self.estimator is None:
            raise ValueError("a trajectory term (divergence=None) has no divergence")
        return self.estimator(self.drift, x, t)

    def time(self, s: Tensor):
        """(t, dt/ds or None) for the solve variable s, t held in [t_lo, t_hi]."""
        # Time is a float64 scalar on the CPU (the SDE's schedule arithmetic, whatever x's device: MPS has no
        # float64, and a custom SDE's cached quadrature grid lives on the CPU).
        s = s.detach().to(device="cpu", dtype=torch.float64)
        if self.time_map is None:
            return s.clamp(self.t_lo, self.t_hi), None
        return self.time_map(s)

    def __call__(self, s: Tensor, state):
        t, dtds = self.time(s)
        if self.divergence is None:
            out = self.drift(state, t)
            check_finite(out, None, t)
            return out if dtds is None else out * dtds.to(out.dtype)
        out, div = self.divergence_at(state[0], t)
        check_finite(out, div, t)
        if dtds is not None:
            out, div = out * dtds.to(out.dtype), div * dtds.to(div.dtype)
        return out, (div if div.ndim == 1 else div.T)


def use_log_snr(name: str, sde, t0: float, t1: float, prefer_lambda: bool = False) -> bool:
    """True to integrate in lambda = log-SNR, False for t, for the time variable ``name`` ("auto", "t",
    "log_snr"). "auto" takes lambda for a DiscreteVPSDE, or for any SDE that has it when ``prefer_lambda``."""
    if name == "t":
        return False
    if name == "auto" and not prefer_lambda and not isinstance(sde, DiscreteVPSDE):
        # Measured on Gaussian mixtures (VP, sub-VP, VE, cosine, EDM, 16-D): t needs no more steps than
        # lambda for smooth schedules. A DDPM table's f(t) is piecewise constant, so in t dopri5 fights a
        # kink per table step (thousands of steps at rtol 1e-6); in lambda the drift is smooth.
        return False
    usable = callable(getattr(sde, "log_snr", None)) and callable(getattr(sde, "t_from_log_snr", None)) \
        and callable(getattr(sde, "sigma", None))
    if usable:
        lam = sde.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
        usable = bool(torch.isfinite(lam).all()) and float(lam[0]) > float(lam[1])
    if name == "log_snr" and not usable:
        raise ValueError(
            "time_variable='log_snr' needs a LinearSDE (log_snr and t_from_log_snr) with finite lambda at "
            f"t_data and t_prior (t_data = {t0} > 0 when sigma(0) = 0); use time_variable='t'"
        )
    return usable
