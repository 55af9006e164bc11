"""How many exact-trace evaluations does a 1e-3-nat likelihood need? The integrand, measured.

The likelihood benchmark's problem (``GaussianMixture.default(16)`` under the EDM process, 200 exact
samples of p_{sigma_min}). log p(x) = log p_T(z) + int div(F dt/dlambda) dlambda along the trajectory.

1. The exact trajectory (dopri5 at rtol = atol = 1e-10 in lambda) and the exact divergence h_r(lambda)
   on a 2001-point uniform lambda grid; its Simpson integral checked against the analytic log-density.
2. Quadrature rules applied to h (a cubic spline through the 2001 points): global Gauss-Legendre and
   Clenshaw-Curtis with n nodes, and sdekit's row-wise adaptive Boole rule (``sdekit.likelihood.quadrature``) at
   several tolerances. Output: mean |error| against the fine-grid integral and evaluations per row.
3. The augmented ODE solved one row at a time (so no row takes another's steps): NFE per row.
4. The per-row cost of one exact-trace evaluation (batch of 200), and the floor it implies: the fewest
   evaluations per row that reach a mean error of 1e-3 nats, times that cost.

    python benchmarks/likelihood_floor.py           # about a minute; writes results/likelihood_floor.{json,png}
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from scipy.integrate import simpson
from scipy.interpolate import CubicSpline

import sdekit
from sdekit.interop import EDMSDE
from sdekit.likelihood import AugmentedTerm, Drift, LogSNRMap
from sdekit.likelihood.quadrature import adaptive_boole, grid_size
from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def integrand_on_grid(model, x, t0, t1, points):
    """lambda grid (decreasing: t0 -> t1), trajectory on it, and h[j, r] = div F(x_j, t_j) dt/dlambda."""
    from torchdiffeq import odeint

    sde = model.sde
    lam_map = LogSNRMap(sde, t0, t1)
    grid = torch.linspace(*lam_map.log_snr_bounds, points, dtype=torch.float64)
    traj_rhs = AugmentedTerm(Drift(model), x.shape, None, None, "autograd", None, (t0, t1), time_map=lam_map)
    with torch.no_grad():
        traj = odeint(traj_rhs, x, grid, rtol=1e-10, atol=1e-10, method="dopri5")
    t_grid, dtdl = lam_map(grid)
    trace = AugmentedTerm(Drift(model), x.shape, "exact", None, "autograd", None, (t0, t1))
    h = torch.stack([trace.divergence_at(traj[j], t_grid[j])[1] * dtdl[j] for j in range(points)])
    return grid.numpy(), traj, h.numpy()


def clenshaw_curtis(n):
    """Nodes and weights of the (n + 1)-point Clenshaw-Curtis rule on [-1, 1]."""
    theta = np.pi * np.arange(n + 1) / n
    w = np.zeros(n + 1)
    for k in range(n + 1):
        s = sum((1.0 if 2 * j == n else 2.0) / (4 * j * j - 1) * np.cos(2 * j * theta[k]) for j in range(1, n // 2 + 1))
        w[k] = (1.0 if k in (0, n) else 2.0) / n * (1 - s)
    return np.cos(theta), w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--points", type=int, default=2001)
    p.add_argument("--row-solves", type=int, default=50, help="rows solved one at a time for part 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    sde = EDMSDE(sigma_min=0.002, sigma_max=80.0)
    gm = sdekit.GaussianMixture.default(dim=args.dim)
    model = gm.model(sde)
    x = gm.sample_t(args.n, sde.eps, sde, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    truth = gm.log_prob(x, sde.eps, sde).numpy()

    # 1. the integrand
    start = time.perf_counter()
    lam, traj, h = integrand_on_grid(model, x, sde.eps, sde.T, args.points)
    ref = simpson(h, x=lam, axis=0)
    fine = gm.log_prob(traj[-1], sde.T, sde).numpy() + ref
    print(f"integrand on {args.points} points in {time.perf_counter() - start:.1f} s; fine-grid estimate vs analytic: "
          f"mean |error| {np.abs(fine - truth).mean():.2e}, max {np.abs(fine - truth).max():.2e}")
    slope = np.abs(np.diff(h, axis=0) / np.diff(lam)[:, None]).max(0)
    print(f"max |dh/dlambda| per row: median {np.median(slope):.1f}, 90% {np.quantile(slope, 0.9):.1f}, "
          f"max {slope.max():.1f}")

    # 2. quadrature rules on the spline through h
    spline = CubicSpline(lam[::-1], h[::-1], axis=0)  # increasing abscissae
    a, b = lam[0], lam[-1]
    rules = {"gauss_legendre": [], "clenshaw_curtis": [], "adaptive_boole": []}
    for n in (8, 16, 24, 32, 48, 64, 96, 128):
        xg, wg = np.polynomial.legendre.leggauss(n)
        est = (spline((a + b) / 2 + (b - a) / 2 * xg) * ((b - a) / 2 * wg)[:, None]).sum(0)
        err = np.abs(est - ref)
        rules["gauss_legendre"].append({"evals_per_row": n, "mae": err.mean(), "median_row_err": np.median(err)})
        xc, wc = clenshaw_curtis(n - 1)
        est = (spline((a + b) / 2 + (b - a) / 2 * xc) * ((b - a) / 2 * wc)[:, None]).sum(0)
        err = np.abs(est - ref)
        rules["clenshaw_curtis"].append({"evals_per_row": n, "mae": err.mean(), "median_row_err": np.median(err)})
    panels, depth = 8, 4
    M = grid_size(panels, depth)
    step = (b - a) / M
    for tol in (1.0, 0.3, 0.1, 0.03, 0.01, 1e-3):
        q = adaptive_boole(lambda node, row: torch.from_numpy(spline(a + node.numpy() * step)[np.arange(len(row)),
                                                                                                row.numpy()]),
                           args.n, step, panels, depth, tol)
        err = np.abs(q.integral.numpy() - ref)
        rules["adaptive_boole"].append({"tol": tol, "evals_per_row": float(q.evals.double().mean()), "mae": err.mean(),
                                        "median_row_err": float(np.median(err))})
    for name, rows in rules.items():
        print(f"{name}: " + "; ".join(f"{r['evals_per_row']:.1f} evals -> {r['mae']:.1e}" for r in rows))

    # 3. the augmented solve, one row at a time
    prior = lambda z: gm.log_prob(z, sde.T, sde)  # noqa: E731
    per_row = {}
    for tol in (1e-4, 1e-5):
        nfe, errs = [], []
        for i in range(args.row_solves):
            res = sdekit.log_likelihood(model, x[i:i + 1], prior_log_prob=prior, rtol=tol, atol=tol)
            nfe.append(res.nfe)
            errs.append(abs(float(res.log_prob[0]) - truth[i]))
        per_row[str(tol)] = {"mean_nfe": statistics.mean(nfe), "max_nfe": max(nfe), "mae": statistics.mean(errs)}
        print(f"augmented dopri5 one row at a time, rtol=atol={tol:g}: mean NFE {statistics.mean(nfe):.1f} "
              f"(max {max(nfe)}), mean |error| {statistics.mean(errs):.1e} over {args.row_solves} rows")

    # 4. cost per trace evaluation and the floor
    trace = AugmentedTerm(Drift(model), x.shape, "exact", None, "autograd", None, (0.0, sde.T))
    one = AugmentedTerm(Drift(model), x.shape, "hutchinson", torch.ones(1, *x.shape, dtype=x.dtype), "autograd", None,
                        (0.0, sde.T))
    t = torch.tensor(1.0, dtype=torch.float64)
    costs = {}
    for name, aug in (("exact_trace", trace), ("one_probe", one)):
        aug.divergence_at(x, t)
        samples = []
        for _ in range(30):
            s0 = time.perf_counter()
            aug.divergence_at(x, t)
            samples.append(time.perf_counter() - s0)
        costs[name] = statistics.median(samples)
    fewest = {}
    for name, rows in rules.items():
        ok = [r["evals_per_row"] for r in rows if r["mae"] <= 1e-3]
        fewest[name] = min(ok) if ok else None
    floor = {k: (v * costs["exact_trace"] if v is not None else None) for k, v in fewest.items()}
    print(f"cost per evaluation of the batch: exact trace {costs['exact_trace'] * 1e3:.2f} ms, one probe "
          f"{costs['one_probe'] * 1e3:.2f} ms (ratio {costs['exact_trace'] / costs['one_probe']:.1f})")
    for k in rules:
        if fewest[k] is None:
            print(f"{k}: no tested setting reaches 1e-3 nats")
        else:
            print(f"{k}: fewest tested evaluations per row for 1e-3 nats: {fewest[k]:.1f} -> trace evaluations "
                  f"alone {floor[k]:.3f} s for {args.n} rows")

    out = {"dim": args.dim, "n": args.n, "points": args.points,
           "fine_grid_mae_vs_analytic": float(np.abs(fine - truth).mean()),
           "max_slope_quantiles": {"median": float(np.median(slope)), "q90": float(np.quantile(slope, 0.9)),
                                   "max": float(slope.max())},
           "rules": rules, "augmented_one_row": per_row, "cost_per_batch_evaluation_s": costs,
           "fewest_evals_per_row_for_1e-3": fewest, "trace_time_floor_s": floor,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_report(args.out, "likelihood_floor", out, lambda path: plot(lam, h, slope, rules, path))


def plot(lam, h, slope, rules, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    order = np.argsort(slope)
    for r in list(order[:2]) + list(order[len(order) // 2:len(order) // 2 + 2]) + list(order[-4:]):
        axes[0].plot(-lam, -h[:, r], lw=1)
    axes[0].set_xlabel("-lambda = log(sigma^2 / alpha^2)")
    axes[0].set_ylabel("divergence integrand (per unit -lambda)")
    axes[0].set_title("h along the exact trajectory: smoothest, median and sharpest rows")
    for name, rows in rules.items():
        axes[1].plot([r["evals_per_row"] for r in rows], [r["mae"] for r in rows], "o-", label=name)
    axes[1].axhline(1e-3, color="gray", lw=0.8, ls="--")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("exact-trace evaluations per row")
    axes[1].set_ylabel("mean |error| (nats)")
    axes[1].set_title("quadrature of the exact integrand")
    axes[1].legend()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
