"""learn_solver / LearnedSolver: exact init, better on fresh draws, the held-out rule, files tied to the model."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import learned_fit
from sdekit.solvers.base import NotApplicableError
from sdekit.solvers.grids import make_grid
from sdekit.solvers.learned import LearnedSolver, WrongModelError, learn_solver
from sdekit.solvers.registry import SolverInfo, get
from sdekit.metrics import per_row_error as row_errors

SDE = sdekit.VPSDE()


def _quantiles(e):
    return torch.quantile(e, torch.tensor([0.5, 0.9], dtype=e.dtype)).tolist()


def _fresh(model, dim, n=300, seed=99):
    x_T = SDE.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed)).double()
    return x_T, sdekit.sample(model, x_T, "rk4", 200, grid="logsnr").x


@pytest.fixture(scope="module")
def case():
    gm = sdekit.GaussianMixture.default(dim=2, seed=11)
    model = gm.model(SDE)
    ls = learn_solver(model, 4, shape=(2,), n=96, steps=100, lr=0.02, ref_steps=150, generator=3)
    return gm, model, ls


def _one_call_solvers():
    """Every registered deterministic fixed-step solver with one network call per step."""
    return [n for n in sdekit.solvers.available()
            if (not get(n).stochastic or get(n).options.get("eta") == 0) and not get(n).adaptive
            and get(n).nfe_per_step == 1]


@pytest.mark.parametrize("grid", ["logsnr", "uniform", "karras"])
def test_init_reproduces_every_one_call_solver_or_refuses_it_by_name(grid):
    """Read off by probing, the init is the registered solver itself on its grid (to float64 rounding); a solver
    outside the family (one that calls the model away from its states) is refused by name."""
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    ts = make_grid(SDE, 5, grid)
    x_T = SDE.prior_sample((64, 2), generator=torch.Generator().manual_seed(0)).double()
    reproduced = []
    for name in _one_call_solvers():
        try:
            a, b = learned_fit._probe(model, name, ts)
        except NotApplicableError as err:
            assert name in str(err)
            continue
        ls = LearnedSolver(ts, a, b, name, grid, False, None)
        want = sdekit.sample(model, x_T, name, ts=ts).x
        got = sdekit.sample(model, x_T, ls)
        assert got.nfe == 5
        assert torch.allclose(got.x, want, rtol=0, atol=1e-13 * float(want.abs().max())), name
        reproduced.append(name)
    assert {"dpmpp_2m", "ddim", "ipndm", "ipndm_v", "dpmpp_3m", "unipc_2", "unipc_3", "deis_3", "euler"} <= set(reproduced)


def test_step_zero_of_learning_is_the_init_exactly():
    """The learned parametrisation at its starting point gives the init's times bit for bit."""
    for grid in ("logsnr", "quadratic", "karras"):
        ts = make_grid(SDE, 5, grid)
        times = learned_fit._Times(SDE, ts)
        assert torch.equal(times(times.theta0.clone().requires_grad_(True)).detach(), ts)


def test_learning_lowers_the_error_on_fresh_draws(case):
    """At NFE 4 on a 2-D mixture, scored on 300 prior rows it never saw against a converged solve of the exact
    score: a clearly lower median than its init (dpmpp_2m on the grid it started from), and no worse p90."""
    gm, model, ls = case
    assert ls.improved and ls.nfe == 4 and ls.num_parameters == 4 + 10 + 3
    x_T, ref = _fresh(model, 2)
    learned = _quantiles(row_errors(sdekit.sample(model, x_T, ls).x, ref))
    init = _quantiles(row_errors(sdekit.sample(model, x_T, "dpmpp_2m", 4, grid=ls.start_grid).x, ref))
    assert learned[0] < 0.6 * init[0]
    assert learned[1] <= 1.05 * init[1]
    assert bool((ls.ts[1:] < ls.ts[:-1]).all()) and float(ls.ts[0]) == SDE.T and float(ls.ts[-1]) == SDE.eps
    assert ls.cost["nfe"] > 0 and ls.cost["backward"] == 100 * 4 and ls.cost["seconds"] > 0


@pytest.mark.parametrize("how", [{"lr": 0.0}, {"steps": 0}])
def test_no_learning_returns_the_init(how):
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    ls = learn_solver(model, 4, shape=(2,), n=16, ref_steps=20, grid="logsnr", **how)
    a, b = learned_fit._probe(model, "dpmpp_2m", make_grid(SDE, 4, "logsnr"))
    assert not ls.improved and torch.equal(ls.a, a) and torch.equal(ls.b, b)
    assert torch.equal(ls.ts, make_grid(SDE, 4, "logsnr"))


def test_the_held_out_draw_rejects_a_solver_worse_than_its_init(monkeypatch):
    """Whatever learning returns, a solver that loses on the validation draw is not kept: the init is."""
    def spoiled(model, cal, ts0, a0, b0, steps, lr, dtype, free_start=False):  # half the data terms
        return ts0, a0, b0 * 0.5, steps * len(a0)

    monkeypatch.setattr(learned_fit, "_fit", spoiled)
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    ls = learn_solver(model, 4, shape=(2,), n=32, ref_steps=50, steps=1, grid="logsnr")
    assert not ls.improved
    assert ls.validation["learned"]["median"] > ls.validation["init"]["median"]
    assert torch.equal(ls.a, learned_fit._probe(model, "dpmpp_2m", ls.ts)[0])


def test_save_load_round_trip(case, tmp_path):
    _, model, ls = case
    path = str(tmp_path / "solver.safetensors")
    ls.save(path)
    back = LearnedSolver.load(path, model)
    for k in ("ts", "a", "b"):
        assert torch.equal(getattr(back, k), getattr(ls, k))
    assert (back.init, back.start_grid, back.improved, back.fingerprint) == (ls.init, ls.start_grid, ls.improved,
                                                                             ls.fingerprint)
    assert back.validation == ls.validation and back.cost == ls.cost and back.num_parameters == ls.num_parameters
    x_T = torch.randn(20, 2, dtype=torch.float64)
    assert torch.equal(sdekit.sample(model, x_T, back).x, sdekit.sample(model, x_T, ls).x)


def test_another_model_is_refused_by_name(case, tmp_path):
    _, model, ls = case
    path = str(tmp_path / "solver.safetensors")
    ls.save(path)
    other = sdekit.GaussianMixture.default(dim=2, seed=12).model(SDE)
    with pytest.raises(WrongModelError, match="fingerprint"):
        LearnedSolver.load(path, other)
    with pytest.raises(WrongModelError, match="learn_solver"):
        sdekit.sample(other, torch.randn(4, 2, dtype=torch.float64), ls)
    other_sde = sdekit.GaussianMixture.default(dim=2, seed=11).model(sdekit.VPSDE(beta_max=15.0))
    with pytest.raises(WrongModelError):
        LearnedSolver.load(path, other_sde)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="safetensors"):
        LearnedSolver.load(str(tmp_path / "bad.safetensors"), model)


def test_sample_runs_on_any_batch_row_for_row(case):
    """Per-row: a row's sample does not depend on the batch around it; float32 states work too."""
    _, model, ls = case
    x_T = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    full = sdekit.sample(model, x_T, ls).x
    for rows in (slice(0, 1), slice(5, 12), slice(100, 300)):
        assert torch.allclose(sdekit.sample(model, x_T[rows], ls).x, full[rows], rtol=0, atol=1e-13)
    x32 = sdekit.sample(model, x_T.float(), ls).x
    assert x32.dtype == torch.float32 and torch.allclose(x32.double(), full, atol=1e-4)
    traj = sdekit.sample(model, x_T[:3], ls, trajectory=True)
    assert len(traj.trajectory) == 5 and torch.equal(traj.ts, ls.ts)


def test_sample_refuses_another_grid(case):
    _, model, ls = case
    x_T = torch.randn(4, 2, dtype=torch.float64)
    assert sdekit.sample(model, x_T, ls, steps=4).nfe == 4
    for kwargs in ({"steps": 5}, {"ts": ls.ts}, {"t_start": 0.5}, {"t_end": 0.01}):
        with pytest.raises(ValueError, match="own"):
            sdekit.sample(model, x_T, ls, **kwargs)


def test_bad_inputs_are_refused_before_any_work(monkeypatch):
    def off_state(ev, x, ts):  # a midpoint-like step: calls the model at a point that is not its state
        for i in range(len(ts) - 1):
            x = x + ev.x0(0.5 * x, ts[i])
            yield x

    info = SolverInfo("off_state", off_state, False, 1, 1, False, "ode", {})
    monkeypatch.setattr(learned_fit, "get", lambda name: info if name == "off_state" else get(name))
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    for kwargs, err in (({"nfe": 1}, ValueError), ({"shape": None}, ValueError), ({"n": 5}, ValueError),
                        ({"steps": -1}, ValueError), ({"lr": math.nan}, ValueError), ({"init": "nope"}, ValueError),
                        ({"generator": 1.5}, TypeError), ({"init": "heun"}, NotApplicableError),
                        ({"init": "euler_ancestral"}, NotApplicableError),
                        ({"grid": torch.tensor([1.0, 0.5, 1e-3])}, ValueError)):
        args = {"nfe": 4, "shape": (2,), "n": 16, "ref_steps": 4, **kwargs}
        nfe = args.pop("nfe")
        with pytest.raises(err):
            learn_solver(model, nfe, **args)
    with pytest.raises(NotApplicableError, match="off_state"):  # a model call away from the state
        learn_solver(model, 4, init="off_state", shape=(2,), n=16, ref_steps=4)
    with pytest.raises(TypeError):
        learn_solver(lambda x, t: x, 4, shape=(2,))


def test_a_plain_function_network_learns_but_cannot_be_saved(tmp_path):
    gm = sdekit.GaussianMixture.default(dim=2, seed=1)
    model = sdekit.ScoreModel(lambda x, t: gm.score(x, t, SDE), SDE, prediction="score")
    ls = learn_solver(model, 3, shape=(2,), n=16, ref_steps=20, steps=2)
    assert ls.fingerprint is None
    with pytest.raises(ValueError, match="fingerprint"):
        ls.save(str(tmp_path / "x.safetensors"))


# -- flow paths (alpha(T) = 0) and the t = 0 end ---------------------------------------------------------
FLOWS = (sdekit.RectifiedFlow(), sdekit.CondOT(), sdekit.CosinePath())


@pytest.mark.parametrize("sde", FLOWS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("denoise", [False, True])
def test_on_flow_paths_the_init_is_every_solver_that_starts_at_pure_noise(sde, denoise):
    """From x_T at alpha = 0 (velocity network), each one-call solver that can start there is reproduced exactly by
    the family on every start grid (the parametrised times at theta^0 included); the rest are refused by name."""
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0)).double()
    reproduced = set()
    for grid in ("uniform", "logsnr", "karras"):
        ts = make_grid(sde, 5, grid, t_end=0.0 if denoise else None)
        run = ts[:-1] if denoise else ts
        times = learned_fit._Times(sde, run)
        assert torch.equal(times(times.theta0.clone().requires_grad_(True)).detach(), run)
        for name in _one_call_solvers():
            try:
                a, b = learned_fit._probe(model, name, run)
            except NotApplicableError as err:
                assert name in str(err)
                continue
            ls = LearnedSolver(ts, a, b, name, grid, False, None, denoise=denoise)
            want = sdekit.sample(model, x_T, name, ts=ts).x
            got = sdekit.sample(model, x_T, ls)
            assert got.nfe == 5 == ls.nfe
            assert torch.allclose(got.x, want, rtol=0, atol=1e-12 * float(want.abs().max())), (name, grid)
            reproduced.add(name)
    assert {"dpmpp_2m", "ddim", "unipc_2", "dpmpp_3m", "euler"} <= reproduced


@pytest.mark.parametrize("sde,denoise", [(sdekit.RectifiedFlow(), False), (SDE, True)], ids=["rf", "vp-denoise"])
def test_learned_beats_its_init_on_a_flow_path_and_to_t0(sde, denoise):
    """Learned from pure noise on the rectified flow, and to t = 0 on VP (last call: the jump), scored on fresh
    prior rows against a converged solve of the exact mixture: a clearly lower median than dpmpp_2m on the grid it
    started from, no worse p90; step 0 of learning (steps=0) is that init exactly."""
    gm = sdekit.GaussianMixture.default(dim=2, seed=11)
    model = gm.model(sde)
    kw = dict(shape=(2,), n=64, ref_steps=120, generator=3, denoise=denoise)
    ls = learn_solver(model, 4, steps=60, lr=0.03, **kw)
    assert ls.improved and ls.nfe == 4 and ls.denoise is denoise
    assert float(ls.ts[0]) == sde.T and float(ls.ts[-1]) == (0.0 if denoise else sde.eps)
    init_ts = make_grid(sde, 4, ls.start_grid, t_end=0.0 if denoise else None)
    x_T = sde.prior_sample((300, 2), generator=torch.Generator().manual_seed(99)).double()
    ref = sdekit.sample(model, x_T, "rk4", 300, grid="logsnr", **({"t_end": 1e-6, "denoise": True} if denoise else {})).x
    init_x = sdekit.sample(model, x_T, "dpmpp_2m", ts=init_ts).x
    learned = _quantiles(row_errors(sdekit.sample(model, x_T, ls).x, ref))
    init = _quantiles(row_errors(init_x, ref))
    assert learned[0] < 0.5 * init[0] and learned[1] <= init[1]
    step0 = learn_solver(model, 4, steps=0, grid=ls.start_grid, **kw)
    assert not step0.improved and torch.equal(step0.ts, init_ts)
    assert torch.allclose(sdekit.sample(model, x_T, step0).x, init_x, rtol=0, atol=1e-12)


def test_what_cannot_work_on_these_ends_is_refused_by_name(monkeypatch):
    flow = sdekit.GaussianMixture.default(dim=2, seed=1).model(sdekit.RectifiedFlow())
    for init in ("ipndm", "deis_2"):  # multistep in noise form: cannot start at alpha = 0
        with pytest.raises(NotApplicableError, match=init):
            learn_solver(flow, 4, init=init, shape=(2,), n=16, ref_steps=4)
    poly = sdekit.GaussianMixture.default(dim=2, seed=1).model(sdekit.PolynomialPath(2.0))
    with pytest.raises(NotApplicableError):  # the network at T determines no x0
        learn_solver(poly, 4, shape=(2,), n=16, ref_steps=4)
    floor = sdekit.VESDE()  # every shipped SDE has sigma(0) = 0; one with a noise floor at t = 0 has no zero end
    monkeypatch.setattr(floor, "sigma", lambda t: torch.tensor(0.01, dtype=torch.float64))
    ve = sdekit.GaussianMixture.default(dim=2, seed=1).model(floor)
    with pytest.raises(NotApplicableError, match="sigma\\(0\\)"):
        learn_solver(ve, 4, shape=(2,), n=16, ref_steps=4, denoise=True)
    with pytest.raises(TypeError, match="denoise"):
        learn_solver(flow, 4, shape=(2,), n=16, ref_steps=4, denoise=1)


def test_denoising_solver_saves_loads_and_runs_with_denoise_true(tmp_path):
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    ls = learn_solver(model, 3, shape=(2,), n=16, ref_steps=20, steps=2, denoise=True)
    path = str(tmp_path / "d.safetensors")
    ls.save(path)
    back = LearnedSolver.load(path, model)
    assert back.denoise and back.nfe == 3 and torch.equal(back.ts, ls.ts)
    x_T = torch.randn(8, 2, dtype=torch.float64)
    assert torch.equal(sdekit.sample(model, x_T, back, denoise=True).x, sdekit.sample(model, x_T, ls).x)


def test_log_prob_with_a_learned_solver_is_refused_by_name(case):
    _, model, ls = case
    with pytest.raises(ValueError, match="learned solver"):
        sdekit.sample(model, torch.randn(4, 2, dtype=torch.float64), ls, log_prob=True)


# -- compare: a learned solver in the leaderboard with its one-time cost ---------------------------------------
def test_compare_ranks_a_learned_solver_with_its_learning_cost(case, tmp_path):
    from sdekit.compare import CompareResults, compare

    gm, model, ls = case
    x_T = SDE.prior_sample((120, 2), generator=torch.Generator().manual_seed(5)).double()
    ref = sdekit.sample(model, x_T, "rk4", 200, grid="logsnr").x
    res = compare(model, x_T, mixture=gm, solvers=["dpmpp_2m", ls], nfe=(4, 5), grids=("logsnr",), reference=ref,
                  progress=False)
    row = next(r for r in res if r.learned)
    want = _quantiles(row_errors(sdekit.sample(model, x_T, ls).x, ref))
    assert (row.solver, row.nfe, row.steps) == (ls.name, 4, 4)
    assert math.isclose(row.median, want[0], rel_tol=1e-12) and math.isclose(row.p90, want[1], rel_tol=1e-12)
    assert row.tune_nfe == ls.cost["nfe"] and row.learn_s == ls.cost["seconds"]
    meta = res.meta["learned"][ls.name]
    assert meta["cost"] == ls.cost and meta["parameters"] == ls.num_parameters and meta["improved"]
    board = res.leaderboard((4, 5))
    kinds = {(e.budget, e.kind): e.row for e in board}
    assert kinds[(4, "learned")] is row and kinds[(5, "learned")] is row  # nfe 4 fits both budgets
    assert kinds[(4, "untuned")].solver == "dpmpp_2m" and kinds[(4, "untuned")].median > row.median
    assert "learn s" in board.table() and f"{ls.cost['nfe']}" in board.table()
    res.save(str(tmp_path))
    for back in (CompareResults.from_json(str(tmp_path / "results.json")),
                 CompareResults.from_csv(str(tmp_path / "results.csv"))):
        assert next(r for r in back if r.learned).learn_s == row.learn_s
    only = compare(model, x_T, solvers=[ls], reference=ref, progress=False)  # a learned solver alone
    assert [r.solver for r in only] == [ls.name]


def test_compare_refuses_a_learned_solver_it_cannot_measure_before_any_work(case, monkeypatch):
    from sdekit.compare import compare
    from sdekit.compare import harness

    _, model, ls = case
    monkeypatch.setattr(harness, "ode_reference", lambda *a, **k: pytest.fail("work started"))
    other = sdekit.GaussianMixture.default(dim=2, seed=12).model(SDE)
    with pytest.raises(WrongModelError):
        compare(other, solvers=["dpmpp_2m", ls], nfe=(4,), n=20, progress=False)
    den = LearnedSolver(ls.ts, ls.a, ls.b, ls.init, ls.start_grid, False, ls.fingerprint, denoise=True)
    with pytest.raises(ValueError, match="denoise"):
        compare(model, solvers=[den], n=20, progress=False)
    with pytest.raises(TypeError, match="LearnedSolver"):
        compare(model, solvers=["dpmpp_2m", 3], n=20, progress=False)


def test_free_start_is_exact_at_step_zero_and_moves_only_below_T(tmp_path):
    """The first call's time as a parameter ("leading"): at start = 0 the grid is the init's bit for bit; learned,
    the first time stays in (eps, T] and the grid stays decreasing; one more parameter; kept through a file;
    refused by name where log-SNR is -inf at T."""
    for grid in ("logsnr", "quadratic", "karras"):
        ts = make_grid(SDE, 5, grid)
        times = learned_fit._Times(SDE, ts)
        zero = torch.zeros((), dtype=torch.float64, requires_grad=True)
        assert torch.equal(times(times.theta0.clone().requires_grad_(True), zero).detach(), ts)
    model = sdekit.GaussianMixture.default(dim=2, seed=11).model(SDE)
    ls = learn_solver(model, 4, shape=(2,), n=48, steps=40, lr=0.03, ref_steps=60, free_start=True, generator=2)
    assert ls.free_start and ls.num_parameters == 4 + 10 + 3 + 1
    if ls.improved:
        assert SDE.eps < float(ls.ts[0]) <= SDE.T and bool((ls.ts[1:] < ls.ts[:-1]).all())
    path = str(tmp_path / "f.safetensors")
    ls.save(path)
    assert LearnedSolver.load(path, model).free_start
    flow = sdekit.GaussianMixture.default(dim=2, seed=1).model(sdekit.RectifiedFlow())
    with pytest.raises(NotApplicableError, match="free_start"):
        learn_solver(flow, 4, shape=(2,), n=16, ref_steps=4, free_start=True)


def test_several_inits_start_from_the_best_pair_on_the_calibration_draw():
    """init=(names): learning starts from the (solver, grid) pair with the best balanced calibration error; names
    that cannot run on the path are skipped (all refused: the refusal is raised); bad lists are refused."""
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    kw = dict(shape=(2,), n=32, ref_steps=30, steps=0, generator=4)
    names = ("dpmpp_2m", "euler", "ipndm")
    both = learn_solver(model, 3, init=names, **kw)
    single = [learn_solver(model, 3, init=nm, **kw) for nm in names]

    def balanced(ls):
        c = ls.calibration["init"]
        return math.log(c["median"]) + math.log(c["p90"])

    assert both.init in names and balanced(both) == min(balanced(s) for s in single)
    flow = sdekit.GaussianMixture.default(dim=2, seed=1).model(sdekit.RectifiedFlow())
    assert learn_solver(flow, 3, init=("ipndm", "dpmpp_2m"), **kw).init == "dpmpp_2m"
    with pytest.raises(NotApplicableError, match="ipndm"):
        learn_solver(flow, 3, init=("ipndm", "deis_2"), **kw)
    for bad, err in (((), TypeError), ([3], TypeError), (("dpmpp_2m", "nope"), ValueError)):
        with pytest.raises(err):
            learn_solver(model, 3, init=bad, **kw)


def test_tries_learns_from_the_best_starts_and_keeps_the_best_on_calibration(monkeypatch):
    calls = []

    def fit(model, cal, ts0, a0, b0, steps, lr, dtype, free_start=False):  # the second start "learns" better
        calls.append(ts0)
        return ts0, a0, b0 * (1.0 if len(calls) == 1 else 1.0 + 1e-9), steps * len(a0)

    monkeypatch.setattr(learned_fit, "_fit", fit)
    model = sdekit.GaussianMixture.default(dim=2, seed=1).model(SDE)
    ls = learn_solver(model, 4, shape=(2,), n=32, ref_steps=40, steps=3, tries=2)
    assert len(calls) == 2 and not torch.equal(calls[0], calls[1])  # two distinct start grids
    assert ls.cost["backward"] == 2 * 3 * 4
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="tries"):
            learn_solver(model, 4, shape=(2,), n=32, ref_steps=4, tries=bad)
