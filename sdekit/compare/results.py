"""Results of a comparison: ``CompareResults`` (a list of ``CompareRow`` with the run's settings), the
``Leaderboard`` of the best solver per NFE budget, text tables, and JSON/CSV files."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Optional, Sequence

import torch

from .plot import plot_results
from .rows import (ENDPOINT, KINDS, LABELS, LAW_STATISTICS, LEARNED, SLICED, STATISTICS, CompareRow, csv_values, fmt,
                   grid_label)

Tensor = torch.Tensor

__all__ = ["CompareResults", "Leaderboard", "LeaderboardEntry"]


def _law_head(statistic: Optional[str] = None) -> str:
    """Column heads of a stochastic row's numbers (``_law_cells``), the ranked one starred."""
    def head(name: str, label: str) -> str:
        return label + ("*" if name == statistic else "")

    return (f" {'sw2':>10} {head('excess', 'excess'):>10} {'+-SE':>9} {head('mode_err', 'mode_err'):>9}"
            f" {head('path_median', 'path_med'):>10} {'path_p90':>10}")


def _law_cells(r: CompareRow) -> str:
    return (f" {r.error:>10.3e} {fmt(r.excess, '.3e'):>10} {fmt(r.excess_se, '.2e'):>9} "
            f"{fmt(r.mode_err, '.4f'):>9} {fmt(r.path_median, '.3e'):>10} {fmt(r.path_p90, '.3e'):>10}")


@dataclass
class LeaderboardEntry:
    """The best row with nfe <= budget among untuned grids (named grids, kl_optimal included, and adaptive solvers),
    among the grids of one fitting method (kind "tuned", "gits" or "ays"), among learned solvers (kind "learned") or
    among stochastic rows (kind "sde"); row is None when no run of that kind fits the budget."""

    budget: int
    kind: str
    row: Optional[CompareRow]


class Leaderboard(list):
    """``LeaderboardEntry``s by budget, ranked by ``statistic``; ``table()`` (or str) prints them. ``floor``: the
    sliced-W2 floor, printed with a stochastic leaderboard."""

    def __init__(self, entries: Iterable[LeaderboardEntry] = (), statistic: str = "median",
                 floor: Optional[float] = None):
        super().__init__(entries)
        self.statistic = statistic
        self.floor = floor

    def table(self) -> str:
        if self.statistic in LAW_STATISTICS:
            return self._law_table()
        rows = [e.row for e in self if e.row is not None]
        stats = ["median", "p90", "rms"] + (["max"] if self.statistic == "max" else [])
        flips = any(r.flipped is not None for r in rows)
        tuned = any(e.kind != "untuned" for e in self)
        learned = any(r.learn_s is not None for r in rows)
        ws = max([6] + [len(r.solver) for r in rows])
        wg = max([4] + [len(grid_label(r)) for r in rows])
        head = (f"{'NFE <=':>6}  {'grids':<7}  {'solver':<{ws}}  {'grid':<{wg}} {'steps':>5} {'NFE':>5}"
                + "".join(f" {s + ('*' if s == self.statistic else ''):>10}" for s in stats)
                + (f" {'flipped':>8}" if flips else "") + (f" {'tuning NFE':>10}" if tuned else "")
                + (f" {'learn s':>7}" if learned else ""))
        lines = [f"best per NFE budget by the {LABELS[self.statistic]} (*) of e_i = |x_i - x_ref,i| / sqrt(dim)",
                 head, "-" * len(head)]
        for e in self:
            line = f"{e.budget:>6}  {e.kind:<7}  "
            r = e.row
            if r is None:
                lines.append(line + "(no finite run within this budget)")
                continue
            line += (f"{r.solver:<{ws}}  {grid_label(r):<{wg}} {fmt(r.steps, 'd'):>5} {r.nfe:>5}"
                     + "".join(f" {r.statistic(s):>10.3e}" for s in stats))
            line += f" {fmt(None if r.flipped is None else 100 * r.flipped, '.2f') + '%':>8}" if flips else ""
            line += f" {fmt(r.tune_nfe, 'd'):>10}" if tuned else ""
            line += f" {fmt(r.learn_s, '.1f'):>7}" if learned else ""
            lines.append(line.rstrip())
        return "\n".join(lines)

    def _law_table(self) -> str:
        rows = [e.row for e in self if e.row is not None]
        ws = max([6] + [len(r.solver) for r in rows])
        wg = max([4] + [len(grid_label(r)) for r in rows])
        head = f"{'NFE <=':>6}  {'solver':<{ws}}  {'grid':<{wg}} {'steps':>5} {'NFE':>5}" + _law_head(self.statistic)
        floor = "" if self.floor is None else f"; sw2 floor {self.floor:.3e}"
        lines = [f"stochastic solvers: best per NFE budget by the {LABELS[self.statistic]} (*){floor}",
                 head, "-" * len(head)]
        for e in self:
            r = e.row
            if r is None:
                lines.append(f"{e.budget:>6}  (no finite run within this budget)")
                continue
            lines.append(f"{e.budget:>6}  {r.solver:<{ws}}  {grid_label(r):<{wg}} {fmt(r.steps, 'd'):>5} {r.nfe:>5}"
                         + _law_cells(r).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class CompareResults(list):
    """A list of ``CompareRow`` with the run's settings in ``meta``: ``leaderboard``, ``best``, ``table``,
    ``plot``, ``save`` (JSON, CSV and PNG), ``to_json``/``from_json``, ``to_csv``/``from_csv``."""

    def __init__(self, rows: Iterable[CompareRow] = (), meta: Optional[dict] = None):
        super().__init__(rows)
        self.meta = dict(meta or {})

    # -- views --------------------------------------------------------------------------------------
    def table(self) -> str:
        """Every row as a fixed-width text table (stochastic rows in a second table of their own numbers)."""
        endpoint = [r for r in self if r.metric != SLICED]
        lines = self._endpoint_lines(endpoint) if endpoint or len(self) == 0 else []
        law = [r for r in self if r.metric == SLICED]
        if law:
            lines += ([""] if lines else []) + self._law_lines(law)
        return "\n".join(lines)

    def _endpoint_lines(self, rows: list) -> list:
        flips = any(r.flipped is not None for r in rows)
        head = (f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6} {'median':>10} {'p90':>10} {'rms':>10} "
                f"{'max':>10}" + (f" {'flipped':>8}" if flips else "") + f" {'time_s':>8}  metric")
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r.solver:<16} {grid_label(r):<9} {fmt(r.steps, 'd'):>6} {r.nfe:>6} "
                         f"{fmt(r.median, '.3e'):>10} {fmt(r.p90, '.3e'):>10} {r.error:>10.3e} "
                         f"{fmt(r.max, '.3e'):>10}"
                         + (f" {fmt(r.flipped, '.4f'):>8}" if flips else "") + f" {r.time_s:>8.3f}  {r.metric}"
                         + (f" ({_COST_LABEL.get(r.kind, 'search')} {r.tune_nfe} NFE"
                            + (f", {r.learn_s:.1f} s)" if r.learn_s is not None else ")")
                            if r.tune_nfe is not None else ""))
        ref = self.meta.get("reference", {})
        if "error_estimate" in ref:
            lines.append(f"reference: {ref.get('method', '?')}; its own error estimate {ref['error_estimate']:.2e}")
        return lines

    def _law_lines(self, rows: list) -> list:
        head = f"{'solver':<16} {'grid':<9} {'steps':>6} {'NFE':>6}" + _law_head() + f" {'time_s':>8}"
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r.solver:<16} {grid_label(r):<9} {fmt(r.steps, 'd'):>6} {r.nfe:>6}" + _law_cells(r)
                         + f" {r.time_s:>8.3f}")
        return lines + self.law_notes()

    def law_notes(self) -> list:
        """Lines that say what the stochastic rows' numbers are measured against (floor, pathwise references)."""
        law, lines = self.meta.get("law") or {}, []
        if "sliced_w2_floor" in self.meta:
            lines.append(f"sw2: sliced W2 to {self.meta.get('n', '?')} exact samples; floor "
                         f"{self.meta['sliced_w2_floor']:.3e} +- {law.get('floor_se', float('nan')):.1e} (median of "
                         f"{law.get('floor_pairs', '?')} pairs of exact sets); excess = sw2 - floor, +-SE its standard "
                         f"error; mode_err floor {fmt(law.get('mode_err_floor'), '.4f')}")
        paths = self.meta.get("pathwise")
        if isinstance(paths, str):
            lines.append(f"path_*: {paths}")
        for solver, info in (paths.items() if isinstance(paths, dict) else ()):
            if info.get("applies"):
                est = info.get("error_estimate", {}).get("median", float("nan"))
                lines.append(f"path_*: {solver} against {info['method']} (its own median error ~{est:.1e})")
            else:
                lines.append(f"path_*: none for {solver}: {info.get('reason', '?')}")
        return lines

    def __str__(self) -> str:
        return self.table()

    def best(self, max_nfe: int, metric: str = ENDPOINT, statistic: str = "rms") -> Optional[CompareRow]:
        """The row of smallest ``statistic`` among those with nfe <= max_nfe (None if there is none)."""
        rows = [r for r in self if r.nfe <= max_nfe and r.metric == metric and math.isfinite(r.statistic(statistic))]
        return min(rows, key=lambda r: (r.statistic(statistic), r.nfe)) if rows else None

    def leaderboard(self, budgets: Optional[Sequence[int]] = None, statistic: str = "median") -> Leaderboard:
        """The best endpoint row per NFE budget (nfe <= budget) by ``statistic`` (median, p90, rms, max),
        one entry for untuned grids and, if any were run, one per fitted grid ("tuned", "gits", "ays") and one for
        learned solvers (their one-time cost in tune_nfe and learn_s); or, for ``statistic`` excess,
        path_median or mode_err, the best stochastic row per budget. budgets default to the run's NFE budgets
        (or the NFE counts it measured)."""
        if statistic in LAW_STATISTICS:
            return self._law_leaderboard(budgets, statistic)
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; accepted: {', '.join([*STATISTICS, *LAW_STATISTICS])}")
        endpoint = [r for r in self if r.metric == ENDPOINT]
        if budgets is None:
            budgets = self.meta.get("nfe_budgets") or sorted({r.nfe for r in endpoint if r.nfe > 0})
        kinds = ["untuned"] + [k for k in KINDS[1:] if any(r.kind == k for r in endpoint)]
        entries = []
        for b in sorted({int(b) for b in budgets}):
            for kind in kinds:
                pool = CompareResults(r for r in endpoint if r.kind == kind)
                entries.append(LeaderboardEntry(b, kind, pool.best(b, statistic=statistic)))
        return Leaderboard(entries, statistic)

    def _law_leaderboard(self, budgets: Optional[Sequence[int]], statistic: str) -> Leaderboard:
        law = CompareResults(r for r in self if r.metric == SLICED)
        if budgets is None:
            budgets = self.meta.get("nfe_budgets") or sorted({r.nfe for r in law if r.nfe > 0})
        entries = [LeaderboardEntry(b, "sde", law.best(b, metric=SLICED, statistic=statistic))
                   for b in sorted({int(b) for b in budgets})]
        return Leaderboard(entries, statistic, floor=self.meta.get("sliced_w2_floor"))

    # -- files --------------------------------------------------------------------------------------
    def to_json(self, path) -> None:
        with open(path, "w") as fh:
            json.dump({"meta": self.meta, "rows": [asdict(r) for r in self]}, fh, indent=1, default=_jsonable)

    @classmethod
    def from_json(cls, path) -> "CompareResults":
        with open(path) as fh:
            data = json.load(fh)
        return cls([CompareRow(**r) for r in data["rows"]], data.get("meta", {}))

    def to_csv(self, path) -> None:
        """Every row, one line each, the columns of ``CompareRow`` (empty where a value does not apply)."""
        names = [f.name for f in fields(CompareRow)]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for r in self:
                writer.writerow(["" if v is None else v for v in _values(r, names)])

    @classmethod
    def from_csv(cls, path) -> "CompareResults":
        """Rows written by ``to_csv`` (the settings live in the JSON file only)."""
        with open(path, newline="") as fh:
            rows = [CompareRow(**csv_values(line)) for line in csv.DictReader(fh)]
        return cls(rows)

    def save(self, directory) -> list[str]:
        """Write results.json, results.csv and error_vs_nfe.png into ``directory``; return their paths."""
        os.makedirs(directory, exist_ok=True)
        paths = [os.path.join(directory, name) for name in ("results.json", "results.csv", "error_vs_nfe.png")]
        self.to_json(paths[0])
        self.to_csv(paths[1])
        self.plot(paths[2])
        return paths

    def plot(self, path, title: Optional[str] = None, statistic: str = "median") -> None:
        """Error (``statistic`` of the per-row errors) against NFE as a PNG: which solver at which budget
        (``sdekit.compare.plot.plot_results``)."""
        plot_results(self, path, title=title, statistic=statistic)


_COST_LABEL = {"tuned": "tuning", LEARNED: "learning"}  # the one-time cost's name in a row's line; else "search"


def _values(r: CompareRow, names: Sequence[str]) -> list:
    return [getattr(r, n) for n in names]


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, torch.dtype):
        return str(obj)
    return repr(obj)
