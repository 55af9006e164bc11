import math

import pytest
import torch

import sdekit
from sdekit.losses import WEIGHTINGS, dsm_loss, loss_weight, sample_time
from sdekit.nets import MLP
from sdekit.parameterization import convert
from tests.sdes import builtin_sdes

SDES = builtin_sdes()


class ExactAs(torch.nn.Module):
    """The exact score of a mixture, re-expressed as prediction ``kind``."""

    def __init__(self, gm, sde, kind):
        super().__init__()
        self.gm, self.sde, self.kind = gm, sde, kind

    def forward(self, x, t):
        if bool((t == t[0]).all()):
            t = t[0]  # one schedule evaluation (the custom SDE's schedule is numerical)
        score = self.gm.score(x, t, self.sde)
        return convert(score, "score", self.kind, x, t, self.sde)


def one_gaussian(s0=0.5, dim=2):
    return sdekit.GaussianMixture([1.0], torch.full((1, dim), 0.3, dtype=torch.float64), s0)


@pytest.mark.parametrize("name", ["vp", "ve", "cosine", "custom"])
@pytest.mark.parametrize("kind", sdekit.PREDICTIONS)
def test_simple_loss_of_exact_model_equals_analytic_value(name, kind):
    """For data N(mu, s0^2 I) and the exact score, E||eps_hat - eps||^2 per feature at time t is
    alpha^2 s0^2 / (alpha^2 s0^2 + sigma^2), whatever the prediction type."""
    sde, s0 = SDES[name], 0.5
    gm = one_gaussian(s0)
    model = sdekit.ScoreModel(ExactAs(gm, sde, kind), sde, prediction=kind)
    gen = torch.Generator().manual_seed(0)
    x0 = gm.sample(200_000, generator=gen, dtype=torch.float64)
    for u in (0.05, 0.3, 0.8):
        t = torch.tensor(sde.eps + u * (sde.T - sde.eps), dtype=torch.float64)
        a2, s2 = float(sde.alpha(t)) ** 2, float(sde.sigma(t)) ** 2
        expect = a2 * s0**2 / (a2 * s0**2 + s2)
        got = float(dsm_loss(model, x0, "simple", t=t, generator=gen))
        assert abs(got - expect) < 0.01 * expect + 1e-3, (u, got, expect)


def test_exact_score_beats_perturbed_scores():
    sde = SDES["vp"]
    gm = sdekit.GaussianMixture.default(dim=2)
    gen = torch.Generator().manual_seed(1)
    x0 = gm.sample(50_000, generator=gen, dtype=torch.float64)
    t = sample_time(sde, x0.shape[0], generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    exact = dsm_loss(gm.model(sde), x0, t=t, noise=noise)
    for delta in (0.05, -0.05):
        bad = sdekit.ScoreModel(lambda x, tt, d=delta: gm.score(x, tt, sde) * (1 + d), sde, "score")
        assert dsm_loss(bad, x0, t=t, noise=noise) > exact
    shifted = sdekit.ScoreModel(lambda x, tt: gm.score(x, tt, sde) + 0.05, sde, "score")
    assert dsm_loss(shifted, x0, t=t, noise=noise) > exact


@pytest.mark.parametrize("kind", ["score", "v", "x0"])
def test_native_weighting_is_mse_in_output_space(kind):
    sde = SDES["vp"]
    net = MLP(dim=2, width=16, depth=1).double()
    model = sdekit.ScoreModel(net, sde, prediction=kind)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = sample_time(sde, 64, generator=gen)
    noise = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    target = {"score": -noise / s, "v": a * noise - s * x0, "x0": x0}[kind]
    out = net(a * x0 + s * noise, t)
    expect = (out - target).pow(2).mean(1)
    got = dsm_loss(model, x0, "native", t=t, noise=noise, reduction="none")
    torch.testing.assert_close(got, expect, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine", "custom"])
def test_likelihood_weight_is_minus_dlambda_dt(name):
    """g^2/sigma^2 = -d lambda/dt, the identity behind the importance sampler."""
    sde = SDES[name]
    t = torch.linspace(sde.eps + 0.01, sde.T - 0.01, 7, dtype=torch.float64)
    h = 1e-6
    dlam = (sde.log_snr(t + h) - sde.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(sde.diffusion(t) ** 2 / sde.sigma(t) ** 2, -dlam, rtol=1e-4, atol=1e-6)


def test_likelihood_importance_sampling_unbiased_and_lower_variance():
    """Both estimators of 1/2 int g^2/sigma^2 E||eps_hat - eps||^2 dt agree with the closed form
    1/2 [softplus(lambda + 2 log s0)] from lambda(T) to lambda(eps); importance sampling has far less variance."""
    sde, s0 = SDES["vp"], 0.5
    gm = one_gaussian(s0)
    model = gm.model(sde)
    gen = torch.Generator().manual_seed(0)
    x0 = gm.sample(400_000, generator=gen, dtype=torch.float64)
    sp = torch.nn.functional.softplus
    lam_hi, lam_lo = sde.log_snr(sde.eps), sde.log_snr(sde.T)
    expect = float(0.5 * (sp(lam_hi + 2 * math.log(s0)) - sp(lam_lo + 2 * math.log(s0))))
    imp = dsm_loss(model, x0, "likelihood", generator=gen, reduction="none")
    uni = dsm_loss(model, x0, "likelihood", importance=False, generator=gen, reduction="none")
    se_imp = float(imp.std()) / math.sqrt(imp.numel())
    se_uni = float(uni.std()) / math.sqrt(uni.numel())
    assert abs(float(imp.mean()) - expect) < 4 * se_imp + 1e-3 * expect
    assert abs(float(uni.mean()) - expect) < 4 * se_uni + 1e-3 * expect
    assert float(imp.var()) < 0.5 * float(uni.var())


def test_importance_times_follow_lambda_uniform():
    sde = SDES["vp"]
    t = sample_time(sde, 100_000, "likelihood", generator=torch.Generator().manual_seed(0))
    assert float(t.min()) >= sde.eps and float(t.max()) <= sde.T
    lam = sde.log_snr(t)
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(sde.eps))
    hist = torch.histc(lam, bins=10, min=lo, max=hi) / lam.numel()
    assert (hist - 0.1).abs().max() < 0.01


def test_min_snr_weight():
    sde = SDES["vp"]
    t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=torch.float64)
    snr = torch.exp(sde.log_snr(t))
    w = loss_weight(sde, t, "min_snr", gamma=5.0)
    torch.testing.assert_close(w, torch.where(snr > 5, 5 / snr, torch.ones_like(snr)))
    assert w[0] < 1 and w[-1] == 1


def test_loss_errors_and_labels():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="accepted"):
        dsm_loss(sdekit.ScoreModel(MLP(dim=2), sde), torch.randn(4, 2), weighting="elbo")
    net = MLP(dim=2, width=16, depth=1, num_classes=3)
    model = sdekit.ScoreModel(net, sde)
    x0 = torch.randn(8, 2)
    gen = torch.Generator().manual_seed(0)
    for w in WEIGHTINGS:
        loss = dsm_loss(model, x0, w, y=torch.randint(0, 4, (8,)), generator=gen)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
