"""Identities that are exact stay exact (sigma(0) = 0, alpha <= 1 on VP paths), and a custom SDE's
marginals are computed in log space: finite where the true values are, a clear error where they
overflow float64."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from tests.sdes import CustomVP

VP_PATHS = {
    "vp": lambda: sdekit.VPSDE(),
    "cosine": lambda: sdekit.CosineVPSDE(),
    "cosine_s": lambda: sdekit.CosineVPSDE(s=0.3, T=0.99),
    "discrete": lambda: sdekit.DiscreteVPSDE.linear(1000),
    "discrete_cos": lambda: sdekit.DiscreteVPSDE.cosine(50),
}


def all_builtins():
    from sdekit.interop import EDMSDE

    return {**{k: f() for k, f in VP_PATHS.items()}, "subvp": sdekit.SubVPSDE(), "ve": sdekit.VESDE(),
            "edm": EDMSDE(), "custom": CustomVP()}


@pytest.mark.parametrize("name, sde", list(all_builtins().items()))
def test_sigma_is_exactly_zero_at_time_zero(name, sde):
    for t in (0.0, 0, torch.tensor(0.0), torch.tensor(0.0, dtype=torch.float32), torch.zeros(3)):
        sigma = sde.sigma(t)
        assert bool((sigma == 0).all()), (name, t, sigma)
        assert bool((sde.log_snr(t) == math.inf).all()), (name, t)
    if name != "edm":
        assert float(sde.log_alpha(torch.tensor(0.0))) == 0.0


@pytest.mark.parametrize("name", list(VP_PATHS))
@settings(max_examples=60, deadline=None)
@given(u=st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0), st.floats(0.0, 1e-6)))
def test_vp_paths_alpha_at_most_one_and_variance_preserved(name, u):
    sde = VP_PATHS[name]()
    t = torch.tensor([u * sde.T], dtype=torch.float64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    assert bool((alpha <= 1).all()) and bool((sde.log_alpha(t) <= 0).all())
    assert torch.isfinite(sigma).all() and (torch.isfinite(sde.log_snr(t)).all() or u < 1e-200)  # sigma^2 underflows
    assert float((alpha**2 + sigma**2 - 1).abs().max()) < 1e-12


@settings(max_examples=40, deadline=None)
@given(s=st.floats(1e-4, 0.5), u=st.floats(0.0, 1.0))
def test_cosine_log_alpha_never_rounds_above_zero(s, u):
    """The issue: on another torch release log cos(phi(0)) - log cos(phi(0)) rounded to +1.4e-20 and sigma(0)
    was NaN. The closed form now used is exactly 0 at t = 0 and <= 0 everywhere, and matches the cosine."""
    sde = sdekit.CosineVPSDE(s=s, T=0.99)
    t = torch.tensor([0.0, u * sde.T], dtype=torch.float64)
    la = sde.log_alpha(t)
    assert float(la[0]) == 0.0 and bool((la <= 0).all())
    ref = math.log(math.cos((float(t[1]) + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2))
    assert abs(float(la[1]) - ref) <= 1e-12 * max(1.0, abs(ref))
    assert not torch.isnan(sde.sigma(t)).any() and float(sde.sigma(t)[0]) == 0.0


def test_logsnr_grid_on_cosine_from_time_zero():
    sde = sdekit.CosineVPSDE()
    lam = sde.log_snr(torch.linspace(0, sde.T, 9, dtype=torch.float64))
    assert lam[0] == math.inf and torch.isfinite(lam[1:]).all() and (lam[1:].diff() < 0).all()


class ConstantF(sdekit.LinearSDE):
    """dx = a x dt + dw: alpha = e^{a t}, sigma^2 = (e^{2 a t} - 1) / (2 a)."""

    def __init__(self, a, T=1.0):
        super().__init__(T=T, eps=1e-3)
        self.a = a

    def f(self, t):
        return torch.full_like(t, self.a)

    def g(self, t):
        return torch.ones_like(t)


def exact_log_sigma(a, t):
    # log sigma^2 = log(-expm1(-2 a t)) - log(-2 a) + 2 a t for a < 0 (stable form)
    return 0.5 * (math.log(-math.expm1(2 * a * t)) - math.log(-2 * a)) if a < 0 else \
        0.5 * (math.log(math.expm1(2 * a * t)) - math.log(2 * a))


@pytest.mark.parametrize("a", [-2000.0, -300.0, -5.0, 3.0, 300.0])
def test_custom_sde_marginals_in_log_space(a):
    """issue 13 item 7: f = -2000 gave sigma(1) = NaN (true value about 0.0158)."""
    sde = ConstantF(a)
    ts = [1e-4, 0.01, 0.3, 1.0]
    sigma = sde.sigma(torch.tensor(ts, dtype=torch.float64))
    for t, s in zip(ts, sigma.tolist()):
        assert math.isfinite(s) and abs(math.log(s) - exact_log_sigma(a, t)) < 1e-9, (a, t, s)
    lam = sde.log_snr(torch.tensor(ts, dtype=torch.float64))
    for t, v in zip(ts, lam.tolist()):
        assert abs(v - 2 * (a * t - exact_log_sigma(a, t))) < 1e-8 * max(1, abs(v)), (a, t, v)
    assert float(sde.sigma(1.0)) == pytest.approx(math.exp(exact_log_sigma(a, 1.0)), rel=1e-9)
    if a == -2000.0:
        assert float(sde.sigma(1.0)) == pytest.approx(0.0158114, rel=1e-5)
    assert sde.sigma(0.0) == 0


@settings(max_examples=30, deadline=None)
@given(u=st.floats(0.01, 1.0))
def test_custom_sde_log_snr_round_trip_in_log_space(u):
    sde = ConstantF(-2000.0)
    t = torch.tensor([u], dtype=torch.float64)
    back = sde.t_from_log_snr(sde.log_snr(t))
    assert float((back - t).abs().max()) < 1e-9


def test_custom_sde_with_overflowing_alpha_is_a_clear_error():
    """issue 13 item 7: f = +2000 raised OverflowError: math range error."""
    sde = ConstantF(2000.0)
    for call in (lambda: sde.sigma(1.0), lambda: sde.alpha(0.5), lambda: sde.log_snr(torch.tensor([0.5]))):
        with pytest.raises(ValueError, match=r"alpha\(t\) = exp\(int_0\^t f\) overflows float64"):
            call()
    # a schedule that stays inside float64 up to T is fine
    assert math.isfinite(float(ConstantF(2000.0, T=0.3).sigma(0.3)))


def test_custom_sde_with_non_finite_f_is_a_clear_error():
    class Bad(ConstantF):
        def f(self, t):
            return torch.where(t > 0.5, torch.tensor(math.nan, dtype=torch.float64), torch.zeros_like(t))

    with pytest.raises(ValueError, match="int_0\\^t f is not finite"):
        Bad(0.0).sigma(0.7)
