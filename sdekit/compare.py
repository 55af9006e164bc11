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
grid per NFE budget, tuned and untuned grids apart; ``table()`` lists every row; ``save(dir)`` writes
results.json, results.csv and error_vs_nfe.png.

Stochastic solvers (euler_maruyama, pc, ...) are left out by default: their endpoint depends on the
noise, so the endpoint error does not apply. Named explicitly, they are measured by a distributional
error instead, clearly labelled ``metric = "sliced_w2"``: the sliced 2-Wasserstein distance between
their samples and the same number of exact samples of the mixture at t_end (128 fixed random
directions). Its floor, the same distance between two independent exact sample sets, is reported as
``meta["sliced_w2_floor"]``. It needs the built-in mixture (or ``mixture=``) as ground truth.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from .ground_truth import GaussianMixture
from .parameterization import ScoreModel
from .plotting import save_figure
from .sde import SDE_NAMES, LinearSDE, sde_from_name

Tensor = torch.Tensor

__all__ = ["compare", "CompareResults", "CompareRow", "Leaderboard", "LeaderboardEntry", "endpoint_error",
           "per_row_error", "error_summary", "flipped_fraction", "sliced_w2", "default_solvers", "make_sde",
           "SDE_NAMES", "STATISTICS", "TUNED"]

DEFAULT_NFE = (5, 10, 15, 20, 30, 50, 100)
DEFAULT_GRIDS = ("logsnr", "quadratic", "uniform", "karras")  # quadratic and uniform win at low NFE
DEFAULT_TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)
ENDPOINT = "endpoint_rmse"  # the metric of deterministic rows (all statistics of e_i are kept)
TUNED = "tuned"  # the grid name that asks for a grid tuned to the model and solver
TUNE_SEED_OFFSET = 1_000_003  # tuning draws use seed + this: independent of the compared x_T
STATISTICS = {"median": "median", "p90": "p90", "rms": "error", "max": "max"}  # statistic -> CompareRow field
_LABELS = {"median": "median", "p90": "90th percentile", "rms": "RMS", "max": "maximum"}


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
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float(torch.sqrt(((px - py) ** 2).mean()))


# -- results ------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One solve: solver, grid ("tuned" for a tuned grid, "adaptive" with tol), steps, nfe (counted),
    error (the RMS of the per-row errors e_i; for metric "sliced_w2" that distance instead), time_s
    (wall time of the solve), metric ("endpoint_rmse" or "sliced_w2"), tol (adaptive solvers only),
    median / p90 / max of e_i, flipped (fraction of rows ending in another mixture component than the
    reference; ground truth only) and tune_nfe (network calls spent tuning the grid; tuned rows only)."""

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

    @property
    def rms(self) -> float:
        return self.error

    @property
    def tuned(self) -> bool:
        return self.grid == TUNED

    def statistic(self, name: str) -> float:
        """The value of one statistic (median, p90, rms, max); NaN where it does not apply."""
        if name not in STATISTICS:
            raise ValueError(f"unknown statistic {name!r}; accepted: {', '.join(STATISTICS)}")
        value = getattr(self, STATISTICS[name])
        return float("nan") if value is None else float(value)


_CSV_TYPES = {"steps": int, "nfe": int, "tune_nfe": int, "solver": str, "grid": str, "metric": str}


def _csv_values(line: dict) -> dict[str, Any]:
    """A ``to_csv`` line's fields, typed as its column (empty -> None)."""
    return {k: None if v == "" else _CSV_TYPES.get(k, float)(v) for k, v in line.items()}


def _grid_label(r: CompareRow) -> str:
    return r.grid if r.tol is None else f"tol={r.tol:.0e}"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class LeaderboardEntry:
    """The best row with nfe <= budget among untuned grids (named grids and adaptive solvers) or among
    tuned grids (kind "tuned"); row is None when no run of that kind fits the budget."""

    budget: int
    kind: str
    row: Optional[CompareRow]


class Leaderboard(list):
    """``LeaderboardEntry``s by budget, ranked by ``statistic``; ``table()`` (or str) prints them."""

    def __init__(self, entries: Iterable[LeaderboardEntry] = (), statistic: str = "median"):
        super().__init__(entries)
        self.statistic = statistic

    def table(self) -> str:
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
        """Every row as a fixed-width text table."""
        flips = any(r.flipped is not None for r in self)
        head = (f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6} {'median':>10} {'p90':>10} {'rms':>10} "
                f"{'max':>10}" + (f" {'flipped':>8}" if flips else "") + f" {'time_s':>8}  metric")
        lines = [head, "-" * len(head)]
        for r in self:
            lines.append(f"{r.solver:<16} {_grid_label(r):<9} {_fmt(r.steps, 'd'):>6} {r.nfe:>6} "
                         f"{_fmt(r.median, '.3e'):>10} {_fmt(r.p90, '.3e'):>10} {r.error:>10.3e} "
                         f"{_fmt(r.max, '.3e'):>10}"
                         + (f" {_fmt(r.flipped, '.4f'):>8}" if flips else "") + f" {r.time_s:>8.3f}  {r.metric}"
                         + (f" (tuning {r.tune_nfe} NFE)" if r.tune_nfe is not None else ""))
        ref = self.meta.get("reference", {})
        if "error_estimate" in ref:
            lines.append(f"reference: {ref.get('method', '?')}; its own error estimate {ref['error_estimate']:.2e}")
        if "sliced_w2_floor" in self.meta:
            lines.append(f"sliced_w2 (in the rms column) floor, two exact sample sets of the same size: "
                         f"{self.meta['sliced_w2_floor']:.3e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def best(self, max_nfe: int, metric: str = ENDPOINT, statistic: str = "rms") -> Optional[CompareRow]:
        """The row of smallest ``statistic`` among those with nfe <= max_nfe (None if there is none)."""
        rows = [r for r in self if r.nfe <= max_nfe and r.metric == metric and math.isfinite(r.statistic(statistic))]
        return min(rows, key=lambda r: (r.statistic(statistic), r.nfe)) if rows else None

    def leaderboard(self, budgets: Optional[Sequence[int]] = None, statistic: str = "median") -> Leaderboard:
        """The best endpoint row per NFE budget (nfe <= budget) by ``statistic`` (median, p90, rms, max),
        one entry for untuned grids and, if any were run, one for tuned grids. budgets default to the
        run's NFE budgets (or the NFE counts it measured)."""
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; accepted: {', '.join(STATISTICS)}")
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
        Agg): one panel per time grid with one line per solver (same colour in every panel), and a panel
        for distributional rows (sliced_w2)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def value(r):
            return r.statistic(statistic) if r.metric == ENDPOINT else r.error

        panels = [(ENDPOINT, g) for g in dict.fromkeys(r.grid for r in self if r.metric == ENDPOINT)]
        if any(r.metric == "sliced_w2" for r in self):
            panels.append(("sliced_w2", None))
        ncol = 2 if len(panels) == 4 else (min(len(panels), 3) or 1)
        nrow = (len(panels) + ncol - 1) // ncol or 1
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 1.8, 3.8 * nrow), squeeze=False, sharey="row")
        solvers = sorted({r.solver for r in self})
        cmap = plt.get_cmap("tab20")
        for ax, (metric, grid) in zip(axes.flat, panels):
            for solver in solvers:
                pts = sorted((r.nfe, value(r)) for r in self if r.solver == solver and r.metric == metric
                             and (grid is None or r.grid == grid) and 0 < value(r) < 1e3)
                if pts:
                    ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                              color=cmap(solvers.index(solver) % 20), label=solver)
            ax.set_title(f"{grid} grid" if grid else "stochastic: sliced W2 to exact samples", fontsize=9)
            ax.set_xlabel("NFE (network evaluations)")
            ax.grid(True, which="both", alpha=0.3)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        axes[0][0].set_ylabel(f"{_LABELS[statistic]} of the per-row error vs reference")
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
        fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
        ref = self.meta.get("reference", {}).get("error_estimate")
        head = title or self.meta.get("title", "sdekit compare: error against NFE")
        fig.suptitle(head + (f"  (reference's own error ~{ref:.1e})" if ref else ""), fontsize=10)
        save_figure(fig, path, dpi=110, rect=(0, 0, 1 - 1.6 / (4.2 * ncol + 1.8), 1))


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
    exact: Optional[Tensor] = None  # exact samples at t_end, for stochastic solvers
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


def _exact_samples(prob: _Problem) -> tuple[Tensor, float]:
    """Exact draws of the mixture at t_end (seed + 1) and the sliced-W2 floor between two such sets."""
    assert prob.gm is not None  # stochastic solvers are compared only against a mixture
    the_sde, shape = prob.model.sde, prob.x_T.shape
    g = torch.Generator().manual_seed(prob.seed + 1)
    exact = prob.gm.sample_t(shape[0], the_sde.eps, the_sde, generator=g, dtype=torch.float64).reshape(shape)
    other = prob.gm.sample_t(shape[0], the_sde.eps, the_sde, generator=g, dtype=torch.float64).reshape(shape)
    return exact, sliced_w2(exact, other)


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


def _measure(prob: _Problem, name: str, grid: str, k: Optional[int], tol: Optional[float]) -> CompareRow:
    """One solve and its statistics (a NaN row, with a warning, when the solver fails)."""
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
    except solvers.SolverError as err:  # NaN / budget: report, keep going
        warnings.warn(f"{name} ({grid}, steps={k}, tol={tol}) failed: {err}", stacklevel=2)
        nan = float("nan")
        return CompareRow(name, grid, k, 0, nan, time.perf_counter() - t0, ENDPOINT if deterministic else "sliced_w2",
                          tol, nan, nan, nan, None, tune_nfe)
    dt = time.perf_counter() - t0
    if not deterministic:
        assert prob.exact is not None  # compare draws exact samples whenever a stochastic solver runs
        return CompareRow(name, grid, k, int(sol.nfe), sliced_w2(sol.x, prob.exact), dt, "sliced_w2", tol)
    assert prob.x_ref is not None  # compare sets the reference before any run
    s = error_summary(per_row_error(sol.x, prob.x_ref))
    the_sde = prob.model.sde
    flipped = None if prob.gm is None else flipped_fraction(prob.gm, sol.x, prob.x_ref, the_sde.eps, the_sde)
    return CompareRow(name, grid, k, int(sol.nfe), s["rms"], dt, ENDPOINT, tol, s["median"], s["p90"], s["max"],
                      flipped, tune_nfe)


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
    reference: the reference endpoint (a tensor like x_T) to skip the built-in reference solve.
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
    if reference is None:
        prob.x_ref, meta["reference"] = _reference(prob.model, prob.x_T, builtin, ref_steps, ref_tol)
    else:
        prob.x_ref, meta["reference"] = _given_reference(reference, prob.x_T)
    if any(not _is_deterministic(_solver_info(nm)) for nm in names):
        prob.exact, meta["sliced_w2_floor"] = _exact_samples(prob)

    results = CompareResults(meta=meta)
    for run in tqdm(runs, desc="compare", disable=not progress):
        results.append(_measure(prob, *run))
        if verbose:
            r = results[-1]
            print(f"{r.solver:<16} {_grid_label(r):<9} {r.steps} {r.nfe} median {_fmt(r.median, '.3e')} "
                  f"rms {r.error:.3e}")
    _check_reference(results)
    if out is not None:
        results.save(out)
    return results

