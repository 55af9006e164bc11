"""Weights of the exponential SDE multistep updates (DPM-Solver++ SDE 2M/3M, SA-Solver, SEEDS): quadrature weights
b_m with int_0^h (1 + eta) e^{-(1 + eta)(h - u)} P(l_t + u) du = sum_m b_m P(l_t + u_m h) for polynomials P through
the last points (``exp_weights``), and a whole grid's systems solved at once (``ExpWeights``)."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from .exponential import phi

Tensor = torch.Tensor

__all__ = ["exp_weights", "ExpWeights"]


def _hphi(k: int, hp: float) -> float:
    """h' phi_{k+1}(-h'), and its limit 1/k! as h' -> inf (a step from alpha = 0: phi_{k+1}(-z) ~ 1/(k! z))."""
    return 1.0 / math.factorial(k) if hp == math.inf else hp * phi(k + 1, -hp)


def exp_weights(us: Sequence[float], h: float, eta: float) -> List[float]:
    """Weights b_m with int_0^h (1 + eta) e^{-(1 + eta)(h - u)} P(l_t + u) du = sum_m b_m P(l_t + u_m h) for every
    polynomial P of degree < len(us) (u_m distinct; u = 0 is x0_t): b = V^{-T} w, V[m, k] = u_m^k / k!,
    w_k = h' phi_{k+1}(-h'), h' = (1 + eta) h.

    The limits at alpha = 0 (l = -inf): a point at u = -inf (a history point at t = T) gets b = 0, as its Lagrange
    basis vanishes on [0, 1] when its node runs off; on a step from l_t = -inf (h = inf) w_k -> 1/k!, the weight
    e^{-h'(1 - u)} concentrating at u = 1, so the update integrates the polynomial's value at the step's end."""
    keep, w, V = _exp_system(us, h, eta)
    if V is None:
        return _spread(keep, w, len(us))
    b = torch.linalg.solve(torch.tensor(V, dtype=torch.float64).T, torch.tensor(w, dtype=torch.float64)).tolist()
    return _spread(keep, b, len(us))


def _exp_system(us: Sequence[float], h: float, eta: float):
    """(keep, w, V rows) of ``exp_weights``' system; V is None when no solve is needed (at most one finite point)."""
    hp = (1.0 + eta) * h
    keep = [m for m, u in enumerate(us) if math.isfinite(u)]
    K = len(keep)
    w = [_hphi(k, hp) for k in range(K)]
    V = None if K <= 1 else [[us[m] ** k / math.factorial(k) for k in range(K)] for m in keep]
    return keep, w, V


def _spread(keep: List[int], b: List[float], n: int) -> List[float]:
    out = dict(zip(keep, b))
    return [out.get(m, 0.0) for m in range(n)]


class ExpWeights:
    """``exp_weights`` for the steps of one solve, the systems solved together (one batched ``linalg.solve`` per
    size, the same values as one call per step): declare each (us, h) with ``want`` before the first network call,
    then ``table(us, h)`` looks the weights up (and computes a pair it was not told of, counted in ``misses``)."""

    def __init__(self, eta: float):
        self.eta = eta
        self._want: dict = {}
        self._done: dict = {}
        self.misses = 0

    def want(self, us: Sequence[float], h: float) -> None:
        key = (tuple(us), h)
        if key not in self._done and key not in self._want:
            self._want[key] = _exp_system(us, h, self.eta)

    def solve(self) -> "ExpWeights":
        by_size: dict = {}
        for key, (keep, w, V) in self._want.items():
            if V is None:
                self._done[key] = _spread(keep, w, len(key[0]))
            else:
                by_size.setdefault(len(keep), []).append((key, keep, w, V))
        for group in by_size.values():
            Vs = torch.tensor([V for _, _, _, V in group], dtype=torch.float64)
            ws = torch.tensor([w for _, _, w, _ in group], dtype=torch.float64)
            bs = torch.linalg.solve(Vs.transpose(-1, -2), ws).tolist()
            for (key, keep, _, _), b in zip(group, bs):
                self._done[key] = _spread(keep, b, len(key[0]))
        self._want.clear()
        return self

    def __call__(self, us: Sequence[float], h: float) -> List[float]:
        hit = self._done.get((tuple(us), h))
        if hit is None:
            self.misses += 1
            return exp_weights(us, h, self.eta)
        return hit
