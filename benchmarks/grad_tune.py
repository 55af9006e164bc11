"""Grid tuning by gradient through the solver against Powell's derivative-free tuning (``sdekit.tune``).

Problem: a random ``GaussianMixture`` (4-8 components, means N(0, 1.5^2), stds in [0.05, 0.6], uneven weights; 2-D
and 16-D; seeds the code was not developed on) under the VP SDE, its exact score as the network. Fresh rows: 1000
prior draws x_T ~ N(0, I) from their own seed (never a tuning draw); reference: rk4 with 1000 log-SNR steps.
Per-row error ||x - x_ref|| / sqrt(dim); median and 90th percentile over rows.

Per (mixture, NFE), one solver (default unipc_3), all tuned with n rows per draw (calibration, validation, fresh):
- untuned: the best named grid (uniform / quadratic / logsnr / karras) *on the fresh rows* (an oracle choice, per
  statistic);
- powell: ``tune(method="powell")`` (50 solves per step);
- gradient: ``tune(method="gradient")`` (60 Adam updates through the solver);
- gradient_free_start: the same with ``free_start=True`` (the grid's first time tuned too, diffusers' "leading"
  lever), after a 13-solve search of the start;
with each tuning's cost: network calls on n rows (all, and those of the three reference solves), backward passes,
seconds on one core (this machine is shared: seconds are noisy, calls are exact).

    PYTHONPATH=. python benchmarks/grad_tune.py [--quick] [--seeds 501 502] [--nfe 4 5 6 8 10] [--dims 2 16]

writes benchmarks/results/grad_tune.json and .png (grad_tune_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdekit  # noqa: E402
from sdekit.metrics import per_row_error  # noqa: E402
from sdekit.solvers.tune import START_GRIDS, tune  # noqa: E402

from learned_solver import mixture, plot_errors, stats  # noqa: E402 (the same random mixtures and statistics)
from report import cached_json, write_report  # noqa: E402

SDE = sdekit.VPSDE()
KINDS = {"powell": dict(method="powell"), "gradient": dict(method="gradient"),
         "gradient_free_start": dict(method="gradient", free_start=True)}


def cell(model, x_T, x_ref, dim: int, nfe: int, seed: int, solver: str, n: int, ref_steps: int) -> dict:
    named = {g: stats(per_row_error(sdekit.sample(model, x_T, solver, nfe, grid=g).x, x_ref)) for g in START_GRIDS}
    out: dict = {"untuned": {k: min(v[k] for v in named.values()) for k in ("median", "p90")}, "named": named}
    for kind, kw in KINDS.items():
        tg = tune(model, solver, nfe, shape=(dim,), n=n, generator=seed, ref_steps=ref_steps, cache=False, **kw)
        out[kind] = {**stats(per_row_error(sdekit.sample(model, x_T, solver, ts=tg.ts).x, x_ref)),
                     "improved": tg.improved, "t_start": float(tg.ts[0]), "start_grid": tg.start_grid,
                     "cost": {"nfe": tg.nfe, "ref_nfe": tg.ref_nfe, "tuning_nfe": tg.nfe - tg.ref_nfe,
                              "backward": tg.backward, "evals": tg.evals, "seconds": tg.seconds},
                     "validation": tg.validation, "fresh_draw": tg.fresh}
    return out


def run_cells(dim: int, seed: int, nfes, rows: int, args) -> dict:
    model = mixture(dim, seed).model(SDE)
    x_T = SDE.prior_sample((rows, dim), generator=torch.Generator().manual_seed(10_000 + seed)).double()
    x_ref = sdekit.sample(model, x_T, "rk4", 1000, grid="logsnr").x
    cells = {}
    for nfe in nfes:
        cells[str(nfe)] = c = cell(model, x_T, x_ref, dim, nfe, seed, args.solver, args.n, args.ref_steps)
        print(f"dim {dim} seed {seed} nfe {nfe}: " + ", ".join(
            f"{k} {c[k]['median']:.3g}/{c[k]['p90']:.3g}" for k in ("untuned", *KINDS)) + "  cost " + ", ".join(
            f"{k} {c[k]['cost']['tuning_nfe']} calls {c[k]['cost']['seconds']:.1f}s" for k in KINDS), flush=True)
    return cells


def plot(results: dict, nfes, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["dim"] for r in results["runs"]})
    fig, axes = plt.subplots(2, len(dims), figsize=(5.5 * len(dims), 7.5), squeeze=False)
    for col, dim in enumerate(dims):
        runs = [r for r in results["runs"] if r["dim"] == dim]
        ax = axes[0][col]
        plot_errors(ax, runs, nfes, (("untuned", "C0"), ("powell", "C1"), ("gradient", "C3"),
                                     ("gradient_free_start", "C2")))
        ax.set_xlabel("NFE")
        ax.set_ylabel("fresh-row error (geo. mean over seeds)")
        ax.set_title(f"{dim}-D mixtures, VP, {results['solver']}")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for key, colour in (("powell", "C1"), ("gradient", "C3"), ("gradient_free_start", "C2")):
            ys = [sum(r["cells"][str(k)][key]["cost"]["tuning_nfe"] for r in runs) / len(runs) for k in nfes]
            ax.plot(nfes, ys, "-", color=colour, marker="o", label=f"{key}: network calls (no references)")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("tuning network calls (batch of n rows)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[501, 502])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    p.add_argument("--solver", default="unipc_3")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--ref-steps", type=int, default=200)
    p.add_argument("--name", default=None)
    p.add_argument("--parts", default=None, help="a folder keeping each (dim, seed)'s cells, so runs can be split "
                                                 "across processes (--dims d --seeds s) and merged by a last run")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seeds = args.seeds[:1] if args.quick else args.seeds
    nfes = args.nfe[:1] if args.quick else args.nfe
    rows = 200 if args.quick else 1000
    runs = []
    for dim in args.dims:
        for seed in seeds:
            part = None if args.parts is None else os.path.join(args.parts, f"{dim}_{seed}_{'_'.join(map(str, nfes))}.json")
            cells = cached_json(part, lambda d=dim, s=seed: run_cells(d, s, nfes, rows, args))
            runs.append({"dim": dim, "seed": seed, "cells": cells})
    summary = {}
    for dim in args.dims:
        for nfe in nfes:
            cs = [r["cells"][str(nfe)] for r in runs if r["dim"] == dim]
            summary[f"{dim}d_nfe{nfe}"] = {
                k: {s: [c[k][s] for c in cs] for s in ("median", "p90")} for k in ("untuned", *KINDS)}
            for k in KINDS:
                summary[f"{dim}d_nfe{nfe}"][k]["cost"] = [c[k]["cost"] for c in cs]
    results = {"problem": "random GaussianMixture (4-8 components), VP, exact score; 1000 fresh prior rows; "
                          "rk4 1000-step reference", "solver": args.solver, "seeds": seeds, "nfe": nfes, "n": args.n,
               "ref_steps": args.ref_steps, "summary": summary, "runs": runs}
    name = args.name or ("grad_tune_quick" if args.quick else "grad_tune")
    write_report(str(Path(__file__).resolve().parent / "results"), name, results,
                 lambda path: plot(results, nfes, path))


if __name__ == "__main__":
    main()
