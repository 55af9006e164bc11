"""The free schedules beside the tuned grid and k-diffusion: ``benchmarks/schedules.py --peers``.

PEER_DOC below says what is measured. One process per run; each (dim, seed) unit is kept under ``--parts`` so a
run can be split across processes (``--dims 2 --seeds 9301``) and merged by a last run with the same settings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import sdekit
from sdekit.solvers import sample
from sdekit.solvers.ays import ays_schedule
from sdekit.solvers.grids import make_grid
from sdekit.solvers.schedules import gits_schedule
from sdekit.solvers.tune import tune

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import accuracy_vs_nfe as avn  # noqa: E402 (its mixtures, reference and k-diffusion runner, not copied)
from report import cached_json, write_report  # noqa: E402

PEER_DOC = """kl_optimal (closed form, no model calls), GITS (dynamic programming over one teacher trajectory) and Align
Your Steps (the KL-bound search, ODE coupling) beside the four named grids, sdekit.tune's grid (its defaults, cache off)
and every k-diffusion deterministic sampler and schedule (accuracy_vs_nfe's runner), on accuracy_vs_nfe's random VP
mixtures at seeds the code was not developed on. Evaluation rows: n exact draws of p_T (the mixture's seed); reference
rk4 on the log-SNR grid (ref_steps). The fitted grids (gits, ays, tuned) are built from prior draws of seed
5,000,000 + mixture seed, never the evaluation rows, per (solver, NFE), and carry their one-time cost (network calls,
each a batch of the builder's rows; wall seconds on one shared core). Per-row error |x - x_ref| / sqrt(dim); per cell
its median and p90 over rows. Ratios: each schedule over logsnr (sdekit's default named grid), over the best named grid
on the evaluation rows (an oracle choice per statistic) and over k-diffusion's best setting with NFE <= budget."""
NAMED = ("uniform", "quadratic", "logsnr", "karras")
SCHEDULES = ("kl_optimal", "gits", "ays", "ays_searched", "tuned")
STATS = ("median", "p90")


def fitted(model, solver: str, kind: str, nfe: int, dim: int, seed: int):
    """(ts, {"nfe", "seconds", ...}, the searched grid before selection or None) of one fitted grid."""
    t0 = time.perf_counter()
    if kind == "gits":
        out = gits_schedule(model, solver, nfe, shape=(dim,), generator=seed)
        return out.ts, {"nfe": out.nfe, "chosen": out.info["chosen"], "seconds": time.perf_counter() - t0}, None
    if kind == "ays":
        out = ays_schedule(model, nfe, shape=(dim,), solver=solver, generator=seed)
        return out.ts, {"nfe": out.nfe, "chosen": out.info["chosen"], "sweeps": out.info["sweeps"],
                        "klub_start": out.info["start_cost"], "klub": out.cost,
                        "seconds": time.perf_counter() - t0}, out.info["searched_ts"]
    tg = tune(model, solver, nfe, shape=(dim,), generator=seed, cache=False)
    return tg.ts, {"nfe": tg.nfe, "chosen": "tuned" if tg.improved else tg.start_grid, "method": tg.method,
                   "seconds": time.perf_counter() - t0}, None


def unit(dim: int, seed: int, args, kds) -> dict:
    t0 = time.perf_counter()
    gm = avn.random_mixture(dim, seed)
    sde = sdekit.VPSDE()
    model = gm.model(sde)
    x_T = gm.sample_t(args.n, sde.T, sde, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64).reshape(args.n, dim)
    ref = avn._reference_part(model, x_T, args.ref_steps, gm, sde, "vp")
    x_ref = torch.tensor(ref.pop("x_ref"), dtype=torch.float64)
    kd_rows = avn.run_kd(kds, gm, sde, x_T, x_ref, args.nfe, print) if kds is not None else []

    def err(solver, ts):
        return avn.summarize(avn.row_errors(sample(model, x_T, solver, ts=ts).x, x_ref))

    cells: dict = {}
    for solver in args.solvers:
        for b in args.nfe:
            c = {g: err(solver, make_grid(sde, b, g)) for g in (*NAMED, "kl_optimal")}
            c["best_named"] = {s: min(c[g][s] for g in NAMED) for s in STATS}
            for kind in ("gits", "ays", "tuned"):
                ts, cost, searched = fitted(model, solver, kind, b, dim, 5_000_000 + seed)
                c[kind] = {**err(solver, ts), "cost": cost}
                if searched is not None:  # the searched grid alone, before the selection step
                    c[f"{kind}_searched"] = err(solver, searched)
            peer = {s: avn.best(kd_rows, "k-diffusion", b, s) for s in STATS}
            c["k-diffusion"] = {s: avn._brief(peer[s], s) for s in STATS}
            cells[f"{solver}/{b}"] = c
            print(f"[{dim}-D seed {seed}] {solver} NFE {b}: " + ", ".join(
                f"{k} {c[k]['median']:.2e}/{c[k]['p90']:.2e}" for k in ("logsnr", "best_named", *SCHEDULES))
                + " kd " + "/".join(f"{c['k-diffusion'][s]['value']:.2e}" if c["k-diffusion"][s] else "-"
                                    for s in STATS)
                + "  cost " + ", ".join(f"{k} {c[k]['cost']['nfe']} calls {c[k]['cost']['seconds']:.1f}s"
                                        for k in ("gits", "ays", "tuned")), flush=True)
    return {"dim": dim, "seed": seed, "mixture": avn._mixture_desc(gm), "reference": ref, "cells": cells,
            "kd_rows": len(kd_rows), "seconds": time.perf_counter() - t0}


def ratios(units: list, args) -> dict:
    """Per (dim, solver, NFE) and statistic: each schedule's error over logsnr's, the best named grid's and
    k-diffusion's best, one value per seed; and, per dim and schedule, their median and 90th percentile over every
    cell, with the count of cells where the ratio is below 1."""
    per_cell: dict = {}
    for u in units:
        for c in u["cells"].values():
            for k in SCHEDULES:
                for s in STATS:
                    kd = c["k-diffusion"][s]
                    for base, value in (("logsnr", c["logsnr"][s]), ("best_named", c["best_named"][s]),
                                        ("k-diffusion", kd["value"] if kd else float("nan"))):
                        per_cell.setdefault(f"{u['dim']}d/{k}/{s}/vs_{base}", []).append(c[k][s] / value)
    out = {}
    for name, v in per_cell.items():
        t = torch.tensor(v, dtype=torch.float64)
        t = t[torch.isfinite(t)]
        out[name] = {"cells": len(v), "median": float(t.quantile(0.5)), "p90": float(t.quantile(0.9)),
                     "below_1": int((t < 1).sum())}
    return out


def plot(report: dict, path: str) -> None:
    """Per dim and solver: each schedule's median error over k-diffusion's best, geometric mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims, solvers = report["dims"], report["solvers"]
    fig, axes = plt.subplots(len(dims), len(solvers), figsize=(4.6 * len(solvers), 3.4 * len(dims)), squeeze=False)
    colours = {"logsnr": "C0", "best_named": "C2", "kl_optimal": "C4", "gits": "C5", "ays": "C3",
               "ays_searched": "C7", "tuned": "C1"}
    for i, d in enumerate(dims):
        for j, solver in enumerate(solvers):
            ax = axes[i][j]
            us = [u for u in report["units"] if u["dim"] == d]
            for k, colour in colours.items():
                for s, style in (("median", "-"), ("p90", "--")):
                    ys = []
                    for b in report["nfe"]:
                        r = [u["cells"][f"{solver}/{b}"] for u in us]
                        r = [c[k][s] / c["k-diffusion"][s]["value"] for c in r if c["k-diffusion"][s]]
                        ys.append(torch.tensor(r).log().mean().exp().item() if r else float("nan"))
                    ax.plot(report["nfe"], ys, style, color=colour, marker="o", ms=3,
                            label=k if s == "median" else None)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel("error / k-diffusion's best")
            ax.set_title(f"{d}-D VP mixtures, {solver} (solid median, dashed p90)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=PEER_DOC.splitlines()[0])
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--dims", default="2,16")
    ap.add_argument("--seeds", default="9301,9302")
    ap.add_argument("--nfe", default="4,5,6,8,10")
    ap.add_argument("--solvers", default="dpmpp_2m")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ref-steps", type=int, default=1000)
    ap.add_argument("--parts", default=None, help="a folder keeping each (dim, seed) unit")
    ap.add_argument("--name", default="schedules_vs_peers")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.nfe = [int(b) for b in args.nfe.split(",")]
    args.solvers = args.solvers.split(",")
    dims, seeds = [int(d) for d in args.dims.split(",")], [int(s) for s in args.seeds.split(",")]
    kds = avn.load_k_diffusion_sampling(required=False)
    t0, cpu0 = time.perf_counter(), time.process_time()
    units = []
    for d in dims:
        for s in seeds:
            part = None if args.parts is None else os.path.join(
                args.parts, f"{d}_{s}_{args.n}_{args.ref_steps}_{'_'.join(args.solvers)}_{'_'.join(map(str, args.nfe))}.json")
            units.append(cached_json(part, lambda d=d, s=s: unit(d, s, args, kds)))
    report = {"doc": PEER_DOC, "dims": dims, "seeds": seeds, "nfe": args.nfe, "solvers": args.solvers, "n": args.n,
              "ref_steps": args.ref_steps, "peer": "k-diffusion" if kds is not None else None,
              "versions": {"torch": torch.__version__}, "summary": ratios(units, args), "units": units,
              "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
    for key, v in report["summary"].items():
        print(f"{key:<40} median {v['median']:.3f} p90 {v['p90']:.3f} below 1 in {v['below_1']}/{v['cells']}")
    write_report(args.out, args.name, report, lambda path: plot(report, path))
    return report


if __name__ == "__main__":
    main()
