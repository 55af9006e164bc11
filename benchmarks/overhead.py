"""Per-network-call overhead of sdekit's path-noise samplers against k-diffusion's ``sample_euler_ancestral``.

The network is trivial (x0-prediction D = 0.1 x, 2-D rows, float32, one thread), so the time measured is the
samplers' own work: schedule arithmetic, checks, the update and, above all, the noise. Every stochastic sampler of
the registry whose noise follows the rows' Brownian paths (found by running it once and watching the path be asked
for) is timed three ways on the same ``steps``-step Karras grid of the VP SDE:

    path   the default, noise="path": Brownian increments (``sdekit.noise.BrownianPath``, planned per solve),
    step   noise="step": one fresh per-row Gaussian per call (``RowNoise.randn_like``),
    floor  ``Evaluator.path_noise`` replaced by a preallocated zero tensor: the sampler without any noise cost,

beside k-diffusion's ``sample_euler_ancestral`` (one randn per step; the real package when importable, else the
same loop written inline, which the report says) on the same number of steps in its sigma = sigma/alpha
coordinates. Each repeat runs every configuration once, in a rotated order (interleaved), and each time is
divided by the run's network calls; the ratio of a repeat is sdekit's per-NFE time over the euler_ancestral run
of the same repeat. Reported: the median ratio over repeats and its interquartile range, at each batch size.
Clock: thread CPU time (the machine is shared; wall time is noisier).

Run:  python benchmarks/overhead.py [--batches 16,20000] [--steps 20] [--repeats 11]
Writes benchmarks/results/overhead_path_noise.{json,png} (``--before JSON``: an earlier run's rows kept under
"before", drawn beside). ``--part ode`` instead times euler, heun and dpmpp_2m
per step against k-diffusion's (batch 8 x 2, 200 steps, best of 7; overhead.{json,png}), needing k-diffusion.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time

import torch

import sdekit
import sdekit.solvers
from sdekit.noise import RowNoise
from sdekit.solvers import base
from sdekit.solvers.grids import make_grid
from sdekit.solvers.registry import get

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import write_report  # noqa: E402

RESULTS = os.path.join(HERE, "results")
GOAL = 1.5  # issue 25: per-NFE overhead of every path-noise sampler <= 1.5x k-diffusion's euler_ancestral
clock = time.thread_time


class Net(torch.nn.Module):
    def forward(self, x, t):
        return x * 0.1


def inline_euler_ancestral(model, x, sigmas, eta=1.0):
    """k-diffusion's sample_euler_ancestral (k_diffusion/sampling.py), written out: the same tensor operations."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sf, st = sigmas[i], sigmas[i + 1]
        up = torch.minimum(st, eta * (st ** 2 * (sf ** 2 - st ** 2) / sf ** 2) ** 0.5)
        down = (st ** 2 - up ** 2) ** 0.5
        d = (x - denoised) / sf
        x = x + d * (down - sf)
        if st > 0:
            x = x + torch.randn_like(x) * up
    return x


def k_diffusion_euler_ancestral():
    """(callable(model, x, sigmas), source): the real k-diffusion sampler if importable, else the inline copy."""
    try:
        from accuracy_vs_nfe import load_k_diffusion_sampling

        kds = load_k_diffusion_sampling()
    except Exception:  # noqa: BLE001 - any import failure: fall back to the inline loop
        kds = None
    if kds is None:
        return inline_euler_ancestral, "inline copy of k_diffusion.sampling.sample_euler_ancestral"
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        version = dist_version("k-diffusion")
    except PackageNotFoundError:
        version = "?"
    return (lambda m, x, s: kds.sample_euler_ancestral(m, x, s, disable=True)), f"k-diffusion {version}"


def path_noise_samplers(model, x) -> list:
    """Stochastic registry samplers that ask for the Brownian path (not the per-call noise only)."""
    out = []
    for name in sdekit.solvers.available():
        info = get(name)
        if not info.stochastic or name == "torchsde":
            continue
        asked = []
        orig = RowNoise.path

        def spy(self, T, rel_tol=2.0**-12, asked=asked, orig=orig):
            asked.append(1)
            return orig(self, T, rel_tol)

        RowNoise.path = spy  # type: ignore[method-assign]
        try:
            sdekit.solvers.sample(model, x, name, 4, grid="karras", generator=0)
        finally:
            RowNoise.path = orig  # type: ignore[method-assign]
        if asked:
            out.append(name)
    return out


class _NoNoiseCost:
    """Evaluator.path_noise -> a preallocated zero tensor (the sampler's floor: its work without the noise)."""

    def __enter__(self):
        self.saved = (base.Evaluator.path_noise, getattr(base.Evaluator, "plan_path_noise", None))
        zeros: dict = {}

        def path_noise(ev, x, t, s):
            key = (tuple(x.shape), x.dtype)
            if key not in zeros:
                zeros[key] = torch.zeros_like(x)
            return zeros[key]

        base.Evaluator.path_noise = path_noise
        base.Evaluator.plan_path_noise = lambda ev, x, pairs: None
        return self

    def __exit__(self, *exc):
        base.Evaluator.path_noise = self.saved[0]
        if self.saved[1] is None:  # an sdekit from before plans existed (a "before" run)
            del base.Evaluator.plan_path_noise
        else:
            base.Evaluator.plan_path_noise = self.saved[1]


def measure(batch: int, steps: int, repeats: int, names: list, kd_sampler) -> list:
    sde = sdekit.VPSDE()
    net = Net()
    model = sdekit.ScoreModel(net, sde, prediction="x0")
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0))
    ts = make_grid(sde, steps, "karras", None, None, None)
    kd_sigmas = (sde.sigma(ts) / sde.alpha(ts)).to(torch.float32)  # s = sigma/alpha, no final 0: noise every step

    def sdekit_run(name, noise, floor=False):
        def run():
            if floor:
                with _NoNoiseCost():
                    return sdekit.solvers.sample(model, x, name, steps, grid="karras", generator=1).nfe
            return sdekit.solvers.sample(model, x, name, steps, grid="karras", generator=1, noise=noise).nfe
        return run

    def kd_run():
        kd_sampler(net, x, kd_sigmas)
        return steps

    configs = [("k-diffusion euler_ancestral", "randn", kd_run)]
    for name in names:
        configs += [(name, "path", sdekit_run(name, "path")), (name, "step", sdekit_run(name, "step")),
                    (name, "floor", sdekit_run(name, None, floor=True))]
    for _, _, fn in configs:  # warm-up (lru caches, allocator)
        fn()
    per_nfe: dict = {(c[0], c[1]): [] for c in configs}
    for r in range(repeats):
        shift = r % len(configs)
        for solver, noise, fn in configs[shift:] + configs[:shift]:
            t0 = clock()
            nfe = fn()
            per_nfe[(solver, noise)].append((clock() - t0) / nfe)
    kd = per_nfe[configs[0][0], "randn"]
    rows = []
    for (solver, noise), ts_ in per_nfe.items():
        ratios = sorted(a / b for a, b in zip(ts_, kd))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows.append({"batch": batch, "solver": solver, "noise": noise, "us_per_nfe": 1e6 * statistics.median(ts_),
                     "us_per_nfe_iqr": [1e6 * v for v in (statistics.quantiles(ts_, n=4) if len(ts_) > 1 else ts_)[::2]],
                     "ratio": statistics.median(ratios), "ratio_iqr": [q[0], q[2]]})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("path_noise", "ode"), default="path_noise",
                   help="path_noise: the path-noise samplers (overhead_path_noise.json); ode: euler, heun and "
                        "dpmpp_2m per step against k-diffusion's (overhead.json)")
    p.add_argument("--batches", default="16,20000")
    p.add_argument("--steps", type=int, default=None, help="default 20 (path_noise), 200 (ode)")
    p.add_argument("--repeats", type=int, default=None, help="default 11 (path_noise), 7 (ode)")
    p.add_argument("--solvers", default=None, help="comma-separated subset (default: every path-noise sampler)")
    p.add_argument("--name", default="overhead_path_noise")
    p.add_argument("--batch", type=int, default=8, help="ode part: batch")
    p.add_argument("--dim", type=int, default=2, help="ode part: dimension")
    p.add_argument("--profile", action="store_true", help="ode part: print a cProfile of sdekit's runs")
    p.add_argument("--before", default=None, metavar="JSON",
                   help="path_noise part: a report of the same benchmark on an earlier sdekit, kept under 'before'")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ode = args.part == "ode"
    args.steps = args.steps or (200 if ode else 20)
    args.repeats = args.repeats or (7 if ode else 11)
    if ode:
        return ode_part(args)
    kd_sampler, kd_source = k_diffusion_euler_ancestral()
    sde = sdekit.VPSDE()
    probe_model = sdekit.ScoreModel(Net(), sde, prediction="x0")
    names = args.solvers.split(",") if args.solvers else path_noise_samplers(probe_model, torch.zeros(2, 2))
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        rows += measure(batch, args.steps, args.repeats, names, kd_sampler)
        print(f"batch {batch}, {args.steps} steps, {args.repeats} interleaved repeats; per-NFE time over {kd_source}'s "
              f"euler_ancestral (median [IQR])")
        kd = next(r for r in rows if r["batch"] == batch and r["noise"] == "randn")
        print(f"  euler_ancestral (k-diffusion): {kd['us_per_nfe']:.0f} us/NFE")
        print(f"  {'solver':<20} {'path':>18} {'step':>18} {'floor':>18}")
        for name in names:
            cells = []
            for noise in ("path", "step", "floor"):
                r = next(r for r in rows if r["batch"] == batch and r["solver"] == name and r["noise"] == noise)
                cells.append(f"{r['ratio']:5.2f} [{r['ratio_iqr'][0]:.2f},{r['ratio_iqr'][1]:.2f}]")
            print(f"  {name:<20} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    path_rows = [r for r in rows if r["noise"] == "path"]
    verdict = {f"{r['solver']}@{r['batch']}": {"ratio": r["ratio"], "goal_met": r["ratio"] <= GOAL} for r in path_rows}
    met = sum(v["goal_met"] for v in verdict.values())
    print(f"goal (path noise <= {GOAL}x k-diffusion euler_ancestral per NFE): met in {met} of {len(verdict)} cells")
    try:
        commit = subprocess.run(["git", "-C", os.path.dirname(sdekit.__file__), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    report = {"settings": {"steps": args.steps, "repeats": args.repeats, "dim": 2, "dtype": "float32",
                           "net": "x0 = 0.1 x", "grid": "karras (VP)", "clock": "thread CPU time",
                           "peer": kd_source, "torch": torch.__version__, "python": platform.python_version(),
                           "threads": 1, "sdekit": os.path.dirname(sdekit.__file__), "commit": commit,
                           "goal": GOAL},
              "solvers": names, "rows": rows, "verdict": verdict}
    if args.before:
        import json

        with open(args.before) as fh:
            earlier = json.load(fh)
        report["before"] = {"settings": earlier["settings"], "rows": earlier["rows"]}
    write_report(args.out, args.name, report, lambda path: plot(report, path))
    return report


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    batches = sorted({r["batch"] for r in rows})
    names = report["solvers"]
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 4.2), squeeze=False)
    series = [("path", rows, "tab:blue", "noise='path' (default)"), ("step", rows, "tab:orange", "noise='step'"),
              ("floor", rows, "tab:gray", "no noise cost (sampler floor)")]
    if "before" in report:
        commit = report["before"]["settings"].get("commit", "before")
        series.insert(0, ("path", report["before"]["rows"], "lightsteelblue", f"noise='path', {commit}"))
    w = 0.8 / len(series)
    for ax, batch in zip(axes[0], batches):
        for j, (noise, source, color, label) in enumerate(series):
            rs = [next((r for r in source if r["batch"] == batch and r["solver"] == n and r["noise"] == noise), None)
                  for n in names]
            keep = [(i, r) for i, r in enumerate(rs) if r is not None]
            pos = [i + (j - (len(series) - 1) / 2) * w for i, _ in keep]
            err = [[r["ratio"] - r["ratio_iqr"][0] for _, r in keep], [r["ratio_iqr"][1] - r["ratio"] for _, r in keep]]
            ax.bar(pos, [r["ratio"] for _, r in keep], w, yerr=err, color=color, capsize=1.5, label=label)
        ax.axhline(report["settings"]["goal"], color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("per-NFE time / k-diffusion euler_ancestral")
        ax.set_title(f"batch {batch} x 2, {report['settings']['steps']} steps, trivial network")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the deterministic solvers' per-step overhead (--part ode: overhead.json) ----------------------------------------
ODE_PAIRS = {"euler": "sample_euler", "heun": "sample_heun", "dpmpp_2m": "sample_dpmpp_2m"}
PAIRS = ODE_PAIRS


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, s):
        self.calls += 1
        return self.fn(x, s)


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def kd_sigmas(kds, sde, steps: int, schedule: str) -> torch.Tensor:
    """k-diffusion's Karras sigmas (s = sigma/alpha) over the VP SDE's [eps, T], ending at s(eps), not 0."""
    s_of = lambda t: torch.exp(-0.5 * sde.log_snr(t))  # noqa: E731
    s_max, s_min = float(s_of(sde.T)), float(s_of(sde.eps))
    if schedule != "karras":
        raise ValueError(schedule)
    sig = kds.get_sigmas_karras(steps + 1, s_min, s_max, rho=7.0)[:-1].to(torch.float64)
    sig[0], sig[-1] = s_max, s_min
    return sig


def ode_part(args):
    """The deterministic solvers' per-step overhead against k-diffusion (``--part ode``; writes overhead.json)."""
    from accuracy_vs_nfe import load_k_diffusion_sampling

    kds = load_k_diffusion_sampling(required=True)
    sde = sdekit.VPSDE()
    net = Net()
    model = sdekit.ScoreModel(net, sde, prediction="x0")
    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0))
    sig = kd_sigmas(kds, sde, args.steps, "karras").to(torch.float32)
    s_bare = torch.ones(args.batch)
    net_per_call = best_time(lambda: [net(x, s_bare) for _ in range(1000)], args.repeats) / 1000

    rows = []
    for name, kd_name in PAIRS.items():
        holder = {}

        def run_sdekit(holder=holder, name=name):
            holder["s"] = sdekit.solvers.sample(model, x, name, args.steps, grid="karras")

        def run_kd(holder=holder, kd_name=kd_name):
            den = Counted(lambda y, s: net(y, s))
            holder["k"] = getattr(kds, kd_name)(den, x, sig, disable=True)
            holder["k_nfe"] = den.calls

        ts = best_time(run_sdekit, args.repeats)
        tk = best_time(run_kd, args.repeats)
        nfe_s, nfe_k = holder["s"].nfe, holder["k_nfe"]
        for lib, t, nfe in (("sdekit", ts, nfe_s), ("k-diffusion", tk, nfe_k)):
            rows.append({"library": lib, "solver": name, "steps": args.steps, "nfe": nfe, "time_s": t,
                         "us_per_step": 1e6 * t / args.steps,
                         "overhead_us_per_nfe": 1e6 * (t - nfe * net_per_call) / nfe})
    print(f"trivial network: {1e6 * net_per_call:.1f} us per call; batch {args.batch} x {args.dim}, "
          f"{args.steps} steps, min of {args.repeats}")
    print(f"{'solver':<10} {'library':<12} {'NFE':>5} {'time_ms':>9} {'us/step':>9} {'overhead us/NFE':>16}")
    for r in rows:
        print(f"{r['solver']:<10} {r['library']:<12} {r['nfe']:>5} {1e3 * r['time_s']:>9.2f} "
              f"{r['us_per_step']:>9.1f} {r['overhead_us_per_nfe']:>16.1f}")
    verdict = {}
    for name in PAIRS:
        s = next(r for r in rows if r["solver"] == name and r["library"] == "sdekit")
        k = next(r for r in rows if r["solver"] == name and r["library"] == "k-diffusion")
        verdict[name] = {"ratio_sdekit_over_kd": s["us_per_step"] / k["us_per_step"],
                         "goal_met": s["us_per_step"] <= k["us_per_step"]}
        print(f"{name}: sdekit / k-diffusion per-step time = {verdict[name]['ratio_sdekit_over_kd']:.2f} "
              f"({'goal met' if verdict[name]['goal_met'] else 'goal NOT met'}: needs <= 1)")

    profile_text = None
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for name in PAIRS:
            for _ in range(5):
                sdekit.solvers.sample(model, x, name, args.steps, grid="karras")
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        profile_text = buf.getvalue()
        print(profile_text)

    report = {"settings": {"steps": args.steps, "batch": args.batch, "dim": args.dim, "repeats": args.repeats,
                           "dtype": "float32", "net": "x0 = 0.1 x", "net_us_per_call": 1e6 * net_per_call,
                           "torch": torch.__version__, "python": platform.python_version(), "threads": 1},
              "rows": rows, "verdict": verdict, "profile": profile_text}
    write_report(args.out, "overhead", report, lambda path: plot_ode(rows, path))
    return report



def plot_ode(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(PAIRS)
    fig, ax = plt.subplots(figsize=(6, 4))
    w = 0.38
    for j, (lib, color) in enumerate((("sdekit", "tab:blue"), ("k-diffusion", "tab:red"))):
        vals = [next(r["us_per_step"] for r in rows if r["solver"] == n and r["library"] == lib) for n in names]
        ax.bar([i + (j - 0.5) * w for i in range(len(names))], vals, w, label=lib, color=color)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("microseconds per step (trivial network)")
    ax.set_title("solver overhead per step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
