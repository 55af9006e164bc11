"""Endpoint error against NFE: sdekit's solvers beside k-diffusion's samplers, on exact scores.

Both libraries solve the probability-flow ODE of the same VP SDE (beta 0.1..20, T = 1, t_end = 1e-3)
for Gaussian mixtures with sharp components (``GaussianMixture.default``: stds 0.05, 0.1, 0.4, 0.6) in
2-D and 16-D, from the same x_T ~ N(0, I) (float64), and are measured against the same float64 reference
(RK4, 2000 steps on the log-SNR grid; its own error is estimated from a 1000-step solve by Richardson's
rule and printed). Endpoint error = sqrt(mean over rows of |x - x_ref|^2 / dim).

k-diffusion works in the VE/EDM variables y = x / alpha, s = sigma / alpha. The exact score is
wrapped as its denoiser D(y, s) = E[x0 | x] = (x + sigma^2 score(x, t)) / alpha with x = alpha y and
t = t(lambda = -2 log s). Its schedules span exactly sdekit's [t_end, t_start]:
  karras   get_sigmas_karras(N + 1, s(t_end), s(T), rho=7) without its appended 0 (so the solve stops at
           s(t_end), not at 0), cast to float64 with both ends pinned to the float64 values;
  uniform  s(t_i) at N + 1 uniformly spaced times from T to t_end (sdekit's "uniform" grid).
Start: y_T = x_T / alpha(T); end: x = alpha(t_end) y. Every denoiser call is counted (NFE); heun and
dpm_2 take 2 calls per step on these schedules (no step ends at s = 0). Step counts per NFE budget
are floor(budget / calls per step) for both libraries.

Goal (checked and printed, never assumed): at NFE 10 and 20, sdekit's best run has at most half the
endpoint error of k-diffusion's best run that uses no more NFE.

Run with the benchmark venv:  /work/benchvenv/bin/python benchmarks/accuracy_vs_nfe.py [--quick]
Writes benchmarks/results/accuracy_vs_nfe.{json,png}.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
import types

import torch

import sdekit
import sdekit.solvers
from sdekit.compare import compare, default_solvers, endpoint_error
from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

KD_SAMPLERS = {  # name -> denoiser calls per step (schedules that never end at s = 0)
    "euler": 1, "heun": 2, "dpm_2": 2, "lms": 1, "dpmpp_2m": 1,
}


def load_k_diffusion_sampling():
    """k_diffusion.sampling, imported lazily. If the package's __init__ fails on an optional import
    (its evaluation module pulls in CLIP, which needs pkg_resources), its sampling.py and utils.py are
    loaded directly, unchanged, under a bare package module."""
    try:
        import k_diffusion.sampling as kds  # noqa: F401

        return kds
    except ImportError as first:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("k-diffusion is not installed; run with /work/benchvenv/bin/python "
                             "or `pip install k-diffusion`") from first
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        for sub in ("utils", "sampling"):
            path = os.path.join(pkg.__path__[0], f"{sub}.py")
            s = importlib.util.spec_from_file_location(f"k_diffusion.{sub}", path)
            mod = importlib.util.module_from_spec(s)
            sys.modules[f"k_diffusion.{sub}"] = mod
            s.loader.exec_module(mod)
            setattr(pkg, sub, mod)
        return sys.modules["k_diffusion.sampling"]


class ExactDenoiser:
    """k-diffusion denoiser D(y, s) of a Gaussian mixture under a VP-type SDE, with a call counter."""

    def __init__(self, gm: sdekit.GaussianMixture, sde: sdekit.LinearSDE):
        self.gm, self.sde = gm, sde
        self.lo, self.hi = float(sde.log_snr(sde.T)), float(sde.log_snr(0.0))
        self.calls = 0

    def __call__(self, y, s):
        self.calls += 1
        s0 = s.reshape(-1)[0].to(torch.float64)
        lam = (-2 * torch.log(s0)).clamp(self.lo, self.hi)
        t = self.sde.t_from_log_snr(lam)
        a, sig = self.sde.alpha(t), self.sde.sigma(t)
        x = a * y
        return ((x + sig**2 * self.gm.score(x, t, self.sde)) / a).to(y.dtype)


def kd_sigmas(kds, sde, steps: int, schedule: str) -> torch.Tensor:
    s_of = lambda t: torch.exp(-0.5 * sde.log_snr(t))  # noqa: E731
    s_max, s_min = float(s_of(sde.T)), float(s_of(sde.eps))
    if schedule == "karras":
        sig = kds.get_sigmas_karras(steps + 1, s_min, s_max, rho=7.0)[:-1].to(torch.float64)
        sig[0], sig[-1] = s_max, s_min
    elif schedule == "uniform":
        sig = s_of(torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64))
    else:
        raise ValueError(schedule)
    assert sig.shape == (steps + 1,) and bool((sig[1:] < sig[:-1]).all())
    return sig


def run_kd(kds, gm, sde, x_T, x_ref, budgets, schedules):
    rows = []
    a_T, a_end = float(sde.alpha(sde.T)), float(sde.alpha(sde.eps))
    for name, per_step in KD_SAMPLERS.items():
        fn = getattr(kds, f"sample_{name}")
        for schedule in schedules:
            for steps in sorted({max(1, b // per_step) for b in budgets}):
                sig = kd_sigmas(kds, sde, steps, schedule)
                den = ExactDenoiser(gm, sde)
                t0 = time.perf_counter()
                y = fn(den, x_T / a_T, sig, disable=True)
                dt = time.perf_counter() - t0
                x = a_end * y
                rows.append({"library": "k-diffusion", "solver": name, "grid": schedule, "steps": steps,
                             "nfe": den.calls, "error": endpoint_error(x, x_ref), "time_s": dt})
    return rows


def run_sdekit(gm, sde, x_T, x_ref, budgets, grids):
    res = compare(gm.model(sde), x_T, solvers=default_solvers(), nfe=budgets, grids=grids,
                  reference=x_ref, progress=False)
    return [{"library": "sdekit", "solver": r.solver, "grid": r.grid, "steps": r.steps, "nfe": r.nfe,
             "error": r.error, "time_s": r.time_s} for r in res]


def best(rows, library, max_nfe):
    cand = [r for r in rows if r["library"] == library and r["nfe"] <= max_nfe and math.isfinite(r["error"])]
    return min(cand, key=lambda r: r["error"]) if cand else None


def reference(model, x_T, steps):
    fine = sdekit.solvers.sample(model, x_T, "rk4", steps, grid="logsnr")
    coarse = sdekit.solvers.sample(model, x_T, "rk4", steps // 2, grid="logsnr")
    return fine.x, endpoint_error(fine.x, coarse.x) / 15.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--dims", default="2,16")
    p.add_argument("--nfe", default="5,10,15,20,30,50")
    p.add_argument("--ref-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="n=64, ref 1000 steps (a smoke run)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.ref_steps = 64, 1000
    torch.set_num_threads(1)
    kds = load_k_diffusion_sampling()
    budgets = [int(v) for v in args.nfe.split(",")]
    sde = sdekit.VPSDE()
    report = {"settings": {"sde": repr(sde), "n": args.n, "seed": args.seed, "nfe_budgets": budgets,
                           "dtype": "float64", "mixture": "GaussianMixture.default(dim) (stds 0.05, 0.1, 0.4, 0.6)",
                           "x_T": "N(0, I), torch.Generator seed", "torch": torch.__version__,
                           "python": platform.python_version(), "machine": platform.machine()},
              "dims": {}}
    for dim in [int(v) for v in args.dims.split(",")]:
        gm = sdekit.GaussianMixture.default(dim=dim)
        model = gm.model(sde)
        x_T = torch.randn(args.n, dim, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
        t0 = time.perf_counter()
        x_ref, ref_err = reference(model, x_T, args.ref_steps)
        ref_time = time.perf_counter() - t0
        rows = run_sdekit(gm, sde, x_T, x_ref, budgets, ("logsnr", "karras", "uniform", "quadratic"))
        rows += run_kd(kds, gm, sde, x_T, x_ref, budgets, ("karras", "uniform"))
        goals = {}
        for b in (10, 20):
            s_best, k_best = best(rows, "sdekit", b), best(rows, "k-diffusion", b)
            ratio = k_best["error"] / s_best["error"] if s_best and k_best else float("nan")
            goals[str(b)] = {"sdekit_best": s_best, "kdiffusion_best": k_best, "ratio_kd_over_sdekit": ratio,
                             "goal_met": bool(ratio >= 2.0)}
        smallest = min(r["error"] for r in rows if math.isfinite(r["error"]))
        report["dims"][str(dim)] = {"reference": {"method": f"rk4 {args.ref_steps} steps logsnr float64",
                                                  "error_estimate": ref_err, "time_s": ref_time,
                                                  "below_smallest_error": ref_err < smallest},
                                    "rows": rows, "goals": goals}
        print_dim(dim, report["dims"][str(dim)], budgets)
    write_report(args.out, "accuracy_vs_nfe", report, lambda path: plot(report, path))
    return report


def print_dim(dim, d, budgets):
    rows = d["rows"]
    print(f"\n=== {dim}-D mixture, VP SDE; reference error estimate {d['reference']['error_estimate']:.2e} ===")
    print("best endpoint error with NFE <= budget (run: solver/grid, NFE)")
    print(f"{'budget':>6}  {'sdekit best':<40} {'k-diffusion best':<40} {'kd/sdekit':>9}")
    for b in budgets:
        s, k = best(rows, "sdekit", b), best(rows, "k-diffusion", b)
        fmt = lambda r: f"{r['error']:.3e} {r['solver']}/{r['grid']} ({r['nfe']})" if r else "-"  # noqa: E731
        ratio = k["error"] / s["error"] if s and k else float("nan")
        print(f"{b:>6}  {fmt(s):<40} {fmt(k):<40} {ratio:>9.2f}")
    print("\nk-diffusion, every run:")
    print(f"{'sampler':<10} {'schedule':<8} {'steps':>5} {'NFE':>4} {'error':>10} {'time_s':>7}")
    for r in rows:
        if r["library"] == "k-diffusion":
            print(f"{r['solver']:<10} {r['grid']:<8} {r['steps']:>5} {r['nfe']:>4} {r['error']:>10.3e} {r['time_s']:>7.3f}")
    print("\nsdekit, best grid per solver and budget:")
    print(f"{'solver':<14} " + " ".join(f"{'<=' + str(b):>18}" for b in budgets))
    for solver in sorted({r["solver"] for r in rows if r["library"] == "sdekit"}):
        cells = []
        for b in budgets:
            c = [r for r in rows if r["library"] == "sdekit" and r["solver"] == solver and r["nfe"] <= b]
            c = min(c, key=lambda r: r["error"]) if c else None
            cells.append(f"{c['error']:.2e} {c['grid'][:6]:>6}" if c else "-")
        print(f"{solver:<14} " + " ".join(f"{v:>18}" for v in cells))
    for b, g in d["goals"].items():
        print(f"goal at NFE {b}: sdekit {g['sdekit_best']['error']:.3e} vs k-diffusion {g['kdiffusion_best']['error']:.3e}"
              f" -> ratio {g['ratio_kd_over_sdekit']:.2f} ({'met' if g['goal_met'] else 'NOT met'}; needs >= 2)")


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(report["dims"])
    fig, axes = plt.subplots(1, len(dims), figsize=(8 * len(dims), 6), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        rows = report["dims"][dim]["rows"]
        keys = sorted({(r["library"], r["solver"], r["grid"]) for r in rows})
        shown = [k for k in keys if k[0] == "k-diffusion"
                 or (k[1] in ("dpmpp_2m", "dpmpp_3m", "unipc_3", "heun", "euler") and k[2] == "logsnr")]
        cmap = plt.get_cmap("tab20")
        for i, key in enumerate(shown):
            pts = sorted((r["nfe"], r["error"]) for r in rows
                         if (r["library"], r["solver"], r["grid"]) == key and math.isfinite(r["error"]) and r["error"] < 1e3)
            ax.loglog(*zip(*pts), marker="o", markersize=3, color=cmap(i % 20),
                      linestyle="-" if key[0] == "sdekit" else "--", label=f"{key[0]} {key[1]} ({key[2]})")
        for lib, color in (("sdekit", "black"), ("k-diffusion", "red")):
            nfes = sorted({r["nfe"] for r in rows if r["library"] == lib})
            env = [(b, best(rows, lib, b)["error"]) for b in nfes]
            ax.loglog(*zip(*env), color=color, linewidth=2.5, alpha=0.5, label=f"{lib}: best at NFE <= x")
        ax.set_title(f"{dim}-D Gaussian mixture (VP SDE, exact score); reference error "
                     f"{report['dims'][dim]['reference']['error_estimate']:.1e}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("endpoint RMSE vs float64 reference")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
