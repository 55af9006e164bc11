"""A time grid tuned to the model and the solver, checked on draws the tuner never saw.

    python examples/tune_grid.py [--solver unipc_3] [--steps 6] [--dim 16] [--path vp|rectified_flow] [--out out/]
                                 [--quick]

The model is the exact score of a random Gaussian mixture (seeded, sharp and broad components) under the
VP SDE, or with ``--path rectified_flow`` its exact velocity on the flow-matching path, solved from pure noise
(alpha(T) = 0, where the tuned grid keeps its first node) to t = 0 (the last step the x0 jump).
``sdekit.tune`` places ``--steps`` steps of ``--solver`` from prior draws alone (no data) and reports its cost in
network calls. The script then draws fresh exact samples of p_T, solves the
probability-flow ODE with every named grid and with the tuned one, and prints the median, 90th
percentile and RMS of the per-row endpoint error against a converged solve (rk4, 1000 log-SNR steps).
Writes tune_grid.png: the grids' log-SNR points and the per-row error distributions.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import sdekit
from sdekit.plotting import save_figure
from sdekit.solvers.grids import make_grid
from sdekit.metrics import per_row_error as row_errors
from sdekit.solvers.tune import START_GRIDS


def random_mixture(dim: int, seed: int) -> sdekit.GaussianMixture:
    """3-6 components, uneven weights, stds log-uniform in [0.03, 0.7]."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(3, 7, (1,), generator=g))
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    stds = torch.exp(torch.empty(k, dtype=torch.float64).uniform_(math.log(0.03), math.log(0.7), generator=g))
    return sdekit.GaussianMixture(weights, means, stds)


def stats(e: torch.Tensor) -> dict:
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()
    return {"median": q[0], "p90": q[1], "rms": float(e.pow(2).mean().sqrt())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--solver", default="unipc_3")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--path", choices=("vp", "rectified_flow"), default="vp")
    p.add_argument("--out", default="out")
    p.add_argument("--quick", action="store_true", help="smaller draws and budget (a smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n_tune, n_eval, budget = (48, 200, 40) if args.quick else (256, 1000, None)

    sde = sdekit.VPSDE() if args.path == "vp" else sdekit.RectifiedFlow()
    t_end = sde.eps if args.path == "vp" else 0.0
    model = random_mixture(args.dim, args.seed).model(sde)
    t0 = time.perf_counter()
    tuned = sdekit.tune(model, args.solver, args.steps, shape=(args.dim,), n=n_tune, generator=args.seed + 1,
                        max_evals=budget, ref_steps=200 if args.quick else 500, t_end=t_end)
    print(f"tuned {args.solver} at {args.steps} steps in {time.perf_counter() - t0:.1f} s and {tuned.nfe} network "
          f"calls (batches of {n_tune} prior draws); started from '{tuned.start_grid}', "
          f"{'kept' if tuned.improved else 'not kept (it lost on the validation draw)'}")

    gm_draws = torch.Generator().manual_seed(args.seed + 2)
    x_T = random_mixture(args.dim, args.seed).sample_t(n_eval, sde.T, sde, generator=gm_draws, dtype=torch.float64)
    x_ref = sdekit.sample(model, x_T, "rk4", 1000, grid="logsnr", t_end=t_end).x
    grids = {g: make_grid(sde, args.steps, g, t_end=t_end) for g in START_GRIDS}
    grids["tuned"] = tuned.ts
    errors = {g: row_errors(sdekit.sample(model, x_T, args.solver, ts=ts).x, x_ref) for g, ts in grids.items()}
    print(f"\nper-row endpoint error of {args.solver}, {args.steps} steps, {n_eval} fresh exact draws of p_T:")
    print(f"{'grid':<10} {'median':>10} {'p90':>10} {'rms':>10}")
    for g, e in errors.items():
        s = stats(e)
        print(f"{g:<10} {s['median']:>10.3e} {s['p90']:>10.3e} {s['rms']:>10.3e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k, (g, ts) in enumerate(grids.items()):
        lam = sde.log_snr(ts)
        lam = lam[torch.isfinite(lam)]  # a flow path's ends (alpha = 0, sigma = 0) have lambda = -inf, +inf
        ax1.plot(lam.numpy(), [k] * len(lam), "o-", label=g)
        e = errors[g].sort().values.numpy()
        ax2.plot(e, torch.linspace(0, 1, len(e)).numpy(), label=g, lw=2 if g == "tuned" else 1)
    ax1.set(xlabel="log-SNR of the grid points", yticks=[], title=f"{args.solver}, {args.steps} steps")
    ax2.set(xscale="log", xlabel="per-row endpoint error", ylabel="fraction of rows", title="fresh draws")
    ax1.legend(fontsize=8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_figure(fig, out / "tune_grid.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
