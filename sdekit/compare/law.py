"""The law of stochastic samples against exact draws: the sliced W2 over its floor with a standard error, and the
mode weights (``LawReference``, ``exact_law``); ``flipped_fraction`` for deterministic rows.

The law of the samples.  With x the n samples, E_1..E_R (R = ``LAW_SETS`` = 8) and F_1..F_2P (P = ``FLOOR_PAIRS``
= 3) independent sets of n exact draws of p_0 (the mixture at t_end, seed + 1) and 128 fixed random unit directions
theta_j (``sliced_w2``)::

    SW2(x, y) = sqrt(mean_j W2^2(<x, theta_j>, <y, theta_j>))       (each 1-D W2 by sorting)
    sw2    = SW2(x, E_1)                                            (``error``)
    floor  = median_p SW2(F_2p-1, F_2p)                              (``meta["sliced_w2_floor"]``: what sw2 is, in
                                                                       expectation, for exact samples)
    excess = sw2 - floor                                            (``excess``; ~0 within its SE for exact samples)
    SE^2   = 2 s_E^2 + SE_floor^2,  s_E = sd_r SW2(x, E_r),  SE_floor = s_0 sqrt(pi / (2P))      (``excess_se``)

s_E is the spread that the exact side alone puts into sw2, measured with fresh exact sets; the sample side is taken
to spread as much. That is exact to first order when the samples' law differs from p_0 (the distance is then linear
in both empirical quantile functions, each entering alike), and overstates the SE by at most sqrt(12/8) ~ 1.22 when
the law equals p_0 (the squared distance is then a quadratic form whose variance over one side given the other is 3/4
of its total). s_0 is the sd of SW2 between independent exact sets (the P floor pairs and R/2 pairs of reference
sets), and sqrt(pi / (2P)) the large-sample sd of a median of P values in units of one value's sd. Measured (2-D
default mixture, n = 2000, 24 seeds, fresh exact sets each): the spread of the excess over seeds is 0.83 SE for exact
samples, 0.88 SE and 1.07 SE for Euler-Maruyama with 5 and 10 steps. Not a bootstrap over rows: the 1-D W2 is
dominated by extreme quantiles, whose row bootstrap is inconsistent; on the same problem (20 seeds, 10 steps) the
bootstrap SE was 0.68 of the spread over seeds.

Mode weights.  mode_err = 1/2 sum_k |f_k - pi*_k| (``mode_err``, a total variation), f_k the fraction of samples
whose most likely component at t_end is k (``GaussianMixture.component``) and pi*_k the same fraction among the R n
exact draws: the weights where the components do not overlap (argmax assignment moves mass between overlapping ones,
so exact samples would not reproduce the weights themselves). It catches wrong mode weights that the sliced W2 of a
few sharp modes barely sees. Its finite-sample level, the median mode_err of the 2P floor sets, is
``meta["law"]["mode_err_floor"]``.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from ..ground_truth import GaussianMixture
from ..metrics import random_directions, sliced_w2_sorted, sorted_projections
from ..sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["LawReference", "exact_law", "flipped_fraction", "LAW_SETS", "FLOOR_PAIRS"]

LAW_SETS = 8  # R: exact reference sets per run (the first gives sw2, all of them its standard error)
FLOOR_PAIRS = 3  # P: pairs of further exact sets whose median sliced W2 is the floor


def flipped_fraction(gm: GaussianMixture, x: Tensor, x_ref: Tensor, t, sde: LinearSDE) -> float:
    """Fraction of rows whose most likely mixture component at time t differs between x and x_ref."""
    return float((gm.component(x, t, sde) != gm.component(x_ref, t, sde)).to(torch.float64).mean())


def _median_sd_factor(pairs: int) -> float:
    """sd of the median of ``pairs`` iid values in units of one value's sd (sqrt(pi / (2P)) for P >= 3)."""
    return 1.0 / math.sqrt(pairs) if pairs <= 2 else math.sqrt(math.pi / (2 * pairs))


@dataclass
class LawReference:
    """Exact draws of the target law reduced to what the distribution metrics need (module docstring): the sorted
    projections of R reference sets, the floor (median sliced W2 of P pairs of further sets) with its standard
    error, and, with a classifier, the mode target pi* and the mode error of exact sets (``mode_floor``)."""

    dirs: Tensor
    refs: list
    floor: float
    floor_values: list
    null_sd: float
    floor_se: float
    classify: Optional[Callable[[Tensor], Tensor]] = None
    mode_target: Optional[Tensor] = None
    mode_floor: Optional[float] = None

    @classmethod
    def from_sets(cls, refs: Iterable[Tensor], floor_sets: Iterable[Tensor], n_proj: int = 128, seed: int = 0,
                  classify: Optional[Callable[[Tensor], Tensor]] = None, n_components: int = 0) -> "LawReference":
        """From R >= 2 reference sets and 2P >= 2 floor sets, all of n exact draws (taken one at a time);
        ``classify`` (rows -> component index < n_components) adds the mode-weight metric."""
        refs = iter(refs)
        first = next(refs, None)
        if first is None:
            raise ValueError("LawReference needs at least 2 reference sets; got 0")
        n, dirs = first.shape[0], random_directions(first[0].numel(), n_proj, seed)
        projected, counts = [], []
        for e in itertools.chain([first], refs):
            projected.append(_projected_set(e, dirs, n))
            if classify is not None:
                counts.append(_fractions(classify(e), n_components))
        if len(projected) < 2:
            raise ValueError(f"LawReference needs at least 2 reference sets; got {len(projected)}")
        target = torch.stack(counts).mean(0) if counts else None
        floor_proj, modes = [], []
        for f in floor_sets:
            floor_proj.append(_projected_set(f, dirs, n))
            if classify is not None and target is not None:
                modes.append(_tv(_fractions(classify(f), n_components), target))
        if len(floor_proj) < 2 or len(floor_proj) % 2:
            raise ValueError(f"LawReference needs an even number (>= 2) of floor sets; got {len(floor_proj)}")
        values = [sliced_w2_sorted(a, b) for a, b in zip(floor_proj[::2], floor_proj[1::2])]
        null = values + [sliced_w2_sorted(a, b) for a, b in zip(projected[::2], projected[1::2])]
        null_sd = statistics.stdev(null) if len(null) > 1 else float("nan")
        return cls(dirs, projected, statistics.median(values), values, null_sd,
                   null_sd * _median_sd_factor(len(values)), classify, target,
                   statistics.median(modes) if modes else None)

    def metrics(self, x: Tensor) -> dict:
        """{"sw2", "excess", "excess_se", "mode_err"} of the sample set x (n rows, as many as each exact set)."""
        px = _projected_set(x, self.dirs, self.refs[0].shape[0])
        d = [sliced_w2_sorted(px, r) for r in self.refs]
        se = math.sqrt(2 * statistics.variance(d) + self.floor_se**2)
        mode = None
        if self.classify is not None and self.mode_target is not None:
            mode = _tv(_fractions(self.classify(x), len(self.mode_target)), self.mode_target)
        return {"sw2": d[0], "excess": d[0] - self.floor, "excess_se": se, "mode_err": mode}


def _projected_set(x: Tensor, dirs: Tensor, n: int) -> Tensor:
    """``_sorted_projections`` of a set that must have n rows of dirs.shape[0] numbers each."""
    if x.ndim < 1 or x.shape[0] != n or x[0].numel() != dirs.shape[0]:
        raise ValueError(f"the law reference compares sets of {n} rows of {dirs.shape[0]} numbers; got shape "
                         f"{tuple(x.shape)}")
    return sorted_projections(x, dirs)


def _fractions(labels: Tensor, k: int) -> Tensor:
    return torch.bincount(labels.reshape(-1).cpu(), minlength=k).to(torch.float64) / labels.numel()


def _tv(f: Tensor, g: Tensor) -> float:
    """Total variation 1/2 sum_k |f_k - g_k| between two probability vectors."""
    return 0.5 * float((f - g).abs().sum())


def exact_law(gm: GaussianMixture, t, sde: LinearSDE, n: int, seed: int, sets: int = LAW_SETS,
              pairs: int = FLOOR_PAIRS) -> LawReference:
    """The ``LawReference`` of the mixture at time t: ``sets`` reference sets then 2 ``pairs`` floor sets of n
    exact draws each, in that order from one generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def draws(count):
        return (gm.sample_t(n, t, sde, generator=g, dtype=torch.float64) for _ in range(count))

    return LawReference.from_sets(draws(sets), draws(2 * pairs), classify=lambda x: gm.component(x, t, sde),
                                  n_components=len(gm.weights))
