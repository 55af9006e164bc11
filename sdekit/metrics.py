"""Distances between sample sets, defined once for ``sdekit.compare``, ``sdekit.solvers.tune`` and the benchmarks.

Per-row endpoint error of a solve x against a reference x_ref of the same rows (batch first, any row shape)::

    e_i = |x_i - x_ref,i| / sqrt(dim)                  (``per_row_error``, float64, shape (batch,))
    median = q50(e), p90 = q90(e), max = max_i e_i     (``error_summary``; quantiles interpolate linearly)
    rms = sqrt(mean_i e_i^2)                           (``endpoint_error``)

A few rows that start near a boundary between basins of the flow end in another mode under any perturbation;
they rule the RMS, which is why the median and the 90th percentile are reported beside it.

Sliced 2-Wasserstein distance between two sets of n rows, over P random unit directions theta_j of R^dim::

    SW2(x, y) = sqrt(mean_j W2^2(<x, theta_j>, <y, theta_j>))      (each 1-D W2 by sorting: ``sliced_w2``)

Torch only: no model, solver or mixture is needed here.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["per_row_error", "error_summary", "endpoint_error", "sliced_w2", "random_directions",
           "sorted_projections", "sliced_w2_sorted", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("median", "p90", "rms", "max")


def per_row_error(x: Tensor, x_ref: Tensor) -> Tensor:
    """e_i = |x_i - x_ref,i| / sqrt(dim) for every row, float64, shape (batch,) (rows compared flattened)."""
    if x.shape[0] != x_ref.shape[0] or x.numel() != x_ref.numel():
        raise ValueError(f"per_row_error needs x and x_ref with the same rows of the same size; got shapes "
                         f"{tuple(x.shape)} and {tuple(x_ref.shape)}")
    d = (x.to(torch.float64) - x_ref.to(torch.float64)).reshape(x.shape[0], -1)
    return d.norm(dim=1) / math.sqrt(d.shape[1])


def error_summary(e: Tensor) -> dict:
    """{"median", "p90", "rms", "max"} of per-row errors e (quantiles interpolate linearly); all NaN when an entry
    is not finite (a partly failed solve has no typical error)."""
    e = e.to(torch.float64).reshape(-1)
    if e.numel() == 0 or not bool(torch.isfinite(e).all()):
        return dict.fromkeys(SUMMARY_KEYS, math.nan)
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=torch.float64))
    return {"median": float(q[0]), "p90": float(q[1]), "rms": float(e.pow(2).mean().sqrt()), "max": float(e.max())}


def objective_score(e: Tensor, objective: str = "balanced") -> float:
    """The tuning objective of per-row errors e: log q50 ("median"), log q90 ("p90") or their mean ("balanced",
    robust to the few rows near basin boundaries); inf where e has a non-finite entry."""
    s = error_summary(e)
    tiny = 1e-300  # an exact solve (error 0) must not give log(0)
    if math.isnan(s["median"]):
        return math.inf
    if objective == "median":
        return math.log(s["median"] + tiny)
    if objective == "p90":
        return math.log(s["p90"] + tiny)
    return 0.5 * (math.log(s["median"] + tiny) + math.log(s["p90"] + tiny))


def keeps(candidate: Tensor, start: Tensor, objective: str = "balanced") -> bool:
    """The keep rule of every tuned or learned object on its held-out draw: better on the objective and no worse on
    the median nor on the 90th percentile than what it started from."""
    sc, ss = error_summary(candidate), error_summary(start)
    return objective_score(candidate, objective) < objective_score(start, objective) \
        and sc["median"] <= ss["median"] and sc["p90"] <= ss["p90"]


def endpoint_error(x: Tensor, x_ref: Tensor) -> float:
    """The RMS of the per-row errors: sqrt(mean over rows of |x - x_ref|^2 / dim), in float64."""
    return float(per_row_error(x, x_ref).pow(2).mean().sqrt())


def random_directions(dim: int, n_proj: int, seed: int) -> Tensor:
    """``n_proj`` random unit directions of R^dim (the columns), float64, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(dim, n_proj, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=0, keepdim=True)


def sorted_projections(x: Tensor, dirs: Tensor) -> Tensor:
    """The rows' projections on each direction, sorted per direction: (n, n_proj), float64."""
    px, _ = torch.sort(x.to(torch.float64).reshape(x.shape[0], -1) @ dirs, dim=0)
    return px


def sliced_w2_sorted(px: Tensor, py: Tensor) -> float:
    """Sliced W2 from two sets of sorted projections of equal size (``sorted_projections``)."""
    return float(torch.sqrt(((px - py) ** 2).mean()))


def sliced_w2(x: Tensor, y: Tensor, n_proj: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (rows), averaged over ``n_proj``
    random unit directions: sqrt(mean_dirs W2^2 of the 1-D projections), each W2 by sorting."""
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    y = y.to(torch.float64).reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs sample sets of equal shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    dirs = random_directions(x.shape[1], n_proj, seed)
    return sliced_w2_sorted(sorted_projections(x, dirs), sorted_projections(y, dirs))
