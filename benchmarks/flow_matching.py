"""Flow matching: sdekit's samplers (untuned and tuned grids) against every deterministic setting of diffusers'
FlowMatch Euler/Heun schedulers on rectified-flow mixtures, over unseen seeds; and the probability-flow likelihood
against the analytic mixture log-density.

Problem: ``GaussianMixture.default(dim, seed)`` under ``RectifiedFlow`` (x_t = (1 - t) x0 + t eps), its exact
velocity as the network, x_T ~ N(0, I) (exactly p_T), solved from t = 1 to t = 0. Per-row error: ||x_0 - x_0^ref||
/ sqrt(dim), the reference by dopri5 (rtol = atol = 1e-10) on the exact velocity; statistics: the median and the
90th percentile over rows.

diffusers (one process, same rows, same velocity): FlowMatchEulerDiscreteScheduler (N steps = N NFE) at every
shift in SHIFTS, with karras / exponential / beta sigmas at every shift, and with dynamic shifting (exponential
and linear time_shift_type, mu in MUS); FlowMatchHeunDiscreteScheduler (N steps = 2N - 1 NFE) at every shift.
At each NFE budget the best setting *per statistic* (an oracle choice for the peer).
sdekit untuned: the data-form solvers and the solvers in t (euler, heun_t) on the named grids and on shifted
uniform grids (``sdekit.time_shift``), each ending at t = 0 (the last step the x0 jump from eps, as diffusers'
last step from its smallest sigma) or at t = eps (every call a real step; the sample's distance to x_0, ~eps, is
part of its error), best per statistic (an oracle choice too). sdekit tuned: ``sdekit.tune`` (objective
"balanced", its own N(0, I) calibration and validation draws, never the evaluation rows) for each (solver, t_end)
in TUNED, best per statistic; its tuning cost is recorded.
Ratios are sdekit / diffusers per seed; the summary gives their median and range over seeds.

    /work/benchvenv/bin/python benchmarks/flow_matching.py [--quick] [--seeds 101 102 103]

writes benchmarks/results/flow_matching.json and flow_matching.png (flow_matching_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdekit  # noqa: E402
from sdekit.metrics import error_summary, per_row_error  # noqa: E402
from sdekit.solvers.tune import tune  # noqa: E402

BUDGETS = (6, 10, 20)
SHIFTS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
MUS = (0.5, 1.15)  # diffusers' base_shift and max_shift defaults
SIGMA_FAMILIES = (None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "dpmpp_2s", "euler", "heun_t")
TUNED = (("unipc_3", 0.0), ("unipc_2", "eps"))  # (solver, t_end): to t = 0 (the last step the x0 jump) or to eps
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
DIMS = (2, 16)
STATS = ("median", "p90")
OUT = Path(__file__).resolve().parent / "results"


def reference(gm, sde, x_T):
    from torchdiffeq import odeint

    ts = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return odeint(lambda t, x: gm.velocity(x, t.clamp(0, 1), sde), x_T, ts, rtol=1e-10, atol=1e-10)[-1]


def stats(x, ref) -> dict:
    """median and p90 of the per-row errors (``sdekit.metrics``); inf for a partly failed solve."""
    s = error_summary(per_row_error(x, ref))
    return {k: math.inf if math.isnan(s[k]) else s[k] for k in ("median", "p90")}


def _diffusers_loop(sched, gm, sde, x_T, steps, **set_kw):
    sched.set_timesteps(steps, **set_kw)
    x, nfe = x_T.clone(), 0
    for t in sched.timesteps:
        sigma = float(sched.sigmas[sched.step_index if sched.step_index is not None else 0])
        u = gm.velocity(x.double(), torch.tensor(sigma, dtype=torch.float64), sde)
        nfe += 1
        x = sched.step(u, t, x).prev_sample.double()
    return x, nfe


def diffusers_settings():
    """(label, scheduler class name, constructor kwargs, set_timesteps kwargs), every deterministic setting."""
    out = []
    for shift in SHIFTS:
        for fam in SIGMA_FAMILIES:
            out.append((f"euler shift={shift}{' ' + fam if fam else ''}", "FlowMatchEulerDiscreteScheduler",
                        {"shift": shift, **({fam: True} if fam else {})}, {}))
        out.append((f"heun shift={shift}", "FlowMatchHeunDiscreteScheduler", {"shift": shift}, {}))
    for kind in ("exponential", "linear"):
        for mu in MUS:
            out.append((f"euler dynamic {kind} mu={mu}", "FlowMatchEulerDiscreteScheduler",
                        {"use_dynamic_shifting": True, "time_shift_type": kind}, {"mu": mu}))
    return out


def diffusers_runs(gm, sde, x_T, ref):
    import diffusers

    rows = []
    for label, cls, kw, set_kw in diffusers_settings():
        for budget in BUDGETS:
            steps = budget if "Euler" in cls else (budget + 1) // 2
            try:
                x, nfe = _diffusers_loop(getattr(diffusers, cls)(**kw), gm, sde, x_T, steps, **set_kw)
                st = stats(x, ref)
            except Exception as err:  # a setting diffusers itself cannot run (e.g. a sigma family's import)
                print(f"  diffusers {label} at {steps} steps failed: {err!r}", flush=True)
                continue
            rows.append({"who": "diffusers", "setting": label, "budget": budget, "nfe": nfe, **st})
    return rows


def _sdekit_ts(sde, grid, shift, steps, to_eps):
    """``steps`` intervals to t = 0 (the last one the x0 jump from eps) or, ``to_eps``, to t = eps."""
    if grid == "shifted":
        body = sdekit.time_shift(torch.linspace(1.0, sde.eps, steps + to_eps, dtype=torch.float64), shift)
        return body if to_eps else torch.cat([body, body.new_zeros(1)])
    return sdekit.solvers.grids.make_grid(sde, steps, grid, t_end=sde.eps if to_eps else 0.0)


def sdekit_runs(gm, sde, x_T, ref):
    model = gm.model(sde)
    rows = []
    for budget in BUDGETS:
        grids = [(g, None) for g in GRIDS] + [("shifted", s) for s in SHIFTS if s != 1.0]
        for solver in SOLVERS:
            k = sdekit.solvers.registry.get(solver).nfe_per_step  # the last step, the x0 jump, is one call
            for (grid, shift), to_eps in itertools.product(grids, (False, True)):
                steps = budget // k if to_eps else (budget - 1) // k + 1
                try:
                    sol = sdekit.sample(model, x_T, solver, ts=_sdekit_ts(sde, grid, shift, steps, to_eps))
                    st, nfe = stats(sol.x, ref), sol.nfe
                except sdekit.solvers.base.SolverError:
                    st, nfe = {"median": math.inf, "p90": math.inf}, budget
                rows.append({"who": "sdekit", "setting": f"{solver} {grid}" + (f" shift={shift}" if shift else "")
                             + (" to eps" if to_eps else " to 0"), "budget": budget, "nfe": nfe, **st})
    return rows


def tuned_runs(gm, sde, x_T, ref, dim, seed, quick):
    model = gm.model(sde)
    rows = []
    for budget in BUDGETS:
        for solver, t_end in TUNED:
            t0 = time.perf_counter()
            tg = tune(model, solver, budget, shape=(dim,), n=128, generator=10_000 + seed,
                      t_end=sde.eps if t_end == "eps" else t_end, max_evals=(15 if quick else 20) * budget,
                      ref_steps=300, dtype=torch.float64)
            sol = sdekit.sample(model, x_T, solver, ts=tg.ts)
            rows.append({"who": "sdekit tuned", "setting": f"{solver} to {t_end} tuned from {tg.start_grid}",
                         "budget": budget,
                         "nfe": sol.nfe, "improved": tg.improved, "tune_nfe": tg.nfe, "ts": tg.ts.tolist(),
                         "tune_seconds": time.perf_counter() - t0, **stats(sol.x, ref)})
    return rows


def best(rows, who, budget, stat):
    cand = [r for r in rows if r["who"] == who and r["nfe"] <= budget]
    return min(cand, key=lambda r: r[stat])


def likelihood(dim: int, n: int):
    sde = sdekit.RectifiedFlow()
    gm = sdekit.GaussianMixture.default(dim=dim, seed=0)
    x = gm.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0 = time.perf_counter()
    res = sdekit.log_likelihood(gm.model(sde), x, divergence="exact", rtol=1e-8, atol=1e-8)
    err = (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs()
    return {"dim": dim, "n": n, "max_abs_error_nats": float(err.max()), "median_abs_error_nats": float(err.median()),
            "nfe": int(res.nfe), "seconds": time.perf_counter() - t0, "prior": "sde (N(0, I), exact for alpha(T) = 0)"}


def summarise(units):
    """Per dim, budget, statistic and sdekit variant: the ratio per seed, its median and range over seeds."""
    out = {}
    for dim in DIMS:
        for budget in BUDGETS:
            for stat in STATS:
                for who in ("sdekit", "sdekit tuned"):
                    per_seed = []
                    for u in units:
                        if u["dim"] != dim or not any(r["who"] == who for r in u["rows"]):
                            continue
                        s, d = best(u["rows"], who, budget, stat), best(u["rows"], "diffusers", budget, stat)
                        per_seed.append({"seed": u["seed"], "ratio": s[stat] / d[stat], "sdekit": s["setting"],
                                         "diffusers": d["setting"], "sdekit_error": s[stat],
                                         "diffusers_error": d[stat]})
                    if per_seed:
                        r = sorted(p["ratio"] for p in per_seed)
                        out[f"{dim}D nfe<={budget} {stat} {who}"] = {
                            "median_ratio": r[len(r) // 2] if len(r) % 2 else 0.5 * (r[len(r) // 2 - 1] + r[len(r) // 2]),
                            "min_ratio": r[0], "max_ratio": r[-1], "per_seed": per_seed}
    return out


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DIMS), figsize=(5.5 * len(DIMS), 3.8))
    for ax, dim in zip(axes, DIMS):
        for who, style in (("sdekit", "s--"), ("sdekit tuned", "o-")):
            for stat, color in (("median", "C0"), ("p90", "C1")):
                keys = [f"{dim}D nfe<={b} {stat} {who}" for b in BUDGETS]
                if not all(k in summary for k in keys):
                    continue
                med = [summary[k]["median_ratio"] for k in keys]
                lo = [summary[k]["min_ratio"] for k in keys]
                hi = [summary[k]["max_ratio"] for k in keys]
                ax.errorbar(BUDGETS, med, yerr=[[m - v for m, v in zip(med, lo)], [v - m for m, v in zip(med, hi)]],
                            fmt=style, color=color, capsize=3, label=f"{who}, {stat}")
        ax.axhline(0.25, color="gray", lw=0.8, ls=":")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.set_xlabel("NFE budget")
        ax.set_ylabel("error ratio sdekit / best diffusers FlowMatch")
        ax.set_title(f"rectified-flow mixtures, {dim}-D (median and range over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 rows and a shorter tuning, one seed: a smoke run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103],
                    help="mixture seeds (not used in development: the tests use 0-6)")
    ap.add_argument("--no-tune", action="store_true", help="skip the tuned grids")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = 128 if args.quick else 1024
    seeds = args.seeds[:1] if args.quick else args.seeds
    sde = sdekit.RectifiedFlow()
    units = []
    for seed in seeds:
        for dim in DIMS:
            t0 = time.perf_counter()
            gm = sdekit.GaussianMixture.default(dim=dim, seed=seed)
            x_T = torch.randn(n, dim, generator=torch.Generator().manual_seed(50_000 + seed), dtype=torch.float64)
            ref = reference(gm, sde, x_T)
            rows = diffusers_runs(gm, sde, x_T, ref) + sdekit_runs(gm, sde, x_T, ref)
            if not args.no_tune:
                rows += tuned_runs(gm, sde, x_T, ref, dim, seed, args.quick)
            units.append({"seed": seed, "dim": dim, "rows": rows})
            for b in BUDGETS:
                d = best(rows, "diffusers", b, "median")
                line = f"seed {seed} {dim:>2}-D NFE<={b:>2}: diffusers {d['setting']} {d['median']:.3e}"
                for who in ("sdekit", "sdekit tuned"):
                    if any(r["who"] == who for r in rows):
                        s = best(rows, who, b, "median")
                        line += f" | {who} {s['setting']} {s['median']:.3e} ({s['median'] / d['median']:.3f})"
                print(line, flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            _write(args, n, seeds, units, None)  # after every unit: a long run that is stopped keeps what it did
    lik = likelihood(16, 8 if args.quick else 32)
    print(f"likelihood 16-D: max |error| {lik['max_abs_error_nats']:.2e} nats", flush=True)
    for k, v in _write(args, n, seeds, units, lik).items():
        print(f"{k:<32} median ratio {v['median_ratio']:.3f}  range [{v['min_ratio']:.3f}, {v['max_ratio']:.3f}]")


def _write(args, n, seeds, units, lik):
    summary = summarise(units)
    results = {"budgets": BUDGETS, "shifts": SHIFTS, "mus": MUS, "n": n, "seeds": seeds, "tuned_solvers": TUNED,
               "complete": lik is not None, "summary": summary, "units": units, "likelihood": lik}
    OUT.mkdir(parents=True, exist_ok=True)
    name = "flow_matching_quick" if args.quick else "flow_matching"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(summary, OUT / f"{name}.png")
    return summary


if __name__ == "__main__":
    main()
