"""Per-row endpoint error against NFE: sdekit beside k-diffusion and diffusers, in one process, on exact scores.

Problems (each on Gaussian mixtures drawn at random with seeds the code was not developed on, in 2-D and
16-D, float64, ``--n`` rows of x_T drawn exactly from the mixture's p_T):

  vp    the VP SDE (beta 0.1..20, T = 1, t_end = 1e-3). Peers: k-diffusion, every deterministic sampler
        on every schedule (karras rho 7, exponential, polyexponential rho 2, uniform-t, vp), ending at
        s(t_end) = sigma/alpha(t_end) (no appended 0), as before; dpm_fast / dpm_adaptive by their NFE.
  ddpm  a DDPM linear beta table (DiscreteVPSDE, 1000 steps, beta 1e-4..0.02) with the exact mixture eps.
        Peers: diffusers, every deterministic scheduler and its settings (see diffusers_peers.py),
        driven by the standard loop (scale_model_input, model, step) from x_T * init_noise_sigma.

sdekit runs every deterministic fixed-step solver (``sdekit.compare.default_solvers()``, read at run
time) on the grids uniform, quadratic, logsnr, karras, and a "tuned" grid when
``sdekit.solvers.tune`` exists (its one-time cost in NFE is recorded beside each tuned row).

Reference: float64 RK4 on the log-SNR grid (``--ref-steps``, 2000), its own error estimated by
Richardson's rule from a half-step solve. diffusers' runs that end at sigma = 0 (``final_sigmas_type
= "zero"``, DDIM's ``set_alpha_to_one``) or at any other level are measured against the same
reference carried on from t_end to that level by RK4 in the VE variables y = x / alpha, s = sigma/alpha
(dy/ds = -s alpha score(alpha y)), smooth down to s = 0 for a mixture whose components have positive std.

Per-row error e_i = |x_i - x_ref,i| / sqrt(dim); statistics median, p90 and RMS. For each library,
NFE budget (runs with counted NFE <= budget) and statistic: its best setting. Ratios sdekit / peer
per dim and seed, then their median and min / max over seeds, for sdekit untuned and sdekit with
tuned grids (best of tuned and untuned). Goal (printed and checked, never assumed): at NFE <= 5, 6,
10, 20 the median ratio <= 0.25 and the p90 ratio <= 0.5.

Resumable: each (seed, problem, dim, part) is cached under ``--cache`` (default runs/accuracy_vs_nfe,
git-ignored) keyed by its settings; a rerun skips what is done (``--fresh`` ignores the cache).

Run with the benchmark venv:
    /work/benchvenv/bin/python benchmarks/accuracy_vs_nfe.py --quick        # smoke run, minutes
    /work/benchvenv/bin/python benchmarks/accuracy_vs_nfe.py                # full run
    ... --digits runs/digits/ckpt                                           # + a trained digits U-Net
Writes benchmarks/results/accuracy_vs_nfe.{json,png} (quick: accuracy_vs_nfe_quick.*).
Peers are optional: without k-diffusion or diffusers their part is skipped and said so.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import types
import warnings

import torch

import sdekit
import sdekit.solvers
from sdekit.compare import default_solvers
from sdekit.metrics import error_summary
from sdekit.metrics import per_row_error as row_errors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import cached_json, write_report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
STATS = ("median", "p90", "rms")
GOAL_BUDGETS = (5, 6, 10, 20)
GOAL = {"median": 0.25, "p90": 0.5}
SDEKIT_GRIDS = ("uniform", "quadratic", "logsnr", "karras")


# -- ground truth -------------------------------------------------------------------------------------
def random_mixture(dim: int, seed: int) -> sdekit.GaussianMixture:
    """A random mixture: 4..8 components with uneven weights, means ~ N(0, c^2 I) with c in [1, 2],
    half of them sharp (std 0.02..0.1, log-uniform) and half broad (0.3..1.0), each std jittered
    per coordinate by a factor exp(0.25 N(0, 1)) (anisotropic)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    f64 = torch.float64
    K = int(torch.randint(4, 9, (1,), generator=g))
    weights = torch.exp(0.8 * torch.randn(K, generator=g, dtype=f64))
    scale = 1.0 + torch.rand(1, generator=g, dtype=f64)
    means = torch.randn(K, dim, generator=g, dtype=f64) * scale
    u = torch.rand(K, generator=g, dtype=f64)
    sharp = torch.arange(K) < (K + 1) // 2
    lo = torch.where(sharp, torch.tensor(0.02, dtype=f64), torch.tensor(0.3, dtype=f64))
    hi = torch.where(sharp, torch.tensor(0.1, dtype=f64), torch.tensor(1.0, dtype=f64))
    base = torch.exp(torch.log(lo) + u * (torch.log(hi) - torch.log(lo)))
    stds = base[:, None] * torch.exp(0.25 * torch.randn(K, dim, generator=g, dtype=f64))
    return sdekit.GaussianMixture(weights, means, stds)


def mixture_score(gm: sdekit.GaussianMixture, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Exact score of the mixture's marginal at x = alpha x0 + sigma n (any linear SDE), float64:
    sum_k r_k(x) (alpha mu_k - x) / v_k with v_k = alpha^2 s_k^2 + sigma^2."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    v = alpha**2 * gm.stds**2 + sigma**2                      # (K, D)
    d = alpha * gm.means[None] - x[:, None]                   # (B, K, D)
    logp = torch.log(gm.weights)[None] - 0.5 * ((d**2 / v[None]).sum(-1) + torch.log(2 * math.pi * v).sum(-1)[None])
    r = torch.softmax(logp, dim=1)                            # (B, K)
    return (r[..., None] * d / v[None]).sum(1)


def carry_reference(gm, x, s_from: float, s_to: float, steps: int = 200) -> torch.Tensor:
    """Carry the probability-flow solution from noise level s_from to s_to (VE s = sigma/alpha, either
    direction, s_to may be 0) by RK4 in s on y = x / alpha: dy/ds = -s alpha score(alpha y)."""
    def a_of(s):
        return 1.0 / math.sqrt(1.0 + s * s)

    def rhs(y, s):
        a = a_of(s)
        return -s * a * mixture_score(gm, a * y, a, s * a)

    y = x.to(torch.float64) / a_of(s_from)
    h = (s_to - s_from) / steps
    s = s_from
    for _ in range(steps):
        k1 = rhs(y, s)
        k2 = rhs(y + 0.5 * h * k1, s + 0.5 * h)
        k3 = rhs(y + 0.5 * h * k2, s + 0.5 * h)
        k4 = rhs(y + h * k3, s + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        s += h
    return a_of(s_to) * y


def summarize(e: torch.Tensor) -> dict:
    """median, p90 and rms of per-row errors (``sdekit.metrics.error_summary``; NaN for a partly failed solve)."""
    s = error_summary(e)
    return {k: s[k] for k in ("median", "p90", "rms")}


def s_of(sde, t) -> float:
    return float(torch.exp(-0.5 * sde.log_snr(torch.as_tensor(t, dtype=torch.float64))))


def reference(model, x_T, steps):
    """RK4 on the log-SNR grid; its error estimate |x_N - x_{N/2}| / 15 per row (Richardson)."""
    fine = sdekit.solvers.sample(model, x_T, "rk4", steps, grid="logsnr")
    coarse = sdekit.solvers.sample(model, x_T, "rk4", max(1, steps // 2), grid="logsnr")
    est = row_errors(fine.x, coarse.x) / 15.0
    return fine.x, {"method": f"rk4 {steps} steps logsnr float64", "error_estimate": summarize(est),
                    "nfe": fine.nfe}


# -- k-diffusion ----------------------------------------------------------------------------------------
def load_k_diffusion_sampling(required: bool = False):
    """k_diffusion.sampling, imported lazily (None when absent and not required). If the package's
    __init__ fails on an optional import (its evaluation module pulls in CLIP, which needs
    pkg_resources), its sampling.py and utils.py are loaded directly, unchanged, under a bare package."""
    try:
        import k_diffusion.sampling as kds  # noqa: F401

        return kds
    except ImportError as first:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            if required:
                raise SystemExit("k-diffusion is not installed; run with /work/benchvenv/bin/python "
                                 "or `pip install k-diffusion`") from first
            return None
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        for sub in ("utils", "sampling"):
            path = os.path.join(pkg.__path__[0], f"{sub}.py")
            s = importlib.util.spec_from_file_location(f"k_diffusion.{sub}", path)
            mod = importlib.util.module_from_spec(s)
            sys.modules[f"k_diffusion.{sub}"] = mod
            s.loader.exec_module(mod)
            setattr(pkg, sub, mod)
        return sys.modules["k_diffusion.sampling"]


class ExactDenoiser:
    """k-diffusion denoiser D(y, s) = E[x0 | x] = (x + sigma^2 score(x)) / alpha, x = alpha y, of a
    mixture, for any VP-type SDE (alpha^2 + sigma^2 = 1, alpha = 1 / sqrt(1 + s^2)); counts its calls."""

    def __init__(self, gm):
        self.gm, self.calls = gm, 0

    def __call__(self, y, s):
        self.calls += 1
        s0 = float(s.reshape(-1)[0])
        a = 1.0 / math.sqrt(1.0 + s0 * s0)
        sig = s0 * a
        x = a * y
        return ((x + sig**2 * mixture_score(self.gm, x, a, sig).reshape(x.shape)) / a).to(y.dtype)


def kd_schedules(kds, sde, steps: int) -> dict:
    """Each schedule's steps + 1 noise levels from s(T) down to s(t_end), float64, both ends pinned."""
    s_max, s_min = s_of(sde, sde.T), s_of(sde, sde.eps)
    out = {
        "karras": kds.get_sigmas_karras(steps + 1, s_min, s_max, rho=7.0)[:-1],
        "exponential": kds.get_sigmas_exponential(steps + 1, s_min, s_max)[:-1],
        "polyexponential": kds.get_sigmas_polyexponential(steps + 1, s_min, s_max, rho=2.0)[:-1],
        "uniform-t": torch.exp(-0.5 * sde.log_snr(torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64))),
    }
    beta_min, beta_max = getattr(sde, "beta_min", None), getattr(sde, "beta_max", None)
    if beta_min is not None:
        out["vp"] = kds.get_sigmas_vp(steps + 1, beta_d=beta_max - beta_min, beta_min=beta_min, eps_s=sde.eps)[:-1]
    for k, sig in out.items():
        sig = sig.to(torch.float64).clone()
        sig[0], sig[-1] = s_max, s_min
        assert sig.shape == (steps + 1,) and bool((sig[1:] < sig[:-1]).all()), k
        out[k] = sig
    return out


def _zero_noise(sigma, sigma_next):  # eta = 0: the noise term is multiplied by 0; this keeps it exactly 0
    raise AssertionError("not called")


def kd_samplers(kds) -> dict:
    """name -> (callable(den, y, sigmas), calls per step). The SDE samplers dpmpp_2m_sde / dpmpp_3m_sde
    are included at eta = 0, where their noise coefficient is 0 and they are deterministic multistep ODE
    solvers (DPM-Solver++(2M) in its two forms, and k-diffusion's only 3M); a zero noise sampler is
    passed so no Brownian tree is built."""
    out = {}

    def zeros(like):
        return lambda s, t: torch.zeros_like(like)

    for name, per in (("euler", 1), ("heun", 2), ("dpm_2", 2), ("lms", 1), ("dpmpp_2m", 1),
                      ("ipndm", 1), ("ipndm_v", 1), ("deis", 1)):
        fn = getattr(kds, f"sample_{name}", None)
        if fn is not None:
            out[name] = (lambda den, y, sig, fn=fn: fn(den, y, sig, disable=True), per)
    if hasattr(kds, "sample_dpmpp_2m_sde"):
        for st in ("midpoint", "heun"):
            out[f"dpmpp_2m_sde(eta=0,{st})"] = (
                lambda den, y, sig, st=st: kds.sample_dpmpp_2m_sde(den, y, sig, disable=True, eta=0.0, s_noise=0.0,
                                                                   noise_sampler=zeros(y), solver_type=st), 1)
    if hasattr(kds, "sample_dpmpp_3m_sde"):
        out["dpmpp_3m_sde(eta=0)"] = (
            lambda den, y, sig: kds.sample_dpmpp_3m_sde(den, y, sig, disable=True, eta=0.0, s_noise=0.0,
                                                        noise_sampler=zeros(y)), 1)
    return out


def run_kd(kds, gm, sde, x_T, x_ref, budgets, log):
    rows = []
    a_T, a_end = float(sde.alpha(sde.T)), float(sde.alpha(sde.eps))
    s_max, s_min = s_of(sde, sde.T), s_of(sde, sde.eps)
    y_T = x_T / a_T

    def record(solver, grid, steps, den, run):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = run()
            st = summarize(row_errors(a_end * y, x_ref))
            fail = None
        except Exception as err:  # a peer's failure is a result, not a crash
            st, fail = {k: float("nan") for k in STATS}, f"{type(err).__name__}: {err}"[:200]
        rows.append({"library": "k-diffusion", "solver": solver, "grid": grid, "steps": steps, "nfe": den.calls,
                     **st, "time_s": time.perf_counter() - t0, **({"failed": fail} if fail else {})})

    for name, (fn, per) in kd_samplers(kds).items():
        for steps in sorted({max(1, b // per) for b in budgets}):
            for sched, sig in kd_schedules(kds, sde, steps).items():
                den = ExactDenoiser(gm)
                record(name, sched, steps, den, lambda: fn(den, y_T, sig))
    for n in sorted(set(budgets)):
        den = ExactDenoiser(gm)
        record("dpm_fast", "-", n, den, lambda: kds.sample_dpm_fast(den, y_T, s_min, s_max, n, disable=True))
    for rtol in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3):
        den = ExactDenoiser(gm)
        record("dpm_adaptive", f"rtol={rtol:g}", None, den,
               lambda: kds.sample_dpm_adaptive(den, y_T, s_min, s_max, rtol=rtol, atol=rtol / 10, disable=True))
    log(f"    k-diffusion: {len(rows)} runs, {sum('failed' in r for r in rows)} failed")
    return rows


# -- sdekit ---------------------------------------------------------------------------------------------
def sdekit_steps(info, budgets):
    return sorted({max(1, int(b // info.nfe_per_step)) for b in budgets})


def run_sdekit(model, x_T, x_ref, budgets, grids, log, solvers=None):
    rows = []
    for name in solvers or default_solvers():
        info = sdekit.solvers.get(name)
        for grid in grids:
            for steps in sdekit_steps(info, budgets):
                t0 = time.perf_counter()
                try:
                    sol = sdekit.solvers.sample(model, x_T, name, steps, grid=grid)
                    st, nfe, fail = summarize(row_errors(sol.x, x_ref)), int(sol.nfe), None
                except Exception as err:
                    st, nfe, fail = {k: float("nan") for k in STATS}, None, f"{type(err).__name__}: {err}"[:200]
                rows.append({"library": "sdekit", "solver": name, "grid": grid, "steps": steps,
                             "nfe": nfe if nfe is not None else int(math.ceil(steps * info.nfe_per_step)),
                             **st, "time_s": time.perf_counter() - t0, **({"failed": fail} if fail else {})})
    log(f"    sdekit untuned: {len(rows)} runs, {sum('failed' in r for r in rows)} failed")
    return rows


def tune_available() -> bool:
    try:
        return importlib.util.find_spec("sdekit.solvers.tune") is not None
    except (ImportError, ValueError):
        return False


def tune_candidates(untuned, budgets, top: int):
    """(solver, steps) pairs to tune: per budget, the ``top`` solvers by best median and by best p90
    among untuned runs within the budget, at the most steps that fit the budget (at least 2)."""
    pairs = []
    for b in budgets:
        within = [r for r in untuned if r["nfe"] <= b and math.isfinite(r["median"])]
        for stat in ("median", "p90"):
            best = {}
            for r in within:
                best[r["solver"]] = min(best.get(r["solver"], math.inf), r[stat])
            for solver in sorted(best, key=best.get)[:top]:
                steps = int(b // sdekit.solvers.get(solver).nfe_per_step)
                if steps >= 2 and (solver, steps) not in pairs:
                    pairs.append((solver, steps))
    return pairs


def run_tuned(model, x_T, x_ref, pairs, tune_seed, n_tune, max_evals, log, **tune_options):
    from sdekit.solvers import tune as tune_mod

    rows = []
    for solver, steps in pairs:
        t0 = time.perf_counter()
        kwargs = {"n": n_tune, "generator": tune_seed, "shape": tuple(x_T.shape[1:]), **tune_options}
        if max_evals is not None:
            kwargs["max_evals"] = max_evals
        try:
            try:
                tg = tune_mod.tune(model, solver, steps, **kwargs)
            except TypeError:  # an older / newer signature: the documented arguments only
                tg = tune_mod.tune(model, solver, steps, n=n_tune, generator=tune_seed)
            tune_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            sol = sdekit.solvers.sample(model, x_T, solver, ts=tg.ts)
            st, fail = summarize(row_errors(sol.x, x_ref)), None
            extra = {"tune_nfe": int(getattr(tg, "nfe", -1)), "tune_s": tune_s,
                     "tune_improved": bool(getattr(tg, "improved", True)),
                     "tune_start_grid": getattr(tg, "start_grid", None), "ts": [float(t) for t in tg.ts]}
            nfe, dt = int(sol.nfe), time.perf_counter() - t1
        except Exception as err:
            st, fail, extra = {k: float("nan") for k in STATS}, f"{type(err).__name__}: {err}"[:200], {}
            nfe, dt = int(math.ceil(steps * sdekit.solvers.get(solver).nfe_per_step)), time.perf_counter() - t0
        rows.append({"library": "sdekit", "solver": solver, "grid": "tuned", "steps": steps, "nfe": nfe, **st,
                     "time_s": dt, **extra, **({"failed": fail} if fail else {})})
        log(f"      tuned {solver:<14} {steps:>3} steps: median {st['median']:.3e} p90 {st['p90']:.3e}"
            f"  (tuning {extra.get('tune_nfe', '?')} NFE, {time.perf_counter() - t0:.0f} s)" + (f" FAILED {fail}" if fail else ""))
    return rows


# -- summaries ------------------------------------------------------------------------------------------
def best(rows, library, budget, stat, grid_filter=None):
    c = [r for r in rows if r["library"] == library and r["nfe"] is not None and r["nfe"] <= budget
         and math.isfinite(r[stat]) and (grid_filter is None or grid_filter(r))]
    return min(c, key=lambda r: r[stat]) if c else None


def unit_ratios(rows, peer, budgets):
    """{budget: {stat: {variant: {ratio, sdekit, peer}}}} for variants untuned and tuned."""
    out = {}
    for b in budgets:
        out[b] = {}
        for stat in STATS:
            p = best(rows, peer, b, stat)
            cell = {}
            for variant, filt in (("untuned", lambda r: r["grid"] != "tuned"), ("tuned", None)):
                s = best(rows, "sdekit", b, stat, filt)
                cell[variant] = {"ratio": (s[stat] / p[stat]) if (s and p and p[stat] > 0) else float("nan"),
                                 "sdekit": _brief(s, stat), "peer": _brief(p, stat)}
            out[b][stat] = cell
    return out


def _brief(r, stat):
    if r is None:
        return None
    return {"value": r[stat], "solver": r["solver"], "grid": r["grid"], "steps": r["steps"], "nfe": r["nfe"],
            **({"endpoint": r["endpoint"]} if "endpoint" in r else {}),
            **({"tune_nfe": r["tune_nfe"]} if "tune_nfe" in r else {})}


def aggregate(units, budgets):
    """Median, min and max over seeds of each ratio: {problem: {dim: {budget: {stat: {variant: {...}}}}}}."""
    agg = {}
    for u in units:
        for b, by_stat in u["ratios"].items():
            for stat, by_var in by_stat.items():
                for var, cell in by_var.items():
                    agg.setdefault(u["problem"], {}).setdefault(str(u["dim"]), {}).setdefault(str(b), {}) \
                       .setdefault(stat, {}).setdefault(var, []).append(cell["ratio"])
    for prob in agg.values():
        for dim in prob.values():
            for b, by_stat in dim.items():
                for stat, by_var in by_stat.items():
                    for var, vals in by_var.items():
                        v = torch.tensor([x for x in vals if math.isfinite(x)], dtype=torch.float64)
                        by_var[var] = {"per_seed": vals, "median": float(v.median()) if len(v) else float("nan"),
                                       "min": float(v.min()) if len(v) else float("nan"),
                                       "max": float(v.max()) if len(v) else float("nan")}
                        if stat in GOAL and int(b) in GOAL_BUDGETS:
                            by_var[var]["goal"] = GOAL[stat]
                            by_var[var]["goal_met_median_over_seeds"] = bool(by_var[var]["median"] <= GOAL[stat])
                            by_var[var]["goal_met_every_seed"] = bool(len(v) and float(v.max()) <= GOAL[stat])
    return agg


# -- one unit of work (seed, problem, dim) -------------------------------------------------------------
def settings_key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_unit(args, problem, dim, seed, peers, log):
    gm = random_mixture(dim, seed)
    sde = sdekit.VPSDE() if problem == "vp" else sdekit.DiscreteVPSDE.linear(1000, 1e-4, 0.02)
    model = gm.model(sde)
    gen = torch.Generator().manual_seed(seed)
    x_T = gm.sample_t(args.n, sde.T, sde, generator=gen, dtype=torch.float64).reshape(args.n, dim)
    base = {"problem": problem, "dim": dim, "seed": seed, "n": args.n, "ref_steps": args.ref_steps,
            "budgets": args.budgets, "version": 3}
    cache = None if args.fresh else args.cache
    t0 = time.perf_counter()

    def part(name, fn, extra=None):
        key = settings_key({**base, "part": name, **(extra or {})})
        path = os.path.join(args.cache, f"{problem}_d{dim}_s{seed}_{name}_{key}.json") if cache else None
        return cached_json(path, fn)

    ref = part("reference", lambda: _reference_part(model, x_T, args.ref_steps, gm, sde, problem))
    x_ref = torch.tensor(ref.pop("x_ref"), dtype=torch.float64)
    refs = {"eps": x_ref}
    if problem == "ddpm":
        refs["zero"] = torch.tensor(ref.pop("x_ref_zero"), dtype=torch.float64)
    log(f"  [{problem} {dim}-D seed {seed}] mixture K={gm.means.shape[0]}, reference error estimate "
        f"median {ref['error_estimate']['median']:.1e} p90 {ref['error_estimate']['p90']:.1e}")
    # sdekit untuned solvers are read at run time (the list grows); the cache key carries them
    solvers = default_solvers()
    rows = part("sdekit", lambda: {"rows": run_sdekit(model, x_T, x_ref, args.budgets, SDEKIT_GRIDS, log)},
                {"solvers": solvers})["rows"]
    peer_name = "k-diffusion" if problem == "vp" else "diffusers"
    if problem == "vp" and peers.get("kds") is not None:
        rows += part("kdiffusion", lambda: {"rows": run_kd(peers["kds"], gm, sde, x_T, x_ref, args.budgets, log)})["rows"]
    if problem == "ddpm" and peers.get("diffusers") is not None:
        dp = peers["diffusers"]
        rows += part("diffusers", lambda: {"rows": dp.run_all(gm, sde, x_T, refs, args.budgets, log,
                                                               mixture_score=mixture_score, carry=carry_reference,
                                                               row_errors=row_errors, summarize=summarize,
                                                               quick=args.quick)},
                     {"diffusers": dp.version()})["rows"]
    tuned_info = None
    if args.tune != "none" and tune_available():
        untuned = [r for r in rows if r["library"] == "sdekit"]
        pairs = tune_candidates(untuned, args.budgets, args.tune_top) if args.tune == "top" else [
            (s, st) for s in solvers for st in sdekit_steps(sdekit.solvers.get(s), args.budgets) if st >= 2]
        pairs = pairs[:args.tune_max_pairs] if args.tune_max_pairs else pairs
        tune_seed = 7_000_000 + seed  # not the evaluation draw's seed
        log(f"    tuning {len(pairs)} (solver, steps) pairs on {args.n_tune} prior draws (seed {tune_seed})")
        tuned = []
        for objective in args.tune_objectives:
            key = {"pairs": pairs, "n_tune": args.n_tune, "evals": args.tune_evals, "solvers": solvers}
            if objective != "balanced":  # the default keeps its cache key
                key["objective"] = objective
            part_rows = part("tuned" if objective == "balanced" else f"tuned_{objective}",
                             lambda: {"rows": run_tuned(model, x_T, x_ref, pairs, tune_seed, args.n_tune,
                                                        args.tune_evals, log, objective=objective)}, key)["rows"]
            tuned += [{**r, "tune_objective": objective} for r in part_rows]
        rows += tuned
        tuned_info = {"pairs": pairs, "tune_seed": tune_seed, "n_tune": args.n_tune, "max_evals": args.tune_evals,
                      "objectives": args.tune_objectives, "total_tune_nfe": sum(r.get("tune_nfe", 0) for r in tuned)}
    elif args.tune != "none":
        log("    sdekit.solvers.tune not found: tuned grids skipped")
    unit = {"problem": problem, "dim": dim, "seed": seed, "peer": peer_name, "mixture": _mixture_desc(gm),
            "reference": ref, "tuning": tuned_info, "rows": rows, "ratios": unit_ratios(rows, peer_name, args.budgets),
            "time_s": time.perf_counter() - t0}
    return unit


def _reference_part(model, x_T, steps, gm, sde, problem):
    t0 = time.perf_counter()
    x_ref, info = reference(model, x_T, steps)
    out = {**info, "x_ref": x_ref.tolist()}
    if problem == "ddpm":
        s_eps = s_of(sde, sde.eps)
        fine = carry_reference(gm, x_ref, s_eps, 0.0, 200)
        coarse = carry_reference(gm, x_ref, s_eps, 0.0, 100)
        out["x_ref_zero"] = fine.tolist()
        out["zero_extension"] = {"method": "rk4 in s = sigma/alpha, 200 steps from s(t_end) to 0",
                                 "error_estimate": summarize(row_errors(fine, coarse) / 15.0)}
    # exactness check: the benchmark's own mixture score equals sdekit's
    t = torch.tensor(0.37, dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    mine = mixture_score(gm, x_T[:16], a, s)
    theirs = gm.score(x_T[:16], t, sde).reshape(mine.shape)
    out["score_check_max_abs_diff"] = float((mine - theirs).abs().max())
    assert out["score_check_max_abs_diff"] < 1e-8 * (1 + float(theirs.abs().max())), out["score_check_max_abs_diff"]
    out["time_s"] = time.perf_counter() - t0
    return out


def _mixture_desc(gm):
    return {"K": int(gm.means.shape[0]), "weights": [round(float(w), 4) for w in gm.weights],
            "std_range_per_component": [[round(float(s.min()), 4), round(float(s.max()), 4)] for s in gm.stds]}


# -- digits U-Net (optional) --------------------------------------------------------------------------
def run_digits(args, kds, log):
    """A trained digits checkpoint: sdekit's solvers and k-diffusion's samplers on the same prior draws
    against a dopri5 rtol = atol = 1e-7 reference (float64 network), per-row stats as above."""
    from sdekit.checkpoint import load_model

    model, _ = load_model(args.digits)
    net = getattr(model, "net", None)
    if net is not None:
        net.double().eval()
    sde = model.sde
    n = args.digits_n
    x_T = sde.prior_sample((n, 1, 8, 8), generator=torch.Generator().manual_seed(4242)).to(torch.float64)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = sdekit.solvers.sample(model, x_T, "dopri5", rtol=1e-7, atol=1e-7)
        chk = sdekit.solvers.sample(model, x_T, "dopri5", rtol=1e-5, atol=1e-5)
    x_ref = ref.x
    info = {"method": "dopri5 rtol = atol = 1e-7, float64", "nfe": ref.nfe,
            "distance_to_1e-5_solve": summarize(row_errors(chk.x, x_ref)), "time_s": time.perf_counter() - t0}
    log(f"  [digits] reference NFE {ref.nfe}, |1e-5 solve - ref| median {info['distance_to_1e-5_solve']['median']:.1e}")
    with torch.no_grad():
        rows = run_sdekit(model, x_T, x_ref, args.budgets, SDEKIT_GRIDS, log)
        if kds is not None:
            flat = x_T.reshape(n, -1)

            class NetDenoiser:
                def __init__(self):
                    self.calls = 0

                def __call__(self, y, s):
                    self.calls += 1
                    s0 = float(s.reshape(-1)[0])
                    lam = torch.tensor(-2 * math.log(s0), dtype=torch.float64)
                    t = sde.t_from_log_snr(lam.clamp(float(sde.log_snr(sde.T)), float(sde.log_snr(0.0))))
                    a = float(sde.alpha(t))
                    x = (a * y).reshape(n, 1, 8, 8)
                    return model.x0(x, t.expand(n)).reshape(y.shape)  # D(y, s) = E[x0 | x = alpha y]

            for name, (fn, per) in kd_samplers(kds).items():
                for steps in sorted({max(1, b // per) for b in args.budgets}):
                    for sched, sig in kd_schedules(kds, sde, steps).items():
                        den = NetDenoiser()
                        t1 = time.perf_counter()
                        try:
                            y = fn(den, flat / float(sde.alpha(sde.T)), sig)
                            st = summarize(row_errors(float(sde.alpha(sde.eps)) * y, x_ref.reshape(n, -1)))
                            fail = None
                        except Exception as err:
                            st, fail = {k: float("nan") for k in STATS}, f"{type(err).__name__}: {err}"[:200]
                        rows.append({"library": "k-diffusion", "solver": name, "grid": sched, "steps": steps,
                                     "nfe": den.calls, **st, "time_s": time.perf_counter() - t1,
                                     **({"failed": fail} if fail else {})})
        tuning = None
        if args.tune != "none" and tune_available():
            # a U-Net call costs far more than a mixture's: tune the best untuned solver per goal budget, on
            # fewer prior draws, with a shorter reference and optimiser budget (all recorded)
            untuned = [r for r in rows if r["library"] == "sdekit"]
            pairs = tune_candidates(untuned, [b for b in args.budgets if b in GOAL_BUDGETS], 1)
            opts = {"ref_steps": 200}
            evals = args.tune_evals if args.tune_evals is not None else 150
            log(f"    tuning {len(pairs)} (solver, steps) pairs on 64 prior draws, {evals} solves each")
            tuned = run_tuned(model, x_T, x_ref, pairs, 7_004_242, 64, evals, log, **opts)
            rows += tuned
            tuning = {"pairs": pairs, "n_tune": 64, "max_evals": evals, **opts,
                      "total_tune_nfe": sum(r.get("tune_nfe", 0) for r in tuned)}
    return {"problem": "digits", "dim": 64, "seed": 4242, "peer": "k-diffusion", "reference": info, "rows": rows,
            "tuning": tuning, "ratios": unit_ratios(rows, "k-diffusion", args.budgets), "checkpoint": args.digits}


def slim_rows(rows, budgets):
    """For each (library, solver) and each budget and statistic: its best run (deduplicated)."""
    keep, seen = [], set()
    for lib, solver in sorted({(r["library"], r["solver"]) for r in rows}):
        sub = [r for r in rows if (r["library"], r["solver"]) == (lib, solver)]
        for b in budgets:
            for stat in STATS:
                r = best(sub, lib, b, stat)
                if r is not None and id(r) not in seen:
                    seen.add(id(r))
                    keep.append({k: v for k, v in r.items() if k != "ts" or r["grid"] == "tuned"})
    return keep


# -- printing -------------------------------------------------------------------------------------------
def print_unit(u, budgets, log):
    log(f"\n  {u['problem']} {u['dim']}-D seed {u['seed']}: best per budget (value solver/grid NFE) and sdekit/{u['peer']}")
    log(f"  {'<=':>3} {'stat':<6} {'sdekit untuned':<40} {'sdekit +tuned':<40} {u['peer']:<52} {'r':>5} {'r_t':>5}")
    for b in budgets:
        for stat in STATS:
            c = u["ratios"][b][stat]

            def f(x):
                return "-" if x is None else f"{x['value']:.2e} {x['solver']}/{x['grid']} ({x['nfe']})"
            log(f"  {b:>3} {stat:<6} {f(c['untuned']['sdekit']):<40} {f(c['tuned']['sdekit']):<40} "
                f"{f(c['untuned']['peer']):<52} {c['untuned']['ratio']:>5.2f} {c['tuned']['ratio']:>5.2f}")


def print_summary(agg, budgets, log):
    log("\n=== ratios sdekit_best / peer_best: median over seeds [min, max]; goal median <= 0.25, p90 <= 0.5 ===")
    for prob, by_dim in agg.items():
        peer = "k-diffusion" if prob == "vp" else ("diffusers" if prob == "ddpm" else "k-diffusion")
        for dim, by_b in by_dim.items():
            log(f"\n{prob} ({'vs ' + peer}) {dim}-D")
            log(f"  {'NFE<=':>5}  {'median untuned':>22} {'median tuned':>22}  {'p90 untuned':>22} {'p90 tuned':>22}  {'rms untuned':>22}")
            for b in budgets:
                cells = by_b[str(b)]

                def f(stat, var):
                    c = cells[stat][var]
                    mark = ""
                    if "goal" in c:
                        mark = " ok" if c["goal_met_median_over_seeds"] else " NO"
                    return f"{c['median']:.2f} [{c['min']:.2f},{c['max']:.2f}]{mark}"
                log(f"  {b:>5}  {f('median', 'untuned'):>22} {f('median', 'tuned'):>22}  {f('p90', 'untuned'):>22} "
                    f"{f('p90', 'tuned'):>22}  {f('rms', 'untuned'):>22}")


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(u["problem"], u["dim"]) for u in report["units"]}, key=lambda k: (k[0], k[1]))
    budgets = report["settings"]["budgets"]
    fig, axes = plt.subplots(2, len(keys), figsize=(5.2 * len(keys), 8.5), squeeze=False)
    styles = {"sdekit": ("black", "-"), "sdekit+tuned": ("tab:green", ":"), "k-diffusion": ("tab:red", "--"),
              "diffusers": ("tab:blue", "--")}
    for col, (prob, dim) in enumerate(keys):
        units = [u for u in report["units"] if (u["problem"], u["dim"]) == (prob, dim)]
        for row, stat in enumerate(("median", "p90")):
            ax = axes[row][col]
            for lib in ("sdekit", "sdekit+tuned", units[0]["peer"]):
                per_seed = []
                for u in units:
                    vals = []
                    for b in budgets:
                        if lib == "sdekit+tuned":
                            r = best(u["rows"], "sdekit", b, stat)
                        elif lib == "sdekit":
                            r = best(u["rows"], "sdekit", b, stat, lambda r: r["grid"] != "tuned")
                        else:
                            r = best(u["rows"], lib, b, stat)
                        vals.append(r[stat] if r else float("nan"))
                    per_seed.append(vals)
                t = torch.tensor(per_seed, dtype=torch.float64)
                color, ls = styles[lib]
                med = t.nanmedian(0).values if hasattr(t, "nanmedian") else t.median(0).values
                ax.loglog(budgets, med.tolist(), color=color, linestyle=ls, marker="o", markersize=3, label=lib)
                if t.shape[0] > 1:
                    ax.fill_between(budgets, t.min(0).values.tolist(), t.max(0).values.tolist(), color=color, alpha=0.12)
            ax.set_title(f"{prob} {dim}-D: best {stat} per-row error", fontsize=9)
            ax.set_xlabel("NFE budget")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("best setting per library and NFE budget; line: median over mixture seeds, band: min..max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="rows of x_T per mixture")
    p.add_argument("--dims", default="2,16")
    p.add_argument("--seeds", default="8101,8102,8103,8104,8105", help="mixture seeds (not used in development)")
    p.add_argument("--problems", default="vp,ddpm", help="vp (vs k-diffusion), ddpm (vs diffusers)")
    p.add_argument("--nfe", default="4,5,6,8,10,15,20", help="NFE budgets")
    p.add_argument("--ref-steps", type=int, default=2000)
    p.add_argument("--tune", default="top", choices=("top", "all", "none"),
                   help="tune grids for the best untuned solvers per budget (top), every (solver, steps), or none")
    p.add_argument("--tune-top", type=int, default=1, help="solvers per budget and statistic to tune (--tune top)")
    p.add_argument("--tune-max-pairs", type=int, default=None, help="tune at most this many (solver, steps) per unit")
    p.add_argument("--n-tune", type=int, default=256, help="prior draws used by tune")
    p.add_argument("--tune-evals", type=int, default=None, help="max_evals passed to tune (default: its own)")
    p.add_argument("--tune-objectives", default="balanced",
                   help="comma list of tune objectives (balanced, median, p90): one tuned grid per objective")
    p.add_argument("--peers", default="k-diffusion,diffusers", help="comma list; drop one to skip it")
    p.add_argument("--digits", default=None, metavar="CKPT", help="also compare on a trained digits checkpoint")
    p.add_argument("--digits-n", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=os.path.join(ROOT, "runs", "accuracy_vs_nfe"))
    p.add_argument("--fresh", action="store_true", help="ignore (and do not write) the per-unit cache")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: n=128, one seed, NFE 4,6,10, ref 500 steps, fewer diffusers settings, one tuned grid (10 evals, 64 draws)")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--name", default=None, help="report name (default accuracy_vs_nfe, quick: accuracy_vs_nfe_quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.seeds, args.nfe, args.ref_steps = min(args.n, 128), args.seeds.split(",")[0], "4,6,10", 500
        args.tune_top, args.n_tune = 1, 64
        args.tune_max_pairs = args.tune_max_pairs or 1
        args.tune_evals = 10 if args.tune_evals is None else args.tune_evals
    args.budgets = [int(v) for v in args.nfe.split(",")]
    args.tune_objectives = [v.strip() for v in args.tune_objectives.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    name = args.name or ("accuracy_vs_nfe_quick" if args.quick else "accuracy_vs_nfe")
    started = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    peers, peer_versions = {}, {}
    want = {s.strip() for s in args.peers.split(",") if s.strip()}
    if "k-diffusion" in want:
        peers["kds"] = load_k_diffusion_sampling()
        if peers["kds"] is None:
            log("k-diffusion is not installed: its runs are skipped")
        else:
            peer_versions["k-diffusion"] = _dist_version("k-diffusion")
    if "diffusers" in want:
        if importlib.util.find_spec("diffusers") is None:
            log("diffusers is not installed: its runs are skipped")
        else:
            import diffusers_peers

            peers["diffusers"] = diffusers_peers
            peer_versions["diffusers"] = diffusers_peers.version()
    problems = [s.strip() for s in args.problems.split(",") if s.strip()]
    dims = [int(v) for v in args.dims.split(",")]
    seeds = [int(v) for v in str(args.seeds).split(",")]
    log(f"sdekit solvers: {', '.join(default_solvers())}; tune module: {'yes' if tune_available() else 'no'}")
    units = []
    for seed in seeds:
        for problem in problems:
            for dim in dims:
                u = run_unit(args, problem, dim, seed, peers, log)
                print_unit(u, args.budgets, log)
                log(f"  ({time.perf_counter() - started:.0f} s so far)")
                units.append(u)
    if args.digits:
        units.append(run_digits(args, peers.get("kds"), log))
        print_unit(units[-1], args.budgets, log)
    agg = aggregate(units, args.budgets)
    print_summary(agg, args.budgets, log)
    report = {"settings": {"n": args.n, "dims": dims, "seeds": seeds, "problems": problems, "budgets": args.budgets,
                           "ref_steps": args.ref_steps, "tune": args.tune, "tune_top": args.tune_top,
                           "n_tune": args.n_tune, "tune_evals": args.tune_evals, "quick": args.quick,
                           "dtype": "float64", "sdekit_solvers": default_solvers(), "sdekit_grids": list(SDEKIT_GRIDS),
                           "error": "e_i = |x_i - x_ref,i| / sqrt(dim); median, p90, rms over rows",
                           "goal": {"budgets": list(GOAL_BUDGETS), **GOAL}, "peers": peer_versions,
                           "torch": torch.__version__, "python": platform.python_version(),
                           "machine": platform.machine(), "threads": args.threads,
                           "command": " ".join([os.path.basename(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)])},
              "summary": agg, "units": units, "time_s": time.perf_counter() - started}
    # every run goes to the cache folder (git-ignored); the report keeps each unit's best rows per
    # (library, solver) and budget, which is all the summaries and the plot read
    rows_path = os.path.join(args.cache, f"{name}_rows.json")
    os.makedirs(args.cache, exist_ok=True)
    with open(rows_path, "w") as fh:
        json.dump([{k: u[k] for k in ("problem", "dim", "seed", "rows")} for u in units], fh, default=float)
    report["settings"]["all_rows"] = os.path.relpath(rows_path, ROOT)
    slim = {**report, "units": [{**u, "rows": slim_rows(u["rows"], args.budgets)} for u in units]}
    write_report(args.out, name, slim, lambda path: plot(report, path))
    log(f"total {report['time_s']:.0f} s")
    return report


def _dist_version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
