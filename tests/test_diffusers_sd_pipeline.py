"""Every eligible solver in an unmodified diffusers StableDiffusionPipeline and StableDiffusionInpaintPipeline
(4-channel U-Net: the pipeline blends the known latents back in after every step), built from tiny components with
random weights and no download: a CLIPTokenizer loaded from a temporary folder holding a letter vocabulary, a
one-layer CLIPTextModel, a two-block UNet2DConditionModel and a one-block AutoencoderKL (8x8 images, 8x8 latents)."""
import json
import string

import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from sdekit.interop import SdekitScheduler, eligible_solvers, from_diffusers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
SOLVERS = eligible_solvers()
PROMPT, NEGATIVE, GUIDANCE = "a red cat", "dog", 5.0
STEPS = 2  # per-solver runs (the second step starts from a blended sample in the inpaint pipeline); 3 vs diffusers




def _stochastic(solver: str) -> bool:
    """Whether the solver draws noise inside the pipeline (DDIM is eta = 0 there, StableDiffusionPipeline's default)."""
    return sdekit.solvers.registry.get(solver).stochastic and solver != "ddim"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    folder = tmp_path_factory.mktemp("clip_tokenizer")  # from_pretrained on a local folder: transformers 4 and 5
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, model_max_length=12)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8,
                                  sample_size=8).eval()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # SD 1.x's
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    inpaint = diffusers.StableDiffusionInpaintPipeline(**pipe.components)
    for p in (pipe, inpaint):
        p.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(3)
    latents, image = torch.randn(1, 4, 8, 8, generator=gen), torch.rand(1, 3, 8, 8, generator=gen)
    mask = (torch.arange(8) >= 4).to(torch.float32).expand(1, 1, 8, 8)  # 1: repaint the right half
    return pipe, inpaint, scheduler.config, latents, image, mask


def _images(pipe, scheduler, seed=0, output_type="latent", steps=STEPS, **kwargs):
    pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, height=8, width=8, num_inference_steps=steps,
                    guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed), output_type=output_type,
                    **kwargs).images


def _close(a, b, rel=1e-5) -> bool:
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_eligible_solver_in_an_unmodified_stable_diffusion_pipeline(sd, solver):
    """StableDiffusionPipeline (prompt through the CLIP tokenizer and text encoder, guidance 5, 3 steps, fixed initial
    latents): the same generator seed gives the same latents; a stochastic solver draws its noise from the pipeline's
    generator (another seed, other latents); a deterministic one ignores it and takes exactly sdekit.sample's steps on
    from_diffusers(unet, ...) with the pipeline's own prompt embeddings (to 1e-5 relative)."""
    pipe, _, base, latents, _, _ = sd
    sched = SdekitScheduler.from_config(base, solver=solver)
    x = _images(pipe, sched, latents=latents)
    assert x.shape == (1, 4, 8, 8) and bool(torch.isfinite(x).all()), solver
    other = _images(pipe, SdekitScheduler.from_config(base, solver=solver), seed=1, latents=latents)
    if _stochastic(solver):
        assert float((other - x).abs().max()) > 1e-3, solver
        assert torch.equal(_images(pipe, SdekitScheduler.from_config(base, solver=solver), latents=latents), x), solver
    else:  # the same latents for any seed, hence for the same seed
        assert torch.equal(other, x), solver
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
            model = from_diffusers(pipe.unet, base, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond,
                                   guidance_scale=GUIDANCE)
            ref = sdekit.sample(model, latents, solver, ts=sched.ts).x
        assert _close(x, ref), (solver, float((x - ref).abs().max()))


def test_sd_pipeline_matches_diffusers_ddim_and_dpm_solver(sd):
    """In the unmodified StableDiffusionPipeline, solver="ddim" gives DDIMScheduler's latents and decoded images, and
    solver="dpmpp_2m" DPMSolverMultistepScheduler's (lower_order_final=False on both), to 1e-5 relative."""
    pipe, _, base, latents, _, _ = sd
    ref = _images(pipe, diffusers.DDIMScheduler.from_config(base), latents=latents, steps=3)
    assert _close(_images(pipe, SdekitScheduler.from_config(base, solver="ddim"), latents=latents, steps=3), ref)
    img_ref = _images(pipe, diffusers.DDIMScheduler.from_config(base), latents=latents, steps=3,
                    output_type="pt")
    img = _images(pipe, SdekitScheduler.from_config(base, solver="ddim"), latents=latents, steps=3,
                    output_type="pt")
    assert img.shape == (1, 3, 8, 8) and float((img - img_ref).abs().max()) < 1e-5
    ref = _images(pipe, diffusers.DPMSolverMultistepScheduler.from_config(base, lower_order_final=False),
                  latents=latents, steps=3)
    ours = SdekitScheduler.from_config(base, solver="dpmpp_2m", solver_options={"lower_order_final": False})
    assert _close(_images(pipe, ours, latents=latents, steps=3), ref)


def _inpaint(sd, scheduler, steps=STEPS):
    _, inpaint, _, _, image, mask = sd
    return _images(inpaint, scheduler, steps=steps, image=image, mask_image=mask)


@pytest.fixture(scope="module")
def inpaint_ddim(sd):
    return _inpaint(sd, diffusers.DDIMScheduler.from_config(sd[2]))


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_eligible_solver_in_an_unmodified_inpaint_pipeline(sd, inpaint_ddim, solver):
    """StableDiffusionInpaintPipeline with a 4-channel U-Net replaces the known half of the latents by the image's
    latents noised to the next timestep after every step, so each step starts from a sample the scheduler did not
    produce. Every solver runs from it: finite latents, the same seed gives the same latents, the known half ends
    exactly at the image's latents (DDIMScheduler's run gives them) and the repainted half is the solver's own."""
    base = sd[2]
    x = _inpaint(sd, SdekitScheduler.from_config(base, solver=solver))
    assert x.shape == (1, 4, 8, 8) and bool(torch.isfinite(x).all()), solver
    assert torch.equal(_inpaint(sd, SdekitScheduler.from_config(base, solver=solver)), x), solver
    assert torch.equal(x[..., :4], inpaint_ddim[..., :4]), solver
    assert float((x[..., 4:] - inpaint_ddim[..., 4:]).abs().max()) > 1e-3 or solver == "ddim", solver


def test_inpaint_pipeline_matches_diffusers_ddim_and_dpm_solver(sd):
    """The blended inpainting loop: solver="ddim" gives DDIMScheduler's latents, and solver="dpmpp_2m" (which keeps
    its history of model outputs across the blends) DPMSolverMultistepScheduler's, to 1e-5 relative."""
    base = sd[2]
    ref = _inpaint(sd, diffusers.DDIMScheduler.from_config(base), steps=3)
    assert _close(_inpaint(sd, SdekitScheduler.from_config(base, solver="ddim"), steps=3), ref)
    ref = _inpaint(sd, diffusers.DPMSolverMultistepScheduler.from_config(base, lower_order_final=False), steps=3)
    ours = SdekitScheduler.from_config(base, solver="dpmpp_2m", solver_options={"lower_order_final": False})
    assert _close(_inpaint(sd, ours, steps=3), ref)
