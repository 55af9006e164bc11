"""Learned solvers (``sdekit.learn_solver``) against their init and against ``sdekit.tune``'s grid, at NFE 4, 5, 6.

Problem: a random ``GaussianMixture`` (4-8 components, means N(0, 1.5^2), stds in [0.05, 0.6], uneven weights;
2-D and 16-D, seeds the code was not developed on) under the VP SDE, its exact score as the network. Fresh rows:
1000 prior draws x_T ~ N(0, I) from their own seed (never the learning or tuning draws); reference: rk4 with 1000
log-SNR steps. Per-row error ||x - x_ref|| / sqrt(dim); statistics: median and 90th percentile over rows.

Per (mixture, NFE):
- learned: ``learn_solver(model, nfe, init="dpmpp_2m")`` (defaults: n = 256, 300 Adam steps, lr 0.01, its init on
  the best named grid of its calibration draw), with its cost (forward network calls of n rows, back-propagated
  calls, seconds);
- init: dpmpp_2m on the grid learning started from (what learn_solver returns when learning does not win);
- best named: dpmpp_2m on the best of the uniform / quadratic / logsnr / karras grids *on the fresh rows* (an
  oracle choice, per statistic);
- tuned: dpmpp_2m on ``sdekit.tune``'s grid (defaults: Powell, 50 solves per step, n = 256), with its cost.

    PYTHONPATH=. python benchmarks/learned_solver.py [--quick] [--seeds 401 402 403]

writes benchmarks/results/learned_solver.json and .png (learned_solver_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdekit  # noqa: E402
from sdekit.solvers.grids import make_grid  # noqa: E402
from sdekit.solvers.tune import START_GRIDS, row_errors, tune  # noqa: E402

from report import write_report  # noqa: E402

SDE = sdekit.VPSDE()
SOLVER = "dpmpp_2m"


def mixture(dim: int, seed: int) -> sdekit.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(4, 9, (1,), generator=g))
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    stds = 0.05 + 0.55 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    return sdekit.GaussianMixture(weights, means, stds)


def stats(e: torch.Tensor) -> dict:
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()
    return {"median": q[0], "p90": q[1]}


def cell(model, x_T, x_ref, dim: int, nfe: int, seed: int) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    learned = sdekit.learn_solver(model, nfe, init=SOLVER, shape=(dim,), generator=seed)
    out["learned"] = {**stats(row_errors(sdekit.sample(model, x_T, learned).x, x_ref)),
                      "improved": learned.improved, "start_grid": learned.start_grid,
                      "parameters": learned.num_parameters, "cost": learned.cost,
                      "validation": learned.validation, "seconds": time.perf_counter() - t0}
    init_ts = make_grid(SDE, nfe, learned.start_grid)
    out["init"] = stats(row_errors(sdekit.sample(model, x_T, SOLVER, ts=init_ts).x, x_ref))
    named = {g: stats(row_errors(sdekit.sample(model, x_T, SOLVER, nfe, grid=g).x, x_ref)) for g in START_GRIDS}
    out["best_named"] = {k: min(v[k] for v in named.values()) for k in ("median", "p90")}
    out["named"] = named
    t0 = time.perf_counter()
    tg = tune(model, SOLVER, nfe, shape=(dim,), generator=seed, cache=False)
    out["tuned"] = {**stats(row_errors(sdekit.sample(model, x_T, SOLVER, ts=tg.ts).x, x_ref)),
                    "improved": tg.improved, "cost": {"nfe": tg.nfe, "seconds": time.perf_counter() - t0}}
    return out


def plot(results: dict, nfes, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["dim"] for r in results["runs"]})
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        runs = [r for r in results["runs"] if r["dim"] == dim]
        for key, colour in (("learned", "C3"), ("init", "C0"), ("best_named", "C2"), ("tuned", "C1")):
            for stat, style in (("median", "-"), ("p90", "--")):
                ys = [torch.tensor([r["cells"][str(n)][key][stat] for r in runs]).log().mean().exp().item()
                      for n in nfes]
                ax.plot(nfes, ys, style, color=colour, marker="o", label=f"{key} {stat}")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("per-row error (geometric mean over seeds)")
        ax.set_title(f"{dim}-D mixtures, VP, {SOLVER} init")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[401, 402, 403])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds[:1] if args.quick else args.seeds
    nfes = args.nfe[:1] if args.quick else args.nfe
    rows = 200 if args.quick else 1000
    runs = []
    for dim in args.dims:
        for seed in seeds:
            model = mixture(dim, seed).model(SDE)
            x_T = SDE.prior_sample((rows, dim), generator=torch.Generator().manual_seed(10_000 + seed)).double()
            x_ref = sdekit.sample(model, x_T, "rk4", 1000, grid="logsnr").x
            cells = {}
            for nfe in nfes:
                cells[str(nfe)] = c = cell(model, x_T, x_ref, dim, nfe, seed)
                print(f"dim {dim} seed {seed} nfe {nfe}: " + ", ".join(
                    f"{k} {c[k]['median']:.3g}/{c[k]['p90']:.3g}" for k in ("learned", "init", "best_named", "tuned"))
                    + f"  learn {c['learned']['cost']['seconds']:.0f}s tune {c['tuned']['cost']['seconds']:.0f}s",
                    flush=True)
            runs.append({"dim": dim, "seed": seed, "cells": cells})
    summary = {}
    for dim in args.dims:
        for nfe in nfes:
            cs = [r["cells"][str(nfe)] for r in runs if r["dim"] == dim]
            summary[f"{dim}d_nfe{nfe}"] = {
                k: {s: [c[k][s] for c in cs] for s in ("median", "p90")} for k in ("learned", "init", "best_named", "tuned")}
            summary[f"{dim}d_nfe{nfe}"]["learn_cost"] = [c["learned"]["cost"] for c in cs]
            summary[f"{dim}d_nfe{nfe}"]["tune_cost"] = [c["tuned"]["cost"] for c in cs]
    results = {"problem": "random GaussianMixture (4-8 components), VP, exact score; 1000 fresh prior rows; "
                          "rk4 1000-step reference", "solver": SOLVER, "seeds": seeds, "nfe": nfes,
               "summary": summary, "runs": runs}
    name = "learned_solver_quick" if args.quick else "learned_solver"
    write_report(str(Path(__file__).resolve().parent / "results"), name, results,
                 lambda path: plot(results, nfes, path))


if __name__ == "__main__":
    main()
