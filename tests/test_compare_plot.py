"""The compare plot answers "which solver at my budget": the ranking it highlights and tabulates, on synthetic rows."""
import math
import random

import pytest

from sdekit.compare import CompareResults, CompareRow
from sdekit.compare.plot import BEST, best_per_budget, plot_results


def _rows(seed=0, n_solvers=21):
    rnd = random.Random(seed)
    rows = []
    for s in range(n_solvers):
        per = rnd.choice((1, 2, 3))
        for grid in ("logsnr", "quadratic", "uniform", "karras"):
            c = rnd.uniform(0.1, 10.0)
            for b in (5, 10, 20, 50):
                k = max(1, b // per)
                e = c * (k * per) ** -rnd.uniform(1, 4)
                rows.append(CompareRow(f"s{s:02d}", grid, k, k * per, e, 0.0, median=e, p90=2 * e, max=3 * e))
    rows.append(CompareRow("broken", "logsnr", 5, 0, math.nan, 0.0, median=math.nan, p90=math.nan, max=math.nan))
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_best_per_budget_is_the_leaderboard_and_its_runners_up(seed):
    rows = _rows(seed)
    res = CompareResults(rows, {"nfe_budgets": [5, 10, 20, 50]})
    ranking = best_per_budget(rows, "median", (5, 10, 20, 50))
    for b, best in ranking.items():
        assert 1 <= len(best) <= BEST
        assert all(r.nfe <= b for r in best) and len({r.solver for r in best}) == len(best)
        values = [r.median for r in best]
        assert values == sorted(values)
        assert best[0] is res.best(b, statistic="median")  # the winner is the leaderboard's
        others = [r.median for r in rows if r.nfe <= b and r.solver not in {q.solver for q in best}
                  and math.isfinite(r.median)]
        assert all(v >= values[-1] for v in others)  # no solver left out beats the last one named
        assert all(r.solver != "broken" for r in best)


def test_a_larger_budget_is_never_worse():
    best = best_per_budget(_rows(), "median", (5, 10, 20, 50), k=1)
    winners = [best[b][0].median for b in (5, 10, 20, 50)]
    assert winners == sorted(winners, reverse=True)


def test_plot_writes_a_png_for_endpoint_law_and_mixed_rows(tmp_path):
    law = [CompareRow("em", "logsnr", k, k, 0.1 / k, 0.0, "sliced_w2", excess=0.05 / k - 0.001, excess_se=0.002)
           for k in (4, 16)]
    for name, rows in (("endpoint", _rows()), ("law", law), ("mixed", _rows() + law)):
        path = tmp_path / f"{name}.png"
        plot_results(CompareResults(rows, {"nfe_budgets": [5, 10, 20, 50]}), path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
