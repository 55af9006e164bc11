"""Flow matching: affine paths with alpha(T) = 0, the velocity prediction, solvers from pure noise,
the likelihood against the analytic mixture density, the flow-matching loss, and diffusers' FlowMatch peers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.parameterization import PREDICTIONS, convert
from sdekit.solvers.exponential import ms_weights
from sdekit.solvers.grids import make_grid

PATHS = {
    "rf": sdekit.RectifiedFlow(),
    "poly3": sdekit.PolynomialPath(3.0),
    "cosine": sdekit.CosinePath(),
    "shift3": sdekit.TimeShift(sdekit.RectifiedFlow(), 3.0),
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_paths_closed_forms_are_consistent(name):
    p = PATHS[name]
    assert float(p.alpha(p.T)) == 0.0 and float(p.sigma(p.T)) == 1.0
    assert float(p.alpha(0.0)) == 1.0 and float(p.sigma(0.0)) == 0.0
    assert p.prior_std() == 1.0 and float(p.log_snr(p.T)) == -math.inf
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    torch.testing.assert_close(p.d_alpha(t), (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p.d_sigma(t), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    # f and g from alpha and sigma: d sigma^2/dt = 2 f sigma^2 + g^2, f = alpha'/alpha
    torch.testing.assert_close(2 * p.sigma(t) * p.d_sigma(t), 2 * p.f(t) * p.sigma(t) ** 2 + p.g(t) ** 2)
    torch.testing.assert_close(p.f(t), p.d_alpha(t) / p.alpha(t))
    # the generic LinearSDE derivative from f and g agrees with the closed form
    torch.testing.assert_close(sdekit.LinearSDE.d_sigma(p, t), p.d_sigma(t))
    ts = torch.tensor([0.0, 1e-3, 0.3, 0.7, 0.999, 1.0], dtype=torch.float64)
    torch.testing.assert_close(p.t_from_log_snr(p.log_snr(ts)), ts, rtol=0, atol=1e-9)


def test_time_shift_matches_sd3_and_shifts_the_log_snr():
    rf, shifted = sdekit.RectifiedFlow(), sdekit.TimeShift(sdekit.RectifiedFlow(), 3.0)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    torch.testing.assert_close(shifted.sigma(t), 3 * t / (1 + 2 * t))
    torch.testing.assert_close(shifted.log_snr(t), rf.log_snr(t) - 2 * math.log(3.0))
    torch.testing.assert_close(sdekit.time_shift(t, 3.0), shifted.sigma(t))


ALL = {**PATHS, "vp": sdekit.VPSDE(), "ve": sdekit.VESDE(sigma_min=0.01, sigma_max=20.0)}


@settings(deadline=None, max_examples=40)
@given(name=st.sampled_from(sorted(ALL)), other=st.sampled_from(PREDICTIONS), u=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_velocity_round_trips(name, other, u, seed):
    sde = ALL[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    value = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = 0.01 + (sde.T - 0.02) * u
    for tt in (t, torch.full((4,), t, dtype=torch.float64)):
        back = convert(convert(value, "velocity", other, x, tt, sde), other, "velocity", x, tt, sde)
        torch.testing.assert_close(back, value, rtol=1e-7, atol=1e-7 * float(value.abs().max()))
        back = convert(convert(value, other, "velocity", x, tt, sde), "velocity", other, x, tt, sde)
        torch.testing.assert_close(back, value, rtol=1e-7, atol=1e-7 * float(value.abs().max()))


@settings(deadline=None, max_examples=40)
@given(name=st.sampled_from(sorted(PATHS)), u=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_velocity_definition_holds_up_to_both_ends(name, u, seed):
    """u = alpha' x0 + sigma' eps, and x0, eps, v come back from it exactly, t = 0 and t = T included."""
    sde = PATHS[name]
    gen = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    t = u * sde.T
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    da, ds = sde.rates(t)
    x = a * x0 + s * eps
    vel = da * x0 + ds * eps
    if abs(a * ds - s * da) == 0:  # the polynomial path's velocity vanishes at T: nothing to recover
        return
    if u == 1.0:  # alpha = 0: x0 is not in x, only in the velocity
        torch.testing.assert_close(convert(vel, "velocity", "x0", x, t, sde), x0)
    elif u == 0.0:  # sigma = 0: eps is not in x, only in the velocity
        torch.testing.assert_close(convert(vel, "velocity", "eps", x, t, sde), eps)
    else:
        for kind, truth in (("x0", x0), ("eps", eps), ("v", a * eps - s * x0), ("score", -eps / s)):
            torch.testing.assert_close(convert(vel, "velocity", kind, x, t, sde), truth)
            torch.testing.assert_close(convert(truth, kind, "velocity", x, t, sde), vel)


def test_velocity_is_the_probability_flow_drift_on_a_vp_sde():
    sde, gm = sdekit.VPSDE(), sdekit.GaussianMixture.default(dim=2)
    x = torch.randn(6, 2, dtype=torch.float64)
    m = gm.model(sde)
    for t in (0.05, 0.5, 1.0):
        torch.testing.assert_close(m.predict(x, t, "velocity"), sde.probability_flow_drift(x, t, m.score(x, t)))


def test_ms_weights_take_the_limit_of_a_point_at_minus_infinity():
    h, B = 0.7, -math.expm1(-0.7)
    far = ms_weights([-0.8, -1e7], h, B)
    lim = ms_weights([-0.8, -math.inf], h, B)
    assert lim[1] == 0.0 and abs(lim[0] - far[0]) < 1e-6
    assert ms_weights([-math.inf], h, B) == [0.5]


def _rf_problem(dim=2, n=64):
    sde = sdekit.RectifiedFlow()
    gm = sdekit.GaussianMixture.default(dim=dim, seed=0)
    x_T = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sde, gm, gm.model(sde), x_T


def _reference(gm, sde, x_T):
    from torchdiffeq import odeint

    ts = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return odeint(lambda t, x: gm.velocity(x, t.clamp(0, 1), sde), x_T, ts, rtol=1e-10, atol=1e-10)[-1]


def test_first_step_from_pure_noise_is_ddim():
    sde, gm, m, x_T = _rf_problem()
    for solver in ("ddim", "dpmpp_2m", "unipc_2", "dpmpp_2s"):
        sol = sdekit.sample(m, x_T, solver, ts=torch.tensor([1.0, 0.6], dtype=torch.float64))
        torch.testing.assert_close(sol.x, 0.4 * gm.mean().expand_as(x_T) + 0.6 * x_T)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "dpmpp_2s"])
def test_data_form_steps_from_pure_noise_are_exact_when_x0_is_constant(solver):
    """Data at one point mu (x0(x, t) = mu for every x and t > 0): the flow is x_t = alpha_t mu + sigma_t x_T, and
    every data-form update, the infinite first step from alpha = 0 included, integrates a constant x0 exactly."""
    sde = sdekit.RectifiedFlow()
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    model = sdekit.ScoreModel(lambda x, t: mu.expand_as(x), sde, prediction="x0")
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for ts in (torch.tensor([1.0, 0.7, 0.4, 0.05], dtype=torch.float64), make_grid(sde, 5, "logsnr", t_end=0.0)):
        t = float(ts[-1])
        torch.testing.assert_close(sdekit.sample(model, x_T, solver, ts=ts).x, (1 - t) * mu + t * x_T,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["dpm_solver_1", "dpm_solver_2", "dpm_solver_2m", "deis_2", "ipndm", "lms",
                                    "dpm_adaptive_12"])
def test_noise_form_solvers_refuse_a_grid_through_alpha_zero_by_name(solver):
    sde, _, m, x_T = _rf_problem(n=4)
    with pytest.raises(ValueError, match="alpha = 0"):
        sdekit.sample(m, x_T, solver, ts=torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64))
    assert torch.isfinite(sdekit.sample(m, x_T, solver, ts=torch.tensor([0.99, 0.5, 0.1],
                                                                         dtype=torch.float64)).x).all()


@pytest.mark.parametrize("solver,grid", [("ddim", "logsnr"), ("dpmpp_2m", "karras"), ("dpmpp_3m", "uniform"),
                                         ("unipc_2", "logsnr"), ("unipc_3", "uniform"), ("dpmpp_2s", "uniform")])
def test_data_form_solvers_start_at_alpha_zero_and_converge(solver, grid):
    sde, gm, m, x_T = _rf_problem()
    ref = _reference(gm, sde, x_T)
    errs = [float((sdekit.sample(m, x_T, solver, steps=n, grid=grid, t_end=0.0).x - ref).norm(dim=1).median())
            for n in (10, 40)]
    assert math.isfinite(errs[0]) and errs[1] < 0.5 * errs[0], errs


def test_lambda_grids_start_at_t_hi_then_mirror_eps():
    sde = sdekit.RectifiedFlow()
    for grid in ("logsnr", "karras"):
        ts = make_grid(sde, 5, grid, t_end=0.0)
        assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0 and bool(torch.isfinite(ts).all())
        assert abs(float(ts[1]) - (1 - sde.eps)) < 1e-12
    ts = make_grid(sde, 4, "uniform")
    torch.testing.assert_close(ts, torch.linspace(1.0, sde.eps, 5, dtype=torch.float64))


@pytest.mark.parametrize("path", ["rf", "cosine"])
def test_likelihood_matches_the_analytic_mixture_density_at_16d(path):
    sde = PATHS[path]
    gm = sdekit.GaussianMixture.default(dim=16, seed=0)
    x = gm.sample(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sdekit.log_likelihood(gm.model(sde), x, divergence="exact", rtol=1e-8, atol=1e-8)  # prior N(0, I): exact
    assert float((res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().max()) < 1e-4


@pytest.mark.parametrize("path, noise", [("rf", "rademacher"), ("shift3", "gaussian")])
def test_hutchinson_likelihood_matches_the_analytic_mixture_density_within_its_standard_error(path, noise):
    """Hutchinson's estimate through the probability-flow ODE from alpha(T) = 0 (prior N(0, I) = p_T exactly)
    against the analytic log-density of the mixture under the path: every row within 3.5 of its own standard
    errors, their mean within 3 standard errors of the mean, and the standard errors those of a real estimate
    (positive, small against the log-density's spread)."""
    sde = PATHS[path]
    gm = sdekit.GaussianMixture.default(dim=8, seed=2)
    x = gm.sample(8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = sdekit.log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=64, noise=noise, seed=11,
                                rtol=1e-7, atol=1e-7)
    truth = gm.log_prob(x, sde.eps, sde)
    assert res.stderr is not None and bool((res.stderr > 0).all())
    assert float(res.stderr.max()) < 0.5 * float(truth.std())  # an estimate that tells the rows apart
    z = (res.log_prob - truth) / res.stderr
    assert float(z.abs().max()) < 3.5, z
    assert abs(float(z.mean())) * math.sqrt(len(z)) < 3.0, z


def test_flow_matching_loss_of_the_exact_velocity_is_minimal_and_finite_at_T():
    sde, gm, m, _ = _rf_problem()
    gen = torch.Generator().manual_seed(2)
    x0 = gm.sample(4000, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = sdekit.losses.sample_time(sde, 4000, generator=gen, time_sampling="logit_normal")
    assert float(t.min()) >= sde.eps and float(t.max()) <= 1.0 and abs(float(t.median()) - 0.5) < 0.05
    exact = sdekit.flow_matching_loss(m, x0, t=t, noise=noise)
    worse = sdekit.flow_matching_loss(sdekit.ScoreModel(lambda x, tt: 1.05 * gm.velocity(x, tt, sde), sde, "velocity"),
                                      x0, t=t, noise=noise)
    assert float(exact) < float(worse)
    # at t = T the target is eps - x0 and the exact velocity there is x - mean: loss = E||x0 - mean||^2 / D
    at_T = sdekit.flow_matching_loss(m, x0, t=torch.ones(4000, dtype=torch.float64), noise=noise)
    expect = float((x0 - gm.mean()).pow(2).mean())
    assert abs(float(at_T) - expect) < 1e-9


def test_training_a_velocity_mlp_on_the_rectified_flow():
    torch.manual_seed(0)
    sde = sdekit.RectifiedFlow()
    data = sdekit.GaussianMixture.default(dim=2).sample(2000, generator=torch.Generator().manual_seed(0))
    net = sdekit.MLP(dim=2, width=64, depth=2)
    trainer = sdekit.Trainer(net, sde, data, "velocity", weighting="flow_matching", time_sampling="logit_normal",
                             batch_size=256, lr=2e-3, warmup=0)
    trainer.run(150, progress=False)
    assert trainer.hparams["time_sampling"] == "logit_normal"
    assert sum(trainer.losses[-20:]) / 20 < 0.8 * sum(trainer.losses[:20]) / 20
    x = sdekit.sample(trainer.ema_model(), torch.randn(64, 2), "dpmpp_2m", steps=8, grid="uniform").x
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ddim_equals_diffusers_flow_match_euler(shift):
    """Euler in t on the rectified flow, x + (t_s - t) u, is x_s = alpha_s x0 + sigma_s eps: DDIM."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(8)
    sde, gm, m, x_T = _rf_problem(n=16)
    x = x_T.clone()
    sigmas = sched.sigmas.double()
    for i, ts in enumerate(sched.timesteps):
        x = sched.step(gm.velocity(x, sigmas[i], sde), ts, x).prev_sample
    ours = sdekit.sample(m, x_T, "ddim", ts=sigmas)  # 1 ... 0: the last step is the x0 jump
    # diffusers steps in float32 (its sigmas and the sample are float32): 1e-6 relative to the state's scale
    assert float((ours.x - x).abs().max()) < 1e-6 * float(x.abs().max())


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_t_equals_diffusers_flow_match_heun(shift):
    """Heun in t on the velocity, the trapezoid rule, is FlowMatchHeunDiscreteScheduler on the same sigmas;
    its Euler last step to sigma = 0 is sdekit's x0 jump."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    sched.set_timesteps(6)
    sde, gm, m, x_T = _rf_problem(n=16)
    x = x_T.clone()
    for ts in sched.timesteps:  # two entries per Heun step: the scheduler keeps the stage itself
        sigma = sched.sigmas[sched.step_index if sched.step_index is not None else 0].double()
        x = sched.step(gm.velocity(x, sigma, sde), ts, x).prev_sample.double()
    grid = torch.unique_consecutive(sched.sigmas.double())
    ours = sdekit.sample(m, x_T, "heun_t", ts=grid)
    assert float((ours.x - x).abs().max()) < 1e-6 * float(x.abs().max())


def test_euler_and_heun_t_start_at_alpha_zero_and_converge():
    sde, gm, m, x_T = _rf_problem(n=32)
    ref = _reference(gm, sde, x_T)
    errs = {}  # median per-row error: the default mixture's sharp components make a few rows stiff
    for name in ("euler", "heun_t", "rk4"):
        errs[name] = [float((sdekit.sample(m, x_T, name, steps=k, grid="uniform", t_end=0.0).x - ref)
                            .norm(dim=1).median()) for k in (100, 200)]
    for name, order in (("euler", 1), ("heun_t", 2)):
        assert math.log2(errs[name][0] / errs[name][1]) > order - 0.3, (name, errs[name])
    assert errs["rk4"][1] < errs["heun_t"][1]


@pytest.mark.parametrize("sde", [sdekit.RectifiedFlow(), sdekit.CondOT(), sdekit.PolynomialPath(2.0), sdekit.CosinePath(),
                                 sdekit.TimeShift(sdekit.RectifiedFlow(), 3.0)])
def test_paths_round_trip_through_checkpoint_specs(sde):
    import json

    from sdekit.checkpoint import sde_from_spec, sde_to_spec

    back = sde_from_spec(json.loads(json.dumps(sde_to_spec(sde))))
    assert type(back) is type(sde) and repr(back) == repr(sde)
    t = torch.linspace(0.0, sde.T, 9, dtype=torch.float64)
    assert torch.equal(back.alpha(t), sde.alpha(t)) and torch.equal(back.sigma(t), sde.sigma(t))


def test_cli_trains_and_samples_a_rectified_flow(tmp_path):
    from sdekit.checkpoint import load_model
    from sdekit.cli import main

    out = tmp_path / "rf"
    assert main(["train", "--data", "moons", "--path", "rectified_flow", "--shift", "3", "--time-sampling",
                 "logit_normal", "--steps", "5", "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    model, cfg = load_model(out)
    assert isinstance(model.sde, sdekit.TimeShift) and model.prediction == "velocity"
    x = sdekit.sample(model, torch.randn(8, 2), "unipc_3", steps=6, grid="uniform", t_end=0.0).x
    assert torch.isfinite(x).all()


def test_edm_heun_refuses_a_grid_through_pure_noise():
    """heun steps in s = sigma/alpha, infinite at alpha = 0: a clear refusal, not a ZeroDivisionError."""
    model = sdekit.GaussianMixture.default(dim=2).model(sdekit.RectifiedFlow())
    with pytest.raises(ValueError, match="alpha = 0"):
        sdekit.sample(model, torch.randn(4, 2), "heun", steps=4, grid="uniform")


# -- issue 21, items 6 and 7: every sampler from pure noise, inversion to it, and PolynomialPath at T ------------------
FROM_NOISE = {"euler_ancestral": {"eta": 0.0}, "dpmpp_2s_ancestral": {"eta": 0.0}, "dpmpp_sde": {"eta": 0.0},
              "dpmpp_2m_sde": {"eta": 0.0}, "dpmpp_3m_sde": {"eta": 0.0}, "sa_solver": {"tau": 0.0},
              "restart": {"restarts": []}}


@pytest.mark.parametrize("solver", sorted(FROM_NOISE))
def test_stochastic_samplers_start_at_alpha_zero_by_their_limit(solver):
    """With their noise off these samplers are data-form ODE solvers, and from alpha = 0 (t = T) their first step is the
    limit of their update: with x0(x, t) = mu constant the flow x_t = (1 - t) mu + t x_T is integrated exactly,
    the infinite first step included (they raised ZeroDivisionError or NaN)."""
    sde = sdekit.RectifiedFlow()
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    model = sdekit.ScoreModel(lambda x, t: mu.expand_as(x), sde, prediction="x0")
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for ts in (torch.tensor([1.0, 0.7, 0.4, 0.05], dtype=torch.float64), make_grid(sde, 5, "logsnr", t_end=0.0)):
        t = float(ts[-1])
        got = sdekit.sample(model, x_T, solver, ts=ts, generator=0, **FROM_NOISE[solver]).x
        torch.testing.assert_close(got, (1 - t) * mu + t * x_T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", [sdekit.RectifiedFlow(), sdekit.CosinePath(), sdekit.TimeShift(sdekit.CondOT(), 3.0)],
                         ids=repr)
@pytest.mark.parametrize("solver", sorted(FROM_NOISE))
def test_stochastic_samplers_from_pure_noise_sample_the_mixture(sde, solver):
    """With their noise on (defaults), from exact p_T draws: the samples' mean and spread are the data's."""
    gm = sdekit.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.2, -0.4]], [0.45, 0.6])
    x_T = gm.sample_t(2000, sde.T, sde, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = sdekit.sample(gm.model(sde), x_T, solver, 40, t_end=0.0, generator=1).x
    std = torch.diagonal(gm.covariance()).sqrt()
    assert float(((x.mean(0) - gm.mean()) / std).abs().max()) < 0.1, (x.mean(0), gm.mean())
    assert float((x.std(0) / std - 1).abs().max()) < 0.15, (x.std(0), std)  # euler_ancestral: 0.11 low at 40 steps


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "dpmpp_2s"])
@pytest.mark.parametrize("sde", [sdekit.RectifiedFlow(), sdekit.CosinePath()], ids=repr)
def test_data_form_inversion_reaches_pure_noise(solver, sde):
    """Inversion eps -> T (alpha(T) = 0) ends with the data-form step's limit there (it gave "state became NaN"):
    finite, converging to the RK4 inversion."""
    gm = sdekit.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.2, -0.4]], [0.45, 0.6])
    model = gm.model(sde)
    x = gm.sample_t(32, sde.eps, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sdekit.sample(model, x, "rk4", 200, t_start=sde.eps, t_end=sde.T).x
    errs = [float((sdekit.sample(model, x, solver, n, t_start=sde.eps, t_end=sde.T).x - ref).norm(dim=1).median())
            for n in (10, 40)]
    assert errs[1] < 0.15 and errs[1] < 0.5 * errs[0], errs  # ddim, first order: 0.36 -> 0.10


def test_polynomial_path_at_T_refuses_x0_solvers_by_name_with_the_remedy():
    """PolynomialPath(2): alpha'(T) = sigma'(T) = 0, so a velocity network says u(x, T) = 0 for every x and x0 at T
    is 0/0 (it was "the network returned NaN"). x0-, eps- and score-based solvers are refused before any network
    call, naming the solver, the path and the remedy; started just below T they run and agree with the velocity
    solvers, which start at T itself."""
    sde = sdekit.PolynomialPath(2.0)
    gm = sdekit.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.2, -0.4]], [0.45, 0.6])
    exact = gm.model(sde)
    calls = []
    model = sdekit.ScoreModel(lambda x, t: calls.append(1) or exact.net(x, t), sde, "velocity")
    x_T = gm.sample_t(32, sde.T, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for solver in ("dpmpp_2m", "unipc_3", "ddim", "euler_ancestral", "dpmpp_2m_sde"):
        with pytest.raises(ValueError, match=rf"'{solver}'.*x0 at t = 1.*PolynomialPath.*t_start"):
            sdekit.sample(model, x_T, solver, 10, generator=0)
        assert not calls
    ref = sdekit.sample(model, x_T, "rk4", 200, t_end=0.0).x
    for solver in ("euler", "heun_t", "dopri5"):
        assert float((sdekit.sample(model, x_T, solver, 40, t_end=0.0).x - ref).abs().max()) < 0.15  # euler: 0.09
    below = sdekit.sample(model, x_T, "dpmpp_2m", 40, t_start=1 - 1e-3, t_end=0.0).x
    assert float((below - ref).norm(dim=1).median()) < 0.05  # 0.02 measured
