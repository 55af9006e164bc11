"""Per-step work of the stochastic samplers: what is known from the grid is computed once per solve, with the same
values as the per-step computation it replaces (issue 25's per-NFE overhead)."""
import inspect
import math

import pytest
import torch

import sdekit
import sdekit.sde as sde_module
from sdekit.parameterization import PREDICTIONS, ScoreModel, convert
from sdekit.solvers import er_sde, sde_samplers, seeds
from sdekit.solvers.exponential import Schedule
from sdekit.solvers.grids import make_grid
from sdekit.solvers.registry import get

# every sampler whose weights come from a linear solve, with options reaching each kind of update
WEIGHTED = [("dpmpp_2m_sde", {}), ("dpmpp_3m_sde", {}), ("sa_solver", {}),
            ("sa_solver", {"predictor_order": 2, "corrector_order": 4, "tau": 0.5}), ("seeds_2", {"solver_type": "taylor"}),
            ("seeds_3", {}), ("er_sde_2", {}), ("er_sde_3", {}), ("er_sde_3", {"noise_scale": 3.0})]


def _net(x, t):
    return torch.sin(x) * 0.3 + 0.01 * t[:, None]


@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.RectifiedFlow()], ids=["vp", "rectified_flow"])
@pytest.mark.parametrize("name,opts", WEIGHTED)
def test_no_linear_solve_once_the_network_is_called(monkeypatch, sde, name, opts):
    """Every weight system is solved before the first network call (batched), none per step; the solve gives the
    same samples, bit for bit, as one ``linalg.solve`` per step (the solver without its tables)."""
    model = ScoreModel(_net, sde, "x0")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batched = sdekit.solvers.sample(model, x, name, 9, grid="karras", generator=1, **opts).x

    calls = {"net": 0, "late_solves": 0}
    solve = torch.linalg.solve

    def counted_net(x, t):
        calls["net"] += 1
        return _net(x, t)

    def counted_solve(*a, **k):
        calls["late_solves"] += calls["net"] > 0
        return solve(*a, **k)

    monkeypatch.setattr(torch.linalg, "solve", counted_solve)
    sdekit.solvers.sample(ScoreModel(counted_net, sde, "x0"), x, name, 9, grid="karras", generator=1, **opts)
    assert calls["net"] > 0 and calls["late_solves"] == 0

    # the same solve with every system solved on its own, at the step that needs it
    def one_at_a_time(self, us, h):
        return sde_samplers.exp_weights(us, h, self.eta)

    def unbatched(us_list, J_list):
        out = []
        for us, J in zip(us_list, J_list):
            if len(us) == 1:
                out.append([J[0]])
                continue
            V = torch.tensor([[u**k / math.factorial(k) for k in range(len(us))] for u in us], dtype=torch.float64)
            out.append(solve(V.T, torch.tensor(J, dtype=torch.float64)).tolist())
        return out

    monkeypatch.setattr(torch.linalg, "solve", solve)
    monkeypatch.setattr(sde_samplers.ExpWeights, "__call__", one_at_a_time)
    monkeypatch.setattr(er_sde, "_weights", unbatched)
    single = sdekit.solvers.sample(model, x, name, 9, grid="karras", generator=1, **opts).x
    assert torch.equal(batched, single)


def test_weight_table_counts_no_misses_on_any_grid():
    """The tables are declared with exactly the (us, h) pairs the steps ask for: no step falls back to a solve of
    its own, on grids with and without a start at alpha = 0 and with lower_order_final on and off."""
    misses = []
    orig = sde_samplers.ExpWeights.solve

    def keep(self):
        misses.append(self)
        return orig(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(sde_samplers.ExpWeights, "solve", keep)
    try:
        for sde in (sdekit.VPSDE(), sdekit.RectifiedFlow(), sdekit.VESDE()):
            model = ScoreModel(_net, sde, "eps" if sde.alpha(sde.T) > 0 else "x0")
            x = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            for name, opts in WEIGHTED + [("dpmpp_2m_sde", {"lower_order_final": False})]:
                for steps in (1, 2, 3, 7):
                    sdekit.solvers.sample(model, x, name, steps, grid="logsnr", generator=0, **opts)
    finally:
        mp.undo()
    assert misses and all(t.misses == 0 for t in misses)


def _linear_sdes():
    for _, cls in inspect.getmembers(sdekit, inspect.isclass):
        if issubclass(cls, sde_module.LinearSDE) and not inspect.isabstract(cls):
            try:
                sde = cls()
                sde.rates(0.5 * sde.T)
            except (TypeError, NotImplementedError):  # needs arguments, or a base class without a schedule
                continue
            yield sde


def test_undefined_agrees_with_the_tensor_conversion_everywhere():
    """``ScoreModel.undefined`` (Python floats) says 'undefined' exactly where converting x = output = 1 in float64
    tensors is not finite, for every SDE, prediction, kind and end time; where the scalar conversion divides by zero
    it names the time instead of raising ZeroDivisionError (x0 -> velocity at t = 0)."""
    checked = 0
    for sde in _linear_sdes():
        for t in (0.0, sde.eps, 0.5 * sde.T, sde.T):
            for pred in PREDICTIONS:
                model = ScoreModel(_net, sde, pred)
                for kind in PREDICTIONS:
                    why = model.undefined(kind, t)
                    assert why is None or isinstance(why, str)
                    one = torch.ones(1, 1, dtype=torch.float64)
                    tt = torch.tensor([t], dtype=torch.float64)  # the tensor-time path: no Python float division
                    finite = bool(torch.isfinite(convert(one, pred, kind, one, tt, sde)).all())
                    assert (why is None) == finite, (type(sde).__name__, pred, kind, t)
                    checked += 1
    assert checked > 500
    assert isinstance(ScoreModel(_net, sdekit.VPSDE(), "x0").undefined("velocity", 0.0), str)


def test_memoised_grid_and_schedule_are_fresh_and_exact():
    """A repeated make_grid gives an equal tensor that is not the memo (editing it changes no later grid); a repeated
    Schedule gives the same values as the SDE computes for the grid."""
    sde = sdekit.VPSDE()
    g1 = make_grid(sde, 12, "karras")
    g2 = make_grid(sde, 12, "karras")
    assert torch.equal(g1, g2) and g1.data_ptr() != g2.data_ptr()
    g2[3] = 0.5
    assert torch.equal(make_grid(sde, 12, "karras"), g1)
    s1, s2 = Schedule(sde, g1), Schedule(sde, g1.clone())
    alpha, sigma = sde.alpha_sigma(g1)
    assert s1.alpha == s2.alpha == alpha.tolist() and s1.sigma == s2.sigma == sigma.tolist()
    assert s1.l == s2.l == (0.5 * sde.log_snr(g1)).tolist()
    s2.alpha[0] = -1.0  # a solver's edit of its own lists reaches no later Schedule
    assert Schedule(sde, g1).alpha == alpha.tolist()
    assert s1.times == g1.tolist()


def test_registry_walk_samples_every_stochastic_sampler_twice_identically():
    """Memos make no solve depend on an earlier one: two solves of every stochastic sampler agree bit for bit."""
    model = ScoreModel(_net, sdekit.VPSDE(), "eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name in sdekit.solvers.available():
        if not get(name).stochastic or name == "torchsde":
            continue
        a = sdekit.solvers.sample(model, x, name, 5, grid="karras", generator=3).x
        b = sdekit.solvers.sample(model, x, name, 5, grid="karras", generator=3).x
        assert torch.equal(a, b), name


def test_seeds_step_without_a_table_matches():
    """``seeds_step`` called without the solve's table (its public form) gives the same step."""
    sde = sdekit.VPSDE()
    model = ScoreModel(_net, sde, "x0")
    ts = make_grid(sde, 4, "karras")
    sch = Schedule(sde, ts)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = seeds._weight_table(sch, [1 / 3, 2 / 3], 1.0, False)
    from sdekit.solvers.base import Evaluator
    from sdekit.noise import RowNoise

    outs = []
    for tab in (None, table):
        ev = Evaluator(model, RowNoise(0, 3), path=False)
        outs.append(seeds.seeds_step(ev, x, sch, 1, [1 / 3, 2 / 3], 1.0, 0.0, False, None, tab))
    assert torch.equal(outs[0], outs[1])


def test_memos_stay_bounded():
    """The per-SDE memos of grids and Schedule values keep at most 2^16 times, however many grids a caller makes."""
    sde = sdekit.VPSDE()
    for steps in range(2000, 2300):
        Schedule(sde, make_grid(sde, steps, "uniform"))
    assert sum(len(k) for k in sde.__dict__["_grid_schedule_memo"]["grids"]) <= 2**16
    assert sum(v.numel() for v in sde.__dict__["_grid_memo"]["grids"].values()) <= 2**16


def test_memos_leave_the_model_fingerprint_alone():
    """Solving fills the SDE's memos without changing ``tune``'s fingerprint of the model (its cache key)."""
    from sdekit.solvers.tune import model_fingerprint

    class Net(torch.nn.Module):
        def forward(self, x, t):
            return 0.1 * x

    model = ScoreModel(Net(), sdekit.VPSDE(), "x0")
    before = model_fingerprint(model)
    for steps in (3, 4):
        sdekit.solvers.sample(model, torch.zeros(2, 2), "dpmpp_2m_sde", steps, grid="karras", generator=0)
    assert model_fingerprint(model) == before
