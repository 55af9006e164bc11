"""Digits results: train the digits U-Net on CPU, measure test bits/dim by the exact probability-flow
likelihood, draw sample grids with several solvers, and compare eps / v / score training.

    python benchmarks/digits_results.py                       # everything, sequentially
    python benchmarks/digits_results.py --part main           # the main model only
    python benchmarks/digits_results.py --part compare        # the eps / v / score comparison only
    python benchmarks/digits_results.py --part report         # merge both into digits.json
    python benchmarks/digits_results.py --quick               # smoke run (about a minute), writes *_quick files

Main model: the U-Net and settings of examples/train_digits.py (32 channels, mult (1, 2), attention
at 4x4, batch 64, lr 1e-3, warmup 100, EMA 0.995, VP SDE, eps prediction), trained until --steps or
--minutes, whichever comes first. Bits/dim on the test split (data.py: 17 levels, x = k/8 - 1, bin
width 1/8) with uniform dequantization x + u, u ~ U(-1/16, 1/16), by ``sdekit.log_likelihood`` with
the exact divergence (64 vector-Jacobian products per drift evaluation) and data_scale = 1/8, so
    bpd = -(log p(x + u) + 64 log(1/8)) / (64 log 2),
an upper bound on the discrete code length in expectation over u. The exact trace is costly on a CPU,
so a fixed subset of the test split is scored (test images 0, s, 2s, ... with s = 299 // n): its size,
the ODE tolerances, NFE and wall time go into the JSON. Samples: the same x_T through dpmpp_2m,
unipc_3, heun and euler_maruyama, each a PNG grid.

Comparison: the same net and settings trained with prediction eps, v and score for the same number of
steps (--compare-steps / --compare-minutes each), each scored on the same test images and sampled
from the same x_T with dpmpp_2m; one PNG side by side.

Outputs (in --out, default benchmarks/results): digits.json (or digits_main.json /
digits_compare.json per part, merged by --part report), digits_samples_<solver>.png, digits_predictions.png. Checkpoints go to
--ckpt-dir (default runs/digits_results, not committed).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

import sdekit
from sdekit.data import DIGITS_SCALE, dequantize, load_digits
from sdekit.nets import UNet
from sdekit.solvers import sample
from sdekit.train import Trainer

SOLVERS = (("dpmpp_2m", 25), ("unipc_3", 25), ("heun", 25), ("euler_maruyama", 250))
PREDICTIONS = ("eps", "v", "score")


def make_net(channels: int) -> UNet:
    return UNet(in_channels=1, base_channels=channels, channel_mult=(1, 2), num_res_blocks=1,
                attn_levels=(1,), dropout=0.0)


def train_model(prediction, args, steps, minutes, ckpt_dir):
    """Train until ``steps`` steps or ``minutes`` of wall time; returns (Trainer, info dict)."""
    train_set = load_digits("train")
    torch.manual_seed(args.seed)
    net = make_net(args.channels)
    trainer = Trainer(net, sdekit.VPSDE(), train_set.x, prediction, batch_size=args.batch_size, lr=args.lr,
                      warmup=min(100, max(1, steps // 10)), ema_decay=0.995, seed=args.seed,
                      meta={"name": "digits", **train_set.meta})
    start = time.perf_counter()
    deadline = start + 60.0 * minutes
    while trainer.step_count < steps and time.perf_counter() < deadline:
        trainer.step()
        if trainer.step_count % 250 == 0:
            last = trainer.losses[-250:]
            print(f"  [{prediction}] step {trainer.step_count}  loss {sum(last) / len(last):.4f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start
    trainer.seconds = wall
    trainer.save(ckpt_dir)
    last = trainer.losses[-100:]
    info = {"prediction": prediction, "steps": trainer.step_count, "step_budget": steps, "minute_budget": minutes,
            "train_seconds": round(wall, 1), "seconds_per_step": round(wall / max(1, trainer.step_count), 4),
            "final_train_loss_mean_last_100": sum(last) / len(last), "checkpoint": str(ckpt_dir),
            "parameters": sum(p.numel() for p in net.parameters())}
    print(f"[{prediction}] {trainer.step_count} steps in {wall:.0f} s -> {ckpt_dir}", flush=True)
    return trainer, info


def eval_subset(n: int):
    test = load_digits("test")
    stride = max(1, len(test) // n)
    idx = torch.arange(0, len(test), stride)[:n]
    return test.x[idx], idx.tolist()


def eval_bpd(model, x, args):
    """Exact-divergence bits/dim with uniform dequantization, ``args.repeats`` draws of u per image."""
    gen = torch.Generator().manual_seed(args.seed + 1000)
    per_image = torch.zeros(x.shape[0], dtype=torch.float64)
    nfe, start = 0, time.perf_counter()
    for r in range(args.repeats):
        xq = dequantize(x, DIGITS_SCALE, generator=gen)
        for a in range(0, x.shape[0], args.eval_batch):
            res = sdekit.log_likelihood(model, xq[a:a + args.eval_batch], divergence="exact", rtol=args.rtol,
                                        atol=args.atol, data_scale=DIGITS_SCALE, seed=args.seed + r)
            per_image[a:a + args.eval_batch] += res.bpd.double() / args.repeats
            nfe += res.nfe
            print(f"    bpd batch {a}..{a + xq[a:a + args.eval_batch].shape[0] - 1} (draw {r}): "
                  f"{res.bpd.mean().item():.4f}  NFE {res.nfe}  {time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start
    n = x.shape[0]
    se = float(per_image.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd_mean": float(per_image.mean()), "bpd_stderr": se, "n_images": n, "repeats": args.repeats,
            "nfe_total": nfe, "nfe_per_solve": nfe / (args.repeats * math.ceil(n / args.eval_batch)),
            "seconds": round(wall, 1), "seconds_per_image": round(wall / (n * args.repeats), 2),
            "rtol": args.rtol, "atol": args.atol, "method": "dopri5", "divergence": "exact",
            "per_image_bpd": [round(float(v), 5) for v in per_image]}


def nn_distance(x, ref):
    """Mean L2 distance (model space) from each row of x to its nearest row of ref."""
    return float(torch.cdist(x.reshape(x.shape[0], -1).double(), ref.double()).min(1).values.mean())


def tile(x, n):
    """(N, 1, 8, 8) in [-1, 1] -> an (n*10, n*10) array with 1-pixel borders."""
    tiles = torch.nn.functional.pad(x[: n * n, 0].float(), (1, 1, 1, 1), value=-1.0)
    return tiles.reshape(n, n, 10, 10).permute(0, 2, 1, 3).reshape(n * 10, n * 10).numpy()


def draw_samples(model, x_T, solver, steps, seed):
    start = time.perf_counter()
    with torch.no_grad():
        sol = sample(model, x_T, solver=solver, steps=steps, denoise=True, generator=seed)
    return sol.x.clamp(-1, 1), sol.nfe, time.perf_counter() - start


def run_main(args, out: Path, suffix: str) -> dict:
    from sdekit.plotting import image_grid

    print(f"== main model: eps, up to {args.steps} steps / {args.minutes} min", flush=True)
    trainer, info = train_model("eps", args, args.steps, args.minutes, Path(args.ckpt_dir) / "main_eps")
    model = trainer.ema_model()
    x, idx = eval_subset(args.n_eval)
    print(f"== bits/dim on {x.shape[0]} test images (exact divergence, rtol {args.rtol}, atol {args.atol})", flush=True)
    bpd = eval_bpd(model, x, args)
    print(f"   bpd {bpd['bpd_mean']:.4f} +- {bpd['bpd_stderr']:.4f}  ({bpd['seconds']:.0f} s)", flush=True)
    bpd["test_indices"] = idx
    ref = load_digits("train").x.reshape(-1, 64)
    test = load_digits("test").x
    x_T = sdekit.VPSDE().prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed))
    samples = {}
    for solver, steps in SOLVERS:
        steps = max(2, steps // 5) if args.quick else steps
        xs, nfe, sec = draw_samples(model, x_T, solver, steps, args.seed)
        path = out / f"digits_samples_{solver}{suffix}.png"
        image_grid(xs, path, title=f"{solver}, {steps} steps, NFE {nfe}")
        samples[solver] = {"steps": steps, "nfe": nfe, "seconds": round(sec, 2), "png": path.name,
                           "nn_distance_to_train": nn_distance(xs, ref)}
        print(f"   {solver:>15} {steps:>4} steps NFE {nfe:>4} {sec:6.1f} s  nn-dist {samples[solver]['nn_distance_to_train']:.3f}"
              f" -> {path}", flush=True)
    return {"train": info, "bpd": bpd, "samples": samples,
            "nn_distance_reference": {"real_test_digits": nn_distance(test, ref),
                                      "prior_noise_clamped": nn_distance(x_T.clamp(-1, 1), ref)}}


def run_compare(args, out: Path, suffix: str) -> dict:
    x, idx = eval_subset(args.n_eval_compare)
    ref = load_digits("train").x.reshape(-1, 64)
    x_T = sdekit.VPSDE().prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed))
    steps = max(2, 25 // 5) if args.quick else 25
    rows, grids = {}, {}
    for pred in PREDICTIONS:
        print(f"== {pred}: up to {args.compare_steps} steps / {args.compare_minutes} min", flush=True)
        trainer, info = train_model(pred, args, args.compare_steps, args.compare_minutes,
                                    Path(args.ckpt_dir) / f"compare_{pred}")
        model = trainer.ema_model()
        bpd = eval_bpd(model, x, args)
        print(f"   [{pred}] bpd {bpd['bpd_mean']:.4f} +- {bpd['bpd_stderr']:.4f}  ({bpd['seconds']:.0f} s)", flush=True)
        xs, nfe, sec = draw_samples(model, x_T, "dpmpp_2m", steps, args.seed)
        grids[pred] = xs
        rows[pred] = {"train": info, "bpd": bpd,
                      "samples": {"solver": "dpmpp_2m", "steps": steps, "nfe": nfe, "seconds": round(sec, 2),
                                  "nn_distance_to_train": nn_distance(xs, ref)}}
    path = out / f"digits_predictions{suffix}.png"
    draw_comparison(rows, grids, steps, args.samples, path)
    paired = paired_differences(rows)
    print(f"{'prediction':>10} {'steps':>6} {'train s':>8} {'bpd':>8} {'+-':>6} {'nn-dist':>8}")
    for pred, r in rows.items():
        print(f"{pred:>10} {r['train']['steps']:>6} {r['train']['train_seconds']:>8.0f} {r['bpd']['bpd_mean']:>8.4f} "
              f"{r['bpd']['bpd_stderr']:>6.4f} {r['samples']['nn_distance_to_train']:>8.3f}")
    for pred, d in paired.items():
        print(f"paired over the same images and dequantization noise: {pred} - eps = {d['mean']:+.4f} +- {d['stderr']:.4f} bits/dim")
    return {"test_indices": idx, "predictions": rows, "paired_vs_eps": paired, "png": path.name}


def paired_differences(rows):
    """bpd(pred) - bpd(eps) image by image (same images, same u): mean and standard error."""
    base = torch.tensor(rows["eps"]["bpd"]["per_image_bpd"], dtype=torch.float64)
    outcome = {}
    for pred in PREDICTIONS[1:]:
        d = torch.tensor(rows[pred]["bpd"]["per_image_bpd"], dtype=torch.float64) - base
        outcome[pred] = {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d))) if len(d) > 1 else None}
    return outcome


def draw_comparison(rows, grids, steps, samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(samples**0.5)
    fig, axes = plt.subplots(1, len(PREDICTIONS), figsize=(4 * len(PREDICTIONS), 4.8))
    for ax, pred in zip(axes, PREDICTIONS):
        r = rows[pred]
        ax.imshow(tile(grids[pred], n), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{pred} prediction, {r['train']['steps']} steps\n"
                     f"{r['bpd']['bpd_mean']:.3f} +- {r['bpd']['bpd_stderr']:.3f} bits/dim "
                     f"({r['bpd']['n_images']} test images)", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"same U-Net, same x_T, dpmpp_2m {steps} steps (+ denoise)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"   -> {path}")


def run_report(args, out: Path) -> int:
    """Merge digits_main.json and digits_compare.json into digits.json; redraw the comparison PNG
    from the saved checkpoints (same x_T and solver, so the same samples) and add paired differences."""
    from sdekit.checkpoint import load_model

    main_r = json.loads((out / "digits_main.json").read_text())
    comp_r = json.loads((out / "digits_compare.json").read_text())
    rows = comp_r["compare"]["predictions"]
    x_T = sdekit.VPSDE().prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed))
    grids = {}
    for pred in PREDICTIONS:
        model, _ = load_model(rows[pred]["train"]["checkpoint"])
        grids[pred] = draw_samples(model, x_T, "dpmpp_2m", rows[pred]["samples"]["steps"], args.seed)[0]
    draw_comparison(rows, grids, rows["eps"]["samples"]["steps"], args.samples, out / "digits_predictions.png")
    paired = paired_differences(rows)
    comp_r["compare"]["paired_vs_eps"] = paired
    # the main model on the comparison's images (a subset of its own: stride 18 within stride 9)
    m_idx = main_r["main"]["bpd"]["test_indices"]
    m_bpd = dict(zip(m_idx, main_r["main"]["bpd"]["per_image_bpd"]))
    sub = [m_bpd[i] for i in comp_r["compare"]["test_indices"] if i in m_bpd]
    merged = {"main_command": main_r["command"], "compare_command": comp_r["command"],
              "machine": main_r["machine"], "bpd_convention": main_r["bpd_convention"],
              "main": main_r["main"], "compare": comp_r["compare"],
              "main_on_compare_images": {"n": len(sub), "bpd_mean": sum(sub) / max(1, len(sub))}}
    (out / "digits.json").write_text(json.dumps(merged, indent=1))
    print(f"{'prediction':>10} {'steps':>6} {'train s':>8} {'bpd':>8} {'+-':>6} {'vs eps (paired)':>18} {'nn-dist':>8}")
    for pred, r in rows.items():
        d = paired.get(pred)
        rel = f"{d['mean']:+.4f} +- {d['stderr']:.4f}" if d else "-"
        print(f"{pred:>10} {r['train']['steps']:>6} {r['train']['train_seconds']:>8.0f} {r['bpd']['bpd_mean']:>8.4f} "
              f"{r['bpd']['bpd_stderr']:>6.4f} {rel:>18} {r['samples']['nn_distance_to_train']:>8.3f}")
    print(f"main model ({main_r['main']['train']['steps']} steps) on the same {len(sub)} images: "
          f"{merged['main_on_compare_images']['bpd_mean']:.4f} bits/dim")
    print(f"wrote {out / 'digits.json'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=("all", "main", "compare", "report"),
                   help="report: merge the main and compare JSONs into digits.json and redraw the comparison PNG")
    p.add_argument("--steps", type=int, default=2500, help="main model: step budget")
    p.add_argument("--minutes", type=float, default=13.0, help="main model: wall-time budget (minutes)")
    p.add_argument("--compare-steps", type=int, default=800, help="eps/v/score models: step budget each")
    p.add_argument("--compare-minutes", type=float, default=5.0, help="eps/v/score models: wall-time budget each")
    p.add_argument("--n-eval", type=int, default=32, help="test images scored for the main model")
    p.add_argument("--n-eval-compare", type=int, default=16, help="test images scored per comparison model")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="dequantization draws per image")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--ckpt-dir", default="runs/digits_results")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps, 2 images, loose tolerances")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.compare_steps, args.minutes, args.compare_minutes = 5, 5, 1.0, 1.0
        args.n_eval, args.n_eval_compare, args.eval_batch, args.samples = 2, 2, 2, 16
        args.rtol = args.atol = 1e-2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    if args.part == "report":
        return run_report(args, out)
    result = {"command": " ".join(["python", "benchmarks/digits_results.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": {"cpu_threads": args.threads, "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__},
              "settings": {k: v for k, v in vars(args).items()},
              "bpd_convention": "uniform dequantization u ~ U(-1/16, 1/16); bpd = -(log p(x+u) + 64 log(1/8)) / (64 log 2)"}
    if args.part in ("all", "main"):
        result["main"] = run_main(args, out, suffix)
    if args.part in ("all", "compare"):
        result["compare"] = run_compare(args, out, suffix)
    name = {"all": "digits", "main": "digits_main", "compare": "digits_compare"}[args.part]
    path = out / f"{name}{suffix}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
