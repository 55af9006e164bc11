"""Probability-flow log-likelihoods against the Gaussian mixture's analytic log-density."""
import math
import time
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.likelihood import LikelihoodConfig, NegativeBPDWarning, bits_per_dim, log_likelihood
from sdekit.solvers import SolverError, StepBudgetError
from tests.sdes import builtin_sdes

SDES = builtin_sdes()
TIGHT = dict(rtol=1e-8, atol=1e-8)



def exact_prior(gm, sde, t_prior=None):
    """The mixture's exact p_T (the SDE's N(0, I) prior is only approximately p_T)."""
    t_prior = sde.T if t_prior is None else t_prior
    return lambda z: gm.log_prob(z, t_prior, sde)


def points(gm, n=6, seed=1):
    """Exact samples plus one point off the data (in the mixture's tails)."""
    x = gm.sample(n - 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    far = gm.mean().reshape(1, -1) + 2.5
    return torch.cat([x, far.reshape(1, *gm.event_shape)])


@pytest.mark.parametrize("dim", [2, 8, 32])
@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_divergence_matches_analytic_log_density(name, dim):
    sde = SDES[name]
    gm = sdekit.GaussianMixture.default(dim=dim, seed=dim)
    x = points(gm)
    res = sdekit.log_likelihood(gm.model(sde), x, divergence="exact", prior_log_prob=exact_prior(gm, sde), **TIGHT)
    truth = gm.log_prob(x, sde.eps, sde)
    assert res.log_prob.shape == (x.shape[0],) and res.log_prob.dtype == torch.float64
    assert (res.log_prob - truth).abs().max().item() < 1e-4
    torch.testing.assert_close(res.log_prob, res.prior + res.delta)
    assert res.z.shape == x.shape and res.stderr is None and res.nfe > 0


def test_sde_prior_is_not_exactly_p_T_but_the_gap_is_accounted_for():
    """With the default N(0, I) prior the estimate is off by log N(z) - log p_T(z), exactly that gap."""
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=16)
    x = points(gm)
    res = sdekit.log_likelihood(gm.model(sde), x, **TIGHT)
    gap = sde.prior_log_prob(res.z) - gm.log_prob(res.z, sde.T, sde)
    torch.testing.assert_close(res.log_prob - gap, gm.log_prob(x, sde.eps, sde), atol=1e-4, rtol=0)
    assert gap.abs().mean() > 1e-3  # the gap is real: a test that ignores it would be wrong


def random_case(seed, name, dim, t_data, t_end_frac):
    """A random 3-component mixture, an interval [t0, t1] of SDES[name] and 4 exact samples of p_t0."""
    g = torch.Generator().manual_seed(seed)
    gm = sdekit.GaussianMixture(torch.rand(3, generator=g, dtype=torch.float64) + 0.1,
                                torch.randn(3, dim, generator=g, dtype=torch.float64) * 2,
                                0.1 + torch.rand(3, dim, generator=g, dtype=torch.float64))
    sde = SDES[name]
    t0, t1 = t_data * sde.T, t_end_frac * sde.T
    x = gm.sample_t(4, t0, sde, generator=g, dtype=torch.float64)
    return gm, sde, x, dict(t_data=t0, t_prior=t1, prior_log_prob=exact_prior(gm, sde, t1), **TIGHT)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), name=st.sampled_from(sorted(SDES)), dim=st.integers(1, 4),
       t_data=st.floats(0.01, 0.5), t_end_frac=st.floats(0.6, 1.0))
def test_random_mixtures_and_intervals(seed, name, dim, t_data, t_end_frac):
    gm, sde, x, kw = random_case(seed, name, dim, t_data, t_end_frac)
    res = log_likelihood(gm.model(sde), x, **kw)
    torch.testing.assert_close(res.log_prob, gm.log_prob(x, kw["t_data"], sde), atol=1e-4, rtol=0)


def test_event_shapes_and_batch_independence():
    sde = SDES["subvp"]
    gm = sdekit.GaussianMixture([0.4, 0.6], torch.randn(2, 2, 3, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(0)), 0.5)
    x = gm.sample(5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(gm.model(sde), x, prior_log_prob=exact_prior(gm, sde), **TIGHT)
    torch.testing.assert_close(res.log_prob, gm.log_prob(x, sde.eps, sde), atol=1e-4, rtol=0)
    one = log_likelihood(gm.model(sde), x[2:3], prior_log_prob=exact_prior(gm, sde), **TIGHT)
    torch.testing.assert_close(one.log_prob, res.log_prob[2:3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["ddpm", "vp", "custom"])
def test_log_snr_time_variable_matches_analytic(name):
    sde = sdekit.DiscreteVPSDE.linear() if name == "ddpm" else SDES[name]
    gm = sdekit.GaussianMixture.default(dim=4)
    x = points(gm)
    res = log_likelihood(gm.model(sde), x, time_variable="log_snr", prior_log_prob=exact_prior(gm, sde), **TIGHT)
    assert res.stats["time_variable"] == "log_snr"
    assert (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().max().item() < 1e-4


def test_auto_time_variable_integrates_a_ddpm_table_in_log_snr():
    """In t a DDPM table's drift has a kink per step; auto switches to lambda and stays cheap."""
    sde, gm = sdekit.DiscreteVPSDE.linear(), sdekit.GaussianMixture.default(dim=3)
    x = points(gm)
    res = log_likelihood(gm.model(sde), x, prior_log_prob=exact_prior(gm, sde), rtol=1e-6, atol=1e-6)
    assert res.stats["time_variable"] == "log_snr" and res.nfe < 600
    assert (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="time_variable"):
        log_likelihood(gm.model(sde), x, time_variable="sigma")
    with pytest.raises(ValueError, match="LinearSDE"):
        log_likelihood(gm.model(sde), x, time_variable="log_snr", t_data=0.0)


def test_the_last_step_ends_on_t_end_rather_than_interpolating_past_T():
    """EDM, t in [0.002, 80]: stepping past T (and clamping the drift's time there) costs 15x accuracy."""
    from sdekit.interop import EDMSDE

    sde, gm = EDMSDE(), sdekit.GaussianMixture.default(dim=16)
    x = gm.sample_t(40, sde.eps, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    score = gm.model(sde).net

    def net(y, t):
        seen.append(float(t.max()))
        return score(y, t)

    res = log_likelihood(sdekit.ScoreModel(net, sde, prediction="score"), x, prior_log_prob=exact_prior(gm, sde),
                         rtol=1e-6, atol=1e-6)
    assert max(seen) <= sde.T
    # measured: 1.4e-5 ending on t_end, 2.3e-4 when the last step overshoots T and interpolates back
    assert (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().mean().item() < 5e-5


@pytest.mark.parametrize("backend", ["func", "autograd", "loop"])
def test_jacobian_backends_agree(backend):
    sde, gm = SDES["cosine"], sdekit.GaussianMixture.default(dim=5)
    x = points(gm, 4)
    kw = dict(prior_log_prob=exact_prior(gm, sde), rtol=1e-6, atol=1e-6)
    ref = log_likelihood(gm.model(sde), x, jacobian="func", **kw)
    res = log_likelihood(gm.model(sde), x, jacobian=backend, chunk_size=2, **kw)
    torch.testing.assert_close(res.log_prob, ref.log_prob, atol=1e-10, rtol=0)
    assert res.backend == backend and res.nfe == ref.nfe


class _Square(torch.autograd.Function):
    """An old-style autograd.Function: no setup_context, so torch.func transforms refuse it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_auto_falls_back_for_nets_torch_func_cannot_transform():
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=3)
    exact = gm.model(sde).net

    def net(x, t):  # the exact score, routed through a non-functorch autograd.Function
        s = exact(x, t)
        return _Square.apply(s + 1.0) - s * s - s - 1.0  # = s, with the gradient through _Square

    model = sdekit.ScoreModel(net, sde, prediction="score")
    x = points(gm, 4)
    res = log_likelihood(model, x, prior_log_prob=exact_prior(gm, sde), jacobian="auto", **TIGHT)
    assert res.backend in ("autograd", "loop")
    assert (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().max() < 1e-4
    with pytest.raises(RuntimeError):
        log_likelihood(model, x, jacobian="func")


class _GeneralVP(sdekit.SDE):
    """A general (non-LinearSDE) SDE: the VP drift written as a plain function of x and t."""

    def __init__(self):
        super().__init__(T=1.0, eps=1e-3)
        self.vp = sdekit.VPSDE()

    def drift(self, x, t):
        return self.vp.drift(x, t)

    def diffusion(self, t):
        return self.vp.diffusion(t)

    def prior_std(self):
        return 1.0


def test_general_sde_with_score_model():
    gm = sdekit.GaussianMixture.default(dim=4)
    vp = SDES["vp"]
    model = sdekit.ScoreModel(lambda x, t: gm.score(x, t, vp), _GeneralVP(), prediction="score")
    x = points(gm, 4)
    res = log_likelihood(model, x, prior_log_prob=exact_prior(gm, vp), **TIGHT)
    torch.testing.assert_close(res.log_prob, gm.log_prob(x, vp.eps, vp), atol=1e-4, rtol=0)


def test_float32_stays_float32_and_is_close():
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=4)
    x = points(gm).float()
    res = log_likelihood(gm.model(sde), x, prior_log_prob=lambda z: gm.log_prob(z, sde.T, sde),
                         rtol=1e-5, atol=1e-5)
    assert res.log_prob.dtype == torch.float32 and res.z.dtype == torch.float32
    assert (res.log_prob.double() - gm.log_prob(x.double(), sde.eps, sde)).abs().max() < 2e-2


# -- Hutchinson ---------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_mean_agrees_with_exact_within_three_standard_errors(noise):
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=6)
    x = points(gm, 8)
    kw = dict(prior_log_prob=exact_prior(gm, sde), rtol=1e-7, atol=1e-7)
    exact = log_likelihood(gm.model(sde), x, **kw)
    hut = log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=200, noise=noise, seed=3, **kw)
    assert hut.stderr.shape == (8,) and bool((hut.stderr > 0).all())
    z = (hut.log_prob - exact.log_prob) / hut.stderr
    assert z.abs().max() < 3.0, z
    assert hut.probes == 200 and hut.divergence == "hutchinson"


def test_hutchinson_stderr_shrinks_like_one_over_sqrt_probes():
    sde, gm = SDES["ve"], sdekit.GaussianMixture.default(dim=8)
    x = points(gm, 16)
    kw = dict(divergence="hutchinson", noise="gaussian", prior_log_prob=exact_prior(gm, sde), rtol=1e-6, atol=1e-6)
    s16 = log_likelihood(gm.model(sde), x, probes=16, seed=0, **kw).stderr
    s256 = log_likelihood(gm.model(sde), x, probes=256, seed=1, **kw).stderr
    ratio = (s16 / s256).mean().item()  # sqrt(256 / 16) = 4
    assert 3.2 < ratio < 4.8, ratio
    # and the per-probe spread itself is the same: stderr * sqrt(K) estimates one probe's std
    spread = (s16 * 4).mean() / (s256 * 16).mean()
    assert 0.8 < spread.item() < 1.2


@pytest.mark.parametrize("backend", ["autograd", "func", "loop"])
def test_hutchinson_chunks_and_backends_give_the_same_estimate(backend):
    sde, gm = SDES["subvp"], sdekit.GaussianMixture.default(dim=4)
    x = points(gm, 3)
    kw = dict(divergence="hutchinson", probes=7, noise="gaussian", seed=5, rtol=1e-6, atol=1e-6)
    ref = log_likelihood(gm.model(sde), x, jacobian="autograd", **kw)
    res = log_likelihood(gm.model(sde), x, jacobian=backend, chunk_size=3, **kw)
    torch.testing.assert_close(res.log_prob, ref.log_prob, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.stderr, ref.stderr, atol=1e-10, rtol=0)


def test_hutchinson_is_reproducible_from_the_seed_and_one_probe_has_nan_stderr():
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=3)
    x = points(gm, 4)
    a = log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=3, seed=7)
    b = log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=3, seed=7)
    c = log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=3, seed=8)
    torch.testing.assert_close(a.log_prob, b.log_prob, atol=0, rtol=0)
    assert not torch.equal(a.log_prob, c.log_prob)
    one = log_likelihood(gm.model(sde), x, divergence="hutchinson", probes=1)
    assert torch.isnan(one.stderr).all()


# -- bits per dimension ------------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi,bits", [(-1.0, 1.0, 8), (0.0, 1.0, 8), (-3.0, 5.0, 5)])
def test_uniform_density_gives_exactly_bits(lo, hi, bits):
    D = 12
    log_p = torch.full((3,), -D * math.log(hi - lo), dtype=torch.float64)
    bpd = bits_per_dim(log_p, D, bits=bits, data_range=(lo, hi))
    torch.testing.assert_close(bpd, torch.full_like(bpd, float(bits)), atol=1e-12, rtol=0)


def test_continuous_bpd_and_data_scale():
    D, lp = 4, torch.tensor([-3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(lp, D), -lp / (D * math.log(2)))
    # y = x / 2 doubles the density of every coordinate: one bit per dimension fewer... in y units
    torch.testing.assert_close(bits_per_dim(lp, D, data_scale=2.0), -lp / (D * math.log(2)) - 1.0)
    with pytest.raises(ValueError, match="not both"):
        bits_per_dim(lp, D, bits=8, data_scale=2.0)


def test_negative_bpd_on_discrete_data_warns():
    with pytest.warns(NegativeBPDWarning, match="dequantize"):
        bits_per_dim(torch.tensor([50.0]), 4, bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bits_per_dim(torch.tensor([50.0]), 4)  # continuous data: negative bpd is legitimate


def _single_gaussian(dim, sd):
    return sdekit.GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64), sd)


def test_dequantized_bpd_matches_the_analytic_expectation():
    """A single Gaussian: E_delta[log p(x + a delta)] is analytic, so the dequantised bound is known."""
    sde, dim, bits, (lo, hi) = SDES["vp"], 3, 3, (-1.0, 1.0)
    gm = _single_gaussian(dim, 0.7)
    a = (hi - lo) / 2**bits
    u = torch.randint(0, 2**bits, (5, dim), generator=torch.Generator().manual_seed(0)).double()
    x = lo + a * (u + 0.5)  # bin centres
    R = 64
    res = log_likelihood(gm.model(sde), x, bits=bits, data_range=(lo, hi), dequantize=True, repeats=R, seed=0,
                         prior_log_prob=exact_prior(gm, sde), rtol=1e-7, atol=1e-7)
    # p_{t0} = N(0, v I), v = alpha^2 0.49 + sigma^2; E[(x + a (d - 1/2))^2] = x^2 + a^2 / 12 for d ~ U[0, 1)
    al, sg = sde.alpha(sde.eps).item(), sde.sigma(sde.eps).item()
    v = al**2 * 0.49 + sg**2
    expect = (-0.5 * math.log(2 * math.pi * v) - (x**2 + a**2 / 12) / (2 * v)).sum(1)
    # Monte Carlo spread of the R-draw average, from the analytic density itself
    d = torch.rand(4000, *x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mc_sd = gm.log_prob((x + a * (d - 0.5)).reshape(-1, dim), sde.eps, sde).reshape(4000, -1).std(0) / math.sqrt(R)
    assert ((res.log_prob - expect).abs() < 4 * mc_sd + 1e-4).all(), (res.log_prob - expect, mc_sd)
    torch.testing.assert_close(res.bpd, -(res.log_prob + dim * math.log(a)) / (dim * math.log(2)))
    assert (res.bpd > 0).all() and res.z.shape == (R, 5, dim)


def test_dequantized_bpd_is_reproducible_and_averages_draws():
    sde, gm = SDES["vp"], _single_gaussian(2, 0.5)
    x = -1.0 + 2.0 / 256 * (torch.tensor([[10.0, 200.0], [128.0, 127.0]], dtype=torch.float64) + 0.5)
    kw = dict(bits=8, dequantize=True, prior_log_prob=exact_prior(gm, sde), rtol=1e-6, atol=1e-6)
    a = log_likelihood(gm.model(sde), x, seed=1, **kw)
    b = log_likelihood(gm.model(sde), x, seed=1, **kw)
    torch.testing.assert_close(a.bpd, b.bpd, atol=0, rtol=0)
    assert a.z.shape == x.shape  # one draw: no repeats dimension


def test_dequantize_needs_data_on_the_level_grid():
    sde, gm = SDES["vp"], _single_gaussian(2, 0.5)
    x = torch.tensor([[0.0, 0.5]], dtype=torch.float64) * 2 / 255 * 3  # a u/255 scaling: off the 2/256 grid
    with pytest.raises(ValueError, match="level grid"):
        log_likelihood(gm.model(sde), x, bits=8, dequantize=True)
    with pytest.raises(ValueError, match="bits"):
        log_likelihood(gm.model(sde), x, dequantize=True)
    with pytest.raises(ValueError, match="data_range"):
        log_likelihood(gm.model(sde), x + 5, bits=8)


def test_negative_bpd_without_dequantization_warns_in_the_full_path():
    sde, gm = SDES["vp"], _single_gaussian(2, 1e-3)
    x = torch.zeros(2, 2, dtype=torch.float64)  # level 128 of 256 on [-1, 1]: the sharp mode
    with pytest.warns(NegativeBPDWarning):
        res = log_likelihood(gm.model(sde), x, bits=8, t_data=1e-5, prior_log_prob=exact_prior(gm, sde))
    assert (res.bpd < 0).all()


# -- bad input ----------------------------------------------------------------------------------------
@pytest.fixture
def vp_model():
    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=2)
    return gm.model(sde), gm


def test_nan_or_inf_in_x_is_rejected(vp_model):
    model, gm = vp_model
    x = points(gm, 3)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 0] = bad
        with pytest.raises(ValueError, match="NaN or Inf.*rows \\[1\\]"):
            log_likelihood(model, y)


def test_wrong_shapes_are_rejected(vp_model):
    model, gm = vp_model
    with pytest.raises(ValueError, match="batch"):
        log_likelihood(model, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(model, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating"):
        log_likelihood(model, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="prior_log_prob must return"):
        log_likelihood(model, points(gm, 3), prior_log_prob=lambda z: z.sum())
    with pytest.raises(TypeError, match="ScoreModel"):
        log_likelihood(lambda x, t: x, points(gm, 3))


def test_bad_times_are_rejected(vp_model):
    model, gm = vp_model
    x = points(gm, 3)
    with pytest.raises(ValueError, match="smaller than t_prior"):
        log_likelihood(model, x, t_data=0.5, t_prior=0.5)
    with pytest.raises(ValueError, match="smaller than t_prior"):
        log_likelihood(model, x, t_data=0.6, t_prior=0.2)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        log_likelihood(model, x, t_prior=1.5)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        log_likelihood(model, x, t_data=-0.1)


BAD_OPTIONS = [
    (dict(divergence="trace"), "exact, hutchinson"),
    (dict(divergence="hutchinson", noise="uniform"), "rademacher, gaussian"),
    (dict(method="rk45"), "dopri5"),
    (dict(method="rk4"), "step_size"),
    (dict(t_start=0.1), "t_data"),
    (dict(max_steps=10), "max_nfe"),
    (dict(divergence="hutchinson", probes=0), "probes"),
    (dict(integrate="simpson"), "augmented, quadrature"),
    (dict(integrate="quadrature", divergence="hutchinson"), "divergence='exact'"),
    (dict(integrate="quadrature", quad_tol=0), "quad_tol"),
    (dict(integrate="quadrature", quad_panels=0), "quad_panels"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_options_are_rejected_with_the_accepted_values(vp_model, options, message):
    model, gm = vp_model
    with pytest.raises((ValueError, TypeError), match=message):  # TypeError: an unknown setting
        log_likelihood(model, points(gm, 3), **options)


def test_a_config_object_is_the_same_as_keywords_and_checks_itself(vp_model):
    import dataclasses

    model, gm = vp_model
    x = points(gm, 3)
    cfg = LikelihoodConfig(rtol=1e-6, atol=1e-6, divergence="hutchinson", probes=2)
    a = log_likelihood(model, x, cfg)
    b = log_likelihood(model, x, rtol=1e-6, atol=1e-6, divergence="hutchinson", probes=2)
    c = log_likelihood(model, x, cfg, probes=3)  # a keyword replaces the config's field
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=0)
    assert a.nfe == b.nfe and a.stats["accepted"] > 0 and c.stderr is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rtol = 1.0
    with pytest.raises(ValueError, match="rtol"):
        LikelihoodConfig(rtol=-1.0)


def test_exceeded_step_budget_fails_quickly_with_a_clear_error(vp_model):
    model, gm = vp_model
    x = points(gm, 3)
    start = time.perf_counter()
    with pytest.raises(StepBudgetError, match="budget of 50 network evaluations"):
        log_likelihood(model, x, max_nfe=50, rtol=1e-10, atol=1e-10)
    with pytest.raises(StepBudgetError, match="budget of 40 network evaluations"):  # refused before any step
        log_likelihood(model, x, method="rk4", step_size=1e-3, max_nfe=40)
    assert time.perf_counter() - start < 10


def test_fixed_step_method_runs(vp_model):
    model, gm = vp_model
    x = points(gm, 3)
    sde = model.sde
    res = log_likelihood(model, x, method="rk4", step_size=2e-3, prior_log_prob=exact_prior(gm, sde))
    assert res.nfe == 4 * 500
    assert (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().max() < 0.05


def test_non_finite_drift_is_reported(vp_model):
    model, gm = vp_model
    nan_after = lambda x, t: x * torch.where(t[:, None] > 0.45, float("nan"), 1.0)  # noqa: E731
    bad = sdekit.ScoreModel(nan_after, model.sde, prediction="score")
    with pytest.raises(SolverError, match="not finite"):  # a NonFiniteError, also a FloatingPointError
        log_likelihood(bad, points(gm, 3), t_data=0.4, t_prior=0.6, method="rk4", step_size=0.05)


@pytest.mark.parametrize("integrate", ["augmented", "quadrature"])
def test_progress_bar_shows_the_solve_and_changes_nothing(vp_model, capsys, integrate):
    model, gm = vp_model
    x = points(gm, 3)
    quiet = log_likelihood(model, x, integrate=integrate)
    capsys.readouterr()
    shown = log_likelihood(model, x, integrate=integrate, progress=True)
    err = capsys.readouterr().err
    assert "log-likelihood" in err and "NFE" in err and "100%" in err
    if integrate == "quadrature":
        assert "divergence evaluations per row" in err
    torch.testing.assert_close(shown.log_prob, quiet.log_prob, rtol=0, atol=0)


# -- command line -----------------------------------------------------------------------------------
def test_cli_likelihood_prints_estimate_beside_exact(capsys):
    from sdekit import cli

    assert cli.main(["likelihood", "--n", "3", "--rtol", "1e-7", "--atol", "1e-7"]) == 0
    out = capsys.readouterr().out
    assert "exact" in out and "NFE" in out and "time" in out
    err = float(out.split("mean |error|")[1].split()[0])
    assert err < 1e-4
    assert cli.main(["likelihood", "--n", "2", "--prior", "sde", "--divergence", "hutchinson", "--probes", "4"]) == 0
    assert "prior gap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # range-checked by argparse, before any work
        cli.main(["likelihood", "--rtol", "-1"])
    assert refused.value.code == 2 and "argument --rtol" in capsys.readouterr().err
    assert cli.main(["likelihood", "--n", "3", "--dim", "4", "--integrate", "quadrature", "--quad-tol", "1e-3",
                     "--rtol", "1e-7", "--atol", "1e-7"]) == 0
    out = capsys.readouterr().out
    assert "quadrature" in out and "divergence evaluations per row" in out
    assert float(out.split("mean |error|")[1].split()[0]) < 1e-3


# -- trajectory + quadrature ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine", "edm"])
def test_quadrature_matches_analytic_log_density(name):
    from sdekit.interop import EDMSDE

    sde = EDMSDE() if name == "edm" else SDES[name]
    gm = sdekit.GaussianMixture.default(dim=8, seed=8)
    x = points(gm)
    res = log_likelihood(gm.model(sde), x, integrate="quadrature", quad_panels=16, quad_tol=1e-3,
                         prior_log_prob=exact_prior(gm, sde), **TIGHT)
    err = (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs()
    assert err.max() < 5e-4
    info = res.stats
    assert info["integrate"] == "quadrature" and info["quadrature_variable"] == "log_snr"
    assert (info["quadrature_error_estimate"] <= 1e-3).all() and info["unresolved_rows"] == 0
    # the divergence is evaluated where each row needs it, not at every grid point
    assert 4 * 16 + 1 <= info["divergence_evals_per_row"] < info["grid_points"] / 2
    torch.testing.assert_close(res.log_prob, res.prior + res.delta)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), name=st.sampled_from(["vp", "subvp", "ve", "cosine"]), dim=st.integers(1, 6),
       t_data=st.floats(0.01, 0.3), t_end_frac=st.floats(0.6, 1.0))
def test_quadrature_on_random_mixtures_and_intervals(seed, name, dim, t_data, t_end_frac):
    gm, sde, x, kw = random_case(seed, name, dim, t_data, t_end_frac)
    res = log_likelihood(gm.model(sde), x, integrate="quadrature", quad_tol=1e-3, **kw)
    torch.testing.assert_close(res.log_prob, gm.log_prob(x, kw["t_data"], sde), atol=1e-3, rtol=0)


def test_quadrature_converges_as_its_tolerance_tightens():
    """16-D, the likelihood benchmark's problem (EDM process, 40 samples of p_sigma_min): the mean error falls
    with quad_tol, and the default settings are within 1e-3 nats on average."""
    from sdekit.interop import EDMSDE

    sde, gm = EDMSDE(), sdekit.GaussianMixture.default(dim=16)
    x = gm.sample_t(40, sde.eps, sde, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = gm.log_prob(x, sde.eps, sde)
    errs = []
    for tol in (1.0, 0.1, 1e-3):
        res = log_likelihood(gm.model(sde), x, integrate="quadrature", quad_tol=tol, quad_depth=6, rtol=1e-7, atol=1e-7,
                             prior_log_prob=exact_prior(gm, sde))
        errs.append(float((res.log_prob - truth).abs().mean()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] < 1e-3 and errs[2] < 1e-4


def test_quadrature_resolves_a_sharp_feature_its_first_nodes_straddle():
    """A point off the data (points()'s last row) under the cosine schedule: its divergence rises to a peak
    and drops within ~0.3 in lambda, between the first level's nodes (0.6 apart). Boole and Simpson on
    those nodes agree by chance (estimate 6e-3, error 0.31 nats before the trajectory check); the
    trajectory's own velocity shows the panel is unresolved, so it is halved before any evaluation."""
    sde, gm = SDES["cosine"], sdekit.GaussianMixture.default(dim=8, seed=8)
    x = points(gm)
    res = log_likelihood(gm.model(sde), x, integrate="quadrature", prior_log_prob=exact_prior(gm, sde))
    err = (res.log_prob - gm.log_prob(x, sde.eps, sde)).abs()
    assert err.max() < 2e-2


def test_quadrature_with_dequantization_agrees_with_the_augmented_solve():
    sde, gm = SDES["vp"], sdekit.GaussianMixture([0.5, 0.5], [[-0.4, 0.3], [0.5, -0.2]], 0.3)
    levels = torch.tensor([[60, 200], [128, 128], [20, 90]], dtype=torch.float64)
    x = -1 + 2 * (levels + 0.5) / 256  # bin centres
    common = dict(bits=8, dequantize=True, repeats=2, seed=3, prior_log_prob=exact_prior(gm, sde), **TIGHT)
    aug = log_likelihood(gm.model(sde), x, **common)
    quad = log_likelihood(gm.model(sde), x, integrate="quadrature", quad_tol=1e-4, **common)
    torch.testing.assert_close(quad.bpd, aug.bpd, atol=1e-5, rtol=0)
    assert quad.z.shape == aug.z.shape == (2, 3, 2)


def test_quadrature_reports_a_non_finite_divergence(vp_model):
    model, gm = vp_model
    x = points(gm, 3)
    nan_late = lambda y, t: y * torch.where(t[:, None] > 0.45, float("nan"), 1.0)  # noqa: E731
    bad = sdekit.ScoreModel(nan_late, model.sde, prediction="score")
    with pytest.raises(FloatingPointError, match="not finite"):
        log_likelihood(bad, x, integrate="quadrature", t_data=0.4, t_prior=0.6)


def test_quadrature_flags_rows_the_grid_cannot_resolve(vp_model):
    model, gm = vp_model
    with pytest.warns(RuntimeWarning, match="quad_depth=0"):
        res = log_likelihood(model, points(gm, 3), integrate="quadrature", quad_panels=1, quad_depth=0,
                             quad_tol=1e-6)
    assert res.stats["unresolved_rows"] > 0


# -- a data set's bits/dim with its error bars (sdekit.likelihood.dataset) ------------------------------------------------
def _quantised(gm, n, a, seed, lo=-3.0, hi=3.0):
    """n mixture samples snapped to the centres lo + a (u + 1/2) of bins of width a, inside [lo, hi]."""
    x = gm.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = ((x - lo) / a - 0.5).round().clamp(0, round((hi - lo) / a) - 1)
    return lo + a * (u + 0.5)


def test_score_dataset_exact_is_the_per_row_likelihood_with_no_estimator_error():
    from sdekit.likelihood import score_dataset

    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=3, seed=2)
    x = gm.sample(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    score = score_dataset(gm.model(sde), x, rtol=1e-7, atol=1e-7)
    assert score.divergence == "exact" and "D = 3 <= 2 K = 4" in score.reason  # 3 coordinates, 2 probes
    res = log_likelihood(gm.model(sde), x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(score.per_image_log_prob, res.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(score.per_image, res.bpd, atol=1e-6, rtol=0)
    assert score.bpd == pytest.approx(float(res.bpd.mean()), abs=1e-6)
    assert score.bpd_se == pytest.approx(float(res.bpd.std() / math.sqrt(12)), rel=1e-4)
    assert score.se_estimator == 0 and score.se_data == pytest.approx(score.bpd_se)
    js = score.to_json()
    assert {"bpd", "bpd_se", "n", "seconds", "per_image", "se_data", "se_estimator"} <= set(js)
    assert js["n"] == 12 and len(js["per_image"]) == 12


def test_score_dataset_batches_do_not_change_a_row():
    from sdekit.likelihood import score_dataset

    sde, gm = SDES["vp"], sdekit.GaussianMixture.default(dim=6, seed=4)
    x = gm.sample(7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kw = dict(divergence="hutchinson", probes=2, rtol=1e-8, atol=1e-8)
    one = score_dataset(gm.model(sde), x, **kw)
    three = score_dataset(gm.model(sde), x, batch=3, **kw)
    assert one.solves == 1 and three.solves == 3
    torch.testing.assert_close(one.per_image, three.per_image, atol=1e-6, rtol=0)  # probes from (seed, row)


def test_score_dataset_estimator_error_is_honest():
    """The within-image estimator error v_i (dequantisation draws and Hutchinson probes) predicts how far two
    independent runs (seeds) of the same images land apart: E[(b_i - b'_i)^2] = 2 v_i."""
    from sdekit.likelihood import score_dataset

    sde, base = SDES["vp"], sdekit.GaussianMixture.default(dim=4, seed=6)
    gm = sdekit.GaussianMixture(base.weights, base.means, torch.tensor([0.3, 0.4, 0.5, 0.6]))
    a = 6.0 / 16
    x = _quantised(gm, 64, a, seed=7)
    runs = [score_dataset(gm.model(sde), x, bits=4, data_range=(-3.0, 3.0), dequantize=True, seed=s, repeats=3,
                          divergence="hutchinson", rtol=1e-4, atol=1e-4) for s in (0, 1)]
    assert all(r.repeats == 3 and r.probes == 1 for r in runs)
    observed = (runs[0].per_image - runs[1].per_image).pow(2).sum()
    predicted = (runs[0].per_image_se.pow(2) + runs[1].per_image_se.pow(2)).sum()
    assert 0.5 < float(observed / predicted) < 2.0
    for r in runs:
        assert r.se_estimator > 0 and r.se_data > 0
        assert r.bpd_se**2 == pytest.approx(r.se_data**2 + r.se_estimator**2, rel=1e-9)


def test_choose_divergence_by_cost():
    from sdekit.likelihood import choose_divergence

    assert choose_divergence(2, 1000, 2)[0] == "exact"
    assert choose_divergence(64, 299, 2)[0] == "hutchinson"
    assert choose_divergence(64, 299, 2, device="cuda")[0] == "exact"  # one vectorised pass on an accelerator
    assert choose_divergence(3072, 256, 2, device="cuda")[0] == "hutchinson"  # CIFAR-sized: too big a block
