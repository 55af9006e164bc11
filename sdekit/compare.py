"""Accuracy against cost: every solver, several step counts, one high-precision reference.

``compare`` solves the probability-flow ODE of one model from one seeded x_T with each solver, grid
and step count, and measures each endpoint against a reference solve of the same ODE from the same
x_T::

    error = sqrt( mean_rows |x - x_ref|^2 / dim )          (root mean square over rows of |x - x_ref| / sqrt(dim))

Without a model it builds ground truth: ``GaussianMixture.default(dim)`` (two sharp components of
std 0.05 and 0.1 beside two broad ones) under the chosen SDE, whose score is exact, so the only error
left is the solver's. x_T are then exact draws from the mixture's p_T.

The reference is computed in float64:
  * built-in mixture: classical RK4 on the log-SNR grid with ``ref_steps`` steps; a second RK4 solve
    with half the steps gives the reference's own error estimate by Richardson's rule,
    |x_N - x_{N/2}| / (2^4 - 1), reported as ``meta["reference"]["error_estimate"]``;
  * a user's model: dopri5 (torchdiffeq) with rtol = atol = ``ref_tol`` (1e-10), and a second solve at
    100 ``ref_tol`` whose distance to the first bounds the error from above.
The harness warns when a reported error is not at least ten times the reference's error estimate.

Step counts. ``nfe=(...)`` gives budgets of network evaluations: each solver gets
floor(budget / nfe_per_step) steps (at least 1), so solvers of 1, 2 or 3 calls per step cover the same
NFE range; the NFE reported is the one counted during the solve. ``steps=(...)`` instead gives the
same raw step counts to every solver. Adaptive solvers (dopri5, ...) run at tolerances ``tolerances``.

Stochastic solvers (euler_maruyama, pc, ...) are left out by default: their endpoint depends on the
noise, so the endpoint error does not apply. Named explicitly, they are measured by a distributional
error instead, clearly labelled ``metric = "sliced_w2"``: the sliced 2-Wasserstein distance between
their samples and the same number of exact samples of the mixture at t_end (128 fixed random
directions). Its floor, the same distance between two independent exact sample sets, is reported as
``meta["sliced_w2_floor"]``. It needs the built-in mixture (or ``mixture=``) as ground truth.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence, Union

import torch

from .ground_truth import GaussianMixture
from .parameterization import ScoreModel
from .plotting import save_figure
from .sde import SDE_NAMES, LinearSDE, sde_from_name

Tensor = torch.Tensor

__all__ = ["compare", "CompareResults", "CompareRow", "endpoint_error", "sliced_w2",
           "default_solvers", "make_sde", "SDE_NAMES"]

DEFAULT_NFE = (5, 10, 15, 20, 30, 50, 100)
DEFAULT_GRIDS = ("logsnr", "quadratic", "uniform", "karras")  # quadratic and uniform win at low NFE
DEFAULT_TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)


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
def endpoint_error(x: Tensor, x_ref: Tensor) -> float:
    """sqrt(mean over rows of |x - x_ref|^2 / dim), computed in float64."""
    d = (x.to(torch.float64) - x_ref.to(torch.float64)).reshape(x.shape[0], -1)
    return float(torch.sqrt((d**2).sum(1).mean() / d.shape[1]))


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
    """One solve: solver, grid, steps, nfe (counted), error, time_s (wall time of the solve), metric
    ("endpoint_rmse" or "sliced_w2") and tol (adaptive solvers only)."""

    solver: str
    grid: str
    steps: Optional[int]
    nfe: int
    error: float
    time_s: float
    metric: str = "endpoint_rmse"
    tol: Optional[float] = None


class CompareResults(list):
    """A list of ``CompareRow`` with the run's settings in ``meta``; ``to_json``, ``from_json``,
    ``table``, ``plot`` and ``best``."""

    def __init__(self, rows: Iterable[CompareRow] = (), meta: Optional[dict] = None):
        super().__init__(rows)
        self.meta = dict(meta or {})

    # -- views --------------------------------------------------------------------------------------
    def table(self) -> str:
        """A fixed-width text table: solver, grid, steps, NFE, error, time, metric."""
        head = f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6} {'error':>11} {'time_s':>8}  metric"
        lines = [head, "-" * len(head)]
        for r in self:
            steps = "-" if r.steps is None else str(r.steps)
            grid = r.grid if r.tol is None else f"tol={r.tol:.0e}"
            lines.append(f"{r.solver:<16} {grid:<9} {steps:>6} {r.nfe:>6} {r.error:>11.3e} {r.time_s:>8.3f}  {r.metric}")
        ref = self.meta.get("reference", {})
        if "error_estimate" in ref:
            lines.append(f"reference: {ref.get('method', '?')}; its own error estimate {ref['error_estimate']:.2e}")
        if "sliced_w2_floor" in self.meta:
            lines.append(f"sliced_w2 floor (two exact sample sets of the same size): {self.meta['sliced_w2_floor']:.3e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def best(self, max_nfe: int, metric: str = "endpoint_rmse") -> Optional[CompareRow]:
        """The row of smallest error among those with nfe <= max_nfe (None if there is none)."""
        rows = [r for r in self if r.nfe <= max_nfe and r.metric == metric and math.isfinite(r.error)]
        return min(rows, key=lambda r: r.error) if rows else None

    # -- files --------------------------------------------------------------------------------------
    def to_json(self, path) -> None:
        with open(path, "w") as fh:
            json.dump({"meta": self.meta, "rows": [asdict(r) for r in self]}, fh, indent=1, default=_jsonable)

    @classmethod
    def from_json(cls, path) -> "CompareResults":
        with open(path) as fh:
            data = json.load(fh)
        return cls([CompareRow(**r) for r in data["rows"]], data.get("meta", {}))

    def plot(self, path, title: Optional[str] = None) -> None:
        """Log-log error against NFE saved as a PNG (matplotlib, Agg): one panel per time grid with one
        line per solver (same colour in every panel), and a panel for distributional rows (sliced_w2)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("endpoint_rmse", g) for g in dict.fromkeys(r.grid for r in self if r.metric == "endpoint_rmse")]
        if any(r.metric == "sliced_w2" for r in self):
            panels.append(("sliced_w2", None))
        ncol = 2 if len(panels) == 4 else (min(len(panels), 3) or 1)
        nrow = (len(panels) + ncol - 1) // ncol or 1
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 1.8, 3.8 * nrow), squeeze=False, sharey="row")
        solvers = sorted({r.solver for r in self})
        cmap = plt.get_cmap("tab20")
        for ax, (metric, grid) in zip(axes.flat, panels):
            for solver in solvers:
                pts = sorted((r.nfe, r.error) for r in self if r.solver == solver and r.metric == metric
                             and (grid is None or r.grid == grid) and 0 < r.error < 1e3)
                if pts:
                    ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                              color=cmap(solvers.index(solver) % 20), label=solver)
            ax.set_title(f"{grid} grid" if grid else "stochastic: sliced W2 to exact samples", fontsize=9)
            ax.set_xlabel("NFE (network evaluations)")
            ax.grid(True, which="both", alpha=0.3)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        axes[0][0].set_ylabel("endpoint RMSE vs reference")
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
        fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
        ref = self.meta.get("reference", {}).get("error_estimate")
        head = title or self.meta.get("title", "sdekit compare: error against NFE")
        fig.suptitle(head + (f"  (reference's own error ~{ref:.1e})" if ref else ""), fontsize=10)
        save_figure(fig, path, dpi=110, rect=(0, 0, 1 - 1.6 / (4.2 * ncol + 1.8), 1))


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, torch.dtype):
        return str(obj)
    return repr(obj)


# -- the harness --------------------------------------------------------------------------------------
def _resolve_solvers(names, stochastic_ok: bool) -> list[str]:
    from . import solvers

    if names is None:
        return default_solvers()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError(f"no solver given; available: {', '.join(solvers.available())}")
    for n in names:
        solvers.get(n)  # raises ValueError listing the valid names
    bad = [n for n in names if not _is_deterministic(solvers.get(n))]
    if bad and not stochastic_ok:
        raise ValueError(f"stochastic solver(s) {bad} need exact samples of the target to be measured "
                         "(sliced W2); they are supported with the built-in mixture or mixture=")
    return names


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
        runs += [(name, g, s, None) for g in grids for s in counts]
    return runs


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
) -> CompareResults:
    """Endpoint error against NFE for each solver x grid x step count (see the module docstring).

    model: a ``ScoreModel``; None builds the exact score of ``mixture`` (default
      ``GaussianMixture.default(dim)``) under ``sde`` ("vp", "subvp", "ve", "cosine" or a LinearSDE).
    x_T: starting states (batch first); None draws ``n`` seeded ones (exact p_T draws of the mixture,
      or ``sde.prior_sample`` of shape (n, dim) for a user model).
    solvers: names (list or comma-separated); None = every deterministic fixed-step solver.
    nfe: NFE budgets, turned into per-solver step counts; or ``steps=`` raw step counts for all.
    grids: time grids (uniform, quadratic, logsnr, karras).
    reference: the reference endpoint (a tensor like x_T) to skip the built-in reference solve.
    dtype: dtype of the compared solves (float64 by default, so the error is discretisation error).
    out: a directory; if given, results.json and error_vs_nfe.png are written there.
    Returns ``CompareResults`` (a list of ``CompareRow``) with ``meta`` holding the settings and the
    reference's own error estimate.
    """
    from tqdm.auto import tqdm

    from . import solvers as _solvers
    from .solvers.grids import GRIDS

    for g in grids:
        if g not in GRIDS:
            raise ValueError(f"unknown grid {g!r}; accepted: {', '.join(GRIDS)}")
    if steps is None and not nfe:
        raise ValueError("give NFE budgets nfe=(...) or step counts steps=(...)")
    builtin = model is None
    gm = mixture
    if builtin:
        the_sde = make_sde(sde)
        gm = gm if gm is not None else GaussianMixture.default(dim=dim)
        model = gm.model(the_sde)
    elif not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    the_sde = model.sde
    names = _resolve_solvers(solvers, stochastic_ok=gm is not None)
    gen = torch.Generator().manual_seed(seed)
    if x_T is None:
        if gm is not None:
            x_T = gm.sample_t(n, the_sde.T, the_sde, generator=gen, dtype=torch.float64)
        else:
            x_T = the_sde.prior_sample((n, dim), generator=gen, dtype=torch.float64)
    x_T = x_T.to(dtype)

    meta = {
        "sde": repr(the_sde), "model": "GaussianMixture exact score" if builtin else repr(model),
        "mixture": repr(gm) if gm is not None else None, "n": int(x_T.shape[0]),
        "dim": int(x_T[0].numel()), "seed": seed, "dtype": str(dtype), "t_start": the_sde.T, "t_end": the_sde.eps,
        "error": "endpoint_rmse = sqrt(mean_rows |x - x_ref|^2 / dim)",
        "solvers": names, "grids": list(grids), "nfe_budgets": list(nfe) if steps is None else None,
        "steps": list(steps) if steps is not None else None,
    }
    if reference is None:
        x_ref, meta["reference"] = _reference(model, x_T, builtin, ref_steps, ref_tol)
    else:
        x_ref = torch.as_tensor(reference)
        if x_ref.shape != x_T.shape:
            raise ValueError(f"reference shape {tuple(x_ref.shape)} must equal x_T shape {tuple(x_T.shape)}")
        meta["reference"] = {"method": "given by the caller"}

    exact = None
    if any(not _is_deterministic(_solvers.get(nm)) for nm in names):
        g2 = torch.Generator().manual_seed(seed + 1)
        exact = gm.sample_t(x_T.shape[0], the_sde.eps, the_sde, generator=g2, dtype=torch.float64)
        other = gm.sample_t(x_T.shape[0], the_sde.eps, the_sde, generator=g2, dtype=torch.float64)
        meta["sliced_w2_floor"] = sliced_w2(exact.reshape(x_T.shape), other.reshape(x_T.shape))

    results = CompareResults(meta=meta)
    runs = _plan(names, nfe, steps, grids, tolerances)
    for name, grid, k, tol in tqdm(runs, desc="compare", disable=not progress):
        info = _solvers.get(name)
        kwargs = {} if _is_deterministic(info) else {"generator": seed}
        if tol is None:
            kwargs.update(steps=k, grid=grid)
        else:
            kwargs.update(rtol=tol, atol=tol)
        t0 = time.perf_counter()
        try:
            sol = _solvers.sample(model, x_T, name, **kwargs)
        except _solvers.SolverError as err:  # NaN / budget: report, keep going
            warnings.warn(f"{name} ({grid}, steps={k}, tol={tol}) failed: {err}")
            results.append(CompareRow(name, grid, k, 0, float("nan"), time.perf_counter() - t0,
                                      tol=tol))
            continue
        dt = time.perf_counter() - t0
        if _is_deterministic(info):
            err, metric = endpoint_error(sol.x, x_ref), "endpoint_rmse"
        else:
            err, metric = sliced_w2(sol.x, exact.reshape(sol.x.shape)), "sliced_w2"
        results.append(CompareRow(name, grid, k, int(sol.nfe), err, dt, metric, tol))
        if verbose:
            print(f"{name:<16} {grid:<9} {k} {sol.nfe} {err:.3e}")

    est = meta["reference"].get("error_estimate")
    errs = [r.error for r in results if r.metric == "endpoint_rmse" and math.isfinite(r.error)]
    if est is not None and errs:
        meta["reference"]["below_smallest_error"] = bool(est < min(errs))
        if est * 10 > min(errs):
            warnings.warn(f"the reference's error estimate {est:.2e} is not ten times below the smallest "
                          f"reported error {min(errs):.2e}; raise ref_steps (or lower ref_tol)")
    if out is not None:
        import os

        os.makedirs(out, exist_ok=True)
        results.to_json(os.path.join(out, "results.json"))
        results.plot(os.path.join(out, "error_vs_nfe.png"))
    return results
