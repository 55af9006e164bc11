"""DDPM ancestral sampling and DDIM on a beta table: the published discrete updates, step by step."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import RowNoise, sample
from sdekit.solvers.discrete import table_grid, table_steps



def setup(n_train=1000, dim=3, batch=4, seed=0):
    sde = sdekit.DiscreteVPSDE.linear(n_train)
    model = sdekit.GaussianMixture.default(dim=dim).model(sde)
    x = sde.prior_sample((batch, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sde, model, x


def test_table_steps_spacings():
    assert table_steps(1000, 50) == list(range(0, 1000, 20))[::-1]
    assert table_steps(1000, 50, "trailing") == list(range(999, 0, -20))
    assert table_steps(1000, 1000) == list(range(999, -1, -1))
    assert table_steps(10, 4, "linspace") == [9, 6, 3, 0]
    with pytest.raises(ValueError, match="spacing"):
        table_steps(1000, 10, "middle")
    with pytest.raises(ValueError, match="steps"):
        table_steps(10, 11)


def test_table_grid_is_the_tables_own_times_then_zero():
    sde = sdekit.DiscreteVPSDE.linear(1000)
    ts = table_grid(sde, 50)
    assert ts.shape == (51,) and float(ts[-1]) == 0.0
    tau = torch.arange(980, -1, -20, dtype=torch.float64)
    assert torch.equal(ts[:-1], (tau + 1) / 1000)
    # alpha^2 at those times is abar exactly
    assert torch.allclose(sde.alpha(ts[:-1]) ** 2, sde.alphas_cumprod[tau.long()], rtol=1e-13)
    with pytest.raises(ValueError, match="DiscreteVPSDE"):
        sample(sdekit.GaussianMixture.default(2).model(sdekit.VPSDE()), torch.zeros(1, 2), "ddim", steps=5,
               grid="table")


def _abar(sde, t):
    """abar at a grid time (1 at t = 0)."""
    return 1.0 if t == 0 else float(sde.alphas_cumprod[round(t * sde.N) - 1])


@pytest.mark.parametrize("steps,spacing", [(1000, "leading"), (50, "leading"), (20, "trailing")])
def test_ddpm_equals_the_published_posterior_step(steps, spacing):
    """x_prev = mean + sqrt(beta~) z with Ho et al.'s posterior mean in (x0, x_t), beta_n = 1 - abar_n/abar_prev,
    beta~ = (1 - abar_prev)/(1 - abar_n) beta_n; z the solver's own per-row noise; the last step (abar_prev = 1)
    is the noiseless jump to x0. Checked one step at a time along the solver's trajectory."""
    sde, model, x = setup()
    if steps == 1000:
        sde, model, x = setup(n_train=1000, batch=2)
    ts = table_grid(sde, steps, spacing=spacing)
    sol = sample(model, x, "ddpm", steps=steps, grid="table", grid_options={"spacing": spacing},
                 generator=42, trajectory=True)
    assert sol.nfe == steps and torch.equal(sol.ts, ts)
    noise = RowNoise(42, x.shape[0])
    for i in range(steps):
        xt, t, s = sol.trajectory[i], float(ts[i]), float(ts[i + 1])
        ab, ab_prev = _abar(sde, t), _abar(sde, s)
        beta = 1 - ab / ab_prev
        eps = model.eps(xt, ts[i])
        x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * xt
        var = (1 - ab_prev) / (1 - ab) * beta
        expected = mean + math.sqrt(var) * noise.randn_like(xt) if var > 0 else mean
        assert torch.allclose(sol.trajectory[i + 1], expected, rtol=1e-6, atol=1e-9), i
    # t = 0 step: the x0 prediction, no noise
    assert torch.allclose(sol.x, model.x0(sol.trajectory[-2], ts[-2]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_equals_the_published_update(eta):
    """Song et al. 2021 eq. 12 with sigma_n(eta) = eta sqrt((1 - abar_prev)/(1 - abar_n)) sqrt(1 - abar_n/abar_prev)."""
    sde, model, x = setup()
    ts = table_grid(sde, 25)
    sol = sample(model, x, "ddim", steps=25, grid="table", eta=eta, generator=3, trajectory=True)
    noise = RowNoise(3, x.shape[0])
    for i in range(25):
        xt, t, s = sol.trajectory[i], float(ts[i]), float(ts[i + 1])
        ab, ab_prev = _abar(sde, t), _abar(sde, s)
        eps = model.eps(xt, ts[i])
        x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sig = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sig**2) * eps
        if sig > 0:
            expected = expected + sig * noise.randn_like(xt)
        assert torch.allclose(sol.trajectory[i + 1], expected, rtol=1e-6, atol=1e-9), i


def test_ddpm_is_ddim_eta_one():
    sde, model, x = setup(batch=5)
    a = sample(model, x, "ddpm", steps=40, grid="table", generator=9).x
    b = sample(model, x, "ddim", steps=40, grid="table", eta=1.0, generator=9).x
    assert torch.equal(a, b)


def test_ddim_on_table_matches_denoise_convention():
    """The table grid's last step to t = 0 is what sample(..., denoise=True) does after stopping at t_0."""
    sde, model, x = setup()
    a = sample(model, x, "ddim", steps=50, grid="table").x
    ts = table_grid(sde, 50)[:-1]
    b = sample(model, x, "ddim", ts=ts, denoise=True).x
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


# -- against diffusers -------------------------------------------------------------------------------
def _diffusers_pair(cls_name, n_train=1000, **kw):
    diffusers = pytest.importorskip("diffusers")
    sched = getattr(diffusers, cls_name)(num_train_timesteps=n_train, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, clip_sample=False, **kw)
    # diffusers keeps its table in float32; use its betas for our table and our float64 cumprod for its
    # table, so both run the same numbers and the comparison is of the update formulas alone
    sde = sdekit.DiscreteVPSDE(sched.betas.double())
    sched.betas = sde.betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = sde.alphas_cumprod.clone()
    return sched, sde


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(spacing, eta):
    sched, sde = _diffusers_pair("DDIMScheduler", set_alpha_to_one=True, timestep_spacing=spacing)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    steps = 20
    sched.set_timesteps(steps)
    model = sdekit.GaussianMixture.default(dim=3).model(sde)
    x = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = sample(model, x, "ddim", steps=steps, grid="table", grid_options={"spacing": spacing}, eta=eta,
                 generator=5, trajectory=True)
    assert [round(float(t) * sde.N) - 1 for t in sol.ts[:-1]] == [int(t) for t in sched.timesteps]
    noise = RowNoise(5, 4)
    for i, tau in enumerate(sched.timesteps):
        xt = sol.trajectory[i]
        eps = model.eps(xt, sol.ts[i])
        z = noise.randn_like(xt) if (eta > 0 and i < steps - 1) else torch.zeros_like(xt)
        out = sched.step(eps, int(tau), xt, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(sol.trajectory[i + 1], out, rtol=1e-6, atol=1e-9), i


def test_ddpm_matches_diffusers():
    """DDPMScheduler adds its own noise: compare x_prev - std z for each library's (z, std) pair, with
    diffusers' z regenerated from the generator seed it was given."""
    sched, sde = _diffusers_pair("DDPMScheduler", variance_type="fixed_small")
    steps = 50
    sched.set_timesteps(steps)
    model = sdekit.GaussianMixture.default(dim=3).model(sde)
    x = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = sample(model, x, "ddpm", steps=steps, grid="table", generator=5, trajectory=True)
    assert [round(float(t) * sde.N) - 1 for t in sol.ts[:-1]] == [int(t) for t in sched.timesteps]
    noise = RowNoise(5, 4)
    for i, tau in enumerate(sched.timesteps):
        xt = sol.trajectory[i]
        eps = model.eps(xt, sol.ts[i])
        out = sched.step(eps, int(tau), xt, generator=torch.Generator().manual_seed(100 + i)).prev_sample
        if i < steps - 1:
            std = float(sched._get_variance(int(tau))) ** 0.5
            z_d = torch.randn(xt.shape, generator=torch.Generator().manual_seed(100 + i), dtype=xt.dtype)
            z_ours = noise.randn_like(xt)
            assert std > 0
            assert torch.allclose(sol.trajectory[i + 1] - std * z_ours, out - std * z_d, rtol=1e-6, atol=1e-9), i
        else:
            assert torch.allclose(sol.trajectory[i + 1], out, rtol=1e-6, atol=1e-9)


# -- the ``diffusers`` grid: sdekit solvers against diffusers' schedulers, step for step ------------------
def _scheduler(cls_name, sde, **kw):
    diffusers = pytest.importorskip("diffusers")
    sched = getattr(diffusers, cls_name)(num_train_timesteps=sde.N, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, **kw)
    sched.alphas_cumprod = sde.alphas_cumprod.clone()  # the same float64 table on both sides
    if hasattr(sched, "lambda_t"):
        sched.alpha_t, sched.sigma_t = sde.alphas_cumprod.sqrt(), (1 - sde.alphas_cumprod).sqrt()
        sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    return sched


def _run_diffusers(sched, model, x, ts, steps, ve):
    """diffusers' own loop with the exact eps, each call at the sdekit time of the scheduler's sigma."""
    from sdekit.solvers.discrete import grid_options_from  # noqa: F401  (the options come from the scheduler)

    sched.set_timesteps(steps)
    sde = model.sde
    ab = sde.alpha(ts) ** 2
    ours = ((1 - ab) / ab).sqrt()
    sample_ = x / float(sde.alpha(ts[0])) if ve else x
    for j, tau in enumerate(sched.timesteps):
        inp = sched.scale_model_input(sample_, tau) if ve else sample_
        k = int((ours - float(sched.sigmas[j])).abs().argmin()) if ve else j
        eps = model.eps(inp.double(), ts[k])
        sample_ = sched.step(eps, tau, sample_).prev_sample.double()
    return sample_ * float(sde.alpha(ts[-1])) if ve else sample_


CASES = [  # (diffusers class, its config, sdekit solver); order options from DIFFUSERS_ORDERS
    ("DPMSolverMultistepScheduler", {}, "dpmpp_2m"),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing", "use_karras_sigmas": True}, "dpmpp_2m"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "leading"}, "dpmpp_2m"),
    ("UniPCMultistepScheduler", {}, "unipc_2"),
    ("UniPCMultistepScheduler", {"timestep_spacing": "leading", "use_karras_sigmas": True}, "unipc_2"),
    ("UniPCMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}, "unipc_3"),
    ("EulerDiscreteScheduler", {}, "ddim"),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "use_karras_sigmas": True}, "ddim"),
    ("HeunDiscreteScheduler", {}, "heun"),
    ("HeunDiscreteScheduler", {"timestep_spacing": "leading"}, "heun"),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}, "ddim"),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("cls_name,config,solver", CASES)
@pytest.mark.parametrize("steps", [8, 20])
def test_solvers_on_the_diffusers_grid_match_diffusers(cls_name, config, solver, steps):
    """Same grid, same eps, same update: agreement to float32 rounding (diffusers steps in float32)."""
    from sdekit.solvers.discrete import DIFFUSERS_ORDERS, grid_options_from

    sde = sdekit.DiscreteVPSDE.linear(1000)
    model = sdekit.GaussianMixture.default(dim=3).model(sde)
    x = sde.prior_sample((4, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = _scheduler(cls_name, sde, **config)
    opts = grid_options_from(sched)
    orders = DIFFUSERS_ORDERS.get((opts["scheduler"], opts["final_sigmas_type"]))
    options = orders(steps) if orders else {}
    sol = sample(model, x, solver, steps=steps, grid="diffusers", grid_options=opts, **options)
    ref = _run_diffusers(sched, model, x, sol.ts, steps, ve=cls_name in ("EulerDiscreteScheduler",
                                                                          "HeunDiscreteScheduler"))
    assert sol.nfe == (2 * steps - 1 if solver == "heun" else steps) - (len(sol.ts) == steps)
    assert torch.allclose(sol.x, ref, rtol=2e-6, atol=2e-6), float((sol.x - ref).abs().max())
