"""SdekitScheduler on EDM-preconditioned configs (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): the pipeline's
loop as diffusers' pipelines drive an EDM scheduler, diffusers' own algorithms reproduced, every eligible solver on
the EDM process reaching an exact Gaussian-mixture law, refusals by name, save/load."""
import inspect
import tempfile

import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")
from sdekit.interop import EDMSDE, SdekitScheduler, eligible_solvers  # noqa: E402
from sdekit.metrics import sliced_w2  # noqa: E402
from sdekit.solvers.registry import get  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice

CLASSES = {"EDMEulerScheduler": diffusers.EDMEulerScheduler,
           "EDMDPMSolverMultistepScheduler": diffusers.EDMDPMSolverMultistepScheduler}


def _toy(x, tau):
    """A small deterministic 'network' F(c_in x, c_noise): smooth in its input and in the timestep."""
    tau = tau.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh(0.7 * x + 0.3 * tau) - 0.2 * x + 0.05 * torch.sin(3 * tau)


def _pipeline_loop(sched, net, noise, steps, seed=0, eta=0.0):
    """The denoising loop of diffusers' pipelines on an EDM scheduler (StableDiffusionXLPipeline's): latents =
    noise * init_noise_sigma, then per timestep scale_model_input, the network at (scaled latents, t), and
    step(noise_pred, t, latents, **extra_step_kwargs) with the pipeline's generator (and eta where step takes it)."""
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    params = set(inspect.signature(sched.step).parameters)
    extra = {k: v for k, v in (("generator", gen), ("eta", eta)) if k in params}
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = net(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        x = sched.step(out, t, x, **extra, return_dict=False)[0]
    return x


def _noise(batch=6, shape=(2, 3), seed=1):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
@pytest.mark.parametrize("schedule", ["karras", "exponential"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusers_algorithm_equals_the_edm_scheduler(cls_name, schedule, final, prediction):
    """solver="diffusers" on an EDM config is that scheduler: same timesteps, sigmas, init_noise_sigma, input
    scaling and samples over step counts, from its config or the scheduler object, to 1e-5 where the states stay
    small (sigma_max = 20), and at the default sigma_max = 80 to the float32 resolution of x_T (EDMEuler forms
    x - D in float32 at |x| ~ sigma_max |n|: its own rounding there, 1.4e-5 at |x_T| = 150, is ~200 times sdekit's)."""
    for sigma_max in (20.0, 80.0):
        cfg = dict(sigma_schedule=schedule, final_sigmas_type=final, prediction_type=prediction, sigma_max=sigma_max,
                   rho=5.0)
        ref = CLASSES[cls_name](**cfg)
        tol = max(1e-5, 2 ** -21 * ref.init_noise_sigma * float(_noise().abs().max()))
        ours = SdekitScheduler.from_config(ref.config if sigma_max == 20.0 else ref, solver="diffusers")
        assert ours.init_noise_sigma == ref.init_noise_sigma
        for steps in (1, 2, 5, 12):
            want = _pipeline_loop(ref, _toy, _noise(), steps)
            got = _pipeline_loop(ours, _toy, _noise(), steps)
            assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("algorithm,solver_type,order", [
    ("dpmsolver++", "heun", 2), ("dpmsolver++", "midpoint", 1), ("sde-dpmsolver++", "midpoint", 2),
    ("sde-dpmsolver++", "heun", 2), ("sde-dpmsolver++", "midpoint", 1), ("dpmsolver++", "midpoint", 3)])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_diffusers_algorithm_equals_edm_dpmsolver_variants(algorithm, solver_type, order, final):
    """EDMDPMSolverMultistep's other algorithms (Taylor "heun" 2M, SDE-DPM-Solver++ with the pipeline's generator,
    the published 3M; thresholding) are reproduced draw for draw. Where diffusers returns NaN (heun or 3M,
    "sigma_min", 15 steps or more: its zero-length last step has h = 0 in float32, and its weight (e^{-h} - 1)/h + 1
    is 0/0), sdekit's result is finite."""
    cfg = dict(algorithm_type=algorithm, solver_type=solver_type, solver_order=order, final_sigmas_type=final,
               thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    ref = diffusers.EDMDPMSolverMultistepScheduler(**cfg)
    ours = SdekitScheduler.from_config(ref.config, solver="diffusers")
    for steps in (1, 3, 8, 14):
        torch.testing.assert_close(_pipeline_loop(ours, _toy, _noise(), steps, seed=5),
                                   _pipeline_loop(ref, _toy, _noise(), steps, seed=5), rtol=1e-5, atol=1e-5)
    if final == "sigma_min" and (solver_type == "heun" or order == 3):
        assert bool(_pipeline_loop(ref, _toy, _noise(), 16, seed=5).isnan().all())
        assert bool(_pipeline_loop(ours, _toy, _noise(), 16, seed=5).isfinite().all())


def _mixture_net(gm, sched):
    """The exact x0-prediction of ``gm`` on EDMSDE as an EDM network F: the pipeline hands it c_in(sigma) x and
    c_noise(sigma) = log(sigma)/4, and F = (D - c_skip x)/c_out inverts the scheduler's preconditioning."""
    sd, sign = sched.config["sigma_data"], 1.0 if sched.config["prediction_type"] == "epsilon" else -1.0
    sde = EDMSDE(sched.config["sigma_min"], sched.config["sigma_max"])

    def net(scaled, tau):
        sigma = torch.exp(4 * tau.to(torch.float64)).reshape(-1, 1)
        x = scaled.to(torch.float64) * (sigma ** 2 + sd ** 2).sqrt()
        d = gm.denoise(x, sigma.reshape(-1).clamp(max=sde.T), sde)
        c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sign * sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        return ((d - c_skip * x) / c_out).to(scaled.dtype)
    return net


MIXTURE = sdekit.GaussianMixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [0.3, 0.5])
# v-prediction and the sigma_min end (the zero-length last step), sigma_max = 40
MIXTURE_CONFIG = dict(prediction_type="v_prediction", final_sigmas_type="sigma_min", sigma_max=40.0)


def _random_solvers():
    return [n for n in eligible_solvers() if get(n).stochastic and get(n).options.get("eta", 1.0) != 0.0]


def test_every_deterministic_solver_reaches_the_exact_flow_endpoint():
    """Every eligible deterministic solver runs in the pipeline's loop on an EDM config and reaches the exact
    probability-flow endpoint of a Gaussian mixture (the mixture's exact denoiser wrapped as the EDM network;
    reference: DPM-Solver++(3M) on 800 Karras steps from the same x_T), closer with more steps."""
    cfg = diffusers.EDMEulerScheduler(**MIXTURE_CONFIG).config
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(3))
    sde = EDMSDE(0.002, 40.0)
    fine = (40 ** (1 / 7) + torch.linspace(0, 1, 801, dtype=torch.float64) * (0.002 ** (1 / 7) - 40 ** (1 / 7))) ** 7
    ref = sdekit.sample(MIXTURE.model(sde), noise.double() * (40.0 ** 2 + 1) ** 0.5, "dpmpp_3m", ts=fine).x
    failures = []
    for name in sorted(set(eligible_solvers()) - set(_random_solvers())):
        sched = SdekitScheduler.from_config(cfg, solver=name)
        net = _mixture_net(MIXTURE, sched)
        err = [float((_pipeline_loop(sched, net, noise, k).double() - ref).norm(dim=1).mean()) for k in (8, 40)]
        print(name, err)
        if not (err[1] < 0.1 and err[1] < err[0] / 2):
            failures.append((name, err))
    assert not failures, failures


def test_every_stochastic_solver_draws_from_the_pipeline_generator_and_reaches_the_mixture_law():
    """Every eligible stochastic solver draws its noise from the pipeline's generator (same seed, same samples;
    another seed, others) and reaches the exact mixture law (sliced W2 to exact draws; 2000 samples: about 0.06
    between two exact draws), closer with more steps."""
    cfg = diffusers.EDMEulerScheduler(**MIXTURE_CONFIG).config
    exact = MIXTURE.sample(2000, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    failures = []
    for name in _random_solvers():
        sched = SdekitScheduler.from_config(cfg, solver=name)
        net = _mixture_net(MIXTURE, sched)
        coarse, fine = (_pipeline_loop(sched, net, noise, k) for k in (6, 48))
        assert torch.equal(_pipeline_loop(sched, net, noise, 6), coarse), name
        assert not torch.equal(_pipeline_loop(sched, net, noise, 6, seed=1), coarse), name
        err = [sliced_w2(x.double(), exact) for x in (coarse, fine)]
        print(name, err)
        if not (err[1] < 0.15 and err[1] < err[0] / 2):
            failures.append((name, err))
    assert not failures, failures


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_image_to_image_start_equals_the_edm_scheduler(cls_name):
    """An img2img pipeline's start: set_begin_index, add_noise at the first kept timestep (x0 + sigma n), then the
    loop from there, as the EDM scheduler takes it."""
    ref = CLASSES[cls_name](sigma_max=20.0)
    ours = SdekitScheduler.from_config(ref.config, solver="diffusers")
    outs = []
    for sched in (ref, ours):
        sched.set_timesteps(8)
        sched.set_begin_index(3)
        t0 = sched.timesteps[3:4]
        x = sched.add_noise(_noise(seed=4), _noise(seed=5), t0)
        outs.append(x)
        for t in sched.timesteps[3:]:
            x = sched.step(_toy(sched.scale_model_input(x, t), t.expand(x.shape[0])), t, x).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[3], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,match", [
    ({"prediction_type": "sample"}, "prediction_type='sample' .*raise for it"),
    ({"sigma_schedule": "linear"}, "sigma_schedule='linear' .*accepted: 'karras', 'exponential'"),
    ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear' .*an EDM scheduler has none"),
    ({"snr_shift_scale": 3.0}, "snr_shift_scale=3.0 .*unknown to sdekit"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "0 < sigma_min < sigma_max"),
    ({"grid_scheduler": "dpmsolver_multistep"}, "an EDM config's grid is edm_euler or edm_dpmsolver_multistep"),
])
def test_edm_settings_sdekit_cannot_honour_are_refused_by_name(config, match):
    """An EDM config field that would change the maths and that sdekit does not honour is refused by name."""
    base = {k: v for k, v in diffusers.EDMEulerScheduler().config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match=match):
        SdekitScheduler.from_config({**base, **config}, solver="dpmpp_2m")
    if "snr_shift_scale" not in config:  # not an __init__ argument
        with pytest.raises(ValueError, match=match):
            SdekitScheduler(**{**base, **config}, solver="dpmpp_2m")


@pytest.mark.parametrize("config,match", [
    ({"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}, "no third-order SDE update.*got sde-dpmsolver\\+\\+"),
])
def test_edm_dpmsolver_algorithms_without_an_sdekit_equivalent_are_refused_by_name(config, match):
    """solver="diffusers" on an EDMDPMSolverMultistep setting sdekit has no exact counterpart of (diffusers' step
    fails on it: its third-order update has no SDE branch): refused by name at set_timesteps, before any step;
    other solvers run on that config."""
    cfg = diffusers.EDMDPMSolverMultistepScheduler(**config).config
    with pytest.raises(ValueError, match=match):
        SdekitScheduler.from_config(cfg, solver="diffusers").set_timesteps(10)
    SdekitScheduler.from_config(cfg, solver="dpmpp_3m").set_timesteps(10)


def test_edm_grid_refuses_custom_timesteps_and_takes_edm_euler_ramps():
    sched = SdekitScheduler.from_config(diffusers.EDMEulerScheduler().config, solver="dpmpp_2m")
    with pytest.raises(ValueError, match="c_noise"):
        sched.set_timesteps(timesteps=[1.0, 0.5])
    with pytest.raises(ValueError, match="positions in \\[0, 1\\].*grid_ts"):
        sched.set_timesteps(sigmas=[80.0, 10.0, 0.0])
    ref = diffusers.EDMEulerScheduler()
    ramp = torch.tensor([0.0, 0.3, 0.9, 1.0])
    ref.set_timesteps(sigmas=ramp)
    sched.set_timesteps(sigmas=ramp)
    assert torch.equal(sched.sigmas, ref.sigmas) and torch.equal(sched.timesteps, ref.timesteps)


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_edm_config_save_load_round_trip(cls_name):
    """SchedulerCommonTest's round trips on an EDM config: save_config / from_pretrained keeps the config and the
    step; the EDM class that ``compatibles`` lists reads SdekitScheduler's config and gives it back unchanged; an
    EDM SdekitScheduler lists only EDM classes, a beta-table one none."""
    ours = SdekitScheduler.from_config(CLASSES[cls_name](sigma_max=50.0, rho=6.0, final_sigmas_type="sigma_min"),
                                       solver="sa_solver", solver_options={"tau": 0.5})
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_config(tmp)
        back = SdekitScheduler.from_pretrained(tmp)
    mine = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == mine
    outs = []
    for sched in (ours, back):
        outs.append(_pipeline_loop(sched, _toy, _noise(), 5, seed=2))
    assert torch.equal(outs[0], outs[1])
    names = {c.__name__ for c in ours.compatibles}
    assert names == set(CLASSES) and {"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"} <= set(
        SdekitScheduler._compatibles)
    assert not names & {c.__name__ for c in SdekitScheduler().compatibles}
    for cls in ours.compatibles:
        edm = cls.from_config(ours.config)
        assert edm.config["sigma_max"] == 50.0 and edm.config["rho"] == 6.0
        again = SdekitScheduler.from_config(edm.config)
        assert {k: v for k, v in again.config.items() if k in mine} == mine


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_from_diffusers_and_diffusers_equivalent_run_the_edm_scheduler(cls_name, final):
    """``sdekit.sample(from_diffusers(unet, sched), x_T, **diffusers_equivalent(sched, K))`` is the EDM scheduler's
    own loop on a U-Net: the preconditioned network (c_in, c_noise, c_skip, c_out) as sdekit's x0 prediction on
    EDMSDE, and the scheduler's algorithm on its sigmas."""
    from sdekit.interop import diffusers_equivalent, from_diffusers

    unet, sched = _tiny_unet(), CLASSES[cls_name](sigma_max=10.0, final_sigmas_type=final, prediction_type="v_prediction")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    with torch.no_grad():
        ours = sdekit.sample(from_diffusers(unet, sched), x_T, **diffusers_equivalent(sched, 6)).x
        ref = _pipeline_loop(sched, lambda x, t: unet(x, t).sample, x_T / sched.init_noise_sigma, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_direct_edm_config_and_a_tuned_grid_in_the_pipeline():
    """SdekitScheduler(**edm_config) reads it as an EDM config (its own fields mark it; solver="diffusers" takes the
    layout from them), and ``grid_ts`` (sigmas on EDMSDE, e.g. a tuned grid) runs in the pipeline exactly the steps
    ``sdekit.sample`` takes on that grid with the same exact model."""
    cfg = {k: v for k, v in diffusers.EDMDPMSolverMultistepScheduler(sigma_max=40.0).config.items() if k[0] != "_"}
    ref = diffusers.EDMDPMSolverMultistepScheduler(**cfg)
    ours = SdekitScheduler(**cfg, solver="diffusers")
    torch.testing.assert_close(_pipeline_loop(ours, _toy, _noise(), 7), _pipeline_loop(ref, _toy, _noise(), 7),
                               rtol=1e-5, atol=1e-5)
    sde = EDMSDE(0.002, 40.0)
    ts = torch.cat([(40 ** (1 / 3) + torch.linspace(0, 1, 6, dtype=torch.float64) * (0.002 ** (1 / 3) - 40 ** (1 / 3)))
                    ** 3, torch.zeros(1, dtype=torch.float64)])
    sched = SdekitScheduler(**{k: v for k, v in cfg.items() if k != "solver_order"}, solver="unipc_2", grid_ts=ts)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    got = _pipeline_loop(sched, _mixture_net(MIXTURE, sched), noise, 6)
    want = sdekit.sample(MIXTURE.model(sde), noise.double() * sched.init_noise_sigma, "unipc_2", ts=ts).x
    assert torch.equal(sched.sigmas, ts.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_edm_euler_churn_arguments_are_taken_without_churn_and_refused_with_it():
    """EDMEulerScheduler.step's s_churn/s_tmin/s_tmax/s_noise: at s_churn = 0 (its default) the step is the same;
    churn is refused by name (sdekit's stochastic samplers take the noise); an unknown keyword is a TypeError."""
    cfg = diffusers.EDMEulerScheduler().config
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    out = []
    for kw in ({}, {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}):
        s = SdekitScheduler.from_config(cfg, solver="ddim")
        s.set_timesteps(4)
        t = s.timesteps[0]
        out.append(s.step(0.1 * x, t, x * s.init_noise_sigma, **kw).prev_sample)
    assert torch.equal(out[0], out[1])
    s = SdekitScheduler.from_config(cfg, solver="ddim")
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="s_churn"):
        s.step(0.1 * x, s.timesteps[0], x, s_churn=0.5)
    with pytest.raises(TypeError, match="s_bogus"):
        s.step(0.1 * x, s.timesteps[0], x, s_bogus=1.0)
