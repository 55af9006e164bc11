"""DEIS with eps extrapolated in log rho (diffusers' DEISMultistepScheduler's DEIS), beside DEIS-tAB (polynomial in t):
convergence orders on exact ground truth and exactness of its weights."""
import math

import pytest
import torch

import sdekit
from sdekit.solvers import SOLVERS, get
from sdekit.solvers.base import Evaluator
from sdekit.solvers.exponential import Schedule
from sdekit.solvers.grids import make_grid
from sdekit.solvers.linear_multistep import _ab_in_log_rho
from tests.test_exponential import prior, rms, smooth_mixture

LOGRHO = [n for n in SOLVERS if n.startswith("deis_logrho_")]


def _run(model, x, name, ts, **opts):
    ev = Evaluator(model)
    states = list(get(name).fn(ev, x, ts, **opts))
    assert len(states) == len(ts) - 1
    return states[-1]


def test_registered_beside_tab():
    assert LOGRHO == ["deis_logrho_2", "deis_logrho_3"]
    assert all(SOLVERS[n].order == int(n[-1]) and SOLVERS[n].nfe_per_step == 1 for n in LOGRHO)


@pytest.mark.parametrize("name", LOGRHO)
@pytest.mark.parametrize("direction", ["sample", "invert"])
def test_convergence_order(name, direction):
    """Error against an rk4 reference (500 logsnr steps) on the exact mixture at 80 and 160 logsnr steps: the measured
    order is the registered one within 0.4 (lower_order_final=False), sampling and inverting. Measured: deis_logrho_2
    2.0/2.0, deis_logrho_3 3.0/3.0."""
    torch.set_num_threads(1)
    sde = sdekit.VPSDE()
    model = smooth_mixture(2).model(sde)
    x = prior(sde, (8, 2), seed=3)
    down = make_grid(sde, 500, "logsnr")
    ref = _run(model, x, "rk4", down)
    start, target = (x, ref) if direction == "sample" else (ref, _run(model, ref, "rk4", down.flip(0)))
    errs = []
    for n in (80, 160):
        ts = make_grid(sde, n, "logsnr")
        ts = ts if direction == "sample" else ts.flip(0)
        errs.append(rms(_run(model, start, name, ts, lower_order_final=False), target))
    measured = math.log2(errs[0] / errs[1])
    assert abs(measured - SOLVERS[name].order) < 0.4, (name, direction, measured, errs)


def test_weights_integrate_polynomials_in_log_rho_exactly():
    """sum_j c_ij p(l_{i-j}) = int p(-log rho) d rho for every polynomial p of degree < k (here in closed form:
    int_{l_i}^{l_{i+1}} l^m (-e^{-l}) dl), which is what tells log rho from t."""
    sde = sdekit.VPSDE()
    ts = make_grid(sde, 6, "quadratic")
    sch = Schedule(sde, ts)
    s = [sg / a for a, sg in zip(sch.alpha, sch.sigma)]

    def exact(m, a, b):  # int_a^b l^m (-e^{-l}) dl = [e^{-l} sum_q m!/q! l^q]_a^b
        prim = lambda v: math.exp(-v) * sum(math.factorial(m) / math.factorial(q) * v ** q for q in range(m + 1))  # noqa: E731
        return prim(b) - prim(a)

    for k in (2, 3):
        i = 4
        c = _ab_in_log_rho(sch, s, ts.tolist(), i, k)
        for m in range(k):
            got = sum(cj * sch.l[i - j] ** m for j, cj in enumerate(c))
            assert got == pytest.approx(exact(m, sch.l[i], sch.l[i + 1]), rel=1e-12, abs=1e-14)
