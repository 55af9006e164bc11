"""The exponential integrators' shared pieces: phi_k and ``Schedule``, a grid's alpha, sigma and half log-SNR as
float64 Python floats, memoised per SDE and grid (``sdekit.solvers.exponential`` for the maths)."""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["phi", "Schedule"]


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{i >= 0} z^i / (i + k)! = (e^z - sum_{i<k} z^i/i!) / z^k, k >= 1, float64.

    The series is used for |z| < 1 (no cancellation), the closed form otherwise; phi_k(-inf) = 0."""
    if z == -math.inf:
        return 0.0
    if abs(z) < 1.0:
        term, total, i = 1.0 / math.factorial(k), 0.0, 0
        while True:
            total += term
            i += 1
            term *= z / (i + k)
            if abs(term) < 1e-18 * abs(total) or i > 60:
                return total + term
    head = math.expm1(z) - sum(z**i / math.factorial(i) for i in range(1, k))
    return head / z**k


_MEMO_TIMES = 2**16  # Schedule's memo of grid values keeps at most this many times per SDE


class Schedule:
    """alpha, sigma and half log-SNR l = log(alpha/sigma) at the grid times, as float64 Python floats.

    ``at_ls(ls)`` gives [(t, alpha, sigma)] at intermediate half log-SNRs through one sde.t_from_log_snr call
    (for a custom SDE that is a bisection, so points wanted together are asked for together)."""

    def __init__(self, sde, ts: Tensor):
        self.sde, self.ts = sde, ts
        # memoised per SDE and grid (like ``sde.schedule``): a repeated solve on one grid computes them once
        self.times = ts.tolist()  # the grid as Python floats (indexing ts makes a tensor per time)
        key = tuple(self.times) if ts.device.type == "cpu" else None
        # (a dict on the SDE, whose fingerprint for ``tune``'s cache skips dicts: memo state is not model content)
        memo = sde.__dict__.setdefault("_grid_schedule_memo", {"times": 0, "grids": {}})
        hit = memo["grids"].get(key) if key is not None else None
        if hit is None:
            alpha, sigma = (c.tolist() for c in sde.alpha_sigma(ts))
            lam = [math.inf if s == 0 else 0.5 * float(v) for s, v in zip(sigma, sde.log_snr(ts).tolist())]
            hit = (tuple(alpha), tuple(sigma), tuple(lam))
            if key is not None:
                if memo["times"] + len(key) > _MEMO_TIMES:  # bounded: at most 2^16 times kept per SDE
                    memo["grids"].clear()
                    memo["times"] = 0
                memo["times"] += len(key)
                memo["grids"][key] = hit
        self.alpha, self.sigma, self.l = (list(v) for v in hit)

    def h(self, i: int) -> float:
        """Step in half log-SNR from ts[i] to ts[i+1] (> 0; < 0 on an increasing grid)."""
        return self.l[i + 1] - self.l[i]

    def at_ls(self, ls: list[float]) -> list[tuple[float, float, float]]:
        t = self.sde.t_from_log_snr(torch.tensor([2.0 * v for v in ls], dtype=torch.float64))
        return list(zip(t.tolist(), self.sde.alpha(t).tolist(), self.sde.sigma(t).tolist()))

    def at_l(self, lam_half: float) -> tuple[float, float, float]:
        return self.at_ls([lam_half])[0]

    def mid(self, i: int, r: float) -> float:
        """The half log-SNR l_i + r h_i, measured from the step's end (l_{i+1} - (1 - r) h_i) so that it is -inf,
        not NaN, on a first step from l_i = -inf (alpha = 0)."""
        return self.l[i + 1] - (1.0 - r) * self.h(i)
