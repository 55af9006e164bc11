"""The solver side of diffusers' schedulers, against diffusers itself: dynamic thresholding at every ratio, zero
terminal SNR, UniPC's final corrector, DEIS in log-rho and DDIMScheduler's own stepping."""
import pytest
import torch

import sdekit
from sdekit.parameterization import ThresholdedModel, threshold_x0

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import SdekitScheduler  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice


# -- dynamic thresholding: every ratio diffusers accepts ----------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.995, 1.0])
@pytest.mark.parametrize("top", [1.0, 2.5])
def test_threshold_x0_is_diffusers_threshold_sample_for_every_ratio(ratio, top):
    """ratio = 0 (the quantile is the smallest |x0|: static clipping to +-1 unless every entry exceeds 1) through 1."""
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=top)
    g = torch.Generator().manual_seed(0)
    x0 = torch.cat([3 * torch.randn(3, 2, 4, 4, generator=g), 1.5 + torch.rand(1, 2, 4, 4, generator=g)])
    torch.testing.assert_close(threshold_x0(x0, ratio, top), sched._threshold_sample(x0), rtol=0, atol=1e-6)
    net = lambda x, t: x  # noqa: E731
    model = ThresholdedModel(sdekit.ScoreModel(net, sdekit.DiscreteVPSDE.linear(50), "x0"), ratio, top)
    assert model.ratio == ratio
    ours = SdekitScheduler.from_config(sched.config, solver="ddim")  # accepted at construction, steps
    ours.set_timesteps(3)
    out = ours.step(x0, ours.timesteps[0], x0).prev_sample
    assert bool(torch.isfinite(out).all())


# -- zero terminal SNR -------------------------------------------------------------------------------------------
def _unet():
    """The smallest UNet2DModel (one block, 8 channels, 8 x 8): random weights, no download."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                                 layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                 norm_num_groups=4).eval()


def _loop(sched, net, x, steps, **set_kw):
    """diffusers' denoising loop (what every pipeline runs) with ``net(x, timestep)``."""
    sched.set_timesteps(steps, **set_kw)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(net(x, t), t, x).prev_sample
    return x


ZERO_SNR = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
                timestep_spacing="trailing", prediction_type="v_prediction")


def test_zero_snr_table_is_diffusers_and_ends_at_pure_noise():
    from sdekit.interop import sde_from_scheduler

    for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler, diffusers.DPMSolverMultistepScheduler,
                diffusers.UniPCMultistepScheduler):
        ref = cls(**ZERO_SNR)
        sde = sde_from_scheduler(ref)
        torch.testing.assert_close(sde.alphas_cumprod, ref.alphas_cumprod.double(), rtol=0, atol=1e-6)
        # diffusers' multistep schedulers hold the last abar at 2^-24 (kept, to reproduce them); DDIM/DDPM at 0
        assert float(sde.alpha(1.0)) ** 2 == pytest.approx(float(ref.alphas_cumprod[-1]), rel=1e-12, abs=0)
    sde = sde_from_scheduler(diffusers.DDIMScheduler(**ZERO_SNR))
    assert sde.zero_snr and float(sde.alpha(sde.T)) == 0.0 and float(sde.sigma(sde.T)) == 1.0
    t = torch.linspace(0.99, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=0, atol=1e-12)
    assert bool(torch.isfinite(sde.d_alpha(t)).all()) and bool(torch.isfinite(sde.d_sigma(t)).all())
    # alpha' is the derivative of alpha on the last segment (alpha linear in t there)
    h, last = 1e-8, torch.linspace(0.9991, 0.9999, 9, dtype=torch.float64)
    torch.testing.assert_close(sde.d_alpha(last), (sde.alpha(last + h) - sde.alpha(last - h)) / (2 * h),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.d_sigma(last), (sde.sigma(last + h) - sde.sigma(last - h)) / (2 * h),
                               rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("cls,solver", [(diffusers.DDIMScheduler, "ddim"),
                                        (diffusers.DPMSolverMultistepScheduler, "dpmpp_2m"),
                                        (diffusers.UniPCMultistepScheduler, "unipc_2")])
def test_zero_snr_v_prediction_matches_diffusers(cls, solver):
    """rescale_betas_zero_snr with trailing spacing and a v-prediction U-Net: the first step starts at alpha = 0.
    sdekit.sample with diffusers_equivalent on from_diffusers' model, and SdekitScheduler for DDIM (whose table holds
    abar = 0 as DDIMScheduler's does), reproduce diffusers' loop (refused before: rescale_betas_zero_snr)."""
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet = _unet()
    net = lambda x, t: unet(x, t).sample  # noqa: E731
    ref_sched = cls(**ZERO_SNR, **({"clip_sample": False} if cls is diffusers.DDIMScheduler else {}))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _loop(ref_sched, net, x, 10)
    with torch.no_grad():
        eq = sdekit.sample(from_diffusers(unet, ref_sched), x, **diffusers_equivalent(ref_sched, 10)).x
    assert float((eq - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    ours = SdekitScheduler.from_config(ref_sched.config, solver=solver, solver_options=None if solver == "ddim" else
                                       {"lower_order_final": False})
    assert ours.sde.zero_snr == (solver == "ddim")
    out = _loop(ours, net, x, 10)
    # DDIM's table holds alpha(T) = 0, DPMSolverMultistep's and UniPC's 2^-12: each laid out as its class, held as it
    assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("cls,solver", [(diffusers.DPMSolverMultistepScheduler, "dpmpp_2m"),
                                        (diffusers.UniPCMultistepScheduler, "unipc_2")])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_scheduler_holds_the_zero_snr_table_of_the_class_it_lays_out(cls, solver, prediction):
    """DPMSolverMultistep and UniPC hold a zero-SNR table's last abar at 2^-24: SdekitScheduler laid out as them holds
    it too, so its loop is theirs to 1e-5 relative with v- and eps-prediction (eps runs, as in diffusers, from
    alpha = 2^-12); before, it held 0 (3e-3 off with v, eps refused). A "linear" 1e-4..0.02 table, where diffusers'
    abar would rise at its last step (2^-24 > abar_{N-1} = 4.2e-9), keeps abar_N = 0."""
    net = lambda x, t: 0.3 * x + 1e-4 * t  # noqa: E731
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = cls(**{**ZERO_SNR, "prediction_type": prediction})
    ours = SdekitScheduler.from_config(ref.config, solver=solver, solver_options={"lower_order_final": False})
    assert float(ours.sde.alpha(1.0)) ** 2 == pytest.approx(2.0 ** -24, rel=1e-9)
    want = _loop(ref, net, x, 6)
    assert float((_loop(ours, net, x, 6) - want).abs().max()) < 1e-5 * float(want.abs().max())
    linear = SdekitScheduler.from_config(cls(**{**ZERO_SNR, "beta_schedule": "linear", "beta_start": 1e-4,
                                                "beta_end": 0.02, "prediction_type": prediction}).config,
                                         solver=solver)
    assert linear.sde.zero_snr
    if prediction == "epsilon":  # diffusers runs from 2^-24 there; sdekit refuses, naming the rising table
        with pytest.raises(ValueError, match=r"next-to-last abar is 4.21e-09, below it"):
            linear.set_timesteps(6)


def test_zero_snr_epsilon_refused_by_name_where_alpha_is_zero():
    """An eps network at alpha = 0 gives no x0 (DDIMScheduler returns NaN): refused at set_timesteps, naming why;
    'leading' spacing (which starts below the last timestep) runs."""
    cfg = {**ZERO_SNR, "prediction_type": "epsilon", "clip_sample": False}
    ref = diffusers.DDIMScheduler(**cfg)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref.set_timesteps(5)
    assert not bool(torch.isfinite(ref.step(x, ref.timesteps[0], x).prev_sample).all())
    ours = SdekitScheduler.from_config(ref.config, solver="ddim")
    with pytest.raises(ValueError, match="alpha = 0.*v_prediction"):
        ours.set_timesteps(5)
    leading = diffusers.DDIMScheduler(**{**cfg, "timestep_spacing": "leading"})
    ours = SdekitScheduler.from_config(leading.config, solver="ddim")
    net = lambda x, t: 0.3 * x  # noqa: E731
    torch.testing.assert_close(_loop(ours, net, x, 5), _loop(leading, net, x, 5), rtol=1e-5, atol=1e-5)
    with pytest.raises(sdekit.solvers.NotApplicableError, match="alpha = 0"):
        sdekit.sample(sdekit.ScoreModel(net, ours.sde, "eps"), x, "ddim", steps=4)


# -- DEIS in log rho -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config,steps", [({"solver_order": 2}, 10), ({"solver_order": 3}, 10),
                                          ({"solver_order": 3}, 20), ({"solver_order": 3, "timestep_spacing": "trailing"}, 8),
                                          ({"solver_order": 2, "prediction_type": "v_prediction"}, 6)])
def test_deis_logrho_matches_deis_multistep_scheduler(config, steps):
    """diffusers_equivalent maps DEISMultistepScheduler to deis_logrho_k, which reproduces its loop (sdekit.sample and
    SdekitScheduler) to 1e-5 relative; deis_k (tAB, a polynomial in t) is another method (3e-4 to 2e-3 off)."""
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet = _unet()
    net = lambda x, t: unet(x, t).sample  # noqa: E731
    ref_sched = diffusers.DEISMultistepScheduler(**config)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _loop(ref_sched, net, x, steps)
    scale = float(ref.abs().max())
    kw = diffusers_equivalent(ref_sched, steps)
    assert kw["solver"] == f"deis_logrho_{config['solver_order']}"
    with torch.no_grad():
        model = from_diffusers(unet, ref_sched)
        eq = sdekit.sample(model, x, **kw).x
        tab = sdekit.sample(model, x, **{**kw, "solver": f"deis_{config['solver_order']}"}).x
    assert float((eq - ref).abs().max()) < 1e-5 * scale
    assert float((tab - ref).abs().max()) > 1e-4 * scale
    ours = SdekitScheduler.from_config(ref_sched.config, solver=kw["solver"],
                                       solver_options={"lower_order_final": kw["lower_order_final"]})
    assert float((_loop(ours, net, x, steps) - ref).abs().max()) < 1e-5 * scale


# -- UniPC's final corrector ---------------------------------------------------------------------------------------
def _free_net(x, t):
    """A nonlinear network that ignores its timestep: diffusers rounds Karras timesteps for the network, sdekit does
    not, and this comparison is about the steps."""
    return torch.tanh(0.8 * x) + 0.1 * x


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_unipc_final_corrector_matches_diffusers_on_karras_sigma_min(order, prediction):
    """Karras sigmas with final_sigmas_type="sigma_min": diffusers' UniPC ends with a zero-length step whose network
    call feeds the final corrector. diffusers_equivalent sets final_corrector=True (10 NFE for 10 steps) and
    SdekitScheduler lays out 10 timesteps; both reproduce UniPCMultistepScheduler to 1e-5 (without the final
    corrector: 6e-3 to 8e-2 relative off, 9 timesteps)."""
    from sdekit.interop import diffusers_equivalent, sde_from_scheduler

    ref_sched = diffusers.UniPCMultistepScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min",
                                                  solver_order=order, prediction_type=prediction)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _loop(ref_sched, _free_net, x, 10)
    scale = float(ref.abs().max())
    kw = diffusers_equivalent(ref_sched, 10)
    assert kw["final_corrector"] is True
    model = sdekit.ScoreModel(_free_net, sde_from_scheduler(ref_sched), {"epsilon": "eps", "v_prediction": "v"}[prediction])
    sol = sdekit.sample(model, x, **kw)
    assert sol.nfe == 10 and len(sol.ts) == 10
    assert float((sol.x - ref).abs().max()) < 1e-5 * scale
    before = sdekit.sample(model, x, **{**kw, "final_corrector": False}).x
    assert float((before - ref).abs().max()) > 1e-3 * scale
    ours = SdekitScheduler.from_config(ref_sched.config, solver=f"unipc_{order}")
    out = _loop(ours, _free_net, x, 10)
    assert len(ours.timesteps) == 10
    assert float((out - ref).abs().max()) < 1e-5 * scale


def test_final_corrector_refusals_and_one_call_more():
    """final_corrector needs the corrector and a last time with alpha, sigma > 0; it costs exactly one call."""
    sde = sdekit.VPSDE()
    model = sdekit.ScoreModel(lambda x, t: 0.5 * x, sde, "eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    base = sdekit.sample(model, x, "unipc_2", steps=6)
    more = sdekit.sample(model, x, "unipc_2", steps=6, final_corrector=True)
    assert more.nfe == base.nfe + 1 and not torch.equal(more.x, base.x)
    with pytest.raises(sdekit.solvers.NotApplicableError, match="corrector=True"):
        sdekit.sample(model, x, "unipc_2", steps=6, final_corrector=True, corrector=False)
    ts = torch.linspace(1.0, 0.0, 5, dtype=torch.float64)
    ev = sdekit.solvers.base.Evaluator(model)
    with pytest.raises(sdekit.solvers.NotApplicableError, match="final_corrector"):
        next(sdekit.solvers.get("unipc_2").fn(ev, x, ts, final_corrector=True))


# -- DDIMScheduler's own stepping: tau -> tau - N // K -------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_as_ddim_scheduler_at_every_spacing(spacing, eta):
    """DDIMScheduler steps from tau to tau - N // K, which for 'trailing' with 6 steps (999 -> 833, next call at 832)
    and 'linspace' is not the next timestep: SdekitScheduler's ddim takes the same steps (before: 0.1 and 0.67 max
    off in [0, 1] images with eta 0.5). The loop's latents, same seed for the step noise, to 1e-5 relative; and in a
    DDIMPipeline with clip_sample."""
    unet = _unet()
    cfg = dict(timestep_spacing=spacing, clip_sample=False)
    ref_sched = diffusers.DDIMScheduler(**cfg)
    ours = SdekitScheduler.from_config(ref_sched.config, solver="ddim")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    outs = []
    for sched in (ref_sched, ours):
        sched.set_timesteps(6)
        gen, y = torch.Generator().manual_seed(5), x
        with torch.no_grad():
            for t in sched.timesteps:
                y = sched.step(unet(y, t).sample, t, y, eta, generator=gen).prev_sample
        outs.append(y)
    assert float((outs[1] - outs[0]).abs().max()) < 1e-5 * float(outs[0].abs().max())
    base = diffusers.DDIMScheduler(timestep_spacing=spacing, clip_sample=True)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for sched in (base, SdekitScheduler.from_config(base.config, solver="ddim")):
        pipe.scheduler = sched
        images.append(pipe(batch_size=2, num_inference_steps=6, eta=eta, generator=torch.Generator().manual_seed(0),
                           output_type="np").images)
    assert abs(images[1] - images[0]).mean() < 1e-5 and abs(images[1] - images[0]).max() < 1e-4


def test_diffusers_equivalent_refuses_ddim_spacings_off_its_grid():
    """sdekit.sample runs on a grid: DDIMScheduler's steps to tau - N // K that miss the next timestep are refused by
    name (SdekitScheduler takes them); 'trailing' with 10 steps (K divides N) is a grid and is accepted."""
    from sdekit.interop import diffusers_equivalent

    for spacing, steps in (("trailing", 6), ("linspace", 6)):
        with pytest.raises(ValueError, match="tau - N // K"):
            diffusers_equivalent(diffusers.DDIMScheduler(timestep_spacing=spacing), steps)
    assert diffusers_equivalent(diffusers.DDIMScheduler(timestep_spacing="trailing"), 10)["solver"] == "ddim"
