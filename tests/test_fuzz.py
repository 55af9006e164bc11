"""Fuzzing: random SDE parameters, grids, shapes and dtypes through every solver.

Each call must return finite numbers of the right shape and dtype, or raise one of the documented
errors (ValueError for bad input, SolverError for a solve that cannot finish)."""
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import solvers
from tests.sdes import KINDS, make_sde

DOCUMENTED = (ValueError, solvers.SolverError)


@st.composite
def sdes(draw):
    return make_sde(draw(st.sampled_from(KINDS)), draw(st.floats(0, 1)), draw(st.floats(0, 1)))


@settings(max_examples=60)
@given(sde=sdes(), name=st.sampled_from(solvers.available()), grid=st.sampled_from(["uniform", "quadratic", "logsnr", "karras"]),
       steps=st.integers(1, 8), batch=st.integers(1, 4), dim=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64]), t_end=st.sampled_from([1e-5, 1e-3, 0.1]), seed=st.integers(0, 99))
def test_every_solver_returns_finite_or_a_documented_error(sde, name, grid, steps, batch, dim, dtype, t_end, seed):
    gen = torch.Generator().manual_seed(seed)
    gm = sdekit.GaussianMixture([0.5, 0.5], torch.randn(2, dim, generator=gen, dtype=torch.float64), [0.05, 0.5])
    x = sde.prior_sample((batch, dim), generator=gen, dtype=dtype)
    info = solvers.get(name)
    kwargs = {"rtol": 1e-3, "atol": 1e-3, "max_nfe": 2000} if info.adaptive else {"steps": steps, "grid": grid}
    try:
        sol = solvers.sample(gm.model(sde), x, name, t_end=max(t_end, sde.eps if info.family == "discrete" else 0),
                             generator=seed, **kwargs)
    except DOCUMENTED as e:
        event(f"documented error: {type(e).__name__}: {str(e)[:60]}")
        return
    event("solved")
    assert sol.x.shape == x.shape and sol.x.dtype == dtype
    assert bool(torch.isfinite(sol.x).all())


def test_float32_down_to_1e_5_on_every_builtin_sde():
    gm = sdekit.GaussianMixture.default(2)
    for sde in (sdekit.VPSDE(), sdekit.SubVPSDE(), sdekit.VESDE(), sdekit.CosineVPSDE()):
        x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
        for name in ("euler", "heun", "dpmpp_2m", "unipc_3", "euler_maruyama", "pc", "dopri5"):
            kw = {} if solvers.get(name).adaptive else {"steps": 12}
            sol = solvers.sample(gm.model(sde), x, name, t_end=1e-5, generator=0, **kw)
            assert sol.x.dtype == torch.float32 and bool(torch.isfinite(sol.x).all()), (sde, name)


@settings(max_examples=25)
@given(sde=sdes(), batch=st.integers(1, 3), dim=st.integers(1, 4), dtype=st.sampled_from([torch.float32, torch.float64]),
       divergence=st.sampled_from(["exact", "hutchinson"]), t_data=st.sampled_from([1e-5, 1e-3, 0.2]),
       seed=st.integers(0, 99))
def test_likelihood_returns_finite_or_a_documented_error(sde, batch, dim, dtype, divergence, t_data, seed):
    from sdekit.solvers import SolverError

    gen = torch.Generator().manual_seed(seed)
    gm = sdekit.GaussianMixture([0.5, 0.5], torch.randn(2, dim, generator=gen, dtype=torch.float64), [0.05, 0.5])
    x = gm.sample(batch, generator=gen, dtype=dtype)
    try:
        res = sdekit.log_likelihood(gm.model(sde), x, divergence=divergence, probes=2, seed=seed,
                                    t_data=max(t_data, sde.eps), rtol=1e-3, atol=1e-3, max_nfe=20000)
    except (ValueError, SolverError) as e:  # one family: budget, step size, NaN
        event(f"documented error: {type(e).__name__}")
        return
    event("solved")
    assert res.log_prob.shape == (batch,) and bool(torch.isfinite(res.log_prob).all())
    assert bool(torch.isfinite(res.z).all()) and res.nfe > 0
