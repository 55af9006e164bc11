"""The fast ODE samplers of issue 11 (item 2): iPNDM (fixed and variable step), LMS, DEIS-tAB, the noise-form
multistep DPM-Solver, adaptive DPM-Solver-12/23 and the analytic first step (AFS).

Convergence orders are measured on exact ground truth (a GaussianMixture's score) against an rk4 reference, in
both directions (sampling, and inversion on an increasing grid); the generators are called directly so that
increasing grids need nothing from the driver."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, StepBudgetError, get, sample
from sdekit.solvers.adaptive_dpm import row_error_norm
from sdekit.solvers.base import Evaluator
from sdekit.solvers.grids import make_grid
from sdekit.solvers.linear_multistep import _tab_in_t
from sdekit.solvers.exponential import Schedule
from tests.sdes import builtin_sdes
from tests.test_exponential import prior, rms, smooth_mixture

FIXED = ["ipndm", "ipndm_v", "lms", "deis_2", "deis_3", "deis_4", "dpm_solver_2m", "dpm_solver_3m"]
ADAPTIVE = ["dpm_adaptive_12", "dpm_adaptive_23"]
AFS = ["dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "ipndm", "ipndm_v", "lms", "deis_2", "deis_3", "deis_4",
       "dpm_solver_2m", "dpm_solver_3m"]


def run(model, x, name, ts, **opts):
    """The solver's generator on ts (decreasing or increasing): (state at ts[-1], evaluator)."""
    ev = Evaluator(model)
    states = list(get(name).fn(ev, x, ts, **opts))
    assert len(states) == len(ts) - 1
    return states[-1], ev


def full_order(name):
    return {"lower_order_final": False} if "lower_order_final" in SOLVERS[name].options else {}


@pytest.fixture(scope="module")
def problem():
    """VP SDE, smooth 2-D mixture, 8 rows in float64; rk4 on 500 logsnr steps down (x_T -> x_eps) and up again
    from the reference endpoint (its error, ~1e-11, is far below the errors measured here). One thread: a
    module fixture runs before conftest's per-test one_thread."""
    torch.set_num_threads(1)
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    x = prior(sde, (8, 2), seed=3)
    down = make_grid(sde, 500, "logsnr")
    ref = run(model, x, "rk4", down)[0]
    up = run(model, ref, "rk4", down.flip(0))[0]
    return sde, model, x, ref, up


# -- convergence orders on exact ground truth ------------------------------------------------------------------
CASES = [(n, {}, SOLVERS[n].order) for n in FIXED] + [("lms", {"order": 2}, 2), ("lms", {"order": 3}, 3)]


@pytest.mark.parametrize("name,opts,order", CASES, ids=[f"{n}{o.get('order', '')}" for n, o, _ in CASES])
@pytest.mark.parametrize("direction", ["sample", "invert"])
def test_convergence_order(problem, name, opts, order, direction):
    """Error against the rk4 reference at 80 and 160 logsnr steps (asymptotic here): the measured order is the
    registered one within 0.4 (lower_order_final=False), sampling (T -> eps) and inverting (eps -> T).
    Measured (sample / invert): ipndm 2.0/2.0 (the constant weights: order 2 on a nonuniform grid), ipndm_v and
    lms 3.7/4.3, deis_2 2.0/2.0, deis_3 3.0/3.0, deis_4 3.8/4.2, dpm_solver_2m 2.0/2.0, dpm_solver_3m 3.3/3.3."""
    sde, model, x, ref, up = problem
    start, target = (x, ref) if direction == "sample" else (ref, up)
    errs = []
    for n in (80, 160):
        ts = make_grid(sde, n, "logsnr")
        ts = ts if direction == "sample" else ts.flip(0)
        errs.append(rms(run(model, start, name, ts, **opts, **full_order(name))[0], target))
    measured = math.log2(errs[0] / errs[1])
    assert abs(measured - order) < 0.4, (name, opts, direction, measured, errs)


# -- equalities ----------------------------------------------------------------------------------------------------
def test_first_step_of_every_multistep_solver_is_ddim():
    sde = sdekit.VPSDE()
    model = smooth_mixture(3).model(sde)
    x = prior(sde, (5, 3))
    ddim = sample(model, x, "ddim", steps=1).x
    for name in FIXED:
        assert torch.allclose(sample(model, x, name, steps=1).x, ddim, rtol=1e-12, atol=1e-12), name


def test_ipndm_is_ipndm_v_on_a_grid_uniform_in_s_and_lms_is_ipndm_v():
    """The constant Adams-Bashforth weights are the variable-step ones when the steps in s = sigma/alpha are
    equal (so ipndm is fourth order there), and differ on a logsnr grid; ipndm_v is lms(order=4)."""
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    x = prior(sde, (6, 2))
    s = torch.linspace(5.0, 0.2, 13, dtype=torch.float64)
    ts = sde.t_from_log_snr(-2 * torch.log(s))
    a, b = sample(model, x, "ipndm", ts=ts).x, sample(model, x, "ipndm_v", ts=ts).x
    assert torch.allclose(a, b, rtol=1e-11, atol=1e-12)
    a, b = sample(model, x, "ipndm", steps=12).x, sample(model, x, "ipndm_v", steps=12).x
    assert not torch.allclose(a, b, rtol=1e-4)
    assert torch.equal(sample(model, x, "lms", steps=12).x, b)


def _published_dpm_solver_multistep(model, x, ts, order):
    """Multistep DPM-Solver-2M/3M in noise form, written out (Lu et al. 2022b, App.; diffusers'
    algorithm_type="dpmsolver", midpoint), lambda = log(alpha/sigma), no lower-order final steps; the 3M D2 term
    with its Taylor weight 2 h phi_3(h) (the published code uses half of it)."""
    sde = model.sde
    al, sg = sde.alpha(ts).tolist(), sde.sigma(ts).tolist()
    lam = [math.log(a / s) for a, s in zip(al, sg)]
    outs = []
    for i in range(len(ts) - 1):
        m0 = model.eps(x, ts[i])
        h = lam[i + 1] - lam[i]
        e = math.expm1(h)
        base = al[i + 1] / al[i] * x - sg[i + 1] * e * m0
        if i == 0:
            x = base
        elif order == 2 or i == 1:
            r = (lam[i] - lam[i - 1]) / h
            x = base - 0.5 * sg[i + 1] * e * (m0 - outs[-1]) / r
        else:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m0 - outs[-1]) / r0, (outs[-1] - outs[-2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = base - sg[i + 1] * (e / h - 1) * d1 - 2 * sg[i + 1] * ((e - h) / h**2 - 0.5) * d2
        outs.append(m0)
    return x


@pytest.mark.parametrize("name,order", [("dpm_solver_2m", 2), ("dpm_solver_3m", 3)])
@pytest.mark.parametrize("grid", ["karras", "uniform"])
def test_noise_form_multistep_equals_published_formulas(name, order, grid):
    sde = sdekit.VPSDE()
    model = sdekit.GaussianMixture.default(dim=4).model(sde)
    x = prior(sde, (6, 4))
    ts = make_grid(sde, 9, grid)
    ours = sample(model, x, name, ts=ts, lower_order_final=False).x
    assert torch.allclose(ours, _published_dpm_solver_multistep(model, x, ts, order), rtol=1e-9, atol=1e-11)


def test_deis_weights_integrate_polynomials_in_t_exactly():
    """c_ij = int ell_j(t) ds(t): sum_j c_ij p(t_{i-j}) = int p(t) ds(t) for p of degree < k (here p = 1 and
    p = t, the latter against a fine trapezoid in t)."""
    sde = sdekit.VPSDE()
    ts = make_grid(sde, 6, "logsnr")
    sch = Schedule(sde, ts)
    s = [b / a for a, b in zip(sch.alpha, sch.sigma)]
    times = ts.tolist()
    for i in (2, 4):
        c = _tab_in_t(sch, s, times, i, 3)
        assert sum(c) == pytest.approx(s[i + 1] - s[i], rel=1e-12)
        tt = torch.linspace(times[i], times[i + 1], 200001, dtype=torch.float64)
        ss = sde.sigma(tt) / sde.alpha(tt)
        exact = float(torch.trapezoid(tt, ss))
        assert sum(cj * times[i - j] for j, cj in enumerate(c)) == pytest.approx(exact, rel=1e-8)


# -- the analytic first step --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", AFS)
def test_afs_saves_one_call_and_is_exact_for_standard_normal_data(name):
    """With data N(0, I) the model output at T is exactly the Gaussian prediction, so afs=True changes nothing
    but the NFE; on a mixture it is an approximation whose effect shrinks with the first step."""
    sde = sdekit.VPSDE()
    x = prior(sde, (5, 2))
    gauss = sdekit.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0]))
    a, b = sample(gauss.model(sde), x, name, steps=8), sample(gauss.model(sde), x, name, steps=8, afs=True)
    assert b.nfe == a.nfe - 1
    assert torch.allclose(a.x, b.x, rtol=1e-10, atol=1e-12)
    model = smooth_mixture(2).model(sde)
    gaps = [rms(sample(model, x, name, steps=n).x, sample(model, x, name, steps=n, afs=True).x) for n in (10, 40)]
    assert 0 < gaps[1] < gaps[0], gaps


def test_afs_option_is_checked():
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    with pytest.raises(ValueError, match="afs"):
        sample(model, prior(sde, (2, 2)), "deis_3", steps=3, afs="yes")
    with pytest.raises(ValueError, match="order must be one of"):
        sample(model, prior(sde, (2, 2)), "lms", steps=3, order=5)


# -- every SDE, shape and dtype; a last step to sigma = 0 ---------------------------------------------------------
@pytest.mark.parametrize("kind", list(builtin_sdes()) + ["discrete"])
def test_every_new_solver_on_every_sde_shape_and_dtype(kind):
    sde = sdekit.DiscreteVPSDE.linear(100) if kind == "discrete" else builtin_sdes()[kind]
    g = torch.Generator().manual_seed(0)
    gm = sdekit.GaussianMixture(torch.tensor([0.5, 0.5]), torch.randn(2, 2, 3, generator=g, dtype=torch.float64),
                                torch.tensor([0.2, 0.6]))
    ts = torch.linspace(sde.T, sde.eps, 7, dtype=torch.float64)
    to_zero = torch.cat([ts, ts.new_zeros(1)])
    for k, name in enumerate(FIXED + ADAPTIVE):
        dtype = (torch.float32, torch.float64)[k % 2]
        x = prior(sde, (3, 2, 3), dtype=dtype)
        opts = {"rtol": 1e-2, "atol": 1e-2} if name in ADAPTIVE else {}
        for grid in (ts, to_zero) if name not in ADAPTIVE else (ts,):  # adaptive to sigma = 0: tested below
            sol = sample(gm.model(sde), x, name, ts=grid, **opts)
            assert sol.x.shape == x.shape and sol.x.dtype == dtype, (name, kind)
            assert bool(torch.isfinite(sol.x).all()), (name, kind)
            if name not in ADAPTIVE:
                assert sol.nfe <= len(grid) - 1


# -- adaptive DPM-Solver-12 / 23 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_meets_its_tolerance_on_every_row(problem, name):
    """Each row's RMS of (x - ref)/(atol + rtol max|.|) stays below 2 (measured max: 1.4 for 12, 0.5 for 23 at
    1e-5); tighter tolerances cost more calls and give smaller errors; stats count the attempts."""
    sde, model, x, ref, _ = problem
    worst, nfes = [], []
    for tol in (1e-4, 1e-5):
        sol = sample(model, x, name, rtol=tol, atol=tol)
        scaled = (sol.x - ref) / (tol + tol * torch.maximum(sol.x.abs(), ref.abs()))
        worst.append(float(scaled.pow(2).mean(1).sqrt().max()))
        nfes.append(sol.nfe)
        order = SOLVERS[name].order
        assert sol.stats["accepted"] >= 1 and sol.stats["rejected"] >= 0
        assert sol.nfe == order * (sol.stats["accepted"] + sol.stats["rejected"])
    assert max(worst) < 2.0, worst
    assert nfes[1] > nfes[0], nfes


def test_adaptive_lands_on_every_grid_time_and_inverts(problem):
    sde, model, x, ref, up = problem
    ts = make_grid(sde, 3, "logsnr")
    sol = sample(model, x, "dpm_adaptive_23", ts=ts, rtol=1e-6, atol=1e-6, trajectory=True)
    assert len(sol.trajectory) == 4
    fine = sample(model, x, "rk4", ts=torch.cat([torch.linspace(float(a), float(b), 61, dtype=torch.float64)[:-1]
                                                 for a, b in zip(ts[:-1], ts[1:])] + [ts[-1:]]), trajectory=True)
    for k in (1, 2, 3):
        assert rms(sol.trajectory[k], fine.trajectory[60 * k]) < 1e-4, k
    back, ev = run(model, ref, "dpm_adaptive_23", ts.flip(0), rtol=1e-6, atol=1e-6)
    assert rms(back, up) < 1e-5 and ev.stats["accepted"] > 0


def test_adaptive_ends_at_sigma_zero_with_the_x0_jump():
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    x = prior(sde, (4, 2))
    ts = torch.tensor([sde.T, 0.05, 0.0], dtype=torch.float64)
    sol = sample(model, x, "dpm_adaptive_12", ts=ts, rtol=1e-3, atol=1e-3, trajectory=True)
    assert torch.allclose(sol.x, model.x0(sol.trajectory[1], ts[1]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_budget_and_options(name):
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    x = prior(sde, (4, 2))
    with pytest.raises(StepBudgetError, match="max_nfe"):
        sample(model, x, name, rtol=1e-6, atol=1e-6, max_nfe=12)
    for bad in ({"rtol": -1.0}, {"rtol": 0.0, "atol": 0.0}, {"max_nfe": 0}, {"h_init": 0.0}):
        with pytest.raises(ValueError):
            sample(model, x, name, **bad)


def test_row_error_norm_is_the_worst_row():
    """One row at twice its tolerance fails the step even when 99 others are exact (a batch mean would pass)."""
    x = torch.ones(100, 4, dtype=torch.float64)
    err = torch.zeros_like(x)
    err[17] = 2 * (1e-3 + 1e-3)
    assert row_error_norm(err, x, x, 1e-3, 1e-3) == pytest.approx(2.0)
    assert row_error_norm(err * float("nan"), x, x, 1e-3, 1e-3) == math.inf
