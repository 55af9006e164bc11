"""SdekitScheduler in flow-matching pipelines (SD3/Flux-style FlowMatchEulerDiscreteScheduler configs), and grids
from sdekit (tune, named grids) handed to a pipeline."""
import inspect
import math

import numpy as np
import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import SdekitScheduler, eligible_solvers, from_diffusers  # noqa: E402
from sdekit.interop.pipeline_step import pure_noise_problem  # noqa: E402
from sdekit.solvers.grids import make_grid  # noqa: E402
from sdekit.solvers.registry import get  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice

PATCH, SIDE = 2, 8


def _transformer():
    """The smallest SD3Transformer2DModel (1 layer, 4 x 8 x 8 latents): random weights, no download."""
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=SIDE, patch_size=PATCH, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=16).eval()


def _conditioning():
    g = torch.Generator().manual_seed(2)
    return {"encoder_hidden_states": torch.randn(1, 5, 16, generator=g), "pooled_projections": torch.randn(1, 8, generator=g),
            "negative_encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
            "negative_pooled_projections": torch.randn(1, 8, generator=g)}


def _sd3_loop(scheduler, transformer, latents, steps, cond, guidance=4.5, sigmas=None, mu=None, callback=None):
    """StableDiffusion3Pipeline.__call__'s denoising, step for step (its text encoders and VAE aside): mu from the
    latent size when the config shifts dynamically, set_timesteps(steps | sigmas=, mu=) as its retrieve_timesteps
    calls it, classifier-free guidance on a doubled batch, step(noise_pred, t, latents, return_dict=False)[0], then
    callback_on_step_end's latents."""
    cfg = scheduler.config
    kwargs = {}
    if cfg.get("use_dynamic_shifting", None) and mu is None:
        seq = (latents.shape[-2] // PATCH) * (latents.shape[-1] // PATCH)
        lo, hi = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        m = (cfg.get("max_shift", 1.16) - cfg.get("base_shift", 0.5)) / (hi - lo)
        mu = seq * m + cfg.get("base_shift", 0.5) - m * lo  # calculate_shift: linear in the image's sequence length
    if mu is not None:
        kwargs["mu"] = mu
    if sigmas is not None:
        assert "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
        scheduler.set_timesteps(sigmas=sigmas, **kwargs)
    else:
        scheduler.set_timesteps(steps, **kwargs)
    emb = torch.cat([cond["negative_encoder_hidden_states"], cond["encoder_hidden_states"]]).repeat_interleave(
        latents.shape[0], 0)
    pooled = torch.cat([cond["negative_pooled_projections"], cond["pooled_projections"]]).repeat_interleave(
        latents.shape[0], 0)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            inp = torch.cat([latents] * 2)
            out = transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]), encoder_hidden_states=emb,
                              pooled_projections=pooled, return_dict=False)[0]
            uncond, text = out.chunk(2)
            latents = scheduler.step(uncond + guidance * (text - uncond), t, latents, return_dict=False)[0]
            if callback is not None:
                latents = callback(i, latents)
    return latents


def _latents(seed=1):
    return torch.randn(2, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


FLOW_CONFIGS = [  # (FlowMatchEulerDiscreteScheduler config, set_timesteps extras)
    ({"shift": 3.0}, {}),  # SD3
    ({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}, {}),  # SD3.5-style: mu from the size
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
    ({"use_dynamic_shifting": True}, {"flux_sigmas": True, "mu": 0.9}),  # Flux: sigmas linspace(1, 1/n, n) and mu
    ({"shift": 3.0, "shift_terminal": 0.05}, {}),
    ({"shift": 1.0}, {"sigmas": [1.0, 0.8, 0.55, 0.3, 0.1, 0.02]}),
]


def _extras(extra, steps):
    extra = dict(extra)
    if extra.pop("flux_sigmas", False):
        extra["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    return extra


@pytest.mark.parametrize("config,extra", FLOW_CONFIGS)
def test_euler_in_an_sd3_loop_equals_flow_match_euler(config, extra):
    """SdekitScheduler.from_config(FlowMatchEuler config, solver="euler") in SD3's loop gives
    FlowMatchEulerDiscreteScheduler's latents to 1e-5 and the same timesteps (shift, dynamic shifting by mu,
    custom sigmas, shift_terminal), and is sdekit.sample's euler on from_diffusers(transformer, scheduler) on the
    scheduler's grid: its time is diffusers' sigma on sdekit's RectifiedFlow."""
    tr, cond, x = _transformer(), _conditioning(), _latents()
    base = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours = SdekitScheduler.from_config(base.config, solver="euler")
    extra = _extras(extra, 6)
    ref = _sd3_loop(base, tr, x, 6, cond, **extra)
    got = _sd3_loop(ours, tr, x, 6, cond, **extra)
    assert ours.timesteps.tolist() == base.timesteps.tolist()
    torch.testing.assert_close(ours.sigmas, base.sigmas, rtol=0, atol=0)
    assert float((got - ref).abs().max()) < 1e-5, float((got - ref).abs().max())
    assert isinstance(ours.sde, sdekit.RectifiedFlow) and float(ours.ts[0]) == float(base.sigmas[0])
    with torch.no_grad():
        model = from_diffusers(tr, ours, guidance_scale=4.5, **cond)
        sol = sdekit.sample(model, x, "euler", ts=ours.ts).x
    assert float((sol - got).abs().max()) < 1e-5


def test_every_eligible_solver_in_an_sd3_loop():
    """Every eligible solver runs in SD3's loop on a dynamically shifted config and takes exactly sdekit.sample's
    steps on the scheduler's grid (deterministic solvers; stochastic ones: finite, and their draws follow torch's
    global generator, which SD3 leaves to the scheduler). A solver that cannot start at pure noise (sigma = 1) is
    refused at set_timesteps, naming why, and runs on a grid that starts below it."""
    tr, cond, x = _transformer(), _conditioning(), _latents()
    base = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    below = list(np.linspace(0.9, 1 / 5, 5))
    started = 0
    for solver in eligible_solvers():
        sched = SdekitScheduler.from_config(base.config, solver=solver)
        if pure_noise_problem(solver, ()) is None:
            kw: dict = {}
            started += 1
        else:
            with pytest.raises(ValueError, match=f"solver '{solver}' cannot start at pure noise"):
                _sd3_loop(sched, tr, x, 5, cond)
            kw = {"sigmas": below}
        torch.manual_seed(0)
        got = _sd3_loop(sched, tr, x, 5, cond, **kw)
        assert bool(torch.isfinite(got).all()) and float((got - x).abs().max()) > 1e-2, solver
        if get(solver).stochastic:
            torch.manual_seed(0)
            assert torch.equal(_sd3_loop(sched, tr, x, 5, cond, **kw), got), solver
            continue
        with torch.no_grad():
            ref = sdekit.sample(from_diffusers(tr, sched, guidance_scale=4.5, **cond), x, solver, ts=sched.ts).x
        assert float((got - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max())), solver
    assert started >= 5  # ddim, dpmpp_2m, dpmpp_3m, euler, unipc_* start at sigma = 1


def test_flow_scheduler_steps_from_edited_latents_and_noises_for_img2img():
    """A callback that edits the latents: the step starts from them (a first-order solver then finishes as a fresh
    solve from the edited latents); scale_noise / add_noise put x0 at a grid timestep as
    FlowMatchEulerDiscreteScheduler.scale_noise does; the config round-trips."""
    tr, cond, x = _transformer(), _conditioning(), _latents()
    base = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref_sched, ours = diffusers.FlowMatchEulerDiscreteScheduler.from_config(base.config), \
        SdekitScheduler.from_config(base.config, solver="euler")

    def edit(i, v):
        return v * 0.8 if i == 1 else v

    ref = _sd3_loop(ref_sched, tr, x, 6, cond, callback=edit)
    got = _sd3_loop(ours, tr, x, 6, cond, callback=edit)
    assert float((got - ref).abs().max()) < 1e-5
    assert float((got - _sd3_loop(ours, tr, x, 6, cond)).abs().max()) > 1e-3
    x0, n = _latents(3), _latents(4)
    for sched in (ref_sched, ours):
        sched.set_timesteps(6)
    for i in (0, 2, 5):
        t = ours.timesteps[i:i + 1]
        torch.testing.assert_close(ours.scale_noise(x0, t, n), ref_sched.scale_noise(x0, ref_sched.timesteps[i:i + 1], n),
                                   rtol=1e-6, atol=1e-6)
    again = SdekitScheduler.from_config(ours.config)
    assert again.flow and again.config["shift"] == 3.0 and again.config["solver"] == "euler"


@pytest.mark.parametrize("config,match", [
    ({"stochastic_sampling": True}, "stochastic_sampling"),
    ({"invert_sigmas": True}, "invert_sigmas"),
])
def test_flow_settings_sdekit_cannot_honour_are_refused_by_name(config, match):
    base = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    with pytest.raises(ValueError, match=match):
        SdekitScheduler.from_config(base.config, solver="euler")
    sched = SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config,
                                        solver="euler")
    with pytest.raises(ValueError, match="mu"):
        sched.set_timesteps(4)  # FlowMatchEuler's own rule: dynamic shifting needs mu
    with pytest.raises(ValueError, match="beta-table"):
        SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config, beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match="grid_scheduler"):
        SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config, grid_scheduler="ddim")


@pytest.mark.parametrize("betas", [np.array([0.1, 0.3]), [0.1, 0.3], torch.tensor([0.1, 0.3])])
def test_trained_betas_on_a_flow_config_are_refused_by_name(betas):
    """A flow-matching config has no beta table: trained_betas (an array, list or tensor) beside it is refused with
    the field's name, by the constructor and by from_config, not by an ambiguous array comparison."""
    with pytest.raises(ValueError, match="trained_betas=.*beta-table"):
        SdekitScheduler(prediction_type="flow_prediction", shift=3.0, solver="euler", trained_betas=betas)
    with pytest.raises(ValueError, match="trained_betas=.*beta-table"):
        SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config, trained_betas=betas)


def test_from_diffusers_with_dynamic_shifting_samples_like_the_pipeline():
    """from_diffusers(net, FlowMatch config with use_dynamic_shifting, mu=) is the time-shifted rectified flow with
    shift exp(mu): diffusers_equivalent's ddim on it equals FlowMatchEulerDiscreteScheduler with that mu."""
    from sdekit.interop import diffusers_equivalent

    tr, cond, x = _transformer(), _conditioning(), _latents()
    base = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ref = _sd3_loop(base, tr, x, 6, cond, mu=0.7)
    with torch.no_grad():
        model = from_diffusers(tr, base, mu=0.7, guidance_scale=4.5, **cond)
        got = sdekit.sample(model, x, **diffusers_equivalent(base, 6, mu=0.7)).x
    assert abs(model.sde.shift - math.exp(0.7)) < 1e-12
    assert float((got - ref).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="mu="):
        from_diffusers(tr, base, **cond)
    with pytest.raises(ValueError, match="mu=0.7"):
        from_diffusers(tr, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), mu=0.7, **cond)


# -- grids from sdekit handed to a pipeline ------------------------------------------------------------------------
def _exact_loop(sched, model, x, steps, kind):
    """A pipeline loop whose 'network' is the exact mixture (eps on a DDPM table, velocity on a flow)."""
    sched.set_timesteps(steps)
    for i, tau in enumerate(sched.timesteps):
        t = float(sched.ts[i])
        out = model.eps(x, t) if kind == "eps" else model.eps(x, t) - model.x0(x, t)
        x = sched.step(out, tau, x).prev_sample
    return x


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_a_tuned_grid_handed_to_a_pipeline_takes_sdekit_samples_steps(kind):
    """SdekitScheduler(grid_ts=sdekit.tune(...)) lays out exactly the tuned grid, and the pipeline's loop takes
    sdekit.sample's steps on it (to float64 rounding), as it does with a named grid (compare's grids); the
    pipeline's num_inference_steps must be the grid's step count; the grid survives a config round trip."""
    if kind == "eps":
        base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
        solver = "dpmpp_2m"
    else:
        base = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        solver = "unipc_2"
    probe = SdekitScheduler.from_config(base.config, solver=solver)
    model = sdekit.GaussianMixture.default(dim=4).model(probe.sde)
    tuned = sdekit.tune(model, solver, 5, shape=(4,), n=32, max_evals=40, ref_steps=100, cache=False)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for grid in (tuned, make_grid(probe.sde, 5, "karras")):
        sched = SdekitScheduler.from_config(base.config, solver=solver, grid_ts=grid)
        got = _exact_loop(sched, model, x, 5, kind)
        ts = getattr(grid, "ts", grid)
        torch.testing.assert_close(sched.ts, ts, rtol=0, atol=0)
        torch.testing.assert_close(got, sdekit.sample(model, x, solver, ts=ts).x, rtol=1e-10, atol=1e-10)
        assert float((got - sdekit.sample(model, x, solver, steps=5).x).abs().max()) > 1e-6  # the grid matters
        with pytest.raises(ValueError, match="num_inference_steps=5"):
            sched.set_timesteps(7)
        with pytest.raises(ValueError, match="grid_ts"):
            sched.set_timesteps(sigmas=[0.5, 0.1])
        again = SdekitScheduler.from_config(sched.config)
        again.set_timesteps(5)
        torch.testing.assert_close(again.ts, ts, rtol=0, atol=0)


def test_a_tuned_grid_in_an_unmodified_ddpm_pipeline():
    """grid_ts in an unmodified DDPMPipeline: the U-Net gets the grid's (fractional) timesteps, and the images equal
    sdekit.sample on from_diffusers(unet, scheduler) on that grid."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                                 layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                 norm_num_groups=4).eval()
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    probe = SdekitScheduler.from_config(base.config, solver="unipc_2")
    ts = make_grid(probe.sde, 6, "karras")
    sched = SdekitScheduler.from_config(base.config, solver="unipc_2", grid_ts=ts)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(3)
    img = pipe(batch_size=2, num_inference_steps=6, generator=gen, output_type="np").images
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sdekit.sample(from_diffusers(unet, sched), x_T, "unipc_2", ts=ts).x
    ref = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert sched.timesteps.dtype == torch.float32 and abs(img - ref).max() < 1e-5
    with pytest.raises(ValueError, match="num_inference_steps=6"):
        pipe(batch_size=1, num_inference_steps=10, output_type="np")
