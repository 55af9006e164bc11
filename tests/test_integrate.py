"""The integration core (sdekit.solvers.integrate): tableaux, step control, budget, landing, save times, errors."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import SolverError, StepBudgetError
from sdekit.solvers.base import StepSizeError
from sdekit.solvers.controller import row_error_ratio
from sdekit.solvers.integrate import TABLEAUS, Tableau, integrate

F64 = torch.float64
RATES = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)


def linear(t, y):
    return y * RATES


def exact(t):
    return torch.exp(RATES * t)


class Recorder:
    """A term that remembers every time it was evaluated at."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, t, y):
        self.times.append(float(t))
        return self.fn(t, y)


def test_tableaux_check_themselves():
    with pytest.raises(ValueError, match="sums to"):
        Tableau("bad", 2, (0.0, 0.5), ((), (0.4,)), (0.0, 1.0))
    with pytest.raises(ValueError, match="b sum"):
        Tableau("bad", 2, (0.0, 0.5), ((), (0.5,)), (0.5, 0.6))
    with pytest.raises(ValueError, match="e needs"):
        Tableau("bad", 2, (0.0, 0.5), ((), (0.5,)), (0.0, 1.0), e=(0.1, 0.0))
    assert TABLEAUS["dopri5"].fsal and TABLEAUS["bosh3"].fsal and not TABLEAUS["rk4"].fsal
    assert TABLEAUS["dopri5"].stages - TABLEAUS["dopri5"].fsal == 6


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_every_tableau_converges_at_its_order(name):
    tab = TABLEAUS[name]
    y0 = torch.ones(2, 3, dtype=F64)
    errs = []
    for h in (0.1, 0.05):
        sol = integrate(linear, y0, [0.0, 1.0], method=name, step_size=h)
        errs.append(float((sol.x - exact(1.0)).abs().max()))
        assert sol.nfe == round(1 / h) * tab.stages - (round(1 / h) - 1) * tab.fsal
    assert math.log2(errs[0] / errs[1]) == pytest.approx(tab.order, abs=0.35)


def test_dense_output_is_fourth_order_for_dopri5_and_save_times_are_apart_from_steps():
    save = torch.linspace(0.0, 1.0, 41, dtype=F64)
    sol = integrate(linear, torch.ones(2, 3, dtype=F64), [0.0, 1.0], rtol=1e-9, atol=1e-9, save_ts=save)
    assert sol.stats["steps"] < 40 and len(sol.trajectory) == 41
    err = max(float((v - exact(float(t))).abs().max()) for t, v in zip(save, sol.trajectory))
    assert err < 1e-8
    # the interpolant alone: error shrinks like h^5 inside one step
    local = []
    for h in (0.2, 0.1):
        s = integrate(linear, torch.ones(1, 3, dtype=F64), [0.0, h], method="dopri5", step_size=h,
                      save_ts=[0.0, 0.3 * h, h])
        local.append(float((s.trajectory[1] - exact(0.3 * h)).abs().max()))
    assert math.log2(local[0] / local[1]) > 4.5


@pytest.mark.parametrize("ts", [[0.0, 1.0], [1.0, 0.25], [0.0, 0.3, 0.7, 1.0]])
def test_the_solve_lands_on_every_time_and_never_evaluates_past_the_end(ts):
    term = Recorder(linear)
    sol = integrate(term, torch.ones(3, 3, dtype=F64), ts, rtol=1e-6, atol=1e-6)
    lo, hi = min(ts), max(ts)
    assert all(lo <= t <= hi for t in term.times)
    assert [float(t) for t in sol.ts] == ts
    torch.testing.assert_close(sol.x, exact(ts[-1] - ts[0]).expand(3, 3), rtol=1e-5, atol=1e-6)
    assert sol.stats["accepted"] == sol.stats["steps"] > 0 and sol.nfe == len(term.times)


def test_the_error_norm_is_per_row_and_tolerances_may_be_per_row():
    err = torch.zeros(4, 10, dtype=F64)
    err[2] = 1e-3
    y = torch.zeros_like(err)
    # one row at 1e-3 against atol 1e-3: ratio 1 (a batch mean would say 1/2)
    assert row_error_ratio(err, y, y, 0.0, 1e-3, [(0, 10)]) == pytest.approx(1.0)
    assert row_error_ratio(err, y, y, 0.0, 1e-3, [(0, 9), (9, 10)]) == pytest.approx(1.0)
    # a stiffer row (rate 20) costs steps; a loose tolerance on it alone brings them back
    rates = torch.tensor([[1.0], [20.0]], dtype=F64)
    y0 = torch.ones(2, 1, dtype=F64)
    tight = integrate(lambda t, yy: -rates * yy, y0, [0.0, 1.0], rtol=1e-8, atol=1e-8)
    mixed = integrate(lambda t, yy: -rates * yy, y0, [0.0, 1.0], rtol=torch.tensor([1e-8, 1e-3], dtype=F64),
                      atol=torch.tensor([1e-8, 1e-3], dtype=F64))
    assert mixed.nfe < tight.nfe
    assert abs(float(mixed.x[0, 0]) - math.exp(-1)) < 1e-7


def test_tuple_states_are_held_to_the_tolerance_group_by_group():
    def term(t, y):
        x, acc = y
        return -x, x.sum(1)  # acc' = sum of x: acc(1) = 2 (1 - e^-1)

    sol = integrate(term, (torch.ones(3, 2, dtype=F64), torch.zeros(3, dtype=F64)), [0.0, 1.0], rtol=1e-9, atol=1e-9)
    x, acc = sol.x
    assert x.shape == (3, 2) and acc.shape == (3,)
    torch.testing.assert_close(acc, torch.full((3,), 2 * (1 - math.exp(-1)), dtype=F64), rtol=0, atol=1e-8)


def test_the_budget_is_in_network_calls_and_is_never_passed():
    term = Recorder(linear)
    with pytest.raises(StepBudgetError, match="budget of 30 network evaluations") as info:
        integrate(term, torch.ones(2, 3, dtype=F64), [0.0, 10.0], rtol=1e-12, atol=1e-12, max_nfe=30)
    assert isinstance(info.value, SolverError) and len(term.times) <= 30
    with pytest.raises(StepBudgetError):  # fixed steps: refused before the first step
        integrate(term, torch.ones(2, 3, dtype=F64), [0.0, 1.0], method="rk4", step_size=1e-3, max_nfe=100)


def test_a_blow_up_is_a_solver_error():
    with pytest.raises(SolverError) as info:  # y' = y^2, y(0) = 1 blows up at t = 1
        integrate(lambda t, y: y * y, torch.ones(1, 1, dtype=F64), [0.0, 2.0], rtol=1e-6, atol=1e-6)
    assert isinstance(info.value, (StepSizeError, StepBudgetError, sdekit.solvers.NonFiniteError))


def test_bad_arguments_say_what_is_accepted():
    y0 = torch.ones(1, 1, dtype=F64)
    with pytest.raises(ValueError, match="dopri5"):
        integrate(linear, y0, [0.0, 1.0], method="rk45")
    with pytest.raises(ValueError, match="step_size"):
        integrate(linear, y0, [0.0, 1.0], method="rk4")
    with pytest.raises(ValueError, match="rtol"):
        integrate(linear, y0, [0.0, 1.0], rtol=-1.0)
    with pytest.raises(ValueError, match="monotone"):
        integrate(linear, y0, [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="save_ts"):
        integrate(linear, y0, [0.0, 1.0], save_ts=[0.5, 1.5])


def test_torchdiffeq_methods_run_behind_the_same_interface():
    y0 = torch.ones(2, 3, dtype=F64)
    sol = integrate(linear, y0, [0.0, 1.0], method="dopri8", rtol=1e-9, atol=1e-9, save_ts=[0.0, 0.5, 1.0])
    torch.testing.assert_close(sol.trajectory[1], exact(0.5).expand(2, 3), rtol=1e-5, atol=1e-5)  # its interpolant
    torch.testing.assert_close(sol.x, exact(1.0).expand(2, 3), rtol=1e-8, atol=1e-8)
    with pytest.raises(StepBudgetError):
        integrate(linear, y0, [0.0, 10.0], method="torchdiffeq:dopri8", rtol=1e-12, atol=1e-12, max_nfe=20)


def test_adaptive_sampling_reports_steps_and_a_nan_names_the_true_step():
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=2)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0)).double()
    sol = sdekit.sample(gm.model(sde), x, "dopri5", rtol=1e-4, atol=1e-4)
    assert sol.stats["steps"] == sol.stats["accepted"] > 1 and "rejected" in sol.stats

    def net(xx, t):
        return torch.where(t.reshape(-1, 1) < 0.3, float("nan"), -xx)

    with pytest.raises(sdekit.solvers.NonFiniteError, match=r"at step [1-9]"):
        sdekit.sample(sdekit.ScoreModel(net, sde, prediction="score"), x, "bosh3", rtol=1e-3, atol=1e-3)
