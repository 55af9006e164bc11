"""Differentiable likelihoods (log_likelihood(create_graph=True)) and the log-density of generated samples
(sample_log_prob), against the Gaussian mixture's analytic log-density and against finite differences."""
import pytest
import torch

import sdekit
from sdekit.likelihood import LikelihoodConfig, log_likelihood, sample_log_prob

SDE = sdekit.VPSDE()
F64 = torch.float64


def mixture(dim=3, seed=0, means=None):
    gm = sdekit.GaussianMixture.default(dim=dim, seed=seed)
    if means is None:
        return gm
    return sdekit.GaussianMixture(gm.weights, means, gm.stds[:, 0])


def exact_prior(gm):
    return lambda z: gm.log_prob(z, SDE.T, SDE)


def test_gradient_in_x_is_the_exact_score():
    """d/dx log p_{t_data}(x) = score(x, t_data): the mixture gives it in closed form."""
    gm = mixture()
    x = gm.sample_t(4, SDE.eps, SDE, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_(True)
    res = log_likelihood(gm.model(SDE), x, prior_log_prob=exact_prior(gm), rtol=1e-7, atol=1e-7, create_graph=True)
    (grad,) = torch.autograd.grad(res.log_prob.sum(), x)
    truth = gm.score(x.detach(), SDE.eps, SDE)
    assert (grad - truth).abs().max() < 1e-4 * truth.abs().max()
    assert res.log_prob.requires_grad and res.bpd.requires_grad


def test_gradient_in_model_parameters_matches_the_analytic_one():
    """The mixture's means as parameters of the model (and of its exact prior): the gradient through the
    solve equals d/dmeans of the analytic log p_{t_data}(x)."""
    gm0 = mixture(dim=2, seed=3)
    x = gm0.sample_t(3, SDE.eps, SDE, generator=torch.Generator().manual_seed(2), dtype=F64)
    means = gm0.means.clone().requires_grad_(True)
    gm = mixture(dim=2, seed=3, means=means)
    res = log_likelihood(gm.model(SDE), x, prior_log_prob=exact_prior(gm), rtol=1e-7, atol=1e-7, create_graph=True)
    (grad,) = torch.autograd.grad(res.log_prob.sum(), means)
    (truth,) = torch.autograd.grad(gm.log_prob(x, SDE.eps, SDE).sum(), means)
    assert (grad - truth).abs().max() < 1e-4 * truth.abs().max()


class MLP(torch.nn.Module):
    def __init__(self, dim=3, width=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.Tanh(), torch.nn.Linear(width, dim))
        self.double()

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], 1))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_mlp_gradients_match_central_finite_differences(divergence):
    """A small MLP (eps prediction), float64, fixed-step rk4 (a smooth map of x and the weights): the
    autograd gradient equals central differences of the same computation."""
    net = MLP()
    model = sdekit.ScoreModel(net, SDE, prediction="eps")
    cfg = LikelihoodConfig(divergence=divergence, probes=3, method="rk4", step_size=0.05)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(4), dtype=F64)

    def value(xx):
        return log_likelihood(model, xx, cfg).log_prob.sum()

    xg = x.clone().requires_grad_(True)
    out = log_likelihood(model, xg, cfg, create_graph=True).log_prob.sum()
    params = [p for p in net.parameters()]
    gx, *gp = torch.autograd.grad(out, [xg, *params])
    assert float(out) == pytest.approx(float(value(x)), abs=1e-12)  # the same number, graph or not
    h = 1e-5
    for i in [(0, 0), (1, 2)]:
        e = torch.zeros_like(x)
        e[i] = h
        fd = (value(x + e) - value(x - e)) / (2 * h)
        assert float(gx[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-7)
    for p, g in [(params[0], gp[0]), (params[2], gp[2])]:
        for idx in [(0,) * p.ndim, tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += h
                up = value(x)
                p[idx] -= 2 * h
                down = value(x)
                p[idx] += h
            assert float(g[idx]) == pytest.approx(float((up - down) / (2 * h)), rel=1e-6, abs=1e-7)


def test_create_graph_needs_the_augmented_builtin_solve():
    with pytest.raises(ValueError, match="create_graph=True .* integrate='augmented' and a built-in method"):
        LikelihoodConfig(integrate="quadrature", create_graph=True)
    with pytest.raises(ValueError, match="create_graph must be True or False"):
        LikelihoodConfig(create_graph=1)


@pytest.mark.parametrize("time_variable", ["t", "log_snr"])
def test_sample_log_prob_is_the_analytic_density_of_the_returned_sample(time_variable):
    gm = mixture(dim=3, seed=5)
    x_T = gm.sample_t(5, SDE.T, SDE, generator=torch.Generator().manual_seed(6), dtype=F64)
    x0, log_prob, stats = sample_log_prob(gm.model(SDE), x_T, prior_log_prob=exact_prior(gm), rtol=1e-8, atol=1e-8,
                                          time_variable=time_variable)
    assert x0.shape == x_T.shape and log_prob.shape == (5,) and stats["nfe"] > 0
    assert (log_prob - gm.log_prob(x0, SDE.eps, SDE)).abs().max() < 1e-5
    # the samples are the probability-flow ODE's: solving back from x0 returns to x_T
    res = log_likelihood(gm.model(SDE), x0, prior_log_prob=exact_prior(gm), rtol=1e-8, atol=1e-8)
    assert (res.z - x_T).abs().max() < 1e-5 and (res.log_prob - log_prob).abs().max() < 1e-5


def test_sample_log_prob_with_hutchinson_probes_is_unbiased_within_its_stderr():
    gm = mixture(dim=8, seed=7)
    x_T = gm.sample_t(6, SDE.T, SDE, generator=torch.Generator().manual_seed(8), dtype=F64)
    x0, log_prob, stats = sample_log_prob(gm.model(SDE), x_T, prior_log_prob=exact_prior(gm), rtol=1e-6, atol=1e-6,
                                          divergence="hutchinson", probes=16)
    err = log_prob - gm.log_prob(x0, SDE.eps, SDE)
    assert stats["stderr"].shape == (6,) and bool((stats["stderr"] > 0).all())
    assert bool((err.abs() < 4 * stats["stderr"] + 1e-4).all())


def test_sample_log_prob_refuses_dequantisation():
    gm = mixture()
    with pytest.raises(ValueError, match="dequantize and integrate='quadrature' do not apply"):
        sample_log_prob(gm.model(SDE), torch.zeros(2, 3, dtype=F64), data_scale=0.1, dequantize=True)


def test_sample_with_log_prob_returns_the_analytic_density_of_its_samples():
    """sdekit.sample(..., log_prob=True): the generated rows' log-densities equal the mixture's exact log p_eps."""
    gm = sdekit.GaussianMixture.default(dim=2)
    sde = sdekit.VPSDE()
    x_T = gm.sample_t(16, sde.T, sde, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sol = sdekit.sample(gm.model(sde), x_T, "dopri5", log_prob=True,
                        likelihood={"rtol": 1e-7, "atol": 1e-7, "prior_log_prob": lambda z: gm.log_prob(z, sde.T, sde)})
    assert sol.log_prob is not None and sol.log_prob.shape == (16,)
    exact = gm.log_prob(sol.x, sde.eps, sde)
    assert torch.allclose(sol.log_prob, exact, atol=1e-4), (sol.log_prob - exact).abs().max()
    with pytest.raises(ValueError, match="adaptively"):
        sdekit.sample(gm.model(sde), x_T, "dopri5", steps=4, log_prob=True)
