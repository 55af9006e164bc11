"""How big the next step is: one step-size controller for every adaptive solve (the integration core's embedded RK
pairs and the adaptive DPM-Solver alike), apart from how a step is taken (diffrax's ``stepsize_controller`` split).

Hairer, Norsett and Wanner, "Solving ODEs I", II.4. A step of size h gives an error estimate e (an embedded pair's
difference) and the per-row error ratio

    E = max over rows r of  RMS over the entries of r of  e / (atol_r + rtol_r max(|y0|, |y1|))     (``error``)

(taken per column group of a tuple state, the largest kept), so every row meets its own tolerance whatever its batch
mates do. The step is accepted when E <= 1; the next one is

    h_next = h factor,   factor = min(factor_max, max(factor_min, safety E^(-1/p)))   (factor_max when E = 0)

with p the order of the method's error estimate, and, after an accepted step, factor >= ``accepted_factor_min``
(1: no shrink after a success, as the core does; ``factor_min``: as DPM-Solver's Algorithm 6 does). A step shortened
to land on a grid time keeps the proposal it was shortened from. A solve that would pass ``max_nfe`` evaluations
raises ``StepBudgetError`` before the step is taken.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from .base import StepBudgetError

Tensor = torch.Tensor

__all__ = ["StepController", "row_error_ratio", "check_tolerances", "check_budget"]


def check_tolerances(rtol, atol) -> None:
    """rtol and atol: numbers or (batch,) tensors, finite and >= 0, not both 0."""
    for name, v in (("rtol", rtol), ("atol", atol)):
        ok = bool(torch.isfinite(v).all() and (v >= 0).all()) if isinstance(v, Tensor) else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        if not ok:
            raise ValueError(f"{name} must be a finite number >= 0 (or a (batch,) tensor of them); got {v!r}")
    if not isinstance(rtol, Tensor) and not isinstance(atol, Tensor) and rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")


def check_budget(max_nfe) -> None:
    """max_nfe: an integer >= 1."""
    if isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1:
        raise ValueError(f"max_nfe must be an integer >= 1; got {max_nfe!r}")


def row_error_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol, atol, bounds: Sequence) -> float:
    """max over rows (and column groups ``bounds``) of the RMS of err / (atol + rtol max(|y0|, |y1|));
    err, y0, y1 of shape (batch, width). A NaN or Inf anywhere gives inf (the step is rejected)."""
    ratio = (err / (atol + rtol * torch.maximum(y0.abs(), y1.abs()))).square()
    if len(bounds) == 1:
        worst = ratio.mean(1).max()
    else:
        worst = torch.stack([ratio[:, a:b].mean(1) for a, b in bounds if b > a]).max()
    worst = float(worst.detach())  # the controller's number: never part of a differentiable solve's graph
    e = math.sqrt(worst) if worst >= 0 else math.inf
    return e if math.isfinite(e) else math.inf


@dataclass(frozen=True)
class StepController:
    """The step-size controller of the module docstring. rtol, atol: numbers, or (batch, 1) tensors for per-row
    tolerances (checked by ``check_tolerances`` before they are shaped); order: of the error estimate; max_nfe:
    the budget in evaluations."""

    rtol: Union[float, Tensor]
    atol: Union[float, Tensor]
    order: float
    max_nfe: int
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    accepted_factor_min: float = 1.0

    def __post_init__(self):
        check_budget(self.max_nfe)

    def error(self, err: Tensor, y0: Tensor, y1: Tensor, bounds: Sequence) -> float:
        """E of a step from y0 to y1 with error estimate err, all (batch, width)."""
        return row_error_ratio(err, y0, y1, self.rtol, self.atol, bounds)

    def factor(self, e: float) -> float:
        """safety E^(-1/p) clipped to [factor_min, factor_max] (factor_max for E = 0)."""
        if e == 0:
            return self.factor_max
        return min(self.factor_max, max(self.factor_min, self.safety * e ** (-1.0 / self.order)))

    def adapt(self, h_proposed: float, h_taken: float, e: float, landed: bool) -> tuple[bool, float]:
        """(accepted, the next step's size) after a step of size |h_taken| (proposed |h_proposed|, shortened to land
        on a grid time when ``landed``) with error ratio e."""
        factor = self.factor(e)
        if e > 1:
            return False, abs(h_taken) * factor
        if landed and h_proposed > abs(h_taken):  # a step shortened to land keeps its proposal
            return True, h_proposed
        return True, abs(h_taken) * max(self.accepted_factor_min, factor)

    def reserve(self, used: int, cost: int, describe: Callable[[], str]) -> None:
        """Raise ``StepBudgetError`` (its message ``describe()``, where and how far) unless ``cost`` more evaluations
        fit in the budget after ``used``."""
        if used + cost > self.max_nfe:
            raise StepBudgetError(f"{describe()}: the next step would pass the budget of {self.max_nfe} network "
                                  f"evaluations (max_nfe; {used} used); loosen rtol/atol or raise max_nfe")

    def initial_step(self, f: Callable, t0: float, y0: Tensor, f0: Tensor, span: float, bounds: Sequence) -> float:
        """Hairer, Norsett and Wanner, "Solving ODEs I", II.4 (the starting step size): one trial evaluation of f."""
        zero = torch.zeros_like(y0)
        d0 = self.error(y0, y0, zero, bounds)
        d1 = self.error(f0, y0, zero, bounds)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 or not math.isfinite(d1) else 0.01 * d0 / d1
        h0 = min(h0, abs(span))
        sign = math.copysign(1.0, span)
        f1 = f(t0 + sign * h0, y0 + sign * h0 * f0)
        d2 = self.error(f1 - f0, y0, zero, bounds) / h0
        big = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if big <= 1e-15 or not math.isfinite(big) else (0.01 / big) ** (1.0 / self.order)
        return min(100 * h0, h1, abs(span))
