"""ER-SDE-Solver 1-3 and SEEDS 1-3 on exact ground truth, on a VP, a VE and a flow path: pathwise (strong) order on the
Brownian path, the law of the samples against the exact mixture marginal (weak error falling at the solver's rate),
the drift's order in the ODE limit against the exact flow of a Gaussian, the identities with sdekit's other solvers,
the start at pure noise, and refusals before any network call."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import SolverError, get, sample

ER = ["er_sde_1", "er_sde_2", "er_sde_3"]
SEEDS = ["seeds_1", "seeds_2", "seeds_3"]
NEW = ER + SEEDS
ORDER = {"er_sde_1": 1, "er_sde_2": 2, "er_sde_3": 3, "seeds_1": 1, "seeds_2": 2, "seeds_3": 3}


def _sdes():
    return {"vp": sdekit.VPSDE(), "ve": sdekit.VESDE(sigma_min=0.01, sigma_max=20.0), "flow": sdekit.RectifiedFlow()}


def _grid(kind):
    """The law test runs the flow path on the uniform grid in t (its natural one; at 4 steps the logsnr grid from pure
    noise is too coarse to show a rate), the others on the default logsnr grid."""
    return "uniform" if kind == "flow" else "logsnr"


def _gauss(dim=2):
    """One Gaussian: a linear score (no row can switch modes), and an exact probability-flow map."""
    return sdekit.GaussianMixture(torch.tensor([1.0]), torch.linspace(1.0, -1.0, dim, dtype=torch.float64)[None], 0.5)


def _mixture_1d():
    return sdekit.GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.5], [1.0]], dtype=torch.float64),
                                  torch.tensor([0.4, 0.6]))


def _start(gm, sde, n, seed=1):
    return gm.sample_t(n, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rms(a, b):
    return float((a - b).pow(2).sum(1).mean().sqrt())


def _slope(errs, ratio):
    return math.log(errs[0] / errs[-1]) / math.log(ratio)


def test_registered_as_stochastic_sde_solvers():
    for name in NEW:
        info = get(name)
        assert info.stochastic and info.family == "sde" and not info.adaptive
        assert info.nfe_per_step == (int(name[-1]) if name.startswith("seeds") else 1)
        assert "s_noise" in info.options


# every solver on VP, and each family on one more path in each convergence test (SEEDS: VE for the strong order, the
# flow for the law; ER-SDE the other way round), which keeps the file's cost near that of one 3-path walk
COVER = {"vp": NEW, "ve_strong": SEEDS, "flow_strong": ER, "ve_weak": ER, "flow_weak": SEEDS}


# the flow path's 128-step logsnr reference has a few steps next to t = T shorter than the Brownian path's resolution
# (the driver warns); there the state is pure noise, and the slopes below are those of the resolved coarse solves
@pytest.mark.filterwarnings("ignore:.*shorter than the Brownian path's resolution")
@pytest.mark.parametrize("kind", ["vp", "ve", "flow"])
def test_strong_order_one_on_the_same_path(kind):
    """Additive noise: the pathwise error against the same solver's 128-step solve of the same Brownian path, at 8, 16
    and 32 steps, falls with order 1 whatever the order of the drift (the flow path from pure noise, t = T,
    included). Without noise the error would fall at the drift's order k (``test_drift_order_in_the_ode_limit``); at
    8 steps the drift's error still shows in the slope of the higher orders, hence the upper bound 1.75."""
    sde = _sdes()[kind]
    gm = _gauss()
    model = gm.model(sde)
    x = _start(gm, sde, 48)
    for name in COVER.get(kind, COVER.get(f"{kind}_strong")):
        ref = sample(model, x, name, steps=128, generator=3).x
        errs = [_rms(sample(model, x, name, steps=n, generator=3).x, ref) for n in (8, 16, 32)]
        assert errs[0] > errs[1] > errs[2], (kind, name, errs)
        assert 0.75 < _slope(errs, 4) < 1.75, (kind, name, errs, _slope(errs, 4))


# the weak error's rate, measured (4 -> 16 steps, 1-D two-mode mixture): ER-SDE-k about k (the paper's noise scale
# is near the ODE where the drift's error matters most); SEEDS-1 1, SEEDS-2 about 2, SEEDS-3 about 2 with a constant so
# small that at n = 2000 its weak error is within the sampling noise from 4 steps on (0.02 at 4 steps against 1.5
# for ER-SDE-3 and SEEDS-1)
WEAK_RATE = {"er_sde_1": 0.8, "er_sde_2": 1.6, "er_sde_3": 2.2, "seeds_1": 0.8, "seeds_2": 1.4, "seeds_3": 1.5}


def _paired_moments(y, ref):
    """|mean and variance of y - those of ref| summed, and the standard error of that estimate (the rows are paired:
    the same start and path, so only the discretisation's difference is left, with its own sampling noise)."""
    d = y[:, 0] - ref[:, 0]
    g = (y[:, 0] - y[:, 0].mean()) ** 2 - (ref[:, 0] - ref[:, 0].mean()) ** 2
    n = y.shape[0]
    return float(d.mean().abs() + g.mean().abs()), float((d.std() + g.std()) / math.sqrt(n))


@pytest.mark.parametrize("kind", ["vp", "ve", "flow"])
def test_law_converges_to_the_exact_marginal_at_the_weak_rate(kind):
    """The law of the samples on a two-mode 1-D mixture: the mean and variance of a 64-step solve equal the exact
    marginal's within 5 standard errors (n = 2000), and the weak error (mean and variance against those of the
    64-step solve of the same rows and paths, which removes the sampling noise common to both) falls from 4 to 16
    steps at the solver's rate (``WEAK_RATE``), or to 3 standard errors of its estimate."""
    sde = _sdes()[kind]
    gm = _mixture_1d()
    model = gm.model(sde)
    n, t_end = 2000, (0.1 if kind == "ve" else 0.02)
    x = _start(gm, sde, n)
    a, s = float(sde.alpha(t_end)), float(sde.sigma(t_end))
    mean, var = a * float(gm.mean()[0]), a * a * float(gm.covariance()[0, 0]) + s * s
    for name in COVER.get(kind, COVER.get(f"{kind}_weak")):
        fine = sample(model, x, name, steps=64, generator=5, t_end=t_end, grid=_grid(kind)).x
        assert abs(float(fine.mean()) - mean) < 5 * math.sqrt(var / n), (kind, name, float(fine.mean()), mean)
        assert abs(float(fine.var()) - var) < 5 * 1.5 * var * math.sqrt(2.0 / n), (kind, name, float(fine.var()), var)
        (e4, se4), (e16, se16) = (_paired_moments(sample(model, x, name, steps=k, generator=5, t_end=t_end,
                                                         grid=_grid(kind)).x, fine) for k in (4, 16))
        assert e16 < max(e4 / 4 ** WEAK_RATE[name], 3 * se16), (kind, name, e4, e16, se16)
        if name != "seeds_3":  # resolved at 4 steps, so the line above tests the rate
            assert e4 > 3 * se4, (kind, name, e4, se4)


def _exact_flow(gm, sde, x, t0, t1):
    """The probability-flow map of one Gaussian N(mu, v I): (x - alpha mu)/sqrt(alpha^2 v + sigma^2) is constant."""
    mu, v = gm.means[0], float(gm.stds[0, 0]) ** 2
    a0, s0, a1, s1 = (float(f(torch.tensor(t, dtype=torch.float64))) for t in (t0, t1) for f in (sde.alpha, sde.sigma))
    return a1 * mu + math.sqrt(a1 * a1 * v + s1 * s1) / math.sqrt(a0 * a0 * v + s0 * s0) * (x - a0 * mu)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_drift_order_in_the_ode_limit(kind):
    """Without noise (ER-SDE's noise_scale="ode", SEEDS' eta = 0) the solvers are deterministic and of order k: the
    error against the exact flow of a Gaussian falls from 16 to 64 steps, with slope k over the last doubling."""
    sde = _sdes()[kind]
    gm = _gauss()
    model = gm.model(sde)
    x = _start(gm, sde, 16)
    exact = _exact_flow(gm, sde, x, sde.T, sde.eps)
    for name in NEW:
        opts = {"noise_scale": "ode", "lower_order_final": False} if name in ER else {"eta": 0.0}
        errs = [_rms(sample(model, x, name, steps=n, generator=0, **opts).x, exact) for n in (16, 32, 64)]
        assert errs[0] > errs[1] > errs[2], (kind, name, errs)
        assert abs(_slope(errs[1:], 2) - ORDER[name]) < 0.45, (kind, name, errs)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_identities_with_other_solvers(kind):
    """ER-SDE-1 with Phi = s is DDIM and with Phi = s^2 SDE-DPM-Solver++(1) (sa_solver of order 1, the same path);
    SEEDS-1 is that step too; SEEDS-2 with eta = 0 is DPM-Solver++(2S)."""
    sde = _sdes()[kind]
    gm = _mixture_1d()
    model = gm.model(sde)
    x = _start(gm, sde, 8)
    sa1 = sample(model, x, "sa_solver", steps=9, generator=3, predictor_order=1, corrector_order=1).x
    pairs = [
        (sample(model, x, "er_sde_1", steps=9, generator=3, noise_scale="ode").x, sample(model, x, "ddim", steps=9).x),
        (sample(model, x, "er_sde_1", steps=9, generator=3, noise_scale="sde").x, sa1),
        (sample(model, x, "er_sde_1", steps=9, generator=3, noise_scale=2.0).x, sa1),
        (sample(model, x, "seeds_1", steps=9, generator=3).x, sa1),
        (sample(model, x, "seeds_2", steps=9, generator=3, eta=0.0).x, sample(model, x, "dpmpp_2s", steps=9).x),
    ]
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # the default noise scale is neither
    assert not torch.allclose(sample(model, x, "er_sde_1", steps=9, generator=3).x, sa1, atol=1e-3)


@pytest.mark.parametrize("name", NEW)
def test_start_at_pure_noise_is_the_limit(name):
    """On the rectified flow (alpha(T) = 0) a solve from t = T equals the limit of solves from just below T, with
    the same start and the same path; a SEEDS step from T costs one network call (its stages sit at T)."""
    sde = sdekit.RectifiedFlow()
    gm = _mixture_1d()
    model = gm.model(sde)
    x = _start(gm, sde, 64)
    at = sample(model, x, name, steps=8, generator=2)
    below = sample(model, x, name, ts=torch.cat([torch.tensor([1.0 - 1e-9]), at.ts[1:]]).double(), generator=2).x
    assert bool(torch.isfinite(at.x).all())
    assert _rms(at.x, below) < 1e-3, _rms(at.x, below)
    assert at.nfe == 8 * get(name).nfe_per_step - (get(name).nfe_per_step - 1)


class _Refuse(torch.nn.Module):
    def forward(self, x, t):
        raise AssertionError("the network was called before the refusal")


BAD = [
    ("er_sde_2", {"noise_scale": "fast"}, ValueError, "noise_scale"),
    ("er_sde_2", {"noise_scale": 0.5}, ValueError, "p >= 1"),
    ("er_sde_2", {"noise_scale": True}, ValueError, "noise_scale"),
    ("er_sde_1", {"noise_scale": lambda s: s**0.5}, ValueError, "non-increasing"),
    ("er_sde_3", {"s_noise": -1.0}, ValueError, "s_noise"),
    ("er_sde_3", {"lower_order_final": 1}, ValueError, "lower_order_final"),
    ("seeds_1", {"eta": 1.5}, ValueError, "eta"),
    ("seeds_2", {"r": 0.0}, ValueError, "r in"),
    ("seeds_2", {"r": 1.0}, ValueError, "r in"),
    ("seeds_2", {"solver_type": "rk"}, ValueError, "solver_type"),
    ("seeds_3", {"s_noise": float("nan")}, ValueError, "s_noise"),
]


@pytest.mark.parametrize("name,opts,err,match", BAD)
def test_bad_options_are_refused_by_name_before_any_network_call(name, opts, err, match):
    sde = sdekit.VPSDE()
    model = sdekit.ScoreModel(_Refuse(), sde, prediction="x0")
    with pytest.raises(err, match=match):
        sample(model, torch.zeros(2, 2, dtype=torch.float64), name, steps=4, generator=0, **opts)


@pytest.mark.parametrize("name", NEW)
def test_inversion_and_unknown_limits_are_refused_before_any_network_call(name):
    model = sdekit.ScoreModel(_Refuse(), sdekit.VPSDE(), prediction="x0")
    with pytest.raises(SolverError):
        sample(model, torch.zeros(2, 2, dtype=torch.float64), name, ts=torch.tensor([0.01, 0.5], dtype=torch.float64),
               generator=0)
    if name in ER:  # a callable noise scale has no known limit at s = inf: refused at alpha = 0, allowed below
        flow = sdekit.ScoreModel(_Refuse(), sdekit.RectifiedFlow(), prediction="x0")
        with pytest.raises(ValueError, match="alpha = 0"):
            sample(flow, torch.zeros(2, 2, dtype=torch.float64), name, steps=4, generator=0,
                   noise_scale=lambda s: s * s)


@pytest.mark.parametrize("name", NEW)
def test_step_noise_is_per_row_and_a_callable_noise_scale_runs(name):
    """noise="step" draws fresh Gaussians per row (a row's result independent of the batch) that differ from the
    path's increments; a callable Phi equal to a named one gives the named one's result."""
    sde = sdekit.VPSDE()
    gm = _mixture_1d()
    model = gm.model(sde)
    x = _start(gm, sde, 8)
    full = sample(model, x, name, steps=6, generator=5, noise="step").x
    part = sample(model, x[2:6], name, steps=6, generator=5, row_offset=2, noise="step").x
    assert torch.equal(full[2:6], part)
    path = sample(model, x, name, steps=6, generator=5).x
    assert not torch.allclose(full, path)
    if name in ER:
        mine = sample(model, x, name, steps=6, generator=5, noise_scale=lambda s: s * (torch.exp(s**0.3) + 10)).x
        torch.testing.assert_close(mine, path, rtol=1e-12, atol=1e-12)
