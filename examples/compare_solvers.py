"""Compare solvers against steps on ground truth, in Python (about a minute on a laptop CPU, most of it
tuning grids).

A 2-D Gaussian mixture with two sharp components has an exact score under the VP SDE, so the only
error left in a sample is the solver's. ``sdekit.compare`` solves the probability-flow ODE from the
same seeded x_T with each solver at several NFE budgets and measures every row's endpoint against a
float64 RK4 reference (whose own error estimate it reports): e_i = |x_i - x_ref,i| / sqrt(dim).
Each row of the results keeps the median, 90th percentile, RMS and maximum of e, and the fraction of
rows that ended in another mixture component than the reference ("flipped").
"""
import torch

import sdekit

torch.set_num_threads(1)  # small tensors: one thread is fastest

# 1. the built-in ground truth: GaussianMixture.default(dim=2) under a VP SDE; "tuned" adds a grid
#    tuned per solver and step count on prior draws of their own seed (cost in each row's tune_nfe)
res = sdekit.compare(
    solvers=["euler", "heun", "dpmpp_2m", "unipc_3"],
    nfe=(5, 10, 20, 40),
    grids=("logsnr", "quadratic", "tuned"),
    n=256, dim=2, sde="vp", seed=0,
    ref_steps=1000, progress=False,
    tune_n=64, tune_options={"max_evals": 20},
)
for statistic in ("median", "p90", "rms"):
    print(res.leaderboard(statistic=statistic))
    print()
best = res.best(max_nfe=10, statistic="median")
print(f"best median with at most 10 network calls: {best.solver} on the {best.grid} grid, "
      f"median {best.median:.3e}, 90th percentile {best.p90:.3e}, {100 * best.flipped:.1f}% of rows flipped")

# 2. your own model: any ScoreModel; here a mixture of your choice, reference by a tight dopri5 solve.
#    Passing mixture= names the ground truth, so "flipped" is reported too.
sde = sdekit.CosineVPSDE()
gm = sdekit.GaussianMixture(weights=[0.5, 0.5], means=[[-1.0, 0.0], [1.0, 0.5]], stds=[0.1, 0.3])
x_T = sde.prior_sample((128, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
res2 = sdekit.compare(gm.model(sde), x_T, solvers="dpmpp_2m,dpmpp_3m", nfe=(10, 20), grids=("quadratic",),
                      mixture=gm, progress=False)
print()
print(res2.table())

paths = res.save("compare_results")  # results.json, results.csv, error_vs_nfe.png
print("\nwrote " + ", ".join(paths))
