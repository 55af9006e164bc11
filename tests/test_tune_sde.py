"""tune_stochastic: grids for reverse-SDE samplers tuned by the sliced W2 of their law (sdekit.solvers.tune_sde)."""
import pytest
import torch

import sdekit
from sdekit.ground_truth import GaussianMixture
from sdekit.metrics import sliced_w2
from sdekit.solvers import available, get
from sdekit.solvers.grids import make_grid
from sdekit.solvers.tune import TunedGrid
from sdekit.solvers.tune_sde import tune_stochastic

SDE = sdekit.VPSDE()
GM = GaussianMixture.default(2, seed=1)
MODEL = GM.model(SDE)
_CACHE: dict = {}


def _tuned(solver: str, free_start: bool = False) -> TunedGrid:
    key = (solver, free_start)
    if key not in _CACHE:
        _CACHE[key] = tune_stochastic(MODEL, solver, 10, shape=(2,), n=1024, generator=0, max_evals=120,
                                      ref_steps=50, free_start=free_start)
    return _CACHE[key]


def _held_out_sw2(solver: str, ts: torch.Tensor, n: int = 4000, seed: int = 123) -> float:
    """Sliced W2 of the sampler on grid ts, from fresh prior rows and noise, to fresh exact draws of p_eps."""
    x_T = SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed)).double()
    x = sdekit.sample(MODEL, x_T, solver, ts=ts, generator=seed + 1).x
    exact = GM.sample_t(n, SDE.eps, SDE, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    return sliced_w2(x, exact)


TUNED = ["euler_ancestral", "dpmpp_2m_sde", "er_sde_2"]


@pytest.mark.parametrize("solver", TUNED)
def test_a_kept_grid_beats_its_start_on_validation_and_on_the_exact_law(solver):
    """A tuned grid is kept only where it wins on the validation draw, and then it wins on a third draw the tuning
    never saw, against exact mixture draws; where it lost on validation the start grid comes back unchanged."""
    tg = _tuned(solver)
    assert tg.objective == "sw2" and tg.nfe > 0
    start = make_grid(SDE, 10, tg.start_grid)
    if not tg.improved:
        assert torch.equal(tg.ts, start)
        return
    assert tg.validation["tuned"]["sw2"] < tg.validation["start"]["sw2"]
    assert not torch.equal(tg.ts, start)
    assert _held_out_sw2(solver, tg.ts) < _held_out_sw2(solver, start)


def test_tuning_improves_most_samplers():
    """Powell on a 10-step grid with 1024 rows wins validation for most samplers (a lost one is the keep rule
    at work: measured, dpmpp_2m_sde's calibration win 0.058 vs 0.078 did not carry to its validation draw on one
    build and did on another, the optimiser's path moved by rounding)."""
    assert sum(_tuned(s).improved for s in TUNED) >= 2


@pytest.mark.parametrize("free_start", [False, True])
def test_tuned_grid_is_a_monotone_grid_inside_eps_T(free_start):
    tg = tune_stochastic(MODEL, "dpmpp_2m_sde", 6, shape=(2,), n=256, max_evals=30, ref_steps=20,
                         free_start=free_start)
    ts = tg.ts
    assert ts.dtype == torch.float64 and len(ts) == 7 and bool((ts[1:] < ts[:-1]).all())
    assert float(ts[-1]) == SDE.eps and float(ts[0]) <= SDE.T
    if not free_start:
        assert float(ts[0]) == SDE.T
    sdekit.sample(MODEL, torch.zeros(4, 2, dtype=torch.float64), "dpmpp_2m_sde", ts=ts, generator=0)


def test_every_fixed_step_stochastic_sampler_tunes_on_vp_ddpm_table_and_flow_paths():
    """The registry walk: every fixed-step stochastic sampler returns a valid grid on a VP SDE, on the DDPM table
    ending at t = 0 (the last step the x0 jump) with a free start, and on a flow path starting at alpha = 0."""
    table = sdekit.DiscreteVPSDE.linear(1000, 1e-4, 0.02)
    problems = [(SDE, {}), (table, {"t_end": 0.0, "free_start": True}), (sdekit.RectifiedFlow(), {})]
    names = [s for s in available() if get(s).stochastic and not get(s).adaptive]
    assert {"euler_ancestral", "er_sde_3", "seeds_3"} <= set(names)
    for sde, kw in problems:
        model = GM.model(sde)
        t_end = kw.get("t_end", sde.eps)
        for name in names:
            if name in ("pc", "reverse_diffusion", "heun_churn", "restart", "ddim") and sde is not SDE:
                continue  # samplers of the SDE itself: the VP case covers them
            try:
                tg = tune_stochastic(model, name, 4, shape=(2,), n=64, max_evals=4, ref_steps=4, n_proj=8,
                                     start_grids=("uniform",), **kw)
            except sdekit.solvers.NotApplicableError:
                continue
            ts = tg.ts
            assert len(ts) == 5 and bool((ts[1:] < ts[:-1]).all()), (name, sde)
            assert float(ts[-1]) == t_end and float(ts[0]) <= sde.T, (name, sde)


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ValueError, match="stochastic"):
        tune_stochastic(MODEL, "dpmpp_2m", 10, shape=(2,))
    with pytest.raises(ValueError, match="steps"):
        tune_stochastic(MODEL, "euler_ancestral", 1, shape=(2,))
    with pytest.raises(ValueError, match="n must"):
        tune_stochastic(MODEL, "euler_ancestral", 10, shape=(2,), n=10)
    with pytest.raises(ValueError, match="shape"):
        tune_stochastic(MODEL, "euler_ancestral", 10)
    with pytest.raises(ValueError, match="start grid"):
        tune_stochastic(MODEL, "euler_ancestral", 10, shape=(2,), start_grids=("nope",))
    with pytest.raises(TypeError, match="free_start"):
        tune_stochastic(MODEL, "euler_ancestral", 10, shape=(2,), free_start=1)
    with pytest.raises(TypeError, match="ScoreModel"):
        tune_stochastic(GM, "euler_ancestral", 10, shape=(2,))
    with pytest.raises(TypeError, match="generator"):
        tune_stochastic(MODEL, "euler_ancestral", 10, shape=(2,), generator=None)


def test_tune_is_the_front_door_for_stochastic_samplers():
    """sdekit.tune on a stochastic sampler tunes its grid on the sliced W2 (tune_stochastic), with the same result
    for the same settings; deterministic-only settings are refused by name before any work."""
    model = GM.model(SDE)
    kw = dict(shape=(2,), n=256, generator=3, max_evals=6, ref_steps=40)
    front = sdekit.tune(model, "euler_ancestral", 5, **kw)
    direct = tune_stochastic(model, "euler_ancestral", 5, **kw)
    assert front.objective == "sw2"
    assert torch.equal(front.ts, direct.ts)
    calls = []
    counted = sdekit.ScoreModel(lambda x, t: calls.append(1) or model.net(x, t), SDE, model.prediction)
    for bad in ({"method": "gradient"}, {"objective": "median"}, {"lr": 0.1}):
        with pytest.raises(ValueError, match="stochastic"):
            sdekit.tune(counted, "euler_ancestral", 5, **kw, **bad)
    assert not calls
