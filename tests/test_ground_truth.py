import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from tests.sdes import builtin_sdes

SDES = builtin_sdes()


def random_mixture(seed, K=3, dim=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    means = torch.randn(K, dim, generator=g, dtype=torch.float64)
    stds = 0.2 + torch.rand(K, dim, generator=g, dtype=torch.float64)
    return sdekit.GaussianMixture(w, means, stds)


@given(seed=st.integers(0, 2**16), name=st.sampled_from(sorted(SDES)), u=st.floats(0.0, 1.0),
       dim=st.integers(1, 5))
def test_score_is_gradient_of_log_density(seed, name, u, dim):
    gm = random_mixture(seed, dim=dim)
    sde = SDES[name]
    t = u * sde.T
    x = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    lp = gm.log_prob(x, t, sde)
    (grad,) = torch.autograd.grad(lp.sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), t, sde), grad, rtol=1e-9, atol=1e-10)


def test_log_density_integrates_to_one_1d_and_2d():
    gm1 = random_mixture(1, dim=1)
    xs = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    assert abs(torch.trapezoid(gm1.log_prob(xs).exp(), xs[:, 0]).item() - 1) < 1e-8
    sde = sdekit.VPSDE()
    assert abs(torch.trapezoid(gm1.log_prob(xs, 0.3, sde).exp(), xs[:, 0]).item() - 1) < 1e-8
    gm2 = random_mixture(2, dim=2)
    g = torch.linspace(-9, 9, 801, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    p = gm2.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1), 0.5, SDES["ve"]).exp().reshape(X.shape)
    assert abs(torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item() - 1) < 1e-6


def test_exact_sampling_matches_moments():
    gm = random_mixture(3, dim=2)
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se = torch.sqrt(torch.diagonal(gm.covariance()) / x.shape[0])
    assert ((x.mean(0) - gm.mean()).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), rtol=0.03, atol=0.01)


def test_sample_t_follows_the_marginal():
    gm, sde = random_mixture(4, dim=2), SDES["vp"]
    x = gm.sample_t(100_000, 0.4, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, s = float(sde.alpha(0.4)), float(sde.sigma(0.4))
    torch.testing.assert_close(x.mean(0), a * gm.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), a**2 * gm.covariance() + s**2 * torch.eye(2, dtype=torch.float64),
                               atol=0.02, rtol=0.02)


def test_model_gives_the_exact_score_for_any_event_shape():
    means = torch.randn(2, 2, 3, dtype=torch.float64)
    gm = sdekit.GaussianMixture([0.3, 0.7], means, 0.5)
    sde = SDES["custom"]
    m = gm.model(sde)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.2, 0.3, 0.9], dtype=torch.float64)
    assert m.score(x, t).shape == x.shape
    for i in range(4):
        torch.testing.assert_close(m.score(x[i:i + 1], t[i]), gm.score(x[i:i + 1], t[i], sde))
    eps = m.eps(x, t)
    torch.testing.assert_close(eps, -sde.sigma(t)[:, None, None] * gm.score(x, t, sde))


def test_log_density_is_analytic_for_a_single_gaussian():
    gm = sdekit.GaussianMixture([1.0], [[1.0, -2.0]], [[0.5, 2.0]])
    sde = SDES["subvp"]
    x = torch.randn(5, 2, dtype=torch.float64)
    a, s = float(sde.alpha(0.7)), float(sde.sigma(0.7))
    std = torch.sqrt(a**2 * torch.tensor([0.25, 4.0], dtype=torch.float64) + s**2)
    ref = torch.distributions.Normal(a * torch.tensor([1.0, -2.0], dtype=torch.float64), std).log_prob(x).sum(-1)
    torch.testing.assert_close(gm.log_prob(x, 0.7, sde), ref)


def test_bad_mixture_input():
    with pytest.raises(ValueError, match="weights must have shape"):
        sdekit.GaussianMixture([1.0, 2.0], [[0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="positive"):
        sdekit.GaussianMixture([1.0], [[0.0, 0.0]], -1.0)
    with pytest.raises(ValueError, match="stds must be"):
        sdekit.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]])
    gm = sdekit.GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="needs an sde"):
        gm.log_prob(torch.zeros(3, 2), 0.5)
    assert math.isfinite(float(gm.log_prob(torch.zeros(1, 2))))
