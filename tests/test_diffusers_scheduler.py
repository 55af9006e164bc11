"""SdekitScheduler: sdekit solvers inside unmodified diffusers pipelines."""
import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import SdekitScheduler, eligible_solvers, from_diffusers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice


def _tiny_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():  # keep a random x0 prediction inside [-1, 1] so the pipeline's final clamp does not hide errors
        unet.conv_out.weight.mul_(0.5)
        unet.conv_out.bias.mul_(0.5)
    return unet


def _without_generator(cls):
    """diffusers' UniPC step takes no generator, which DDPMPipeline passes: the reference drops it."""
    class Reference(cls):
        def step(self, *args, generator=None, **kwargs):
            return super().step(*args, **kwargs)

    return Reference


def _images(pipe, scheduler, steps=10, **kw):
    pipe.scheduler = scheduler
    return pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(3),
                output_type="np", **kw).images


PIPELINE_CASES = [  # (diffusers scheduler, config changes, sdekit solver, its options)
    ("DPMSolverMultistepScheduler", {}, "dpmpp_2m", {"lower_order_final": False}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, "dpmpp_2m", {"lower_order_final": False}),
    ("UniPCMultistepScheduler", {}, "unipc_2", {"lower_order_final": False}),
    ("UniPCMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}, "unipc_3",
     {"lower_order_final": True}),
    ("DDIMScheduler", {}, "ddim", {}),
]


@pytest.mark.parametrize("cls_name,config,solver,options", PIPELINE_CASES)
def test_ddpm_pipeline_output_equals_diffusers_scheduler(cls_name, config, solver, options):
    """pipe.scheduler = SdekitScheduler.from_config(pipe.scheduler.config, solver=...) in an unmodified
    DDPMPipeline gives diffusers' own scheduler's images (same algorithm, same grid) to 1e-5."""
    unet = _tiny_unet()
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    ref_sched = _without_generator(getattr(diffusers, cls_name)).from_config(base.config, **config)
    ours_sched = SdekitScheduler.from_config(base.config, solver=solver, solver_options=options, **config)
    ref = _images(pipe, ref_sched)
    ours = _images(pipe, ours_sched)
    assert ours_sched.timesteps.tolist() == ref_sched.timesteps.tolist()
    assert abs(ours - ref).max() < 1e-5, abs(ours - ref).max()


def test_ddim_pipeline_with_eta_and_thresholding():
    """DDIMPipeline passes eta and use_clipped_model_output; dynamic thresholding as DPMSolverMultistep's."""
    unet = _tiny_unet()
    base = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample",
                                   timestep_spacing="trailing")
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    ref = _images(pipe, diffusers.DDIMScheduler.from_config(base.config), steps=8)
    ours = _images(pipe, SdekitScheduler.from_config(base.config, solver="ddim"), steps=8)
    assert abs(ours - ref).max() < 1e-5
    with pytest.raises(ValueError, match="solver_options fixes eta"):
        _images(pipe, SdekitScheduler.from_config(base.config, solver="ddim", solver_options={"eta": 0.5}), steps=8,
                eta=1.0)
    # thresholding: DDIM's own update keeps the unclipped eps, so compare with DPM-Solver++ (consistent x0)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    cfg = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2}
    ref = _images(pipe, diffusers.DPMSolverMultistepScheduler.from_config(base.config, **cfg), steps=8)
    ours = _images(pipe, SdekitScheduler.from_config(base.config, solver="dpmpp_2m", solver_options={
        "lower_order_final": False}, grid_scheduler="dpmsolver_multistep", **cfg), steps=8)
    assert abs(ours - ref).max() < 1e-5


def _mixture_loop(scheduler, model, x, steps, begin=0):
    """A pipeline's loop with an exact eps 'network' (a GaussianMixture), as a Stable Diffusion pipeline runs it."""
    scheduler.set_timesteps(steps)
    if begin:
        scheduler.set_begin_index(begin)
    x = x * scheduler.init_noise_sigma
    for tau in scheduler.timesteps[begin:]:
        inp = scheduler.scale_model_input(x, tau)
        eps = model.eps(inp, (float(tau) + 1) / model.sde.N)
        x = scheduler.step(eps, tau, x).prev_sample
    return x


DETERMINISTIC = [n for n in eligible_solvers() if not sdekit.solvers.registry.get(n).stochastic] + ["ddim"]


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_every_eligible_solver_in_a_pipeline_loop_equals_sdekit_sample(solver):
    """Inside a pipeline's loop, each one-call-per-step solver takes exactly the steps sdekit.sample takes on the
    same grid (the scheduler is the solver, not an approximation of it), img2img-style late starts included.
    10 trailing steps: DDIM's tau -> tau - N // K steps are then the grid's (other counts: test_diffusers_solvers)."""
    sde = sdekit.DiscreteVPSDE.linear(1000)
    model = sdekit.GaussianMixture.default(dim=3).model(sde)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = SdekitScheduler(num_train_timesteps=1000, solver=solver, timestep_spacing="trailing")
    for begin in (0, 3):
        out = _mixture_loop(sched, model, x, 10, begin)
        sol = sdekit.sample(model, x, solver, ts=sched.ts[begin:])
        assert sol.nfe == 10 - begin
        torch.testing.assert_close(out, sol.x, rtol=1e-10, atol=1e-10)


def test_stochastic_solver_follows_the_pipeline_generator():
    unet = _tiny_unet()
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    a = _images(pipe, SdekitScheduler.from_config(base.config, solver="ddpm"), steps=5)
    b = _images(pipe, SdekitScheduler.from_config(base.config, solver="ddpm"), steps=5)
    c = _images(pipe, SdekitScheduler.from_config(base.config, solver="ddim"), steps=5)
    assert (a == b).all() and abs(a - c).max() > 1e-3


def test_conditional_unet_loop_with_guidance():
    """A Stable-Diffusion-style loop (latents, CFG, scale_model_input) with SdekitScheduler equals sdekit.sample on
    from_diffusers(..., guidance_scale=) on the same grid."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
    base = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    gen = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(1, 5, 16, generator=gen), torch.randn(1, 5, 16, generator=gen)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    sched = SdekitScheduler.from_config(base.config, solver="unipc_3")
    sched.set_timesteps(6)
    emb = torch.cat([uncond, cond]).repeat_interleave(2, 0)
    x = latents * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out_u, out_c = unet(sched.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=emb).sample.chunk(2)
            x = sched.step(out_u + 7.5 * (out_c - out_u), t, x).prev_sample
        model = from_diffusers(unet, base, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond,
                               guidance_scale=7.5)
        ref = sdekit.sample(model, latents, "unipc_3", ts=sched.ts).x
    assert float((x - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))


def test_refusals():
    base = diffusers.DDPMScheduler().config
    with pytest.raises(ValueError, match="network calls per step"):
        SdekitScheduler.from_config(base, solver="heun")
    with pytest.raises(ValueError, match="unknown solver"):
        SdekitScheduler.from_config(base, solver="nope")
    with pytest.raises(ValueError, match="afs"):
        SdekitScheduler.from_config(base, solver="unipc_2", solver_options={"afs": True})
    with pytest.raises(ValueError, match="unknown option"):
        SdekitScheduler.from_config(base, solver="unipc_2", solver_options={"order": 3})
    with pytest.raises(ValueError, match="flow-matching"):  # diffusers' flow sigmas on a DPM-Solver grid
        SdekitScheduler.from_config(diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True,
                                                                          prediction_type="flow_prediction").config)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config)
    with pytest.raises(ValueError, match="shift=3.0 .a flow-matching setting"):
        SdekitScheduler.from_config(base, shift=3.0)
    with pytest.raises(ValueError, match="interpolation_type"):
        SdekitScheduler.from_config(diffusers.EulerDiscreteScheduler(interpolation_type="log_linear").config)
    sched = SdekitScheduler.from_config(base, solver="dpmpp_2m")
    x = torch.zeros(1, 2)
    sched.set_timesteps(4)
    sched.step(torch.zeros(1, 2), sched.timesteps[0], x)
    with pytest.raises(ValueError, match="next on the grid"):
        sched.step(torch.zeros(1, 2), sched.timesteps[2], x)
