"""The comparison's picture, made to answer one question at a glance: which solver at my NFE budget?

Per budget b (the run's NFE budgets, or the NFE counts it measured) every solver is ranked by its best row with
nfe <= b over all grids (``best_per_budget``). The solvers among the best ``k`` at some budget are drawn in colour,
each as its lower envelope over the grids; every other solver and grid is a thin grey line; the best row at each
budget is a black step line (the Pareto front of error against NFE). Beside the panel, a table names the best ``k``
per budget with their grid and value. Stochastic rows get a second such panel, ranked by the excess of the sliced
W2 over its floor (linear axis: it may be negative, with +-1 SE bars on the coloured lines).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..plotting import figure_module, save_figure
from .rows import ENDPOINT, LABELS, SLICED, CompareRow, grid_label

__all__ = ["plot_results", "best_per_budget", "BEST"]

BEST = 3  # solvers named per budget
_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4", "#b2182b")


def _value(r: CompareRow, statistic: str) -> float:
    v = r.statistic(statistic)
    return v if math.isfinite(v) and (statistic == "excess" or v > 0) else math.nan


def best_per_budget(rows: Sequence[CompareRow], statistic: str, budgets: Sequence[int],
                    k: int = BEST) -> dict[int, list[CompareRow]]:
    """budget -> the rows of the best ``k`` solvers with nfe <= budget (each solver's best row over its grids and
    step counts), best first; rows whose ``statistic`` is not a finite number are left out."""
    out = {}
    for b in budgets:
        best: dict[str, CompareRow] = {}
        for r in rows:
            v = _value(r, statistic)
            if r.nfe <= b and not math.isnan(v) and (r.solver not in best or v < _value(best[r.solver], statistic)):
                best[r.solver] = r
        out[int(b)] = sorted(best.values(), key=lambda r: (_value(r, statistic), r.nfe))[:k]
    return out


def _budgets(results, rows) -> list[int]:
    given = results.meta.get("nfe_budgets")
    found = sorted({r.nfe for r in rows if r.nfe > 0})
    return sorted({int(b) for b in given}) if given else found


def _envelope(rows: Sequence[CompareRow], statistic: str) -> tuple[list, list]:
    """(nfe, best value at that nfe) over the rows, by increasing nfe."""
    best: dict[int, float] = {}
    for r in rows:
        v = _value(r, statistic)
        if not math.isnan(v):
            best[r.nfe] = min(v, best.get(r.nfe, math.inf))
    xs = sorted(best)
    return xs, [best[x] for x in xs]


def _front(rows: Sequence[CompareRow], statistic: str) -> tuple[list, list]:
    """The Pareto front: the best value among rows with nfe <= n, as a step line over the measured nfe."""
    xs, ys = _envelope(rows, statistic)
    out, low = [], math.inf
    for y in ys:
        low = min(low, y)
        out.append(low)
    return xs, out


def _panel(ax, table_ax, rows: Sequence[CompareRow], statistic: str, budgets: Sequence[int], k: int,
           colours: dict) -> None:
    """One metric's panel: muted grey for all, colour for the best few, the front in black; the table beside it."""
    ranking = best_per_budget(rows, statistic, budgets, k)
    linear = statistic == "excess"
    for key in sorted({(r.solver, r.grid, r.tol is None) for r in rows}):
        xs, ys = _envelope([r for r in rows if (r.solver, r.grid, r.tol is None) == key], statistic)
        if xs:
            ax.plot(xs, ys, color="0.78", linewidth=0.8, zorder=1)
    for solver, colour in colours.items():
        mine = [r for r in rows if r.solver == solver]
        xs, ys = _envelope(mine, statistic)
        if not xs:
            continue
        ax.plot(xs, ys, color=colour, linewidth=2.2, marker="o", markersize=4, label=solver, zorder=3)
        if linear:
            best = {x: min((r for r in mine if r.nfe == x and not math.isnan(_value(r, statistic))),
                           key=lambda r: _value(r, statistic)) for x in xs}
            ax.errorbar(xs, ys, yerr=[best[x].excess_se or 0.0 for x in xs], fmt="none", ecolor=colour, capsize=2,
                        zorder=3)
    fx, fy = _front(rows, statistic)
    if fx:
        ax.step(fx, fy, where="post", color="black", linewidth=1.2, linestyle="--", label="best at each NFE", zorder=4)
    ax.set_xscale("log")
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.xaxis.set_minor_formatter("")
    if linear:
        ax.axhline(0.0, color="k", linewidth=0.6)
    else:
        ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(f"{LABELS[statistic]}" + ("" if linear else " of the per-row error vs reference"))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower left" if not linear else "upper right")
    _table(table_ax, ranking, statistic, colours)


def _table(ax, ranking: dict, statistic: str, colours: dict) -> None:
    """The best few per budget as text, each solver in its colour."""
    ax.axis("off")
    ax.set_title("best solvers per NFE budget (grid, NFE)", fontsize=9, loc="left")
    lines = [(b, i, r) for b, best in ranking.items() for i, r in enumerate(best)]
    n = max(1, len(lines) + len(ranking))
    y, step = 0.97, min(0.06, 0.95 / n)
    for b, best in ranking.items():
        ax.text(0.0, y, f"NFE <= {b}", fontsize=8, fontweight="bold", transform=ax.transAxes, va="top")
        y -= step
        for i, r in enumerate(best):
            value = format(_value(r, statistic), ".2e" if statistic != "excess" else "+.2e")
            ax.text(0.04, y, f"{i + 1}. {r.solver} ({grid_label(r)}, {r.nfe})  {value}", fontsize=7.5,
                    color=colours.get(r.solver, "0.3"), transform=ax.transAxes, va="top", family="monospace")
            y -= step
        if not best:
            ax.text(0.04, y, "(no run within this budget)", fontsize=7.5, transform=ax.transAxes, va="top")
            y -= step


def _colours(groups: Sequence[tuple[Sequence[CompareRow], str, list]], k: int) -> dict:
    """One colour per solver that is among the best k at some budget of some panel, in order of first appearance."""
    names: list[str] = []
    for rows, statistic, budgets in groups:
        for best in best_per_budget(rows, statistic, budgets, k).values():
            names += [r.solver for r in best if r.solver not in names]
    return {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}


def plot_results(results, path, title: Optional[str] = None, statistic: str = "median", k: int = BEST) -> None:
    """Error (``statistic`` of the per-row errors) against NFE as a PNG (module docstring); with stochastic rows a
    second panel ranked by the sliced-W2 excess."""
    plt = figure_module()
    groups = []
    endpoint = [r for r in results if r.metric == ENDPOINT]
    law = [r for r in results if r.metric == SLICED]
    if endpoint or not law:
        groups.append((endpoint, statistic, _budgets(results, endpoint)))
    if law:
        groups.append((law, "excess", _budgets(results, law)))
    colours = _colours(groups, k)
    fig = plt.figure(figsize=(12.5, 4.8 * len(groups)))
    spec = fig.add_gridspec(len(groups), 2, width_ratios=(2.3, 1))
    for i, (rows, stat, budgets) in enumerate(groups):
        ax = fig.add_subplot(spec[i, 0])
        _panel(ax, fig.add_subplot(spec[i, 1]), rows, stat, budgets, k,
               {s: c for s, c in colours.items() if any(r.solver == s for r in rows)})
        ax.set_title("deterministic solvers against the ODE reference" if stat != "excess"
                     else "stochastic solvers: sliced W2 to exact samples - floor (+-1 SE)", fontsize=9)
    ref = results.meta.get("reference", {}).get("error_estimate")
    head = title or results.meta.get("title", "sdekit compare: which solver at which NFE budget")
    fig.suptitle(head + (f"  (reference's own error ~{ref:.1e})" if ref else "") + "; grey: every other solver "
                 "and grid", fontsize=10)
    save_figure(fig, path, dpi=110)
