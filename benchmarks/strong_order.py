"""Strong (pathwise) order of the reverse-SDE samplers, sdekit beside torchsde, on exact mixture scores.

Problem. The reverse-time SDE of the VP SDE (beta 0.1..20, T = 1, down to t_end = 1e-3) for random Gaussian
mixtures (``accuracy_vs_nfe.random_mixture``, seeds 9501.. never used in development) in 2-D, whose score is exact,
and one isotropic Gaussian (linear score). Rows start from exact draws of p_T, float64.

sdekit. Each sampler whose noise is the rows' Brownian path (``sample(noise="path")``) solves the same rows with
the same seed at N = 16 .. 256 steps on the log-SNR grid and at ``--ref-steps`` (4096): since a finer grid refines
the same path, the fine solve is the pathwise limit. The error at N is the median over rows of |x_N - x_ref| / sqrt(D),
and the strong order the least-squares slope of -log(error) against log N over N >= 32. The fine solves of all
samplers are also compared with one another: they approximate one strong solution of one SDE, so their distance
says whether every sampler converges to the same thing (eta = 1 everywhere).

torchsde (the peer). The same reverse SDE in tau = T - t, dx = [-f x + g^2 score] dtau + g dW(tau), solved by
``torchsde.sdeint`` with its ``euler`` (Euler-Maruyama) and ``srk`` (the additive-noise stochastic Runge-Kutta of
Roessler 2010) methods on uniform steps, on a ``BrownianInterval`` with space-time Levy area, each against its own
solve at the reference step count on the same interval.

Theory for additive noise (a linear SDE's noise is): Euler-Maruyama strong order 1 (Kloeden & Platen 1992,
sec. 10.4); the exponential integrators here, 1 (their noise term is the exact increment to first order); SRK 1.5.

    /work/benchvenv/bin/python benchmarks/strong_order.py [--seeds 9501,9502,9503] [--rows 256]

Writes benchmarks/results/strong_order.{json,png}.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

import sdekit
from sdekit.metrics import per_row_error

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy_vs_nfe import random_mixture  # noqa: E402
from report import write_report  # noqa: E402

PATH_SAMPLERS = {"euler_maruyama": 1.0, "euler_ancestral": 1.0, "dpmpp_2s_ancestral": 1.0, "dpmpp_sde": 1.0,
                 "dpmpp_2m_sde": 1.0, "dpmpp_3m_sde": 1.0, "sa_solver": 1.0}  # sampler -> theoretical strong order
TORCHSDE = {"euler": 1.0, "srk": 1.5}
STEPS = (16, 32, 64, 128, 256)
PROBLEMS = {  # --problems name -> (label, mixture from the seed)
    "mixture": ("mixture 2-D", lambda seed: random_mixture(2, seed)),
    "gaussian": ("Gaussian 2-D", lambda seed: sdekit.GaussianMixture(torch.ones(1), torch.zeros(1, 2, dtype=torch.float64),
                                                                      0.5)),
}


def slope(steps, errs) -> float:
    """Least-squares slope of -log(err) against log(steps) over steps >= 32."""
    pts = [(math.log(n), -math.log(e)) for n, e in zip(steps, errs) if n >= 32 and e > 0]
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def median_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median over rows of |a - b| / sqrt(D) (``sdekit.metrics.per_row_error``): the RMS would be ruled by the few rows
    that start near a boundary between modes and end in another mode at some step counts (a finite-step effect the
    order says nothing about)."""
    return float(per_row_error(a, b).median())


def sdekit_orders(gm, sde, x_T, seed: int, ref_steps: int) -> tuple[dict, dict]:
    model = gm.model(sde)
    out, fine = {}, {}
    for name, theory in PATH_SAMPLERS.items():
        t0 = time.process_time()
        ref = sdekit.sample(model, x_T, name, steps=ref_steps, generator=seed).x
        errs = [median_error(sdekit.sample(model, x_T, name, steps=n, generator=seed).x, ref) for n in STEPS]
        fine[name] = ref
        out[name] = {"errors": errs, "order": slope(STEPS, errs), "theory": theory, "cpu_s": time.process_time() - t0}
    names = list(fine)
    spread = max(median_error(fine[a], fine[b]) for a in names for b in names)
    return out, {"max_distance_between_fine_solves": spread, "ref_steps": ref_steps}


def torchsde_orders(gm, sde, x_T, seed: int, ref_steps: int) -> dict:
    import torchsde

    T, eps = float(sde.T), float(sde.eps)

    class Reverse(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, tau, x):
            t = T - float(tau)  # dx/dtau = -(f x - g^2 score), the reverse SDE's drift with the sign of tau
            return -sde.reverse_drift(x, t, gm.score(x, t, sde), eta=1.0)

        def g(self, tau, x):  # additive noise: g(t) I, shape (batch, D, D)
            t = torch.tensor(T - float(tau), dtype=torch.float64)
            eye = torch.eye(x.shape[1], dtype=x.dtype)
            return (float(sde.diffusion(t)) * eye).expand(x.shape[0], -1, -1)

    out = {}
    span = torch.tensor([0.0, T - eps], dtype=torch.float64)
    for method, theory in TORCHSDE.items():
        t0 = time.process_time()
        bm = torchsde.BrownianInterval(0.0, T - eps, size=x_T.shape, dtype=torch.float64, entropy=seed,
                                       levy_area_approximation="space-time")
        def solve(n: int, method=method, bm=bm) -> torch.Tensor:
            return torchsde.sdeint(Reverse(), x_T, span, method=method, dt=(T - eps) / n, bm=bm)[-1]

        ref = solve(ref_steps)
        errs = [median_error(solve(n), ref) for n in STEPS]
        out[method] = {"errors": errs, "order": slope(STEPS, errs), "theory": theory, "cpu_s": time.process_time() - t0}
    return out


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({u["problem"] for u in report["units"]})
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        us = [u for u in report["units"] if u["problem"] == problem]
        for lib, key, style in (("sdekit", "sdekit", "o-"), ("torchsde", "torchsde", "s--")):
            for name in us[0].get(key, {}):
                med = [statistics.median(u[key][name]["errors"][i] for u in us) for i in range(len(STEPS))]
                ax.plot(STEPS, med, style, ms=3, label=f"{lib} {name}")
        ax.plot(STEPS, [0.5 * 16 / n for n in STEPS], "k:", lw=0.8, label="order 1")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steps")
        ax.set_ylabel("median pathwise error vs the same path's fine solve")
        ax.set_title(f"{problem} ({len(us)} seeds), median over seeds")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="9501,9502,9503")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--ref-steps", type=int, default=4096)
    p.add_argument("--problems", default="mixture,gaussian", help="comma-separated: mixture (a random 2-D mixture), "
                   "gaussian (one isotropic Gaussian)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    unknown = sorted(set(args.problems.split(",")) - set(PROBLEMS))
    if unknown:
        p.error(f"unknown problem(s) {unknown}; accepted: {', '.join(PROBLEMS)}")
    torch.set_num_threads(1)
    sde = sdekit.VPSDE()
    units = []
    try:
        import torchsde  # noqa: F401

        have_torchsde = True
    except ImportError:
        have_torchsde = False
    for seed in [int(s) for s in args.seeds.split(",")]:
        for key in args.problems.split(","):
            problem, make = PROBLEMS[key]
            gm = make(seed)
            x_T = gm.sample_t(args.rows, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            unit = {"problem": problem, "seed": seed}
            unit["sdekit"], unit["fine"] = sdekit_orders(gm, sde, x_T, seed, args.ref_steps)
            if have_torchsde:
                unit["torchsde"] = torchsde_orders(gm, sde, x_T, seed, args.ref_steps)
            units.append(unit)
            print(f"{problem} seed {seed}: " + ", ".join(
                f"{k} {v['order']:.2f}" for lib in ("sdekit", "torchsde") for k, v in unit.get(lib, {}).items())
                + f"; fine solves within {unit['fine']['max_distance_between_fine_solves']:.2e}", flush=True)
    summary = {}
    for problem in sorted({u["problem"] for u in units}):
        us = [u for u in units if u["problem"] == problem]
        for lib in ("sdekit", "torchsde"):
            for name in us[0].get(lib, {}):
                orders = [u[lib][name]["order"] for u in us]
                theory = us[0][lib][name]["theory"]
                summary[f"{problem} {lib} {name}"] = {"median": statistics.median(orders), "min": min(orders),
                                                      "max": max(orders), "theory": theory,
                                                      "max_abs_gap": max(abs(o - theory) for o in orders)}
    print("strong order (median [min, max] over seeds; theory):")
    for k, v in summary.items():
        print(f"  {k:45s} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]  theory {v['theory']}")
    report = {"settings": {"rows": args.rows, "ref_steps": args.ref_steps, "steps": STEPS, "torch": torch.__version__,
                           "torchsde": have_torchsde}, "units": units, "summary": summary}
    write_report(args.out, "strong_order", report, lambda path: plot(report, path))


if __name__ == "__main__":
    main()
