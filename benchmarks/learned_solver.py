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

Against the peers (``--peers``; needs k-diffusion and diffusers: run with /work/bench-venv/bin/python): see
PEER_DOC below; writes benchmarks/results/learned_solver_vs_peers.{json,png}.

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/learned_solver.py --peers [--seeds 9201 9202 9203]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdekit  # noqa: E402
from sdekit.solvers.grids import make_grid  # noqa: E402
from sdekit.metrics import per_row_error as row_errors  # noqa: E402
from sdekit.solvers.tune import START_GRIDS, tune  # noqa: E402

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


def plot_errors(ax, runs: list, nfes: list, keys: tuple) -> None:
    """Median (solid) and p90 (dashed) error per NFE of each (key, colour), geometric mean over the runs' seeds."""
    for key, colour in keys:
        for stat, style in (("median", "-"), ("p90", "--")):
            ys = [torch.tensor([r["cells"][str(n)][key][stat] for r in runs]).log().mean().exp().item() for n in nfes]
            ax.plot(nfes, ys, style, color=colour, marker="o", label=f"{key} {stat}")
    ax.set_yscale("log")


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
        plot_errors(ax, runs, nfes, (("learned", "C3"), ("init", "C0"), ("best_named", "C2"), ("tuned", "C1")))
        ax.set_xlabel("NFE")
        ax.set_ylabel("per-row error (geometric mean over seeds)")
        ax.set_title(f"{dim}-D mixtures, VP, {SOLVER} init")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- against the peers (issue 24's goal): k-diffusion on VP, diffusers on a DDPM table ------------------------------
PEER_DOC = """Learned sdekit solvers against every k-diffusion sampler and schedule (VP) and every diffusers deterministic
scheduler and spacing (DDPM table), in one process, on ``accuracy_vs_nfe``'s random mixtures (its problems, x_T drawn
exactly from p_T, rk4 2000-step log-SNR reference, diffusers' sigma = 0 ends against the reference carried to 0; its
peer runners are imported, not copied). Per (problem, dim, seed, NFE b): ``learn_solver(model, b, init="dpmpp_2m")``
from prior draws of its own seed (never the evaluation x_T), scored on the evaluation rows; the best peer is the peer's
best setting with counted NFE <= b, per statistic. Ratios learned / best peer; the learning cost in forward network
calls (each a batch of n_learn rows), back-propagated calls, wall seconds and CPU seconds of the one process."""


def peers_main(args) -> None:
    import accuracy_vs_nfe as avn  # noqa: E402 (benchmarks/ is on sys.path)

    torch.set_num_threads(1)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    budgets = args.nfe
    kds = avn.load_k_diffusion_sampling(required="vp" in args.problems)
    dp = None
    if "ddpm" in args.problems:
        import diffusers_peers as dp  # noqa: E402

    def log(msg):
        print(msg, flush=True)

    units = []
    for problem in args.problems:
        for dim in args.dims:
            for seed in args.seeds:
                t0 = time.perf_counter()
                gm = avn.random_mixture(dim, seed)
                sde = sdekit.VPSDE() if problem == "vp" else sdekit.DiscreteVPSDE.linear(1000, 1e-4, 0.02)
                model = gm.model(sde)
                x_T = gm.sample_t(args.n, sde.T, sde, generator=torch.Generator().manual_seed(seed),
                                  dtype=torch.float64).reshape(args.n, dim)
                ref = avn._reference_part(model, x_T, args.ref_steps, gm, sde, problem)
                x_ref = torch.tensor(ref.pop("x_ref"), dtype=torch.float64)
                if problem == "vp":
                    rows = avn.run_kd(kds, gm, sde, x_T, x_ref, budgets, log)
                    peer = "k-diffusion"
                else:
                    refs = {"eps": x_ref, "zero": torch.tensor(ref.pop("x_ref_zero"), dtype=torch.float64)}
                    rows = dp.run_all(gm, sde, x_T, refs, budgets, log, mixture_score=avn.mixture_score,
                                      carry=avn.carry_reference, row_errors=avn.row_errors, summarize=avn.summarize)
                    peer = "diffusers"
                t_peer = time.perf_counter() - t0
                cells = {}
                for b in budgets:
                    c0, w0 = time.process_time(), time.perf_counter()
                    ls = sdekit.learn_solver(model, b, init=tuple(args.init), shape=(dim,), n=args.n_learn,
                                             steps=args.learn_steps, ref_steps=args.learn_ref_steps,
                                             generator=5_000_000 + seed, free_start=bool(args.free_start),
                                             tries=args.tries)
                    cpu = time.process_time() - c0
                    mine = avn.summarize(avn.row_errors(sdekit.sample(model, x_T, ls).x, x_ref))
                    init = avn.summarize(avn.row_errors(sdekit.sample(model, x_T, ls.init, b, grid=ls.start_grid).x,
                                                        x_ref))
                    best = {s: avn.best(rows, peer, b, s) for s in avn.STATS}
                    cells[str(b)] = {
                        "learned": {**mine, "improved": ls.improved, "init": ls.init, "start_grid": ls.start_grid,
                                    "parameters": ls.num_parameters,
                                    "cost": {**ls.cost, "cpu_s": cpu, "wall_s": time.perf_counter() - w0}},
                        "init": init,
                        "peer": {s: avn._brief(r, s) for s, r in best.items()},
                        "ratio": {s: (mine[s] / r[s]) if r and r[s] > 0 else float("nan") for s, r in best.items()}}
                    c = cells[str(b)]
                    log(f"  [{problem} {dim}-D seed {seed}] NFE {b}: learned {mine['median']:.2e}/{mine['p90']:.2e} "
                        f"init {init['median']:.2e}/{init['p90']:.2e} peer "
                        + "/".join(f"{c['peer'][s]['value']:.2e}" if c['peer'][s] else "-" for s in ("median", "p90"))
                        + f" ({c['peer']['median']['solver'] if c['peer']['median'] else '-'}) ratio "
                        f"{c['ratio']['median']:.3f}/{c['ratio']['p90']:.3f}  learn {cpu:.1f} cpu-s"
                        f"{'' if ls.improved else ' (init kept)'}")
                units.append({"problem": problem, "dim": dim, "seed": seed, "peer": peer, "reference": ref,
                              "mixture": avn._mixture_desc(gm), "peer_rows": len(rows), "peer_seconds": t_peer,
                              "cells": cells, "seconds": time.perf_counter() - t0})
    summary: dict = {}
    for problem in args.problems:
        for dim in args.dims:
            for b in budgets:
                us = [u for u in units if u["problem"] == problem and u["dim"] == dim]
                cell = {}
                for s in ("median", "p90"):
                    v = torch.tensor([u["cells"][str(b)]["ratio"][s] for u in us], dtype=torch.float64)
                    cell[s] = {"per_seed": v.tolist(), "median": float(v.quantile(0.5)), "min": float(v.min()),
                               "max": float(v.max()), "goal": GOAL[s], "goal_met_every_seed": bool(v.max() <= GOAL[s])}
                costs = [u["cells"][str(b)]["learned"]["cost"] for u in us]
                cell["learn_cpu_s"] = [c["cpu_s"] for c in costs]
                cell["learn_nfe"] = [c["nfe"] for c in costs]
                cell["improved"] = [u["cells"][str(b)]["learned"]["improved"] for u in us]
                summary[f"{problem}_{dim}d_nfe{b}"] = cell
    log("\n=== learned / best peer, per cell: median over seeds [min, max]; goal median <= 0.1, p90 <= 0.25 ===")
    for key, cell in summary.items():
        log(f"{key:<16} median {cell['median']['median']:.3f} [{cell['median']['min']:.3f}, "
            f"{cell['median']['max']:.3f}]   p90 {cell['p90']['median']:.3f} [{cell['p90']['min']:.3f}, "
            f"{cell['p90']['max']:.3f}]   learn {max(cell['learn_cpu_s']):.0f} cpu-s max")
    report = {"doc": PEER_DOC, "problems": args.problems, "dims": args.dims, "seeds": args.seeds, "nfe": budgets,
              "n": args.n, "ref_steps": args.ref_steps, "init": args.init,
              "learning": {"n": args.n_learn, "steps": args.learn_steps, "ref_steps": args.learn_ref_steps,
                           "free_start": bool(args.free_start), "tries": args.tries, "seed": "5000000 + mixture seed"},
              "versions": {"torch": torch.__version__, "diffusers": dp.version() if dp else None},
              "goal": GOAL, "summary": summary, "units": units,
              "seconds": time.perf_counter() - t_all, "cpu_s": time.process_time() - cpu_all}
    write_report(str(Path(__file__).resolve().parent / "results"), args.name, report,
                 lambda path: plot_peers(report, path))


GOAL = {"median": 0.1, "p90": 0.25}


def merge_parts(names, name: str) -> None:
    """One report from ``--peers`` runs made per problem (``--problems vp`` and ``--problems ddpm`` in two processes,
    each comparison still in one process): their summaries and units side by side, costs summed."""
    out_dir = Path(__file__).resolve().parent / "results"
    parts = [json.loads((out_dir / f"{n}.json").read_text()) for n in names]
    report = {**parts[0], "problems": [p for r in parts for p in r["problems"]],
              "summary": {k: v for r in parts for k, v in r["summary"].items()},
              "units": [u for r in parts for u in r["units"]],
              "seconds": [r["seconds"] for r in parts], "cpu_s": sum(r["cpu_s"] for r in parts),
              "parts": {n: {"problems": r["problems"], "seconds": r["seconds"], "cpu_s": r["cpu_s"]}
                        for n, r in zip(names, parts)}}
    write_report(str(out_dir), name, report, lambda path: plot_peers(report, path))


def plot_peers(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(p, d) for p in report["problems"] for d in report["dims"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (p, d) in zip(axes[0], keys):
        for s, colour in (("median", "C3"), ("p90", "C0")):
            cells = [report["summary"][f"{p}_{d}d_nfe{b}"][s] for b in report["nfe"]]
            ax.plot(report["nfe"], [c["median"] for c in cells], "-o", color=colour, label=f"{s} ratio")
            ax.fill_between(report["nfe"], [c["min"] for c in cells], [c["max"] for c in cells], color=colour,
                            alpha=0.2)
            ax.axhline(GOAL[s], color=colour, ls=":", lw=1)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("NFE budget")
        ax.set_title(f"{p} {d}-D: learned / best {'k-diffusion' if p == 'vp' else 'diffusers'}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("sdekit learned solver / best peer setting; line: median over seeds, band: min..max, dotted: goal",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peers", action="store_true", help="learned vs k-diffusion / diffusers (PEER_DOC)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--nfe", type=int, nargs="+", default=None)
    p.add_argument("--problems", nargs="+", default=["vp", "ddpm"], choices=("vp", "ddpm"))
    p.add_argument("--n", type=int, default=500, help="--peers: evaluation rows per mixture")
    p.add_argument("--ref-steps", type=int, default=2000, help="--peers: rk4 steps of the evaluation reference")
    p.add_argument("--init", nargs="+", default=[SOLVER], help="--peers: init solver(s) of learn_solver")
    p.add_argument("--n-learn", type=int, default=256)
    p.add_argument("--learn-steps", type=int, default=300)
    p.add_argument("--learn-ref-steps", type=int, default=500)
    p.add_argument("--tries", type=int, default=1, help="--peers: learn_solver's tries")
    p.add_argument("--free-start", type=int, default=1, help="--peers: learn the first call's time too (1) or not (0)")
    p.add_argument("--name", default="learned_solver_vs_peers")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge --peers reports into --name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.merge:
        merge_parts(args.merge, args.name)
        return
    if args.peers:
        args.seeds = args.seeds or [9201, 9202, 9203]
        args.nfe = args.nfe or [3, 4, 5, 6, 8, 10]
        peers_main(args)
        return
    args.seeds = args.seeds or [401, 402, 403]
    args.nfe = args.nfe or [4, 5, 6]
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
