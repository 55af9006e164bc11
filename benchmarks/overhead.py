"""Per-step solver overhead: sdekit vs k-diffusion with a trivial network, in one process.

The network is trivial (x0-prediction D = 0.1 x; sdekit gets it as ``ScoreModel(net, sde,
prediction="x0")``, k-diffusion as its denoiser), the batch small (8 x 2, float32), so the time
measured is the solvers' own bookkeeping: schedule arithmetic, prediction conversions, checks, loops.
For each of euler, heun and dpmpp_2m both libraries take the same number of steps on a Karras-type
schedule that does not end at 0 (the VP SDE's [t_end, T] in sdekit; the matching s = sigma/alpha range
in k-diffusion). Each timing is the minimum over ``--repeats`` runs; overhead per step = time / steps,
and per network call = time / NFE, after subtracting the bare network's own time per call.

With ``--profile`` it prints a cProfile of sdekit's runs (cumulative time, top entries).

Run with the benchmark venv:  /work/benchvenv/bin/python benchmarks/overhead.py
Writes benchmarks/results/overhead.{json,png}.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import sys
import time

import torch

import sdekit
import sdekit.solvers
from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy_vs_nfe import kd_sigmas, load_k_diffusion_sampling  # noqa: E402

RESULTS = os.path.join(HERE, "results")
PAIRS = {"euler": "sample_euler", "heun": "sample_heun", "dpmpp_2m": "sample_dpmpp_2m"}


class Net(torch.nn.Module):
    def forward(self, x, t):
        return x * 0.1


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    kds = load_k_diffusion_sampling()
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

        def run_sdekit():
            holder["s"] = sdekit.solvers.sample(model, x, name, args.steps, grid="karras")

        def run_kd():
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
    write_report(args.out, "overhead", report, lambda path: plot(rows, path))
    return report


def plot(rows, path):
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
