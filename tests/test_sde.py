import math

import numpy as np
import pytest
import torch
import torchsde
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import sdekit
from tests.sdes import KINDS, builtin_sdes, make_sde


unit = st.floats(0.0, 1.0)


def moments_by_ode(sde, ts):
    """Solve d log alpha/dt = f, d(sigma^2)/dt = 2 f sigma^2 + g^2 numerically (scipy, tight tolerance)."""

    def rhs(t, y):
        tt = torch.tensor(t, dtype=torch.float64)
        f, g = float(sde.f(tt)), float(sde.g(tt))
        return [f, 2 * f * y[1] + g * g]

    y0 = [0.0, sde.sigma0() ** 2]
    # the discrete table has kinks: integrate segment by segment so the solver never steps over one
    breaks = [0.0] + ([k / sde.N for k in range(1, sde.N)] if isinstance(sde, sdekit.DiscreteVPSDE) else []) + [sde.T]
    out = {}
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        pts = [t for t in ts if lo <= t <= hi]
        sol = solve_ivp(rhs, (lo, hi), y0, method="DOP853", rtol=1e-11, atol=1e-14, t_eval=pts or None, dense_output=True)
        for t in pts:
            out[t] = sol.sol(t)
        y0 = sol.sol(hi)
    la = np.array([out[t][0] for t in ts])
    var = np.array([out[t][1] for t in ts])
    return np.exp(la), np.sqrt(var)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=12)
@given(a=unit, b=unit)
def test_closed_forms_match_moment_equations(kind, a, b):
    sde = make_sde(kind, a, b)
    ts = list(np.linspace(sde.eps, sde.T, 7))
    alpha_ode, sigma_ode = moments_by_ode(sde, ts)
    t = torch.tensor(ts, dtype=torch.float64)
    np.testing.assert_allclose(sde.alpha(t).numpy(), alpha_ode, rtol=1e-7)
    np.testing.assert_allclose(sde.sigma(t).numpy(), sigma_ode, rtol=1e-6)


class Numeric(sdekit.LinearSDE):
    """A custom SDE that borrows f and g from another: everything else is derived numerically."""

    def __init__(self, other):
        super().__init__(T=other.T, eps=other.eps)
        self.other = other

    def f(self, t):
        return self.other.f(t)

    def g(self, t):
        return self.other.g(t)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve", "cosine"])
@given(a=unit, b=unit)
def test_custom_path_matches_closed_forms(kind, a, b):
    sde = make_sde(kind, a, b)
    num = Numeric(sde)
    t = torch.linspace(sde.eps, sde.T, 33, dtype=torch.float64)
    torch.testing.assert_close(num.alpha(t), sde.alpha(t), rtol=1e-8, atol=0)
    torch.testing.assert_close(num.sigma(t), sde.sigma(t), rtol=1e-8, atol=0)
    torch.testing.assert_close(num.log_snr(t), sde.log_snr(t), rtol=1e-8, atol=1e-8)
    lam = sde.log_snr(t)
    torch.testing.assert_close(num.t_from_log_snr(lam), t, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@given(a=unit, b=unit, u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_t_from_log_snr_inverts_log_snr(kind, a, b, u):
    sde = make_sde(kind, a, b)
    t = sde.eps + (sde.T - sde.eps) * torch.tensor(u, dtype=torch.float64)
    back = sde.t_from_log_snr(sde.log_snr(t))
    torch.testing.assert_close(back, t, rtol=1e-9, atol=1e-9)
    # and the other way round, across the whole log-SNR range
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(sde.eps))
    lam = lo + (hi - lo) * torch.tensor(u, dtype=torch.float64)
    torch.testing.assert_close(sde.log_snr(sde.t_from_log_snr(lam)), lam, rtol=1e-8, atol=1e-8)


def test_custom_sde_in_a_few_lines():
    class Mine(sdekit.LinearSDE):
        def f(self, t):
            return -2.0 * t

        def g(self, t):
            return torch.sqrt(4.0 * t)

    sde = Mine()
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    # int_0^t f = -t^2, so alpha = exp(-t^2) and sigma^2 = 1 - exp(-2 t^2) (a VP process)
    torch.testing.assert_close(sde.alpha(t), torch.exp(-t**2), rtol=1e-10, atol=0)
    torch.testing.assert_close(sde.sigma(t), torch.sqrt(1 - torch.exp(-2 * t**2)), rtol=1e-9, atol=0)
    x = sde.prior_sample((5, 3), generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 3) and torch.isfinite(sde.prior_log_prob(x)).all()


def test_discrete_vp_hits_alphabar_on_its_grid():
    betas = sdekit.linear_beta_schedule(100)
    sde = sdekit.DiscreteVPSDE(betas)
    abar = torch.cumprod(1 - betas, 0)
    t = sde.step_time(torch.arange(100))
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - abar, rtol=1e-12, atol=0)
    cos = sdekit.DiscreteVPSDE.cosine(50)
    torch.testing.assert_close(cos.alpha(cos.step_time(torch.arange(50))) ** 2, cos.alphas_cumprod, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine", "custom"])
def test_forward_sde_monte_carlo_matches_marginal(name):
    """Simulate dx = f x dt + g dw with torchsde from x0 and compare mean and variance at T/2."""
    sde = builtin_sdes()[name]

    class Forward(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return sde.drift(y, t.to(torch.float64))

        def g(self, t, y):
            return sde.diffusion(t.to(torch.float64)).to(y.dtype).expand_as(y)

    n, x0 = 4000, torch.tensor([1.5, -0.5], dtype=torch.float64)
    t1 = 0.5 * sde.T
    y0 = x0.expand(n, 2).clone()
    torch.manual_seed(0)
    ts = torch.tensor([0.0, t1], dtype=torch.float64)
    bm = torchsde.BrownianInterval(0.0, t1, size=(n, 2), dtype=torch.float64, entropy=1234)
    ys = torchsde.sdeint(Forward(), y0, ts, method="euler", dt=1e-3, bm=bm)
    xt = ys[-1]
    mean, std = sde.marginal(x0.unsqueeze(0), t1)
    var = std[0] ** 2
    se_mean = torch.sqrt(var / n)
    assert ((xt.mean(0) - mean[0]).abs() < 5 * se_mean + 2e-3 * mean[0].abs()).all()
    se_var = var * math.sqrt(2 / (n - 1))
    assert ((xt.var(0) - var).abs() < 5 * se_var + 2e-3 * var).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), t=st.floats(0.0, 1.0))
def test_perturb_and_marginal_any_shape_and_dtype(dtype, shape, t):
    sde = sdekit.VPSDE()
    x0 = torch.randn(*shape, dtype=dtype)
    noise = torch.randn(*shape, dtype=dtype)
    xt = sde.perturb(x0, t, noise)
    mean, std = sde.marginal(x0, t)
    assert xt.dtype == dtype and xt.shape == x0.shape
    torch.testing.assert_close(xt, mean + std * noise)
    tb = torch.full((shape[0],), t, dtype=torch.float64)
    torch.testing.assert_close(sde.perturb(x0, tb, noise), xt)


def test_prior_log_prob_is_normal_density():
    for sde in builtin_sdes().values():
        z = sde.prior_sample((7, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        s = sde.prior_std()
        ref = torch.distributions.Normal(0.0, s).log_prob(z).sum(-1)
        torch.testing.assert_close(sde.prior_log_prob(z), ref)


def test_reverse_drift_family():
    sde = sdekit.VPSDE()
    x, score = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = 0.3
    g2 = float(sde.diffusion(t)) ** 2
    torch.testing.assert_close(sde.reverse_drift(x, t, score, eta=1.0), sde.drift(x, t) - g2 * score)
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), sde.drift(x, t) - 0.5 * g2 * score)


# -- bad input -----------------------------------------------------------------------------------
def test_time_outside_range_is_refused():
    sde = sdekit.VPSDE()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, T\]"):
            sde.alpha(bad)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        sdekit.CosineVPSDE().sigma(0.999)
    with pytest.raises(ValueError, match="log-SNR must lie"):
        sde.t_from_log_snr(float(sde.log_snr(sde.T)) - 1.0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        sdekit.DiscreteVPSDE(torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        sdekit.DiscreteVPSDE(torch.tensor([0.1, -0.3]))
    with pytest.raises(ValueError, match="beta_min"):
        sdekit.VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        sdekit.VESDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="T"):
        sdekit.VPSDE(T=-1.0)


def test_mismatched_shapes_are_refused():
    sde = sdekit.VPSDE()
    with pytest.raises(ValueError, match="noise shape"):
        sde.perturb(torch.zeros(3, 2), 0.5, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        sde.perturb(torch.zeros(3, 2), torch.full((4,), 0.5), torch.zeros(3, 2))


# -- a custom LinearSDE whose f and g return Python numbers (issue 21, item 10) ---------------------------------------
class _Constant(sdekit.LinearSDE):
    """dx = -x/2 dt + dw with f and g given as plain floats: alpha = e^{-t/2}, sigma^2 = 1 - e^{-t}."""

    def f(self, t):
        return -0.5

    def g(self, t):
        return 1


def test_f_and_g_may_return_python_numbers():
    sde = _Constant()
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.alpha(t), torch.exp(-t / 2), atol=1e-10)
    assert torch.allclose(sde.sigma(t), torch.sqrt(-torch.expm1(-t)), atol=1e-10)
    assert sde.f(t).dtype == torch.float64 and sde.g(t).shape == t.shape
    x = torch.ones(3, 2, dtype=torch.float64)
    assert torch.allclose(sde.drift(x, t), -0.5 * x)
    model = sdekit.GaussianMixture.default(2).model(sde)
    for solver in ("dpmpp_2m", "euler_maruyama", "heun"):
        sol = sdekit.sample(model, torch.randn(4, 2, dtype=torch.float64), solver, 8, generator=0)
        assert bool(torch.isfinite(sol.x).all())


def test_f_returning_something_else_is_a_named_type_error():
    class Bad(sdekit.LinearSDE):
        def f(self, t):
            return "x"

        def g(self, t):
            return torch.ones_like(t)

    with pytest.raises(TypeError, match=r"Bad\.f\(t\)"):
        Bad().alpha(0.5)
