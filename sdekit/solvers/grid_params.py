"""Parameterisation. The grid lives in the normalised log-SNR z = (lambda(t) - lambda(t_start)) /
(lambda(t_end) - lambda(t_start)) in [0, 1]: z_i = sum_{j<i} w_j / sum_j w_j with w_j = exp(theta_j), so
every theta is a valid, strictly monotone grid with both ends fixed (N steps, N - 1 free shapes).
theta starts at the best of the named grids (uniform, quadratic, logsnr, karras) on the calibration
draw and is refined by the method asked for (below).

A start at pure noise (alpha(t_start) = 0, lambda = -inf: the flow-matching paths at T) has no finite z. There
the first node stays at t_start and the other N nodes live in a finite window [lambda_w, lambda(t_end)]:
z_i = sum_{j<=i} w_j / sum_j w_j, i = 1..N (N weights, N - 1 free shapes, z_N = 1), so the first interior node
may sit anywhere in the window and every theta is again a valid grid that starts exactly at t_start.
lambda_w = -lambda(t_end) (the named grids' mirror point t_max, ``grids.py``), lowered below every start
grid's first interior node. A low end at sigma = 0 keeps the named grids' convention (below).

The free start (``free_start=True``, implied by "start"): the grid's first time t_s <= t_start is a parameter too,
phi in [0, PHI_MAX] with lambda(t_s) = lam0 + phi (lam1 - lam0), while x_T stays the prior draw at t_start and the
reference still starts there: diffusers' "leading" spacing, whose first step starts below T, weighed honestly
(the prior is then used as an approximation of the marginal at t_s).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = ["GridParams", "PHI_MAX", "grid_of", "theta_of", "z_of"]

PHI_MAX = 0.35  # free_start's lowest start: 35% of the way from lambda(t_start) to lambda(t_end) in log-SNR


def z_of(sde, ts: Tensor, lam0: float, lam1: float, noise_start: bool = False, free_end: bool = False) -> np.ndarray:
    """Normalised log-SNR of the nodes ``grid_of`` places (ts without its alpha = 0 start and sigma = 0 end)."""
    ts = ts[1 if noise_start else 0: -1 if free_end else None]
    return ((sde.log_snr(ts) - lam0) / (lam1 - lam0)).numpy()


def grid_of(theta: np.ndarray, sde, lam0: float, lam1: float, t_start: float, t_end: float,
             noise_start: bool = False, free_end: bool = False) -> Tensor:
    """The grid of the increments w = exp(theta), z = cumsum(w)/sum(w) in the window [lam0, lam1]: t_start at
    z = 0 (or, with ``noise_start``, at alpha = 0 before the nodes), t_end at z = 1 (or, with ``free_end``, at
    sigma = 0 after the nodes, the last increment being the gap from the last node to the window's top)."""
    w = np.exp(theta - theta.max())
    z = np.cumsum(w) / w.sum()
    z = z[:-1] if free_end else z
    z = z if noise_start else np.concatenate([[0.0], z])
    ts = sde.t_from_log_snr(torch.as_tensor(lam0 + z * (lam1 - lam0), dtype=torch.float64))
    if free_end:  # no node past the window's top (t = sde.eps on a grid to sigma = 0), even by rounding
        ts = torch.maximum(ts, sde.t_from_log_snr(torch.tensor([lam1], dtype=torch.float64)))
    ts = torch.cat([ts.new_full((int(noise_start),), t_start), ts, ts.new_full((int(free_end),), t_end)])
    ts[0], ts[-1] = t_start, t_end
    return ts


def theta_of(z: np.ndarray, noise_start: bool = False, free_end: bool = False) -> np.ndarray:
    """The inverse of ``grid_of``: log-increments of [0 (with ``noise_start``), z, 1 (with ``free_end``)]."""
    z = np.concatenate([[0.0] * noise_start, z, [1.0] * free_end])
    return np.log(np.maximum(np.diff(z), 1e-12))


def window(sde, starts, t_start: float, t_low: float, noise_start: bool):
    """(lam0, lam1): the log-SNR range the free nodes are normalised to (module docstring)."""
    lam1 = float(sde.log_snr(t_low))
    if not noise_start:
        return float(sde.log_snr(t_start)), lam1
    firsts = [float(sde.log_snr(ts[1])) for ts in starts]
    return min([-abs(lam1)] + [v - 1.0 for v in firsts]), lam1


class GridParams:
    """Grid parameters p = [phi (only with ``free_start``)] + theta -> a grid (module docstring: theta as above;
    phi in [0, PHI_MAX] the start's normalised log-SNR, lambda(t_s) = lam0 + phi (lam1 - lam0), phi = 0 being
    t_start itself)."""

    def __init__(self, sde, steps: int, t_start: float, t_end: float, free_start: bool, starts: Sequence[Tensor]):
        self.sde, self.steps, self.t_start, self.t_end, self.free_start = sde, steps, t_start, t_end, free_start
        self.zero_end = float(sde.sigma(t_end)) == 0  # the grids' convention: steps - 1 intervals to eps, then 0
        self.noise_start = float(sde.alpha(t_start)) == 0  # lambda(t_start) = -inf: the first node stays put
        if free_start and self.noise_start:
            raise ValueError(f"free_start needs alpha(t_start) > 0 (a start in log-SNR); t_start = {t_start} has "
                             f"alpha = 0 on {sde!r}: pass a t_start below it")
        t_low = sde.eps if self.zero_end else t_end
        self.lam0, self.lam1 = window(sde, starts, t_start, t_low, self.noise_start)

    def p_of(self, ts: Tensor, phi: float = 0.0) -> np.ndarray:
        """The parameters of a grid that starts at ``t_of(phi)``."""
        lam0 = self.lam0 + phi * (self.lam1 - self.lam0)
        theta = theta_of(z_of(self.sde, ts, lam0, self.lam1, self.noise_start, self.zero_end),
                          self.noise_start, self.zero_end)
        return np.concatenate([[phi], theta]) if self.free_start else theta

    def t_of(self, phi: float) -> float:
        """The start time at phi."""
        if phi == 0:
            return self.t_start
        lam = torch.tensor([self.lam0 + phi * (self.lam1 - self.lam0)], dtype=torch.float64)
        return float(self.sde.t_from_log_snr(lam))

    def phi_of(self, ts: Tensor) -> float:
        """phi of a grid's start (0 at t_start)."""
        if float(ts[0]) == self.t_start:
            return 0.0
        return (float(self.sde.log_snr(ts[0])) - self.lam0) / (self.lam1 - self.lam0)

    def ts(self, p: np.ndarray) -> Tensor:
        if not self.free_start:
            return grid_of(p, self.sde, self.lam0, self.lam1, self.t_start, self.t_end, self.noise_start,
                            self.zero_end)
        phi = float(p[0])
        return grid_of(p[1:], self.sde, self.lam0 + phi * (self.lam1 - self.lam0), self.lam1, self.t_of(phi),
                        self.t_end, False, self.zero_end)

    def project(self, p: np.ndarray) -> np.ndarray:
        if self.free_start:
            p = p.copy()
            p[0] = min(max(float(p[0]), 0.0), PHI_MAX)
        return p
