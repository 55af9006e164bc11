import pytest
import torch

import sdekit
from sdekit.interop import EDMSDE, from_denoiser


def test_edm_sde_schedule():
    sde = EDMSDE()
    t = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64)
    assert torch.equal(sde.alpha(t), torch.ones_like(t)) and torch.equal(sde.sigma(t), t)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t)
    # g^2 = d sigma^2 / dt = 2 t
    torch.testing.assert_close(sde.diffusion(t) ** 2, 2 * t)
    assert sde.prior_std() == 80.0


def _exact_denoiser(gm):
    """D(x, sigma) = E[x0 | x0 + sigma n = x] = x + sigma^2 grad log p_sigma(x) (Tweedie)."""
    edm = EDMSDE(sigma_min=1e-3, sigma_max=100.0)

    def D(x, sigma):
        s = sigma.to(torch.float64)
        return x + s[:, None] ** 2 * gm.score(x, s, edm)

    return D


@pytest.mark.parametrize("sde", [EDMSDE(), sdekit.VESDE(0.01, 50.0), sdekit.VPSDE(), sdekit.CosineVPSDE()])
def test_denoiser_wrapper_gives_exact_score(sde):
    """D(x/alpha, sigma/alpha) is the x0 posterior mean for any linear SDE, so the wrapped exact
    denoiser reproduces the mixture's exact score under that SDE."""
    gm = sdekit.GaussianMixture.default(dim=3)
    model = from_denoiser(_exact_denoiser(gm), sde)
    assert model.prediction == "x0"
    gen = torch.Generator().manual_seed(0)
    for u in (0.1, 0.5, 0.9):
        t = torch.tensor(sde.eps + u * (min(sde.T, 50.0) - sde.eps), dtype=torch.float64)
        x = gm.sample_t(16, t, sde, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(model.score(x, t), gm.score(x, t, sde), rtol=1e-6, atol=1e-8)


# -- diffusers -------------------------------------------------------------------------------------
def _tiny_unet(diffusers):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_scheduler_betas_become_discrete_vpsde(schedule):
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import sde_from_scheduler

    sched = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule=schedule)
    sde = sde_from_scheduler(sched)
    assert isinstance(sde, sdekit.DiscreteVPSDE) and sde.N == 100
    torch.testing.assert_close(sde.betas.float(), sched.betas, rtol=1e-5, atol=1e-7)
    tn = sde.step_time(torch.arange(100))
    torch.testing.assert_close(sde.alpha(tn) ** 2, sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ptype,kind", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_diffusers_unet_plugs_in(ptype, kind):
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import from_diffusers

    unet = _tiny_unet(diffusers)
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, prediction_type=ptype, clip_sample=False)
    model = from_diffusers(unet, sched)
    assert model.prediction == kind and model.sde.N == 50
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=gen)
    with torch.no_grad():
        for n in (0, 17, 49):
            t = model.sde.step_time(n)
            raw = unet(x, n).sample
            torch.testing.assert_close(model.predict(x, t, kind), raw, rtol=1e-5, atol=1e-6)
            # the x0 that diffusers' own DDPM step infers equals sdekit's conversion
            step = sched.step(raw, n, x, generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(model.x0(x, t), step.pred_original_sample, rtol=1e-4, atol=1e-4)
        # between grid points the timestep is fractional: t = (n + 1/2 + 1)/N -> n + 1/2
        t_mid = torch.full((3,), (10.5 + 1) / 50, dtype=torch.float64)
        torch.testing.assert_close(model.net(x, t_mid.float()), unet(x, torch.full((3,), 10.5)).sample)
