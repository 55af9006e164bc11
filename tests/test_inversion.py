"""Inversion: deterministic solvers integrate the probability-flow ODE upwards (data -> noise), and the
round trip x -> x_T -> x comes back, closer with more steps."""
import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, SolverError, sample

DETERMINISTIC = sorted(n for n, s in SOLVERS.items() if not s.adaptive and not s.stochastic) + ["ddim"]
SECOND_ORDER_OR_MORE = [n for n in DETERMINISTIC if SOLVERS[n].order >= 2]
# measured at 50 steps (logsnr, float64): heun 3e-4, dpmpp_2m 7e-5, unipc_2 7e-4, rk4 2e-8; the
# multistep methods in t (lms, ipndm_v, deis_3) warm up at low order at both ends: 1e-3 to 2e-3
TIGHT = {"heun": 1e-3, "dpmpp_2m": 1e-3, "dpmpp_2s": 1e-3, "dpm_solver_2": 1e-3, "unipc_2": 1e-3, "unipc_3": 1e-3,
         "rk4": 1e-5}


def smooth_mixture(dim=2):
    g = torch.Generator().manual_seed(5)
    return sdekit.GaussianMixture([0.4, 0.6], torch.randn(2, dim, generator=g, dtype=torch.float64), [0.5, 0.7])


def round_trip(name, steps, grid="logsnr", n=8):
    """RMS of x - sample(invert(x)) for x drawn from the mixture's marginal at sde.eps."""
    sde = sdekit.VPSDE()
    gm = smooth_mixture()
    model = gm.model(sde)
    x = gm.sample_t(n, sde.eps, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    up = sample(model, x, name, steps=steps, grid=grid, t_start=sde.eps, t_end=sde.T)
    assert float(up.ts[0]) == sde.eps and float(up.ts[-1]) == sde.T
    back = sample(model, up.x, name, steps=steps, grid=grid)
    return float((back.x - x).pow(2).mean().sqrt()), up


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_round_trip_error_shrinks_with_steps(name):
    coarse, up = round_trip(name, 10)
    fine, _ = round_trip(name, 40)
    assert up.nfe == round(SOLVERS[name].nfe_per_step * 10)
    assert fine < coarse, (coarse, fine)
    assert fine < 0.2


@pytest.mark.parametrize("name", SECOND_ORDER_OR_MORE)
def test_round_trip_of_second_order_solvers_is_small_at_50_steps(name):
    err, _ = round_trip(name, 50)
    assert err < TIGHT.get(name, 3e-3), err


@pytest.mark.parametrize("grid", ["uniform", "quadratic", "karras"])
def test_round_trip_on_other_grids(grid):
    err, _ = round_trip("heun", 50, grid=grid)
    assert err < 5e-3, err


def test_increasing_explicit_ts_and_the_refusals():
    sde = sdekit.VPSDE()
    model = smooth_mixture().model(sde)
    x = torch.zeros(3, 2, dtype=torch.float64)
    ts = torch.linspace(sde.eps, 0.5, 6, dtype=torch.float64)
    sol = sample(model, x, "heun", ts=ts, trajectory=True)
    assert torch.equal(sol.ts, ts) and len(sol.trajectory) == 6
    with pytest.raises(SolverError,
                       match="euler_maruyama.*(draws noise|follows a Brownian path|reverse SDE).*deterministic solver"):
        sample(model, x, "euler_maruyama", ts=ts, generator=0)
    with pytest.raises(ValueError, match="cannot start at sigma = 0"):
        sample(model, x, "heun", steps=4, t_start=0.0, t_end=0.5)
    with pytest.raises(ValueError, match="denoise"):
        sample(model, x, "heun", ts=ts, denoise=True)


def test_ddim_with_noise_refuses_to_invert():
    sde = sdekit.VPSDE()
    model = smooth_mixture().model(sde)
    with pytest.raises(ValueError, match="needs eta = 0"):
        sample(model, torch.zeros(2, 2, dtype=torch.float64), "ddim", steps=4, t_start=sde.eps, t_end=sde.T, eta=0.5)
