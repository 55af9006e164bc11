"""Flow matching: sdekit's samplers against diffusers' FlowMatch Euler/Heun on a rectified-flow mixture,
and the probability-flow likelihood against the analytic mixture log-density.

Problem: ``GaussianMixture.default(dim, seed)`` under ``RectifiedFlow`` (x_t = (1 - t) x0 + t eps), its exact
velocity as the network, x_T ~ N(0, I) (exactly p_T), solved from t = 1 to t = 0. Error: the median over rows of
||x_0 - x_0^ref||, the reference by dopri5 (rtol = atol = 1e-10) on the exact velocity.

diffusers: FlowMatchEulerDiscreteScheduler (N steps = N NFE) and FlowMatchHeunDiscreteScheduler (N steps =
2N - 1 NFE), each at every shift in SHIFTS; the best over shifts at each NFE budget. sdekit: the data-form
solvers (1 NFE per step, the last interval to t = 0 being the x0 jump) on the named grids and on shifted
uniform grids (``sdekit.time_shift``), best over all at each budget.

    /work/benchvenv/bin/python benchmarks/flow_matching.py [--quick]

writes benchmarks/results/flow_matching.json and flow_matching.png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdekit  # noqa: E402

BUDGETS = (6, 10, 20)
SHIFTS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3")
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
OUT = Path(__file__).resolve().parent / "results"


def reference(gm, sde, x_T):
    from torchdiffeq import odeint

    ts = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return odeint(lambda t, x: gm.velocity(x, t.clamp(0, 1), sde), x_T, ts, rtol=1e-10, atol=1e-10)[-1]


def median_error(x, ref) -> float:
    return float((x - ref).reshape(x.shape[0], -1).norm(dim=1).median())


def diffusers_runs(gm, sde, x_T, ref):
    import diffusers

    rows = []
    for name, cls in (("euler", diffusers.FlowMatchEulerDiscreteScheduler),
                      ("heun", diffusers.FlowMatchHeunDiscreteScheduler)):
        for shift in SHIFTS:
            for budget in BUDGETS:
                steps = budget if name == "euler" else (budget + 1) // 2
                sched = cls(shift=shift)
                sched.set_timesteps(steps)
                x, nfe = x_T.clone(), 0
                for ts in sched.timesteps:
                    sigma = float(sched.sigmas[sched.step_index if sched.step_index is not None else 0])
                    u = gm.velocity(x.double(), torch.tensor(sigma, dtype=torch.float64), sde)
                    nfe += 1
                    x = sched.step(u, ts, x).prev_sample.double()
                rows.append({"who": "diffusers", "solver": name, "shift": shift, "budget": budget, "nfe": nfe,
                             "error": median_error(x, ref)})
    return rows


def sdekit_runs(gm, sde, x_T, ref):
    model = gm.model(sde)
    rows = []
    for budget in BUDGETS:
        grids = [(g, None) for g in GRIDS] + [("shifted", s) for s in SHIFTS if s != 1.0]
        for solver in SOLVERS:
            for grid, shift in grids:
                try:
                    if grid == "shifted":
                        body = sdekit.time_shift(torch.linspace(1.0, sde.eps, budget, dtype=torch.float64), shift)
                        sol = sdekit.sample(model, x_T, solver, ts=torch.cat([body, body.new_zeros(1)]))
                    else:
                        sol = sdekit.sample(model, x_T, solver, steps=budget, grid=grid, t_end=0.0)
                    err = median_error(sol.x, ref)
                    nfe = sol.nfe
                except sdekit.solvers.base.SolverError:
                    err, nfe = math.inf, budget
                rows.append({"who": "sdekit", "solver": solver, "grid": grid, "shift": shift, "budget": budget,
                             "nfe": nfe, "error": err})
    return rows


def likelihood(dim: int, n: int):
    sde = sdekit.RectifiedFlow()
    gm = sdekit.GaussianMixture.default(dim=dim, seed=0)
    x = gm.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0 = time.perf_counter()
    res = sdekit.log_likelihood(gm.model(sde), x, divergence="exact", rtol=1e-8, atol=1e-8)
    err = (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs()
    return {"dim": dim, "n": n, "max_abs_error_nats": float(err.max()), "median_abs_error_nats": float(err.median()),
            "nfe": int(res.nfe), "seconds": time.perf_counter() - t0, "prior": "sde (N(0, I), exact for alpha(T) = 0)"}


def best(rows, who, budget):
    cand = [r for r in rows if r["who"] == who and r["nfe"] <= budget]
    return min(cand, key=lambda r: r["error"])


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["problems"]), figsize=(5 * len(results["problems"]), 3.6))
    for ax, prob in zip(axes if len(results["problems"]) > 1 else [axes], results["problems"]):
        for who, style in (("diffusers", "o--"), ("sdekit", "s-")):
            ys = [prob["best"][str(b)][who]["error"] for b in BUDGETS]
            ax.plot(BUDGETS, ys, style, label=f"{who} best")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.set_xlabel("NFE budget")
        ax.set_ylabel("median endpoint error")
        ax.set_title(f"rectified-flow mixture, {prob['dim']}-D")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows (128 instead of 1024), for a smoke run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = 128 if args.quick else 1024
    sde = sdekit.RectifiedFlow()
    results = {"budgets": BUDGETS, "shifts": SHIFTS, "n": n, "problems": []}
    for dim in (2, 16):
        gm = sdekit.GaussianMixture.default(dim=dim, seed=0)
        x_T = torch.randn(n, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
        ref = reference(gm, sde, x_T)
        rows = diffusers_runs(gm, sde, x_T, ref) + sdekit_runs(gm, sde, x_T, ref)
        best_rows = {}
        for b in BUDGETS:
            d, s = best(rows, "diffusers", b), best(rows, "sdekit", b)
            best_rows[str(b)] = {"diffusers": d, "sdekit": s, "ratio": s["error"] / d["error"]}
            print(f"{dim:>2}-D NFE<={b:>2}: diffusers {d['solver']} shift {d['shift']} {d['error']:.3e} | sdekit "
                  f"{s['solver']} {s['grid']} {s['shift']} {s['error']:.3e} | ratio {s['error'] / d['error']:.3f}",
                  flush=True)
        results["problems"].append({"dim": dim, "best": best_rows, "rows": rows})
    results["likelihood"] = likelihood(16, 8 if args.quick else 32)
    print(f"likelihood 16-D: max |error| {results['likelihood']['max_abs_error_nats']:.2e} nats", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "flow_matching_quick" if args.quick else "flow_matching"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(results, OUT / f"{name}.png")


if __name__ == "__main__":
    main()
