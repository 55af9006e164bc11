"""A learned solver (``sdekit.learn_solver``) inside an unmodified diffusers pipeline (``LearnedScheduler``): the
pipeline takes exactly ``sdekit.sample``'s steps with the learned solver, one network call per step; the solver is
tied to its U-Net and table, and a config without its coefficients is refused by name."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sdekit  # noqa: E402
from sdekit.interop import LearnedScheduler, from_diffusers  # noqa: E402
from sdekit.solvers.grids import make_grid  # noqa: E402
from sdekit.solvers.learned import LearnedSolver, WrongModelError, model_identity  # noqa: E402


def _unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                                 layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                 norm_num_groups=4).eval()


def _learned(model, steps, denoise=False):
    """A LearnedSolver for ``model`` with coefficients no named solver has (what learning returns, without its
    minutes of back-propagation through a U-Net: the test is the pipeline taking its steps, not its accuracy)."""
    ts = make_grid(model.sde, steps, "logsnr", t_end=0.0 if denoise else None)
    m = steps - int(denoise)
    g = torch.Generator().manual_seed(5)
    a = 0.8 + 0.1 * torch.rand(m, generator=g, dtype=torch.float64)
    b = torch.tril(0.2 * torch.rand(m, m, generator=g, dtype=torch.float64))
    return LearnedSolver(ts, a, b, "dpmpp_2m", "logsnr", True, model_identity(model), denoise=denoise)


@pytest.fixture(scope="module")
def learned_setup():
    unet, sched = _unet(), diffusers.DDPMScheduler(num_train_timesteps=1000)  # clip_sample=True, as from_diffusers
    model = from_diffusers(unet, sched)
    return unet, sched, model, _learned(model, 4)


@pytest.mark.parametrize("denoise", [False, True])
def test_pipeline_takes_sample_steps_with_the_learned_solver(learned_setup, denoise):
    unet, sched, model, learned = learned_setup
    if denoise:
        learned = _learned(model, 4, denoise=True)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    pipe.scheduler = LearnedScheduler.from_learned(learned, unet, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    handle = unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        image = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=learned.nfe,
                     output_type="np").images
    finally:
        handle.remove()
    assert len(calls) == learned.nfe  # one network call per learned step
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))  # DDPMPipeline's draw
    with torch.no_grad():
        want = sdekit.sample(model, x_T, solver=learned).x
    want = (want / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert float(abs(image - want).max()) < 1e-5
    assert 0.05 < float(image.std())  # not a saturated image, where any two solves agree


def test_the_solver_is_tied_to_its_unet_and_refuses_what_it_cannot_take(learned_setup):
    unet, sched, _, learned = learned_setup
    with pytest.raises(WrongModelError):
        LearnedScheduler.from_learned(learned, _unet(seed=1), sched)  # other weights
    with pytest.raises(WrongModelError):
        LearnedScheduler.from_learned(learned, unet, diffusers.DDPMScheduler(beta_schedule="scaled_linear"))
    with pytest.raises(TypeError, match="LearnedSolver"):
        LearnedScheduler.from_learned("dpmpp_2m", unet, sched)
    ours = LearnedScheduler.from_learned(learned, unet, sched)
    with pytest.raises(ValueError, match=f"num_inference_steps={learned.nfe}"):
        ours.set_timesteps(learned.nfe + 3)
    x = torch.randn(1, 1, 8, 8)
    ours.set_timesteps(learned.nfe)
    ours.set_begin_index(1)
    with pytest.raises(ValueError, match="whole grid"):
        ours.step(x, ours.timesteps[1], x)
    # the config holds no coefficients: reloading it is refused by name at the first step, not run as another solver
    assert ours.config["solver"] == "learned"
    again = LearnedScheduler.from_config(ours.config)
    again.set_timesteps(learned.nfe)
    with pytest.raises(ValueError, match="from_learned"):
        again.step(x, again.timesteps[0], x)
    with pytest.raises(ValueError, match="learned"):
        sdekit.interop.SdekitScheduler.from_config(ours.config)
