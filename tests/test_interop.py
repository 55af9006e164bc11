import pytest
import torch

import sdekit
from sdekit.interop import EDMSDE, from_denoiser

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice


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


# -- conditional U-Nets, the scheduler config, diffusers' samplers as sdekit solves ---------------------------
def _tiny_cond_unet(diffusers, out_channels=4, **kw):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=out_channels, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, **kw).eval()
    with torch.no_grad():  # a random net's eps is far from any data's; shrink it so 10-step solves stay tame
        unet.conv_out.weight.mul_(0.3)
        unet.conv_out.bias.mul_(0.3)
    return unet


def _embeddings(batch=1, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 5, 16, generator=gen), torch.randn(batch, 5, 16, generator=gen)


def _diffusers_cfg_loop(sched, unet, latents, steps, cond, uncond, scale):
    """A Stable-Diffusion-style loop: [uncond, cond] in one call, out = uncond + s (cond - uncond)."""
    sched.set_timesteps(steps)
    x = latents * sched.init_noise_sigma
    emb = torch.cat([uncond.expand(x.shape[0], -1, -1), cond.expand(x.shape[0], -1, -1)])
    for t in sched.timesteps:
        inp = sched.scale_model_input(torch.cat([x, x]), t)
        out_u, out_c = unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
        x = sched.step(out_u + scale * (out_c - out_u), t, x).prev_sample
    return x


COND_CASES = [
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "prediction_type": "v_prediction"}),
    ("UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("UniPCMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": False}),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("cls_name,config", COND_CASES)
def test_conditional_unet_with_guidance_matches_diffusers_loop(cls_name, config):
    """UNet2DConditionModel + negative prompt + guidance_scale: sdekit's solve on the scheduler's own grid
    (``diffusers_equivalent``) equals diffusers' loop with the same U-Net (float32 throughout)."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet = _tiny_cond_unet(diffusers)
    sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                         beta_end=0.012, **config)
    cond, uncond = _embeddings()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steps, scale = 8, 5.0
    model = from_diffusers(unet, sched, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond,
                           guidance_scale=scale)
    with torch.no_grad():
        ours = sdekit.sample(model, latents, **diffusers_equivalent(sched, steps)).x
        ref = _diffusers_cfg_loop(sched, unet, latents, steps, cond, uncond, scale)
    err = float((ours - ref).abs().max())
    assert err < 1e-5 * max(1.0, float(ref.abs().max())), (err, float(ref.abs().max()))


def test_added_cond_kwargs_and_guidance_batching():
    """An SDXL-style U-Net (added text/time embeddings): the conditioning reaches the U-Net, batch-1 tensors are
    broadcast, and guidance equals uncond + s (cond - uncond) from two separate calls."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import from_diffusers

    unet = _tiny_cond_unet(diffusers, addition_embed_type="text_time", addition_time_embed_dim=8,
                           projection_class_embeddings_input_dim=16 + 6 * 8)
    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=100)
    gen = torch.Generator().manual_seed(4)
    cond, uncond = _embeddings()
    added = {"text_embeds": torch.randn(1, 16, generator=gen), "time_ids": torch.randn(1, 6, generator=gen)}
    neg_added = {"text_embeds": torch.randn(1, 16, generator=gen), "time_ids": added["time_ids"]}
    x = torch.randn(3, 4, 8, 8, generator=gen)
    n, s = 40, 3.0
    t = torch.full((3,), (n + 1) / 100, dtype=torch.float64)

    def raw(emb, add):
        return unet(x, torch.full((3,), float(n)), encoder_hidden_states=emb.expand(3, -1, -1),
                    added_cond_kwargs={k: v.expand(3, -1) for k, v in add.items()}).sample

    with torch.no_grad():
        plain = from_diffusers(unet, sched, encoder_hidden_states=cond, added_cond_kwargs=added)
        torch.testing.assert_close(plain.eps(x, t), raw(cond, added), rtol=1e-5, atol=1e-5)
        guided = from_diffusers(unet, sched, encoder_hidden_states=cond, added_cond_kwargs=added, guidance_scale=s,
                                negative_encoder_hidden_states=uncond, negative_added_cond_kwargs=neg_added)
        want = raw(uncond, neg_added) + s * (raw(cond, added) - raw(uncond, neg_added))
        torch.testing.assert_close(guided.eps(x, t), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="negative_"):
        from_diffusers(unet, sched, encoder_hidden_states=cond, guidance_scale=s)
    with pytest.raises(ValueError, match="pass guidance_scale"):
        from_diffusers(unet, sched, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond)
    with pytest.raises(ValueError, match="takes no conditioning"):
        from_diffusers(unet, sched, prompt_embeds=cond)


@pytest.mark.parametrize("variance_type", ["learned_range", "learned"])
def test_learned_variance_output_is_split(variance_type):
    """A 2C-channel output (improved DDPM, DeepFloyd IF): the first C channels are the prediction, any C."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import from_diffusers

    unet = _tiny_cond_unet(diffusers, out_channels=8)
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, variance_type=variance_type, clip_sample=False)
    cond, _ = _embeddings()
    model = from_diffusers(unet, sched, encoder_hidden_states=cond)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = unet(x, 17, encoder_hidden_states=cond.expand(2, -1, -1)).sample
        torch.testing.assert_close(model.eps(x, model.sde.step_time(17)), full[:, :4], rtol=1e-5, atol=1e-6)
        step = sched.step(full, 17, x, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.x0(x, model.sde.step_time(17)), step.pred_original_sample, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="learned"):
            from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=50), encoder_hidden_states=cond).eps(
                x, model.sde.step_time(17))


@pytest.mark.parametrize("config", [{"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
                                    {"clip_sample": True, "clip_sample_range": 0.8}])
def test_thresholding_matches_diffusers_x0(config):
    """clip_sample / dynamic thresholding act on x0; eps, score and v are derived from the thresholded x0."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import from_diffusers

    unet = _tiny_unet(diffusers)
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, **{"clip_sample": False, **config})
    model = from_diffusers(unet, sched)
    assert isinstance(model, sdekit.parameterization.ThresholdedModel)
    x = 3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    t = model.sde.step_time(45)
    with torch.no_grad():
        step = sched.step(unet(x, 45).sample, 45, x, generator=torch.Generator().manual_seed(0))
        x0 = model.x0(x, t)
        torch.testing.assert_close(x0, step.pred_original_sample, rtol=1e-5, atol=1e-5)
        a, s = float(model.sde.alpha(t)), float(model.sde.sigma(t))
        torch.testing.assert_close(model.eps(x, t), (x - a * x0) / s, rtol=1e-5, atol=1e-5)
        assert float(x0.abs().max()) <= 1.0 + 1e-6
        raw = from_diffusers(unet, sched, threshold=False)
        assert not isinstance(raw, sdekit.parameterization.ThresholdedModel) and float(raw.x0(x, t).abs().max()) > 1.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dpmsolver_with_thresholding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet = _tiny_unet(diffusers)
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, thresholding=True,
                                                  dynamic_thresholding_ratio=0.9)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = sdekit.sample(from_diffusers(unet, sched), x, **diffusers_equivalent(sched, 6)).x
        sched.set_timesteps(6)
        ref = x
        for t in sched.timesteps:
            ref = sched.step(unet(ref, t).sample, t, ref).prev_sample
    assert float((ours - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("cls_name,config,match", [
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, "flow-matching"),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "interpolation_type"),
    ("LCMScheduler", {}, "consistency"),
    ("EDMDPMSolverMultistepScheduler", {"prediction_type": "sample"}, "prediction_type=.sample. .*raise for it"),
])
def test_scheduler_settings_sdekit_cannot_honour_are_refused(cls_name, config, match):
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import from_diffusers

    sched = getattr(diffusers, cls_name)(**config)
    with pytest.raises(ValueError, match=match):
        from_diffusers(_tiny_unet(diffusers), sched)
    with pytest.raises(ValueError, match="unknown to sdekit"):
        from_diffusers(_tiny_unet(diffusers), {**diffusers.DDPMScheduler().config, "snr_shift_scale": 3.0})


@pytest.mark.parametrize("config", [{"use_exponential_sigmas": True}, {"lambda_min_clipped": -5.1},
                                    {"use_lu_lambdas": True}])
def test_grid_settings_without_a_sdekit_grid(config):
    """Sigma families only SdekitScheduler lays out (from diffusers' own set_timesteps): the model is built,
    diffusers_equivalent (grid="diffusers") refuses them by name."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    sched = diffusers.DPMSolverMultistepScheduler(**config)
    from_diffusers(_tiny_unet(diffusers), sched)
    with pytest.raises(ValueError, match=next(iter(config))):
        diffusers_equivalent(sched, 8)


@pytest.mark.parametrize("cls_name,config", [("DDIMScheduler", {"steps_offset": 1}),
                                             ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
                                             ("UniPCMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1})])
def test_timestep_spacing_and_offset_reach_the_grid(cls_name, config):
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, sde_from_scheduler

    sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, **config)
    sched.set_timesteps(7)
    kw = diffusers_equivalent(sched, 7)
    ts = sdekit.solvers.grids.make_grid(sde_from_scheduler(sched), 7, kw["grid"], **kw["grid_options"])
    assert [round(float(t) * 1000) - 1 for t in ts[:-1]] == sched.timesteps.tolist()


def test_float32_sigmas_map_to_times():
    """diffusers' float32 sigma_max lies a rounding error past the float64 table's end: taken as the end."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import sde_from_scheduler, times_from_sigmas

    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                             beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    sched.set_timesteps(10)
    sde = sde_from_scheduler(sched)
    lam = -2 * torch.log(sched.sigmas[:1].double())
    if float(lam) < float(sde.log_snr(1.0)):  # the case that made t_from_log_snr raise
        with pytest.raises(ValueError):
            sde.t_from_log_snr(lam)
    ts = times_from_sigmas(sde, sched.sigmas)
    assert float(ts[-1]) == 0.0
    torch.testing.assert_close(ts[:-1] * 1000 - 1, sched.timesteps.double(), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="exceeds"):
        times_from_sigmas(sde, sched.sigmas * 1.01)


# -- flow matching: FlowMatch Euler/Heun schedulers are the rectified-flow path with a velocity network ----------
class _FlowTransformer(torch.nn.Module):
    """A plain module with a diffusers transformer's call signature (hidden_states, timestep=, return_dict=):
    a random, time-dependent, non-linear velocity field."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = torch.nn.Linear(64, 64)
        self.scale = torch.nn.Parameter(torch.randn(64) * 0.5)

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, return_dict=True):
        h = hidden_states.reshape(hidden_states.shape[0], -1)
        s = (timestep / 1000.0).reshape(-1, 1)
        out = torch.tanh(self.lin(h) * (1 + s)) + self.scale * s - 0.3 * h
        if encoder_hidden_states is not None:
            out = out + encoder_hidden_states.reshape(out.shape[0], -1)[:, :1]
        out = out.reshape(hidden_states.shape)
        return (out,) if not return_dict else {"sample": out}


def _diffusers_flow_loop(diffusers, sched, net, x, steps):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = net(x, timestep=t.expand(x.shape[0]), return_dict=False)[0]
        x = sched.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("cls_name, shift, solver, steps", [
    ("FlowMatchEulerDiscreteScheduler", 1.0, "ddim", 7),
    ("FlowMatchEulerDiscreteScheduler", 1.0, "euler", 7),
    ("FlowMatchEulerDiscreteScheduler", 3.0, "ddim", 7),
    ("FlowMatchHeunDiscreteScheduler", 1.0, "heun_t", 5),
])
def test_flow_match_schedulers_become_the_rectified_flow_and_sample_the_same(cls_name, shift, solver, steps):
    """from_diffusers gives the rectified-flow path (time-shifted at shift != 1) and the velocity prediction;
    diffusers_equivalent's solve on it equals diffusers' own scheduler loop with the same network to 1e-5."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    net = _FlowTransformer().eval()
    sched = getattr(diffusers, cls_name)(shift=shift)
    model = from_diffusers(net, sched)
    assert model.prediction == "velocity" and float(model.sde.alpha(1.0)) == 0.0
    assert isinstance(model.sde, sdekit.TimeShift if shift != 1 else sdekit.RectifiedFlow)
    kw = diffusers_equivalent(sched, steps)
    if solver == "euler":  # Euler in t is Euler in sigma on the unshifted path
        kw["solver"] = "euler"
    assert kw["solver"] == solver
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = sdekit.sample(model, x, **kw).x
        ref = _diffusers_flow_loop(diffusers, sched, net, x, steps)
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))


def test_a_flow_match_unet_with_guidance_samples_like_diffusers():
    """A transformer-style module read through a FlowMatchEuler config (shift 2), conditioning by keyword with
    classifier-free guidance: equal to diffusers' loop on the guided velocity."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    net = _FlowTransformer().eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0)
    cond, neg = torch.full((1, 64), 0.5), torch.zeros(1, 64)
    model = from_diffusers(net, sched, guidance_scale=3.0, encoder_hidden_states=cond,
                           negative_encoder_hidden_states=neg)

    def guided(x, timestep, return_dict=False):
        u = net(x, timestep=timestep, encoder_hidden_states=neg.expand(x.shape[0], -1), return_dict=False)[0]
        c = net(x, timestep=timestep, encoder_hidden_states=cond.expand(x.shape[0], -1), return_dict=False)[0]
        return (u + 3.0 * (c - u),)

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = sdekit.sample(model, x, **diffusers_equivalent(sched, 6)).x
        ref = _diffusers_flow_loop(diffusers, sched, guided, x, 6)
    assert float((ours - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("config, match", [
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"shift_terminal": 0.1}, "shift_terminal"),
    ({"use_karras_sigmas": True}, "use_karras_sigmas"),
    ({"stochastic_sampling": True}, "stochastic_sampling"),
    ({"invert_sigmas": True}, "invert_sigmas"),
])
def test_flow_match_settings_sdekit_cannot_honour_are_refused_by_name(config, match):
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    sched = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    with pytest.raises(ValueError, match=match):
        from_diffusers(_FlowTransformer(), sched)
    with pytest.raises(ValueError, match="unknown to sdekit"):
        from_diffusers(_FlowTransformer(), {**dict(diffusers.FlowMatchEulerDiscreteScheduler().config),
                                            "_class_name": "FlowMatchEulerDiscreteScheduler", "mu": 1.0})
    with pytest.raises(ValueError, match="Heun's method"):
        diffusers_equivalent(diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0), 5)


def test_a_flow_match_unet2d_samples_like_diffusers():
    """A tiny random diffusers UNet2DModel as a FlowMatchEuler (shift 3) velocity network: sdekit's ddim on
    diffusers_equivalent's grid equals diffusers' loop."""
    diffusers = pytest.importorskip("diffusers")
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet = _tiny_unet(diffusers)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = sdekit.sample(from_diffusers(unet, sched), x, **diffusers_equivalent(sched, 5)).x
        ref = _diffusers_flow_loop(diffusers, sched, unet, x, 5)
    assert float((ours - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))
