"""Time grids: registration, monotone grids both ways, grids that end at sigma = 0, and diffusers' spacings."""
import functools
import itertools

import numpy as np
import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, grids, sample
from sdekit.solvers.discrete import SCHEDULERS, diffusers_grid, grid_options_from

NAMED = ["uniform", "quadratic", "logsnr", "karras"]
ZERO_END_SDES = {"vp": sdekit.VPSDE(), "ve": sdekit.VESDE(sigma_min=0.01, sigma_max=20.0)}
# every fixed-step solver; torchsde picks its own (many, on VE) steps, so it is left to test_solvers
FIXED = sorted(n for n, s in SOLVERS.items() if not s.adaptive and s.family != "backend" and n != "torchsde")


def smooth_mixture(dim=2):
    g = torch.Generator().manual_seed(5)
    return sdekit.GaussianMixture([0.4, 0.6], torch.randn(2, dim, generator=g, dtype=torch.float64), [0.5, 0.7])


def guarded(model):
    """The same model, failing if the network is ever called at a time of zero noise."""
    sde = model.sde

    def net(x, t):
        assert float(sde.sigma(t).min()) > 0, "network called at sigma = 0"
        return model.net(x, t)

    return sdekit.ScoreModel(net, sde, model.prediction)


@functools.lru_cache(maxsize=None)
def _reference(kind):
    """x_T and the fine reference at t = 0 (rk4, 200 log-SNR steps to sde.eps, then the jump)."""
    sde = ZERO_END_SDES[kind]
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, sample(smooth_mixture().model(sde), x, "rk4", steps=200, grid="logsnr", t_end=0.0).x


def rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


# -- registry and monotone grids -----------------------------------------------------------------------
def test_register_and_lookup():
    assert {"uniform", "quadratic", "logsnr", "karras", "table", "diffusers"} <= set(grids.GRIDS)
    with pytest.raises(ValueError, match="already registered"):
        grids.register("uniform")(grids.uniform)
    sde = sdekit.VPSDE()
    with pytest.raises(ValueError, match="unknown grid 'cubic'; accepted: .*karras"):
        grids.make_grid(sde, 3, "cubic")
    with pytest.raises(ValueError, match="sets its own end times"):
        grids.make_grid(sdekit.DiscreteVPSDE.linear(100), 3, "table", t_end=0.5)


def test_check_grid_accepts_strictly_monotone_either_way():
    sde = sdekit.VPSDE()
    for ts in ([0.9, 0.5, 0.1], [0.1, 0.5, 0.9]):
        assert torch.equal(grids.check_grid(sde, ts), torch.tensor(ts, dtype=torch.float64))
    for bad in ([0.5, 0.7, 0.1], [0.5, 0.5, 0.1], [0.1, 0.1]):
        with pytest.raises(ValueError, match="strictly monotone"):
            grids.check_grid(sde, bad)
    with pytest.raises(ValueError, match="must differ"):
        grids.make_grid(sde, 3, t_start=0.4, t_end=0.4)


@pytest.mark.parametrize("name", NAMED)
def test_inversion_grid_is_the_sampling_grid_reversed(name):
    for sde in ZERO_END_SDES.values():
        down = grids.make_grid(sde, 7, name, t_start=0.9, t_end=sde.eps)
        up = grids.make_grid(sde, 7, name, t_start=sde.eps, t_end=0.9)
        assert torch.equal(up, down.flip(0))


# -- grids that end at sigma = 0 ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("kind", sorted(ZERO_END_SDES))
def test_zero_noise_end_is_steps_minus_one_intervals_to_eps_then_zero(name, kind):
    sde = ZERO_END_SDES[kind]
    for steps in (1, 2, 7):
        ts = grids.make_grid(sde, steps, name, t_end=0.0)
        assert len(ts) == steps + 1 and float(ts[0]) == sde.T and float(ts[-1]) == 0.0
        if steps > 1:
            assert torch.equal(ts[:-1], grids.make_grid(sde, steps - 1, name, t_end=sde.eps))
    with pytest.raises(ValueError, match="sde.eps"):
        grids.make_grid(sdekit.VPSDE(eps=0.0), 4, name, t_end=0.0)


@pytest.mark.parametrize("kind", sorted(ZERO_END_SDES))
@pytest.mark.parametrize("name", FIXED)
def test_every_fixed_step_solver_ends_at_zero_without_calling_the_network_there(name, kind):
    """t_end = 0 on every named grid: the solve runs, the network never sees sigma = 0, the jump is
    counted, and deterministic solvers land near the fine reference (rk4, 200 log-SNR steps, same end)."""
    sde = ZERO_END_SDES[kind]
    model = guarded(smooth_mixture().model(sde))
    info = SOLVERS[name]
    x, ref = _reference(kind)
    for grid in NAMED if kind == "vp" else ["logsnr", "karras"]:
        steps = 20
        sol = sample(model, x, name, steps=steps, grid=grid, t_end=0.0, generator=1, trajectory=True)
        assert float(sol.ts[-1]) == 0.0 and len(sol.trajectory) == steps + 1
        base = round(info.nfe_per_step * (steps - 1)) + 1
        if name == "restart":  # its restart intervals add steps beyond the grid's own
            assert sol.nfe > base, (grid, sol.nfe)
        else:
            assert sol.nfe == base, (grid, sol.nfe)
        assert torch.isfinite(sol.x).all()
        if not info.stochastic and not (name in ("euler", "heun_t") and kind == "ve"):  # steps in t: poor on VE
            assert rms(sol.x, ref) < 0.15, (grid, rms(sol.x, ref))


def test_the_jump_is_alpha_zero_times_x0_and_denoise_is_the_same_jump():
    sde = sdekit.VPSDE()
    model = smooth_mixture().model(sde)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name in ("heun", "rk4", "dpmpp_2m", "euler"):
        sol = sample(model, x, name, steps=9, grid="logsnr", t_end=0.0, trajectory=True)
        torch.testing.assert_close(sol.x, model.x0(sol.trajectory[-2], sol.ts[-2]), rtol=0, atol=0)
        den = sample(model, x, name, steps=8, grid="logsnr", denoise=True)
        torch.testing.assert_close(den.x, sol.x, rtol=1e-14, atol=1e-14)
        assert den.nfe == sol.nfe and torch.equal(den.ts, sol.ts)
    # denoise on a grid that already ends at t = 0 adds nothing
    a = sample(model, x, "heun", steps=5, t_end=0.0, denoise=True)
    b = sample(model, x, "heun", steps=5, t_end=0.0)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe


def test_adaptive_solver_to_zero_goes_to_eps_then_jumps():
    sde = sdekit.VPSDE()
    model = guarded(smooth_mixture().model(sde))
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = sample(model, x, "dopri5", t_end=0.0, rtol=1e-6, atol=1e-6)
    assert sol.ts.tolist() == [sde.T, sde.eps, 0.0]
    ref = sample(model, x, "rk4", steps=100, t_end=0.0).x
    assert rms(sol.x, ref) < 1e-4


# -- diffusers' spacings ------------------------------------------------------------------------------
def _scheduler(diffusers, name, sde, **kw):
    cls = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
           "heun": "HeunDiscreteScheduler", "dpmsolver_multistep": "DPMSolverMultistepScheduler",
           "unipc_multistep": "UniPCMultistepScheduler", "deis_multistep": "DEISMultistepScheduler",
           "dpmsolver_singlestep": "DPMSolverSinglestepScheduler"}[name]
    sched = getattr(diffusers, cls)(num_train_timesteps=sde.N, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, **kw)
    # diffusers keeps abar in float32, where sigma_min = sqrt((1 - abar_0)/abar_0) has only ~4 digits:
    # give it our float64 table so the comparison is of the spacings alone
    sched.alphas_cumprod = sde.alphas_cumprod.clone()
    if hasattr(sched, "lambda_t"):
        sched.alpha_t, sched.sigma_t = sde.alphas_cumprod.sqrt(), (1 - sde.alphas_cumprod).sqrt()
        sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    return sched


def _cases():
    for name, (_, _, _, karras_ok, spacings) in SCHEDULERS.items():
        finals = ["zero", "sigma_min"] if name in ("euler", "dpmsolver_multistep", "unipc_multistep",
                                                   "dpmsolver_singlestep") else [None]
        for spacing, final, karras in itertools.product(spacings, finals, [False, True] if karras_ok else [False]):
            yield name, spacing, final, karras


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name,spacing,final,karras", list(_cases()))
def test_diffusers_grid_reproduces_the_schedulers_sigmas(name, spacing, final, karras):
    diffusers = pytest.importorskip("diffusers")
    sde = sdekit.DiscreteVPSDE.linear(1000)
    kw = {} if name == "dpmsolver_singlestep" else {"timestep_spacing": spacing}
    if final is not None:
        kw["final_sigmas_type"] = final
    if karras:
        kw["use_karras_sigmas"] = True
    for steps in (3, 7, 10, 25):
        sched = _scheduler(diffusers, name, sde, **kw)
        sched.set_timesteps(steps)
        opts = grid_options_from(sched)
        ts = grids.make_grid(sde, steps, "diffusers", **opts)
        ab = sde.alpha(ts) ** 2
        sig = ((1 - ab) / ab).sqrt()
        if name in ("ddim", "ddpm"):
            assert [round(float(t) * sde.N) - 1 for t in ts[:-1]] == sched.timesteps.tolist()
            assert float(ts[-1]) == 0.0
            continue
        ref = sched.sigmas.double()
        if name == "heun":  # diffusers repeats each inner sigma for its two stages
            ref = torch.cat([ref[:1], ref[1::2]])
        if len(ref) == len(sig) + 1:  # an empty last step in diffusers (see discrete.py): dropped here
            assert ref[-1] == ref[-2]
            ref = ref[:-1]
        np.testing.assert_allclose(sig.numpy(), ref.numpy(), rtol=2e-7, atol=1e-9)
        if not karras and (name not in ("euler", "heun") or spacing != "linspace"):
            # integer timesteps: the times are (tau + 1)/N exactly
            timesteps = torch.cat([sched.timesteps[:1], sched.timesteps[1::2]]) if name == "heun" else sched.timesteps
            assert torch.equal(ts[: len(timesteps)], (timesteps.double() + 1) / sde.N)


def test_diffusers_grid_errors():
    sde = sdekit.DiscreteVPSDE.linear(100)
    with pytest.raises(ValueError, match="unknown diffusers scheduler 'lms'; accepted: ddim"):
        grids.make_grid(sde, 5, "diffusers", scheduler="lms")
    with pytest.raises(ValueError, match="no Karras sigmas"):
        grids.make_grid(sde, 5, "diffusers", scheduler="ddim", karras=True)
    with pytest.raises(ValueError, match="spacing 'leading' for dpmsolver_singlestep"):
        grids.make_grid(sde, 5, "diffusers", scheduler="dpmsolver_singlestep", spacing="leading")
    with pytest.raises(ValueError, match="DiscreteVPSDE"):
        diffusers_grid(sdekit.VPSDE(), 5)
    # class names are accepted too
    assert torch.equal(grids.make_grid(sde, 5, "diffusers", scheduler="UniPCMultistepScheduler"),
                       grids.make_grid(sde, 5, "diffusers", scheduler="unipc_multistep"))


# -- every grid at 1, 2 and 3 steps (issue 21, item 8: diffusers' steps=1 gave [999], a negative-stride array) -------
@pytest.mark.parametrize("grid", list(grids.GRIDS))
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_every_grid_builds_at_one_two_and_three_steps(grid, steps):
    """On a DDPM table (where every grid applies) each grid gives a strictly decreasing grid of at most ``steps``
    intervals inside [0, T], and a solve on it finishes; every diffusers scheduler is walked."""
    sde = sdekit.DiscreteVPSDE.linear(1000)
    options = [{"scheduler": s} for s in SCHEDULERS] if grid == "diffusers" else [{}]
    model = sdekit.GaussianMixture.default(2).model(sde)
    for opts in options:
        ts = grids.make_grid(sde, steps, grid, **opts)
        assert 2 <= len(ts) <= steps + 1 and bool((ts[1:] < ts[:-1]).all()), (opts, ts)
        assert 0.0 <= float(ts[-1]) and float(ts[0]) <= sde.T
        sol = sample(model, torch.zeros(3, 2, dtype=torch.float64), "ddim", steps, grid=grid, grid_options=opts)
        assert bool(torch.isfinite(sol.x).all())
