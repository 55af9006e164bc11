"""Accuracy against cost: every solver, several step counts, one high-precision reference.

``compare`` solves the probability-flow ODE of one model from one seeded x_T with each solver, grid
and step count, and measures each endpoint against a reference solve of the same ODE from the same
x_T, row by row::

    e_i = |x_i - x_ref,i| / sqrt(dim)                 (the per-row endpoint error)
    median = q50(e),  p90 = q90(e),  max = max_i e_i  (quantiles interpolate linearly between order statistics)
    error = rms = sqrt(mean_i e_i^2)                  (the one number earlier versions reported)

Why several statistics: a few rows start near a boundary between basins of the flow and end in
another mixture component under any perturbation. They dominate the RMS (at 16-D one such row in
1000 makes it 20 times the median), while the median is what a typical sample sees and the 90th
percentile is the tail. With ground truth (the built-in mixture, or ``mixture=``) every row also
reports ``flipped``: the fraction of rows that end in another component than the reference does,
the component being the argmax of the posterior responsibility at t_end (``GaussianMixture.component``).

Without a model it builds ground truth: ``GaussianMixture.default(dim)`` (two sharp components of
std 0.05 and 0.1 beside two broad ones) under the chosen SDE, whose score is exact, so the only error
left is the solver's. x_T are then exact draws from the mixture's p_T.

The reference is computed in float64:
  * built-in mixture: classical RK4 on the log-SNR grid with ``ref_steps`` steps; a second RK4 solve
    with half the steps gives the reference's own error estimate by Richardson's rule,
    |x_N - x_{N/2}| / (2^4 - 1), reported as ``meta["reference"]["error_estimate"]``;
  * a user's model (a trained checkpoint, say): dopri5 (torchdiffeq) with rtol = atol = ``ref_tol``
    (1e-10), and a second solve at 100 ``ref_tol`` whose distance to the first bounds the error from above.
The harness warns when a reported RMS is not at least ten times the reference's error estimate.

Step counts. ``nfe=(...)`` gives budgets of network evaluations: each solver gets
floor(budget / nfe_per_step) steps (at least 1), so solvers of 1, 2 or 3 calls per step cover the same
NFE range; the NFE reported is the one counted during the solve. ``steps=(...)`` instead gives the
same raw step counts to every solver. Adaptive solvers (dopri5, ...) run at tolerances ``tolerances``.

Tuned grids. The grid name ``"tuned"`` stands for a grid tuned to the model and each solver and step
count by ``sdekit.solvers.tune.tune``, from prior draws of its own seed (``seed + TUNE_SEED_OFFSET``,
so never the compared x_T). Its rows are labelled grid = "tuned" and carry the one-time tuning cost in
network calls, ``tune_nfe``; one-step runs and stochastic solvers are not tuned.

Reading the results. ``CompareResults.leaderboard(budgets, statistic)`` gives the best solver and
grid per NFE budget, tuned and untuned grids apart (``statistic="excess"``, ``"path_median"`` or ``"mode_err"``: the
best stochastic row); ``table()`` lists every row; ``save(dir)`` writes results.json, results.csv and
error_vs_nfe.png.

Stochastic solvers (euler_maruyama, dpmpp_2m_sde, pc, ...) are left out by default: their endpoint depends on the
noise, so the endpoint error against the ODE reference does not apply. Named explicitly (they need ground truth:
the built-in mixture or ``mixture=``), their rows have ``metric = "sliced_w2"`` and are measured two ways.

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

Pathwise (strong) error.  A solver whose noise is the increments of the rows' Brownian paths
(``Evaluator.path_noise``; a row's path is a function of (seed, row, t) alone, ``sdekit.noise.BrownianPath``) solves,
at every step count, one realisation of its SDE; so does one whose per-call draws (``Evaluator.randn_like``) are the
same at every step count (Restart: K jumps per interval, the k-th call giving every row its k-th draw). For those the
reference is the same solver from the same x_T and seed with ``ref_steps`` steps on the log-SNR grid, in float64: as
the steps grow it converges to that solver's strong solution on that path (for eta = 1 the reverse SDE's; order 1,
the noise of a linear SDE being additive: Kloeden & Platen 1992, sec. 10.4). The same solver and not one common
reference, so that a solver's own options (eta, s_noise, restart intervals, the noiseless last step) define the limit
its coarse solves are measured against. Rows report median / p90 / rms / max of e_i = |x_i - x_ref,i| / sqrt(dim)
(``path_median``, ...; the median is robust to the few rows that switch modes under any perturbation); the reference's
own error is estimated by Richardson's rule from a solve with half the steps, |x_N - x_{N/2}| / (2^p - 1),
p = min(order, 1) (with one Gaussian per step no scheme passes strong order 1), in ``meta["pathwise"][solver]``,
and the harness warns unless its median lies ten times below the solver's smallest median error. Which solvers
qualify is probed, not listed (``pathwise_applies``): two short solves (6 and 12 steps, 2 rows) with a noise source
that records the per-call draws; where they differ in number or shape (pc's Langevin corrector, heun_churn's churn,
ddpm, torchsde's grid increments) a finer solve draws other noise, there is no same-path reference, and the rows'
``path_*`` are None with the reason in ``meta["pathwise"][solver]["reason"]``. ``pathwise=False`` skips it all (the
reference costs 1.5 ``ref_steps`` steps per solver, once).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from .ground_truth import GaussianMixture
from .noise import RowNoise
from .parameterization import ScoreModel
from .plotting import save_figure
from .sde import SDE_NAMES, LinearSDE, sde_from_name
from .solvers.base import NotApplicableError

Tensor = torch.Tensor

__all__ = ["compare", "CompareResults", "CompareRow", "Leaderboard", "LeaderboardEntry", "endpoint_error",
           "per_row_error", "error_summary", "flipped_fraction", "sliced_w2", "LawReference", "exact_law",
           "pathwise_applies", "default_solvers", "make_sde", "SDE_NAMES", "STATISTICS", "LAW_STATISTICS", "TUNED"]

DEFAULT_NFE = (5, 10, 15, 20, 30, 50, 100)
DEFAULT_GRIDS = ("logsnr", "quadratic", "uniform", "karras")  # quadratic and uniform win at low NFE
DEFAULT_TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)
ENDPOINT = "endpoint_rmse"  # the metric of deterministic rows (all statistics of e_i are kept)
TUNED = "tuned"  # the grid name that asks for a grid tuned to the model and solver
TUNE_SEED_OFFSET = 1_000_003  # tuning draws use seed + this: independent of the compared x_T
SLICED = "sliced_w2"  # the metric of stochastic rows (see the module docstring)
STATISTICS = {"median": "median", "p90": "p90", "rms": "error", "max": "max"}  # statistic -> CompareRow field
LAW_STATISTICS = {"excess": "excess", "path_median": "path_median", "mode_err": "mode_err"}  # of stochastic rows
_LABELS = {"median": "median", "p90": "90th percentile", "rms": "RMS", "max": "maximum",
           "excess": "sliced W2 to exact samples minus its floor", "path_median": "median pathwise error",
           "mode_err": "mode-weight error"}
LAW_SETS = 8  # R: exact reference sets per run (the first gives sw2, all of them its standard error)
FLOOR_PAIRS = 3  # P: pairs of further exact sets whose median sliced W2 is the floor
PATH_PROBE_STEPS = (6, 12)  # step counts of the two probe solves of pathwise_applies


def make_sde(name: Union[str, LinearSDE]) -> LinearSDE:
    """An SDE by short name: vp (VPSDE), subvp, ve (VESDE sigma 0.01..50), cosine; an SDE passes through."""
    if isinstance(name, LinearSDE):
        return name
    return sde_from_name(name)


def _is_deterministic(info) -> bool:
    """Deterministic solvers, plus stochastic ones whose noise level defaults to zero (ddim, eta = 0)."""
    return not info.stochastic or info.options.get("eta", None) == 0


def default_solvers() -> list[str]:
    """Every registered deterministic fixed-step solver (the default set of ``compare``)."""
    from . import solvers

    return [n for n in solvers.available() if _is_deterministic(solvers.get(n)) and not solvers.get(n).adaptive]


# -- metrics ------------------------------------------------------------------------------------------
def per_row_error(x: Tensor, x_ref: Tensor) -> Tensor:
    """e_i = |x_i - x_ref,i| / sqrt(dim) for every row, float64, shape (batch,)."""
    d = (x.to(torch.float64) - x_ref.to(torch.float64)).reshape(x.shape[0], -1)
    return d.norm(dim=1) / math.sqrt(d.shape[1])


def error_summary(e: Tensor) -> dict:
    """{"median", "p90", "rms", "max"} of per-row errors e (quantiles interpolate linearly)."""
    e = e.to(torch.float64)
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=torch.float64))
    return {"median": float(q[0]), "p90": float(q[1]), "rms": float(e.pow(2).mean().sqrt()), "max": float(e.max())}


def endpoint_error(x: Tensor, x_ref: Tensor) -> float:
    """The RMS of the per-row errors: sqrt(mean over rows of |x - x_ref|^2 / dim), in float64."""
    return float(per_row_error(x, x_ref).pow(2).mean().sqrt())


def flipped_fraction(gm: GaussianMixture, x: Tensor, x_ref: Tensor, t, sde: LinearSDE) -> float:
    """Fraction of rows whose most likely mixture component at time t differs between x and x_ref."""
    return float((gm.component(x, t, sde) != gm.component(x_ref, t, sde)).to(torch.float64).mean())


def sliced_w2(x: Tensor, y: Tensor, n_proj: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (rows), averaged over ``n_proj``
    random unit directions: sqrt(mean_dirs W2^2 of the 1-D projections), each W2 by sorting."""
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    y = y.to(torch.float64).reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs sample sets of equal shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    dirs = _directions(x.shape[1], n_proj, seed)
    return _sw2_sorted(_sorted_projections(x, dirs), _sorted_projections(y, dirs))


def _directions(dim: int, n_proj: int, seed: int) -> Tensor:
    """``n_proj`` random unit directions of R^dim (columns), float64, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(dim, n_proj, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=0, keepdim=True)


def _sorted_projections(x: Tensor, dirs: Tensor) -> Tensor:
    """The rows' projections on each direction, sorted per direction: (n, n_proj), float64."""
    px, _ = torch.sort(x.to(torch.float64).reshape(x.shape[0], -1) @ dirs, dim=0)
    return px


def _sw2_sorted(px: Tensor, py: Tensor) -> float:
    """Sliced W2 from two sets of sorted projections of equal size."""
    return float(torch.sqrt(((px - py) ** 2).mean()))


# -- the law of stochastic samples: sliced W2 over its floor with a standard error, mode weights --------------
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
        n, dirs = first.shape[0], _directions(first[0].numel(), n_proj, seed)
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
        values = [_sw2_sorted(a, b) for a, b in zip(floor_proj[::2], floor_proj[1::2])]
        null = values + [_sw2_sorted(a, b) for a, b in zip(projected[::2], projected[1::2])]
        null_sd = statistics.stdev(null) if len(null) > 1 else float("nan")
        return cls(dirs, projected, statistics.median(values), values, null_sd,
                   null_sd * _median_sd_factor(len(values)), classify, target,
                   statistics.median(modes) if modes else None)

    def metrics(self, x: Tensor) -> dict:
        """{"sw2", "excess", "excess_se", "mode_err"} of the sample set x (n rows, as many as each exact set)."""
        px = _projected_set(x, self.dirs, self.refs[0].shape[0])
        d = [_sw2_sorted(px, r) for r in self.refs]
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
    return _sorted_projections(x, dirs)


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


# -- pathwise error: which solvers have a same-path reference ---------------------------------------------------
class _NoiseProbe(RowNoise):
    """Row noise that records the shapes of its per-call draws and whether a Brownian path was asked for."""

    def __init__(self, n_rows: int):
        super().__init__(0, n_rows)
        self.draws: list = []
        self.paths = 0

    def randn_like(self, x: Tensor) -> Tensor:
        self.draws.append(tuple(x.shape))
        return super().randn_like(x)

    def path(self, T: float, rel_tol: float = 2.0**-12):
        self.paths += 1
        return super().path(T, rel_tol)


def pathwise_applies(model: ScoreModel, solver: str, x: Tensor) -> tuple[bool, str]:
    """(whether a finer solve of ``solver`` with the same seed refines the same noise, why), probed by solving from
    the rows x (two suffice) on ``PATH_PROBE_STEPS`` log-SNR grids with a noise source that records the per-call
    draws: noise from the Brownian paths, or the same per-call draws at both step counts, qualifies."""
    from . import solvers
    from .solvers.base import Evaluator
    from .solvers.grids import make_grid

    info, seen = solvers.get(solver), []
    for k in PATH_PROBE_STEPS:
        probe = _NoiseProbe(x.shape[0])
        ts = make_grid(model.sde, k, "logsnr")
        ts = ts[:-1] if float(model.sde.sigma(ts[-1])) == 0.0 else ts  # the driver's zero-noise jump draws nothing
        try:
            for _ in info.fn(Evaluator(model, probe), x.clone(), ts):
                pass
        except (solvers.SolverError, ValueError) as err:
            return False, f"the probe solve failed ({err})"
        seen.append(probe)
    a, b = seen
    if a.draws != b.draws:
        return False, (f"fresh per-call draws ({len(a.draws)} at {PATH_PROBE_STEPS[0]} steps, {len(b.draws)} at "
                       f"{PATH_PROBE_STEPS[1]}, shapes {sorted(set(a.draws) | set(b.draws))}): a finer solve draws "
                       "other noise, so there is no fine solve of the same path to compare with")
    if a.draws:
        return True, (f"{len(a.draws)} per-call draws, the same at every step count"
                       + (", and the rows' Brownian paths" if a.paths else ""))
    return True, "the rows' Brownian paths" if a.paths else "no noise"


# -- results ------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One solve: solver, grid ("tuned" for a tuned grid, "adaptive" with tol), steps, nfe (counted),
    error (the RMS of the per-row errors e_i; for metric "sliced_w2" the sliced W2 to exact samples instead),
    time_s (wall time of the solve), metric ("endpoint_rmse" or "sliced_w2"), tol (adaptive solvers only),
    median / p90 / max of e_i, flipped (fraction of rows ending in another mixture component than the
    reference; ground truth only) and tune_nfe (network calls spent tuning the grid; tuned rows only).

    Stochastic rows (metric "sliced_w2"; None on the others): excess (error minus the floor) and excess_se (its
    standard error), mode_err (mode-weight total variation), and path_median / path_p90 / path_rms / path_max of
    the per-row error against the fine same-path reference (None where no such reference exists)."""

    solver: str
    grid: str
    steps: Optional[int]
    nfe: int
    error: float
    time_s: float
    metric: str = ENDPOINT
    tol: Optional[float] = None
    median: Optional[float] = None
    p90: Optional[float] = None
    max: Optional[float] = None
    flipped: Optional[float] = None
    tune_nfe: Optional[int] = None
    excess: Optional[float] = None
    excess_se: Optional[float] = None
    mode_err: Optional[float] = None
    path_median: Optional[float] = None
    path_p90: Optional[float] = None
    path_rms: Optional[float] = None
    path_max: Optional[float] = None

    @property
    def rms(self) -> float:
        return self.error

    @property
    def tuned(self) -> bool:
        return self.grid == TUNED

    def statistic(self, name: str) -> float:
        """The value of one statistic (median, p90, rms, max; for stochastic rows excess, path_median, mode_err);
        NaN where it does not apply."""
        column = STATISTICS.get(name) or LAW_STATISTICS.get(name)
        if column is None:
            raise ValueError(f"unknown statistic {name!r}; accepted: {', '.join([*STATISTICS, *LAW_STATISTICS])}")
        value = getattr(self, column)
        return float("nan") if value is None else float(value)


_CSV_TYPES = {"steps": int, "nfe": int, "tune_nfe": int, "solver": str, "grid": str, "metric": str}


def _csv_values(line: dict) -> dict[str, Any]:
    """A ``to_csv`` line's fields, typed as its column (empty -> None)."""
    return {k: None if v == "" else _CSV_TYPES.get(k, float)(v) for k, v in line.items()}


def _grid_label(r: CompareRow) -> str:
    return r.grid if r.tol is None else f"tol={r.tol:.0e}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _law_head(statistic: Optional[str] = None) -> str:
    """Column heads of a stochastic row's numbers (``_law_cells``), the ranked one starred."""
    def head(name: str, label: str) -> str:
        return label + ("*" if name == statistic else "")

    return (f" {'sw2':>10} {head('excess', 'excess'):>10} {'+-SE':>9} {head('mode_err', 'mode_err'):>9}"
            f" {head('path_median', 'path_med'):>10} {'path_p90':>10}")


def _law_cells(r: CompareRow) -> str:
    return (f" {r.error:>10.3e} {_fmt(r.excess, '.3e'):>10} {_fmt(r.excess_se, '.2e'):>9} "
            f"{_fmt(r.mode_err, '.4f'):>9} {_fmt(r.path_median, '.3e'):>10} {_fmt(r.path_p90, '.3e'):>10}")


@dataclass
class LeaderboardEntry:
    """The best row with nfe <= budget among untuned grids (named grids and adaptive solvers), among
    tuned grids (kind "tuned") or among stochastic rows (kind "sde"); row is None when no run of that kind fits
    the budget."""

    budget: int
    kind: str
    row: Optional[CompareRow]


class Leaderboard(list):
    """``LeaderboardEntry``s by budget, ranked by ``statistic``; ``table()`` (or str) prints them. ``floor``: the
    sliced-W2 floor, printed with a stochastic leaderboard."""

    def __init__(self, entries: Iterable[LeaderboardEntry] = (), statistic: str = "median",
                 floor: Optional[float] = None):
        super().__init__(entries)
        self.statistic = statistic
        self.floor = floor

    def table(self) -> str:
        if self.statistic in LAW_STATISTICS:
            return self._law_table()
        rows = [e.row for e in self if e.row is not None]
        stats = ["median", "p90", "rms"] + (["max"] if self.statistic == "max" else [])
        flips = any(r.flipped is not None for r in rows)
        tuned = any(e.kind == TUNED for e in self)
        ws = max([6] + [len(r.solver) for r in rows])
        wg = max([4] + [len(_grid_label(r)) for r in rows])
        head = (f"{'NFE <=':>6}  {'grids':<7}  {'solver':<{ws}}  {'grid':<{wg}} {'steps':>5} {'NFE':>5}"
                + "".join(f" {s + ('*' if s == self.statistic else ''):>10}" for s in stats)
                + (f" {'flipped':>8}" if flips else "") + (f" {'tuning NFE':>10}" if tuned else ""))
        lines = [f"best per NFE budget by the {_LABELS[self.statistic]} (*) of e_i = |x_i - x_ref,i| / sqrt(dim)",
                 head, "-" * len(head)]
        for e in self:
            line = f"{e.budget:>6}  {e.kind:<7}  "
            r = e.row
            if r is None:
                lines.append(line + "(no finite run within this budget)")
                continue
            line += (f"{r.solver:<{ws}}  {_grid_label(r):<{wg}} {_fmt(r.steps, 'd'):>5} {r.nfe:>5}"
                     + "".join(f" {r.statistic(s):>10.3e}" for s in stats))
            line += f" {_fmt(None if r.flipped is None else 100 * r.flipped, '.2f') + '%':>8}" if flips else ""
            line += f" {_fmt(r.tune_nfe, 'd'):>10}" if tuned else ""
            lines.append(line.rstrip())
        return "\n".join(lines)

    def _law_table(self) -> str:
        rows = [e.row for e in self if e.row is not None]
        ws = max([6] + [len(r.solver) for r in rows])
        wg = max([4] + [len(_grid_label(r)) for r in rows])
        head = f"{'NFE <=':>6}  {'solver':<{ws}}  {'grid':<{wg}} {'steps':>5} {'NFE':>5}" + _law_head(self.statistic)
        floor = "" if self.floor is None else f"; sw2 floor {self.floor:.3e}"
        lines = [f"stochastic solvers: best per NFE budget by the {_LABELS[self.statistic]} (*){floor}",
                 head, "-" * len(head)]
        for e in self:
            r = e.row
            if r is None:
                lines.append(f"{e.budget:>6}  (no finite run within this budget)")
                continue
            lines.append(f"{e.budget:>6}  {r.solver:<{ws}}  {_grid_label(r):<{wg}} {_fmt(r.steps, 'd'):>5} {r.nfe:>5}"
                         + _law_cells(r).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class CompareResults(list):
    """A list of ``CompareRow`` with the run's settings in ``meta``: ``leaderboard``, ``best``, ``table``,
    ``plot``, ``save`` (JSON, CSV and PNG), ``to_json``/``from_json``, ``to_csv``/``from_csv``."""

    def __init__(self, rows: Iterable[CompareRow] = (), meta: Optional[dict] = None):
        super().__init__(rows)
        self.meta = dict(meta or {})

    # -- views --------------------------------------------------------------------------------------
    def table(self) -> str:
        """Every row as a fixed-width text table (stochastic rows in a second table of their own numbers)."""
        endpoint = [r for r in self if r.metric != SLICED]
        lines = self._endpoint_lines(endpoint) if endpoint or len(self) == 0 else []
        law = [r for r in self if r.metric == SLICED]
        if law:
            lines += ([""] if lines else []) + self._law_lines(law)
        return "\n".join(lines)

    def _endpoint_lines(self, rows: list) -> list:
        flips = any(r.flipped is not None for r in rows)
        head = (f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6} {'median':>10} {'p90':>10} {'rms':>10} "
                f"{'max':>10}" + (f" {'flipped':>8}" if flips else "") + f" {'time_s':>8}  metric")
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r.solver:<16} {_grid_label(r):<9} {_fmt(r.steps, 'd'):>6} {r.nfe:>6} "
                         f"{_fmt(r.median, '.3e'):>10} {_fmt(r.p90, '.3e'):>10} {r.error:>10.3e} "
                         f"{_fmt(r.max, '.3e'):>10}"
                         + (f" {_fmt(r.flipped, '.4f'):>8}" if flips else "") + f" {r.time_s:>8.3f}  {r.metric}"
                         + (f" (tuning {r.tune_nfe} NFE)" if r.tune_nfe is not None else ""))
        ref = self.meta.get("reference", {})
        if "error_estimate" in ref:
            lines.append(f"reference: {ref.get('method', '?')}; its own error estimate {ref['error_estimate']:.2e}")
        return lines

    def _law_lines(self, rows: list) -> list:
        head = f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6}" + _law_head() + f" {'time_s':>8}"
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r.solver:<16} {_grid_label(r):<9} {_fmt(r.steps, 'd'):>6} {r.nfe:>6}" + _law_cells(r)
                         + f" {r.time_s:>8.3f}")
        return lines + self.law_notes()

    def law_notes(self) -> list:
        """Lines that say what the stochastic rows' numbers are measured against (floor, pathwise references)."""
        law, lines = self.meta.get("law") or {}, []
        if "sliced_w2_floor" in self.meta:
            lines.append(f"sw2: sliced W2 to {self.meta.get('n', '?')} exact samples; floor "
                         f"{self.meta['sliced_w2_floor']:.3e} +- {law.get('floor_se', float('nan')):.1e} (median of "
                         f"{law.get('floor_pairs', '?')} pairs of exact sets); excess = sw2 - floor, +-SE its standard "
                         f"error; mode_err floor {_fmt(law.get('mode_err_floor'), '.4f')}")
        paths = self.meta.get("pathwise")
        if isinstance(paths, str):
            lines.append(f"path_*: {paths}")
        for solver, info in (paths.items() if isinstance(paths, dict) else ()):
            if info.get("applies"):
                est = info.get("error_estimate", {}).get("median", float("nan"))
                lines.append(f"path_*: {solver} against {info['method']} (its own median error ~{est:.1e})")
            else:
                lines.append(f"path_*: none for {solver}: {info.get('reason', '?')}")
        return lines

    def __str__(self) -> str:
        return self.table()

    def best(self, max_nfe: int, metric: str = ENDPOINT, statistic: str = "rms") -> Optional[CompareRow]:
        """The row of smallest ``statistic`` among those with nfe <= max_nfe (None if there is none)."""
        rows = [r for r in self if r.nfe <= max_nfe and r.metric == metric and math.isfinite(r.statistic(statistic))]
        return min(rows, key=lambda r: (r.statistic(statistic), r.nfe)) if rows else None

    def leaderboard(self, budgets: Optional[Sequence[int]] = None, statistic: str = "median") -> Leaderboard:
        """The best endpoint row per NFE budget (nfe <= budget) by ``statistic`` (median, p90, rms, max),
        one entry for untuned grids and, if any were run, one for tuned grids; or, for ``statistic`` excess,
        path_median or mode_err, the best stochastic row per budget. budgets default to the run's NFE budgets
        (or the NFE counts it measured)."""
        if statistic in LAW_STATISTICS:
            return self._law_leaderboard(budgets, statistic)
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; accepted: {', '.join([*STATISTICS, *LAW_STATISTICS])}")
        endpoint = [r for r in self if r.metric == ENDPOINT]
        if budgets is None:
            budgets = self.meta.get("nfe_budgets") or sorted({r.nfe for r in endpoint if r.nfe > 0})
        kinds = ["untuned"] + ([TUNED] if any(r.tuned for r in endpoint) else [])
        entries = []
        for b in sorted({int(b) for b in budgets}):
            for kind in kinds:
                pool = CompareResults(r for r in endpoint if r.tuned == (kind == TUNED))
                entries.append(LeaderboardEntry(b, kind, pool.best(b, statistic=statistic)))
        return Leaderboard(entries, statistic)

    def _law_leaderboard(self, budgets: Optional[Sequence[int]], statistic: str) -> Leaderboard:
        law = CompareResults(r for r in self if r.metric == SLICED)
        if budgets is None:
            budgets = self.meta.get("nfe_budgets") or sorted({r.nfe for r in law if r.nfe > 0})
        entries = [LeaderboardEntry(b, "sde", law.best(b, metric=SLICED, statistic=statistic))
                   for b in sorted({int(b) for b in budgets})]
        return Leaderboard(entries, statistic, floor=self.meta.get("sliced_w2_floor"))

    # -- files --------------------------------------------------------------------------------------
    def to_json(self, path) -> None:
        with open(path, "w") as fh:
            json.dump({"meta": self.meta, "rows": [asdict(r) for r in self]}, fh, indent=1, default=_jsonable)

    @classmethod
    def from_json(cls, path) -> "CompareResults":
        with open(path) as fh:
            data = json.load(fh)
        return cls([CompareRow(**r) for r in data["rows"]], data.get("meta", {}))

    def to_csv(self, path) -> None:
        """Every row, one line each, the columns of ``CompareRow`` (empty where a value does not apply)."""
        names = [f.name for f in fields(CompareRow)]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for r in self:
                writer.writerow(["" if v is None else v for v in _values(r, names)])

    @classmethod
    def from_csv(cls, path) -> "CompareResults":
        """Rows written by ``to_csv`` (the settings live in the JSON file only)."""
        with open(path, newline="") as fh:
            rows = [CompareRow(**_csv_values(line)) for line in csv.DictReader(fh)]
        return cls(rows)

    def save(self, directory) -> list[str]:
        """Write results.json, results.csv and error_vs_nfe.png into ``directory``; return their paths."""
        os.makedirs(directory, exist_ok=True)
        paths = [os.path.join(directory, name) for name in ("results.json", "results.csv", "error_vs_nfe.png")]
        self.to_json(paths[0])
        self.to_csv(paths[1])
        self.plot(paths[2])
        return paths

    def plot(self, path, title: Optional[str] = None, statistic: str = "median") -> None:
        """Log-log error (``statistic`` of the per-row errors) against NFE saved as a PNG (matplotlib,
        Agg): one panel per time grid with one line per solver (same colour in every panel); with stochastic
        rows, a further row of two panels: the excess of the sliced W2 over its floor with +-1 SE bars, and the
        median pathwise error against the same-path reference."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grids = list(dict.fromkeys(r.grid for r in self if r.metric == ENDPOINT))
        law = any(r.metric == SLICED for r in self)
        ncol = max(2 if len(grids) == 4 else (min(len(grids), 3) or 1), 2 if law else 1)
        nrow = (len(grids) + ncol - 1) // ncol
        fig = plt.figure(figsize=(4.2 * ncol + 1.8, 3.8 * max(nrow + law, 1)))
        spec = fig.add_gridspec(max(nrow + law, 1), ncol)
        solvers = sorted({r.solver for r in self})
        cmap = plt.get_cmap("tab20")

        def color(solver):
            return cmap(solvers.index(solver) % 20)

        first: list = []
        for i, grid in enumerate(grids):
            row, col = divmod(i, ncol)
            ax = fig.add_subplot(spec[row, col], sharey=first[row] if col else None)
            if col:
                ax.tick_params(labelleft=False)
            else:
                first.append(ax)
            _endpoint_panel(ax, self, grid, statistic, solvers, color)
        if first:
            first[0].set_ylabel(f"{_LABELS[statistic]} of the per-row error vs reference")
        if law:
            _law_panels(fig.add_subplot(spec[nrow, 0]), fig.add_subplot(spec[nrow, 1]), self, solvers, color)
        handles: dict = {}
        for ax in fig.axes:  # lines and error-bar containers that carry a solver's label
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
        ref = self.meta.get("reference", {}).get("error_estimate")
        head = title or self.meta.get("title", "sdekit compare: error against NFE")
        fig.suptitle(head + (f"  (reference's own error ~{ref:.1e})" if ref else ""), fontsize=10)
        save_figure(fig, path, dpi=110, rect=(0, 0, 1 - 1.6 / (4.2 * ncol + 1.8), 1))


def _endpoint_panel(ax, rows: Sequence[CompareRow], grid: str, statistic: str, solvers, color) -> None:
    """One grid's endpoint error (``statistic``) against NFE, one line per solver."""
    for solver in solvers:
        pts = sorted((r.nfe, r.statistic(statistic)) for r in rows if r.solver == solver and r.metric == ENDPOINT
                     and r.grid == grid and 0 < r.statistic(statistic) < 1e3)
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=color(solver),
                      label=solver)
    ax.set_title(f"{grid} grid", fontsize=9)
    ax.set_xlabel("NFE (network evaluations)")
    ax.grid(True, which="both", alpha=0.3)


def _law_panels(ax_excess, ax_path, rows: Sequence[CompareRow], solvers, color) -> None:
    """Stochastic rows against NFE: excess +- 1 SE (linear axis: it may be negative) and the median pathwise
    error (log), one line per solver and grid."""
    for solver in solvers:
        for grid in dict.fromkeys(r.grid for r in rows if r.solver == solver and r.metric == SLICED):
            mine = sorted((r for r in rows if r.solver == solver and r.grid == grid and r.metric == SLICED),
                          key=lambda r: r.nfe)
            label = solver if grid == "logsnr" else f"{solver} ({grid})"
            ex = [r for r in mine if r.excess is not None and math.isfinite(r.excess)]
            if ex:
                ax_excess.errorbar([r.nfe for r in ex], [r.excess for r in ex], yerr=[r.excess_se or 0.0 for r in ex],
                                   marker="o", markersize=3, capsize=2, color=color(solver), label=label)
            pw = [r for r in mine if r.path_median is not None and 0 < r.path_median < 1e3]
            if pw:
                ax_path.loglog([r.nfe for r in pw], [r.path_median for r in pw], marker="o", markersize=3,
                               color=color(solver), label=label)
    ax_excess.set_xscale("log")
    ax_excess.axhline(0.0, color="k", linewidth=0.6)
    ax_excess.set_title("stochastic: sliced W2 to exact samples - floor (+-1 SE)", fontsize=9)
    ax_path.set_title("stochastic: median pathwise error vs same-path reference", fontsize=9)
    for ax in (ax_excess, ax_path):
        ax.set_xlabel("NFE (network evaluations)")
        ax.grid(True, which="both", alpha=0.3)


def _values(r: CompareRow, names: Sequence[str]) -> list:
    return [getattr(r, n) for n in names]


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, torch.dtype):
        return str(obj)
    return repr(obj)


# -- the harness: validate, build, run, report ----------------------------------------------------------
def _names(value) -> list[str]:
    """A list of names from a list or a comma-separated string."""
    if isinstance(value, str):
        value = value.split(",")
    return list(dict.fromkeys(v.strip() for v in value if v.strip()))


def _check_settings(nfe, steps, grids, n, dim) -> list[str]:
    """Validate what needs no model; return the grid names."""
    from .solvers.grids import GRIDS

    accepted = ", ".join([*GRIDS, TUNED])
    grids = _names(grids)
    if not grids:
        raise ValueError(f"no time grid given; accepted: {accepted}")
    for g in grids:
        if g not in GRIDS and g != TUNED:
            raise ValueError(f"unknown grid {g!r}; accepted: {accepted}")
    if TUNED in grids:
        try:
            from .solvers.tune import tune  # noqa: F401
        except ImportError as err:
            raise ValueError(f"grid {TUNED!r} needs sdekit.solvers.tune.tune, which this install lacks "
                             f"({err})") from None
    counts, what = (nfe, "NFE budgets nfe") if steps is None else (steps, "step counts steps")
    if counts is None or len(counts) == 0:
        raise ValueError("give NFE budgets nfe=(...) or step counts steps=(...)")
    if any(int(c) != c or c < 1 for c in counts):
        raise ValueError(f"{what} must be positive integers; got {list(counts)}")
    for name, value in (("n", n), ("dim", dim)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return grids


def _resolve_solvers(names, stochastic_ok: bool) -> list[str]:
    from . import solvers

    if names is None:
        return default_solvers()
    names = _names(names)
    if not names:
        raise ValueError(f"no solver given; available: {', '.join(solvers.available())}")
    for n in names:
        solvers.get(n)  # raises ValueError listing the valid names
    bad = [n for n in names if not _is_deterministic(solvers.get(n))]
    if bad and not stochastic_ok:
        raise ValueError(f"stochastic solver(s) {bad} need exact samples of the target to be measured "
                         "(sliced W2); they are supported with the built-in mixture or mixture=")
    return names


@dataclass
class _Problem:
    """What every run shares: the model, its ground truth (if any), x_T and the reference endpoints."""

    model: ScoreModel
    gm: Optional[GaussianMixture]
    x_T: Tensor
    seed: int
    x_ref: Optional[Tensor] = None
    law: Optional[LawReference] = None  # exact draws of the law at t_end, for stochastic solvers
    paths: dict = field(default_factory=dict)  # stochastic solver -> its fine same-path endpoints (or None)
    tune: dict = field(default_factory=dict)  # keywords for solvers.tune.tune beyond model/solver/steps


def _build(model, x_T, mixture, sde, dim, n, seed, dtype) -> tuple[_Problem, bool]:
    """The problem and whether it is the built-in ground truth (exact score of a mixture)."""
    gm = mixture
    builtin = model is None
    if builtin:
        gm = gm if gm is not None else GaussianMixture.default(dim=dim)
        model = gm.model(make_sde(sde))
    elif not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    the_sde = model.sde
    if x_T is None:
        gen = torch.Generator().manual_seed(seed)
        if gm is not None:
            x_T = gm.sample_t(n, the_sde.T, the_sde, generator=gen, dtype=torch.float64)
        else:
            x_T = the_sde.prior_sample((n, dim), generator=gen, dtype=torch.float64)
    return _Problem(model, gm, x_T.to(dtype), seed), builtin


def _meta(prob: _Problem, builtin: bool, names, grids, nfe, steps) -> dict:
    the_sde, x_T = prob.model.sde, prob.x_T
    meta = {
        "sde": repr(the_sde), "model": "GaussianMixture exact score" if builtin else repr(prob.model),
        "mixture": repr(prob.gm) if prob.gm is not None else None, "n": int(x_T.shape[0]),
        "dim": int(x_T[0].numel()), "seed": prob.seed, "dtype": str(x_T.dtype), "t_start": the_sde.T,
        "t_end": the_sde.eps, "error": "per-row e_i = |x_i - x_ref,i| / sqrt(dim); error = rms = sqrt(mean e_i^2); "
        "median, p90 and max of e_i",
        "flipped": "fraction of rows whose argmax-responsibility mixture component at t_end differs from the "
        "reference's" if prob.gm is not None else None,
        "solvers": names, "grids": list(grids), "nfe_budgets": list(nfe) if steps is None else None,
        "steps": list(steps) if steps is not None else None,
    }
    if TUNED in grids:
        meta["tuning"] = {"method": "sdekit.solvers.tune.tune", "seed": prob.seed + TUNE_SEED_OFFSET, **prob.tune,
                          "note": "tuned on prior draws of their own seed, never the compared x_T; one-step runs "
                          "and stochastic solvers are not tuned; each row's tune_nfe is its tuning cost"}
    return meta


def _reference(model: ScoreModel, x_T: Tensor, builtin: bool, ref_steps: int, ref_tol: float) -> tuple[Tensor, dict]:
    from .solvers import sample

    x64 = x_T.to(torch.float64)
    t0 = time.perf_counter()
    if builtin:
        fine = sample(model, x64, "rk4", ref_steps, grid="logsnr")
        coarse = sample(model, x64, "rk4", max(1, ref_steps // 2), grid="logsnr")
        diff = endpoint_error(fine.x, coarse.x)
        info = {"method": f"rk4, {ref_steps} steps on the logsnr grid, float64",
                "error_estimate": diff / 15.0, "difference_to_half_steps": diff,
                "nfe": fine.nfe, "check": f"rk4 with {max(1, ref_steps // 2)} steps"}
    else:
        fine = sample(model, x64, "dopri5", rtol=ref_tol, atol=ref_tol)
        coarse = sample(model, x64, "dopri5", rtol=100 * ref_tol, atol=100 * ref_tol)
        diff = endpoint_error(fine.x, coarse.x)
        info = {"method": f"dopri5 (torchdiffeq), rtol = atol = {ref_tol:g}, float64",
                "error_estimate": diff, "difference_to_looser": diff, "nfe": fine.nfe,
                "check": f"dopri5 at rtol = atol = {100 * ref_tol:g} (an upper bound)"}
    info["time_s"] = time.perf_counter() - t0
    return fine.x, info


def _given_reference(reference, x_T: Tensor) -> tuple[Tensor, dict]:
    x_ref = torch.as_tensor(reference)
    if x_ref.shape != x_T.shape:
        raise ValueError(f"reference shape {tuple(x_ref.shape)} must equal x_T shape {tuple(x_T.shape)}")
    return x_ref, {"method": "given by the caller"}


def _prepare_stochastic(prob: _Problem, names: Sequence[str], meta: dict, pathwise: bool, ref_steps: int) -> None:
    """The law reference (exact draws at t_end, seed + 1) and, with ``pathwise``, each stochastic solver's
    same-path reference, into ``prob`` and ``meta``."""
    assert prob.gm is not None  # stochastic solvers are compared only against a mixture
    the_sde = prob.model.sde
    t0 = time.perf_counter()
    prob.law = law = exact_law(prob.gm, the_sde.eps, the_sde, prob.x_T.shape[0], prob.seed + 1)
    meta["sliced_w2_floor"] = law.floor
    meta["law"] = {
        "reference_sets": len(law.refs), "floor_pairs": len(law.floor_values), "floor": law.floor,
        "floor_values": law.floor_values, "floor_se": law.floor_se, "null_sd": law.null_sd,
        "mode_target": None if law.mode_target is None else law.mode_target.tolist(),
        "weights": prob.gm.weights.tolist(), "mode_err_floor": law.mode_floor, "seed": prob.seed + 1,
        "time_s": time.perf_counter() - t0,
        "excess": "sw2 - floor; excess_se^2 = 2 sd_r(SW2(x, E_r))^2 + floor_se^2 (module docstring)",
        "mode_err": "1/2 sum_k |f_k - mode_target_k|, f_k the fraction of samples whose argmax-responsibility "
                    "component is k; mode_target the same fraction among the exact reference draws",
    }
    if not pathwise:
        meta["pathwise"] = "not measured (pathwise=False)"
        return
    meta["pathwise"] = {}
    for name in names:
        if not _is_deterministic(_solver_info(name)):
            prob.paths[name], meta["pathwise"][name] = _path_reference(prob, name, ref_steps)


def _path_reference(prob: _Problem, name: str, ref_steps: int) -> tuple[Optional[Tensor], dict]:
    """The same solver's fine solve of the same rows and seed (module docstring), or None and the reason."""
    from . import solvers

    applies, why = pathwise_applies(prob.model, name, prob.x_T[:2])
    if not applies:
        return None, {"applies": False, "reason": why}
    x64, half = prob.x_T.to(torch.float64), max(1, ref_steps // 2)
    t0 = time.perf_counter()
    try:
        fine = solvers.sample(prob.model, x64, name, ref_steps, grid="logsnr", generator=prob.seed)
        coarse = solvers.sample(prob.model, x64, name, half, grid="logsnr", generator=prob.seed)
    except solvers.SolverError as err:
        return None, {"applies": False, "reason": f"the reference solve failed: {err}"}
    p = min(float(_solver_info(name).order), 1.0)
    diff = error_summary(per_row_error(fine.x, coarse.x))
    return fine.x, {
        "applies": True, "noise": why, "order_used": p, "nfe": fine.nfe, "time_s": time.perf_counter() - t0,
        "method": f"{name}, {ref_steps} steps on the logsnr grid, float64, seed {prob.seed}",
        "check": f"{name} with {half} steps", "difference_to_half_steps": diff,
        "error_estimate": {k: v / (2**p - 1) for k, v in diff.items()},
    }


def _plan(names, nfe, steps, grids, tolerances):
    """(solver, grid, steps, tol) for every run, steps from NFE budgets via nfe_per_step."""
    from . import solvers

    runs = []
    for name in names:
        info = solvers.get(name)
        if info.adaptive:
            runs += [(name, "adaptive", None, tol) for tol in tolerances]
            continue
        if steps is not None:
            counts = sorted({int(s) for s in steps})
        else:
            counts = sorted({max(1, int(b // info.nfe_per_step)) for b in nfe})
        runs += [(name, g, s, None) for g in grids for s in counts
                 if g != TUNED or (s >= 2 and _is_deterministic(info))]
    return runs


def _tuned_grid(prob: _Problem, solver: str, steps: int) -> tuple[Tensor, int]:
    """(ts, tuning cost in NFE) from ``solvers.tune.tune`` on prior draws independent of x_T."""
    from .solvers.tune import tune

    tuned = tune(prob.model, solver, steps, shape=tuple(prob.x_T.shape[1:]),
                 generator=prob.seed + TUNE_SEED_OFFSET, **prob.tune)
    return tuned.ts, int(tuned.nfe)


def _measure(prob: _Problem, name: str, grid: str, k: Optional[int], tol: Optional[float]) -> Union[CompareRow, str]:
    """One solve and its statistics (a NaN row, with a warning, when the solver fails); the reason, a string, when
    the solver refuses the problem before any network call (``NotApplicableError``: a noise-form solver on a flow
    path, which starts at alpha = 0, say)."""
    from . import solvers

    deterministic = _is_deterministic(solvers.get(name))
    kwargs: dict[str, Any] = {} if deterministic else {"generator": prob.seed}
    tune_nfe: Optional[int] = None
    if tol is not None:
        kwargs.update(rtol=tol, atol=tol)
    elif grid == TUNED:
        assert k is not None  # _plan gives tuned runs a step count
        kwargs["ts"], tune_nfe = _tuned_grid(prob, name, k)
    else:
        kwargs.update(steps=k, grid=grid)
    t0 = time.perf_counter()
    try:
        sol = solvers.sample(prob.model, prob.x_T, name, **kwargs)
    except NotApplicableError as err:  # refused before any work: skipped, reported in meta["skipped"]
        return str(err)
    except solvers.SolverError as err:  # NaN / budget: report, keep going
        warnings.warn(f"{name} ({grid}, steps={k}, tol={tol}) failed: {err}", stacklevel=2)
        nan = float("nan")
        if not deterministic:
            return CompareRow(name, grid, k, 0, nan, time.perf_counter() - t0, SLICED, tol, excess=nan)
        return CompareRow(name, grid, k, 0, nan, time.perf_counter() - t0, ENDPOINT, tol, nan, nan, nan, None,
                          tune_nfe)
    dt = time.perf_counter() - t0
    if not deterministic:
        return _law_row(prob, name, grid, k, tol, sol, dt)
    assert prob.x_ref is not None  # compare sets the reference before any run
    s = error_summary(per_row_error(sol.x, prob.x_ref))
    the_sde = prob.model.sde
    flipped = None if prob.gm is None else flipped_fraction(prob.gm, sol.x, prob.x_ref, the_sde.eps, the_sde)
    return CompareRow(name, grid, k, int(sol.nfe), s["rms"], dt, ENDPOINT, tol, s["median"], s["p90"], s["max"],
                      flipped, tune_nfe)


def _law_row(prob: _Problem, name: str, grid: str, k: Optional[int], tol: Optional[float], sol, dt: float) -> CompareRow:
    """A stochastic solve's row: its law against exact draws, its endpoints against the same-path reference."""
    assert prob.law is not None  # compare draws the law reference whenever a stochastic solver runs
    m = prob.law.metrics(sol.x)
    ref = prob.paths.get(name)
    s = error_summary(per_row_error(sol.x, ref)) if ref is not None else {}
    return CompareRow(name, grid, k, int(sol.nfe), m["sw2"], dt, SLICED, tol, excess=m["excess"],
                      excess_se=m["excess_se"], mode_err=m["mode_err"], path_median=s.get("median"),
                      path_p90=s.get("p90"), path_rms=s.get("rms"), path_max=s.get("max"))


def _check_path_references(results: CompareResults) -> None:
    """Record, and warn unless, each same-path reference's median error lies ten times below the solver's smallest
    median pathwise error."""
    paths = results.meta.get("pathwise")
    for name, info in (paths.items() if isinstance(paths, dict) else ()):
        if not info.get("applies"):
            continue
        errs = [r.path_median for r in results if r.solver == name and r.path_median  # 0: the reference's own steps
                and math.isfinite(r.path_median)]
        est = info["error_estimate"]["median"]
        if errs:
            info["below_smallest_error"] = bool(est < min(errs))
            if est * 10 > min(errs):
                warnings.warn(f"the same-path reference of {name} has a median error estimate {est:.2e}, not ten times "
                              f"below its smallest median pathwise error {min(errs):.2e}; raise ref_steps", stacklevel=2)


def _check_reference(results: CompareResults) -> None:
    """Record, and warn unless, the reference's error estimate lies ten times below the smallest RMS."""
    ref = results.meta["reference"]
    est = ref.get("error_estimate")
    errs = [r.error for r in results if r.metric == ENDPOINT and math.isfinite(r.error)]
    if est is not None and errs:
        ref["below_smallest_error"] = bool(est < min(errs))
        if est * 10 > min(errs):
            warnings.warn(f"the reference's error estimate {est:.2e} is not ten times below the smallest "
                          f"reported error {min(errs):.2e}; raise ref_steps (or lower ref_tol)", stacklevel=2)


def _report_skipped(results: CompareResults, skipped: dict, n_runs: int) -> None:
    """meta["skipped"]: {"solver (grid)": why} for the runs a solver refused (e.g. noise-form solvers on a flow path,
    which cannot start at alpha = 0), with one warning; every run refused is an error."""
    results.meta["skipped"] = skipped
    if not skipped:
        return
    if not len(results):
        raise ValueError(f"every run was refused by its solver ({n_runs} runs): " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    warnings.warn(f"compare skipped {len(skipped)} solver/grid pair(s) that refuse this problem: "
                  + ", ".join(skipped) + " (reasons in meta['skipped'])", stacklevel=3)


def _solver_info(name: str):
    from . import solvers

    return solvers.get(name)


@torch.no_grad()
def compare(
    model: Optional[ScoreModel] = None,
    x_T: Optional[Tensor] = None,
    solvers: Union[str, Sequence[str], None] = None,
    nfe: Sequence[int] = DEFAULT_NFE,
    grids: Sequence[str] = DEFAULT_GRIDS,
    reference: Optional[Tensor] = None,
    seed: int = 0,
    n: int = 512,
    dim: int = 2,
    sde: Union[str, LinearSDE] = "vp",
    out=None,
    progress: bool = True,
    *,
    steps: Optional[Sequence[int]] = None,
    mixture: Optional[GaussianMixture] = None,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    dtype: torch.dtype = torch.float64,
    ref_steps: int = 2000,
    ref_tol: float = 1e-10,
    verbose: bool = False,
    tune_n: int = 256,
    tune_options: Optional[dict] = None,
    pathwise: bool = True,
) -> CompareResults:
    """Per-row endpoint error against NFE for each solver x grid x step count (see the module docstring).

    model: a ``ScoreModel``; None builds the exact score of ``mixture`` (default
      ``GaussianMixture.default(dim)``) under ``sde`` ("vp", "subvp", "ve", "cosine" or a LinearSDE).
      With a model, ``mixture=`` names its ground truth (for ``flipped`` and stochastic solvers).
    x_T: starting states (batch first); None draws ``n`` seeded ones (exact p_T draws of the mixture,
      or ``sde.prior_sample`` of shape (n, dim) for a user model).
    solvers: names (list or comma-separated); None = every deterministic fixed-step solver.
    nfe: NFE budgets, turned into per-solver step counts; or ``steps=`` raw step counts for all.
    grids: time grids (uniform, quadratic, logsnr, karras, and "tuned": a grid tuned per solver and
      step count by ``sdekit.solvers.tune.tune`` with n=tune_n and ``tune_options``).
    reference: the reference endpoint (a tensor like x_T) to skip the built-in reference solve (made only when a
      deterministic solver is compared).
    ref_steps: steps of the built-in references: RK4 for the ODE, each stochastic solver itself for its same-path
      reference (pathwise=False skips those: stochastic rows then report only their law).
    dtype: dtype of the compared solves (float64 by default, so the error is discretisation error).
    out: a directory; if given, results.json, results.csv and error_vs_nfe.png are written there.
    Returns ``CompareResults`` (a list of ``CompareRow``) with ``meta`` holding the settings and the
    reference's own error estimate; ``.leaderboard()`` ranks it.
    """
    from tqdm.auto import tqdm

    grids = _check_settings(nfe, steps, grids, n, dim)
    prob, builtin = _build(model, x_T, mixture, sde, dim, n, seed, dtype)
    prob.tune = {"n": tune_n, **(tune_options or {})}
    names = _resolve_solvers(solvers, stochastic_ok=prob.gm is not None)
    runs = _plan(names, nfe, steps, grids, tolerances)
    if not runs:
        raise ValueError(f"nothing to run: a {TUNED!r} grid needs at least 2 steps and a deterministic solver")
    meta = _meta(prob, builtin, names, grids, nfe, steps)
    stochastic = [nm for nm in names if not _is_deterministic(_solver_info(nm))]
    if reference is not None:
        prob.x_ref, meta["reference"] = _given_reference(reference, prob.x_T)
    elif len(stochastic) < len(names):
        prob.x_ref, meta["reference"] = _reference(prob.model, prob.x_T, builtin, ref_steps, ref_tol)
    else:
        meta["reference"] = {"method": "none (no deterministic solver compared)"}
    if stochastic:
        _prepare_stochastic(prob, stochastic, meta, pathwise, ref_steps)

    results = CompareResults(meta=meta)
    skipped: dict[str, str] = {}
    for run in tqdm(runs, desc="compare", disable=not progress):
        row = _measure(prob, *run)
        if isinstance(row, str):
            skipped.setdefault(f"{run[0]} ({run[1]})", row)
            continue
        results.append(row)
        if verbose:
            r = results[-1]
            print(f"{r.solver:<16} {_grid_label(r):<9} {r.steps} {r.nfe} median {_fmt(r.median, '.3e')} "
                  f"rms {r.error:.3e}" + (f" excess {r.excess:.3e}" if r.excess is not None else ""))
    _report_skipped(results, skipped, len(runs))
    _check_reference(results)
    _check_path_references(results)
    if out is not None:
        results.save(out)
    return results

