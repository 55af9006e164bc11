"""SdekitScheduler as diffusers' schedulers behave: every eligible solver in unmodified pipelines with the pipeline's
generator, samples edited between steps (inpainting, callbacks), DDIM's clipping and step signature, the attributes
pipelines read."""
import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import SdekitScheduler, eligible_solvers  # noqa: E402
from sdekit.solvers.registry import get  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice


def _unet(out_scale=0.5):
    """The smallest UNet2DModel (one block, 8 channels, 8 x 8): random weights, no download."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                                 layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                 norm_num_groups=4).eval()
    with torch.no_grad():
        unet.conv_out.weight.mul_(out_scale)
        unet.conv_out.bias.mul_(out_scale)
    return unet


def _run(pipe, scheduler, seed=3, steps=4, **kw):
    pipe.scheduler = scheduler
    return pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="np", **kw).images


# -- 1. every eligible solver in unmodified DDPM and DDIM pipelines ----------------------------------------------
@pytest.mark.parametrize("pipeline", ["DDPMPipeline", "DDIMPipeline"])
def test_every_eligible_solver_runs_in_the_pipeline_with_its_generator(pipeline):
    """Each solver of eligible_solvers() runs to the end; its images depend on the pipeline's seed only (the global
    torch RNG is reseeded differently between the runs), and a stochastic solver's steps draw from that generator
    (two seeds' images differ by more than their different starts explain: re-running from the same start, the
    steps' noise alone changes the result)."""
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    pipe = getattr(diffusers, pipeline)(unet=_unet(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    for solver in eligible_solvers():
        sched = SdekitScheduler.from_config(base.config, solver=solver)
        torch.manual_seed(11)
        a = _run(pipe, sched)
        torch.manual_seed(12)
        b = _run(pipe, sched)
        assert (a == b).all(), solver
        assert abs(a - 0.5).max() > 1e-3, solver  # not a constant image
        if get(solver).stochastic and solver != "ddim":  # ddim's default eta is 0
            # same start (x_T), different step noise: a stepping loop with two generators
            x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            outs = []
            for seed in (1, 2):
                sched.set_timesteps(4)
                gen, x = torch.Generator().manual_seed(seed), x_T
                with torch.no_grad():
                    for t in sched.timesteps:
                        x = sched.step(pipe.unet(x, t).sample, t, x, generator=gen).prev_sample
                outs.append(x)
            assert float((outs[0] - outs[1]).abs().max()) > 1e-3, solver


def test_stochastic_steps_equal_diffusers_draw_for_draw():
    """Same seed, same images: ddpm in a DDPMPipeline equals DDPMScheduler, ddim with the pipeline's eta = 1 in a
    DDIMPipeline equals DDIMScheduler (the same algorithm drawing the same Gaussians from the pipeline's
    generator)."""
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample")
    pipe = diffusers.DDPMPipeline(unet=_unet(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    ref = _run(pipe, diffusers.DDPMScheduler.from_config(base.config), steps=6)
    ours = _run(pipe, SdekitScheduler.from_config(base.config, solver="ddpm"), steps=6)
    assert abs(ours - ref).max() < 1e-5
    pipe = diffusers.DDIMPipeline(unet=_unet(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    ref = _run(pipe, diffusers.DDIMScheduler.from_config(base.config), steps=6, eta=1.0)
    ours = _run(pipe, SdekitScheduler.from_config(base.config, solver="ddim"), steps=6, eta=1.0)
    assert abs(ours - ref).max() < 1e-5
    assert abs(ours - _run(pipe, SdekitScheduler.from_config(base.config, solver="ddim"), steps=6)).max() > 1e-3


# -- 2. the sample handed over may change between steps ----------------------------------------------------------
def _mixture():
    sde = sdekit.DiscreteVPSDE.linear(1000)
    return sde, sdekit.GaussianMixture.default(dim=4).model(sde)


def _loop(sched, model, x, steps=8, edit=None, known=None, mask=None, seed=0):
    """A pipeline's loop with an exact eps network. ``edit(i, x)`` edits the latents after step i (a
    callback_on_step_end); ``known``/``mask`` blend as an inpainting pipeline with a 4-channel U-Net does:
    x <- mask x + (1 - mask) add_noise(known, noise, next timestep) after every step but the last."""
    sched.set_timesteps(steps)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    gen = torch.Generator().manual_seed(seed)
    ts = sched.timesteps
    for i, tau in enumerate(ts):
        eps = model.eps(x.double(), (float(tau) + 1) / model.sde.N).to(x.dtype)
        x = sched.step(eps, tau, x, generator=gen).prev_sample
        if known is not None and i < len(ts) - 1:
            x = mask * x + (1 - mask) * sched.add_noise(known, noise, ts[i + 1:i + 2])
        if edit is not None:
            x = edit(i, x)
    return x


def test_every_eligible_solver_steps_from_an_edited_sample():
    """For every eligible solver: a callback that hands back an equal copy of the latents changes nothing; one that
    edits them changes the result (the solver steps from the edited sample, and asks the network there: the
    scheduler refuses a solver that evaluates elsewhere); a first-order solver (no history) then finishes exactly
    as a fresh solve from the edited sample on the rest of the grid."""
    sde, model = _mixture()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.linspace(-1, 1, 4, dtype=torch.float64)
    for solver in eligible_solvers():
        sched = SdekitScheduler(num_train_timesteps=1000, solver=solver, timestep_spacing="trailing")
        plain = _loop(sched, model, x)
        assert torch.equal(_loop(sched, model, x, edit=lambda i, v: v.clone()), plain), solver
        states: dict = {}
        edited = _loop(sched, model, x, edit=lambda i, v, keep=states: keep.setdefault(i, v + 0.3 * shift if i == 3 else v))
        assert bool(torch.isfinite(edited).all()) and float((edited - plain).abs().max()) > 1e-3, solver
        if solver in ("ddim", "dpm_solver_1", "euler"):
            ref = sdekit.sample(model, states[3], solver, ts=sched.ts[4:]).x
            torch.testing.assert_close(edited, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls_name,config,solver,options", [
    ("DPMSolverMultistepScheduler", {}, "dpmpp_2m", {"lower_order_final": False}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, "dpm_solver_2m",
     {"lower_order_final": True}),
    ("UniPCMultistepScheduler", {}, "unipc_2", {"lower_order_final": False}),
    ("DDIMScheduler", {}, "ddim", {}),
])
def test_inpainting_blend_and_latent_callback_equal_diffusers(cls_name, config, solver, options):
    """An inpainting loop (blend with the noised known part after each step) and a callback that edits the
    latents give diffusers' own multistep scheduler's result: the history of model outputs is kept and the step
    starts from the sample handed over (for UniPC the corrector then redoes the step from its own state, as
    diffusers' does)."""
    sde, model = _mixture()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    known = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False)
    ref_sched = getattr(diffusers, cls_name).from_config(base.config, **config)
    ours = SdekitScheduler.from_config(base.config, solver=solver, solver_options=options, **config)
    step = ref_sched.step
    ref_sched.step = lambda *a, generator=None, **k: step(*a, **k)  # UniPC's step takes no generator

    def edit(i, v):
        return v * 0.9 if i == 2 else v

    for kw in ({"known": known, "mask": mask}, {"edit": edit}):
        ref, got = _loop(ref_sched, model, x, **kw), _loop(ours, model, x, **kw)
        assert float((got - _loop(ours, model, x)).abs().max()) > 1e-3
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# -- 3. DDIM's clipping, diffusers' step signature, attributes ----------------------------------------------------
@pytest.mark.parametrize("config", [{"clip_sample": True}, {"thresholding": True, "dynamic_thresholding_ratio": 0.9,
                                                            "sample_max_value": 1.5, "clip_sample": False}])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_clipping_equals_ddim_scheduler(config, eta):
    """DDIMScheduler clips (or thresholds) x0 and keeps the network's eps; so does ddim here, in a DDIMPipeline,
    with and without noise. use_clipped_model_output=True derives eps from the clipped x0 in both."""
    base = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="epsilon", **config)
    pipe = diffusers.DDIMPipeline(unet=_unet(out_scale=2.0), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    for clipped in (None, True):
        ref = _run(pipe, diffusers.DDIMScheduler.from_config(base.config), steps=6, eta=eta,
                   use_clipped_model_output=clipped)
        ours = _run(pipe, SdekitScheduler.from_config(base.config, solver="ddim"), steps=6, eta=eta,
                    use_clipped_model_output=clipped)
        # diffusers' float32 alphas_cumprod is amplified by x0 = (x - sigma eps)/alpha near t = T where the clip
        # cuts x0 but not eps; the earlier eps-from-clipped-x0 semantics differed by 0.5 on average here
        assert abs(ours - ref).max() < 2e-4 and abs(ours - ref).mean() < 1e-5, (clipped, abs(ours - ref).max())
    unclipped = _run(pipe, SdekitScheduler.from_config(base.config, solver="ddim", clip_sample=False,
                                                       thresholding=False), steps=6, eta=eta)
    assert abs(unclipped - ref).max() > 1e-3  # the clipping is active on this network


def test_step_signature_and_attributes_as_diffusers():
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, clip_sample=True)  # explicit: defaults do not cross classes
    ours = SdekitScheduler.from_config(base.config, solver="ddim")
    for name in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(ours, name), getattr(base, name), rtol=1e-6, atol=1e-8)
    x0, n = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    tau = torch.tensor([0, 499, 999])
    torch.testing.assert_close(ours.add_noise(x0, n, tau), base.add_noise(x0, n, tau), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.get_velocity(x0, n, tau), base.get_velocity(x0, n, tau), rtol=1e-5, atol=1e-6)
    assert ours.scale_model_input(x0, 3) is x0
    # DDIMScheduler.step's positional order: eta fourth (a Generator there is DDPMScheduler's order)
    ref = diffusers.DDIMScheduler.from_config(base.config)
    outs = []
    for sched in (ref, ours):
        sched.set_timesteps(5)
        t = sched.timesteps[0]
        outs.append(sched.step(n, t, x0, 1.0, None, torch.Generator().manual_seed(0)).prev_sample)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    ours.set_timesteps(5)
    ours.step(n, ours.timesteps[0], x0, torch.Generator().manual_seed(0))
    dpm = SdekitScheduler.from_config(base.config, solver="dpmpp_2m")
    dpm.set_timesteps(5)
    with pytest.raises(ValueError, match="eta=1.0 is DDIM"):
        dpm.step(n, dpm.timesteps[0], x0, 1.0)
    dpm.step(n, dpm.timesteps[0], x0, 0.0)  # pipelines pass eta=0.0 by default


def test_threshold_settings_refused_at_construction():
    base = diffusers.DDPMScheduler().config
    for bad in ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, {"thresholding": True, "sample_max_value": 0},
                {"clip_sample": True, "clip_sample_range": -1}):
        with pytest.raises(ValueError, match=next(iter(k for k in bad if k not in ("thresholding", "clip_sample")))):
            SdekitScheduler.from_config(base, solver="dpmpp_2m", **bad)


# -- 4. grids diffusers lays out ---------------------------------------------------------------------------------
def _sigma_loop(sched, model, x, steps):
    """A loop whose exact network is evaluated at the time of the scheduler's sigma (so a scheduler that calls the
    network at a rounded timestep is compared on its own sigmas)."""
    from sdekit.interop import times_from_sigmas

    sched.set_timesteps(steps)
    for i, tau in enumerate(sched.timesteps):
        t = times_from_sigmas(model.sde, sched.sigmas[i:i + 1])[0]
        x = sched.step(model.eps(x.double(), t).to(x.dtype), tau, x).prev_sample
    return x


GRID_CONFIGS = [{"use_exponential_sigmas": True}, {"use_lu_lambdas": True}, {"lambda_min_clipped": -5.1},
                {"use_karras_sigmas": True}]
try:
    import scipy  # noqa: F401  (diffusers' beta sigmas need it)
    GRID_CONFIGS.append({"use_beta_sigmas": True})
except ImportError:
    pass


@pytest.mark.parametrize("config", GRID_CONFIGS)
def test_sigma_families_equal_dpmsolver_multistep(config):
    """Exponential, beta and Lu-lambda sigmas and lambda_min_clipped take diffusers' sigmas; dpmpp_2m on them
    equals DPMSolverMultistepScheduler (network evaluated at each sigma's time)."""
    sde, model = _mixture()
    base = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, **config)
    ours = SdekitScheduler.from_config(base.config, solver="dpmpp_2m", solver_options={"lower_order_final": False})
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    ref, got = _sigma_loop(base, model, x, 10), _sigma_loop(ours, model, x, 10)
    assert len(ours.timesteps) == len(base.timesteps)
    torch.testing.assert_close(ours.sigmas, base.sigmas, rtol=1e-4, atol=1e-7)  # float32 sigmas via float64 times
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("solver,grid_scheduler", [("dpmpp_2m", None), ("unipc_2", None), ("ddim", None)])
def test_as_many_steps_as_the_table(solver, grid_scheduler):
    """set_timesteps(num_train_timesteps): every table step once (diffusers' multistep layouts repeat one rounded
    timestep, a zero-length step, which is dropped), ending at t = 0."""
    sched = SdekitScheduler(num_train_timesteps=50, solver=solver, grid_scheduler=grid_scheduler)
    sched.set_timesteps(50)
    expected = list(range(49, -1, -1)) if solver == "ddim" else list(range(49, 0, -1))
    assert sched.timesteps.tolist() == expected and float(sched.ts[-1]) == 0.0
    sde, model = _mixture()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool(torch.isfinite(_loop(sched, sdekit.GaussianMixture.default(dim=4).model(sched.sde), x, 50)).all())


@pytest.mark.parametrize("cls_name", ["DPMSolverSDEScheduler", "SASolverScheduler", "EulerAncestralDiscreteScheduler",
                                      "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
                                      "DEISMultistepScheduler", "HeunDiscreteScheduler"])
def test_configs_of_beta_table_schedulers_load(cls_name):
    """The config of every beta-table scheduler diffusers lists as compatible loads (its solver settings are
    superseded by the sdekit solver) and steps a pipeline's loop."""
    sched = SdekitScheduler.from_config(getattr(diffusers, cls_name)().config, solver="unipc_2")
    sde, model = _mixture()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool(torch.isfinite(_loop(sched, model, x, 6)).all())


# -- 5. custom timesteps and sigmas, as diffusers' schedulers take them ------------------------------------------
def _pipeline_loop(sched, model, x, generator=None, **grid):
    """A pipeline's loop (init_noise_sigma, scale_model_input) with an exact eps network evaluated at the time of
    the scheduler's sigma; ``grid``: set_timesteps' keywords."""
    from sdekit.interop import times_from_sigmas

    sched.set_timesteps(**grid)
    # Euler's state is x / alpha; its init_noise_sigma (sigma_max, not sqrt(sigma_max^2 + 1), with these sigmas)
    # would start it from another VP state, so the same start is scaled here exactly
    euler = isinstance(sched, diffusers.EulerDiscreteScheduler)
    x = x * (float(sched.sigmas[0]) ** 2 + 1) ** 0.5 if euler else x * sched.init_noise_sigma
    for i, tau in enumerate(sched.timesteps):
        sigmas = getattr(sched, "sigmas", None)  # DDPMScheduler has none: integer timestep n is t = (n + 1)/N
        t = times_from_sigmas(model.sde, sigmas[i:i + 1])[0] if sigmas is not None else (float(tau) + 1) / model.sde.N
        inp = sched.scale_model_input(x, tau)
        kw = {} if generator is None else {"generator": generator}
        x = sched.step(model.eps(inp.double(), t).to(x.dtype), tau, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("cls_name,solver,grid", [
    ("DDPMScheduler", "ddpm", {"timesteps": [999, 700, 420, 200, 60, 5]}),
    ("DPMSolverMultistepScheduler", "dpmpp_2m", {"timesteps": [961, 801, 641, 481, 321, 161, 1]}),
    ("EulerDiscreteScheduler", "ddim", {"sigmas": [80.0, 20.0, 6.0, 1.5, 0.4, 0.05, 0.0]}),
])
def test_custom_timesteps_and_sigmas_equal_diffusers(cls_name, solver, grid):
    """set_timesteps(timesteps=...) (DDPM, DPM-Solver multistep) and (sigmas=...) (Euler: K + 1 sigmas, the last the
    end) lay out diffusers' grid; the solver that is that scheduler's algorithm then gives its result (DDPM with the
    same generator draw for draw; Euler on its 1/alpha-scaled state is DDIM)."""
    sde, model = _mixture()
    base = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    ref_sched = getattr(diffusers, cls_name).from_config(base.config)
    ours = SdekitScheduler.from_config(base.config, solver=solver, solver_options=(
        {"lower_order_final": False} if solver == "dpmpp_2m" else {}))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    gen = (lambda: torch.Generator().manual_seed(7)) if solver == "ddpm" else (lambda: None)
    ref = _pipeline_loop(ref_sched, model, x, gen(), **grid)
    got = _pipeline_loop(ours, model, x, gen(), **grid)
    assert len(ours.timesteps) == len(ref_sched.timesteps)
    torch.testing.assert_close(ours.timesteps.to(torch.float64), ref_sched.timesteps.to(torch.float64),
                               rtol=0, atol=1e-2 if "sigmas" in grid else 0)  # Euler: log sigma interpolated
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cls_name", sorted(c.__name__ for c in SdekitScheduler().compatibles))
def test_every_compatible_scheduler_converts_both_ways(cls_name):
    """Each class that ``compatibles`` lists takes SdekitScheduler's config, and SdekitScheduler.from_config takes
    that class's config back with every field as it was (solver, solver_options, table, prediction type): what
    diffusers' generic scheduler test checks through whichever compatible its set order puts last."""
    cls = getattr(diffusers, cls_name)
    for solver in ("dpmpp_2m", "sa_solver"):
        options = {k: v for k, v in get(solver).options.items() if k != "afs"}
        ours = SdekitScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                               timestep_spacing="trailing", solver=solver, solver_options=options)
        back = SdekitScheduler.from_config(cls.from_config(ours.config).config)
        assert {k: v for k, v in back.config.items() if k in ours.config} == dict(ours.config)
        assert back._options == options


def test_flow_matching_scheduler_lists_only_compatibles_that_convert_back():
    """A flow-matching SdekitScheduler (velocity network on RectifiedFlow) lists as compatible only the classes whose
    configs SdekitScheduler.from_config takes back unchanged: the flow-matching ones, not the beta-table schedulers
    (whose defaults would add a DDPM table that a flow config refuses)."""
    flow = SdekitScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="euler")
    names = {c.__name__ for c in flow.compatibles}
    assert names and all(n.startswith("FlowMatch") for n in names)
    for cls in flow.compatibles:
        back = SdekitScheduler.from_config(cls.from_config(flow.config).config)
        assert {k: v for k, v in back.config.items() if k in flow.config} == dict(flow.config)
    assert "DDIMScheduler" in {c.__name__ for c in SdekitScheduler().compatibles}  # a beta table keeps them


@pytest.mark.parametrize("steps,begin", [(1, 0), (6, 5), (6, 0)])
def test_ddim_clipping_on_the_final_jump_and_one_step_grids(steps, begin):
    """DDIM with clip_sample ending at sigma = 0: the last step is alpha_0 c(x0) (DDIMScheduler's with
    set_alpha_to_one), also on a one-step grid and from a late start (img2img at low strength), where no DDIM
    coefficient of a next step exists."""
    sde, model = _mixture()
    base = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=True, clip_sample_range=0.5)
    x = 2 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    outs = []
    for sched in (diffusers.DDIMScheduler.from_config(base.config), SdekitScheduler.from_config(base.config,
                                                                                               solver="ddim")):
        sched.set_timesteps(steps)
        y = x
        for tau in sched.timesteps[begin:]:
            y = sched.step(model.eps(y.double(), (float(tau) + 1) / sde.N).float(), tau, y).prev_sample
        outs.append(y)
    # float32 alphas_cumprod in diffusers, amplified by x0 = (x - sigma eps)/alpha near t = T (as above)
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-4, atol=2e-4)



def _closed_form_loop(sched, x, steps):
    """diffusers' loop with a closed-form net(x, timestep) = 0.3 x + 1e-4 timestep (any prediction type)."""
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(0.3 * x + 1e-4 * t, t, x).prev_sample
    return x


@pytest.mark.parametrize("cls_name,config,solver", [
    ("DDIMScheduler", {}, "ddim"),  # DDIMScheduler's default clip_sample=True is kept
    ("DPMSolverMultistepScheduler", {}, "dpmpp_2m"),
    ("DPMSolverMultistepScheduler", {"solver_order": 1}, "dpmpp_2m"),  # every step first order
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, "dpm_solver_2m"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, "dpmpp_2m"),
    ("UniPCMultistepScheduler", {}, "unipc_2"),
    ("UniPCMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}, "unipc_3"),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, "unipc_2"),
    ("DEISMultistepScheduler", {}, "deis_logrho_2"),
    ("DEISMultistepScheduler", {"solver_order": 3}, "deis_logrho_3"),
])
def test_solver_diffusers_runs_the_schedulers_own_algorithm(cls_name, config, solver):
    """solver="diffusers": the algorithm of the scheduler whose config it is (from the config's solver fields, class
    defaults for the rest, the step count deciding the order lowering as in diffusers_equivalent), so its loop is
    that scheduler's at 6 and 16 steps (below and above diffusers' 15-step order switch): to 1e-6 relative on integer
    grids, 1e-4 on Karras grids (whose timesteps diffusers rounds); its config keeps solver_order & co."""
    from sdekit.solvers.discrete import CLASS_NAMES

    ref = getattr(diffusers, cls_name)(**config)
    ours = SdekitScheduler.from_config(ref.config, solver="diffusers", grid_scheduler=CLASS_NAMES[cls_name])
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    tol = 1e-4 if config.get("use_karras_sigmas") else 1e-6
    for steps in (6, 16):
        want = _closed_form_loop(ref, x, steps)
        assert float((_closed_form_loop(ours, x, steps) - want).abs().max()) < tol * float(want.abs().max())
        assert ours._name == solver
    for key in ("solver_order", "algorithm_type", "solver_type", "lower_order_final"):
        if key in ref.config:
            assert key in ours.config


def test_solver_diffusers_refusals():
    """No grid scheduler to take the algorithm from, solver_options beside it, and a setting with no exact sdekit
    counterpart (diffusers' third-order SDE-DPM-Solver++, not a consistent third-order step): refused by name."""
    base = diffusers.DPMSolverMultistepScheduler().config
    with pytest.raises(ValueError, match="needs grid_scheduler"):
        SdekitScheduler.from_config(base, solver="diffusers")
    with pytest.raises(ValueError, match="drop solver_options"):
        SdekitScheduler.from_config(base, solver="diffusers", grid_scheduler="dpmsolver_multistep",
                                    solver_options={"lower_order_final": False})
    for config in ({"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},):
        sched = SdekitScheduler.from_config(diffusers.DPMSolverMultistepScheduler(**config).config, solver="diffusers",
                                            grid_scheduler="dpmsolver_multistep")
        with pytest.raises(ValueError, match="solver='diffusers': DPMSolverMultistepScheduler has an sdekit equivalent"):
            sched.set_timesteps(6)
    # a scheduler object names its class: no grid_scheduler needed
    ours = SdekitScheduler.from_config(diffusers.UniPCMultistepScheduler(), solver="diffusers")
    assert ours.config.grid_scheduler == "unipc_multistep"


def test_solver_diffusers_takes_another_class_solver_type_as_that_class_does():
    """A DPMSolverMultistep config (solver_type 'midpoint') run as UniPC or DEIS: solver_type becomes that class's
    ('bh2', 'logrho'), as UniPCMultistepScheduler/DEISMultistepScheduler.from_config map it; the loop then equals that
    class's loaded from the same config."""
    base = diffusers.DPMSolverMultistepScheduler(solver_type="midpoint", final_sigmas_type="sigma_min").config
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for layout, cls, kind in (("unipc_multistep", diffusers.UniPCMultistepScheduler, "bh2"),
                              ("deis_multistep", diffusers.DEISMultistepScheduler, "logrho")):
        ours = SdekitScheduler.from_config(base, solver="diffusers", grid_scheduler=layout)
        ref = cls.from_config(base)
        assert ours.config.solver_type == ref.config.solver_type == kind
        want = _closed_form_loop(ref, x, 8)
        assert float((_closed_form_loop(ours, x, 8) - want).abs().max()) < 1e-6 * float(want.abs().max())
