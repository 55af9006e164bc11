"""Align Your Steps (sdekit.solvers.ays): the KLUB search against the bound's exact optimum for Gaussian data, its
effect on a deterministic solver's exact endpoint error on mixtures, its cost accounting and its input checks."""
import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit.metrics import per_row_error
from sdekit.solvers import grids, sample
from sdekit.solvers import ays as A
from sdekit.solvers import schedules as sch
from tests.test_schedules import Counting, _mixture

SDE = sdekit.VPSDE()


def gaussian_model(c, dim=3):
    gm = sdekit.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, dim, dtype=torch.float64),
                                torch.tensor([c], dtype=torch.float64))
    return gm.model(SDE)


def gaussian_bound(ss, c, coupling):
    """The KLUB of the grid of noise levels ss (decreasing s = sigma/alpha) for N(0, c^2) data, by quadrature of
    its closed-form integrand (ays module docstring)."""
    from scipy.integrate import quad

    def sq(s, si):
        if coupling == "ode":
            return c * c * (c / math.hypot(c, s) - c / math.hypot(c, si)) ** 2
        a, b = c * c / (c * c + s * s), c * c / (c * c + si * si)
        return c * c * (a - b) ** 2 + (s * a - si * b) ** 2

    return sum(quad(lambda s, hi=hi: sq(s, hi) / s**3, lo, hi, limit=200)[0] for hi, lo in zip(ss[:-1], ss[1:]))


@pytest.mark.parametrize("coupling,c", [("ode", 0.7), ("forward", 1.0)])
def test_ays_finds_the_gaussian_bounds_optimum_which_is_not_kl_optimal(coupling, c):
    """For N(0, c^2) data the search lands on the minimiser of the closed-form bound (Nelder-Mead on its quadrature)
    within the fine grid's resolution; that optimum is far from kl_optimal's equal angles, which in turn minimise
    DDIM's output KL: each grid wins its own objective."""
    from scipy.optimize import minimize

    steps = 4
    s_max, s_min = (float(SDE.sigma(t) / SDE.alpha(t)) for t in (SDE.T, SDE.eps))

    def grid(w):  # softmax increments of log s: every w is a valid grid with both ends fixed
        z = np.cumsum(np.exp(w - w.max()))
        u = np.concatenate([[0.0], z[:-1] / z[-1], [1.0]])
        return np.exp(math.log(s_max) + u * (math.log(s_min) - math.log(s_max)))

    best = minimize(lambda w: gaussian_bound(grid(w), c, coupling), np.zeros(steps), method="Nelder-Mead",
                    options={"xatol": 1e-7, "fatol": 1e-14, "maxiter": 4000})
    exact = torch.as_tensor(np.arctan(grid(best.x)))
    out = A.ays_schedule(gaussian_model(c), steps, shape=(3,), n=64, coupling=coupling, fine=300, substeps=1,
                         start="kl_optimal", candidates=())
    assert out.info["chosen"] == "ays" and out.cost < out.info["start_cost"]
    found = sch.angle(SDE, out.ts)
    assert torch.allclose(found, exact, atol=0.03), (found, exact)
    kl_opt = grids.make_grid(SDE, steps, "kl_optimal", sigma_data=c)
    assert float((sch.angle(SDE, kl_opt) - exact).abs().max()) > 0.3  # a different optimum, not a tolerance miss
    s_of = (SDE.sigma(out.ts) / SDE.alpha(out.ts)).numpy()
    s_kl = (SDE.sigma(kl_opt) / SDE.alpha(kl_opt)).numpy()
    assert gaussian_bound(s_of, c, coupling) < gaussian_bound(s_kl, c, coupling)
    assert sch.ddim_gaussian_kl(SDE, kl_opt, c) < sch.ddim_gaussian_kl(SDE, out.ts, c)


def test_ays_reduces_the_endpoint_error_of_its_start_on_fresh_draws():
    """Two 2-D mixtures x (dpmpp_2m, ddim) x (4, 6, 10) steps, 200 fresh exact draws against rk4 with 150 log-SNR
    steps: the searched grid alone (candidates=()) has a smaller median error than the logsnr grid it started from
    in most cells, and the returned grid (after selection) is within 5% of the start or better in every cell."""
    wins, cells = 0, 0
    for seed in (21, 22):
        gm = _mixture(2, seed)
        model = gm.model(SDE)
        x = gm.sample_t(200, SDE.T, SDE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = sample(model, x, "rk4", 150, grid="logsnr").x
        for solver in ("dpmpp_2m", "ddim"):
            for steps in (4, 6, 10):
                def median(ts, solver=solver, model=model, x=x, ref=ref):
                    return float(per_row_error(sample(model, x, solver, ts=ts).x, ref).median())

                start = median(grids.make_grid(SDE, steps, "logsnr"))
                out = A.ays_schedule(model, steps, shape=(2,), solver=solver, n=32, fine=40, generator=seed + 7)
                wins += median(out.info["searched_ts"]) < start
                cells += 1
                assert median(out.ts) <= 1.05 * start, (seed, solver, steps, out.info["chosen"])
    assert wins >= math.ceil(2 * cells / 3), (wins, cells)


@pytest.mark.parametrize("name,t_end,coupling", [("vp", None, "ode"), ("vp", 0.0, "forward"),
                                                 ("rectified_flow", None, "ode")])
def test_ays_returns_a_valid_grid_and_counts_its_calls(name, t_end, coupling):
    sde = {"vp": SDE, "rectified_flow": sdekit.RectifiedFlow()}[name]
    base = sdekit.GaussianMixture.default(2).model(sde)
    counting = Counting(base.net)
    model = sdekit.ScoreModel(counting, sde, base.prediction)
    out = A.ays_schedule(model, 5, shape=(2,), n=16, fine=30, t_end=t_end, coupling=coupling)
    ts = grids.check_grid(sde, out.ts)
    assert ts.numel() == 6 and float(ts[0]) == sde.T and float(ts[-1]) == (sde.eps if t_end is None else 0.0)
    assert out.nfe == counting.calls > 0 and out.info["seconds"] > 0
    searched = out.info["searched_ts"]
    assert set(searched[:-1].tolist() if t_end == 0.0 else searched.tolist()) <= set(out.fine_ts.tolist())
    assert torch.equal(A.ays(base, 5, shape=(2,), n=16, fine=30, t_end=t_end, coupling=coupling), out.ts)


def test_ays_interpolate_is_log_linear_in_s_and_keeps_the_ends():
    ts = grids.make_grid(SDE, 10, "karras")
    assert torch.allclose(A.ays_interpolate(SDE, ts, 10), ts, rtol=1e-9, atol=1e-12)
    out = A.ays_interpolate(SDE, ts, 20)
    assert out.numel() == 21 and float(out[0]) == SDE.T and float(out[-1]) == SDE.eps
    assert bool((out[1:] < out[:-1]).all())
    logs = -0.5 * SDE.log_snr(out)
    assert torch.allclose(logs[::2], -0.5 * SDE.log_snr(ts), rtol=1e-7)  # the old points are kept
    assert torch.allclose(logs[1::2], 0.5 * (logs[:-1:2] + logs[2::2]), rtol=1e-7)  # the new ones halve log s


def test_ays_refuses_bad_input_before_any_work():
    calls = []
    model = sdekit.ScoreModel(lambda x, t: calls.append(1) or x, SDE, "eps")
    cases = [
        (dict(solver="dopri5"), "adaptive"), (dict(solver="euler_maruyama"), "stochastic"), (dict(steps=0), "steps"),
        (dict(steps=30, fine=20), "fine"), (dict(shape=None), "shape"), (dict(start="table"), "table"),
        (dict(candidates="logsnr"), "sequence"), (dict(coupling="both"), "coupling"), (dict(max_sweeps=-1), "max_sweeps"),
        (dict(steps=1, t_end=0.0), "steps >= 2"),
    ]
    for kw, match in cases:
        args = {"steps": 4, "shape": (2,), **kw}
        with pytest.raises(ValueError, match=match):
            A.ays_schedule(model, args.pop("steps"), **args)
    with pytest.raises(TypeError, match="ScoreModel"):
        A.ays(lambda x, t: x, 4, shape=(2,))
    assert not calls
