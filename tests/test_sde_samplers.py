"""The reverse-SDE samplers on exact ground truth: pathwise (strong) order against a fine solve on the same Brownian
path, the limit property, the law of the samples (mode weights and sliced W2 within bounds from the sample size),
row invariance and input checks."""
import math

import pytest
import torch

import sdekit
from sdekit.metrics import sliced_w2
from sdekit.solvers import SolverError, get, sample

NEW = ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver", "restart"]
SDE_PATH = ["euler_maruyama", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
            "sa_solver"]


def _gauss():
    """One Gaussian: the exact score is linear, so no row can switch modes and the strong error is pure
    discretisation error."""
    return sdekit.GaussianMixture(torch.tensor([1.0]), torch.tensor([[1.0, -1.0]], dtype=torch.float64), 0.5)


def _mixture():
    g = torch.Generator().manual_seed(4)
    return sdekit.GaussianMixture(torch.tensor([0.25, 0.75]), 2.0 * torch.randn(2, 2, generator=g, dtype=torch.float64),
                                  torch.tensor([0.2, 0.4]))


def _start(gm, sde, n, seed=1):
    return gm.sample_t(n, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rms(a, b):
    return float((a - b).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize("name", NEW)
def test_rows_are_independent_of_the_batch_and_float32_runs(name):
    sde = sdekit.VPSDE()
    gm = _mixture()
    x = _start(gm, sde, 6)
    full = sample(gm.model(sde), x, name, steps=6, generator=3).x
    part = sample(gm.model(sde), x[2:5], name, steps=6, generator=3, row_offset=2).x
    assert torch.equal(full[2:5], part)
    other = sample(gm.model(sde), x, name, steps=6, generator=4).x
    assert not torch.equal(full, other)
    x32 = sample(gm.model(sde), x.float(), name, steps=6, generator=3).x
    assert x32.dtype == torch.float32 and bool(torch.isfinite(x32).all())
    assert get(name).stochastic


def test_strong_order_one_on_the_same_path():
    """Additive noise: Euler-Maruyama and the exponential SDE integrators converge pathwise with order 1.
    Errors against a 1024-step solve of the same path, at 16..128 steps (batch 64)."""
    sde = sdekit.VPSDE()
    gm = _gauss()
    model = gm.model(sde)
    x = _start(gm, sde, 64)
    ref = sample(model, x, "dpmpp_2m_sde", steps=1024, generator=3).x
    for name in ("euler_maruyama", "dpmpp_2m_sde", "euler_ancestral"):
        errs = [_rms(sample(model, x, name, steps=n, generator=3).x, ref) for n in (32, 64, 128)]
        slope = math.log(errs[0] / errs[-1]) / math.log(4)
        assert 0.85 < slope < 1.25, (name, errs, slope)


def test_a_rows_sample_at_many_steps_is_the_limit_of_its_coarse_samples():
    sde = sdekit.VPSDE()
    gm = _gauss()
    model = gm.model(sde)
    x = _start(gm, sde, 32)
    for name in ("dpmpp_2m_sde", "sa_solver"):
        fine = sample(model, x, name, steps=1000, generator=7).x
        errs = [_rms(sample(model, x, name, steps=n, generator=7).x, fine) for n in (10, 20, 50)]
        assert errs[0] > errs[1] > errs[2], (name, errs)
        assert errs[2] < 0.1 * float(fine.std()), (name, errs)
        # a different seed is a different path: far from this limit
        assert _rms(sample(model, x, name, steps=50, generator=8).x, fine) > 5 * errs[2]


@pytest.mark.parametrize("name,noise", [(n, "path") for n in ("dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver", "dpmpp_sde",
                                                                 "restart", "euler_maruyama")]
                         + [("euler_ancestral", "step"), ("dpmpp_2m_sde", "step"), ("dpmpp_sde", "step")])
def test_law_matches_p0(name, noise):
    """Mode weights within 5 binomial standard errors, and within each mode the sliced W2 to exact draws of that
    mode within 3x the floor between two exact sets (n = 1500, 40 steps on the log-SNR grid); with the path's
    increments and with fresh step noise. (Per mode: across modes 8 apart, the binomial noise of the weights
    alone moves the sliced W2 of the whole sets by about its floor.)"""
    sde = sdekit.VPSDE()
    gm = _mixture()
    n = 1500
    x = sample(gm.model(sde), _start(gm, sde, n), name, steps=40, generator=11, noise=noise).x
    exact = gm.sample_t(n, sde.eps, sde, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact2 = gm.sample_t(n, sde.eps, sde, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = gm.weights
    frac = float((gm.component(x, sde.eps, sde) == 0).double().mean())
    assert abs(frac - float(w[0])) < 5 * math.sqrt(float(w[0] * w[1]) / n), frac
    sets = [(s, gm.component(s, sde.eps, sde)) for s in (x, exact, exact2)]
    for k in range(len(w)):
        xs, ex, ex2 = (s[c == k] for s, c in sets)
        m = min(len(xs), len(ex), len(ex2))
        floor = sliced_w2(ex[:m], ex2[:m])
        assert sliced_w2(xs[:m], ex[:m]) < 3 * floor + 0.02, (k, sliced_w2(xs[:m], ex[:m]), floor)


def test_options_are_checked():
    sde = sdekit.VPSDE()
    gm = _mixture()
    x = _start(gm, sde, 3)
    with pytest.raises(ValueError, match="eta"):
        sample(gm.model(sde), x, "dpmpp_2m_sde", steps=3, generator=0, eta=1.5)
    with pytest.raises(ValueError, match="solver_type"):
        sample(gm.model(sde), x, "dpmpp_2m_sde", steps=3, generator=0, solver_type="rk")
    with pytest.raises(ValueError, match="restart interval"):
        sample(gm.model(sde), x, "restart", steps=3, generator=0, restarts=[(2, 1, 0.5, 0.2)])
    with pytest.raises(SolverError):
        sample(gm.model(sde), x, "dpmpp_2m_sde", ts=torch.tensor([0.01, 0.5], dtype=torch.float64), generator=0)


def test_eta_zero_is_the_deterministic_solver():
    sde = sdekit.VPSDE()
    gm = _mixture()
    x = _start(gm, sde, 8)
    a = sample(gm.model(sde), x, "dpmpp_2m_sde", steps=12, generator=0, eta=0.0, solver_type="midpoint").x
    b = sample(gm.model(sde), x, "dpmpp_2m_sde", steps=12, generator=1, eta=0.0, solver_type="midpoint").x
    assert torch.equal(a, b)
    c = sample(gm.model(sde), x, "dpmpp_2m", steps=12).x  # both lower the order of the last step by default
    assert torch.allclose(a, c, atol=1e-10)
    d = sample(gm.model(sde), x, "dpmpp_2m_sde", steps=12, generator=0, eta=0.0, solver_type="midpoint",
               lower_order_final=False).x
    assert torch.allclose(d, sample(gm.model(sde), x, "dpmpp_2m", steps=12, lower_order_final=False).x, atol=1e-10)
    assert not torch.allclose(a, d, atol=1e-6)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde", "sa_solver"])
def test_lower_order_final_keeps_large_final_steps_stable(name):
    """On a DDPM table at 10 NFE with the uniform grid (its last step spans lambda from about 2 to 9), extrapolating
    the x0 history into the final steps ruins the law; lowering the order there (the default) keeps it: the
    sliced W2 to exact samples is at least 3x smaller, and within 2x the floor."""
    sde = sdekit.DiscreteVPSDE.linear(1000, 1e-4, 0.02)
    gm = sdekit.GaussianMixture.default(2)  # sharp components (std 0.05, 0.1) beside broad ones
    n = 2000
    x = _start(gm, sde, n)
    exact = gm.sample_t(n, 0.0, sde, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    floor = sliced_w2(exact, gm.sample_t(n, 0.0, sde, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    err = {flag: sliced_w2(sample(gm.model(sde), x, name, steps=10, grid="uniform", t_end=0.0, generator=5,
                                  lower_order_final=flag).x, exact) for flag in (True, False)}
    assert err[False] > 3 * err[True], err
    assert err[True] < 2 * floor, (err, floor)


@pytest.mark.parametrize("name", SDE_PATH)
def test_step_noise_is_per_row_but_not_a_path(name):
    """noise="step": a fresh Gaussian per entry and step, still a function of (seed, row) only; unlike the path,
    a finer grid of the same seed is not a refinement of the coarse solve (the 1000-step solve is no limit)."""
    sde = sdekit.VPSDE()
    gm = _gauss()
    model = gm.model(sde)
    x = _start(gm, sde, 32)
    full = sample(model, x, name, steps=8, generator=5, noise="step").x
    part = sample(model, x[3:9], name, steps=8, generator=5, row_offset=3, noise="step").x
    assert torch.equal(full[3:9], part)
    assert not torch.equal(full, sample(model, x, name, steps=8, generator=5).x)  # another noise than the path's
    fine = sample(model, x, name, steps=1000, generator=5).x
    coarse_path = _rms(sample(model, x, name, steps=100, generator=5).x, fine)
    coarse_step = _rms(sample(model, x, name, steps=100, generator=5, noise="step").x, fine)
    assert coarse_step > 5 * coarse_path, (coarse_step, coarse_path)


def test_unknown_noise_kind_is_refused():
    sde = sdekit.VPSDE()
    gm = _gauss()
    with pytest.raises(ValueError, match="noise must be one of path, step"):
        sample(gm.model(sde), _start(gm, sde, 2), "euler_ancestral", steps=2, generator=0, noise="fresh")


@pytest.mark.parametrize("solver", [n for n in sdekit.solvers.available()
                                    if "noise_last" in sdekit.solvers.registry.get(n).options])
def test_a_grid_ending_with_the_x0_jump_keeps_the_noise_of_the_step_before_it(solver):
    """noise_last=False drops the last step's noise (score_sde); when the x0 jump ends the grid, the jump is that
    noiseless last step, so the step before it keeps its noise: two seeds give different samples (they were equal
    with 2 steps, where every step was the 'last' one), and the law at t = 0 has the mixture's spread."""
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.3, 0.3])
    x_T = sde.prior_sample((4000, 1), generator=torch.Generator().manual_seed(0)).double()
    a, b = (sdekit.sample(gm.model(sde), x_T, solver, 2, t_end=0.0, generator=g).x for g in (1, 2))
    assert float((a - b).abs().max()) > 0.1
    many = sdekit.sample(gm.model(sde), x_T, solver, 64, t_end=0.0, generator=1).x
    assert abs(float(many.std()) - float(gm.covariance().sqrt())) < 0.1
