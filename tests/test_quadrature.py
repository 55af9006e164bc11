"""Row-wise adaptive Boole quadrature (sdekit.likelihood.quadrature) against integrals known in closed form."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.likelihood.quadrature import adaptive_boole, grid_size


def grid_integrand(fns, s0, step):
    """evaluate(node, row) for per-row callables fns[row](s) on the grid s_j = s0 + j step; records calls."""
    calls = []

    def evaluate(node, row):
        calls.append(torch.stack([node, row], 1))
        s = s0 + node.double() * step
        return torch.stack([fns[int(r)](s[i]) for i, r in enumerate(row)])

    return evaluate, calls


@settings(max_examples=25)
@given(coef=st.lists(st.floats(-3, 3), min_size=6, max_size=6), a=st.floats(-5, 5), width=st.floats(0.1, 8),
       panels=st.integers(1, 5), depth=st.integers(0, 3), reverse=st.booleans())
def test_polynomials_of_degree_five_are_integrated_exactly(coef, a, width, panels, depth, reverse):
    poly = lambda s: sum(c * s**k for k, c in enumerate(coef))  # noqa: E731
    prim = lambda s: sum(c * s ** (k + 1) / (k + 1) for k, c in enumerate(coef))  # noqa: E731
    lo, hi = (a + width, a) if reverse else (a, a + width)
    M = grid_size(panels, depth)
    step = (hi - lo) / M
    evaluate, _ = grid_integrand([poly], torch.tensor(lo, dtype=torch.float64), step)
    q = adaptive_boole(evaluate, 1, step, panels, depth, tol=1e-12)
    exact = prim(hi) - prim(lo)
    assert abs(float(q.integral[0]) - exact) <= 1e-9 * (1 + abs(exact) + sum(abs(c) for c in coef) * 10**5)


def bump(center, width):
    return lambda s: torch.exp(-0.5 * ((s - center) / width) ** 2)


def test_each_row_refines_only_where_it_needs_to_and_meets_its_tolerance():
    lo, hi, panels, depth, c = -6.0, 6.0, 8, 6, 0.37
    M = grid_size(panels, depth)
    step = (hi - lo) / M
    widths = [1.0, 0.3, 0.1]  # smooth, medium, sharp (all wider than the first level's node spacing)
    fns = [bump(c, w) for w in widths]
    evaluate, calls = grid_integrand(fns, torch.tensor(lo, dtype=torch.float64), step)
    tol = 1e-4
    q = adaptive_boole(evaluate, 3, step, panels, depth, tol=tol)
    exact = torch.tensor([w * math.sqrt(math.pi / 2) * (math.erf((hi - c) / (w * math.sqrt(2)))
                                                         - math.erf((lo - c) / (w * math.sqrt(2))))
                          for w in widths], dtype=torch.float64)
    err = (q.integral - exact).abs()
    assert (err <= q.error + 1e-12).all() and (q.error <= tol).all()
    assert not q.unresolved.any()
    assert q.evals[0] < q.evals[1] < q.evals[2] < M + 1  # the sharp row costs most, and not the whole grid
    pairs = torch.cat(calls)
    assert torch.unique(pairs[:, 0] * 3 + pairs[:, 1]).numel() == pairs.shape[0]  # each pair asked once
    assert int(q.evals.sum()) == pairs.shape[0]


def test_a_feature_below_the_grid_resolution_is_flagged():
    lo, hi, panels, depth = -1.0, 1.0, 1, 1  # 8 grid steps of 0.25
    step = (hi - lo) / grid_size(panels, depth)
    cubic = lambda s: 1 + s - 2 * s**3  # noqa: E731  (Simpson is exact too: accepted at once)
    evaluate, _ = grid_integrand([bump(0.0, 0.05), cubic], torch.tensor(lo, dtype=torch.float64), step)
    q = adaptive_boole(evaluate, 2, step, panels, depth, tol=1e-3)
    assert q.unresolved.tolist() == [True, False]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="tol"):
        adaptive_boole(lambda n, r: n.double(), 1, 0.1, 1, 0, tol=0.0)
    with pytest.raises(ValueError, match="panels"):
        grid_size(0, 2)
    with pytest.raises(ValueError, match="depth"):
        grid_size(2, -1)


def test_panels_split_beforehand_are_never_evaluated_whole():
    """must_split forces the finest panels everywhere for row 0 only: row 0 is evaluated on the whole grid
    (composite Boole on 4-step panels), row 1 only on its first level's 4 * panels + 1 points."""
    lo, hi, panels, depth = 0.0, 2.0, 2, 3
    M = grid_size(panels, depth)
    step = (hi - lo) / M
    quad = lambda s: s**3 - s  # noqa: E731  (Boole and Simpson are exact: |B - S| = 0, no refinement)
    evaluate, calls = grid_integrand([quad, quad], torch.tensor(lo, dtype=torch.float64), step)
    q = adaptive_boole(evaluate, 2, step, panels, depth, tol=1e-9, must_split=lambda row, start, width: row == 0)
    assert q.evals.tolist() == [M + 1, 4 * panels + 1]
    exact = hi**4 / 4 - hi**2 / 2
    torch.testing.assert_close(q.integral, torch.full((2,), exact, dtype=torch.float64))
    pairs = torch.cat(calls)
    assert torch.unique(pairs[:, 0] * 2 + pairs[:, 1]).numel() == pairs.shape[0]
