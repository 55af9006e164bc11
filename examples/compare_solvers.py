"""Compare solvers against steps on ground truth, in Python (about 20 seconds on a laptop CPU).

A 2-D Gaussian mixture with two sharp components has an exact score under the VP SDE, so the only
error left in a sample is the solver's. ``sdekit.compare`` solves the probability-flow ODE from the
same seeded x_T with each solver at several NFE budgets and measures the endpoint against a float64
RK4 reference (whose own error estimate it reports).
"""
import torch

import sdekit

torch.set_num_threads(1)  # small tensors: one thread is fastest

# 1. the built-in ground truth: GaussianMixture.default(dim=2) under a VP SDE
res = sdekit.compare(
    solvers=["euler", "heun", "dpmpp_2m", "unipc_3"],
    nfe=(5, 10, 20, 40),
    grids=("logsnr", "karras"),
    n=256, dim=2, sde="vp", seed=0,
    ref_steps=1000, progress=False,
)
print(res.table())
best = res.best(max_nfe=10)
print(f"\nbest with at most 10 network calls: {best.solver} on the {best.grid} grid, error {best.error:.3e}")

# 2. your own model: any ScoreModel; here a mixture of your choice, reference by a tight dopri5 solve
sde = sdekit.CosineVPSDE()
gm = sdekit.GaussianMixture(weights=[0.5, 0.5], means=[[-1.0, 0.0], [1.0, 0.5]], stds=[0.1, 0.3])
x_T = sde.prior_sample((128, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
res2 = sdekit.compare(gm.model(sde), x_T, solvers="dpmpp_2m,dpmpp_3m", nfe=(10, 20), grids=("logsnr",),
                      progress=False)
print()
print(res2.table())

res.to_json("compare_results.json")
res.plot("compare_error_vs_nfe.png")
print("\nwrote compare_results.json and compare_error_vs_nfe.png")
