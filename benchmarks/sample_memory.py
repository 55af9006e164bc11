"""Peak memory and time of ``sample`` on the digits U-Net: the default against the same solve under
``torch.no_grad()`` and with the autograd graph kept (``grad=True``, what ``sample`` did before it turned
autograd off).

The U-Net is the one ``sdekit train --data digits`` builds (32 base channels, channel_mult (1, 2, 2), one
res block, attention at level 1; its parameters require grad, as a freshly loaded or trained one does), or
a checkpoint's (``--checkpoint``). Memory is per solve, in a fresh process each: the peak resident set
(``ru_maxrss``) minus the resident set (``/proc/self/status``, Linux) just before the solve, so the
interpreter, torch and the weights are not counted. Each mode runs ``--repeats`` times (fresh processes,
interleaved); the median is reported with the range. Goal (issue 21): default <= 1.2x no_grad.

    python benchmarks/sample_memory.py [--rows 64 --steps 60 --solver dpmpp_2m --repeats 3]

Writes benchmarks/results/sample_memory.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import write_report  # noqa: E402

MODES = ("default", "no_grad", "grad")

CHILD = r"""
import json, resource, sys, time
import torch
import sdekit
mode, rows, steps, solver, checkpoint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.set_num_threads(1)
torch.manual_seed(0)
if checkpoint:
    model = sdekit.load_model(checkpoint)
    for p in model.net.parameters():
        p.requires_grad_(True)  # as a network handed over for fine-tuning would be
else:
    net = sdekit.UNet(in_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1,))
    model = sdekit.ScoreModel(net, sdekit.VPSDE())
x_T = model.sde.prior_sample((rows, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float()
sdekit.sample(model, x_T[:2], solver, steps=2)  # warm-up: kernels and allocator pools
rss_before = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))  # kB
t0 = time.perf_counter()
if mode == "no_grad":
    with torch.no_grad():
        sol = sdekit.sample(model, x_T, solver, steps=steps)
else:
    sol = sdekit.sample(model, x_T, solver, steps=steps, grad=mode == "grad")
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak / 1024, "solve_mb": (peak - max(rss_before, 0)) / 1024, "wall_s": wall,
                  "nfe": sol.nfe, "graph": sol.x.grad_fn is not None}))
"""


def run(mode: str, args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.rows), str(args.steps), args.solver,
                          args.checkpoint or ""], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    runs: dict = {m: [] for m in MODES}
    for r in range(args.repeats):
        for m in MODES:
            runs[m].append(run(m, args))
            print(f"repeat {r} {m:8s} {runs[m][-1]}", flush=True)
    summary = {}
    for m in MODES:
        solve = [x["solve_mb"] for x in runs[m]]
        wall = [x["wall_s"] for x in runs[m]]
        summary[m] = {"solve_mb_median": statistics.median(solve), "solve_mb_range": [min(solve), max(solve)],
                      "wall_s_median": statistics.median(wall), "wall_s_range": [min(wall), max(wall)],
                      "graph": runs[m][0]["graph"], "nfe": runs[m][0]["nfe"]}
    ratio = summary["default"]["solve_mb_median"] / summary["no_grad"]["solve_mb_median"]
    report = {"rows": args.rows, "steps": args.steps, "solver": args.solver, "checkpoint": args.checkpoint,
              "repeats": args.repeats, "machine": platform.platform(), "torch": __import__("torch").__version__,
              "summary": summary, "default_over_no_grad": ratio, "goal": 1.2, "met": ratio <= 1.2, "runs": runs}
    print(f"\nsolve memory, median over {args.repeats} fresh processes ({args.rows} rows, {args.steps} steps of "
          f"{args.solver}):")
    for m in MODES:
        s = summary[m]
        print(f"  {m:8s} {s['solve_mb_median']:8.1f} MB [{s['solve_mb_range'][0]:.1f}, {s['solve_mb_range'][1]:.1f}]"
              f"   {s['wall_s_median']:6.2f} s   graph kept: {s['graph']}")
    print(f"default / no_grad = {ratio:.3f} (goal <= 1.2: {'met' if ratio <= 1.2 else 'not met'})")

    def plot(path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.2))
        meds = [summary[m]["solve_mb_median"] for m in MODES]
        lo = [meds[i] - summary[m]["solve_mb_range"][0] for i, m in enumerate(MODES)]
        hi = [summary[m]["solve_mb_range"][1] - meds[i] for i, m in enumerate(MODES)]
        ax.bar(MODES, meds, yerr=[lo, hi], color=["tab:blue", "tab:gray", "tab:red"], capsize=4)
        ax.set_ylabel("peak memory of the solve (MB)")
        ax.set_title(f"sample: {args.rows} rows x {args.steps} steps, digits U-Net", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    write_report(args.out, "sample_memory", report, plot)
    return report


if __name__ == "__main__":
    main()
