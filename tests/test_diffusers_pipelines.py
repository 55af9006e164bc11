"""Every eligible solver in the pipelines the goal of issue 22 names, built from tiny configs (random weights, no
download): an unmodified class-conditional transformer pipeline (DiTPipeline), and Stable Diffusion's text-conditional
UNet2DConditionModel loop with classifier-free guidance, plain and inpainting-style (StableDiffusionPipeline itself
needs `transformers`, not a dependency). DDPM/DDIM pipelines: test_diffusers_conformance; flow matching (SD3's
loop with an SD3Transformer2DModel): test_diffusers_flow."""
import inspect

import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import SdekitScheduler, eligible_solvers, from_diffusers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
SOLVERS = eligible_solvers()


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                  out_channels=8, num_layers=1, sample_size=8, patch_size=2,
                                                  num_embeds_ada_norm=1000, norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8,
                                  sample_size=8).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dit_images(pipe, scheduler, seed=0):
    pipe.scheduler = scheduler
    torch.manual_seed(seed)  # DiTPipeline passes no generator to step: stochastic solvers draw from torch's own
    return pipe(class_labels=[1, 3], num_inference_steps=3, guidance_scale=4.0, output_type="pt",
                generator=torch.Generator().manual_seed(seed)).images


def test_every_eligible_solver_in_an_unmodified_dit_pipeline(dit):
    """DiTPipeline (guidance on a doubled batch, a learned-sigma output split by the pipeline, no generator to step):
    every eligible solver runs, the same seed gives the same images, and ddim / dpmpp_2m give DDIMScheduler's and
    DPMSolverMultistepScheduler's images."""
    base = dit.scheduler.config
    for solver in SOLVERS:
        a = _dit_images(dit, SdekitScheduler.from_config(base, solver=solver))
        assert a.shape == (2, 3, 8, 8) and bool(torch.isfinite(a).all()), solver
        assert torch.equal(a, _dit_images(dit, SdekitScheduler.from_config(base, solver=solver))), solver
    ref = _dit_images(dit, diffusers.DDIMScheduler.from_config(base))
    assert float((_dit_images(dit, SdekitScheduler.from_config(base, solver="ddim")) - ref).abs().max()) < 1e-5
    ref = _dit_images(dit, diffusers.DPMSolverMultistepScheduler.from_config(base))
    ours = SdekitScheduler.from_config(base, solver="dpmpp_2m", solver_options={"lower_order_final": False})
    assert float((_dit_images(dit, ours) - ref).abs().max()) < 1e-5


@pytest.fixture(scope="module")
def sd():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
    base = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # SD 1.x's
    gen = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(1, 5, 16, generator=gen), torch.randn(1, 5, 16, generator=gen)
    latents, known = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    mask = (torch.arange(8) < 4).to(torch.float32).expand(2, 1, 8, 8)
    return unet, base, cond, uncond, latents, known, mask


def _sd_loop(unet, sched, cond, uncond, latents, steps=3, seed=0, known=None, mask=None, guidance=5.0):
    """StableDiffusionPipeline.__call__'s denoising loop (prepare_extra_step_kwargs: eta and generator where step takes
    them), and StableDiffusionInpaintPipeline's for a 4-channel U-Net: after each step but the last, the known part
    is put back noised to the next timestep, x <- (1 - mask) add_noise(known, noise, t_next) + mask x."""
    sched.set_timesteps(steps)
    params = set(inspect.signature(sched.step).parameters)
    gen = torch.Generator().manual_seed(seed)
    extra = {k: v for k, v in (("eta", 0.0), ("generator", gen)) if k in params}
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + 1))
    emb = torch.cat([uncond.expand(len(latents), -1, -1), cond.expand(len(latents), -1, -1)])
    x = latents * sched.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            out_u, out_c = unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
            x = sched.step(out_u + guidance * (out_c - out_u), t, x, **extra).prev_sample
            if known is not None and i < len(sched.timesteps) - 1:
                x = (1 - mask) * sched.add_noise(known, noise, sched.timesteps[i + 1:i + 2]) + mask * x
    return x


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_eligible_solver_in_a_text_conditional_sd_loop(sd, solver):
    """Stable Diffusion's loop with a tiny UNet2DConditionModel, guidance 5, 3 steps: a deterministic solver takes
    sdekit.sample's steps on from_diffusers(unet, ..., guidance_scale=5) (to 1e-5 relative); a stochastic one gives the
    same latents for the same generator seed. The inpainting loop runs from the blended latents: its result differs
    from the plain loop's, and a mask of ones (nothing known) gives the plain loop's result exactly."""
    unet, base, cond, uncond, latents, known, mask = sd
    sched = SdekitScheduler.from_config(base.config, solver=solver)
    x = _sd_loop(unet, sched, cond, uncond, latents)
    assert bool(torch.isfinite(x).all())
    if sdekit.solvers.registry.get(solver).stochastic and solver != "ddim":  # ddim: eta = 0 here
        assert torch.equal(_sd_loop(unet, sched, cond, uncond, latents), x)
    else:
        model = from_diffusers(unet, base, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond,
                               guidance_scale=5.0)
        with torch.no_grad():
            ref = sdekit.sample(model, latents, solver, ts=sched.ts).x
        assert float((x - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    inpainted = _sd_loop(unet, sched, cond, uncond, latents, known=known, mask=mask)
    assert bool(torch.isfinite(inpainted).all()) and float((inpainted - x).abs().max()) > 1e-3
    assert torch.equal(_sd_loop(unet, sched, cond, uncond, latents, known=known, mask=torch.ones_like(mask)), x)
