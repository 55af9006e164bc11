"""The solver front door, grids, generic ODE/SDE samplers and backends, tested on exact ground truth."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit import solvers
from sdekit.solvers import grids
from tests.sdes import builtin_sdes

SDES = builtin_sdes()


def rms(a, b):
    """Endpoint error: root mean square over rows of |a - b| / sqrt(dim)."""
    d = a[0].numel()
    return float(((a - b).reshape(len(a), -1).pow(2).sum(1) / d).mean().sqrt())


def smooth_mixture(dim=2):
    g = torch.Generator().manual_seed(5)
    return sdekit.GaussianMixture([0.4, 0.6], torch.randn(2, dim, generator=g, dtype=torch.float64), [0.5, 0.7])


def start(sde, n=64, dim=2, seed=0, dtype=torch.float64):
    return sde.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- registry and front door -------------------------------------------------------------------
def test_available_and_unknown_names():
    names = solvers.available()
    for required in ["euler", "heun", "rk4", "euler_maruyama", "reverse_diffusion", "pc", "heun_churn",
                     "dopri5", "dopri8", "bosh3", "adaptive_heun", "scipy_rk45", "scipy_lsoda", "torchsde",
                     "torchdiffeq"]:
        assert required in names
    model = smooth_mixture().model(SDES["vp"])
    with pytest.raises(ValueError, match="available: .*euler"):
        solvers.sample(model, start(SDES["vp"]), "no_such_solver", steps=4)
    with pytest.raises(ValueError, match="accepted: "):
        solvers.sample(model, start(SDES["vp"]), "euler", steps=4, bogus=1)


def test_bad_steps_and_grids():
    sde = SDES["vp"]
    model = smooth_mixture().model(sde)
    x = start(sde)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            solvers.sample(model, x, "euler", steps=bad)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        solvers.sample(model, x, "euler", ts=torch.tensor([1.2, 0.5, 0.01]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        solvers.sample(model, x, "euler", ts=torch.tensor([0.5, 0.7, 0.01]))
    with pytest.raises(ValueError, match="unknown grid"):
        solvers.sample(model, x, "euler", steps=3, grid="cubic")
    with pytest.raises(ValueError, match="must differ"):
        solvers.sample(model, x, "euler", steps=3, t_start=0.4, t_end=0.4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solvers.sample(model, torch.full((2, 2), float("nan")), "euler", steps=3)


def test_non_finite_network_names_step_and_time():
    sde = SDES["vp"]

    def net(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    model = sdekit.ScoreModel(net, sde, "eps")
    with pytest.raises(solvers.NonFiniteError, match=r"step 6 \(t = 0\.4006\)"):
        solvers.sample(model, start(sde), "euler", steps=10, grid="uniform", t_end=0.0 + 1e-3)
    inf_model = sdekit.ScoreModel(lambda x, t: x / 0.0, sde, "eps")
    with pytest.raises(solvers.NonFiniteError, match="step 0"):
        solvers.sample(inf_model, start(sde), "heun", steps=3)


@pytest.mark.parametrize("name", ["uniform", "quadratic", "logsnr", "karras"])
@given(steps=st.integers(1, 50), kind=st.sampled_from(sorted(SDES)), u=st.floats(0.0, 0.5))
def test_named_grids_are_decreasing_and_pinned(name, steps, kind, u):
    sde = SDES[kind]
    t_start = sde.T * (1 - u)
    ts = grids.make_grid(sde, steps, name, t_start=t_start)
    assert ts.dtype == torch.float64 and len(ts) == steps + 1
    assert float(ts[0]) == t_start and float(ts[-1]) == sde.eps
    assert bool((ts[1:] < ts[:-1]).all())


@given(steps=st.integers(2, 40), kind=st.sampled_from(sorted(SDES)))
def test_logsnr_and_karras_spacing(steps, kind):
    sde = SDES[kind]
    lam = sde.log_snr(grids.make_grid(sde, steps, "logsnr"))
    np.testing.assert_allclose(torch.diff(lam).numpy(), float(lam[-1] - lam[0]) / steps, rtol=1e-6)
    rho = 7.0
    s = torch.exp(-0.5 * sde.log_snr(grids.make_grid(sde, steps, "karras", rho=rho)))
    np.testing.assert_allclose(torch.diff(s ** (1 / rho)).numpy(), float(s[-1] ** (1 / rho) - s[0] ** (1 / rho)) / steps,
                               rtol=1e-6, atol=1e-9)


def test_solution_carries_trajectory_callback_and_denoise():
    sde = SDES["vp"]
    gm = smooth_mixture()
    seen = []
    sol = solvers.sample(gm.model(sde), start(sde), "heun", steps=5, trajectory=True,
                         callback=lambda i, t, x: seen.append((i, t)))
    assert sol.nfe == 10 and len(sol.trajectory) == 6 and len(sol.ts) == 6
    assert [i for i, _ in seen] == list(range(5)) and seen[-1][1] == pytest.approx(sde.eps)
    den = solvers.sample(gm.model(sde), start(sde), "heun", steps=5, denoise=True)
    assert den.nfe == 11 and float(den.ts[-1]) == 0.0
    torch.testing.assert_close(den.x, gm.model(sde).x0(sol.x, sde.eps))


# -- convergence order on exact ground truth -----------------------------------------------------
def fitted_order(name, steps_list, grid="logsnr", kind="vp"):
    sde = SDES[kind]
    model = smooth_mixture().model(sde)
    x = start(sde, n=32)
    ref = solvers.sample(model, x, "rk4", steps=1000, grid=grid).x
    errs = [rms(solvers.sample(model, x, name, steps=n, grid=grid).x, ref) for n in steps_list]
    slope = -np.polyfit(np.log(steps_list), np.log(errs), 1)[0]
    return slope, errs


@pytest.mark.parametrize("name,order,steps_list", [
    ("euler", 1, [40, 80, 160, 320]),
    ("heun", 2, [10, 20, 40, 80]),
    ("rk4", 4, [8, 12, 16, 24]),
])
def test_convergence_order(name, order, steps_list):
    slope, errs = fitted_order(name, steps_list)
    assert abs(slope - order) < 0.3, (slope, errs)


def test_reference_rk4_agrees_with_adaptive_dopri8():
    sde = SDES["vp"]
    model = smooth_mixture().model(sde)
    x = start(sde, n=16)
    ref = solvers.sample(model, x, "rk4", steps=1000).x
    ada = solvers.sample(model, x, "dopri8", rtol=1e-10, atol=1e-10)
    assert rms(ada.x, ref) < 1e-8 and ada.nfe > 0


def test_adaptive_step_budget_is_enforced_quickly():
    sde = SDES["vp"]
    model = smooth_mixture().model(sde)
    for name in ("dopri5", "scipy_rk45"):
        with pytest.raises(solvers.StepBudgetError, match="budget of 20"):
            solvers.sample(model, start(sde), name, rtol=1e-12, atol=1e-12, max_nfe=20)


# -- stochastic samplers draw from the right distribution ----------------------------------------
def two_modes():
    return sdekit.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.3, 0.5])


@pytest.mark.parametrize("name,steps,options", [
    ("euler_maruyama", 300, {}),
    ("reverse_diffusion", 300, {}),
    ("pc", 150, {}),
    ("heun_churn", 60, {}),
    ("torchsde", 300, {"method": "euler"}),
    ("torchsde", 200, {"method": "srk"}),
])
def test_stochastic_samplers_match_mixture(name, steps, options):
    sde = SDES["vp"]
    gm = two_modes()
    n = 3000
    x = solvers.sample(gm.model(sde), start(sde, n=n, seed=1), name, steps=steps,
                       grid="uniform" if name != "heun_churn" else "karras",
                       generator=7, **options).x
    # mode weights: binomial standard error
    left = float((x[:, 0] < 0).double().mean())
    assert abs(left - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n) + 0.01, left
    # mean and covariance within sampling error (plus a small discretisation allowance)
    cov = gm.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - gm.mean()).abs() < 4 * se + 0.03).all(), x.mean(0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.15, rtol=0.08)


STOCHASTIC_OPTIONS = {"ddim": {"eta": 1.0}}  # solvers whose default options are deterministic


@pytest.mark.parametrize("name", [n for n in solvers.available() if solvers.get(n).stochastic])
def test_rows_do_not_depend_on_batch_size(name):
    sde = SDES["vp"]
    model = two_modes().model(sde)
    x7 = start(sde, n=7, seed=3)
    opts = STOCHASTIC_OPTIONS.get(name, {})
    a = solvers.sample(model, x7, name, steps=6, generator=11, **opts).x
    b = solvers.sample(model, x7[:3], name, steps=6, generator=11, **opts).x
    c = solvers.sample(model, x7, name, steps=6, generator=12, **opts).x
    torch.testing.assert_close(a[:3], b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, c)
    # a shard of rows [3, 7) reproduces with row_offset
    d = solvers.sample(model, x7[3:], name, steps=6, generator=11, row_offset=3, **opts).x
    torch.testing.assert_close(a[3:], d, rtol=1e-6, atol=1e-6)


# -- every solver, every SDE, any shape and dtype ---------------------------------------------------


@pytest.mark.parametrize("name", solvers.available())
@given(kind=st.sampled_from(sorted(SDES)), shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64]), steps=st.integers(1, 6))
def test_every_solver_runs_everywhere(name, kind, shape, dtype, steps):
    sde = SDES[kind]
    event = tuple(shape[1:]) or (1,)
    gm = sdekit.GaussianMixture([0.5, 0.5], torch.stack([torch.ones(event), -torch.ones(event)]).double(), 0.5)
    x = sde.prior_sample((shape[0], *event), generator=torch.Generator().manual_seed(0), dtype=dtype)
    info = solvers.get(name)
    kwargs = {"rtol": 1e-3, "atol": 1e-3} if info.adaptive else {"steps": steps}
    sol = solvers.sample(gm.model(sde), x, name, generator=0, **kwargs)
    assert sol.x.shape == x.shape and sol.x.dtype == dtype
    assert bool(torch.isfinite(sol.x).all()) and sol.nfe >= 1


# -- option ranges, walked over the registry (issue 21, item 10) ----------------------------------------------------
def _numeric_options():
    for name in solvers.available():
        for opt, default in solvers.get(name).options.items():
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                yield name, opt


@pytest.mark.parametrize("name,opt", list(_numeric_options()))
def test_every_numeric_option_out_of_range_is_refused_before_any_work(name, opt):
    """A negative or NaN value of any numeric option (eta, s_noise, snr, rtol, max_nfe, orders, ...) raises a
    ValueError naming the solver or the option before the network is called: none of them is squared away or
    silently truncated (pc with snr = -1 used to run as snr = 1)."""
    calls = []
    exact = sdekit.GaussianMixture.default(2).model(sdekit.VPSDE())
    model = sdekit.ScoreModel(lambda x, t: calls.append(1) or exact.net(x, t), exact.sde, exact.prediction)
    steps = None if solvers.get(name).adaptive else 4
    for bad in (-1, -0.5, math.nan):
        with pytest.raises((ValueError, solvers.SolverError)) as err:
            solvers.sample(model, torch.zeros(2, 2, dtype=torch.float64), name, steps, generator=0, **{opt: bad})
        assert not calls and (name in str(err.value) or opt in str(err.value)), str(err.value)


def test_pc_refuses_a_negative_snr_by_name():
    model = sdekit.GaussianMixture.default(2).model(sdekit.VPSDE())
    with pytest.raises(ValueError, match="'pc'.*snr"):
        solvers.sample(model, torch.zeros(2, 2, dtype=torch.float64), "pc", 4, generator=0, snr=-1)
