"""The harness, ``compare``: validate the settings, build the problem and its references, run every solver x grid x
step count, report.

``compare`` solves the probability-flow ODE of one model from one seeded x_T with each solver, grid
and step count, and measures each endpoint against a reference solve of the same ODE from the same
x_T, row by row::

    e_i = |x_i - x_ref,i| / sqrt(dim)                 (the per-row endpoint error)
    median = q50(e),  p90 = q90(e),  max = max_i e_i  (``sdekit.metrics``)
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

The settings come in three named groups, each a frozen dataclass that checks itself when made: ``Problem``
(what is solved: model, x_T, mixture, sde, n, dim, seed, dtype), ``Plan`` (what runs: solvers, nfe or steps,
grids, tolerances, tune_n, tune_options) and ``References`` (what the rows are measured against: reference,
ref_steps, ref_tol, pathwise). ``compare`` takes the groups (``problem=``, ``plan=``, ``references=``) or any of
their fields as keywords, so ``compare(solvers="dpmpp_2m", nfe=(10, 20))`` stays one line.

Step counts. ``nfe=(...)`` gives budgets of network evaluations: each solver gets
floor(budget / nfe_per_step) steps (at least 1; a solver whose calls per step are not
one number, ``nfe_per_step`` None, gets ``budget`` steps), so solvers of 1, 2 or 3 calls per step cover the same
NFE range; the NFE reported is the one counted during the solve. ``steps=(...)`` instead gives the
same raw step counts to every solver. Adaptive solvers (dopri5, ...) run at tolerances ``tolerances``.

Fitted grids (``compare.fitted``). The grid names ``"tuned"`` (``sdekit.solvers.tune.tune``), ``"gits"`` (GITS's
dynamic programming over a teacher trajectory, ``solvers.schedules.gits_schedule``) and ``"ays"`` (Align Your Steps'
KL-bound search, ``solvers.ays.ays_schedule``) stand for a grid fitted to the model and each solver and step count,
from prior draws of its own seed (``seed + TUNE_SEED_OFFSET``, so never the compared x_T); ``tune_options`` and
``search_options`` (``{"gits": {...}, "ays": {...}}``) go to the builders. Their rows are labelled with the grid's
name and carry the one-time cost: network calls ``tune_nfe`` and seconds ``learn_s``; one-step runs and stochastic
solvers are not fitted. ``kl_optimal`` (the closed form, no model calls) is a named grid like the others.

Learned solvers. ``solvers=`` also takes ``LearnedSolver`` objects (``sdekit.learn_solver(model, nfe, ...)``) beside
names: each runs once, on its own grid at its own NFE (grids and budgets do not apply to it), in a row labelled
grid = "learned" whose ``tune_nfe`` and ``learn_s`` are its one-time learning cost (forward network calls, each a
batch of its n rows, and seconds); ``meta["learned"]`` keeps the rest (init, start grid, parameters, back-propagated
calls, calibration and validation errors, whether learning won on its held-out draw). The leaderboard ranks them as
their own kind, "learned". A learned solver for another model is refused before any work (``WrongModelError``), and
one that ends at t = 0 (``denoise=True``) too: compare measures every endpoint at sde.eps.

Reading the results. ``CompareResults.leaderboard(budgets, statistic)`` gives the best solver and
grid per NFE budget, tuned and untuned grids apart (``statistic="excess"``, ``"path_median"`` or ``"mode_err"``: the
best stochastic row); ``table()`` lists every row; ``save(dir)`` writes results.json, results.csv and
error_vs_nfe.png.

Stochastic solvers (euler_maruyama, dpmpp_2m_sde, pc, ...) are left out by default: their endpoint depends on the
noise, so the endpoint error against the ODE reference does not apply. Named explicitly (they need ground truth:
the built-in mixture or ``mixture=``), their rows have ``metric = "sliced_w2"`` and are measured two ways.

"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from ..ground_truth import GaussianMixture
from ..metrics import error_summary, per_row_error
from ..parameterization import ScoreModel
from ..sde import LinearSDE, sde_from_name
from ..solvers import NotApplicableError, SolverError, available, get, sample
from ..solvers.grids import GRIDS
from ..solvers.learned import LearnedSolver
from ..solvers.registry import SolverInfo
from .law import LawReference, exact_law, flipped_fraction
from .pathwise import check_path_references, path_reference
from .reference import check_reference, given_reference, ode_reference
from .results import CompareResults
from .fitted import TUNE_SEED_OFFSET, check_fitted_options, describe, fitted_grid
from .rows import ENDPOINT, FITTED, LEARNED, SLICED, CompareRow, fmt, grid_label

Tensor = torch.Tensor

__all__ = ["compare", "Problem", "Plan", "References", "default_solvers", "make_sde", "is_deterministic",
           "DEFAULT_NFE", "DEFAULT_GRIDS", "DEFAULT_TOLERANCES", "TUNE_SEED_OFFSET"]

DEFAULT_NFE = (5, 10, 15, 20, 30, 50, 100)
DEFAULT_GRIDS = ("logsnr", "quadratic", "uniform", "karras", "kl_optimal")  # quadratic and uniform win at low NFE
DEFAULT_TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)


def make_sde(name: Union[str, LinearSDE]) -> LinearSDE:
    """An SDE by short name: vp (VPSDE), subvp, ve (VESDE sigma 0.01..50), cosine; an SDE passes through."""
    if isinstance(name, LinearSDE):
        return name
    return sde_from_name(name)


def is_deterministic(info: SolverInfo) -> bool:
    """Deterministic solvers, plus stochastic ones whose noise level defaults to zero (ddim, eta = 0)."""
    return not info.stochastic or info.options.get("eta", None) == 0


def default_solvers() -> list[str]:
    """Every registered deterministic fixed-step solver (the default set of ``compare``)."""
    return [n for n in available() if is_deterministic(get(n)) and not get(n).adaptive]


def _names(value) -> list[str]:
    """A list of names from a list or a comma-separated string."""
    if isinstance(value, str):
        value = value.split(",")
    return list(dict.fromkeys(v.strip() for v in value if v.strip()))


def _positive_ints(values, what: str) -> None:
    if values is None or isinstance(values, (str, bytes)) or len(values) == 0:
        raise ValueError("give NFE budgets nfe=(...) or step counts steps=(...)")
    if any(isinstance(c, bool) or int(c) != c or c < 1 for c in values):
        raise ValueError(f"{what} must be positive integers; got {list(values)}")


# -- the settings, in three named groups ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Problem:
    """What is solved. model: a ``ScoreModel``, or None for the exact score of ``mixture`` (default
    ``GaussianMixture.default(dim)``) under ``sde`` ("vp", "subvp", "ve", "cosine" or a LinearSDE); with a model,
    ``mixture`` names its ground truth (for ``flipped`` and stochastic solvers). x_T: starting states (batch
    first), or None for ``n`` draws seeded by ``seed`` (exact p_T draws of the mixture, or ``sde.prior_sample`` of
    shape (n, dim) for a user model). dtype: of the compared solves (float64: the error is discretisation error)."""

    model: Optional[ScoreModel] = None
    x_T: Optional[Tensor] = None
    mixture: Optional[GaussianMixture] = None
    sde: Union[str, LinearSDE] = "vp"
    n: int = 512
    dim: int = 2
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def __post_init__(self):
        for name in ("n", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.model is not None and not isinstance(self.model, ScoreModel):
            raise TypeError(f"model must be a sdekit.ScoreModel; got {type(self.model).__name__}")


@dataclass(frozen=True, eq=False)
class Plan:
    """What runs. solvers: names (a list or comma-separated), None for every deterministic fixed-step solver; a
    list may hold ``LearnedSolver`` objects too (module docstring: each runs once on its own grid).
    nfe: NFE budgets, turned into per-solver step counts; or ``steps``: the same raw step counts for all.
    grids: time grids (``sdekit.solvers.grids.GRIDS``, and the fitted "tuned", "gits", "ays": a grid per solver and
    step count, module docstring; tune_n and ``tune_options`` go to ``tune``, ``search_options`` to GITS's and
    AYS's builders). tolerances: of adaptive solvers."""

    solvers: Union[str, Sequence[Union[str, LearnedSolver]], LearnedSolver, None] = None
    nfe: Sequence[int] = DEFAULT_NFE
    steps: Optional[Sequence[int]] = None
    grids: Sequence[str] = DEFAULT_GRIDS
    tolerances: Sequence[float] = DEFAULT_TOLERANCES
    tune_n: int = 256
    tune_options: Optional[dict] = None
    search_options: Optional[dict] = None

    def __post_init__(self):
        accepted = ", ".join([*GRIDS, *FITTED])
        grids = _names(self.grids)
        object.__setattr__(self, "search_options", check_fitted_options(self.search_options))
        if not grids:
            raise ValueError(f"no time grid given; accepted: {accepted}")
        for g in grids:
            if g not in GRIDS and g not in FITTED:
                raise ValueError(f"unknown grid {g!r}; accepted: {accepted}")
        object.__setattr__(self, "grids", tuple(grids))
        if self.steps is None:
            _positive_ints(self.nfe, "NFE budgets nfe")
        else:
            _positive_ints(self.steps, "step counts steps")


@dataclass(frozen=True, eq=False)
class References:
    """What the rows are measured against. reference: the reference endpoint (a tensor like x_T), skipping the
    built-in reference solve; ref_steps: steps of the built-in references (RK4 for the ODE, each stochastic solver
    itself for its same-path reference); ref_tol: dopri5's tolerance for a user's model; pathwise: measure the
    stochastic rows' pathwise error too (False: only their law)."""

    reference: Optional[Tensor] = None
    ref_steps: int = 2000
    ref_tol: float = 1e-10
    pathwise: bool = True


_GROUPS: dict[str, Any] = {"problem": Problem, "plan": Plan, "references": References}


def settings_groups(groups: dict, settings: dict) -> tuple[Problem, Plan, References]:
    """The three groups from those given (``groups``: name -> group or None) and keyword fields (``settings``)."""
    owner = {f.name: g for g, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(owner))
    if unknown:
        raise TypeError(f"compare() got unexpected keyword(s) {unknown}; accepted: {', '.join(owner)}, "
                        f"{', '.join(_GROUPS)}, out, progress, verbose")
    made: list[Any] = []
    for g, cls in _GROUPS.items():
        mine = {k: v for k, v in settings.items() if owner[k] == g}
        given: Any = groups.get(g)
        if given is None:
            made.append(cls(**mine))
        elif not isinstance(given, cls):
            raise TypeError(f"{g} must be a sdekit.compare.{cls.__name__}; got {type(given).__name__}")
        else:
            made.append(dataclasses.replace(given, **mine) if mine else given)
    return made[0], made[1], made[2]


# -- one run's state ---------------------------------------------------------------------------------------------
@dataclass
class _State:
    """What every run shares: the model, its ground truth (if any), x_T and the references."""

    model: ScoreModel
    gm: Optional[GaussianMixture]
    x_T: Tensor
    seed: int
    builtin: bool
    x_ref: Optional[Tensor] = None
    law: Optional[LawReference] = None  # exact draws of the law at t_end, for stochastic solvers
    paths: dict = field(default_factory=dict)  # stochastic solver -> its fine same-path endpoints (or None)
    tune: dict = field(default_factory=dict)  # keywords for solvers.tune.tune beyond model/solver/steps
    search: dict = field(default_factory=dict)  # {"gits": {...}, "ays": {...}}: keywords for their builders


def _build(problem: Problem, plan: Plan) -> _State:
    """The state; ``builtin``: the problem is the built-in ground truth (exact score of a mixture)."""
    gm, model, builtin = problem.mixture, problem.model, problem.model is None
    if model is None:
        gm = gm if gm is not None else GaussianMixture.default(dim=problem.dim)
        model = gm.model(make_sde(problem.sde))
    the_sde, x_T = model.sde, problem.x_T
    if x_T is None:
        gen = torch.Generator().manual_seed(problem.seed)
        if gm is not None:
            x_T = gm.sample_t(problem.n, the_sde.T, the_sde, generator=gen, dtype=torch.float64)
        else:
            x_T = the_sde.prior_sample((problem.n, problem.dim), generator=gen, dtype=torch.float64)
    return _State(model, gm, x_T.to(problem.dtype), problem.seed, builtin,
                  tune={"n": plan.tune_n, **(plan.tune_options or {})}, search=dict(plan.search_options or {}))


def _split_learned(solvers) -> tuple[Any, list[LearnedSolver]]:
    """(the names, or None for the default set; the LearnedSolver objects) of ``Plan.solvers``."""
    if isinstance(solvers, LearnedSolver):
        return [], [solvers]
    if solvers is None or isinstance(solvers, str):
        return solvers, []
    learned = [s for s in solvers if isinstance(s, LearnedSolver)]
    names = [s for s in solvers if not isinstance(s, LearnedSolver)]
    bad = [s for s in names if not isinstance(s, str)]
    if bad:
        raise TypeError(f"solvers must be names or sdekit.LearnedSolver objects; got {bad[0]!r}")
    return names, learned


def _check_learned(learned: Sequence[LearnedSolver], model: ScoreModel) -> dict:
    """Refuse, before any work, a learned solver of another model or one ending at t = 0; their meta entries."""
    out: dict[str, dict] = {}
    for ls in learned:
        ls.check_model(model)  # WrongModelError names the fingerprints
        if ls.denoise:
            raise ValueError(f"{ls.name} ends at t = 0 (learned with denoise=True); compare measures every endpoint "
                             f"at sde.eps = {model.sde.eps}: learn it with denoise=False to compare it")
        key = ls.name if ls.name not in out else f"{ls.name}#{len(out)}"
        out[key] = {"init": ls.init, "start_grid": ls.start_grid, "improved": ls.improved, "nfe": ls.nfe,
                    "parameters": ls.num_parameters, "ts": ls.ts.tolist(), "cost": dict(ls.cost),
                    "calibration": ls.calibration, "validation": ls.validation, "seed": ls.seed}
    return out


def _resolve_solvers(names, stochastic_ok: bool) -> list[str]:
    if names is None:
        return default_solvers()
    names = _names(names)
    if not names:
        raise ValueError(f"no solver given; available: {', '.join(available())}")
    for n in names:
        get(n)  # raises ValueError listing the valid names
    bad = [n for n in names if not is_deterministic(get(n))]
    if bad and not stochastic_ok:
        raise ValueError(f"stochastic solver(s) {bad} need exact samples of the target to be measured "
                         "(sliced W2); they are supported with the built-in mixture or mixture=")
    return names


def _runs(names: Sequence[str], plan: Plan, learned: Sequence[LearnedSolver] = ()) -> list:
    """(solver, grid, steps, tol) for every run, steps from NFE budgets via nfe_per_step; a learned solver once."""
    runs: list[tuple[Any, str, Optional[int], Optional[float]]] = [(ls, LEARNED, ls.nfe, None) for ls in learned]
    for name in names:
        info = get(name)
        if info.adaptive:
            runs += [(name, "adaptive", None, tol) for tol in plan.tolerances]
            continue
        if plan.steps is not None:
            counts = sorted({int(s) for s in plan.steps})
        else:
            counts = sorted({max(1, int(b // (info.nfe_per_step or 1))) for b in plan.nfe})
        runs += [(name, g, s, None) for g in plan.grids for s in counts
                 if g not in FITTED or (s >= 2 and is_deterministic(info))]
    if not runs:
        raise ValueError(f"nothing to run: a fitted grid ({', '.join(FITTED)}) needs at least 2 steps and a "
                         "deterministic solver")
    return runs


def _meta(st: _State, names, plan: Plan) -> dict:
    the_sde, x_T = st.model.sde, st.x_T
    meta = {
        "sde": repr(the_sde), "model": "GaussianMixture exact score" if st.builtin else repr(st.model),
        "mixture": repr(st.gm) if st.gm is not None else None, "n": int(x_T.shape[0]),
        "dim": int(x_T[0].numel()), "seed": st.seed, "dtype": str(x_T.dtype), "t_start": the_sde.T,
        "t_end": the_sde.eps, "error": "per-row e_i = |x_i - x_ref,i| / sqrt(dim); error = rms = sqrt(mean e_i^2); "
        "median, p90 and max of e_i",
        "flipped": "fraction of rows whose argmax-responsibility mixture component at t_end differs from the "
        "reference's" if st.gm is not None else None,
        "solvers": names, "grids": list(plan.grids), "nfe_budgets": list(plan.nfe) if plan.steps is None else None,
        "steps": list(plan.steps) if plan.steps is not None else None,
    }
    meta.update(describe(plan.grids, st.seed, st.tune, st.search))
    return meta


def _references(st: _State, names: Sequence[str], refs: References, meta: dict, learned: bool = False) -> None:
    """The ODE reference (when a deterministic solver is compared) and the stochastic solvers' references."""
    stochastic = [nm for nm in names if not is_deterministic(get(nm))]
    if refs.reference is not None:
        st.x_ref, meta["reference"] = given_reference(refs.reference, st.x_T)
    elif len(stochastic) < len(names) or learned:
        st.x_ref, meta["reference"] = ode_reference(st.model, st.x_T, st.builtin, refs.ref_steps, refs.ref_tol)
    else:
        meta["reference"] = {"method": "none (no deterministic solver compared)"}
    if stochastic:
        _stochastic_references(st, stochastic, meta, refs.pathwise, refs.ref_steps)


def _stochastic_references(st: _State, names: Sequence[str], meta: dict, pathwise: bool, ref_steps: int) -> None:
    """The law reference (exact draws at t_end, seed + 1) and, with ``pathwise``, each stochastic solver's
    same-path reference, into ``st`` and ``meta``."""
    assert st.gm is not None  # stochastic solvers are compared only against a mixture
    the_sde = st.model.sde
    t0 = time.perf_counter()
    st.law = law = exact_law(st.gm, the_sde.eps, the_sde, st.x_T.shape[0], st.seed + 1)
    meta["sliced_w2_floor"] = law.floor
    meta["law"] = {
        "reference_sets": len(law.refs), "floor_pairs": len(law.floor_values), "floor": law.floor,
        "floor_values": law.floor_values, "floor_se": law.floor_se, "null_sd": law.null_sd,
        "mode_target": None if law.mode_target is None else law.mode_target.tolist(),
        "weights": st.gm.weights.tolist(), "mode_err_floor": law.mode_floor, "seed": st.seed + 1,
        "time_s": time.perf_counter() - t0,
        "excess": "sw2 - floor; excess_se^2 = 2 sd_r(SW2(x, E_r))^2 + floor_se^2 (sdekit.compare.law)",
        "mode_err": "1/2 sum_k |f_k - mode_target_k|, f_k the fraction of samples whose argmax-responsibility "
                    "component is k; mode_target the same fraction among the exact reference draws",
    }
    if not pathwise:
        meta["pathwise"] = "not measured (pathwise=False)"
        return
    meta["pathwise"] = {}
    for name in names:
        st.paths[name], meta["pathwise"][name] = path_reference(st.model, st.x_T, st.seed, name, ref_steps)


# -- one run -------------------------------------------------------------------------------------------------
def _solve_kwargs(st: _State, name: str, grid: str, k: Optional[int], tol: Optional[float],
                  deterministic: bool) -> tuple[dict, Optional[int], Optional[float]]:
    """``sample``'s keywords for one run, and the one-time cost (network calls, seconds) of a fitted grid (None,
    None otherwise)."""
    kwargs: dict[str, Any] = {} if deterministic else {"generator": st.seed}
    if tol is not None:
        return {**kwargs, "rtol": tol, "atol": tol}, None, None
    if grid not in FITTED:
        return {**kwargs, "steps": k, "grid": grid}, None, None
    assert k is not None  # _runs gives fitted runs a step count
    ts, nfe, seconds = fitted_grid(st.model, name, grid, k, tuple(st.x_T.shape[1:]), st.seed, st.tune, st.search)
    return {**kwargs, "ts": ts}, nfe, seconds


def _measure(st: _State, solver: Union[str, LearnedSolver], grid: str, k: Optional[int],
             tol: Optional[float]) -> Union[CompareRow, str]:
    """One solve and its statistics (a NaN row, with a warning, when the solver fails); the reason, a string, when
    the solver refuses the problem before any network call (``NotApplicableError``: a noise-form solver on a flow
    path, which starts at alpha = 0, say)."""
    learn_s: Optional[float] = None
    kwargs: dict[str, Any] = {}
    if isinstance(solver, LearnedSolver):  # its own grid; its learning cost is the row's one-time cost
        name, deterministic = solver.name, True
        tune_nfe, learn_s = solver.cost.get("nfe"), solver.cost.get("seconds")
    else:
        name = solver
        deterministic = is_deterministic(get(name))
        kwargs, tune_nfe, learn_s = _solve_kwargs(st, name, grid, k, tol, deterministic)
    t0 = time.perf_counter()
    try:
        sol = sample(st.model, st.x_T, solver, **kwargs)
    except NotApplicableError as err:  # refused before any work: skipped, reported in meta["skipped"]
        return str(err)
    except SolverError as err:  # NaN / budget: report, keep going
        warnings.warn(f"{name} ({grid}, steps={k}, tol={tol}) failed: {err}", stacklevel=3)
        nan = float("nan")
        if not deterministic:
            return CompareRow(name, grid, k, 0, nan, time.perf_counter() - t0, SLICED, tol, excess=nan)
        return CompareRow(name, grid, k, 0, nan, time.perf_counter() - t0, ENDPOINT, tol, nan, nan, nan, None,
                          tune_nfe, learn_s)
    dt = time.perf_counter() - t0
    if not deterministic:
        return _law_row(st, name, grid, k, tol, sol, dt)
    assert st.x_ref is not None  # compare sets the reference before any run
    s = error_summary(per_row_error(sol.x, st.x_ref))
    the_sde = st.model.sde
    flipped = None if st.gm is None else flipped_fraction(st.gm, sol.x, st.x_ref, the_sde.eps, the_sde)
    return CompareRow(name, grid, k, int(sol.nfe), s["rms"], dt, ENDPOINT, tol, s["median"], s["p90"], s["max"],
                      flipped, tune_nfe, learn_s)


def _law_row(st: _State, name: str, grid: str, k: Optional[int], tol: Optional[float], sol, dt: float) -> CompareRow:
    """A stochastic solve's row: its law against exact draws, its endpoints against the same-path reference."""
    assert st.law is not None  # compare draws the law reference whenever a stochastic solver runs
    m = st.law.metrics(sol.x)
    ref = st.paths.get(name)
    s = error_summary(per_row_error(sol.x, ref)) if ref is not None else {}
    return CompareRow(name, grid, k, int(sol.nfe), m["sw2"], dt, SLICED, tol, excess=m["excess"],
                      excess_se=m["excess_se"], mode_err=m["mode_err"], path_median=s.get("median"),
                      path_p90=s.get("p90"), path_rms=s.get("rms"), path_max=s.get("max"))


def _run_all(st: _State, runs: list, meta: dict, progress: bool, verbose: bool) -> CompareResults:
    """Every run into ``CompareResults``; refused runs into ``meta["skipped"]`` (one warning)."""
    from tqdm.auto import tqdm

    results = CompareResults(meta=meta)
    skipped: dict[str, str] = {}
    for run in tqdm(runs, desc="compare", disable=not progress):
        row = _measure(st, *run)
        if isinstance(row, str):
            skipped.setdefault(f"{getattr(run[0], 'name', run[0])} ({run[1]})", row)
            continue
        results.append(row)
        if verbose:
            print(f"{row.solver:<16} {grid_label(row):<9} {row.steps} {row.nfe} median {fmt(row.median, '.3e')} "
                  f"rms {row.error:.3e}" + (f" excess {row.excess:.3e}" if row.excess is not None else ""))
    results.meta["skipped"] = skipped
    if skipped and not len(results):
        raise ValueError(f"every run was refused by its solver ({len(runs)} runs): " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    if skipped:
        warnings.warn(f"compare skipped {len(skipped)} solver/grid pair(s) that refuse this problem: "
                      + ", ".join(skipped) + " (reasons in meta['skipped'])", stacklevel=3)
    return results


@torch.no_grad()
def compare(model: Optional[ScoreModel] = None, x_T: Optional[Tensor] = None, *, problem: Optional[Problem] = None,
            plan: Optional[Plan] = None, references: Optional[References] = None, out=None, progress: bool = True,
            verbose: bool = False, **settings) -> CompareResults:
    """Per-row endpoint error against NFE for each solver x grid x step count (module docstring).

    The settings: ``problem`` (``Problem``: model, x_T, mixture, sde, n, dim, seed, dtype), ``plan`` (``Plan``:
    solvers, nfe, steps, grids, tolerances, tune_n, tune_options) and ``references`` (``References``: reference,
    ref_steps, ref_tol, pathwise), or any of their fields as keywords (``compare(solvers="dpmpp_2m", nfe=(10,
    20))``; a field beside its group replaces the group's value). model and x_T may come first, by position.
    out: a directory; if given, results.json, results.csv and error_vs_nfe.png are written there. progress: a
    progress bar; verbose: print each row as it is measured.
    Returns ``CompareResults`` (a list of ``CompareRow``) with ``meta`` holding the settings and the reference's
    own error estimate; ``.leaderboard()`` ranks it.
    """
    if model is not None or x_T is not None:
        settings = {**settings, **({"model": model} if model is not None else {}),
                    **({"x_T": x_T} if x_T is not None else {})}
    prob, run_plan, refs = settings_groups({"problem": problem, "plan": plan, "references": references}, settings)
    st = _build(prob, run_plan)
    given, learned = _split_learned(run_plan.solvers)
    learned_meta = _check_learned(learned, st.model)
    names = [] if learned and given == [] else _resolve_solvers(given, stochastic_ok=st.gm is not None)
    runs = _runs(names, run_plan, learned)
    meta = _meta(st, [*names, *learned_meta], run_plan)
    if learned_meta:
        meta["learned"] = learned_meta
    _references(st, names, refs, meta, bool(learned))
    results = _run_all(st, runs, meta, progress, verbose)
    check_reference(results, results.meta)
    check_path_references(results, results.meta)
    if out is not None:
        results.save(out)
    return results
