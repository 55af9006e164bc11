"""The low-NFE frontier (issue 24): learned solvers and gradient-tuned grids against the peers' best settings on
rectified-flow mixtures (diffusers FlowMatch) and on trained digits U-Nets (k-diffusion; diffusers FlowMatch for the
flow-matching checkpoint).

Part ``flow`` (``flow_matching.py``'s problem and peer runners, imported, not copied): ``GaussianMixture.default(dim,
seed)`` under ``RectifiedFlow``, its exact velocity as the network, n fresh rows x_T ~ N(0, I) (seed 50000 + seed),
reference dopri5 rtol = atol = 1e-10 to t = 0. diffusers: FlowMatchEuler/Heun at every shift, sigma family and
dynamic-shift option (``flow_matching.diffusers_settings``), best setting with counted NFE <= b per statistic (an
oracle choice). sdekit, per NFE b, each ending at t = 0 as diffusers does:
- learned: ``learn_solver(model, b, shape, generator, denoise=True)`` (init its default, dpmpp_2m on the best named
  start grid of its calibration draw; n = 256 prior draws, 300 Adam steps, validation draw kept out), the last of
  its b calls the data-prediction jump to t = 0;
- tuned: ``tune(model, s, b, method="gradient", t_end=0)`` for each s in TUNE_SOLVERS (60 Adam updates, n = 256),
  best per statistic;
- named: the best untuned sdekit setting of ``flow_matching.sdekit_runs`` (8 solvers x named and shifted grids x
  ends at 0 or eps; an oracle choice per statistic).
Learning and tuning use their own prior draws (generator 5000000 + seed), never the evaluation rows.

Part ``digits``: checkpoints trained by ``sdekit train --data digits --steps 300`` (VP, eps prediction) and with
``--path rectified_flow`` (velocity). 64 prior draws (seed 4242), float64 network, reference dopri5 rtol = atol =
1e-7 (to sde.eps on VP, as k-diffusion's samplers end there; to t = 0 on the flow path, as diffusers does). Peers:
VP, k-diffusion's samplers x schedules through ``accuracy_vs_nfe.run_digits``'s wrapper (imported); flow, diffusers
FlowMatch as above with the U-Net's velocity. The same sdekit variants, with learning and tuning on
``--digits-n-learn`` prior draws and rk4 references of ``--digits-ref-steps`` steps.

Per cell: per-row error ||x - x_ref|| / sqrt(dim), median and p90 over rows; ratios sdekit variant / best peer per
seed; learning / tuning cost in forward network calls (each a batch of the learning rows), back-propagated calls and
CPU seconds of this process (single thread).

    PYTHONPATH=. OMP_NUM_THREADS=1 /work/bench-venv/bin/python benchmarks/learned_frontier.py \
        [--parts flow digits] [--seeds 9401 9402] [--digits-vp /tmp/e4/digits_vp] [--digits-fm /tmp/e4/digits_fm]

writes benchmarks/results/learned_frontier.json and .png.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import sdekit  # noqa: E402
from sdekit.solvers.grids import make_grid  # noqa: E402
from sdekit.solvers.tune import tune  # noqa: E402

import flow_matching as fm  # noqa: E402
import learned_solver as lsb  # noqa: E402
from report import write_report  # noqa: E402

NFES = (3, 4, 5, 6, 8, 10)
DIGITS_NFES = (4, 5, 6, 8, 10)
TUNE_SOLVERS = ("unipc_3", "dpmpp_2m")  # mixtures; on the U-Nets --digits-tune-solvers
STATS = ("median", "p90")
VARIANTS = ("learned", "tuned", "named")
GOAL = {"median": 0.1, "p90": 0.25}


def stats(x, ref) -> dict:
    return fm.stats(x.reshape(ref.shape), ref)


def cpu_now() -> float:
    return time.process_time()


def _end(opts):
    """The grid's end: t = 0 (the last call the data-prediction jump) with denoise, else sde.eps."""
    return 0.0 if opts["denoise"] else None


def learned_variant(model, x_T, ref, shape, b, seed, opts) -> dict:
    c0 = cpu_now()
    ls = sdekit.learn_solver(model, b, shape=shape, generator=seed, denoise=opts["denoise"], n=opts["n"],
                             ref_steps=opts["ref_steps"], steps=opts["steps"])
    cpu = cpu_now() - c0
    with torch.no_grad():
        sol = sdekit.sample(model, x_T, ls)
        start = sdekit.sample(model, x_T, ls.init, ts=make_grid(model.sde, b, ls.start_grid, t_end=_end(opts)))
    return {**stats(sol.x, ref), "start": stats(start.x, ref), "nfe": int(sol.nfe), "improved": ls.improved,
            "init": ls.init,
            "start_grid": ls.start_grid, "parameters": ls.num_parameters,
            "validation": ls.validation, "cost": {**ls.cost, "cpu_s": cpu}}


def tuned_variant(model, x_T, ref, shape, b, seed, opts) -> dict:
    """Each TUNE_SOLVERS grid tuned by gradient; the best per statistic, every run kept under "runs"."""
    runs = []
    for solver in opts["tune_solvers"]:
        c0 = cpu_now()
        tg = tune(model, solver, b, shape=shape, generator=seed, method="gradient", cache=False, n=opts["n"],
                  ref_steps=opts["ref_steps"], **({"t_end": 0.0} if opts["denoise"] else {}))
        cpu = cpu_now() - c0
        with torch.no_grad():
            sol = sdekit.sample(model, x_T, solver, ts=tg.ts)
            start = sdekit.sample(model, x_T, solver, ts=make_grid(model.sde, b, tg.start_grid, t_end=_end(opts)))
        runs.append({"solver": solver, **stats(sol.x, ref), "start": stats(start.x, ref), "nfe": int(sol.nfe),
                     "improved": tg.improved,
                     "start_grid": tg.start_grid, "cost": {"nfe": tg.nfe, "backward": tg.backward, "ref_nfe": tg.ref_nfe,
                                                           "cpu_s": cpu}})
    out = {s: min(r[s] for r in runs) for s in STATS}
    out["cost"] = {"nfe": sum(r["cost"]["nfe"] for r in runs), "cpu_s": sum(r["cost"]["cpu_s"] for r in runs)}
    return {**out, "runs": runs}


def _best(rows, b, stat, who_key, who):
    cand = [r for r in rows if r[who_key] == who and r["nfe"] is not None and r["nfe"] <= b
            and math.isfinite(r[stat])]
    return min(cand, key=lambda r: r[stat]) if cand else None


def _label(r) -> str:
    return r.get("setting") or f"{r['solver']} {r['grid']} {r['steps']} steps"


def cell(model, x_T, ref, shape, b, seed, rows, keys, opts, log, tag) -> dict:
    """All variants at NFE b; keys = (who field, sdekit untuned label, peer label) of ``rows``."""
    who_key, mine, peer = keys
    out: dict = {"learned": learned_variant(model, x_T, ref, shape, b, seed, opts),
                 "tuned": tuned_variant(model, x_T, ref, shape, b, seed, opts)}
    named, best_peer = {}, {}
    for s in STATS:
        r, p = _best(rows, b, s, who_key, mine), _best(rows, b, s, who_key, peer)
        named[s], named[f"{s}_setting"] = r[s], _label(r)
        best_peer[s], best_peer[f"{s}_setting"] = p[s], _label(p)
    out["named"], out["peer"] = named, best_peer
    out["ratio"] = {v: {s: out[v][s] / best_peer[s] for s in STATS} for v in VARIANTS}
    lc, tc = out["learned"]["cost"], out["tuned"]["cost"]
    log(f"  [{tag}] NFE {b}: peer {best_peer['median']:.2e}/{best_peer['p90']:.2e} ({best_peer['median_setting']}) | "
        + " | ".join(f"{v} {out['ratio'][v]['median']:.3f}/{out['ratio'][v]['p90']:.3f}" for v in VARIANTS)
        + f" | learn {lc['cpu_s']:.0f} cpu-s {lc['nfe']} calls{'' if out['learned']['improved'] else ' (init kept)'}"
        f", tune {tc['cpu_s']:.0f} cpu-s {tc['nfe']} calls")
    return out


# -- part flow: rectified-flow mixtures ----------------------------------------------------------------------
def flow_unit(dim, seed, args, log) -> dict:
    t0 = time.perf_counter()
    sde = sdekit.RectifiedFlow()
    gm = sdekit.GaussianMixture.default(dim=dim, seed=seed)
    model = gm.model(sde)
    x_T = torch.randn(args.n, dim, generator=torch.Generator().manual_seed(50_000 + seed), dtype=torch.float64)
    ref = fm.reference(gm, sde, x_T)
    rows = fm.diffusers_runs(gm, sde, x_T, ref) + fm.sdekit_runs(gm, sde, x_T, ref)
    log(f"[flow {dim}-D seed {seed}] {len(rows)} peer / untuned rows in {time.perf_counter() - t0:.0f} s")
    opts = {"denoise": True, "n": 256, "ref_steps": 500, "steps": 300, "tune_solvers": TUNE_SOLVERS}
    cells = {str(b): cell(model, x_T, ref, (dim,), b, 5_000_000 + seed, rows, ("who", "sdekit", "diffusers"), opts,
                          log, f"flow {dim}-D seed {seed}") for b in args.nfe}
    return {"part": "flow", "dim": dim, "seed": seed, "n": args.n, "rows": len(rows), "learning": opts,
            "cells": cells, "seconds": time.perf_counter() - t0}


# -- part digits: trained U-Nets -----------------------------------------------------------------------------
class NetVelocity:
    """A trained model in the shape ``flow_matching``'s runners take a mixture in: ``velocity(x, t, sde)`` and
    ``model(sde)``."""

    def __init__(self, model):
        self._model = model

    def velocity(self, x, t, sde):
        with torch.no_grad():
            return self._model.predict(x, t, "velocity")

    def model(self, sde):
        return self._model


def load_digits(path: str, dtype=torch.float64):
    from sdekit.checkpoint import load_model

    model, _ = load_model(path)
    model.net.to(dtype).eval()
    return model


def digits_reference(model, x_T, kind, cache_dir):
    """dopri5 rtol = atol = 1e-7 in float64 (to t = 0 on the flow path), kept under ``cache_dir`` if given."""
    path = Path(cache_dir) / f"reference_{kind}.pt" if cache_dir else None
    if path is not None and path.exists():
        held = torch.load(path)
        if torch.equal(held["x_T"], x_T):
            return SimpleNamespace(x=held["x"], nfe=held["nfe"])
    with torch.no_grad():
        sol = sdekit.sample(model, x_T, "dopri5", rtol=1e-7, atol=1e-7, **({"t_end": 0.0} if kind == "fm" else {}))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x_T": x_T, "x": sol.x, "nfe": int(sol.nfe)}, path)
    return SimpleNamespace(x=sol.x, nfe=int(sol.nfe))


def digits_rows_vp(path, x_T, ref_sol, nfes, log):
    """k-diffusion's samplers x schedules and sdekit's untuned grids through ``accuracy_vs_nfe.run_digits``."""
    import accuracy_vs_nfe as avn

    kds = avn.load_k_diffusion_sampling(required=True)
    real = sdekit.solvers.sample

    def reuse(m, x, solver, *a, **kw):  # run_digits draws the same x_T (seed 4242): its dopri5 1e-7 is ref_sol
        same = solver == "dopri5" and kw.get("rtol") == 1e-7 and x.shape == x_T.shape and torch.equal(x, x_T)
        return ref_sol if same else real(m, x, solver, *a, **kw)

    sdekit.solvers.sample = reuse
    try:
        res = avn.run_digits(SimpleNamespace(digits=path, digits_n=x_T.shape[0], budgets=list(nfes), tune="none",
                                             tune_evals=None), kds, log)
    finally:
        sdekit.solvers.sample = real
    return res["rows"], {"distance_to_1e-5_solve": res["reference"]["distance_to_1e-5_solve"]}


def digits_unit(kind, path, args, log, saved) -> dict:
    """References and peers in float64; learning, tuning and their solves on the network in --digits-dtype (the
    rounding floor that adds: ``float_floor``, dpmpp_2m at each NFE in that dtype against float64)."""
    t0 = time.perf_counter()
    model = load_digits(path)
    sde = model.sde
    x_T = sde.prior_sample((args.digits_n, 1, 8, 8), generator=torch.Generator().manual_seed(4242)).double()
    ref_sol = digits_reference(model, x_T, kind, args.digits_ref_cache)
    ref = ref_sol.x
    log(f"[digits {kind}] reference: {ref_sol.nfe} calls, {time.perf_counter() - t0:.0f} s")
    if kind == "vp":
        rows, extra = digits_rows_vp(path, x_T, ref_sol, args.digits_nfe, log)
        keys = ("library", "sdekit", "k-diffusion")
    else:
        net = NetVelocity(model)
        rows = fm.diffusers_runs(net, sde, x_T, ref) + fm.sdekit_runs(net, sde, x_T, ref)
        keys, extra = ("who", "sdekit", "diffusers"), {}
    log(f"[digits {kind}] {len(rows)} peer / untuned rows in {time.perf_counter() - t0:.0f} s")
    dtype = getattr(torch, args.digits_dtype)
    lmodel, lx_T = load_digits(path, dtype), x_T.to(dtype)
    opts = {"denoise": kind == "fm", "n": args.digits_n_learn, "ref_steps": args.digits_ref_steps,
            "steps": args.digits_learn_steps, "tune_solvers": tuple(args.digits_tune_solvers), "dtype": str(dtype)}
    unit = {"part": f"digits_{kind}", "dim": 64, "seed": 4242, "n": args.digits_n, "checkpoint": path,
            "reference": {"method": "dopri5 rtol = atol = 1e-7, float64", "nfe": ref_sol.nfe,
                          "t_end": 0.0 if kind == "fm" else sde.eps, **extra},
            "rows": len(rows), "learning": opts, "cells": {}}
    for b in args.digits_nfe:
        with torch.no_grad():
            end = make_grid(sde, b, "logsnr", t_end=_end(opts))
            floor = stats(sdekit.sample(lmodel, lx_T, "dpmpp_2m", ts=end).x, sdekit.sample(model, x_T, "dpmpp_2m",
                                                                                             ts=end).x)
        c = cell(lmodel, lx_T, ref, (1, 8, 8), b, 7_004_242, rows, keys, opts, log, f"digits {kind}")
        unit["cells"][str(b)] = {**c, "float_floor": floor}
        unit["seconds"] = time.perf_counter() - t0
        saved(unit)  # after every cell: a run that is stopped keeps what it did
    return unit


# -- summary, plot, main -------------------------------------------------------------------------------------
def _spread(values) -> dict:
    v = torch.tensor(values, dtype=torch.float64)
    return {"per_seed": values, "median": float(v.quantile(0.5)), "min": float(v.min()), "max": float(v.max())}


def summarise(units) -> dict:
    """{part_dim_nfeB: {variant: {stat: spread of ratios over seeds}, learn/tune cost per seed}}."""
    out: dict = {}
    for key in sorted({(u["part"], u["dim"]) for u in units}):
        us = [u for u in units if (u["part"], u["dim"]) == key]
        for b in us[0]["cells"]:
            cs = [u["cells"][b] for u in us]
            entry: dict = {v: {s: _spread([c["ratio"][v][s] for c in cs]) for s in STATS} for v in VARIANTS}
            for v in VARIANTS:
                for s in STATS:
                    entry[v][s]["goal_met_every_seed"] = entry[v][s]["max"] <= GOAL[s]
            entry["learn_cpu_s"] = [c["learned"]["cost"]["cpu_s"] for c in cs]
            entry["learn_nfe"] = [c["learned"]["cost"]["nfe"] for c in cs]
            entry["learn_improved"] = [c["learned"]["improved"] for c in cs]
            entry["tune_cpu_s"] = [c["tuned"]["cost"]["cpu_s"] for c in cs]
            entry["tune_nfe"] = [c["tuned"]["cost"]["nfe"] for c in cs]
            entry["peer_median_setting"] = [c["peer"]["median_setting"] for c in cs]
            # fresh-row error / its starting point's (the learned init; each tuned solver's start grid)
            entry["learned_vs_start"] = {s: [c["learned"][s] / c["learned"]["start"][s] for c in cs] for s in STATS}
            entry["tuned_vs_start"] = {s: [r[s] / r["start"][s] for c in cs for r in c["tuned"]["runs"]]
                                       for s in STATS}
            out[f"{key[0]}_{key[1]}d_nfe{b}"] = entry
    return out


def print_summary(summary, log) -> None:
    log("\n=== sdekit / best peer setting: median over seeds [min, max] of the median and p90 ratios; "
        "goal median <= 0.1, p90 <= 0.25 ===")
    for key, e in summary.items():
        parts = []
        for v in VARIANTS:
            m, p = e[v]["median"], e[v]["p90"]
            parts.append(f"{v} {m['median']:.3f} [{m['min']:.3f},{m['max']:.3f}] / {p['median']:.3f} "
                         f"[{p['min']:.3f},{p['max']:.3f}]")
        log(f"{key:<22} " + "  ".join(parts) + f"  learn {max(e['learn_cpu_s']):.0f} cpu-s, tune "
            f"{max(e['tune_cpu_s']):.0f} cpu-s (max over seeds)")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(u["part"], u["dim"]) for u in report["units"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (part, dim) in zip(axes[0], panels):
        runs = [u for u in report["units"] if (u["part"], u["dim"]) == (part, dim)]
        nfes = [int(b) for b in runs[0]["cells"]]
        lsb.plot_errors(ax, runs, nfes, (("learned", "C3"), ("tuned", "C1"), ("named", "C2"), ("peer", "k")))
        ax.set_xlabel("NFE")
        ax.set_ylabel("per-row error (geometric mean over seeds)")
        ax.set_title(f"{part} {dim}-D" if part == "flow" else part, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("sdekit learned / gradient-tuned / best untuned vs best peer; solid median, dashed p90",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(args, units, t0, cpu0, complete) -> dict:
    import diffusers

    summary = summarise(units)
    report = {"doc": __doc__, "commit": commit(), "complete": complete, "seeds": args.seeds, "nfe": list(args.nfe),
              "digits_nfe": list(args.digits_nfe), "n": args.n, "digits_n": args.digits_n,
              "tune_solvers": TUNE_SOLVERS, "goal": GOAL,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
              "summary": summary, "units": units, "seconds": time.perf_counter() - t0, "cpu_s": cpu_now() - cpu0}
    write_report(str(HERE / "results"), args.name, report, lambda path: plot(report, path))
    return summary


def merge(names, name: str) -> dict:
    """One report from runs of the parts in separate processes (each comparison still in one process)."""
    import json

    parts = [json.loads((HERE / "results" / f"{n}.json").read_text()) for n in names]
    report = {**parts[0], "units": [u for r in parts for u in r["units"]], "complete": all(r["complete"] for r in parts),
              "seconds": sum(r["seconds"] for r in parts), "cpu_s": sum(r["cpu_s"] for r in parts),
              "parts": {n: {k: r[k] for k in ("commit", "seconds", "cpu_s", "complete")} for n, r in zip(names, parts)}}
    report["summary"] = summarise(report["units"])
    report["digits_nfe"] = next((r["digits_nfe"] for r in parts if any(u["part"] != "flow" for u in r["units"])),
                                report["digits_nfe"])
    write_report(str(HERE / "results"), name, report, lambda path: plot(report, path))
    return report["summary"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["flow", "digits"], choices=("flow", "digits"))
    p.add_argument("--seeds", type=int, nargs="+", default=[9401, 9402], help="mixture seeds (unseen in development)")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--n", type=int, default=512, help="fresh evaluation rows per mixture")
    p.add_argument("--digits-vp", default="/tmp/e4/digits_vp", help="VP digits checkpoint ('' to skip)")
    p.add_argument("--digits-fm", default="/tmp/e4/digits_fm", help="flow-matching digits checkpoint ('' to skip)")
    p.add_argument("--digits-nfe", type=int, nargs="+", default=list(DIGITS_NFES))
    p.add_argument("--digits-n", type=int, default=64, help="evaluation prior draws on the digits U-Nets")
    p.add_argument("--digits-n-learn", type=int, default=32, help="learning / tuning prior draws on the U-Nets")
    p.add_argument("--digits-ref-steps", type=int, default=100, help="rk4 steps of learning's references (U-Nets)")
    p.add_argument("--digits-learn-steps", type=int, default=100, help="learn_solver's Adam updates (U-Nets)")
    p.add_argument("--digits-dtype", default="float32", choices=("float32", "float64"),
                   help="the U-Net's dtype for learning, tuning and their solves (references, peers: float64)")
    p.add_argument("--digits-ref-cache", default="/tmp/e4/refs", help="folder keeping the dopri5 references ('')")
    p.add_argument("--digits-tune-solvers", nargs="+", default=["dpmpp_2m"], help="gradient-tuned solvers (U-Nets)")
    p.add_argument("--name", default="learned_frontier")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge these reports into --name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.merge:
        print_summary(merge(args.merge, args.name), print)
        return
    fm.BUDGETS = tuple(args.nfe)  # flow_matching's runners read their budgets from this module constant
    t0, cpu0 = time.perf_counter(), cpu_now()

    def log(msg):
        print(msg, flush=True)

    units: list = []
    if "flow" in args.parts:
        for dim in args.dims:
            for seed in args.seeds:
                units.append(flow_unit(dim, seed, args, log))
                save(args, units, t0, cpu0, False)
    if "digits" in args.parts:
        fm.BUDGETS = tuple(args.digits_nfe)
        for kind, path in (("vp", args.digits_vp), ("fm", args.digits_fm)):
            if path:
                units.append(digits_unit(kind, path, args, log,
                                         lambda unit: save(args, units + [unit], t0, cpu0, False)))
    print_summary(save(args, units, t0, cpu0, True), log)


if __name__ == "__main__":
    main()
