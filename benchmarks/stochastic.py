"""Stochastic samplers side by side, in one process: accuracy of the law, time per step, and noise speed.

Accuracy.  Random Gaussian mixtures (``accuracy_vs_nfe.random_mixture``; seeds 9501.. were never used in
development; 9401-9403 were, by an earlier version of this script) in 2-D and 16-D, n exact draws of p_T as the
common start, each library at its strongest settings:

  vp    VPSDE (beta 0.1..20, T = 1 -> t_end = 1e-3). sdekit's reverse-SDE samplers (ancestral, DPM-Solver++ SDE
        2S/2M/3M, SA-Solver, Restart, Euler-Maruyama, ER-SDE 1-3, SEEDS 1-3) on the logsnr, karras, quadratic and
        uniform grids, and on a grid tuned by ``tune_stochastic`` (below)
        against k-diffusion's sample_euler_ancestral, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral,
        sample_dpmpp_sde, sample_dpmpp_2m_sde (midpoint and heun), sample_dpmpp_3m_sde on its karras, exponential
        and polyexponential schedules (same end level s = sigma/alpha, exact mixture denoiser, its own noise:
        torch.randn or its Brownian tree).
  ddpm  DDPM table (1000 linear betas 1e-4..0.02), ending at t = 0. sdekit as above (the last step is the
        x0 jump) against diffusers' EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler
        (algorithm_type="sde-dpmsolver++"), SASolverScheduler and DPMSolverSDEScheduler (needs torchsde), each on
        every timestep spacing and alternative sigma schedule it offers (diffusers_peers._sigma_options).

Tuned grids: per tuned budget (``--tune-budgets``, default NFE 10), the sdekit sampler and named grid that did best
on draw A is tuned from that grid by ``sdekit.solvers.tune_sde.tune_stochastic`` (sliced W2 to a converged ODE
reference law of ``--tune-n`` prior draws, the model only, no data; its own seeds; first node free below T; kept
only if it wins on tune's own validation draw), and run on draw A beside the named grids. Its cost (network calls
of batches of ``--tune-n`` rows) is recorded per row (``tune_nfe``); it is paid once per model and solver.

Metric: the sliced W2 distance of the n samples to n fresh exact draws of the law at the run's end time, minus the
finite-sample floor (the median sliced W2 between independent exact sets of the same size), and the mode-weight error
0.5 sum_k |f_k - f_k^exact| (f_k: fraction of rows whose most likely component is k). Each NFE budget takes, per
library, the best setting (lowest SW2) with at most that many network calls (counted) on draw A (prior rows, exact
set and sampler noise from the unit's seed); that setting is then run on draw B (all three from seed + 5000), and
draw B's figure is the one reported, so no side gains from the luck of its selection among many settings.
Reported: per problem, dim and NFE, the ratio (sdekit best - floor) / (peer best - floor), median, range and
per-seed values over the mixture seeds, for sdekit with its tuned grids and with named grids only.

Speed.  Time per step with a trivial network (x0 = 0.1 x) at batch 20000 and 16 (2-D), sdekit.sample against the
k-diffusion sampler it corresponds to, and per-row noise (RowNoise.randn_like) against torch.randn at 10^5 rows.
Times are the minimum over repeats of the thread's CPU time (torch on one thread; robust to a loaded machine).

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/stochastic.py [--quick] [--seeds S] [--out DIR]
    ... --resummarize A.json,B.json,C.json --name stochastic     (merge runs, e.g. one per seed in parallel)

Writes DIR/stochastic[_quick].{json,png} (default benchmarks/results), updating the JSON after every unit.
Peers that are not installed are skipped (and listed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch

import sdekit
from sdekit.metrics import sliced_w2
from sdekit.noise import RowNoise

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy_vs_nfe import ExactDenoiser, load_k_diffusion_sampling, mixture_score, random_mixture, s_of  # noqa: E402
from report import write_report  # noqa: E402

SDEKIT = [(name, {}) for name in ("euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
                                    "sa_solver", "restart", "euler_maruyama", "er_sde_1", "er_sde_2", "er_sde_3",
                                    "seeds_1", "seeds_2", "seeds_3")]
SDEKIT.insert(4, ("dpmpp_2m_sde", {"solver_type": "midpoint"}))  # both second-order corrections, as for k-diffusion
TIMING_PAIRS = {  # sdekit sampler -> k-diffusion sampler it corresponds to (per-step timing)
    "euler_ancestral": "sample_euler_ancestral", "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
    "dpmpp_sde": "sample_dpmpp_sde", "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
    "sa_solver": "sample_dpmpp_3m_sde", "euler_maruyama": "sample_euler_ancestral", "ddpm": "sample_euler_ancestral",
    "restart": "sample_heun", "heun_churn": "sample_heun",
}
GRIDS = ("logsnr", "karras", "quadratic", "uniform")  # sdekit's grids for the stochastic samplers (every one tried)
PATH_NOISE = {"euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver",
              "euler_maruyama"}  # samplers whose step noise is the Brownian path's increment (sample(noise="path"))
KD = {"euler_ancestral": 1, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2, "dpmpp_2m_sde": 1,
      "dpmpp_3m_sde": 1}
DIFFUSERS = ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "SASolverScheduler",
             "DPMSolverSDEScheduler"]
clock = time.thread_time


def best_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


# -- speed ------------------------------------------------------------------------------------------------
def noise_speed(rows: int, dim: int, repeats: int) -> dict:
    out = {}
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(rows, dim, dtype=dtype)
        rn = RowNoise(0, rows)
        rn.keys()
        a = best_time(lambda dtype=dtype: torch.randn(rows, dim, dtype=dtype), repeats)
        b = best_time(lambda rn=rn, x=x: rn.randn_like(x), repeats)
        out[str(dtype).replace("torch.", "")] = {"randn_ms": 1e3 * a, "rownoise_ms": 1e3 * b, "ratio": b / a}
    return out


class _Net(torch.nn.Module):
    def forward(self, x, t):
        return 0.1 * x


def step_times(kds, batch: int, steps: int, repeats: int) -> list:
    sde = sdekit.VPSDE()
    model = sdekit.ScoreModel(_Net(), sde, prediction="x0")
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0))
    sig = None if kds is None else kds.get_sigmas_karras(steps, s_of(sde, sde.eps), s_of(sde, sde.T)).float()
    rows = []
    for name, peer in TIMING_PAIRS.items():
        kw = {"s_churn": 1.0} if name == "heun_churn" else {}
        ours = best_time(lambda name=name, kw=kw: sdekit.sample(model, x, name, steps=steps, generator=0, **kw),
                         repeats) / steps
        row = {"solver": name, "batch": batch, "sdekit_ms": 1e3 * ours, "peer": peer}
        if name in PATH_NOISE:  # the same sampler with a fresh Gaussian per step instead of the path's increment
            row["sdekit_step_noise_ms"] = 1e3 * best_time(
                lambda name=name: sdekit.sample(model, x, name, steps=steps, generator=0, noise="step"), repeats) / steps
        if kds is not None:
            fn = getattr(kds, peer)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = best_time(lambda fn=fn: fn(lambda y, s: 0.1 * y, x, sig, disable=True), repeats) / steps
            row.update(kdiff_ms=1e3 * theirs, ratio=ours / theirs)
            if "sdekit_step_noise_ms" in row:
                row["ratio_step_noise"] = row["sdekit_step_noise_ms"] / row["kdiff_ms"]
        rows.append(row)
        print(f"  step time  {name:20s} batch {batch:6d}: sdekit {1e3 * ours:8.3f} ms"
              + (f" (noise='step' {row['sdekit_step_noise_ms']:8.3f} ms)" if "sdekit_step_noise_ms" in row else "")
              + (f", k-diffusion {peer} {row['kdiff_ms']:8.3f} ms, ratio {row['ratio']:.2f}" if "ratio" in row else "")
              + (f" ({row['ratio_step_noise']:.2f})" if "ratio_step_noise" in row else ""),
              flush=True)
    return rows


# -- accuracy ---------------------------------------------------------------------------------------------
def law_metrics(gm, sde, t_end: float, x: torch.Tensor, exact: torch.Tensor) -> dict:
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        return {"sw2": float("nan"), "mode_err": float("nan")}
    K = len(gm.weights)
    f = torch.bincount(gm.component(x, t_end, sde), minlength=K).double() / x.shape[0]
    f0 = torch.bincount(gm.component(exact, t_end, sde), minlength=K).double() / x.shape[0]
    return {"sw2": sliced_w2(x, exact), "mode_err": 0.5 * float((f - f0).abs().sum())}


def _sdekit_solve(model, x_T, spec, seed):
    """One sdekit solve of a setting (``spec``: solver, opts and a named grid with steps, or an explicit ts)."""
    kw = dict(spec["opts"])
    if "ts" in spec:
        kw["ts"] = torch.tensor(spec["ts"], dtype=torch.float64)
    else:
        kw.update(steps=spec["steps"], grid=spec["grid"], **({"t_end": 0.0} if spec["jump"] else {}))
        if "t_start" in spec:
            kw["t_start"] = spec["t_start"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sdekit.sample(model, x_T, spec["solver"], generator=seed, **kw)


def _label(name, opts):
    return name + (f"({opts['solver_type']})" if "solver_type" in opts else "")


def sdekit_runs(gm, sde, x_T, t_end, exact, budgets, seed, jump: bool):
    model = gm.model(sde)
    rows = []
    for name, opts in SDEKIT:
        per = sdekit.solvers.get(name).nfe_per_step
        extra = 12 if name == "restart" else 0  # default restart interval: 2 N K = 12 calls
        for grid in GRIDS:
            for b in budgets:
                for lead in (False, True) if LEADING else (False,):
                    k = max(1, (b - extra - (1 if jump else 0)) // per + (1 if jump else 0))
                    while True:
                        t0 = time.perf_counter()
                        spec = {"solver": name, "opts": opts, "grid": grid, "steps": k, "jump": jump}
                        if lead:  # diffusers' "leading" lever: the first node one step's worth of t below T
                            spec["t_start"] = sde.T * (1 - 1 / k)
                        sol = _sdekit_solve(model, x_T, spec, seed)
                        if sol.nfe <= b or k == 1:
                            break
                        k -= 1
                    if sol.nfe > b:
                        continue
                    rows.append({"library": "sdekit", "solver": _label(name, opts), "setting": grid + " leading" * lead,
                                 "steps": k,
                                 "nfe": sol.nfe, "budget": b, "time_s": time.perf_counter() - t0, "spec": spec,
                                 **law_metrics(gm, sde, t_end, sol.x, exact)})
    return rows


def tuned_runs(gm, sde, x_T, t_end, exact, budgets, seed, jump: bool, named_rows, tune_n: int, tune_budgets=(10,)):
    """Per budget, the sampler whose named-grid setting did best on this draw, on a grid tuned for it by
    ``sdekit.solvers.tune_sde.tune_stochastic`` (sliced W2 against a converged ODE reference from prior draws, its
    own seeds; first node free below T; kept only if it wins on tune's own validation draw)."""
    from sdekit.solvers.tune_sde import tune_stochastic

    model = gm.model(sde)
    rows = []
    for b in budgets:
        cand = [r for r in named_rows if r["budget"] == b and math.isfinite(r["sw2"]) and b in tune_budgets]
        if not cand:
            continue
        best = min(cand, key=lambda r: r["sw2"])
        spec0 = best["spec"]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tg = tune_stochastic(model, spec0["solver"], spec0["steps"], shape=tuple(x_T.shape[1:]), n=tune_n,
                                 generator=seed + 300, t_end=0.0 if jump else None, free_start=True,
                                 start_grids=(spec0["grid"],), max_evals=10 * spec0["steps"], ref_steps=100,
                                 **spec0["opts"])
        tune_s = time.perf_counter() - t0
        spec = {"solver": spec0["solver"], "opts": spec0["opts"], "ts": [float(t) for t in tg.ts]}
        sol = _sdekit_solve(model, x_T, spec, seed)
        if sol.nfe > b:
            continue
        rows.append({"library": "sdekit", "solver": best["solver"], "setting": f"tuned from {tg.start_grid}",
                     "steps": spec0["steps"], "nfe": sol.nfe, "budget": b, "time_s": time.perf_counter() - t0,
                     "tuned": True, "tune_improved": tg.improved, "tune_nfe": tg.nfe, "tune_rows": tune_n,
                     "tune_s": tune_s, "tune_validation": tg.validation, "first_t": float(tg.ts[0]), "spec": spec,
                     **law_metrics(gm, sde, t_end, sol.x, exact)})
        print(f"    tuned {best['solver']} {spec0['steps']} steps from {tg.start_grid}: improved {tg.improved}, "
              f"t_1 = {float(tg.ts[0]):.4f}, sw2 {rows[-1]['sw2']:.4f} (named {best['sw2']:.4f}), {tune_s:.0f} s",
              flush=True)
    return rows


class _Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, y, s):
        self.calls += 1
        return self.fn(y, s)


def _kd_sigmas(kds, sched, steps, s_min, s_max):
    if sched == "karras":
        sig = kds.get_sigmas_karras(steps + 1, s_min, s_max, rho=7.0)[:-1]
    elif sched == "exponential":
        sig = kds.get_sigmas_exponential(steps + 1, s_min, s_max)[:-1]
    else:
        sig = kds.get_sigmas_polyexponential(steps + 1, s_min, s_max, rho=2.0)[:-1]
    return sig.to(torch.float32)


def _kd_solve(kds, gm, sde, x_T, spec, seed):
    """(x at sde.eps, calls) of one k-diffusion setting."""
    a_T, a_end = float(sde.alpha(sde.T)), float(sde.alpha(sde.eps))
    sig = _kd_sigmas(kds, spec["sched"], spec["steps"], s_of(sde, sde.eps), s_of(sde, sde.T))
    den = _Counted(ExactDenoiser(gm))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = getattr(kds, f"sample_{spec['name']}")(den, (x_T / a_T).to(torch.float32), sig, disable=True,
                                                    **spec["opts"])
    return a_end * y, den.calls


def kd_runs(kds, gm, sde, x_T, exact, budgets, seed):
    variants = [(n, {}) for n in KD] + [("dpmpp_2m_sde", {"solver_type": "heun"})]
    rows = []
    for name, opts in variants:
        if getattr(kds, f"sample_{name}", None) is None:
            continue
        for sched in ("karras", "exponential", "polyexponential"):
            for b in budgets:
                spec = {"name": name, "opts": opts, "sched": sched, "steps": max(1, b // KD[name])}
                t0 = time.perf_counter()
                x, calls = _kd_solve(kds, gm, sde, x_T, spec, seed)
                rows.append({"library": "k-diffusion", "solver": _label(name, opts), "setting": sched,
                             "steps": spec["steps"], "nfe": calls, "budget": b, "time_s": time.perf_counter() - t0,
                             "spec": spec, **law_metrics(gm, sde, sde.eps, x, exact)})
    return rows


def _diffusers_solve(gm, sde, x_T, exact, spec, seed):
    """(calls, law metrics) of one diffusers setting; a run that does not end at the data is measured against
    exact draws at its own end level."""
    import diffusers

    import diffusers_peers as dp

    cls = getattr(diffusers, spec["cname"])
    kw = dict(spec["kw"], **({"noise_sampler_seed": seed} if "noise_sampler_seed" in spec["kw"] else {}))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, calls, _, s_end, _ = dp.run_one(cls, kw, spec["steps"], gm, x_T.to(torch.float32),
                                           sde.alphas_cumprod.to(torch.float64), mixture_score)
    if s_end != 0.0:
        t_end = float(sde.t_from_log_snr(torch.tensor(-2 * math.log(s_end), dtype=torch.float64)))
        ex = gm.sample_t(x.shape[0], t_end, sde, generator=torch.Generator().manual_seed(seed + 7),
                         dtype=torch.float64)
        return calls, law_metrics(gm, sde, t_end, x, ex)
    return calls, law_metrics(gm, sde, 0.0, x, exact)


def diffusers_runs(gm, sde, x_T, exact, budgets, seed):
    import diffusers

    import diffusers_peers as dp

    diffusers.utils.logging.set_verbosity_error()
    table_abar = sde.alphas_cumprod.to(torch.float64)
    base = dict(dp.TABLE)
    rows = []
    for cname in DIFFUSERS:
        cls = getattr(diffusers, cname, None)
        if cls is None:
            continue
        extra = {"algorithm_type": "sde-dpmsolver++"} if cname == "DPMSolverMultistepScheduler" else {}
        if cname == "DPMSolverSDEScheduler":
            extra = {"noise_sampler_seed": seed}
        for opts, label in dp._sigma_options(cls):
            kw = {**base, **extra, **opts}
            try:
                nfe_of = dp._nfe_table(cls, kw, max(budgets) + 1, table_abar)
            except Exception:
                continue
            for b in budgets:
                fit = [k for k, n in nfe_of.items() if n is not None and n <= b]
                if not fit:
                    continue
                spec = {"cname": cname, "kw": kw, "steps": max(fit)}
                t0 = time.perf_counter()
                try:
                    calls, met = _diffusers_solve(gm, sde, x_T, exact, spec, seed)
                except Exception as err:  # a setting diffusers refuses or breaks on is a result
                    rows.append({"library": "diffusers", "solver": cname, "setting": label, "budget": b,
                                 "failed": f"{type(err).__name__}: {err}"[:160]})
                    continue
                rows.append({"library": "diffusers", "solver": cname, "setting": label, "steps": max(fit),
                             "nfe": calls, "budget": b, "time_s": time.perf_counter() - t0, "spec": spec, **met})
    return rows


def floor_of(gm, sde, t_end, n, seed, pairs=5) -> tuple:
    """(median, standard deviation) of the sliced W2 between independent exact sets of n draws, and the median
    mode-weight error between them: the finite-sample floors, and the noise of one sliced-W2 value at this n."""
    vals, modes = [], []
    for p in range(pairs):
        a = gm.sample_t(n, t_end, sde, generator=torch.Generator().manual_seed(seed * 100 + 2 * p), dtype=torch.float64)
        b = gm.sample_t(n, t_end, sde, generator=torch.Generator().manual_seed(seed * 100 + 2 * p + 1),
                        dtype=torch.float64)
        m = law_metrics(gm, sde, t_end, a, b)
        vals.append(m["sw2"])
        modes.append(m["mode_err"])
    return statistics.median(vals), statistics.stdev(vals), statistics.median(modes)


def problem_of(problem: str, dim: int, seed: int):
    """(mixture, SDE, t_end) of a unit."""
    gm = random_mixture(dim, seed)
    sde = sdekit.VPSDE() if problem == "vp" else sdekit.DiscreteVPSDE.linear(1000, 1e-4, 0.02)
    return gm, sde, (sde.eps if problem == "vp" else 0.0)


LEADING = False  # --leading: every named grid also with its first node at T (1 - 1/steps)
HELD_OUT = 5000  # the held-out draw's seeds: prior rows seed + HELD_OUT, exact set + 1, sampler noise + 2
LIBS = ("sdekit", "sdekit named grids", "k-diffusion", "diffusers")


def run_unit(problem, dim, seed, n, budgets, kds, have_diffusers, tune_n: int = 0, tune_budgets=(10,)):
    """Every setting on draw A (prior rows and exact set from ``seed``); each library's best setting per budget
    chosen there, then measured on draw B (``HELD_OUT``): the reported figure, free of the selection's luck."""
    gm, sde, t_end = problem_of(problem, dim, seed)
    draws = []
    for s in (seed, seed + HELD_OUT):
        x_T = gm.sample_t(n, sde.T, sde, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
        exact = gm.sample_t(n, t_end, sde, generator=torch.Generator().manual_seed(s + 1), dtype=torch.float64)
        draws.append((x_T, exact))
    (x_T, exact), (x_B, exact_B) = draws
    floor, noise, mode_floor = floor_of(gm, sde, t_end, n, seed)
    jump = problem == "ddpm"
    rows = sdekit_runs(gm, sde, x_T, t_end, exact, budgets, seed, jump=jump)
    if tune_n:
        rows += tuned_runs(gm, sde, x_T, t_end, exact, budgets, seed, jump, rows, tune_n, tune_budgets)
    if problem == "vp" and kds is not None:
        rows += kd_runs(kds, gm, sde, x_T, exact, budgets, seed)
    if problem == "ddpm" and have_diffusers:
        rows += diffusers_runs(gm, sde, x_T, exact, budgets, seed)
    for r in rows:
        if "sw2" in r:
            r["excess"] = r["sw2"] - floor
    best = best_per_budget(rows, budgets)
    held = held_out(best, gm, sde, t_end, x_B, exact_B, seed + HELD_OUT + 2, kds, floor)
    return {"problem": problem, "dim": dim, "seed": seed, "n": n, "floor": floor, "floor_sd": noise,
            "mode_floor": mode_floor, "rows": rows, "best": best, "held_out": held,
            "best_by_mode": best_per_budget(rows, budgets, "mode_err")}


def held_out(best, gm, sde, t_end, x_B, exact_B, noise_seed, kds, floor) -> dict:
    """Each library's chosen setting per budget, run again on the held-out draw: {budget: {library: metrics}}."""
    model = gm.model(sde)
    out = {}
    for b, libs in best.items():
        for lib, r in libs.items():
            spec = r["spec"]
            if lib.startswith("sdekit"):
                met = law_metrics(gm, sde, t_end, _sdekit_solve(model, x_B, spec, noise_seed).x, exact_B)
            elif lib == "k-diffusion":
                met = law_metrics(gm, sde, sde.eps, _kd_solve(kds, gm, sde, x_B, spec, noise_seed)[0], exact_B)
            else:
                met = _diffusers_solve(gm, sde, x_B, exact_B, spec, noise_seed)[1]
            out.setdefault(b, {})[lib] = {"solver": r["solver"], "setting": r["setting"], "nfe": r["nfe"], **met,
                                          "excess": met["sw2"] - floor}
    return out


def best_per_budget(rows, budgets, key: str = "sw2") -> dict:
    """Per NFE budget and library, the setting with the lowest ``key`` (sw2 or mode_err) within the budget
    ("sdekit named grids": sdekit without its tuned grids)."""
    out = {}
    for b in budgets:
        for lib in LIBS:
            cand = [r for r in rows if r["library"] == lib.split(" ")[0] and r.get("nfe", 1e9) <= b
                    and math.isfinite(r.get(key, math.nan)) and not (lib.endswith("grids") and r.get("tuned"))]
            if cand:
                r = min(cand, key=lambda r: r[key])
                out.setdefault(str(b), {})[lib] = {k: r[k] for k in ("solver", "setting", "nfe", "sw2", "excess",
                                                                    "mode_err", "spec")}
    return out


def ratios(units, budgets, by: str = "sw2") -> dict:
    """(sdekit best - floor) / (peer best - floor) per problem, dim and NFE, each side's best setting by ``by``
    ("sw2": the sliced W2 above its floor, on the held-out draw where the unit has one; "mode_err": the mode-weight
    error above its floor, in-sample): median and range over seeds, and the per-seed values. A seed where the peer's
    best lies within 2 floor standard deviations of the floor (for mode_err, whose noise is not estimated: at or
    below its floor) is not a ratio (it would divide noise by noise): it counts in ``at_floor`` instead, with
    sdekit's excess in floor standard deviations (NaN without one). Rows for sdekit with its tuned grids and with
    named grids only."""
    if by == "sw2":
        excess, noise = lambda u, e: e["excess"], lambda u: u.get("floor_sd", 0.0)

        def best_of(u):
            return u.get("held_out", u["best"])
    else:
        excess, noise = lambda u, e: e["mode_err"] - u["mode_floor"], lambda u: 0.0

        def best_of(u):
            return u["best_by_mode"]
    out = {}
    for problem, peer in (("vp", "k-diffusion"), ("ddpm", "diffusers")):
        for dim in sorted({u["dim"] for u in units}):
            us = [u for u in units if u["problem"] == problem and u["dim"] == dim]
            for ours in ("sdekit", "sdekit named grids"):
                for b in budgets:
                    vals, at_floor = [], []
                    for u in us:
                        best = best_of(u).get(str(b), {})
                        if ours in best and peer in best:
                            den, sd = excess(u, best[peer]), noise(u)
                            if den > 2 * sd:
                                vals.append(excess(u, best[ours]) / den)
                            else:
                                at_floor.append(excess(u, best[ours]) / sd if sd > 0 else math.nan)
                    if vals or at_floor:
                        cell = {"seeds": len(vals) + len(at_floor), "at_floor": len(at_floor),
                                "sdekit_excess_in_sd_at_floor": at_floor, "values": vals}
                        if vals:
                            cell.update(median=statistics.median(vals), min=min(vals), max=max(vals))
                        suffix = "" if ours == "sdekit" else " (sdekit named grids only)"
                        out.setdefault(f"{problem} {dim}-D vs {peer}{suffix}", {})[str(b)] = cell
    return out


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = report["units"]
    keys = sorted({(u["problem"], u["dim"]) for u in units})
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.8), squeeze=False)
    for ax, (problem, dim) in zip(axes[0], keys):
        us = [u for u in units if u["problem"] == problem and u["dim"] == dim]
        for lib, style in (("sdekit", "o-"), ("sdekit named grids", "o:"), ("k-diffusion", "s--"),
                           ("diffusers", "^--")):
            xs, med, lo, hi = [], [], [], []
            for b in report["budgets"]:
                v = [u.get("held_out", u["best"])[str(b)][lib]["excess"] for u in us
                     if lib in u.get("held_out", u["best"]).get(str(b), {})]
                if v:
                    xs.append(b)
                    med.append(statistics.median(v))
                    lo.append(min(v))
                    hi.append(max(v))
            if xs:
                ax.errorbar(xs, med, yerr=[[m - a for m, a in zip(med, lo)], [b - m for m, b in zip(med, hi)]],
                            fmt=style, label=lib, capsize=3)
        sd = statistics.median(u.get("floor_sd", 0.0) for u in us)
        ax.axhspan(-2 * sd, 2 * sd, color="gray", alpha=0.2, label="floor +- 2 sd (noise at this n)")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{problem}, {dim}-D ({len(us)} mixtures)")
        ax.set_xlabel("NFE")
        ax.set_ylabel("sliced W2 - floor (best setting, held out)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resummarize(path: str) -> dict:
    """Recompute every unit's best settings (by sliced W2 and by mode error), floors and both ratio tables from a
    saved report's rows (the mode-error floor is recomputed from the unit's seeds if the report predates it).
    ``path`` may list several reports (comma-separated, e.g. one per seed run in parallel): their units are merged
    under the first one's settings."""
    reports = []
    for one in path.split(","):
        with open(one) as fh:
            reports.append(json.load(fh))
    report = reports[0]
    report["units"] = [u for r in reports for u in r["units"]]
    report["settings"]["seeds"] = sorted({u["seed"] for u in report["units"]})
    report["settings"]["dims"] = sorted({u["dim"] for u in report["units"]})
    budgets = report["budgets"]
    for u in report["units"]:
        if "mode_floor" not in u:
            gm, sde, t_end = problem_of(u["problem"], u["dim"], u["seed"])
            u["floor"], u["floor_sd"], u["mode_floor"] = floor_of(gm, sde, t_end, u["n"], u["seed"])
            for r in u["rows"]:
                if "sw2" in r:
                    r["excess"] = r["sw2"] - u["floor"]
        if "held_out" not in u:  # a held-out figure cannot be recomputed from the rows; keep it as run
            u["best"] = best_per_budget(u["rows"], budgets)
        u["best_by_mode"] = best_per_budget(u["rows"], budgets, "mode_err")
    report["ratios"] = ratios(report["units"], budgets)
    report["mode_ratios"] = ratios(report["units"], budgets, "mode_err")
    return report


def print_ratios(report) -> None:
    for title, key in (("sliced W2: (sdekit best - floor) / (peer best - floor)", "ratios"),
                       ("mode weights: (sdekit best - floor) / (peer best - floor)", "mode_ratios")):
        print(title + ":")
        for k, v in report.get(key, {}).items():
            print(" ", k, {b: (f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]" if "median" in r else "")
                           + (f" {[round(v, 2) for v in r['values']]}" if len(r.get("values", [])) > 1 else "")
                           + (f" ({r['at_floor']} of {r['seeds']} at the floor)" if r["at_floor"] else "")
                           for b, r in v.items()})


def plot_timing(report, path):
    """Per-step time over k-diffusion's, per sampler and batch: path noise (default) and noise='step'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("step_time", []) if "ratio" in r]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(6 * max(1, len(batches)), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rs = [r for r in rows if r["batch"] == batch]
        pos = range(len(rs))
        ax.bar([p - 0.2 for p in pos], [r["ratio"] for r in rs], 0.4, label="noise='path' (default)")
        ax.bar([p + 0.2 for p in pos], [r.get("ratio_step_noise", r["ratio"]) for r in rs], 0.4, label="noise='step'")
        ax.axhline(1.5, color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(list(pos), [r["solver"] for r in rs], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("sdekit / k-diffusion time per step")
        ax.set_title(f"batch {batch}, trivial network, 2-D")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: small n, 1 seed, NFE 10 and 20")
    p.add_argument("--seeds", default="9501,9502,9503")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--dims", default="2,16")
    p.add_argument("--problems", default="vp,ddpm")
    p.add_argument("--leading", action="store_true", help="sdekit's named grids also start one step below T")
    p.add_argument("--lean", action="store_true", help="sdekit's samplers and grids that can win at NFE 10-20 only "
                   "(no restart, euler_maruyama, dpmpp_2s_ancestral; no karras grid): the peers keep every setting")
    p.add_argument("--budgets", default=None, help="NFE budgets (default 10,20)")
    p.add_argument("--tune-n", type=int, default=1024, help="prior rows per draw of tune_stochastic (0: no tuned "
                   "grids)")
    p.add_argument("--tune-budgets", default="10", help="the NFE budgets that get a tuned grid")
    p.add_argument("--name", default=None, help="results file stem (default stochastic, quick: stochastic_quick)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--no-timing", action="store_true", help="skip the noise and per-step timing tables")
    p.add_argument("--timing-only", action="store_true", help="only the noise and per-step timing tables "
                   "(written to DIR/stochastic_timing.json)")
    p.add_argument("--resummarize", metavar="JSON", help="recompute the best settings and ratio tables of a saved "
                   "report (and its plot) instead of running")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    global LEADING
    LEADING = args.leading
    if args.lean:
        global GRIDS
        SDEKIT[:] = [(name, o) for name, o in SDEKIT if name not in ("restart", "euler_maruyama", "dpmpp_2s_ancestral")]
        GRIDS = tuple(g for g in GRIDS if g != "karras")
    if args.resummarize:
        report = resummarize(args.resummarize)
        print_ratios(report)
        stem = os.path.splitext(args.resummarize.split(",")[0])[0] if args.name is None else \
            os.path.join(args.out, args.name)
        write_report(os.path.dirname(stem) or ".", os.path.basename(stem), report, lambda path: plot(report, path))
        return
    quick = args.quick
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if quick else None]
    n = args.n or (500 if quick else 10_000)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [10, 20]
    dims = [int(d) for d in args.dims.split(",")]
    kds = load_k_diffusion_sampling()
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except ImportError:
        have_diffusers = False
    name = args.name or ("stochastic_quick" if quick else "stochastic")
    report = {"settings": {"n": n, "seeds": seeds, "dims": dims, "torch": torch.__version__, "tune_n": args.tune_n,
                           "sdekit_samplers": [_label(name, o) for name, o in SDEKIT], "sdekit_grids": GRIDS,
                           "threads": torch.get_num_threads(), "clock": "thread CPU time, min over repeats"},
              "budgets": budgets, "missing_peers": [k for k, v in (("k-diffusion", kds), ("diffusers", have_diffusers))
                                                    if not v]}
    reps = 3 if quick else 10
    if not args.no_timing:
        report["noise"] = {f"rows_1e5_dim{d}": noise_speed(100_000, d, reps) for d in ((2,) if quick else (2, 16))}
        print("noise:", json.dumps(report["noise"]), flush=True)
        report["step_time"] = step_times(kds, 16, 20, reps) + step_times(kds, 2000 if quick else 20000, 20,
                                                                           2 if quick else 5)
    if args.timing_only:
        write_report(args.out, name + "_timing", report, lambda path: plot_timing(report, path))
        return
    units = []
    for seed in seeds:
        for dim in dims:
            for problem in args.problems.split(","):
                t0 = time.perf_counter()
                units.append(run_unit(problem, dim, seed, n, budgets, kds, have_diffusers, args.tune_n,
                                       [int(b) for b in args.tune_budgets.split(",")]))
                report["units"], report["ratios"] = units, ratios(units, budgets)
                print(f"unit {problem} {dim}-D seed {seed}: {time.perf_counter() - t0:.0f} s; held-out best "
                      + json.dumps(units[-1]["held_out"]), flush=True)
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, name + ".json"), "w") as fh:
                    json.dump(report, fh, indent=1, default=float)
    report["mode_ratios"] = ratios(units, budgets, "mode_err")
    print_ratios(report)
    write_report(args.out, name, report, lambda path: plot(report, path))


if __name__ == "__main__":
    main()
