"""The comparison's picture: error against NFE."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..plotting import figure_module, save_figure
from .rows import ENDPOINT, LABELS, SLICED, CompareRow

__all__ = ["plot_results"]


def plot_results(results, path, title: Optional[str] = None, statistic: str = "median") -> None:
    """Log-log error (``statistic`` of the per-row errors) against NFE saved as a PNG (matplotlib,
    Agg): one panel per time grid with one line per solver (same colour in every panel); with stochastic
    rows, a further row of two panels: the excess of the sliced W2 over its floor with +-1 SE bars, and the
    median pathwise error against the same-path reference."""
    plt = figure_module()
    grids = list(dict.fromkeys(r.grid for r in results if r.metric == ENDPOINT))
    law = any(r.metric == SLICED for r in results)
    ncol = max(2 if len(grids) == 4 else (min(len(grids), 3) or 1), 2 if law else 1)
    nrow = (len(grids) + ncol - 1) // ncol
    fig = plt.figure(figsize=(4.2 * ncol + 1.8, 3.8 * max(nrow + law, 1)))
    spec = fig.add_gridspec(max(nrow + law, 1), ncol)
    solvers = sorted({r.solver for r in results})
    cmap = plt.get_cmap("tab20")

    def color(solver):
        return cmap(solvers.index(solver) % 20)

    first: list = []
    for i, grid in enumerate(grids):
        row, col = divmod(i, ncol)
        ax = fig.add_subplot(spec[row, col], sharey=first[row] if col else None)
        if col:
            ax.tick_params(labelleft=False)
        else:
            first.append(ax)
        _endpoint_panel(ax, results, grid, statistic, solvers, color)
    if first:
        first[0].set_ylabel(f"{LABELS[statistic]} of the per-row error vs reference")
    if law:
        _law_panels(fig.add_subplot(spec[nrow, 0]), fig.add_subplot(spec[nrow, 1]), results, solvers, color)
    handles: dict = {}
    for ax in fig.axes:  # lines and error-bar containers that carry a solver's label
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
    ref = results.meta.get("reference", {}).get("error_estimate")
    head = title or results.meta.get("title", "sdekit compare: error against NFE")
    fig.suptitle(head + (f"  (reference's own error ~{ref:.1e})" if ref else ""), fontsize=10)
    save_figure(fig, path, dpi=110, rect=(0, 0, 1 - 1.6 / (4.2 * ncol + 1.8), 1))


def _endpoint_panel(ax, rows: Sequence[CompareRow], grid: str, statistic: str, solvers, color) -> None:
    """One grid's endpoint error (``statistic``) against NFE, one line per solver."""
    for solver in solvers:
        pts = sorted((r.nfe, r.statistic(statistic)) for r in rows if r.solver == solver and r.metric == ENDPOINT
                     and r.grid == grid and 0 < r.statistic(statistic) < 1e3)
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=color(solver),
                      label=solver)
    ax.set_title(f"{grid} grid", fontsize=9)
    ax.set_xlabel("NFE (network evaluations)")
    ax.grid(True, which="both", alpha=0.3)


def _law_panels(ax_excess, ax_path, rows: Sequence[CompareRow], solvers, color) -> None:
    """Stochastic rows against NFE: excess +- 1 SE (linear axis: it may be negative) and the median pathwise
    error (log), one line per solver and grid."""
    for solver in solvers:
        for grid in dict.fromkeys(r.grid for r in rows if r.solver == solver and r.metric == SLICED):
            mine = sorted((r for r in rows if r.solver == solver and r.grid == grid and r.metric == SLICED),
                          key=lambda r: r.nfe)
            label = solver if grid == "logsnr" else f"{solver} ({grid})"
            ex = [r for r in mine if r.excess is not None and math.isfinite(r.excess)]
            if ex:
                ax_excess.errorbar([r.nfe for r in ex], [r.excess for r in ex], yerr=[r.excess_se or 0.0 for r in ex],
                                   marker="o", markersize=3, capsize=2, color=color(solver), label=label)
            pw = [r for r in mine if r.path_median is not None and 0 < r.path_median < 1e3]
            if pw:
                ax_path.loglog([r.nfe for r in pw], [r.path_median for r in pw], marker="o", markersize=3,
                               color=color(solver), label=label)
    ax_excess.set_xscale("log")
    ax_excess.axhline(0.0, color="k", linewidth=0.6)
    ax_excess.set_title("stochastic: sliced W2 to exact samples - floor (+-1 SE)", fontsize=9)
    ax_path.set_title("stochastic: median pathwise error vs same-path reference", fontsize=9)
    for ax in (ax_excess, ax_path):
        ax.set_xlabel("NFE (network evaluations)")
        ax.grid(True, which="both", alpha=0.3)
