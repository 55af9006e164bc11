"""Free schedules: kl_optimal (the DDIM-KL optimum for Gaussian data) on every SDE and path, and GITS's search."""
import itertools
import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, grids, sample
from sdekit.solvers import schedules as sch

PATHS = {
    "vp": sdekit.VPSDE(), "subvp": sdekit.SubVPSDE(), "ve": sdekit.VESDE(sigma_min=0.01, sigma_max=20.0),
    "cosine": sdekit.CosineVPSDE(), "ddpm": sdekit.DiscreteVPSDE.linear(1000),
    "rectified_flow": sdekit.RectifiedFlow(), "cosine_path": sdekit.CosinePath(), "polynomial": sdekit.PolynomialPath(),
}
# every fixed-step deterministic solver (torchsde chooses its own steps; see test_grids)
DETERMINISTIC = sorted(n for n, s in SOLVERS.items() if not s.adaptive and s.family != "backend"
                       and (not s.stochastic or s.options.get("eta", None) == 0))


def gaussian(sde, c=1.0, dim=3):
    """N(0, c^2 I) data as a one-component mixture, and its exact model."""
    gm = sdekit.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, dim, dtype=torch.float64),
                                torch.tensor([c], dtype=torch.float64))
    return gm.model(sde)


def ddim_kl(sde, ts, c=1.0):
    """KL(p_{t_end} || DDIM's output) per dimension, measured by running sdekit's DDIM: for Gaussian data the solve
    is linear, so its gain on a row of ones gives the output's std."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    gain = float(sample(gaussian(sde, c), torch.ones(1, 3, dtype=torch.float64), "ddim", ts=ts).x[0, 0])

    def std(t):
        return float((sde.alpha(t) ** 2 * c**2 + sde.sigma(t) ** 2).sqrt())

    rho = gain * std(ts[0]) / std(ts[-1])
    return 0.5 * (1 / rho**2 - 1 + 2 * math.log(rho))


# -- kl_optimal -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PATHS))
def test_kl_optimal_ends_monotone_and_equal_angles_on_every_path(name):
    sde = PATHS[name]
    zero_ok = float(sde.sigma(0.0)) == 0.0
    for steps, t_end, c in itertools.product((1, 2, 3, 5, 8, 25), (None, 0.0), (1.0, 0.3)):
        if t_end == 0.0 and not zero_ok:
            continue
        ts = grids.make_grid(sde, steps, "kl_optimal", t_end=t_end, sigma_data=c)
        lo = sde.eps if t_end is None else t_end
        assert ts.numel() == steps + 1 and float(ts[0]) == sde.T and float(ts[-1]) == lo
        assert bool((ts[1:] < ts[:-1]).all()) and bool(torch.isfinite(ts).all())
        body = ts[:-1] if (t_end == 0.0 and steps > 1) else ts  # the last interval of a zero-noise end is the jump
        d = sch.angle(sde, body, c).diff()
        assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9), (name, steps, t_end, c, d)
        up = grids.make_grid(sde, steps, "kl_optimal", t_start=lo, t_end=sde.T, sigma_data=c)
        assert torch.equal(up, ts.flip(0))


def test_kl_optimal_starts_at_pure_noise_where_alpha_is_zero():
    """On the flow paths alpha(T) = 0: s = sigma/alpha is infinite, theta = pi/2, and the grid still starts at T."""
    for name in ("rectified_flow", "cosine_path", "polynomial"):
        sde = PATHS[name]
        assert float(sde.alpha(sde.T)) == 0.0
        assert float(sch.angle(sde, sde.T)) == pytest.approx(math.pi / 2)
        ts = grids.make_grid(sde, 6, "kl_optimal")
        assert float(ts[0]) == sde.T and float(ts[1]) < sde.T


def test_kl_optimal_objective_is_what_ddim_does():
    """ddim_gaussian_kl (the closed form's objective) equals the KL measured by running DDIM, on every named grid."""
    for name in ("vp", "ve", "ddpm", "rectified_flow"):
        sde = PATHS[name]
        for g in ("uniform", "quadratic", "logsnr", "karras", "kl_optimal"):
            ts = grids.make_grid(sde, 5, g)
            assert sch.ddim_gaussian_kl(sde, ts, 0.5) == pytest.approx(ddim_kl(sde, ts, 0.5), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name,c", [("vp", 1.0), ("ve", 0.5), ("rectified_flow", 1.0)])
def test_kl_optimal_is_the_numerical_minimum_of_the_ays_objective(name, c):
    """Minimise the AYS objective (ddim_gaussian_kl, equal to DDIM's measured KL by the test above) over the 3 free
    times of a 4-step grid with Nelder-Mead: the minimiser is the closed form, and DDIM run on the closed form has a
    KL no larger than on the numerical optimum or on any named grid."""
    from scipy.optimize import minimize

    sde, steps = PATHS[name], 4
    t_hi, t_lo = sde.T, sde.eps
    th_hi, th_lo = (float(sch.angle(sde, t, c)) for t in (t_hi, t_lo))

    def grid(w):  # softmax increments of theta: every w is a valid grid with both ends fixed
        z = np.cumsum(np.exp(w - w.max()))
        inner = th_hi + (z[:-1] / z[-1]) * (th_lo - th_hi)
        t = sde.t_from_log_snr(torch.as_tensor(-2 * np.log(c * np.tan(inner)), dtype=torch.float64))
        return torch.cat([torch.tensor([t_hi], dtype=torch.float64), t, torch.tensor([t_lo], dtype=torch.float64)])

    w0 = np.random.default_rng(0).normal(size=steps)
    best = minimize(lambda w: sch.ddim_gaussian_kl(sde, grid(w), c), w0, method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-15, "maxiter": 4000})
    closed = grids.make_grid(sde, steps, "kl_optimal", sigma_data=c)
    assert ddim_kl(sde, closed, c) <= ddim_kl(sde, grid(best.x), c) * (1 + 1e-9)
    numeric = sch.angle(sde, grid(best.x), c)
    assert torch.allclose(numeric, sch.angle(sde, closed, c), atol=1e-3), (numeric, sch.angle(sde, closed, c))
    for other in ("uniform", "quadratic", "logsnr", "karras"):
        assert ddim_kl(sde, closed, c) < ddim_kl(sde, grids.make_grid(sde, steps, other), c)


def test_kl_optimal_runs_with_every_deterministic_solver():
    model = sdekit.GaussianMixture.default(2).model(sdekit.VPSDE())
    x = model.sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for solver in DETERMINISTIC:
        out = sample(model, x, solver, 6, grid="kl_optimal")
        assert bool(torch.isfinite(out.x).all()), solver


def test_kl_optimal_options_are_checked():
    sde = sdekit.VPSDE()
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="sigma_data"):
            grids.make_grid(sde, 4, "kl_optimal", sigma_data=bad)
    with pytest.raises(ValueError, match="unknown option"):
        grids.make_grid(sde, 4, "kl_optimal", rho=7.0)
    assert "kl_optimal" in grids.GRIDS and grids.GRIDS["kl_optimal"].options == ("sigma_data",)


# -- GITS ---------------------------------------------------------------------------------------------
def test_dp_finds_the_cheapest_path_of_exactly_n_steps():
    rng = np.random.default_rng(1)
    for m, steps in ((6, 1), (6, 3), (7, 4), (7, 6)):
        cost = torch.as_tensor(rng.exponential(size=(m, m)), dtype=torch.float64)
        path, total = sch._dp(cost, steps)
        brute = min(sum(float(cost[a, b]) for a, b in zip(p, p[1:]))
                    for mid in itertools.combinations(range(1, m - 1), steps - 1) for p in [(0, *mid, m - 1)])
        assert len(path) == steps + 1 and path[0] == 0 and path[-1] == m - 1
        assert total == pytest.approx(brute) and sum(float(cost[a, b]) for a, b in zip(path, path[1:])) == \
            pytest.approx(brute)


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.inner(x, t)


FAST = {"n": 16, "fine": 12, "substeps": 2}


@pytest.mark.parametrize("name,t_end", [("vp", None), ("vp", 0.0), ("rectified_flow", None), ("ve", None)])
def test_gits_returns_a_valid_grid_and_counts_its_calls(name, t_end):
    sde = PATHS[name]
    base = sdekit.GaussianMixture.default(2).model(sde)
    counting = Counting(base.net)
    model = sdekit.ScoreModel(counting, sde, base.prediction)
    out = sch.gits_schedule(model, "dpmpp_2m", 5, shape=(2,), t_end=t_end, **FAST)
    ts = grids.check_grid(sde, out.ts)
    assert ts.numel() == 6 and float(ts[0]) == sde.T and float(ts[-1]) == (sde.eps if t_end is None else 0.0)
    assert bool((ts[1:] < ts[:-1]).all())
    assert out.nfe == counting.calls > 0  # every network call is reported
    # one-call steps from the teacher's states reuse its evaluations: the search costs the teacher and the
    # candidates' solves alone
    assert out.nfe <= out.info["teacher_nfe"] + 6 * 5 + 1
    pure = sch.gits_schedule(model, "dpmpp_2m", 5, shape=(2,), t_end=t_end, candidates=(), **FAST)
    assert pure.info["chosen"] == "gits" and set(pure.ts.tolist()) <= set(pure.fine_ts.tolist()) | {0.0}
    assert torch.equal(sch.gits(base, "dpmpp_2m", 5, shape=(2,), t_end=t_end, **FAST), out.ts)


def _mixture(dim, seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    means = torch.randn(k, dim, generator=g, dtype=torch.float64) * 1.5
    stds = 0.05 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    return sdekit.GaussianMixture(torch.rand(k, generator=g, dtype=torch.float64) + 0.2, means, stds)


def test_gits_is_no_worse_than_the_best_named_grid_on_fresh_draws():
    """dpmpp_2m at NFE 5 and 10 on three mixtures: the searched grid's median error on 300 fresh exact draws
    (against rk4 with 100 log-SNR steps) is within 5% of the best named grid's."""
    sde = sdekit.VPSDE()
    for seed in (11, 12, 13):
        gm = _mixture(2, seed)
        model = gm.model(sde)
        x = gm.sample_t(300, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = sample(model, x, "rk4", 100, grid="logsnr").x

        def median(ts, model=model, x=x, ref=ref):
            return float(sdekit.metrics.per_row_error(sample(model, x, "dpmpp_2m", ts=ts).x, ref).median())

        for steps in (5, 10):
            named = min(median(grids.make_grid(sde, steps, g)) for g in ("uniform", "quadratic", "logsnr", "karras"))
            found = sch.gits_schedule(model, "dpmpp_2m", steps, shape=(2,), n=32, fine=16, substeps=2,
                                      generator=seed + 100)
            assert median(found.ts) <= 1.05 * named, (seed, steps, found.info["chosen"], median(found.ts), named)


def test_gits_refuses_bad_input_before_any_work():
    calls = []
    model = sdekit.ScoreModel(lambda x, t: calls.append(1) or x, sdekit.VPSDE(), "eps")
    cases = [
        (dict(solver="dopri5"), ValueError, "adaptive"), (dict(solver="euler_maruyama"), ValueError, "stochastic"),
        (dict(solver="nope"), ValueError, "nope"), (dict(steps=0), ValueError, "steps"),
        (dict(steps=30, fine=20), ValueError, "fine"), (dict(shape=None), ValueError, "shape"),
        (dict(candidates=("table",)), ValueError, "table"), (dict(candidates="logsnr"), ValueError, "sequence"),
        (dict(fine_grid="cubic"), ValueError, "cubic"), (dict(generator=1.5), TypeError, "generator"),
        (dict(steps=1, t_end=0.0), ValueError, "steps >= 2"), (dict(cost_solver="dopri5"), ValueError, "adaptive"),
    ]
    for kw, err, match in cases:
        args = {"solver": "dpmpp_2m", "steps": 4, "shape": (2,), **kw}
        with pytest.raises(err, match=match):
            sch.gits_schedule(model, args.pop("solver"), args.pop("steps"), **args)
    with pytest.raises(TypeError, match="ScoreModel"):
        sch.gits(lambda x, t: x, "dpmpp_2m", 4, shape=(2,))
    assert not calls
