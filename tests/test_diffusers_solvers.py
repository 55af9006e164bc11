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
