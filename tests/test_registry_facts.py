"""The registry's facts are true for every entry: nfe_per_step against counted network calls, order against the
tableau, and None exactly where no one number is true.

Fixed-step solvers: N -> N + k grid steps must cost nfe_per_step * k more calls (a solver may add a fixed cost that
does not grow with the steps: Restart's restart interval), on two grids. Adaptive solvers: calls = a fixed start-up
cost + nfe_per_step per attempted step (accepted + rejected, as counted in Solution.stats).
"""
import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, available, sample
from sdekit.solvers.integrate import TABLEAUS

GM = sdekit.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.2, -0.4]], [0.45, 0.6])
MODEL = GM.model(sdekit.VPSDE())  # t_end = eps > 0: no zero-noise jump, every call is a step's
X = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
FIXED = [n for n in available() if not SOLVERS[n].adaptive]
CORE = [n for n, t in TABLEAUS.items() if t.adaptive]


def _calls(name, steps, grid):
    return sample(MODEL, X, name, steps=steps, grid=grid, generator=0).nfe


@pytest.mark.parametrize("name", FIXED)
def test_nfe_per_step_is_the_counted_calls_per_step(name):
    per = SOLVERS[name].nfe_per_step
    counts = {g: [_calls(name, k, g) for k in (5, 8)] for g in ("uniform", "logsnr")}
    if per is None:  # not one number: the calls per grid step then differ between grids
        assert counts["uniform"][1] - counts["uniform"][0] != counts["logsnr"][1] - counts["logsnr"][0], counts
        return
    for grid, (a, b) in counts.items():
        assert b - a == per * 3, (grid, a, b, per)
        assert a >= per * 5, (grid, a, per)


def test_the_fixed_step_walk_covers_the_registry():
    assert set(FIXED) | {n for n in available() if SOLVERS[n].adaptive} == set(available())
    assert {"euler", "heun_t", "rk4", "torchsde", "restart"} <= set(FIXED)


@pytest.mark.parametrize("name", CORE + ["dpm_adaptive_12", "dpm_adaptive_23"])
def test_adaptive_calls_are_start_up_plus_nfe_per_step_per_attempt(name):
    """The core's embedded pairs: k1 and Hairer's trial call, then nfe_per_step per attempt; DPM-Solver-12/23: no
    start-up, order calls per attempt."""
    sol = sample(MODEL, X, name, rtol=1e-4, atol=1e-4)
    attempts = sol.stats["accepted"] + sol.stats["rejected"]
    start = 2 if name in CORE else 0
    assert sol.stats["accepted"] >= 1
    assert sol.nfe == start + SOLVERS[name].nfe_per_step * attempts, (sol.nfe, sol.stats)


def test_order_and_calls_come_from_the_tableaux():
    for name, tab in TABLEAUS.items():
        if name in SOLVERS:
            assert SOLVERS[name].order == tab.order
            assert SOLVERS[name].nfe_per_step == tab.stages - (tab.fsal and tab.adaptive)


def test_none_where_an_option_or_the_solve_decides():
    """The generic adapters' facts depend on method=; LSODA varies its order along the solve."""
    for name in ("torchdiffeq", "scipy", "scipy_lsoda", "torchsde"):
        assert SOLVERS[name].order is None and SOLVERS[name].nfe_per_step is None, name
    assert (SOLVERS["scipy_rk45"].order, SOLVERS["scipy_rk45"].nfe_per_step) == (5, 6)
