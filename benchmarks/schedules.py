"""The free schedules against the named grids: ``kl_optimal`` (closed form, no model calls) and GITS (dynamic
programming over one teacher trajectory, ``sdekit.solvers.schedules.gits_schedule``), with and without its
selection step, beside the best of uniform/quadratic/logsnr/karras.

Problems: VP mixtures from ``accuracy_vs_nfe.random_mixture`` at seeds never used in development, 2-D and
16-D, 1000 exact draws of p_T per seed, an rk4 reference of 500 log-SNR steps. Per-row endpoint error
|x - x_ref| / sqrt(dim); each cell is the median over the rows. GITS's teacher draw (64 rows) is independent
of the measured rows.

    python benchmarks/schedules.py [--dims 2,16 --seeds 201,202,203 --nfe 4,5,6,8,10]

Writes benchmarks/results/schedules.{json,png}.

``--peers`` (PEER_DOC in ``schedules_peers.py``): kl_optimal, GITS and Align Your Steps beside the named grids,
``sdekit.tune``'s grid and every k-diffusion sampler and schedule, in one process (run with /work/bench-venv):

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/schedules.py --peers [--seeds 9301,9302]

writes benchmarks/results/schedules_vs_peers.{json,png}.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import sdekit
from sdekit.solvers import sample
from sdekit.solvers.schedules import gits_schedule

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy_vs_nfe import random_mixture  # noqa: E402
from report import write_report  # noqa: E402

NAMED = ("uniform", "quadratic", "logsnr", "karras")
SOLVERS = ("dpmpp_2m", "unipc_3")
ROWS = 1000  # exact draws of p_T per seed


def _median_error(x, ref) -> float:
    d = (x - ref).reshape(x.shape[0], -1)
    return float((d.norm(dim=1) / math.sqrt(d.shape[1])).median())


def measure(dim: int, seed: int, nfes) -> list[dict]:
    gm = random_mixture(dim, seed)
    sde = sdekit.VPSDE()
    model = gm.model(sde)
    x_T = gm.sample_t(ROWS, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = sample(model, x_T, "rk4", 500, grid="logsnr").x
    rows = []
    for solver in SOLVERS:
        for nfe in nfes:
            err = {g: _median_error(sample(model, x_T, solver, nfe, grid=g).x, ref) for g in (*NAMED, "kl_optimal")}
            t0 = time.time()
            chosen = gits_schedule(model, solver, nfe, shape=(dim,), n=64, generator=5_000_000 + seed)
            search = gits_schedule(model, solver, nfe, shape=(dim,), n=64, generator=5_000_000 + seed, candidates=())
            best = min(NAMED, key=err.__getitem__)
            rows.append(dict(dim=dim, seed=seed, solver=solver, nfe=nfe, best_named=best, best_named_err=err[best],
                             kl_optimal=err["kl_optimal"], gits=_median_error(sample(model, x_T, solver, ts=chosen.ts).x, ref),
                             gits_dp_only=_median_error(sample(model, x_T, solver, ts=search.ts).x, ref),
                             gits_chosen=chosen.info["chosen"], gits_nfe=chosen.nfe, secs=round(time.time() - t0, 1)))
            print(rows[-1], flush=True)
    return rows


def plot(report: dict, path: str) -> None:
    """Each schedule's median error over the best named grid's, per NFE, one panel per (dim, solver)."""
    rows = report["rows"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims_ = sorted({r["dim"] for r in rows})
    fig, axes = plt.subplots(len(dims_), len(SOLVERS), figsize=(4 * len(SOLVERS), 3 * len(dims_)), squeeze=False)
    for i, d in enumerate(dims_):
        for j, solver in enumerate(SOLVERS):
            ax = axes[i][j]
            for key, colour in (("kl_optimal", "tab:blue"), ("gits", "tab:green"), ("gits_dp_only", "tab:gray")):
                pts = [(r["nfe"], r[key] / r["best_named_err"]) for r in rows if r["dim"] == d and r["solver"] == solver]
                ax.scatter(*zip(*pts), s=12, color=colour, label=key)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{d}-D, {solver}", fontsize=9)
            ax.set_xlabel("NFE")
            ax.set_ylabel("median error / best named grid's")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,16")
    ap.add_argument("--seeds", default="201,202,203")
    ap.add_argument("--nfe", default="4,5,6,8,10")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--peers", action="store_true", help="beside tune and k-diffusion (its options: schedules_peers.py)")
    if "--peers" in (sys.argv[1:] if argv is None else argv):
        import schedules_peers

        return schedules_peers.main(argv)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    nfes = [int(n) for n in args.nfe.split(",")]
    rows = [r for d in args.dims.split(",") for s in args.seeds.split(",") for r in measure(int(d), int(s), nfes)]
    report = {"rows": rows, "named": list(NAMED), "solvers": list(SOLVERS), "nfe": nfes, "rows_per_seed": ROWS}

    write_report(args.out, "schedules", report, lambda path: plot(report, path))
    return report


if __name__ == "__main__":
    main()
