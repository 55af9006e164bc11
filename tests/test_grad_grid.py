"""Grids tuned by gradient through the solver (grad_grid) and the free start below T, on exact mixtures."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.metrics import per_row_error
from sdekit.solvers import grad_grid as gg
from sdekit.solvers import grid_params
from sdekit.solvers.base import NotApplicableError
from sdekit.solvers.grids import make_grid
from sdekit.solvers.registry import SOLVERS
from sdekit.solvers.tune import tune

SDE = sdekit.VPSDE()
DETERMINISTIC = sorted(n for n, i in SOLVERS.items()
                       if not i.adaptive and i.nfe_per_step is not None and (not i.stochastic or i.options.get("eta") == 0))


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x, t):
        self.calls += 1
        return self.inner(x, t)


class DetachedTime(torch.nn.Module):
    """The exact mixture score with its time input cut from the graph (as a network that rounds t to a table
    index is): no gradient in t."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x, t.detach())


def _balanced(e):
    q = torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()
    return math.log(q[0]) + math.log(q[1])


@pytest.mark.parametrize("t_end", [SDE.eps, 0.0])
def test_every_deterministic_solver_has_a_tape_that_reproduces_sample(t_end):
    """Registry walk: the tape (calls as fixed combinations of x_T and earlier outputs) gives sample's endpoint."""
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    x = SDE.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = make_grid(SDE, 5, "karras", t_end=t_end)
    for name in DETERMINISTIC:
        gg.check_tape(model, name, {}, x, ts)  # raises NotApplicableError on a mismatch
        tp = gg.tape(model, name, ts)
        assert tp.S.shape == (len(tp.tau), len(tp.tau) + 1) and tp.f.shape == (len(tp.tau) + 1,)
        assert bool(torch.triu(tp.S[:, 1:]).eq(0).all())  # call k sees only the outputs before it


def test_the_gradient_through_the_tape_is_the_gradient_of_the_solve():
    """d loss / d (grid parameters) by autograd through the tape equals a central difference of sample's loss,
    with the start free too (it checks the time input's gradient: a 0-d time keeps its graph in the SDE)."""
    model = sdekit.GaussianMixture.default(dim=2, seed=3).model(SDE)
    x = SDE.prior_sample((32, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_ref = sdekit.sample(model, x, "rk4", 100, grid="logsnr").x
    ts0 = make_grid(SDE, 5, "quadratic")
    params = grid_params.GridParams(SDE, 5, SDE.T, SDE.eps, True, [ts0])
    p = params.p_of(ts0) + np.array([0.05, 0.1, -0.2, 0.0, 0.1, 0.0])

    def loss(q):
        e = per_row_error(sdekit.sample(model, x, "unipc_3", ts=params.ts(q)).x, x_ref)
        return float(torch.log(e).mean())

    tp0 = gg.tape(model, "unipc_3", params.ts(p))
    J = gg._jacobian(lambda q: gg.tape(model, "unipc_3", params.ts(q)).flat(), p, tp0.flat())
    leaf = torch.zeros(len(p), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = per_row_error(gg.replay(model, x, gg.Tape.unflat(tp0.flat() + J @ leaf, len(tp0.tau))), x_ref)
        g = torch.autograd.grad(torch.log(e).mean(), leaf)[0].numpy()
    eye, h = np.eye(len(p)), 1e-5
    fd = np.array([(loss(p + h * eye[i]) - loss(p - h * eye[i])) / (2 * h) for i in range(len(p))])
    assert np.allclose(g, fd, rtol=1e-4, atol=1e-5), (g, fd)


@given(st.floats(0.0, grid_params.PHI_MAX), st.lists(st.floats(-6, 6), min_size=3, max_size=12), st.booleans())
def test_any_free_start_parameter_is_a_monotone_grid_inside_eps_T(phi, theta, zero_end):
    t_end = 0.0 if zero_end else SDE.eps
    steps = len(theta)  # (a grid to sigma = 0 has one increment more: the gap from its last node to the window's top)
    params = grid_params.GridParams(SDE, steps, SDE.T, t_end, True, [make_grid(SDE, steps, "logsnr", t_end=t_end)])
    ts = params.ts(np.array([phi] + theta))
    assert ts.shape == (steps + 1,) and float(ts[-1]) == t_end and bool((ts[1:] < ts[:-1]).all())
    assert float(ts[0]) <= SDE.T and (phi > 0 or float(ts[0]) == SDE.T)
    assert float(ts[-2 if zero_end else -1]) >= SDE.eps


@pytest.fixture(scope="module")
def gm2():
    return sdekit.GaussianMixture.default(dim=2, seed=3)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_3"])
def test_gradient_tuning_beats_its_start_grid_on_held_out_draws(gm2, solver):
    """NFE 5: the gradient-tuned grid wins on its validation draw, on the fresh draw it reports, and on exact p_T
    draws it never saw (scored against the exact mixture's converged solve); it stays monotone in [eps, T]."""
    model = gm2.model(SDE)
    tg = tune(model, solver, 5, shape=(2,), n=96, generator=1, method="gradient", max_evals=30, ref_steps=100,
              cache=False)
    assert tg.method == "gradient" and tg.improved and tg.backward > 0
    ts = tg.ts
    assert float(ts[0]) == SDE.T and float(ts[-1]) == SDE.eps and bool((ts[1:] < ts[:-1]).all())
    for draw in (tg.validation, tg.fresh):
        assert draw["tuned"]["median"] < draw["start"]["median"] and draw["tuned"]["p90"] <= draw["start"]["p90"]
    x_T = gm2.sample_t(400, SDE.T, SDE, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    x_ref = sdekit.sample(model, x_T, "rk4", 400, grid="logsnr").x
    start = per_row_error(sdekit.sample(model, x_T, solver, 5, grid=tg.start_grid).x, x_ref)
    tuned = per_row_error(sdekit.sample(model, x_T, solver, ts=ts).x, x_ref)
    assert _balanced(tuned) < _balanced(start) - math.log(1.2)


def test_a_free_start_below_T_is_chosen_and_runs(gm2):
    """method="start": the named grid's shape from a start t_s < T, x_T still the prior draw (diffusers' leading
    spacing); measured on this mixture it halves dpmpp_2m's median error at NFE 5."""
    model = gm2.model(SDE)
    tg = tune(model, "dpmpp_2m", 5, shape=(2,), n=128, generator=2, method="start", ref_steps=150, cache=False)
    assert tg.improved and float(tg.ts[0]) < SDE.T and tg.fresh["tuned"]["median"] < tg.fresh["start"]["median"]
    t_s = float(tg.ts[0])
    assert torch.allclose(tg.ts, make_grid(SDE, 5, tg.start_grid, t_start=t_s), rtol=0, atol=1e-12)
    assert sdekit.sample(model, torch.zeros(3, 2, dtype=torch.float64), "dpmpp_2m", ts=tg.ts).nfe == 5


def test_no_updates_return_the_start_grid(gm2):
    tg = tune(gm2.model(SDE), "dpmpp_2m", 4, shape=(2,), n=32, method="gradient", max_evals=0, ref_steps=50)
    assert not tg.improved and torch.equal(tg.ts, make_grid(SDE, 4, tg.start_grid))


def test_a_network_without_time_gradients_is_tuned_by_powell_or_refused(gm2):
    model = sdekit.ScoreModel(DetachedTime(gm2.model(SDE).net), SDE, prediction="score")
    assert not gg.is_differentiable(model, (2,), torch.float64, torch.device("cpu"))
    assert gg.is_differentiable(gm2.model(SDE), (2,), torch.float64, torch.device("cpu"))
    tg = tune(model, "dpmpp_2m", 4, shape=(2,), n=32, max_evals=10, ref_steps=50, cache=False)
    assert tg.method == "powell"
    with pytest.raises(NotApplicableError, match="powell"):
        tune(model, "dpmpp_2m", 4, shape=(2,), n=32, method="gradient", ref_steps=50)


def test_gradient_tuning_is_cached_per_method(gm2):
    model = sdekit.ScoreModel(Counting(gm2.model(SDE).net), SDE, prediction="score")
    kw = dict(shape=(2,), n=32, generator=4, max_evals=5, ref_steps=50)
    first = tune(model, "unipc_3", 4, method="gradient", **kw)
    before = model.net.calls
    again = tune(model, "unipc_3", 4, method="gradient", **kw)
    assert model.net.calls == before and torch.equal(again.ts, first.ts) and again is not first
    tune(model, "unipc_3", 4, method="powell", **kw)
    assert model.net.calls > before  # another method: tuned anew


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(method="newton"), ValueError, "unknown method"),
    (dict(free_start="yes"), TypeError, "free_start"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(method="gradient", lr=float("nan")), ValueError, "lr"),
])
def test_bad_method_options_are_refused_before_any_work(gm2, kwargs, err, match):
    model = sdekit.ScoreModel(Counting(gm2.model(SDE).net), SDE, prediction="score")
    with pytest.raises(err, match=match):
        tune(model, "dpmpp_2m", 4, shape=(2,), **kwargs)
    assert model.net.calls == 0


def test_free_start_from_pure_noise_is_refused_clearly():
    model = sdekit.GaussianMixture.default(dim=2).model(sdekit.RectifiedFlow())
    with pytest.raises(ValueError, match="alpha"):
        tune(model, "dpmpp_2m", 4, shape=(2,), n=16, free_start=True, method="powell", max_evals=2, ref_steps=20)
