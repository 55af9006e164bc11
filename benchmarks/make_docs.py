"""Write docs/benchmarks.md from benchmarks/results/*.json, so that no number on that page can drift from
the measurement it reports.

The page is ``docs/benchmarks.template.md`` with each placeholder replaced:

- ``{{FILE.json:PATH}}`` or ``{{FILE.json:PATH:FORMAT}}``: the value at PATH in the results file FILE.json
  (relative to ``benchmarks/results/``). PATH is ``/``-separated; in a dict a segment is a key, in a list
  it is an index or ``field=value``, which picks the one element whose ``field`` equals ``value``.
- ``{{NAME}}`` or ``{{NAME:FORMAT}}``: a value computed here from the results files' raw rows (a count, a
  range, a ratio of two measurements, a table): the functions in ``SECTIONS`` return them by name.

FORMAT is a Python format spec (``.2f``, ``.1e``, ``,d``). A float needs one, so that no precision is
chosen by accident; a pair (lo, hi) is written ``lo-hi`` and a list ``a / b / c``, each element formatted.
The ``.txt`` files there are transcripts of ``sdekit likelihood`` runs, parsed by ``transcripts``.
Every results file (``.json``, ``.txt``) must be read by some placeholder (``unused_results`` lists those
that are not).

    python benchmarks/make_docs.py           # rewrite docs/benchmarks.md
    python benchmarks/make_docs.py --check   # exit 1 if docs/benchmarks.md is out of date
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = ROOT / "docs" / "benchmarks.template.md"
PAGE = ROOT / "docs" / "benchmarks.md"
PLACEHOLDER = re.compile(r"\{\{([^{}\n]+)\}\}")
TEMPLATE_COMMENT = re.compile(r"<!--#.*?-->\n?", re.DOTALL)  # notes for template editors, not on the page


class Results:
    """The JSON files under ``results/``, each read once; records which were read."""

    def __init__(self, directory: Path = RESULTS):
        self.directory = directory
        self.cache: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        """The parsed JSON file ``name``, or the text of a ``.txt`` transcript."""
        if name not in self.cache:
            path = self.directory / name
            if not path.is_file():
                raise FileNotFoundError(f"results file {name!r} not found under {self.directory}")
            text = path.read_text()
            self.cache[name] = text if name.endswith(".txt") else json.loads(text)
        return self.cache[name]

    def lookup(self, name: str, path: str) -> Any:
        """The value at ``path`` (see the module docstring) in results file ``name``."""
        node = self(name)
        for segment in path.split("/"):
            node = _step(node, segment, f"{name}:{path}")
        return node

    def all_files(self) -> list[str]:
        paths = [*self.directory.rglob("*.json"), *self.directory.rglob("*.txt")]
        return sorted(p.relative_to(self.directory).as_posix() for p in paths)


def _step(node: Any, segment: str, where: str) -> Any:
    if isinstance(node, dict):
        if segment not in node:
            raise KeyError(f"{where}: no key {segment!r} (keys: {sorted(node)[:12]})")
        return node[segment]
    if isinstance(node, list):
        if segment.lstrip("-").isdigit():
            return node[int(segment)]
        field, _, value = segment.partition("=")
        hits = [row for row in node if isinstance(row, dict) and str(row.get(field)) == value]
        if len(hits) != 1:
            raise KeyError(f"{where}: {len(hits)} rows with {field} == {value!r}, need exactly one")
        return hits[0]
    raise KeyError(f"{where}: cannot index a {type(node).__name__} with {segment!r}")


def fmt(value: Any, spec: str = "") -> str:
    """``value`` written with the format spec ``spec`` (pairs as ranges, lists joined by ' / ')."""
    if isinstance(value, tuple):
        lo, hi = (fmt(v, spec) for v in value)
        return lo if lo == hi else (f"{lo} to {hi}" if hi.startswith("-") else f"{lo}-{hi}")
    if isinstance(value, list):
        return " / ".join(fmt(v, spec) for v in value)
    if isinstance(value, float) and not spec:
        raise ValueError(f"the float {value!r} needs a format spec (e.g. :.2f) in the template")
    if isinstance(value, bool) and not spec:
        return "yes" if value else "no"
    return format(value, spec)


def span(values) -> tuple:
    values = list(values)
    return (min(values), max(values))


def dims(values) -> str:
    """``[2, 16]`` as '2-D and 16-D'."""
    names = [f"{d}-D" for d in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- accuracy against NFE

PROBLEM_NAMES = {"vp": "VP", "ddpm": "DDPM"}


def _acc_cells(data: dict) -> list[tuple[str, str, str, dict]]:
    """(label, dim, budget, summary cell) for every problem, dimension and goal budget."""
    budgets = [str(b) for b in data["settings"]["goal"]["budgets"]]
    peers = {u["problem"]: u["peer"] for u in data["units"]}
    return [(f"{PROBLEM_NAMES[p]} {dim}-D vs {peers[p]}", dim, b, data["summary"][p][dim][b])
            for p in data["summary"] for dim in data["summary"][p] for b in budgets]


def _acc_table(data: dict) -> str:
    budgets = [str(b) for b in data["settings"]["goal"]["budgets"]]
    by_label: dict[str, dict[str, dict]] = {}
    for label, _, b, cell in _acc_cells(data):
        by_label.setdefault(label, {})[b] = cell
    rows = []
    for label, cells in by_label.items():
        row = [label, " / ".join(budgets)]
        for stat in ("median", "p90"):
            for mode in ("untuned", "tuned"):
                row.append(fmt([cells[b][stat][mode]["median"] for b in budgets], ".2f"))
        rows.append(row)
    return table(["problem", "NFE <=", "median, untuned", "median, tuned", "p90, untuned", "p90, tuned"], rows)


def _goal_count(data: dict, stat: str, mode: str) -> dict[str, Any]:
    goal = data["settings"]["goal"][stat]
    cells = [(label, b, c[stat][mode]["median"]) for label, _, b, c in _acc_cells(data)]
    misses = [(label, b, v) for label, b, v in cells if v > goal]
    return {"met": len(cells) - len(misses), "cells": len(cells), "misses": misses,
            "miss_span": span(v for *_, v in misses) if misses else (float("nan"),) * 2}


def _peer_family(setting: dict) -> str:
    """A peer's winning setting without its options: 'UniPC[bh2,...],linspace' -> 'UniPC', 'lms' on 'karras'."""
    name = re.split(r"[\[(,]", setting["solver"])[0]
    return name if setting["grid"] in ("-", "") or setting["solver"] != name else f"{name} ({setting['grid']})"


def _peer_settings(data: dict, peer: str) -> int:
    return len({(r["solver"], r["grid"]) for u in data["units"] if u["peer"] == peer
                for r in u["rows"] if r["library"] == peer})


def accuracy(results: Results) -> dict[str, Any]:
    data = results("accuracy_vs_nfe.json")
    units, budgets = data["units"], [str(b) for b in data["settings"]["goal"]["budgets"]]
    p90, med = _goal_count(data, "p90", "tuned"), _goal_count(data, "median", "tuned")
    untuned = _goal_count(data, "median", "untuned")
    tune_cost = [u["ratios"][b][s]["tuned"]["sdekit"].get("tune_nfe") for u in units
                 for b in u["ratios"] for s in ("median", "p90")]
    rms = [c["rms"][m]["per_seed"] for *_, c in _acc_cells(data) for m in ("untuned", "tuned")]
    grids = Counter(u["ratios"][b][s]["untuned"]["sdekit"]["grid"] for u in units for b in budgets
                    for s in ("median", "p90"))
    peers = Counter((u["peer"], _peer_family(u["ratios"][b][s]["untuned"]["peer"])) for u in units
                    for b in budgets for s in ("median", "p90"))
    return {
        "acc.minutes": data["time_s"] / 60,
        "acc.seeds": span(data["settings"]["seeds"]), "acc.n_seeds": len(data["settings"]["seeds"]),
        "acc.dims": dims(data["settings"]["dims"]),
        "acc.components": span(u["mixture"]["K"] for u in units),
        "acc.n_solvers": len(data["settings"]["sdekit_solvers"]),
        "acc.grids": ", ".join(data["settings"]["sdekit_grids"]),
        "acc.kd_settings": _peer_settings(data, "k-diffusion"),
        "acc.diffusers_settings": _peer_settings(data, "diffusers"),
        "acc.tune_nfe": span(c for c in tune_cost if c is not None),
        "acc.table": _acc_table(data),
        "acc.p90_met": p90["met"], "acc.cells": p90["cells"],
        "acc.p90_misses": "; ".join(f"{label} at {b} NFE: {v:.2f}" for label, b, v in p90["misses"]),
        "acc.median_met": med["met"], "acc.median_miss_span": med["miss_span"],
        "acc.untuned_median_met": untuned["met"],
        "acc.untuned_median_span": span(c["median"]["untuned"]["median"] for *_, c in _acc_cells(data)),
        "acc.untuned_rms_span": span(v for seeds in rms[0::2] for v in seeds),
        "acc.tuned_rms_span": span(v for seeds in rms[1::2] for v in seeds),
        "acc.winning_grids": ", ".join(f"{g} ({n})" for g, n in grids.most_common()),
        "acc.winner_cells": sum(grids.values()),
        "acc.peer_winners": ", ".join(f"{lib} {name} ({n})" for (lib, name), n in peers.most_common(4)),
        **_objectives(results, data),
    }


def _objectives(results: Results, data: dict) -> dict[str, Any]:
    """The DDPM 16-D re-run tuned per statistic, beside the main run's tuned ratios."""
    obj = results("accuracy_vs_nfe_ddpm16_objectives.json")
    budgets = [str(b) for b in obj["settings"]["goal"]["budgets"]]
    before, after = data["summary"]["ddpm"]["16"], obj["summary"]["ddpm"]["16"]
    out: dict[str, Any] = {"obj.objectives": ", ".join(obj["units"][0]["tuning"]["objectives"]),
                           "obj.dims": dims(obj["settings"]["dims"])}
    for stat in ("median", "p90"):
        out[f"obj.{stat}_before"] = [before[b][stat]["tuned"]["median"] for b in budgets]
        out[f"obj.{stat}_after"] = [after[b][stat]["tuned"]["median"] for b in budgets]
    out["obj.budgets"] = " / ".join(budgets)
    return out


def quick_runs(results: Results) -> dict[str, Any]:
    runs = []
    for name in ("accuracy_vs_nfe_quick", "accuracy_vs_nfe_quick_final"):
        data = results(f"{name}.json")
        runs.append(f"`{data['settings']['command']}` ({data['settings']['n']} rows, "
                    f"{len(data['settings']['sdekit_solvers'])} sdekit solvers, {data['time_s'] / 60:.0f} min; "
                    f"[`{name}.json`](../benchmarks/results/{name}.json), "
                    f"[plot](../benchmarks/results/{name}.png))")
    return {"quick.runs": "; ".join(runs)}


# ---------------------------------------------------------------- overhead

def overhead(results: Results) -> dict[str, Any]:
    data = results("overhead.json")
    rows = []
    for solver, verdict in data["verdict"].items():
        us = {r["library"]: r["us_per_step"] for r in data["rows"] if r["solver"] == solver}
        rows.append([solver, f"{us['sdekit']:.1f}", f"{us['k-diffusion']:.1f}",
                     f"{verdict['ratio_sdekit_over_kd']:.2f}", fmt(verdict["goal_met"])])
    return {"overhead.table": table(
        ["solver", "sdekit us/step", "k-diffusion us/step", "ratio", "goal met"], rows)}


def overhead_path_noise(results: Results) -> dict[str, Any]:
    data = results("overhead_path_noise.json")
    before = {(r["solver"], r["batch"], r["noise"]): r for r in data["before"]["rows"]}
    now = {(r["solver"], r["batch"], r["noise"]): r for r in data["rows"]}
    batches = sorted({r["batch"] for r in data["rows"]})
    rows = []
    for solver in data["solvers"]:
        cells = []
        for b in batches:
            old, path = before.get((solver, b, "path")), now[(solver, b, "path")]
            cells += [f"{old['ratio']:.2f}" if old else "", f"{path['ratio']:.2f} "
                      f"[{path['ratio_iqr'][0]:.2f}, {path['ratio_iqr'][1]:.2f}]",
                      f"{now[(solver, b, 'step')]['ratio']:.2f}", f"{now[(solver, b, 'floor')]['ratio']:.2f}"]
        rows.append([f"`{solver}`", *cells])
    header = ["sampler"] + [f"{h} (batch {b})" for b in batches for h in ("before", "path [IQR]", "step", "floor")]
    met = sum(bool(v["goal_met"]) for v in data["verdict"].values())
    return {"pathnoise.table": table(header, rows), "pathnoise.met": f"{met} of {len(data['verdict'])}"}


# ---------------------------------------------------------------- likelihood on mixtures

def _lik_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        evals = r.get("divergence_evals_per_row")
        out.append([str(r["dim"]), r["method"], f"{r['mae_nats']:.1e}", f"{r['max_err_nats']:.1e}",
                    str(r["nfe"]), f"{evals:.1f}" if evals is not None else "", f"{r['time_s']:.3f}"])
    return table(["D", "method", "mean abs err (nats)", "max abs err", "NFE", "trace evals/row", "time (s)"],
                 out)


def _fastest_exact(rows: list[dict], dim: int, tol: float) -> dict:
    exact = [r for r in rows if r["dim"] == dim and r["method"].startswith("sdekit exact")
             and r["mae_nats"] <= tol]
    return min(exact, key=lambda r: r["time_s"])


def _kdiffusion(rows: list[dict], dim: int) -> dict:
    (row,) = [r for r in rows if r["dim"] == dim and r["method"].startswith("k-diffusion")]
    return row


def likelihood(results: Results) -> dict[str, Any]:
    data, two = results("likelihood.json"), results("two_threads/likelihood.json")
    floor = results("likelihood_floor.json")
    rows, tol = data["rows"], 1e-3  # the goal: an exact likelihood within 1e-3 nats, at the largest dimension
    dim = max(r["dim"] for r in rows)
    fast, kd = _fastest_exact(rows, dim, tol), _kdiffusion(rows, dim)
    fast2, kd2 = _fastest_exact(two["rows"], dim, tol), _kdiffusion(two["rows"], dim)
    costs = floor["cost_per_batch_evaluation_s"]
    trace_over_probe = costs["exact_trace"] / costs["one_probe"]
    exact = [r["mae_nats"] for r in rows if r["dim"] == dim and r["method"].startswith("sdekit exact")]
    (n,) = {r["n"] for r in rows}
    return {
        "lik.n": n, "lik.dim": dim,
        "lik.table": _lik_table(rows),
        "lik.table_two_threads": _lik_table(two["rows"]),
        "lik.tol": tol,
        "lik.exact_worst": max(exact),
        "lik.fastest": fast["method"], "lik.fastest_time": fast["time_s"], "lik.fastest_mae": fast["mae_nats"],
        "lik.fastest_over_kd": fast["time_s"] / kd["time_s"],
        "lik.fastest_over_kd_two_threads": fast2["time_s"] / kd2["time_s"],
        "lik.kd_mae16": kd["mae_nats"], "lik.kd_nfe": kd["nfe"],
        "lik.trace_over_probe": trace_over_probe,
        "lik.evals_to_match_kd": kd["nfe"] / trace_over_probe,
    }


# ---------------------------------------------------------------- likelihood on the digits U-Net

DIGITS_STEPS = ("300", "800", "2500")


def likelihood_digits(results: Results) -> dict[str, Any]:
    rows, split_rows = [], []
    for steps in DIGITS_STEPS:
        s = results(f"likelihood_digits_digits{steps}.json")["summary"]
        rows.append([steps, f"{s['sdekit']['bpd_median']:.3f}", f"{s['k-diffusion']['bpd_median']:.3f}",
                     f"{s['time_ratio_sdekit_over_kdiffusion']:.2f}",
                     f"{s['time_ratio_sdekit_1_probe_over_kdiffusion']:.2f}",
                     f"{s['cpu_time_ratio_sdekit_over_kdiffusion']:.2f}",
                     f"{s['sdekit']['nfe_median']} / {s['sdekit 1 probe']['nfe_median']} / "
                     f"{s['k-diffusion']['nfe_median']}"])
        d = results(f"likelihood_digits_split_digits{steps}.json")
        split_rows.append([steps, f"{d['bpd']:.4f} +- {d['bpd_se']:.4f}",
                           f"{d['se_data']:.4f} / {d['se_estimator']:.4f}", str(d["n"]), str(d["nfe"]),
                           f"{d['seconds']:.0f}", f"{d['cpu_seconds']:.0f}"])
    bias = results("likelihood_solver_bias.json")["results"]
    split = results("likelihood_digits_split_digits2500.json")
    probes = {r["probes"] for r in results("likelihood_digits_digits2500.json")["rows"] if r["method"] == "sdekit"}
    bias_rows = [[str(r["step"]), f"{r['bias_bpd']:+.4f} +- {r['bias_se']:.4f}", f"{r['max_abs_row_diff']:.4f}",
                  f"{r['fast']['nfe']} / {r['tight']['nfe']}", f"{r['fast']['rtol']:g} / {r['tight']['rtol']:g}"]
                 for r in bias]
    return {
        "digits_lik.default_probes": fmt(sorted(probes)),
        "digits_split.settings": (
            f"{split['data']}, {split['method']} at rtol {split['rtol']:g} in {split['time_variable']}, "
            f"{split['dtype']}, {split['divergence']} with {split['probes']} probe(s) x {split['repeats']} "
            f"dequantisation draws per image"),
        "bias.rows": fmt(sorted({len(r["rows"]) for r in bias})),
        "digits_lik.table": table(
            ["training steps", "bits/dim, sdekit", "bits/dim, k-diffusion", "time / k-diffusion's",
             "1 probe: time / k-diffusion's", "CPU time / k-diffusion's", "NFE sdekit / 1 probe / k-diffusion"],
            rows),
        "digits_split.table": table(
            ["training steps", "bits/dim +- SE", "SE: data / estimator", "images", "NFE", "wall s", "CPU s"],
            split_rows),
        "bias.table": table(["training steps", "bias, bits/dim", "largest on one row", "NFE fast / tight",
                             "rtol fast / tight"], bias_rows),
    }


TRANSCRIPT = re.compile(r"^\$ (?P<command>.+?)\n(?:(?!\$ ).*\n)*?bits/dim (?P<bpd>[\d.]+) \+- (?P<se>[\d.]+) "
                        r"\(standard error over (?P<n>\d+) images\)\nNFE (?P<nfe>\d+) \((?P<solves>\d+) solves\)"
                        r"\s+time (?P<time>[\d.]+) s", re.MULTILINE)


def transcripts(results: Results) -> dict[str, Any]:
    """The exact digits likelihood from the command line: each ``$ sdekit likelihood ...`` in the .txt
    transcripts with the bits/dim, SE, NFE and time it printed."""
    out = {}
    for name in ("digits_cli_likelihood.txt", "digits_quadrature.txt"):
        rows = [[f"`{m['command'].replace('sdekit likelihood --checkpoint runs/digits_results/main_eps ', '')}`",
                 f"{m['bpd']} +- {m['se']}", m["n"], m["nfe"], m["solves"], m["time"]]
                for m in TRANSCRIPT.finditer(results(name))]
        if not rows:
            raise ValueError(f"no 'sdekit likelihood' run found in {name}")
        out[f"cli.{name.removesuffix('.txt')}"] = table(
            ["arguments after `sdekit likelihood --checkpoint runs/digits_results/main_eps`", "bits/dim +- SE",
             "images", "NFE", "solves", "time (s)"], rows)
    return out


# ---------------------------------------------------------------- stochastic samplers, law error

def _ratio_cell(cell: dict) -> str:
    floor = f"{cell['at_floor']} of {cell['seeds']} at the floor"
    if "median" not in cell:
        return floor
    text = fmt(cell["median"], ".2f")
    if cell["seeds"] - cell["at_floor"] > 1:
        text += f" [{cell['min']:.2f}, {cell['max']:.2f}]"
    return text + (f" ({floor})" if cell["at_floor"] else "")


def _problem_label(name: str) -> str:
    """'vp 2-D vs k-diffusion' as 'VP 2-D vs k-diffusion'."""
    problem, _, rest = name.partition(" ")
    return f"{PROBLEM_NAMES.get(problem, problem)} {rest}"


def _stochastic_table(data: dict) -> str:
    budgets = [str(b) for b in data["budgets"]]
    header = ["problem"] + [f"NFE {b}, {what}" for b in budgets for what in ("sliced W2", "mode weights")]
    blocks = (data["ratios"], data["mode_ratios"])
    rows = [[_problem_label(name)] + [_ratio_cell(block[name][b]) for b in budgets for block in blocks]
            for name in data["ratios"]]
    return table(header, rows)


def stochastic(results: Results) -> dict[str, Any]:
    data, big = results("stochastic.json"), results("stochastic_n1e5.json")
    samplers = {lib: sorted({r["solver"] for u in data["units"] for r in u["rows"] if r["library"] == lib})
                for lib in ("sdekit", "k-diffusion", "diffusers")}
    floors = [u["floor_sd"] for u in data["units"]]
    low = str(min(data["budgets"]))
    small = [u["best"][low] for u in data["units"] if u["dim"] == min(u["dim"] for u in data["units"])]
    big_floors = [u["floor"] for u in big["units"]]
    return {
        "sto.dims": dims(sorted({u["dim"] for u in data["units"]})), "sto.n": data["settings"]["n"],
        "sto.seeds": span(data["settings"]["seeds"]), "sto.tune_n": data["settings"]["tune_n"],
        "sto.leading_table": _stochastic_table(results("stochastic_ddpm_leading.json")),
        "sto.samplers": ", ".join(f"{lib}: {len(s)}" for lib, s in samplers.items()),
        "sto.table": _stochastic_table(data),
        "sto.floor_sd": span(floors),
        "sto.low_budget": low, "sto.low_dim": min(u["dim"] for u in data["units"]),
        "sto.mode_err_sdekit": span(b["sdekit"]["mode_err"] for b in small),
        "sto.mode_err_peer": span(v["mode_err"] for b in small for k, v in b.items()
                                 if not k.startswith("sdekit")),
        "big.n": big["settings"]["n"], "big.units": len(big["units"]),
        "big.floor": span(big_floors), "big.floor_sd": span(u["floor_sd"] for u in big["units"]),
        "big.table": _stochastic_table(big),
        **_timing(results),
    }


def _timing(results: Results) -> dict[str, Any]:
    data = results("stochastic_timing.json")
    batches = sorted({r["batch"] for r in data["step_time"]})
    rows = []
    for solver in dict.fromkeys(r["solver"] for r in data["step_time"]):
        by_batch = {r["batch"]: r for r in data["step_time"] if r["solver"] == solver}
        path = " / ".join(f"{by_batch[b]['ratio']:.2f}" for b in batches)
        step = (" / ".join(f"{by_batch[b]['ratio_step_noise']:.2f}" for b in batches)
                if "ratio_step_noise" in by_batch[batches[0]] else "")
        rows.append([f"`{solver}`", by_batch[batches[0]]["peer"], path, step])
    noise = [[f"{dims}", dtype, f"{v['randn_ms']:.2f}", f"{v['rownoise_ms']:.2f}", f"{v['ratio']:.2f}"]
             for dims, per in data["noise"].items() for dtype, v in per.items()]
    return {
        "timing.batches": " / ".join(str(b) for b in batches),
        "timing.table": table(["sampler", "k-diffusion peer", "Brownian path (default)", '`noise="step"`'], rows),
        "noise.table": table(["rows and dim", "dtype", "torch.randn ms", "per-row noise ms", "ratio"], noise),
    }


def stochastic_quick(results: Results) -> dict[str, Any]:
    data = results("stochastic_quick.json")
    return {"quick_sto.runs": len(data["runs"])}


# ---------------------------------------------------------------- strong order

def strong_order(results: Results) -> dict[str, Any]:
    data = results("strong_order.json")
    problems: dict[str, dict[str, dict]] = {}
    for name, cell in data["summary"].items():
        problem_a, problem_b, library, solver = name.split(" ", 3)
        problems.setdefault(f"{problem_a} {problem_b}", {})[f"{library} `{solver}`"] = cell
    samplers = list(dict.fromkeys(k for cells in problems.values() for k in cells))
    rows = [[sampler] + [f"{cells[sampler]['median']:.2f} [{cells[sampler]['min']:.2f}, "
                         f"{cells[sampler]['max']:.2f}]" for cells in problems.values()]
            + [fmt(sorted({cells[sampler]["theory"] for cells in problems.values()}), "g")] for sampler in samplers]
    unit = data["units"][0]
    gaussian = [u for u in data["units"] if u["problem"].startswith("Gaussian")]
    finest = {f"{lib} {name}": statistics.median(u[lib][name]["errors"][-1] for u in gaussian)
              for lib in ("sdekit", "torchsde") for name in unit[lib]}
    best_sdekit = min((k for k in finest if k.startswith("sdekit")), key=finest.__getitem__)
    return {
        "so.finest_steps": data["settings"]["steps"][-1], "so.srk_err": finest["torchsde srk"],
        "so.best_sdekit": best_sdekit.split()[1], "so.best_sdekit_err": finest[best_sdekit],
        "so.rows": data["settings"]["rows"], "so.ref_steps": data["settings"]["ref_steps"],
        "so.steps": span(data["settings"]["steps"]), "so.seeds": span(u["seed"] for u in data["units"]),
        "so.n_seeds": len({u["seed"] for u in data["units"]}),
        "so.fine": span(u["fine"]["max_distance_between_fine_solves"] for u in data["units"]),
        "so.samplers": len(unit["sdekit"]),
        "so.table": table(["sampler"] + list(problems) + ["theory"], rows),
    }


# ---------------------------------------------------------------- flow matching

def flow_matching(results: Results) -> dict[str, Any]:
    data = results("flow_matching.json")
    rows, dimensions = [], sorted({u["dim"] for u in data["units"]})
    for dim in dimensions:
        for stat in ("median", "p90"):
            for mode in ("sdekit", "sdekit tuned"):
                cells = [data["summary"][f"{dim}D nfe<={b} {stat} {mode}"] for b in data["budgets"]]
                rows.append([f"{dim}-D", stat, "tuned" if "tuned" in mode else "untuned"]
                            + [f"{c['median_ratio']:.2f} [{c['min_ratio']:.2f}, {c['max_ratio']:.2f}]"
                               for c in cells])
    winners = Counter(s["diffusers"] for c in data["summary"].values() for s in c["per_seed"])
    lik = data["likelihood"]
    return {
        "fm.seeds": span(data["seeds"]), "fm.dims": dims(dimensions), "fm.n": data["n"],
        "fm.shifts": span(data["shifts"]),
        "fm.table": table(["problem", "statistic", "grid"] + [f"NFE <= {b}" for b in data["budgets"]], rows),
        "fm.diffusers_winners": ", ".join(f"{w} ({n})" for w, n in winners.most_common(3)),
        "fm.winner_cells": sum(winners.values()),
        "fm.lik_dim": lik["dim"], "fm.lik_n": lik["n"], "fm.lik_max": lik["max_abs_error_nats"],
    }


# ---------------------------------------------------------------- digits: training, samples, predictions

def digits(results: Results) -> dict[str, Any]:
    main, compare, combined = results("digits_main.json"), results("digits_compare.json"), results("digits.json")
    samples = [[f"`{name}`", str(s["steps"]), str(s["nfe"]), f"{s['seconds']:.2f}", f"{s['nn_distance_to_train']:.2f}"]
               for name, s in main["main"]["samples"].items()]
    merged = {k: v for k, v in combined["compare"].items() if k != "paired_vs_eps"}
    if combined["main"] != main["main"] or merged != compare["compare"]:
        raise ValueError("digits.json is not the merge of digits_main.json and digits_compare.json: "
                         "run python benchmarks/digits_results.py --part report")
    paired = combined["compare"]["paired_vs_eps"]
    preds = []
    for name, p in compare["compare"]["predictions"].items():
        diff = f"{paired[name]['mean']:+.3f} +- {paired[name]['stderr']:.3f}" if name in paired else ""
        preds.append([name, f"{p['bpd']['bpd_mean']:.3f} +- {p['bpd']['bpd_stderr']:.3f}", diff,
                      str(p["train"]["steps"]), f"{p['train']['train_seconds']:.0f}"])
    return {
        "digits.samples": table(["solver", "steps", "NFE", "seconds for the batch",
                                 "mean distance to nearest train image"], samples),
        "digits.predictions": table(["prediction", "bits/dim", "paired difference vs eps", "training steps",
                                     "training s"], preds),
        "digits.main_on_compare": combined["main_on_compare_images"]["bpd_mean"],
        "digits.compare_images": len(compare["compare"]["test_indices"]),
    }


# ---------------------------------------------------------------- distributed, memory

def distributed(results: Results) -> dict[str, Any]:
    data = results("distributed.json")
    sizes = sorted(data["runs"], key=int)
    jobs = [k for k, v in data["runs"][sizes[0]].items() if isinstance(v, dict) and "rows_per_s" in v]
    rows = []
    for job in jobs:
        rates = [data["runs"][w][job]["rows_per_s"] for w in sizes]
        identical = all(all(data["runs"][w]["identical_to_world_sizes"].values()) for w in sizes[1:])
        rows.append([job, str(data["runs"][sizes[0]][job]["rows"])] + [f"{r:.1f}" for r in rates]
                    + [f"{rates[-1] / rates[0]:.2f}x", fmt(identical)])
    return {
        "dist.table": table(["job", "rows"] + [f"rows/s, world size {w}" for w in sizes]
                            + ["speed-up", "outputs identical"], rows),
        "dist.load": span(data["runs"][w]["load_average_1min"] for w in sizes),
    }


def sample_memory(results: Results) -> dict[str, Any]:
    data = results("sample_memory.json")
    rows = [[mode, f"{s['solve_mb_median']:.1f}", fmt(tuple(s["solve_mb_range"]), ".1f"),
             f"{s['wall_s_median']:.1f}", fmt(s["graph"])] for mode, s in data["summary"].items()]
    return {"mem.table": table(["mode", "MB above the loaded model (median)", "range", "wall s (median)",
                                "autograd graph kept"], rows)}


def schedules(results: Results) -> dict[str, Any]:
    data = results("schedules.json")
    rows = data["rows"]
    cells = []
    for dim in sorted({r["dim"] for r in rows}):
        for solver in data["solvers"]:
            for key in ("kl_optimal", "gits", "gits_dp_only"):
                per_nfe = []
                for nfe in data["nfe"]:
                    ratios = [r[key] / r["best_named_err"] for r in rows
                              if r["dim"] == dim and r["solver"] == solver and r["nfe"] == nfe]
                    per_nfe.append(fmt(span(ratios), ".2f"))
                cells.append([f"{dim}-D", f"`{solver}`", f"`{key}`", *per_nfe])
    header = ["problem", "solver", "schedule", *[f"NFE {n}" for n in data["nfe"]]]
    seeds = sorted({r["seed"] for r in rows})
    return {"sched.table": table(header, cells), "sched.seeds": f"{seeds[0]}-{seeds[-1]}",
            "sched.dims": dims(sorted({r["dim"] for r in rows})),
            "sched.gits_nfe": span(r["gits_nfe"] for r in rows)}


def schedules_vs_peers(results: Results) -> dict[str, Any]:
    """kl_optimal, GITS and AYS beside the tuned grid and k-diffusion: per schedule and dimension, the median over
    the (seed, NFE) cells of each ratio, with the cells below one."""
    data = results("schedules_vs_peers.json")
    summary = data["summary"]
    labels = {"kl_optimal": "`kl_optimal` (free)", "gits": "GITS (with selection)", "ays": "AYS (with selection)",
              "ays_searched": "AYS search alone", "tuned": "`sdekit.tune`"}
    rows = []
    for dim in data["dims"]:
        for key, label in labels.items():
            cells = []
            for stat in ("median", "p90"):
                for versus in ("logsnr", "k-diffusion"):
                    c = summary[f"{dim}d/{key}/{stat}/vs_{versus}"]
                    cells.append(f"{c['median']:.2f} ({c['below_1']}/{c['cells']})")
            rows.append([f"{dim}-D", label, *cells])
    header = ["problem", "schedule", "median vs logsnr", "median vs k-diffusion", "p90 vs logsnr",
              "p90 vs k-diffusion"]
    return {"sched_peers.table": table(header, rows), "sched_peers.seeds": fmt(data["seeds"]),
            "sched_peers.dims": dims(data["dims"]), "sched_peers.nfe": fmt(data["nfe"])}


def grad_tune(results: Results) -> dict[str, Any]:
    data = results("grad_tune.json")
    methods = ("untuned", "powell", "gradient", "gradient_free_start")
    rows = []
    for key, cell in data["summary"].items():
        dim, nfe = key.split("_")
        errs = [f"{fmt(span(cell[m]['median']), '.3g')} / {fmt(span(cell[m]['p90']), '.3g')}" for m in methods]
        calls = [fmt(span(c["tuning_nfe"] for c in cell[m]["cost"])) for m in methods[1:]]
        rows.append([dim.replace("d", "-D"), nfe.replace("nfe", ""), *errs, " / ".join(calls)])
    header = ["problem", "NFE", *[f"{m} median / p90" for m in methods], "tuning calls P / G / G+start"]
    seeds = data["seeds"]
    return {"grad.table": table(header, rows), "grad.seeds": f"{seeds[0]}-{seeds[-1]}"}


def learned_solver(results: Results) -> dict[str, Any]:
    data = results("learned_solver.json")
    rows = []
    for key, cell in data["summary"].items():
        dim, nfe = key.split("_")
        for stat in ("median", "p90"):
            learned = cell["learned"][stat]
            ratios = [fmt(span(a / b for a, b in zip(learned, cell[other][stat])), ".2f")
                      for other in ("init", "best_named", "tuned")]
            rows.append([dim.replace("d", "-D"), nfe.replace("nfe", ""), stat, fmt(span(learned), ".3f"), *ratios])
    costs = [c["nfe"] for cell in data["summary"].values() for c in cell["learn_cost"]]
    secs = [c["seconds"] for cell in data["summary"].values() for c in cell["learn_cost"]]
    seeds = data["seeds"]
    return {"learned.table": table(["problem", "NFE", "statistic", "learned (range over seeds)", "learned / its init",
                                    "learned / best named grid", "learned / tuned grid"], rows),
            "learned.seeds": f"{seeds[0]}-{seeds[-1]}", "learned.cost": span(costs), "learned.seconds": span(secs)}


def learned_vs_peers(results: Results) -> dict[str, Any]:
    data = results("learned_solver_vs_peers.json")
    rows, met = [], {"median": 0, "p90": 0}
    for problem in data["problems"]:
        for dim in data["dims"]:
            for stat in ("median", "p90"):
                cells = []
                for nfe in data["nfe"]:
                    c = data["summary"][f"{problem}_{dim}d_nfe{nfe}"][stat]
                    met[stat] += bool(c["goal_met_every_seed"])
                    cells.append(f"{c['median']:.2f} ({fmt(span(c['per_seed']), '.2f')})")
                rows.append([problem, f"{dim}-D", stat, *cells])
    cells_n = len(data["problems"]) * len(data["dims"]) * len(data["nfe"])
    seeds = data["seeds"]
    return {"lvp.table": table(["problem", "dim", "statistic", *[f"NFE {n}" for n in data["nfe"]]], rows),
            "lvp.seeds": f"{seeds[0]}-{seeds[-1]}", "lvp.median_met": f"{met['median']} of {cells_n}",
            "lvp.p90_met": f"{met['p90']} of {cells_n}"}


def _frontier_label(part: str, dim: int) -> str:
    return {"flow": f"rectified flow {dim}-D", "digits_vp": "digits U-Net, VP",
            "digits_fm": "digits U-Net, rectified flow"}[part]


def learned_frontier(results: Results) -> dict[str, Any]:
    """learned_frontier.json: per (problem, NFE, statistic) each sdekit variant's ratio to the best peer setting
    (median over seeds and range), and the learning cost."""
    data = results("learned_frontier.json")
    rows, met, cells_n = [], {"median": 0, "p90": 0}, 0
    for key in sorted({(u["part"], u["dim"]) for u in data["units"]}):
        first = next(u for u in data["units"] if (u["part"], u["dim"]) == key)
        for nfe in first["cells"]:
            cell = data["summary"][f"{key[0]}_{key[1]}d_nfe{nfe}"]
            cells_n += 1
            for stat in ("median", "p90"):
                met[stat] += bool(cell["learned"][stat]["goal_met_every_seed"])
                ratios = [f"{cell[v][stat]['median']:.2f} ({fmt(span(cell[v][stat]['per_seed']), '.2f')})"
                          for v in ("learned", "tuned", "named")]
                rows.append([_frontier_label(*key), nfe, stat, *ratios,
                             fmt(span(cell["learn_cpu_s"]), ".0f"), fmt(span(cell["tune_cpu_s"]), ".0f")])
    header = ["problem", "NFE", "statistic", "learned / best peer", "gradient-tuned / best peer",
              "best untuned / best peer", "learning CPU s", "tuning CPU s"]
    seeds = data["seeds"]
    digits = [c for k, c in data["summary"].items() if k.startswith("digits")]
    return {"lf.table": table(header, rows), "lf.seeds": f"{seeds[0]}-{seeds[-1]}",
            "lf.median_met": f"{met['median']} of {cells_n}", "lf.p90_met": f"{met['p90']} of {cells_n}",
            "lf.flow_learn_cpu": span(s for k, c in data["summary"].items() if k.startswith("flow")
                                      for s in c["learn_cpu_s"]),
            "lf.digits_learn_cpu": span(s for c in digits for s in c["learn_cpu_s"]) if digits else (0.0, 0.0),
            "lf.improved": sum(i for c in data["summary"].values() for i in c["learn_improved"]),
            "lf.learned_vs_start": max(r for c in data["summary"].values() for s in ("median", "p90")
                                       for r in c["learned_vs_start"][s]),
            "lf.tuned_vs_start": max(r for c in data["summary"].values() for s in ("median", "p90")
                                     for r in c["tuned_vs_start"][s]),
            "lf.learned_runs": sum(len(c["learn_improved"]) for c in data["summary"].values())}


SECTIONS: list[Callable[[Results], dict[str, Any]]] = [
    accuracy, quick_runs, overhead, overhead_path_noise, likelihood, likelihood_digits, transcripts, stochastic,
    stochastic_quick, strong_order, flow_matching, digits, distributed, sample_memory, schedules, schedules_vs_peers,
    grad_tune, learned_solver, learned_vs_peers, learned_frontier,
]


# ---------------------------------------------------------------- the page

def render(template: str, results: Results | None = None) -> str:
    """``template`` with every placeholder replaced from ``results`` (see the module docstring)."""
    results = results or Results()
    named: dict[str, Any] = {}
    for section in SECTIONS:
        named.update(section(results))

    def replace(match: re.Match) -> str:
        text = match.group(1).strip()
        if ".json:" in text:
            name, _, rest = text.partition(":")
            path, _, spec = rest.partition(":")
            return fmt(results.lookup(name, path), spec)
        key, _, spec = text.partition(":")
        if key not in named:
            raise KeyError(f"unknown placeholder {{{{{text}}}}}; computed names: {sorted(named)}")
        return fmt(named[key], spec)

    template = TEMPLATE_COMMENT.sub("", template)
    return PLACEHOLDER.sub(replace, template)


def unused_results(results: Results) -> list[str]:
    """Results files that no placeholder read (call after ``render``)."""
    return [f for f in results.all_files() if f not in results.cache]


def generate() -> tuple[str, list[str]]:
    """The page as it should be now, and the results files it does not read."""
    results = Results()
    page = render(TEMPLATE.read_text(), results)
    return page, unused_results(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is out of date")
    args = parser.parse_args(argv)
    page, unused = generate()
    if unused:
        print(f"results files not on the page: {', '.join(unused)}", file=sys.stderr)
        return 1
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE} is out of date: run python benchmarks/make_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
